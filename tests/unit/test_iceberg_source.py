"""The Iceberg source without Ray: pyiceberg's SQL catalog on sqlite, a local warehouse, the
bundled digits as one table with a split column. Rows per split, the pinned snapshot, and the
pre-flight's one-line refusals."""

from __future__ import annotations

import pytest

from pipeline.config import load_config
from pipeline.errors import DataError
from pipeline.preflight import plan
from pipeline.prepare import digits_source
from pipeline.prepare_table import split_table, write_iceberg


def _cfg(tmp_path, *extra):
    return load_config(None, [
        "data.format=iceberg", "data.table=demo.digits", "data.split_column=split",
        "data.catalog.type=sql", f"data.catalog.uri=sqlite:///{tmp_path}/cat.db",
        f"data.catalog.warehouse=file://{tmp_path}/wh", *extra,
    ])  # fmt: skip


@pytest.fixture
def table(tmp_path):
    (tmp_path / "wh").mkdir()
    return write_iceberg(split_table(digits_source()), _cfg(tmp_path), "demo.digits",
                         overwrite=False)  # fmt: skip


def test_split_column_rows_classes_and_the_pinned_snapshot(tmp_path, table):
    p = plan(_cfg(tmp_path))
    assert (p.splits.train.rows, p.splits.validation.rows) == (1438, 359)
    assert p.workload.cfg.data.num_classes == 10  # from the manifests' label bounds
    assert p.splits.pinned()["train"] == {
        "format": "iceberg", "table": "demo.digits", "snapshot": table["snapshot"]
    }  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["data.table=demo.nope"], "no table demo.nope (data.train_table or data.table) in "
         "iceberg catalog 'default'"),
        (["data.split_values.validation=holdout"], "has no rows with split = 'holdout'"),
        (["data.snapshot=12345"], "snapshot 12345 (data.snapshot"),
    ],
)
def test_refusals_name_the_table_and_the_field(tmp_path, table, extra, message):
    with pytest.raises(DataError) as e:
        plan(_cfg(tmp_path, *extra))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_catalog_that_does_not_answer_is_named(tmp_path):
    cfg = _cfg(tmp_path, f"data.catalog.uri=sqlite:///{tmp_path}/missing/dir/cat.db")
    with pytest.raises(DataError, match="iceberg catalog 'default' .* does not answer"):
        plan(cfg)
