"""A Hugging Face-layout image dataset written with pyarrow rather than `datasets`: the image
column is ``struct<bytes, path>`` (two Parquet leaf columns before the label) and the schema
names no classes. It trains with the class count taken from the label statistics, and with
data.num_classes set."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.prepare import digits_source, split_indices
from tests.conftest import run_cli, write_config
from tests.integration.conftest import BUCKET

pytestmark = pytest.mark.cluster

HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


@pytest.fixture(scope="module")
def hf_digits(tmp_path_factory):
    """data/{train,validation}-00000-of-00001.parquet: image struct, label int64, no metadata."""
    root = tmp_path_factory.mktemp("hf") / "digits"
    (root / "data").mkdir(parents=True)
    src = digits_source()
    train_idx, val_idx = split_indices(src.labels, 0.2, 0)
    for split, idx in (("train", train_idx), ("validation", val_idx)):
        images = pa.array(
            [{"bytes": src.images[i], "path": f"{i:06d}.png"} for i in idx], type=HF_IMAGE
        )
        table = pa.table({"image": images, "label": pa.array(src.labels[idx], pa.int64())})
        pq.write_table(table, root / "data" / f"{split}-00000-of-00001.parquet")
    schema = pq.read_schema(root / "data" / "train-00000-of-00001.parquet")
    assert not (schema.metadata or {}).get(b"huggingface")  # no class names anywhere
    return root, int(np.max(src.labels)) + 1


@pytest.mark.parametrize("num_classes", [None, 10], ids=["from-statistics", "set"])
def test_struct_image_column_without_class_names_trains(
    ray_cluster, s3, hf_digits, tmp_path, num_classes
):
    root, classes = hf_digits
    tree = {
        "data": {"uri": str(root), **({"num_classes": num_classes} if num_classes else {})},
        "train": {"epochs": 1, "resources_per_worker": {"CPU": 1}},
        "storage": {
            "run_name": f"hf-nested-{num_classes or 'stats'}",
            "checkpoint_uri": f"s3://{BUCKET}/checkpoints",
        },
        "s3": {"endpoint": s3.endpoint},
    }
    s3.make_bucket(BUCKET)
    cfg = write_config(tmp_path / "config.yaml", tree)
    r = run_cli("train", "--address", ray_cluster.address, "--config", str(cfg))
    assert r.returncode == 0, r.output[-4000:]
    summary = r.summary()
    assert summary["epochs"] == 1
    if num_classes is None:
        assert f"classes: {classes} (data.num_classes, from the largest label, {classes - 1}" in (
            r.output
        )
    rows = sum(len(pq.read_table(p).column("label")) for p in (root / "data").glob("train-*"))
    assert summary["history"][0]["train_rows"] == rows, summary["history"][0]
