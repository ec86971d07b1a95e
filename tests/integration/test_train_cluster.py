"""prepare -> train through the CLI on a local multi-node Ray cluster with an S3 endpoint.

The cluster is built like the chart's RayCluster; the S3 endpoint is moto's real HTTP server.
The tests share one prepared dataset and one training run (tests/integration/conftest.py),
in file order: the run, where its work ran, what it left in the bucket, then a rerun that
resumes it."""

from __future__ import annotations

import io

import pytest
import torch

from tests.conftest import run_cli
from tests.integration.conftest import BUCKET, RUN

pytestmark = pytest.mark.cluster


def test_prepare_wrote_both_splits_to_the_bucket(s3, dataset):
    keys = s3.keys(BUCKET, "digits/")
    train = [k for k in keys if k.startswith("digits/train/") and k.endswith(".parquet")]
    val = [k for k in keys if k.startswith("digits/validation/") and k.endswith(".parquet")]
    assert len(train) == dataset["splits"]["train"]["files"] >= 2
    assert len(val) == dataset["splits"]["validation"]["files"] >= 1
    assert dataset["splits"]["train"]["rows"] + dataset["splits"]["validation"]["rows"] == 1797


def test_training_reaches_accuracy_and_reports_every_epoch(first_run, dataset):
    _, r = first_run
    summary = r.summary()
    assert summary["epochs"] == 3
    assert summary["val_accuracy"] >= 0.90
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3]
    # every training row reached the train worker in every epoch (one worker: no split)
    assert {h["train_rows"] for h in summary["history"]} == {dataset["splits"]["train"]["rows"]}
    assert summary["rows_per_s"] > 0 and 0 <= summary["data_wait_fraction"] <= 1
    for epoch in (1, 2, 3):
        assert f"epoch {epoch}/3:" in r.output


def test_checkpoints_and_summary_are_in_the_bucket(s3, first_run):
    keys = s3.keys(BUCKET, f"checkpoints/{RUN}/")
    assert f"checkpoints/{RUN}/summary.json" in keys
    # checkpoints_to_keep=2 (default): the last two epochs stay
    assert f"checkpoints/{RUN}/epoch-0003/state.pt" in keys
    assert f"checkpoints/{RUN}/epoch-0002/state.pt" in keys
    assert f"checkpoints/{RUN}/epoch-0001/state.pt" not in keys
    body = (
        s3.client()
        .get_object(Bucket=BUCKET, Key=f"checkpoints/{RUN}/epoch-0003/state.pt")["Body"]
        .read()
    )
    state = torch.load(io.BytesIO(body), weights_only=True)
    assert state["epoch"] == 3 and "model" in state


def test_reads_and_preprocessing_ran_on_the_data_node_and_training_on_the_train_node(
    ray_cluster, first_run
):
    import ray
    from ray.util.state import list_actors, list_tasks

    job_id = first_run[1].summary()["ray_job_id"]
    ray.init(address=ray_cluster.address)
    try:
        tasks = list_tasks(
            filters=[("job_id", "=", job_id)], limit=10_000, raise_on_missing_output=False
        )
        actors = list_actors(
            filters=[("job_id", "=", job_id)], limit=10_000, raise_on_missing_output=False
        )
    finally:
        ray.shutdown()
    data_tasks = [t for t in tasks if "ReadParquet" in t.name or "preprocess_block" in t.name]
    assert data_tasks, sorted({t.name for t in tasks})
    assert {t.node_id for t in data_tasks} == {ray_cluster.node_ids["data"]}
    workers = [a for a in actors if a.class_name == "RayTrainWorker"]
    assert workers
    assert {a.node_id for a in workers} == {ray_cluster.node_ids["train"]}


RAY_INTERNALS = (
    "Execution plan",
    "Starting execution of Dataset",
    "core_worker.cc",
    "Deprecat",
    "tqdm is not installed",
    "Checkpoint successfully created",
    "Reporting training result",
    "(RayTrainWorker pid=",
)


def test_the_console_shows_the_pipelines_lines_and_not_rays(first_run):
    _, r = first_run
    for internal in RAY_INTERNALS:
        assert internal not in r.output, internal
    assert "\r" not in r.stderr and "\x1b" not in r.stderr  # not a terminal: plain lines
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) <= 40, "\n".join(lines)
    assert lines[-4].startswith("done: val_accuracy ") and lines[-1].startswith("summary:")
    assert lines[-3].startswith("start-up: ") and " to the first batch (" in lines[-3]
    last = r.last_line()  # compact: the history stays in summary.json
    assert "history" not in last and last["summary_uri"].endswith(f"{RUN}/summary.json")
    assert set(last) >= {"val_accuracy", "epochs", "rows_per_s", "data_wait_fraction"}


def test_rerun_with_the_same_name_resumes(ray_cluster, s3, first_run):
    cfg, _ = first_run
    r = run_cli(
        "train", "--address", ray_cluster.address, "--config", str(cfg), "--set", "train.epochs=4",
        "--verbose",
    )  # fmt: skip
    assert r.returncode == 0, r.output[-5000:]
    summary = r.summary()
    assert "resuming from epoch 3" in r.output
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3, 4]  # continued, not restarted
    assert "epoch 1/4:" not in r.output
    assert f"checkpoints/{RUN}/epoch-0004/state.pt" in s3.keys(BUCKET, f"checkpoints/{RUN}/")
    # --verbose: what Ray and its workers print reaches the console too
    assert "(RayTrainWorker pid=" in r.output and "Starting execution of Dataset" in r.output
