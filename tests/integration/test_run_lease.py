"""One writer per run, on the 3-node cluster: real ``ray-pipeline train`` processes of one
run name, started together or after a killed holder, on local storage and on S3 (moto)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import finish_cli, read_uri, start_cli, write_config
from tests.integration.conftest import BUCKET, cluster_config

pytestmark = pytest.mark.cluster


def _storage(kind: str, s3, tmp_path: Path, run: str) -> tuple[str, str]:
    """(checkpoint URI, the run folder's URI) on local disk or on the bucket."""
    if kind == "local":
        uri = str(tmp_path / "runs")
    else:
        uri = f"s3://{BUCKET}/lease-{tmp_path.name}"
    return uri, f"{uri}/{run}"


def _exists(s3, uri: str) -> bool:
    if uri.startswith("s3://"):
        bucket, key = uri[len("s3://") :].split("/", 1)
        return bool(s3.keys(bucket, key))
    return Path(uri).exists()


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_two_runs_of_one_name_started_together_one_trains_one_refuses(
    ray_cluster, s3, dataset, tmp_path, kind
):
    run = f"together-{kind}"
    uri, folder = _storage(kind, s3, tmp_path, run)
    cfg = write_config(
        tmp_path / "c.yaml",
        cluster_config(s3, train={"epochs": 2}, storage={"run_name": run, "checkpoint_uri": uri}),
    )
    procs = [
        start_cli("train", "--address", ray_cluster.address, "--config", str(cfg)) for _ in range(2)
    ]
    results = [finish_cli(p) for p in procs]
    done = [r for r in results if r.returncode == 0]
    refused = [r for r in results if r.returncode != 0]
    assert len(done) == 1 and len(refused) == 1, [r.output[-3000:] for r in results]
    # the refusal: one line naming the run and its holder, exit 2
    assert refused[0].returncode == 2
    error = [line for line in refused[0].stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1, refused[0].stderr[-3000:]
    summary = read_uri(f"{folder}/summary.json")
    assert (
        f"error: run '{run}' (storage.run_name) is held by job {summary['ray_job_id']}" in error[0]
    )
    assert "since" in error[0] and "Traceback" not in refused[0].stderr
    # one finished run: one history, each epoch once, its checkpoints, and the lease released
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    assert done[0].last_line()["summary_uri"] == f"{folder}/summary.json"
    assert summary["checkpoint"] == f"{folder}/epoch-0002"
    assert _exists(s3, f"{folder}/epoch-0002/state.pt")
    assert not _exists(s3, f"{folder}/_lease.json")


def test_a_killed_holders_retry_takes_over_after_the_ttl_and_resumes(
    ray_cluster, s3, dataset, tmp_path
):
    run = "killed-holder"
    uri, folder = _storage("s3", s3, tmp_path, run)
    cfg = write_config(
        tmp_path / "c.yaml",
        cluster_config(
            s3,
            train={"epochs": 3},
            storage={"run_name": run, "checkpoint_uri": uri, "lease_ttl_s": 3},
        ),
    )
    holder = start_cli("train", "--address", ray_cluster.address, "--config", str(cfg))
    deadline = time.monotonic() + 300
    # a checkpoint to resume from: written, and registered by Train (its snapshot file)
    while not (
        _exists(s3, f"{folder}/epoch-0001/state.pt")
        and _exists(s3, f"{folder}/checkpoint_manager_snapshot.json")
    ):
        assert holder.poll() is None and time.monotonic() < deadline, "no first checkpoint"
        time.sleep(0.5)
    holder.send_signal(signal.SIGKILL)  # a crashed driver: its lease stays, no longer renewed
    holder.communicate()
    lease = json.loads(read_uri_bytes(s3, f"{folder}/_lease.json"))
    # started at once, the retry would be refused; --wait-for-run waits for the TTL
    retry = finish_cli(
        start_cli("train", "--address", ray_cluster.address, "--config", str(cfg), "--wait-for-run")
    )
    assert retry.returncode == 0, retry.output[-5000:]
    assert f"taking over run '{run}'" in retry.stderr
    assert f"held by job {lease['job_id']}" in retry.stderr
    assert "resuming from epoch" in retry.stderr
    summary = retry.summary()
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3]
    assert not _exists(s3, f"{folder}/_lease.json")


def read_uri_bytes(s3, uri: str) -> bytes:
    bucket, key = uri[len("s3://") :].split("/", 1)
    return s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def test_a_holder_that_lost_its_lease_stops_before_writing_again(
    ray_cluster, s3, dataset, tmp_path
):
    run = "lost-lease"
    uri, folder = _storage("local", s3, tmp_path, run)
    cfg = write_config(
        tmp_path / "c.yaml",
        cluster_config(
            s3,
            train={"epochs": 4},
            storage={"run_name": run, "checkpoint_uri": uri, "lease_ttl_s": 2},
        ),
    )
    stalled = start_cli("train", "--address", ray_cluster.address, "--config", str(cfg))
    deadline = time.monotonic() + 300
    while not _exists(s3, f"{folder}/epoch-0001/state.pt"):
        assert stalled.poll() is None and time.monotonic() < deadline, "no first checkpoint"
        time.sleep(0.2)
    # its driver stalls past the TTL (its train worker goes on): another run takes over
    stalled.send_signal(signal.SIGSTOP)
    time.sleep(3)
    taker = start_cli(
        "train", "--address", ray_cluster.address, "--config", str(cfg), "--wait-for-run"
    )
    lease = Path(folder) / "_lease.json"  # replaced whole (os.replace): never half-written
    while json.loads(lease.read_text())["pid"] != taker.pid:
        assert taker.poll() is None and time.monotonic() < deadline, "no takeover"
        time.sleep(0.2)
    stalled.send_signal(signal.SIGCONT)
    lost, took = finish_cli(stalled), finish_cli(taker)
    assert lost.returncode == 2, lost.output[-3000:]
    errors = [line for line in lost.stderr.splitlines() if line.startswith("error:")]
    assert errors and f"run '{run}' lost its lease" in errors[-1], lost.stderr[-3000:]
    assert took.returncode == 0, took.output[-3000:]
    assert f"taking over run '{run}'" in took.stderr
    summary = read_uri(f"{folder}/summary.json")
    # one history, each epoch once, and the summary is the taker's
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3, 4]
    assert summary["ray_job_id"] == took.summary()["ray_job_id"]
