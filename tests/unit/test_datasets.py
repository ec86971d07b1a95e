"""Which files make each split, and which columns a dataset's schema gives the pipeline."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.datasets import resolve_columns
from pipeline.errors import DataError
from pipeline.sources import find_splits
from pipeline.sources.files import split_of


@pytest.mark.parametrize(
    ("path", "split"),
    [
        ("data/train-00000-of-00002.parquet", "train"),
        ("train/part-00000.parquet", "train"),
        ("plain_text/validation-00000-of-00001.parquet", "validation"),
        ("valid.parquet", "validation"),
        ("data/val_0.parquet", "validation"),
        ("test/0000.parquet", "test"),
        ("data/extra-00000.parquet", None),
        ("trainer/x.parquet", None),  # a word that only starts with a split's name
    ],
)
def test_split_of_reads_hugging_face_file_and_folder_names(path, split):
    assert split_of(path) == split


def _write(path, table):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _table(n=4):
    return pa.table({"image": pa.array([b"x"] * n, pa.binary()), "label": list(range(n))})


def test_splits_of_a_dataset_root_and_test_as_validation(tmp_path):
    _write(tmp_path / "data" / "train-00000-of-00002.parquet", _table())
    _write(tmp_path / "data" / "train-00001-of-00002.parquet", _table())
    _write(tmp_path / "data" / "test-00000-of-00001.parquet", _table())
    splits = find_splits(load_config(None, [f"data.uri={tmp_path}"]))
    assert [p.rsplit("/", 1)[1] for p in splits.train.files] == [
        "train-00000-of-00002.parquet",
        "train-00001-of-00002.parquet",
    ]
    assert splits.validation.files[0].endswith("test-00000-of-00001.parquet")


def test_a_root_without_a_train_split_is_named(tmp_path):
    _write(tmp_path / "data" / "validation-0.parquet", _table())
    with pytest.raises(DataError) as e:
        find_splits(load_config(None, [f"data.uri={tmp_path}"]))
    assert "no train split under" in str(e.value) and "data.uri" in str(e.value)
    assert "validation (1 files)" in str(e.value)


HF_META = {
    b"huggingface": json.dumps(
        {
            "info": {
                "features": {
                    "img": {"_type": "Image"},
                    "fine_label": {"names": ["cat", "dog", "fox"], "_type": "ClassLabel"},
                }
            }
        }
    )
}
HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def test_hugging_face_image_and_class_label_columns_are_found_without_settings():
    schema = pa.schema([("img", HF_IMAGE), ("fine_label", pa.int64())], metadata=HF_META)
    cols = resolve_columns(load_config(), schema, "s3://b/train.parquet")
    assert (cols.kind, cols.image, cols.label) == ("image", "img", "fine_label")
    assert cols.class_names == ["cat", "dog", "fox"]
    assert cols.read == ["img", "fine_label"] and cols.input == "image"


def test_feature_columns_make_a_table_and_a_missing_one_is_named():
    schema = pa.schema([("a", pa.float64()), ("b", pa.int32()), ("label", pa.float64())])
    cfg = load_config(None, ["data.feature_columns=[a, b]", "train.task=regression"])
    cols = resolve_columns(cfg, schema, "f.parquet")
    assert (cols.kind, cols.features, cols.input) == ("table", ["a", "b"], "features")
    cfg = load_config(None, ["data.feature_columns=[a, c]"])
    with pytest.raises(DataError) as e:
        resolve_columns(cfg, schema, "f.parquet")
    assert "column 'c' (data.feature_columns) not found in f.parquet" in str(e.value)


def test_a_feature_column_that_is_not_numeric_is_named_with_its_file(tmp_path):
    from pipeline.sources.parquet import ParquetSplit as Split
    from pipeline.sources.parquet import check_split
    from pipeline.storage import resolve

    table = pa.table({"a": [1.0, 2.0], "b": ["x", "y"], "label": [0, 1]})
    _write(tmp_path / "train" / "part-0.parquet", table)
    cfg = load_config(None, [f"data.uri={tmp_path}", "data.feature_columns=[a, b]"])
    loc = resolve(str(tmp_path), cfg.s3, "data.uri")
    split = Split("train", loc, [str(tmp_path / "train" / "part-0.parquet")])
    cols = resolve_columns(cfg, table.schema, "part-0.parquet")
    with pytest.raises(DataError) as e:
        check_split(split, cfg, cols)
    assert "column 'b' (data.feature_columns)" in str(e.value)
    assert "part-0.parquet is string, expected numbers" in str(e.value)


def test_footers_are_read_with_the_sizes_the_listing_gave(tmp_path):
    """The split keeps each file's size from the listing, so a footer is one read of the
    file's tail; rows are counted as before and a file cut short is still named."""
    from pipeline.sources.parquet import check_split

    _write(tmp_path / "train" / "a.parquet", _table(3))
    _write(tmp_path / "train" / "b.parquet", _table(5))
    _write(tmp_path / "validation" / "c.parquet", _table(2))
    cfg = load_config(None, [f"data.uri={tmp_path}"])
    splits = find_splits(cfg)
    train = splits.train
    assert train.sizes == {p: (tmp_path / "train" / p.rsplit("/", 1)[1]).stat().st_size
                           for p in train.files}  # fmt: skip
    cols = resolve_columns(cfg, _table().schema, "a.parquet")
    assert [i.rows for i in check_split(train, cfg, cols)] == [3, 5] and train.rows == 8
    # b.parquet cut short: no footer where its size says one ends
    b = tmp_path / "train" / "b.parquet"
    b.write_bytes(b.read_bytes()[:-20])
    train = find_splits(cfg).train
    with pytest.raises(DataError) as e:
        check_split(train, cfg, cols)
    assert f"file {b} is not a readable Parquet file" in str(e.value)
