"""What a RayJob's status means, in the three places that read it: the Argo CD health check
(k8s/argocd/rayjob-health.lua, run here in Lua 5.1 like Argo CD's gopher-lua), and
`ray-pipeline submit` / `status` (pipeline.k8s.interpret). They agree on every pair of
KubeRay 1.7's jobDeploymentStatus and jobStatus values, and on values KubeRay may add."""

from __future__ import annotations

import itertools

import pytest
import yaml

from pipeline import k8s
from tests.k8s.conftest import K8S_DIR

SCRIPT = (K8S_DIR / "argocd" / "rayjob-health.lua").read_text()
ARGO_HEALTH = {"succeeded": "Healthy", "failed": "Degraded", "progressing": "Progressing"}

# KubeRay 1.7, ray-operator/apis/ray/v1/rayjob_types.go: JobDeploymentStatus* and JobStatus*.
KUBERAY_DEPLOYMENT_STATUSES = {
    "", "Initializing", "Running", "Complete", "Failed", "ValidationFailed",
    "Suspending", "Suspended", "Retrying", "Waiting",
}  # fmt: skip
KUBERAY_JOB_STATUSES = {"", "PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED"}
PAIRS = list(itertools.product([*k8s.DEPLOYMENT_STATUSES, "Paused"], [*k8s.JOB_STATUSES, "ZOMBIE"]))


def lua_health(obj: dict) -> dict:
    """Run the health check as Argo CD does: `obj` is a global, the chunk returns hs."""
    try:
        from lupa.lua51 import LuaRuntime
    except ImportError:  # an older lupa: its default Lua runs this script the same
        from lupa import LuaRuntime
    lua = LuaRuntime()
    lua.globals().obj = lua.table_from(obj, recursive=True)
    hs = lua.execute(SCRIPT)
    return {"status": hs["status"], "message": hs["message"]}


def rayjob(deployment: str | None, job: str | None, **status) -> dict:
    """A RayJob as the API returns it; empty statuses are absent, as KubeRay omits them."""
    if deployment:
        status["jobDeploymentStatus"] = deployment
    if job:
        status["jobStatus"] = job
    obj = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "rp-train-1"}}
    if status:
        obj["status"] = status
    return obj


def test_the_statuses_are_kuberay_1_7s():
    assert set(k8s.DEPLOYMENT_STATUSES) == KUBERAY_DEPLOYMENT_STATUSES
    assert set(k8s.JOB_STATUSES) == KUBERAY_JOB_STATUSES


@pytest.mark.parametrize(
    "deployment, job, expected",
    [
        (None, None, "Progressing"),  # just created: no status yet
        ("Initializing", None, "Progressing"),
        ("Waiting", None, "Progressing"),
        ("Running", "PENDING", "Progressing"),
        ("Running", "RUNNING", "Progressing"),
        ("Running", "SUCCEEDED", "Progressing"),  # the submitter has not finished yet
        ("Complete", "SUCCEEDED", "Healthy"),
        ("Complete", "STOPPED", "Degraded"),  # terminal, and not a success
        ("Failed", "FAILED", "Degraded"),
        ("Failed", None, "Degraded"),  # e.g. the submitter failed, or a deadline passed
        ("ValidationFailed", None, "Degraded"),
        ("Retrying", "FAILED", "Progressing"),  # KubeRay retries on a new cluster
        ("Suspended", None, "Progressing"),
        ("Suspending", "RUNNING", "Progressing"),
    ],
)
def test_health_of_sample_statuses(deployment, job, expected):
    obj = rayjob(deployment, job)
    assert lua_health(obj)["status"] == expected
    assert ARGO_HEALTH[k8s.interpret(obj.get("status")).outcome] == expected


@pytest.mark.parametrize("deployment, job", PAIRS, ids=lambda v: v or "-")
def test_lua_and_python_agree_on_every_pair(deployment, job):
    obj = rayjob(deployment, job, reason="AppFailed", message="Job entrypoint command failed")
    state = k8s.interpret(obj.get("status"))
    health = lua_health(obj)
    assert health["status"] == ARGO_HEALTH[state.outcome]
    assert health["message"] == state.describe()
    # Healthy exactly when `submit` and `status` exit 0; every other finished state is non-zero.
    assert (health["status"] == "Healthy") == (state.exit_code == 0)
    if health["status"] == "Degraded":
        assert state.exit_code == k8s.EXIT_FAILED
    if health["status"] == "Progressing":
        assert state.exit_code == k8s.EXIT_UNFINISHED and not state.finished


def test_a_failure_says_why():
    obj = rayjob(
        "Failed",
        None,
        reason="DeadlineExceeded",
        message="The RayJob has passed the activeDeadlineSeconds.",
    )
    message = lua_health(obj)["message"]
    assert message == "Failed (DeadlineExceeded: The RayJob has passed the activeDeadlineSeconds.)"
    assert k8s.interpret(obj["status"]).describe() == message
    invalid = rayjob(
        "ValidationFailed", None, reason="ValidationFailed", message="BackoffLimit is incompatible"
    )
    assert "BackoffLimit is incompatible" in lua_health(invalid)["message"]


def test_a_full_status_from_the_api():
    """The shape KubeRay writes, nested cluster status and all."""
    status = {
        "jobDeploymentStatus": "Complete",
        "jobStatus": "SUCCEEDED",
        "jobId": "rp-train-1-abcde",
        "rayClusterName": "rp-ray-pipeline",
        "dashboardURL": "rp-ray-pipeline-head-svc.ml.svc.cluster.local:8265",
        "startTime": "2026-01-01T10:00:00Z",
        "endTime": "2026-01-01T10:20:00Z",
        "succeeded": 1,
        "failed": 0,
        "observedGeneration": 1,
        "rayJobInfo": {"startTime": "2026-01-01T10:01:00Z", "endTime": "2026-01-01T10:19:00Z"},
        "rayClusterStatus": {"state": "ready", "availableWorkerReplicas": 3, "conditions": []},
    }
    obj = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "rp-train-1"},
        "status": status,
    }
    assert lua_health(obj) == {"status": "Healthy", "message": "Complete, Ray job SUCCEEDED"}


def test_the_argocd_cm_embeds_the_script_unchanged(validate):
    (cm,) = yaml.safe_load_all((K8S_DIR / "argocd" / "argocd-cm.yaml").read_text())
    assert validate(cm) == []
    assert cm["metadata"] == {**cm["metadata"], "name": "argocd-cm", "namespace": "argocd"}
    assert cm["data"] == {"resource.customizations.health.ray.io_RayJob": SCRIPT}
