"""Parquet files: splits by file or folder name, every footer checked in parallel (on S3 each
is a GET), label ranges from the row groups' statistics, read by Ray's ``read_parquet``."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq

from pipeline.config import PipelineConfig
from pipeline.datasets import Columns, FileInfo, column_problem, is_numeric_type, labels_outside
from pipeline.errors import DataError, first_line
from pipeline.sources.base import Splits
from pipeline.sources.files import FileSplit, find_file_splits
from pipeline.storage import Location

log = logging.getLogger(__name__)

_PARQUET = pds.ParquetFileFormat()


@dataclass
class ParquetSplit(FileSplit):
    suffixes = (".parquet",)
    kind = "Parquet"
    format = "parquet"
    label_statistics = True

    def schema(self, bad_records: str = "fail") -> pa.Schema:
        """The first file's schema; with bad_records=skip an unreadable first file is passed
        over (the footer check then skips it too)."""
        first_error = None
        for path in self.files[: 1 if bad_records == "fail" else len(self.files)]:
            try:
                with self.loc.fs.open_input_file(path) as f:
                    return pq.ParquetFile(f).schema_arrow
            except Exception as e:
                first_error = first_error or DataError(
                    f"file {self.loc.uri_of(path)} is not a readable Parquet file: {first_line(e)}"
                )
        raise first_error

    def schemas(self, bad_records: str = "fail"):
        """Each file's schema in turn (only the first with bad_records=fail): one of another
        schema, or unreadable, is passed over when the policy skips bad files."""
        for path in self.files[: 1 if bad_records == "fail" else len(self.files)]:
            one = type(self)(self.name, self.loc, [path])
            try:
                yield one.schema(), self.loc.uri_of(path)
            except DataError as e:
                if bad_records == "fail":
                    raise
                yield e, self.loc.uri_of(path)

    def check(self, cfg: PipelineConfig, cols: Columns, *, threads: int = 16) -> list[FileInfo]:
        return check_split(self, cfg, cols, threads=threads)

    def sample(self, columns: list[str], rows: int) -> tuple[pa.Table, str]:
        return read_sample(self, columns, rows), self.files[0]

    def read(self, columns: list[str], *, shuffle=None, read_tasks: int = 0, **ray_args):
        import ray.data

        return ray.data.read_parquet(
            self.files, columns=columns, **self.read_args(shuffle, read_tasks, ray_args)
        )


def find_splits(cfg: PipelineConfig) -> Splits:
    return Splits(*find_file_splits(cfg, ParquetSplit))


# --- footers -------------------------------------------------------------------------------


def read_footer(loc: Location, path: str, size: int | None = None) -> pq.FileMetaData:
    """A file's Parquet footer; with its ``size`` known (from the listing), one ranged read
    of its tail: no request for the size first (half the requests on S3)."""
    if size is None:
        with loc.fs.open_input_file(path) as f:
            return pq.ParquetFile(f).metadata
    return _PARQUET.make_fragment(path, loc.fs, file_size=size).metadata


def _leaf_count(t: pa.DataType) -> int:
    """How many Parquet leaf columns a field of type ``t`` is stored as."""
    if isinstance(t, pa.ExtensionType):
        return _leaf_count(t.storage_type)
    if pa.types.is_struct(t):
        return sum(_leaf_count(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_map(t):
        return _leaf_count(t.key_type) + _leaf_count(t.item_type)
    if (
        pa.types.is_list(t)
        or pa.types.is_large_list(t)
        or pa.types.is_fixed_size_list(t)
        or pa.types.is_list_view(t)
        or pa.types.is_large_list_view(t)
    ):
        return _leaf_count(t.value_type)
    return 1


def leaf_columns(schema: pa.Schema, name: str) -> list[int]:
    """The Parquet leaf column numbers of the top-level field ``name``: a row group's
    statistics, types and sizes are numbered by leaf (``image.bytes``, ``image.path``,
    ``label``), not by top-level field, so every nested column before ``name`` shifts it."""
    start = 0
    for f in schema:
        n = _leaf_count(f.type)
        if f.name == name:
            return list(range(start, start + n))
        start += n
    raise KeyError(name)


def check_footer(
    loc: Location, path: str, cfg: PipelineConfig, cols: Columns, size: int | None = None
) -> FileInfo:
    """Rows in ``path``, its label range, and why it cannot be used (None when it can)."""
    uri = loc.uri_of(path)
    try:
        md = read_footer(loc, path, size)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError for a corrupt footer
        return FileInfo(0, f"file {uri} is not a readable Parquet file: {first_line(e)}")
    schema = md.schema.to_arrow_schema()
    problem = column_problem(schema, cfg, cols, uri)
    if problem is not None:
        return FileInfo(md.num_rows, problem)
    ltype = schema.field(cols.label).type
    label_leaf = leaf_columns(schema, cols.label)
    if len(label_leaf) != 1:  # a nested label cannot be a class number
        return FileInfo(
            md.num_rows,
            f"column '{cols.label}' (data.label_column) in {uri} is {ltype}, expected one "
            "number per row",
        )
    info = FileInfo(md.num_rows, label_range=_label_range(md, label_leaf[0]))
    if not is_numeric_type(ltype):
        return info
    first_row = 0
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        stats = rg.column(label_leaf[0]).statistics
        if (
            stats is not None
            and stats.has_min_max
            and labels_outside(stats.min, stats.max, cfg, cols)
        ):
            info.problem = (
                f"labels {stats.min:g}..{stats.max:g} in {uri} "
                f"rows {first_row}-{first_row + rg.num_rows - 1} "
                f"are outside the classes 0..{cfg.data.num_classes - 1} (data.num_classes; "
                "data.bad_records=skip skips and counts such rows)"
            )
            return info
        first_row += rg.num_rows
    return info


def _label_range(md: pq.FileMetaData, col: int) -> tuple[float, float] | None:
    lo = hi = None
    for g in range(md.num_row_groups):
        stats = md.row_group(g).column(col).statistics
        if stats is None or not stats.has_min_max:
            return None
        try:
            a, b = float(stats.min), float(stats.max)
        except (TypeError, ValueError):
            return None
        lo = a if lo is None else min(lo, a)
        hi = b if hi is None else max(hi, b)
    return None if lo is None else (lo, hi)


def check_split(
    split: ParquetSplit, cfg: PipelineConfig, cols: Columns, *, threads: int = 16
) -> list[FileInfo]:
    """Check every footer of a split; drop bad files (skip) or fail naming the first."""
    data = cfg.data
    if not data.validate_files:
        split.rows = None
        return []
    with ThreadPoolExecutor(max_workers=min(threads, len(split.files))) as pool:
        infos = list(
            pool.map(
                lambda p: check_footer(split.loc, p, cfg, cols, split.sizes.get(p)), split.files
            )
        )
    good, kept = [], []
    split.rows = 0
    for path, info in zip(split.files, infos, strict=True):
        if info.problem is None:
            good.append(path)
            kept.append(info)
            split.rows += info.rows
        elif data.bad_records == "skip":
            log.warning("skipping %s", info.problem)
            split.skipped_files[split.loc.uri_of(path)] = info.problem
        else:
            problem = info.problem
            if "data.bad_records" not in problem:
                problem += " (data.bad_records=skip skips such files)"
            raise DataError(problem)
    if not good:
        raise DataError(f"no usable Parquet files in the {split.name} split ({split.loc.uri})")
    split.files = good
    return kept


def read_sample(split: ParquetSplit, columns: list[str], rows: int = 64) -> pa.Table:
    """The first ``rows`` rows of the split's first file: the pre-flight's real batch."""
    path = split.files[0]
    try:
        with split.loc.fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            batch = next(pf.iter_batches(batch_size=rows, columns=columns), None)
    except Exception as e:
        raise DataError(f"cannot read {split.loc.uri_of(path)}: {first_line(e)}") from None
    if batch is None:
        raise DataError(f"{split.loc.uri_of(path)} has no rows")
    return pa.Table.from_batches([batch])
