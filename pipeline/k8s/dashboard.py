"""Stopping a Ray job that KubeRay has given up on at its deadline.

At `activeDeadlineSeconds` KubeRay 1.7 marks the RayJob Failed with reason DeadlineExceeded and
does nothing else (rayjob_controller.go: checkActiveDeadlineAndUpdateStatusIfNeeded); it calls
the dashboard's StopJob only when the RayJob is deleted. On a long-lived cluster the Ray job, and
the GPUs it holds, would go on. `submit` and `status` stop it through the dashboard's job API
(Ray's `JobSubmissionClient`), reached through the Kubernetes API server's Service proxy (or
`--dashboard URL`, e.g. a `kubectl port-forward`). The driver also stops itself at its deadline
(pipeline/deadline.py), so this is the prompt path, not the only one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pipeline.errors import first_line

DEADLINE_EXCEEDED = "DeadlineExceeded"
TERMINAL_JOB_STATUSES = ("SUCCEEDED", "FAILED", "STOPPED")
AUTH_TOKEN_KEY = "auth_token"  # the key of KubeRay's auth Secret


def overdue(obj: Mapping[str, Any]) -> bool:
    """KubeRay reports DeadlineExceeded while the Ray job may still run."""
    status = obj.get("status") or {}
    return (
        status.get("reason") == DEADLINE_EXCEEDED
        and bool(status.get("jobId"))
        and status.get("jobStatus") not in TERMINAL_JOB_STATUSES
    )


def kuberay_name(name: str) -> str:
    """A name as KubeRay clips it for the objects it derives (utils/util.go: CheckName)."""
    if len(name) > 50:
        name = name[len(name) - 50 :]
    if name[:1].isdigit() or not name[:1].isalnum():
        name = "r" + name[1:]
    return name


def stop_ray_job(
    address: str, job_id: str, headers: Mapping[str, str] | None = None, verify: Any = True
) -> bool:
    """Ask the dashboard at ``address`` to stop ``job_id``; True when it was still running."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address, headers=dict(headers or {}), verify=verify)
    return client.stop_job(job_id)


def stop_overdue(api: Any, obj: Mapping[str, Any], dashboard: str | None = None) -> str:
    """Stop the Ray job of an overdue RayJob; one line saying what happened."""
    meta, status = obj["metadata"], obj["status"]
    name, namespace, job_id = meta["name"], meta.get("namespace", "default"), status["jobId"]
    by_hand = (
        f"stop it with: kubectl -n {namespace} delete rayjob {name} (KubeRay stops the Ray job "
        "of a deleted RayJob), or ray job stop --address <dashboard> " + job_id
    )
    headers: dict[str, str] = {}
    verify: Any = True
    if dashboard:
        address = dashboard
    else:
        url = str(status.get("dashboardURL") or "")
        host, _, port = url.removeprefix("http://").partition(":")
        if not host:
            return f"{name}: past its deadline, and KubeRay reports no dashboard: {by_hand}"
        address = api.service_proxy_url(namespace, host.split(".", 1)[0], port or 8265)
        headers, verify = dict(api.auth_headers), api.verify
    token = os.environ.get("RAY_AUTH_TOKEN")
    if not token and status.get("rayClusterName"):
        token = api.secret_value(namespace, kuberay_name(status["rayClusterName"]), AUTH_TOKEN_KEY)
    if token:
        # The API server consumes Authorization; Ray also reads its token from this header.
        headers["X-Ray-Authorization"] = f"Bearer {token}"
    try:
        stopped = stop_ray_job(address, job_id, headers, verify)
    except ImportError:
        return f"{name}: past its deadline; Ray is not installed here to stop it: {by_hand}"
    except Exception as e:  # the dashboard's or the proxy's refusal, as one line
        failed = f"could not stop Ray job {job_id} ({first_line(e)})"
        return f"{name}: past its deadline; {failed}: {by_hand}"
    if stopped:
        return f"{name}: past its deadline (KubeRay only marks it Failed): stopped Ray job {job_id}"
    return f"{name}: past its deadline; Ray job {job_id} had already ended"
