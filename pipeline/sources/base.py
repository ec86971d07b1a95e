"""What every source gives the pipeline, whatever its format.

A split of a dataset says where it is (for messages), its schema, its row count and label
ranges where the format's metadata has them (the pre-flight's checks), its first rows (the
pre-flight's real batch), how Ray Data reads its raw columns on the data group, and what a
resumed run must read again (a table's snapshot or version). Nothing above this knows which
format it reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa

from pipeline.datasets import Columns, FileInfo


@dataclass
class Split:
    """One split of a dataset in one format."""

    name: str
    rows: int | None = field(default=0, kw_only=True)  # None: not counted
    skipped_files: dict[str, str] = field(default_factory=dict, kw_only=True)  # uri -> why

    format: ClassVar[str] = ""
    # whether check() gives label ranges from the format's statistics; where it cannot, the
    # class count comes from the first batch (and says so)
    label_statistics: ClassVar[bool] = False

    @property
    def where(self) -> str:
        """The split's URI or table, as messages name it."""
        raise NotImplementedError

    @property
    def fs(self):
        """The filesystem the ``path`` column's files are on (None: no files to name)."""
        return None

    @property
    def uri_prefix(self) -> str:
        """What turns a ``path`` column value into a URI (``s3://``)."""
        return ""

    def schema(self, bad_records: str = "fail") -> pa.Schema:
        """The columns of the split (its first readable file, or the table's schema)."""
        raise NotImplementedError

    def schemas(self, bad_records: str = "fail"):
        """(schema, where) to find the run's columns in: the split's schema; a source of
        files gives each file's, so with bad_records=skip a file of another schema can be
        passed over."""
        yield self.schema(bad_records), self.where

    def check(self, cfg, cols: Columns) -> list[FileInfo]:
        """Check the split against the columns the run reads; sets ``rows``. Returns what the
        format's metadata says of each part (rows, label range), or [] when it says nothing."""
        raise NotImplementedError

    def sample(self, columns: list[str], rows: int) -> tuple[pa.Table, str]:
        """The split's first ``rows`` rows of ``columns`` and where they came from."""
        raise NotImplementedError

    def read(self, columns: list[str], *, shuffle=None, read_tasks: int = 0, **ray_args):
        """A Ray Dataset of the raw ``columns`` (and ``path`` where there are files).
        ``shuffle``: the per-epoch file order (formats with files); ``read_tasks``: 0 = one per
        file or fragment; ``ray_args`` (label_selector, num_cpus) go to every read task."""
        raise NotImplementedError

    def pin(self) -> dict[str, Any] | None:
        """What a resumed run must read again (a snapshot or version), None for files."""
        return None


@dataclass
class Splits:
    train: Split
    validation: Split

    def pinned(self) -> dict[str, dict]:
        """Each split's pinned snapshot or version, by split ({} for files)."""
        return {s.name: p for s in (self.train, self.validation) if (p := s.pin()) is not None}
