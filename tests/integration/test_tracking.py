"""Experiment tracking against a real MLflow server (tests/mlflow_server.py: sqlite backend
store, artifacts on the moto S3 server), after runs on the 3-node cluster, read back through
MLflow's own client: parameters, per-epoch metric history, tags, artifacts, the model; a resumed
run continues its MLflow run; bad tracking input stops the run before anything is written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.tracking import TAG_CHECKPOINTS, TAG_RUN_NAME
from tests.conftest import run_cli, write_config
from tests.integration.conftest import BUCKET, cluster_config
from tests.mlflow_server import start_server

ARTIFACT_BUCKET = "mlflow-artifacts"
EPOCH_FIGURES = ("train_loss", "val_accuracy", "rows_per_s", "data_wait_fraction")


@pytest.fixture(scope="session")
def mlflow_server(s3, tmp_path_factory):
    s3.make_bucket(ARTIFACT_BUCKET)
    server = start_server(
        tmp_path_factory.mktemp("mlflow"), s3.endpoint, f"s3://{ARTIFACT_BUCKET}/artifacts"
    )
    yield server
    server.stop()


def tracked_config(tmp_path, s3, server_uri: str, run: str, **sections):
    tree = cluster_config(
        s3,
        train={"epochs": 2, "resources_per_worker": {"CPU": 1}},
        storage={"run_name": run, "checkpoint_uri": f"s3://{BUCKET}/checkpoints"},
        tracking={"mlflow": {"uri": server_uri, "experiment": "it"}},
        **sections,
    )
    return write_config(tmp_path / f"{run}.yaml", tree)


def train(ray_cluster, cfg, *overrides: str, env: dict | None = None):
    sets = [arg for o in overrides for arg in ("--set", o)]
    return run_cli("train", "--address", ray_cluster.address, "--config", str(cfg), *sets, env=env)


def runs_named(client, run: str) -> list:
    exp = client.get_experiment_by_name("it")
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_RUN_NAME}` = '{run}'")


def steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.mark.cluster
def test_a_run_and_its_resume_are_one_mlflow_run(ray_cluster, s3, dataset, mlflow_server, tmp_path):
    run = "digits-mlflow"
    cfg = tracked_config(tmp_path, s3, mlflow_server.uri, run)
    r = train(ray_cluster, cfg)
    assert r.returncode == 0, r.output[-5000:]
    summary = r.summary()
    client = mlflow_server.client()
    (tracked,) = runs_named(client, run)
    run_id = tracked.info.run_id
    assert summary["tracking"]["mlflow"]["run_id"] == run_id
    assert summary["tracking"]["mlflow"]["not_logged"] == []
    assert tracked.info.run_name == run and tracked.info.status == "FINISHED"
    # the resolved config, flattened
    params = tracked.data.params
    assert params["train.epochs"] == "2"
    assert params["storage.run_name"] == run
    assert params["data.train_uri"] == f"s3://{BUCKET}/digits/train"
    assert params["tracking.mlflow.uri"] == mlflow_server.uri
    # every epoch's figures, the epoch as step
    for key in EPOCH_FIGURES:
        assert steps(client, run_id, key) == [1, 2], key
    assert steps(client, run_id, "skipped_records") == [1, 2]
    accuracy = {m.step: m.value for m in client.get_metric_history(run_id, "val_accuracy")}
    assert accuracy == {h["epoch"]: h["val_accuracy"] for h in summary["history"]}
    assert {m.value for m in client.get_metric_history(run_id, "skipped_records")} == {0.0}
    tags = tracked.data.tags
    assert tags["ray_pipeline.ray_job_id"] == summary["ray_job_id"]
    assert tags["ray_pipeline.dataset_uri"] == f"s3://{BUCKET}/digits/train"
    assert tags[TAG_CHECKPOINTS] == f"s3://{BUCKET}/checkpoints/{run}"
    # artifacts, in the server's artifact store on S3
    assert {a.path for a in client.list_artifacts(run_id)} >= {
        "config.yaml",
        "report.png",
        "summary.json",
    }
    keys = s3.keys(ARTIFACT_BUCKET)
    assert any(k.endswith(f"{run_id}/artifacts/summary.json") for k in keys)
    png = [k for k in keys if k.endswith(f"{run_id}/artifacts/report.png")]
    body = s3.client().get_object(Bucket=ARTIFACT_BUCKET, Key=png[0])["Body"].read()
    assert body.startswith(b"\x89PNG")
    local = client.download_artifacts(run_id, "summary.json", str(tmp_path))
    logged = json.loads(open(local).read())
    assert [h["epoch"] for h in logged["history"]] == [1, 2]

    # resume: one more epoch, the model logged; the same MLflow run goes on
    r2 = train(ray_cluster, cfg, "train.epochs=3", "tracking.mlflow.log_model=true")
    assert r2.returncode == 0, r2.output[-5000:]
    assert "resuming from epoch 2" in r2.output
    (again,) = runs_named(client, run)
    assert again.info.run_id == run_id and again.info.status == "FINISHED"
    assert steps(client, run_id, "val_accuracy") == [1, 2, 3]
    assert again.data.params["train.epochs"] == "2"  # MLflow keeps a parameter's first value
    assert again.data.tags["resumed_with.train.epochs"] == "3"
    assert r2.summary()["tracking"]["mlflow"]["not_logged"] == []

    import mlflow.pytorch
    import torch

    mlflow.set_tracking_uri(mlflow_server.uri)
    model = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    logits = model(torch.zeros(2, 1, 8, 8))
    assert logits.shape == (2, 10) and np.isfinite(logits.detach().numpy()).all()


def test_a_tracking_uri_that_does_not_answer_stops_before_anything_is_written(
    s3, dataset, tmp_path
):
    from tests.conftest import free_port

    run = "digits-mlflow-down"
    uri = f"http://127.0.0.1:{free_port()}"
    cfg = tracked_config(tmp_path, s3, uri, run)
    # no cluster needed: the check runs before the driver connects to Ray
    r = run_cli("train", "--address", "127.0.0.1:1", "--config", str(cfg))
    assert r.returncode == 2, r.output[-3000:]
    line = r.stderr.strip().splitlines()[-1]
    assert f"tracking.mlflow.uri {uri}" in line and "does not answer" in line
    assert not s3.keys(BUCKET, f"checkpoints/{run}/")


def test_credentials_the_server_refuses_stop_before_anything_is_written(s3, dataset, tmp_path):
    server = start_server(
        tmp_path / "auth",
        s3.endpoint,
        f"s3://{ARTIFACT_BUCKET}/auth",
        "--app-name",
        "basic-auth",
        env={
            "MLFLOW_AUTH_ADMIN_PASSWORD": "a-long-admin-password",
            "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only-csrf-key",
        },
    )
    try:
        run = "digits-mlflow-auth"
        cfg = tracked_config(tmp_path, s3, server.uri, run)
        # the check runs before the driver connects to Ray: no cluster needed
        r = run_cli(
            "train",
            "--address",
            "127.0.0.1:1",
            "--config",
            str(cfg),
            env={"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "wrong"},
        )
    finally:
        server.stop()
    assert r.returncode == 2, r.output[-3000:]
    line = r.stderr.strip().splitlines()[-1]
    assert f"tracking.mlflow.uri {server.uri} refused the credentials (HTTP 401)" in line
    assert not s3.keys(BUCKET, f"checkpoints/{run}/")


@pytest.mark.cluster
def test_an_artifact_store_that_cannot_be_written_stops_the_run(
    ray_cluster, s3, dataset, mlflow_server, tmp_path
):
    run = "digits-mlflow-unwritable"
    client = mlflow_server.client()
    # an experiment whose artifacts go straight to a bucket that does not exist
    client.create_experiment("unwritable", artifact_location="s3://no-such-bucket/mlflow")
    cfg = tracked_config(tmp_path, s3, mlflow_server.uri, run)
    r = train(
        ray_cluster,
        cfg,
        "tracking.mlflow.experiment=unwritable",
        env={"MLFLOW_S3_ENDPOINT_URL": s3.endpoint},
    )
    assert r.returncode == 2, r.output[-3000:]
    line = r.stderr.strip().splitlines()[-1]
    assert "tracking.mlflow.uri" in line and "artifact store cannot be written" in line
    assert not s3.keys(BUCKET, f"checkpoints/{run}/")
    exp = client.get_experiment_by_name("unwritable")
    assert client.search_runs([exp.experiment_id]) == []  # the run it opened is deleted
