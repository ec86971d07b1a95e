"""Kubernetes submission: `ray-pipeline submit` and `ray-pipeline status` (KubeRay RayJob).

`submit` renders a RayJob that runs `ray-pipeline train` on the Helm chart's long-lived
RayCluster (`clusterSelector: {ray.io/cluster: <name>}`), creates it under a unique name and
follows it to a terminal state. The driver runs on that cluster's head, where the chart mounts
the pipeline config; the user's `--set` overrides (and the leaves of a local `--config`) travel
in the entrypoint, and `--working-dir` / `--pip` in its runtime env. A RayJob with a cluster of
its own is the chart's `rayJobs.mode: ephemeral`: its cluster spec is the chart's, and this
package does not copy it.

- `rayjob.py`: rendering the RayJob, reading the chart's RayCluster;
- `api.py`: the Kubernetes API calls, finding the release's RayCluster;
- `status.py`: what a RayJob's status means (`interpret`, the same verdict as the Argo CD
  health check k8s/argocd/rayjob-health.lua) and following one;
- `dashboard.py`: stopping the Ray job through the dashboard's job API when KubeRay reports
  DeadlineExceeded (KubeRay only marks the RayJob Failed);
- `cli.py`: the `submit` and `status` commands.
"""

from pipeline.k8s.cli import register
from pipeline.k8s.rayjob import (
    DEFAULT_DEADLINE_S,
    DNS_1035,
    MAX_NAME_LENGTH,
    Target,
    __version__,
    chart_fullname,
    config_file_overrides,
    entrypoint,
    job_name,
    render_rayjob,
    target_from_cluster,
)
from pipeline.k8s.status import (
    DEPLOYMENT_STATUSES,
    EXIT_FAILED,
    EXIT_SUCCEEDED,
    EXIT_UNFINISHED,
    JOB_STATUSES,
    JobState,
    follow,
    interpret,
)

__all__ = [
    "DEFAULT_DEADLINE_S", "DEPLOYMENT_STATUSES", "DNS_1035", "EXIT_FAILED", "EXIT_SUCCEEDED",
    "EXIT_UNFINISHED", "JOB_STATUSES", "MAX_NAME_LENGTH", "JobState", "Target", "__version__",
    "chart_fullname", "config_file_overrides", "entrypoint", "follow", "interpret", "job_name",
    "register", "render_rayjob", "target_from_cluster",
]  # fmt: skip
