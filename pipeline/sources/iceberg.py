"""Apache Iceberg tables through a catalog (pyiceberg: a SQL catalog, a REST catalog).

Splits are separate tables (data.train_table / data.validation_table) or one table with a
split column (data.table + data.split_column). A run reads one snapshot: the current one when
it starts (or data.snapshot), recorded in summary.json and every checkpoint, and read again by
a resumed run. Row counts and label ranges come from the snapshot's manifests; Ray reads the
data files with ``read_iceberg`` on the data group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from pipeline.config import PipelineConfig
from pipeline.datasets import Columns, FileInfo, column_problem, labels_outside
from pipeline.errors import DataError, first_line
from pipeline.sources.base import Split, Splits
from pipeline.storage import resolve_endpoint


def catalog_properties(cfg: PipelineConfig) -> dict[str, str]:
    """data.catalog, with the S3 endpoint and region of the s3 section where it names none:
    the warehouse is read with the same endpoint as every other S3 location (credentials
    from the environment)."""
    props = {k: str(v) for k, v in cfg.data.catalog.items()}
    ep = resolve_endpoint(cfg.s3)
    if ep.override and "s3.endpoint" not in props:
        props["s3.endpoint"] = f"{ep.scheme}://{ep.override}"
    props.setdefault("s3.region", ep.region)
    props.setdefault("name", "default")
    return props


def load_catalog(props: dict[str, str]):
    from pyiceberg.catalog import load_catalog as _load

    name = props.get("name", "default")
    rest = {k: v for k, v in props.items() if k != "name"}
    try:
        catalog = _load(name, **rest)
        catalog.list_namespaces()  # a catalog that does not answer fails here, not mid-run
    except Exception as e:
        raise DataError(
            f"iceberg catalog '{name}' ({rest.get('type', '?')} at {rest.get('uri', '?')}, "
            f"data.catalog) does not answer: {first_line(e)}"
        ) from None
    return catalog


@dataclass
class IcebergSplit(Split):
    catalog: dict[str, str] = field(default_factory=dict)  # properties; "name" is its name
    table_name: str = ""
    split_column: str | None = None
    split_value: str | None = None
    snapshot_id: int | None = None
    _table: Any = field(default=None, repr=False)

    format = "iceberg"
    label_statistics = True

    @property
    def where(self) -> str:
        filt = f" where {self.split_column} = '{self.split_value}'" if self.split_column else ""
        return f"iceberg table {self.table_name} (catalog {self.catalog['name']}){filt}"

    def open(self, catalog=None) -> None:
        """Load the table and fix the snapshot the run reads (a pinned one must still exist)."""
        from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

        catalog = catalog or load_catalog(self.catalog)
        try:
            self._table = catalog.load_table(self.table_name)
        except (NoSuchTableError, NoSuchNamespaceError):
            raise DataError(
                f"no table {self.table_name} (data.{self.name}_table or data.table) in iceberg "
                f"catalog '{self.catalog['name']}' at {self.catalog.get('uri', '?')}"
            ) from None
        if self.snapshot_id is None:
            current = self._table.current_snapshot()
            if current is None:
                raise DataError(f"{self.where} has no snapshot: the table was never written")
            self.snapshot_id = current.snapshot_id
        elif self._table.snapshot_by_id(self.snapshot_id) is None:
            raise DataError(
                f"snapshot {self.snapshot_id} (data.snapshot, or the one this run started on) "
                f"of {self.where} is gone (expired?); the table has "
                f"{', '.join(str(s.snapshot_id) for s in self._table.snapshots()) or 'none'}"
            )

    def _filter(self):
        from pyiceberg.expressions import AlwaysTrue, EqualTo

        if self.split_column is None:
            return AlwaysTrue()
        return EqualTo(self.split_column, self.split_value)

    def _scan(self, columns=("*",), **kwargs):
        return self._table.scan(
            row_filter=self._filter(),
            selected_fields=tuple(columns),
            snapshot_id=self.snapshot_id,
            **kwargs,
        )

    def schema(self, bad_records: str = "fail") -> pa.Schema:
        schema = self._table.schemas()[self._table.snapshot_by_id(self.snapshot_id).schema_id]
        return schema.as_arrow()

    def check(self, cfg: PipelineConfig, cols: Columns) -> list[FileInfo]:
        """Columns from the snapshot's schema; rows and label ranges from its manifests."""
        schema = self.schema()
        if self.split_column is not None and self.split_column not in schema.names:
            raise DataError(
                f"column '{self.split_column}' (data.split_column) not found in iceberg table "
                f"{self.table_name}; its columns are: {', '.join(schema.names)}"
            )
        problem = column_problem(schema, cfg, cols, self.where)
        if problem is not None:
            raise DataError(problem)
        tasks = list(self._scan().plan_files())
        label_id = self._table.schema().find_field(cols.label).field_id
        ltype = self._table.schema().find_field(cols.label).field_type
        infos = [self._file_info(t.file, label_id, ltype) for t in tasks]
        if self.split_column is None:
            self.rows = sum(i.rows for i in infos)
            for info, task in zip(infos, tasks, strict=True):
                r = info.label_range
                if r is not None and labels_outside(r[0], r[1], cfg, cols):
                    raise DataError(
                        f"labels {r[0]:g}..{r[1]:g} in {task.file.file_path} of {self.where} "
                        f"are outside the classes 0..{cfg.data.num_classes - 1} "
                        "(data.num_classes; data.bad_records=skip skips and counts such rows)"
                    )
        else:  # files hold rows of both splits: count the split's own
            self.rows = self._scan(columns=(self.split_column,)).to_arrow().num_rows
        if not self.rows:
            what = (
                f"no rows with {self.split_column} = '{self.split_value}' (data.split_column, "
                f"data.split_values.{self.name})"
                if self.split_column
                else "no rows"
            )
            raise DataError(f"iceberg table {self.table_name} has {what} in snapshot "
                            f"{self.snapshot_id}")  # fmt: skip
        return infos

    @staticmethod
    def _file_info(data_file, field_id: int, ftype) -> FileInfo:
        from pyiceberg.conversions import from_bytes

        lo = (data_file.lower_bounds or {}).get(field_id)
        hi = (data_file.upper_bounds or {}).get(field_id)
        span = None
        if lo is not None and hi is not None:
            try:
                span = (float(from_bytes(ftype, lo)), float(from_bytes(ftype, hi)))
            except (TypeError, ValueError):
                span = None
        return FileInfo(int(data_file.record_count), label_range=span)

    def sample(self, columns: list[str], rows: int) -> tuple[pa.Table, str]:
        table = self._scan(columns, limit=rows).to_arrow()
        if not table.num_rows:
            raise DataError(f"{self.where} has no rows")
        return table.select(columns), f"{self.table_name}@{self.snapshot_id}"

    def read(self, columns: list[str], *, shuffle=None, read_tasks: int = 0, **ray_args):
        """``shuffle`` does not apply: Ray's Iceberg reader has no file order to shuffle."""
        import ray.data

        return ray.data.read_iceberg(
            table_identifier=self.table_name,
            row_filter=self._filter(),
            selected_fields=tuple(columns),
            snapshot_id=self.snapshot_id,
            catalog_kwargs=dict(self.catalog),
            override_num_blocks=read_tasks or None,
            **ray_args,
        )

    def pin(self) -> dict[str, Any]:
        return {"format": "iceberg", "table": self.table_name, "snapshot": self.snapshot_id}


def find_splits(cfg: PipelineConfig, pins: dict | None = None) -> Splits:
    """The train and validation tables (or one table and its split column), each at the
    snapshot this run reads: ``pins`` (the resumed run's), else data.snapshot, else the
    current one."""
    data = cfg.data
    props = catalog_properties(cfg)
    catalog = load_catalog(props)
    pins = pins or {}

    def one(name: str) -> IcebergSplit:
        table = getattr(data, f"{name}_table") or data.table
        split_column = None if getattr(data, f"{name}_table") else data.split_column
        pinned = (pins.get(name) or {}).get("snapshot")
        split = IcebergSplit(
            name,
            catalog=props,
            table_name=table,
            split_column=split_column,
            split_value=data.split_values[name] if split_column else None,
            snapshot_id=pinned if pinned is not None else data.snapshot,
        )
        split.open(catalog)
        return split

    return Splits(one("train"), one("validation"))
