"""Queued runs say what they wait for: on the 3-node cluster the train group (one CPU) has
room for one run; a second run, of another name, says every few seconds what it waits for
and who holds the group, then trains; a third with ``train.placement.wait_s`` gives up with
one line. Ray's raylet warnings stay off the console."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import finish_cli, start_cli, write_config
from tests.integration.conftest import cluster_config

pytestmark = pytest.mark.cluster

WAIT_LINE_S = "3"  # RAY_PIPELINE_WAIT_LINE_S: a waiting line every 3 s instead of 30


def test_a_queued_run_says_what_it_waits_for_then_trains_and_wait_s_bounds_it(
    ray_cluster, s3, dataset, tmp_path
):
    runs = tmp_path / "runs"

    def config(name: str, **train) -> str:
        tree = cluster_config(
            s3,
            train={"epochs": 1, **train},
            storage={"run_name": name, "checkpoint_uri": str(runs)},
        )
        return str(write_config(tmp_path / f"{name}.yaml", tree))

    address = ("--address", ray_cluster.address)
    env = {"RAY_PIPELINE_WAIT_LINE_S": WAIT_LINE_S}
    first = start_cli("train", *address, "--config", config("queue-a", epochs=3), env=env)
    deadline = time.monotonic() + 300
    while not (runs / "queue-a" / "_lease.json").exists():
        assert first.poll() is None and time.monotonic() < deadline, "queue-a did not start"
        time.sleep(0.2)
    second = start_cli("train", *address, "--config", config("queue-b", epochs=3), env=env)
    while not any((runs / name / "epoch-0001").exists() for name in ("queue-a", "queue-b")):
        assert first.poll() is None and time.monotonic() < deadline, "no run trained"
        time.sleep(0.5)
    # one of them holds the train group, the other waits for it: a third may wait 3 s only
    train_selector = {"ray.io/node-group": "train"}
    bounded = start_cli(
        "train",
        *address,
        "--config",
        config("queue-c", placement={"selector": train_selector, "wait_s": 3}),
        env=env,
    )
    c = finish_cli(bounded)
    a, b = finish_cli(first), finish_cli(second)
    assert a.returncode == 0 and b.returncode == 0, (a.output[-3000:], b.output[-3000:])
    jobs = {"queue-a": a.summary()["ray_job_id"], "queue-b": b.summary()["ray_job_id"]}

    # the run that came second to the train group said so, naming the other, then trained
    lines = {
        name: [line for line in r.stderr.splitlines() if line.startswith("waiting for the")]
        for name, r in (("queue-a", a), ("queue-b", b))
    }
    waited = [name for name, found in lines.items() if found]
    assert len(waited) == 1, lines
    holder = ({"queue-a", "queue-b"} - set(waited)).pop()
    assert lines[waited[0]][0].startswith(
        "waiting for the train group: 1 worker x CPU=1 (train.resources_per_worker); "
        f"held by run '{holder}' (job {jobs[holder]}) since "
    )
    assert lines[waited[0]][0].endswith(" s so far")
    assert a.summary()["epochs"] == b.summary()["epochs"] == 3
    # Ray's own warnings stay in Ray's logs (no --verbose)
    for r in (a, b, c):
        assert "(raylet)" not in r.output and "WARNING" not in r.output

    # queue-c gave up after train.placement.wait_s with one line naming the holder, exit 2
    assert c.returncode == 2, c.output[-5000:]
    errors = [line for line in c.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, c.stderr[-3000:]
    assert errors[0].startswith(
        "error: the train group did not take run 'queue-c' within train.placement.wait_s=3s: "
        "1 worker x CPU=1 (train.resources_per_worker); held by run 'queue-"
    )
    assert " since " in errors[0] and "Traceback" not in c.stderr
    assert not list(Path(runs / "queue-c").glob("epoch-*"))  # nothing trained, nothing written
