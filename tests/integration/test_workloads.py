"""Workloads beside the image demo, on the local multi-node cluster with S3: a regression
table with the built-in MLP, and pipeline.run() from a user's own entrypoint with Python
objects (a preprocessing function, a device transform and a model factory) in place of import
strings."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import FAKE_AWS, ROOT, run_cli, write_config
from tests.integration.conftest import BUCKET

pytestmark = pytest.mark.cluster

FEATURES = [f"x{i}" for i in range(6)]


@pytest.fixture(scope="module")
def regression_table(s3):
    """y = x . w + noise: learnable, with a known noise floor."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=len(FEATURES))
    client = s3.client()
    stds = {}
    for split, n in (("train", 3000), ("validation", 600)):
        x = rng.normal(size=(n, len(FEATURES)))
        y = x @ w + rng.normal(scale=0.1, size=n)
        table = pa.table({**{f: x[:, i] for i, f in enumerate(FEATURES)}, "target": y})
        buf = io.BytesIO()
        pq.write_table(table, buf)
        client.put_object(
            Bucket=BUCKET, Key=f"regression/{split}/part-0.parquet", Body=buf.getvalue()
        )
        stds[split] = float(y.std())
    return f"s3://{BUCKET}/regression", stds


def test_a_regression_table_with_the_builtin_mlp(
    ray_cluster, s3, dataset, regression_table, tmp_path
):
    uri, stds = regression_table
    tree = {
        "data": {
            "uri": uri,
            "feature_columns": FEATURES,
            "label_column": "target",
            "batch_size": 32,
        },
        "train": {
            "task": "regression",
            "model": "mlp",
            "model_args": {"hidden": [32]},
            "epochs": 5,
            "resources_per_worker": {"CPU": 1},
        },
        "storage": {"run_name": "regression-it", "checkpoint_uri": f"s3://{BUCKET}/checkpoints"},
        "s3": {"endpoint": s3.endpoint},
    }
    cfg = write_config(tmp_path / "regression.yaml", tree)
    r = run_cli("train", "--address", ray_cluster.address, "--config", str(cfg))
    assert r.returncode == 0, r.output[-4000:]
    assert "val_mae" in r.last_line()
    summary = r.summary()
    assert summary["task"] == "regression"
    # far below the spread of the targets (predicting their mean gives ~0.8 std)
    assert summary["metrics"]["val_mae"] < 0.25 * stds["validation"], summary["metrics"]
    assert "features float32" in r.stderr  # the pre-flight saw the stacked matrix


ENTRYPOINT = """
import json, sys
import numpy as np
import torch
import pipeline


def preprocess(batch, scale=1000.0):
    x = np.stack([batch[c] for c in COLUMNS], 1).astype(np.float32) * scale
    return {"features": x, "target": batch["target"]}


def unscale(batch, split):  # on the train worker's device, every batch of both splits
    batch["features"] = batch["features"] / 1000.0
    return batch


def model(num_features, num_outputs):
    return torch.nn.Linear(num_features, num_outputs)


COLUMNS = sys.argv[2].split(",")
config = json.loads(sys.argv[1])
summary = pipeline.run(
    config, model=model, preprocess=preprocess, device_transform=unscale, address=sys.argv[3]
)
print(json.dumps({"val_mae": summary["metrics"]["val_mae"], "epochs": summary["epochs"]}))
"""


def test_pipeline_run_from_python_with_objects(
    ray_cluster, s3, dataset, regression_table, tmp_path
):
    import json

    uri, stds = regression_table
    config = {
        "data": {"uri": uri, "columns": FEATURES, "label_column": "target"},
        "train": {"task": "regression", "epochs": 3, "learning_rate": 0.05,
                  "resources_per_worker": {"CPU": 1}},
        "storage": {"run_name": "python-api-it", "checkpoint_uri": f"s3://{BUCKET}/checkpoints"},
        "s3": {"endpoint": s3.endpoint},
    }  # fmt: skip
    script = tmp_path / "entrypoint.py"
    script.write_text(textwrap.dedent(ENTRYPOINT))
    p = subprocess.run(
        [sys.executable, str(script), json.dumps(config), ",".join(FEATURES), ray_cluster.address],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**__import__("os").environ, **FAKE_AWS},
    )  # fmt: skip
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["epochs"] == 3
    # the features leave the data group 1000x too large; only a transform that ran on every
    # train and validation batch gets the linear model to its error
    assert out["val_mae"] < 0.25 * stds["validation"], out
