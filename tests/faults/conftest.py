"""Fault tests: a training run on the local multi-node cluster, with S3 behind a proxy the
test can cut, and helpers to start a run in the background and watch its checkpoints."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.parquet as pq
import pytest
import torch

from pipeline.records import epoch_digest, row_digests
from tests.conftest import FAKE_AWS, ROOT, CliResult, run_cli, write_config
from tests.faults.netfault import FaultProxy

BUCKET = "ray-pipeline-faults"
DATA = f"s3://{BUCKET}/synthetic"


@dataclass
class Expected:
    rows: int
    digest: list[int]


@pytest.fixture(scope="session")
def faults_data(s3) -> Expected:
    """4,000 MNIST-shaped rows: epochs long enough (several seconds) to fault in the middle."""
    s3.make_bucket(BUCKET)
    r = run_cli(
        "prepare",
        "synthetic",
        "--rows",
        "4000",
        "--out",
        DATA,
        "--set",
        f"s3.endpoint={s3.endpoint}",
    )
    assert r.returncode == 0, r.output
    client = s3.client()
    images = []
    for key in sorted(s3.keys(BUCKET, "synthetic/train/")):
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        images += pq.read_table(io.BytesIO(body)).column("image").to_pylist()
    return Expected(
        rows=len(images), digest=list(epoch_digest(row_digests({"image": images}, ["image"])))
    )


@pytest.fixture
def proxy(s3):
    p = FaultProxy("127.0.0.1", urlparse(s3.endpoint).port)
    yield p
    p.close()


def fault_config(tmp_path: Path, endpoint: str, run: str, **overrides) -> Path:
    tree = {
        "data": {
            "train_uri": f"{DATA}/train",
            "validation_uri": f"{DATA}/validation",
            "image_shape": [28, 28, 1],
        },
        "train": {"epochs": 2, "resources_per_worker": {"CPU": 1}},
        "storage": {"run_name": run, "checkpoint_uri": f"s3://{BUCKET}/checkpoints"},
        "s3": {"endpoint": endpoint},
    }
    for dotted, value in overrides.items():  # section__key=value
        section, key = dotted.split("__")
        tree[section][key] = value
    return write_config(tmp_path / f"{run}.yaml", tree)


def alive_actors(address: str, class_name: str) -> list:
    import ray
    from ray.util.state import list_actors

    ray.init(address=address)
    try:
        return list_actors(
            filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")],
            raise_on_missing_output=False,
        )
    finally:
        ray.shutdown()


class TrainRun:
    """`ray-pipeline train` running in the background, as a RayJob's driver would."""

    def __init__(
        self,
        ray_cluster,
        config: Path,
        s3,
        run: str,
        *extra_args: str,
        bucket: str = BUCKET,
        prefix: str = "checkpoints",
    ):
        self.s3, self.run, self.bucket, self.prefix = s3, run, bucket, prefix
        self.args = [
            sys.executable,
            "-m",
            "pipeline",
            "train",
            "--address",
            ray_cluster.address,
            "--config",
            str(config),
            *extra_args,
        ]
        self.proc: subprocess.Popen | None = None
        self.start_time = 0.0

    def start(self) -> TrainRun:
        env = {**os.environ, **FAKE_AWS, "PYTHONUNBUFFERED": "1"}
        self.start_time = time.monotonic()
        self.proc = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
        return self

    def snapshot(self) -> dict | None:
        """Ray Train's record of the run's checkpoints (what a resume restores)."""
        key = f"{self.prefix}/{self.run}/checkpoint_manager_snapshot.json"
        try:
            body = self.s3.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception:
            return None
        return json.loads(body)

    def latest_epoch(self) -> int:
        snap = self.snapshot()
        if not snap or not snap.get("latest_checkpoint_result"):
            return 0
        return snap["latest_checkpoint_result"]["metrics"]["epoch"]

    def wait_for_epoch(self, epoch: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while self.latest_epoch() < epoch:
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                pytest.fail(f"run ended before epoch {epoch}:\n{(out + err)[-4000:]}")
            assert time.monotonic() < deadline, f"no checkpoint for epoch {epoch} in {timeout}s"
            time.sleep(0.2)

    def kill_train_worker_after_epoch(self, epoch: int, address: str) -> None:
        """SIGKILL the (one) Ray Train worker once ``epoch``'s checkpoint is in the bucket."""
        self.wait_for_epoch(epoch)
        workers = alive_actors(address, "RayTrainWorker")
        assert len(workers) == 1
        os.kill(workers[0].pid, signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL the driver, as when the RayJob's submitter pod dies."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def wait(self, timeout: float = 600) -> CliResult:
        out, err = self.proc.communicate(timeout=timeout)
        return CliResult(self.proc.returncode, out, err, time.monotonic() - self.start_time)


def load_state(s3, run: str, epoch: int) -> dict:
    key = f"checkpoints/{run}/epoch-{epoch:04d}/state.pt"
    body = s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return torch.load(io.BytesIO(body), weights_only=True)


def assert_every_epoch_exactly_once(summary: dict, expected: Expected, epochs: int) -> None:
    """Each epoch in the history appears once, and delivered every training row exactly once:
    the same row count and the same order-free digest of the rows' bytes as the dataset."""
    assert [h["epoch"] for h in summary["history"]] == list(range(1, epochs + 1))
    for h in summary["history"]:
        assert h["train_rows"] == expected.rows, h
        assert h["train_digest"] == expected.digest, h


def finished_run(r: CliResult, expected: Expected, s3, run: str, epochs: int = 2) -> dict:
    assert r.returncode == 0, r.output[-6000:]
    summary = r.summary()
    assert summary["epochs"] == epochs
    assert_every_epoch_exactly_once(summary, expected, epochs)
    assert load_state(s3, run, epochs)["epoch"] == epochs
    return summary
