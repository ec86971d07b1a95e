"""prepare: row counts, schema, split sizes, file and row-group layout, S3 output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.config import S3Section
from pipeline.errors import DataError, StorageError
from pipeline.prepare import (
    MIN_FILES,
    choose_layout,
    digits_source,
    imagefolder_source,
    prepare,
    split_indices,
    synthetic_source,
)
from pipeline.workloads.image import decode_images


def read_split(root: Path, split: str):
    files = sorted((root / split).glob("*.parquet"))
    return files, [pq.ParquetFile(f) for f in files]


def test_digits_split_rows_schema_and_layout(tmp_path):
    m = prepare(digits_source(), str(tmp_path), S3Section())
    train_files, train = read_split(tmp_path, "train")
    _, val = read_split(tmp_path, "validation")
    n_train = sum(f.metadata.num_rows for f in train)
    n_val = sum(f.metadata.num_rows for f in val)
    assert n_train + n_val == 1797 and n_val == pytest.approx(1797 * 0.2, abs=10)
    assert m["splits"]["train"]["rows"] == n_train
    assert len(train_files) == MIN_FILES  # small data: still one file per reader
    schema = train[0].schema_arrow
    assert (
        str(schema.field("image").type) == "binary" and str(schema.field("label").type) == "int64"
    )
    meta = json.loads(schema.metadata[b"ray_pipeline"])
    assert meta["image_shape"] == [8, 8, 1] and meta["encoding"] == "png"
    # images are stored encoded: real decode work for the data group
    table = train[0].read()
    raw = table.column("image").to_pylist()[:5]
    assert all(b.startswith(b"\x89PNG") for b in raw)
    decoded, bad = decode_images(raw, "png", (8, 8, 1))
    assert bad == [] and decoded.max() > 0
    # label statistics are written (the pre-flight check reads them), image ones are not
    rg = train[0].metadata.row_group(0)
    assert rg.column(1).statistics.has_min_max
    assert rg.column(0).statistics is None
    assert json.loads((tmp_path / "_manifest.json").read_text())["num_classes"] == 10


def test_stratified_split_keeps_every_class_in_both_splits():
    labels = np.repeat(np.arange(10), [50] * 9 + [5])
    train, val = split_indices(labels, 0.2, seed=0)
    assert len(set(train) | set(val)) == len(labels) and not set(train) & set(val)
    assert set(labels[val]) == set(range(10))
    assert np.bincount(labels[val])[0] == 10


def test_layout_targets_file_and_row_group_sizes():
    big = choose_layout(rows=10_000_000, bytes_per_row=700)
    assert big.rows_per_file * 700 <= 64 << 20 and big.rows_per_file * 700 > 32 << 20
    assert big.row_group_rows * 700 <= 4 << 20
    small = choose_layout(rows=1000, bytes_per_row=100)
    assert small.rows_per_file == 125  # 8 files
    large_images = choose_layout(rows=10_000, bytes_per_row=150_000)
    assert large_images.row_group_rows == 27 and large_images.rows_per_file == 447


def test_row_groups_follow_the_layout(tmp_path):
    src = synthetic_source(3000, seed=3)
    m = prepare(src, str(tmp_path), S3Section(), validation_fraction=0.1)
    rows = m["splits"]["train"]["rows"]
    assert rows == pytest.approx(2700, abs=5)
    _, files = read_split(tmp_path, "train")
    assert sum(f.metadata.num_rows for f in files) == rows
    assert len(files) == MIN_FILES
    for f in files:
        for g in range(f.metadata.num_row_groups):
            assert f.metadata.row_group(g).num_rows <= -(-rows // MIN_FILES)


def test_synthetic_is_mnist_shaped_and_learnable():
    import torch

    from pipeline.workloads.image import normalise
    from pipeline.workloads.models import simple_cnn

    src = synthetic_source(2400, seed=0)
    assert src.shape == (28, 28, 1) and len(src.images) == 2400
    assert set(src.labels) == set(range(10))
    imgs, bad = decode_images(src.images, "png", (28, 28, 1))
    assert bad == []
    # learnable: the demo CNN gets far above chance (0.1) after a few passes
    x = torch.from_numpy(normalise(imgs, [0.5], [0.5]))
    y = torch.from_numpy(src.labels)
    torch.manual_seed(0)
    model = simple_cnn(in_channels=1, num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(3):
        for i in range(0, 2000, 64):
            loss = torch.nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x[2000:]).argmax(1) == y[2000:]).float().mean().item()
    assert acc > 0.7


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    prepare(digits_source(), str(tmp_path), S3Section())
    before = sorted(p.stat().st_mtime_ns for p in (tmp_path / "train").glob("*.parquet"))
    with pytest.raises(StorageError, match="already holds .* --overwrite"):
        prepare(digits_source(), str(tmp_path), S3Section())
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "train").glob("*.parquet")) == before
    prepare(synthetic_source(100), str(tmp_path), S3Section(), overwrite=True)
    _, files = read_split(tmp_path, "train")
    assert sum(f.metadata.num_rows for f in files) == 80


def make_folder(root: Path, sizes: dict[str, list[tuple[int, int]]], fmt="PNG") -> Path:
    for cls, dims in sizes.items():
        (root / cls).mkdir(parents=True)
        for i, (w, h) in enumerate(dims):
            arr = np.full((h, w, 3), 40 * i, np.uint8)
            Image.fromarray(arr).save(root / cls / f"{i}.{fmt.lower()}", format=fmt)
    return root


def test_imagefolder_keeps_bytes_and_labels_by_folder(tmp_path):
    root = make_folder(tmp_path / "imgs", {"cat": [(12, 10)] * 3, "dog": [(12, 10)] * 2})
    src = imagefolder_source(root)
    assert src.classes == ["cat", "dog"] and list(src.labels) == [0, 0, 0, 1, 1]
    assert src.shape == (10, 12, 3) and src.encoding == "png"
    assert src.images[0] == (root / "cat" / "0.png").read_bytes()  # stored as they are


def test_imagefolder_mixed_sizes_need_image_size(tmp_path):
    root = make_folder(tmp_path / "imgs", {"a": [(12, 10), (20, 20)], "b": [(12, 10)]})
    with pytest.raises(DataError, match=r"is 20x20x3 .* --image-size"):
        imagefolder_source(root)
    src = imagefolder_source(root, size=(16, 16))
    assert src.shape == (16, 16, 3)
    decoded, bad = decode_images(src.images, "png", (16, 16, 3))
    assert bad == []


def test_imagefolder_names_an_unreadable_image(tmp_path):
    root = make_folder(tmp_path / "imgs", {"a": [(8, 8)], "b": [(8, 8)]})
    (root / "b" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.png"):
        imagefolder_source(root)


def test_prepare_to_s3(s3):
    bucket = s3.make_bucket("prep-unit")
    m = prepare(digits_source(), f"s3://{bucket}/digits", S3Section(endpoint=s3.endpoint))
    keys = s3.keys(bucket, "digits/")
    assert "digits/_manifest.json" in keys
    assert sum(k.startswith("digits/train/part-") for k in keys) == m["splits"]["train"]["files"]


def test_prepare_to_missing_bucket_names_it(s3):
    with pytest.raises(StorageError, match="bucket 'nope-missing' does not exist"):
        prepare(digits_source(), "s3://nope-missing/digits", S3Section(endpoint=s3.endpoint))


def test_prepare_creates_the_bucket_in_the_configured_region(s3):
    s3cfg = S3Section(endpoint=s3.endpoint, region="eu-west-1")
    prepare(digits_source(), "s3://prep-created/digits", s3cfg, create_bucket=True)
    loc = s3.client().get_bucket_location(Bucket="prep-created")["LocationConstraint"]
    assert loc == "eu-west-1"
    assert "digits/_manifest.json" in s3.keys("prep-created", "digits/")
