"""Deadlines that really stop the Ray job (issue #12, point 4), against a real local Ray.

KubeRay 1.7 only marks a RayJob on an existing cluster Failed with DeadlineExceeded
(rayjob_controller.go: checkActiveDeadlineAndUpdateStatusIfNeeded); its Ray job runs on. Two
things stop it here, both tested on real Ray jobs submitted with Ray's JobSubmissionClient to a
one-node Ray started for this module:
- the entrypoint wrapper `python -m pipeline.deadline` (every RayJob's entrypoint) stops the
  command at its deadline;
- `ray-pipeline status` / `submit`, seeing DeadlineExceeded, stop the Ray job through the
  dashboard's job API, reached through the API server's Service proxy. The Kubernetes API and
  the operator cannot run here, so the RayJob's status comes from tests/k8s/fake_api.py (the
  status KubeRay writes at the deadline) and its Service proxy forwards to the real dashboard.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pipeline.cli import main
from tests.conftest import free_port
from tests.k8s.conftest import REPO
from tests.k8s.fake_api import FakeApiServer, FakeCluster

pytestmark = pytest.mark.cluster

# One CPU and no token: the smallest Ray with a dashboard (the machine is small and shared, and
# token auth would only add a Secret to fake; the header path is checked on the proxy below).
# Its own temp dir and ports, so that a Ray already running here (another test session) is
# neither joined nor disturbed; `--block` ties every process it starts to the one we stop.
RAY_PORTS = (
    "port", "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
    "metrics-export-port", "runtime-env-agent-port", "ray-client-server-port",
    "node-manager-port", "object-manager-port",
)  # fmt: skip
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@pytest.fixture(scope="module")
def dashboard():
    """The dashboard URL of a local one-node Ray (stopped when the module is done)."""
    pytest.importorskip("ray.job_submission")
    from ray.job_submission import JobSubmissionClient

    ports = {name: free_port() for name in RAY_PORTS}
    temp_dir = tempfile.mkdtemp(prefix="rp-ray-", dir="/tmp")  # short: Ray's socket paths
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    ray = Path(sys.executable).with_name("ray")
    argv = [str(ray), "start", "--head", "--block", "--num-cpus=1", "--include-dashboard=true",
            "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}",
            f"--object-store-memory={80 * 2**20}", "--disable-usage-stats",
            *(f"--{name}={port}" for name, port in ports.items())]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        deadline = time.monotonic() + 120
        while True:  # the job agent takes jobs a little after the head is up
            assert proc.poll() is None, "ray start --head exited"
            try:
                JobSubmissionClient(url).submit_job(entrypoint="true")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        yield url
    finally:
        proc.terminate()  # --block: stops the processes it started
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)


def client(url: str):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(url)


def wait_terminal(url: str, job_id: str, timeout_s: float = 90) -> str:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        status = str(client(url).get_job_status(job_id).value)
        if status in TERMINAL:
            return status
        time.sleep(0.5)
    pytest.fail(f"Ray job {job_id} still {status} after {timeout_s}s")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def sleeper(pid_file: Path) -> str:
    """A command that writes its pid and would run ten minutes."""
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    return f"{sys.executable} -c {json.dumps(code)}"


def test_the_entrypoint_wrapper_stops_the_ray_job_at_its_deadline(dashboard, tmp_path):
    pid_file = tmp_path / "pid"
    entrypoint = f"{sys.executable} -m pipeline.deadline 3 -- {sleeper(pid_file)}"
    started = time.monotonic()
    job_id = client(dashboard).submit_job(
        entrypoint=entrypoint,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "RAY_PIPELINE_DEADLINE_GRACE_S": "5"}},
    )
    assert wait_terminal(dashboard, job_id) == "FAILED"
    assert time.monotonic() - started < 60  # not the command's ten minutes
    logs = client(dashboard).get_job_logs(job_id)
    assert "ran for 3s, its deadline" in logs and "stopping it" in logs
    assert not pid_alive(int(pid_file.read_text()))  # the command itself is gone


def test_the_wrapper_passes_the_commands_exit_code_through(dashboard):
    job_id = client(dashboard).submit_job(
        entrypoint=f"{sys.executable} -m pipeline.deadline 60 -- {sys.executable} -c 'exit(0)'",
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
    )
    assert wait_terminal(dashboard, job_id) == "SUCCEEDED"


def overdue_rayjob(job_id: str, dashboard: str) -> tuple[dict, dict]:
    """A RayJob as KubeRay leaves it at the deadline: Failed/DeadlineExceeded, Ray job RUNNING."""
    port = dashboard.rsplit(":", 1)[1]
    obj = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "rp-train-1", "namespace": "ml"},
    }
    status = {
        "jobDeploymentStatus": "Failed",
        "reason": "DeadlineExceeded",
        "message": "The RayJob has passed the activeDeadlineSeconds.",
        "jobStatus": "RUNNING",
        "jobId": job_id,
        "rayClusterName": "rp-ray-pipeline",
        "dashboardURL": f"rp-ray-pipeline-head-svc.ml.svc.cluster.local:{port}",
    }
    return obj, status


def test_status_stops_a_ray_job_kuberay_reports_past_its_deadline(
    dashboard, tmp_path, monkeypatch, capsys
):
    pid_file = tmp_path / "pid"
    job_id = client(dashboard).submit_job(entrypoint=sleeper(pid_file))
    end = time.monotonic() + 60
    while str(client(dashboard).get_job_status(job_id).value) != "RUNNING":
        assert time.monotonic() < end
        time.sleep(0.5)
    obj, status = overdue_rayjob(job_id, dashboard)
    port = dashboard.rsplit(":", 1)[1]
    fake = FakeCluster(statuses=[status])
    fake.rayjobs[("ml", "rp-train-1")] = obj
    fake.services[f"ml/rp-ray-pipeline-head-svc:{port}"] = dashboard
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    with FakeApiServer(fake, tmp_path) as kubeconfig:
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        code = main(["status", "rp-train-1"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"stopped Ray job {job_id}" in err
    assert wait_terminal(dashboard, job_id) == "STOPPED"
    # It went through the API server with the kubeconfig's credentials.
    assert fake.proxied and all(
        h.get("Authorization") == "Bearer not-a-real-token" for h in fake.proxied
    )


def test_an_unreachable_dashboard_says_how_to_stop_the_job(tmp_path, monkeypatch, capsys):
    """No Ray needed: the proxy has no endpoint, and the user is told what to run."""
    obj, status = overdue_rayjob("raysubmit_x", "http://127.0.0.1:8265")
    fake = FakeCluster(statuses=[status])
    fake.rayjobs[("ml", "rp-train-1")] = obj
    with FakeApiServer(fake, tmp_path) as kubeconfig:
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        assert main(["status", "rp-train-1"]) == 1
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if "past its deadline" in ln]
    assert "could not stop Ray job raysubmit_x" in line
    assert "kubectl -n ml delete rayjob rp-train-1" in line
