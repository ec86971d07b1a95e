"""What a RayJob's status means, and following one to the end.

`interpret()` reads a RayJob's status. `submit`, `status` and the Argo CD health check
(k8s/argocd/rayjob-health.lua) give the same verdict for every pair of statuses.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from pipeline.errors import KubernetesError
from pipeline.k8s.api import Unreachable

# KubeRay 1.7's values (ray-operator/apis/ray/v1/rayjob_types.go); "" is New / not yet known.
DEPLOYMENT_STATUSES = (
    "", "Initializing", "Running", "Complete", "Failed", "ValidationFailed",
    "Suspending", "Suspended", "Retrying", "Waiting",
)  # fmt: skip
JOB_STATUSES = ("", "PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED")

EXIT_SUCCEEDED, EXIT_FAILED, EXIT_UNFINISHED = 0, 1, 3
POLL_INTERVAL_S = 2.0  # how often submit and status --follow read the RayJob


@dataclass(frozen=True)
class JobState:
    """A RayJob's status, read: `outcome` is progressing, succeeded or failed."""

    deployment: str  # status.jobDeploymentStatus
    job: str  # status.jobStatus (the Ray job's own status)
    outcome: str
    detail: str = ""  # status.reason and status.message

    @property
    def finished(self) -> bool:
        return self.outcome != "progressing"

    @property
    def exit_code(self) -> int:
        return {"succeeded": EXIT_SUCCEEDED, "failed": EXIT_FAILED}.get(
            self.outcome, EXIT_UNFINISHED
        )

    def describe(self) -> str:
        text = self.deployment or "New"
        if self.job:
            text += f", Ray job {self.job}"
        return f"{text} ({self.detail})" if self.detail and self.outcome == "failed" else text


def interpret(status: Mapping[str, Any] | None) -> JobState:
    """Succeeded only when the deployment is Complete and the Ray job SUCCEEDED.

    Failed: the deployment Failed (KubeRay retries, if any, are used up by then: a retry shows
    as Retrying) or ValidationFailed, or it is Complete without success (a STOPPED job).
    Everything else, including statuses newer than KubeRay 1.7, is still progressing.
    """
    status = status or {}
    deployment = str(status.get("jobDeploymentStatus") or "")
    job = str(status.get("jobStatus") or "")
    detail = ": ".join(str(status[k]) for k in ("reason", "message") if status.get(k))
    if deployment == "Complete":
        outcome = "succeeded" if job == "SUCCEEDED" else "failed"
    elif deployment in ("Failed", "ValidationFailed"):
        outcome = "failed"
    else:
        outcome = "progressing"
    return JobState(deployment, job, outcome, detail)


def follow(
    get: Callable[[], dict[str, Any]],
    *,
    timeout_s: float | None = None,
    interval_s: float | None = None,
    outage_s: float = 60.0,
    out: TextIO | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[dict[str, Any], JobState]:
    """Poll a RayJob until it finishes (or `timeout_s` passes), printing each status change and
    the dashboard URL once known. Returns the last object and its state."""
    out = out or sys.stderr
    interval_s = POLL_INTERVAL_S if interval_s is None else interval_s
    start = clock()
    last: tuple[str, str] | None = None
    dashboard = None
    unreachable_since: float | None = None
    while True:
        try:
            obj = get()
            unreachable_since = None
        except Unreachable as e:
            unreachable_since = unreachable_since if unreachable_since is not None else clock()
            if clock() - unreachable_since > outage_s:
                raise KubernetesError(str(e)) from None
            sleep(interval_s)
            continue
        status = obj.get("status") or {}
        state = interpret(status)
        if (state.deployment, state.job) != last:
            last = (state.deployment, state.job)
            stamp = time.strftime("%H:%M:%S")
            print(f"{stamp} {obj['metadata']['name']}: {state.describe()}", file=out, flush=True)
        if status.get("dashboardURL") and status["dashboardURL"] != dashboard:
            dashboard = status["dashboardURL"]
            print(dashboard_hint(obj), file=out, flush=True)
        if state.finished or (timeout_s is not None and clock() - start >= timeout_s):
            return obj, state
        sleep(interval_s)


def dashboard_hint(obj: Mapping[str, Any]) -> str:
    url = obj["status"]["dashboardURL"]
    host, _, port = url.removeprefix("http://").partition(":")
    service = host.split(".", 1)[0]
    namespace = obj["metadata"].get("namespace", "default")
    return (
        f"  dashboard: http://{url.removeprefix('http://')} (inside the cluster; from here: "
        f"kubectl -n {namespace} port-forward svc/{service} {port or 8265}:{port or 8265}, "
        f"then http://127.0.0.1:{port or 8265})"
    )


def summary(obj: Mapping[str, Any], state: JobState) -> dict[str, Any]:
    """The one JSON line submit and status print last on stdout."""
    status = obj.get("status") or {}
    return {
        "name": obj["metadata"]["name"],
        "namespace": obj["metadata"].get("namespace"),
        "outcome": state.outcome,
        "jobDeploymentStatus": state.deployment,
        "jobStatus": state.job,
        "reason": status.get("reason"),
        "message": status.get("message"),
        "rayClusterName": status.get("rayClusterName"),
        "dashboardURL": status.get("dashboardURL"),
    }


def finish(obj: Mapping[str, Any], state: JobState, followed_s: float | None = None) -> int:
    """Print the summary line; the exit code: 0 SUCCEEDED, 1 failed, 3 not finished."""
    if not state.finished and followed_s is not None:
        name = obj["metadata"]["name"]
        print(
            f"{name} is still {state.describe()} after {followed_s:g}s and goes on running; "
            f"follow it with: ray-pipeline status --follow {name}",
            file=sys.stderr,
        )
    print(json.dumps(summary(obj, state), sort_keys=True), flush=True)
    return state.exit_code
