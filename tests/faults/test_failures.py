"""A run on a shared cluster loses workers, nodes, its S3 endpoint and its driver: it either
finishes with every epoch intact or fails cleanly and resumes.

Each test starts `ray-pipeline train` in the background on the local multi-node cluster,
does one thing to it mid-run, and checks the outcome: epochs, checkpoints in the bucket, and
that every finished epoch delivered each training row exactly once (row count plus an
order-free digest of the rows' bytes, compared with the dataset's)."""

from __future__ import annotations

import time

import pytest

from tests.conftest import run_cli
from tests.faults.conftest import TrainRun, alive_actors, fault_config, finished_run, load_state

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_train_worker_killed_mid_epoch_restores_and_finishes(
    ray_cluster, s3, faults_data, tmp_path
):
    run = TrainRun(
        ray_cluster, fault_config(tmp_path, s3.endpoint, "worker-kill"), s3, "worker-kill"
    ).start()
    run.kill_train_worker_after_epoch(1, ray_cluster.address)
    r = run.wait()
    finished_run(r, faults_data, s3, "worker-kill")
    # restored inside the same run, from the checkpoint written before the kill
    assert "resuming from epoch" in r.output
    assert "epoch 1/2:" in r.output


def test_data_node_replaced_mid_epoch(ray_cluster, s3, faults_data, tmp_path):
    run = TrainRun(
        ray_cluster, fault_config(tmp_path, s3.endpoint, "node-loss"), s3, "node-loss"
    ).start()
    run.wait_for_epoch(1)
    time.sleep(1)  # into epoch 2's reads
    old = ray_cluster.node_ids["data"]
    new = ray_cluster.replace_node("data")
    assert new != old
    # the run's bad-record counters live with the driver, on the head: not lost with the node
    (ledger,) = [
        a
        for a in alive_actors(ray_cluster.address, "BadRecordLedger")
        if a.name.startswith("bad-records-node-loss-")  # per run and job (one writer per run)
    ]
    assert ledger.node_id == ray_cluster.node_ids["headgroup"]
    r = run.wait()
    # Ray Data re-runs the lost tasks on the new node (or Train restarts the epoch from its
    # checkpoint when the stream itself is lost): either way no finished epoch drops or
    # repeats a row.
    finished_run(r, faults_data, s3, "node-loss")


def test_s3_outage_of_a_few_seconds_is_ridden_out(ray_cluster, s3, proxy, faults_data, tmp_path):
    cfg = fault_config(tmp_path, proxy.url, "s3-blip")
    run = TrainRun(ray_cluster, cfg, s3, "s3-blip").start()
    run.wait_for_epoch(1)
    # go down while epoch 2 reads (its train files, or its validation at the end)
    proxy.watch(b"GET /ray-pipeline-faults/synthetic/")
    assert proxy.seen.wait(timeout=120), "epoch 2 read nothing from S3"
    proxy.down()
    time.sleep(4)
    proxy.up()
    r = run.wait()
    finished_run(r, faults_data, s3, "s3-blip")


def test_s3_gone_for_good_fails_with_one_line_and_keeps_checkpoints(
    ray_cluster, s3, proxy, faults_data, tmp_path
):
    cfg = fault_config(
        tmp_path, proxy.url, "s3-gone", s3__retry_max_attempts=6, train__max_failures=1
    )
    run = TrainRun(ray_cluster, cfg, s3, "s3-gone").start()
    run.wait_for_epoch(1)
    proxy.down()
    r = run.wait(timeout=300)
    assert r.returncode == 2, r.output[-4000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, r.stderr[-4000:]
    assert f"lost the S3 endpoint {proxy.url} (s3.endpoint)" in errors[0]
    # no traceback of the CLI's own (the workers' logs, tagged "(pid=...)", may hold Ray's)
    assert not any(line.startswith("Traceback") for line in r.stderr.splitlines())
    # what was written before the outage is whole: the latest checkpoint loads
    latest = run.latest_epoch()
    assert latest >= 1
    assert load_state(s3, "s3-gone", latest)["epoch"] == latest


def test_driver_killed_while_a_checkpoint_uploads_then_rerun_resumes(
    ray_cluster, s3, proxy, faults_data, tmp_path
):
    # a short lease: the killed driver's lease goes stale soon, and its retry takes it over
    cfg = fault_config(tmp_path, proxy.url, "driver-kill", storage__lease_ttl_s=5)
    proxy.hold(b"driver-kill/epoch-0002/state.pt")
    run = TrainRun(ray_cluster, cfg, s3, "driver-kill").start()
    assert proxy.held.wait(timeout=300), "the epoch-2 checkpoint upload never started"
    run.kill()  # the driver (and with it the job's workers) dies mid-upload
    # The half-uploaded checkpoint never became "latest": epoch 1 is, and it loads.
    assert run.latest_epoch() == 1
    assert load_state(s3, "driver-kill", 1)["epoch"] == 1
    assert "checkpoints/driver-kill/epoch-0002/state.pt" not in s3.keys(
        "ray-pipeline-faults", "checkpoints/driver-kill/"
    )
    proxy.release()
    # the same command again, as a RayJob retry would run it, waiting for the dead driver's
    # lease to go stale (storage.lease_ttl_s) instead of refusing
    r = run_cli(*run.args[3:], "--wait-for-run", timeout=600)
    finished_run(r, faults_data, s3, "driver-kill")
    assert "taking over run 'driver-kill'" in r.output
    assert "resuming from epoch 1" in r.output
    assert "epoch 1/2:" not in r.output
