"""Nested columns anywhere in a Parquet schema: the footer checks find the label's statistics
by its leaf column, whatever structs, lists, fixed-size lists and maps come before it.

A property test: hypothesis draws a schema (nested columns placed at random before and after
the label and the feature columns), a label type, the labels, the row-group size and
data.num_classes; pyarrow writes the file; the footer checks must say what pyarrow computes from
the data itself."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import load_config
from pipeline.datasets import infer_num_classes, resolve_columns
from pipeline.errors import DataError
from pipeline.sources import find_splits
from pipeline.sources.parquet import check_footer, check_split, leaf_columns

HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

# nested columns a real dataset carries beside its label: Hugging Face images and audio,
# ragged lists, embeddings, maps; each with its own statistics that a wrong lookup would read
NESTED = {
    "audio": pa.struct([("array", pa.list_(pa.float32())), ("sampling_rate", pa.int64())]),
    "tokens": pa.list_(pa.int32()),
    "boxes": pa.list_(pa.struct([("x", pa.float64()), ("name", pa.string())])),
    "embedding": pa.list_(pa.float32(), 3),
    "attrs": pa.map_(pa.string(), pa.int64()),
    "meta": pa.struct([("source", pa.string()), ("inner", pa.struct([("w", pa.int16())]))]),
    "caption": pa.string(),
}
LABEL_TYPES = {"int64": pa.int64(), "int32": pa.int32(), "int8": pa.int8(), "string": pa.string()}


def _values(name: str, t: pa.DataType, n: int, seed: int) -> pa.Array:
    """Values whose statistics differ from any label's (strings, large and negative numbers)."""
    r = [(seed * 7919 + i * 104729) % 1000 - 500 for i in range(n)]
    if name == "image":
        return pa.array([{"bytes": b"\x89PNG%d" % i, "path": f"img{i}.png"} for i in range(n)], t)
    if name == "audio":
        return pa.array([{"array": [v / 7, -v * 3.5], "sampling_rate": 16000} for v in r], t)
    if name == "tokens":
        return pa.array([[v, v * 1000, -v] for v in r], t)
    if name == "boxes":
        return pa.array([[{"x": v * 1e6, "name": f"b{v}"}] for v in r], t)
    if name in ("embedding", "vec"):
        return pa.array([[v * 1e3, -v * 1e3, 0.5] + ([1.0] if name == "vec" else []) for v in r], t)
    if name == "attrs":
        return pa.array([[("k", v * 99)] for v in r], t)
    if name == "meta":
        return pa.array([{"source": f"s{v}", "inner": {"w": v}} for v in r], t)
    if name == "caption":
        return pa.array([f"word {v}" for v in r], t)
    if name == "x0":
        return pa.array([v * 1.5e6 for v in r], t)
    raise AssertionError(name)


@st.composite
def datasets(draw):
    kind = draw(st.sampled_from(["image", "table"]))
    core = ["label"] + (["image"] if kind == "image" else ["x0", "vec"])
    extra = draw(st.lists(st.sampled_from(sorted(NESTED)), unique=True, max_size=5))
    order = draw(st.permutations(core + extra))
    label_type = draw(st.sampled_from(sorted(LABEL_TYPES)))
    n = draw(st.integers(1, 24))
    labels = draw(st.lists(st.integers(-2, 30), min_size=n, max_size=n))
    row_group = draw(st.integers(1, n))
    num_classes = draw(st.one_of(st.none(), st.integers(2, 32)))
    seed = draw(st.integers(0, 1000))
    return kind, order, label_type, labels, row_group, num_classes, seed


def _table(order, label_type, labels, seed) -> pa.Table:
    types = {**NESTED, "image": HF_IMAGE, "x0": pa.float64(), "vec": pa.list_(pa.float32(), 4)}
    cols = {}
    for name in order:
        if name == "label":
            t = LABEL_TYPES[label_type]
            cols[name] = pa.array([str(v) if t == pa.string() else v for v in labels], t)
        else:
            cols[name] = _values(name, types[name], len(labels), seed)
    return pa.table(cols)


def _config(tmp: Path, kind: str, num_classes: int | None, bad_records: str = "fail"):
    sets = [
        f"data.train_uri={tmp / 'train'}",
        f"data.validation_uri={tmp / 'validation'}",
        f"data.bad_records={bad_records}",
    ]
    cfg = load_config(None, sets)
    if kind == "table":
        cfg.data.feature_columns = ["x0", "vec"]
    cfg.data.num_classes = num_classes
    return cfg


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets())
def test_footer_checks_read_the_labels_statistics_wherever_nested_columns_sit(case):
    kind, order, label_type, labels, row_group, num_classes, seed = case
    table = _table(order, label_type, labels, seed)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for split in ("train", "validation"):
            (tmp / split).mkdir()
            pq.write_table(table, tmp / split / "part-0.parquet", row_group_size=row_group)
        cfg = _config(tmp, kind, num_classes)
        splits = find_splits(cfg)
        cols = resolve_columns(cfg, table.schema, str(tmp / "train"))
        assert cols.label == "label" and cols.kind == kind
        info = check_footer(splits.train.loc, splits.train.files[0], cfg, cols)

        assert info.rows == len(labels)
        if label_type == "string":  # refused as the label, whatever else the file holds
            assert info.problem == (
                f"column 'label' (data.label_column) in {splits.train.files[0]} is string, "
                "expected integers"
            )
            return
        truth = pc.min_max(table.column("label")).as_py()
        lo, hi = truth["min"], truth["max"]
        assert info.label_range == (lo, hi)
        outside = num_classes is not None and (lo < 0 or hi >= num_classes)
        if outside:
            assert "are outside the classes" in info.problem
            assert f"0..{num_classes - 1} (data.num_classes" in info.problem
            with pytest.raises(DataError, match="outside the classes"):
                check_split(splits.train, cfg, cols)
        else:
            assert info.problem is None
            infos = check_split(splits.train, cfg, cols)
            assert splits.train.rows == len(labels)
            if hi >= 1:
                assert infer_num_classes(cols, infos, "u") == (
                    hi + 1,
                    f"the largest label, {hi}; set it if that label is wrong",
                )
            else:
                with pytest.raises(DataError, match="cannot tell how many classes"):
                    infer_num_classes(cols, infos, "u")


def test_leaf_columns_number_parquet_leaves_as_the_footer_does():
    schema = pa.schema(
        [("image", HF_IMAGE), ("attrs", NESTED["attrs"]), ("audio", NESTED["audio"]),
         ("meta", NESTED["meta"]), ("label", pa.int64())]
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        pq.write_table(schema.empty_table(), f"{d}/x.parquet")
        md = pq.read_metadata(f"{d}/x.parquet")
    paths = [md.schema.column(i).path for i in range(md.num_columns)]
    for field in schema:
        assert [paths[i].split(".")[0] for i in leaf_columns(schema, field.name)] == [
            field.name
        ] * len(leaf_columns(schema, field.name))
    assert paths[leaf_columns(schema, "label")[0]] == "label"
