"""Rendering the RayJob that `ray-pipeline submit` creates, and reading the chart's RayCluster
it runs on (image, security, pull secrets, the mounted pipeline config)."""

from __future__ import annotations

import os
import posixpath
import re
import secrets
import shlex
import string
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline import __version__
from pipeline.config import load_config
from pipeline.errors import KubernetesError

GROUP, VERSION = "ray.io", "v1"
API_VERSION = f"{GROUP}/{VERSION}"
CLUSTER_SELECTOR_KEY = "ray.io/cluster"  # KubeRay looks the cluster up by this key's value
# KubeRay names a RayJob's own cluster `<job>-xxxxx` (at most 53 characters), so a RayJob's
# name may have 47. It must also be a DNS-1035 label (a letter first).
MAX_NAME_LENGTH = 47
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

CONFIG_ENV = "RAY_PIPELINE_CONFIG"  # set by the chart in every Ray container
CHART_NAME = "ray-pipeline"
NAME_LABEL, INSTANCE_LABEL = "app.kubernetes.io/name", "app.kubernetes.io/instance"
PART_OF_LABEL = "app.kubernetes.io/part-of"
# KubeRay marks the RayCluster it creates for a RayJob with `ray.io/originated-from-crd: RayJob`.
ORIGINATED_FROM_CRD_LABEL = "ray.io/originated-from-crd"
RUN_NAME_ANNOTATION = "ray-pipeline.io/run-name"
DEFAULT_IMAGE = f"ghcr.io/ray-pipeline/ray-pipeline:{__version__}"

# The chart's defaults for its RayJobs (rayJobs.* in helm/ray-pipeline/values.yaml, and its
# podSecurityContext / containerSecurityContext); tests/k8s checks that both agree.
DEFAULT_DEADLINE_S = 86_400
SUBMITTER_BACKOFF_LIMIT = 2
SUBMITTER_RESOURCES = {"cpu": "500m", "memory": "1Gi"}
POD_SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 100,
    "fsGroup": 100,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT = {
    "allowPrivilegeEscalation": False,
    "privileged": False,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


@dataclass
class Target:
    """The chart's RayCluster a job runs on, and what the submitter pod takes from it."""

    namespace: str
    cluster: str
    # app.kubernetes.io/name and /instance: the release's NetworkPolicy admits pods with these.
    release_labels: dict[str, str]
    image: str = DEFAULT_IMAGE
    pull_policy: str = "IfNotPresent"
    pod_security_context: dict[str, Any] = field(default_factory=lambda: dict(POD_SECURITY_CONTEXT))
    container_security_context: dict[str, Any] = field(
        default_factory=lambda: dict(CONTAINER_SECURITY_CONTEXT)
    )
    image_pull_secrets: list[dict[str, str]] = field(default_factory=list)
    service_account: str | None = None
    config_map: tuple[str, str] | None = None  # (ConfigMap, key) of the mounted pipeline config


def chart_fullname(release: str) -> str:
    """The chart's `<release>-ray-pipeline` (the release name when it contains the chart's)."""
    name = release if CHART_NAME in release else f"{release}-{CHART_NAME}"
    return name[:63].rstrip("-")


def release_target(namespace: str, release: str, cluster: str | None, image: str | None) -> Target:
    """What `--dry-run` knows without the cluster: the chart's names and defaults."""
    return Target(
        namespace=namespace,
        cluster=cluster or chart_fullname(release),
        release_labels={NAME_LABEL: CHART_NAME, INSTANCE_LABEL: release},
        image=image or DEFAULT_IMAGE,
    )


def job_name(run_name: str, now: float | None = None, token: str | None = None) -> str:
    """`<run name>-<MMDDhhmm UTC>-<4 random>`: unique, DNS-1035, at most 47 characters."""
    prefix = re.sub(r"[^a-z0-9]+", "-", run_name.lower()).strip("-")
    if not prefix[:1].isalpha():
        prefix = f"rp-{prefix}".rstrip("-")
    alphabet = string.ascii_lowercase + string.digits
    token = token or "".join(secrets.choice(alphabet) for _ in range(4))
    suffix = f"{time.strftime('%m%d%H%M', time.gmtime(now))}-{token}"
    prefix = prefix[: MAX_NAME_LENGTH - len(suffix) - 1].rstrip("-")
    return f"{prefix}-{suffix}"


def _flat(node: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    for key, value in node.items():
        path = (*prefix, str(key))
        # Keys with dots (label selectors) cannot be spelt in a --set path: set the whole map.
        if isinstance(value, dict) and value and not any("." in str(k) for k in value):
            yield from _flat(value, path)
        else:
            yield ".".join(path), value


def _yaml_value(value: Any) -> str:
    """A value as `--set` reads it back (YAML): 'true' stays a string, 1e-05 a float."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30).strip()
    return text.removesuffix("...").rstrip()


def config_file_overrides(path: str | os.PathLike) -> list[str]:
    """The leaves of a local config file as `KEY=VALUE` overrides (only what the file sets)."""
    load_config(path)  # the file must be valid on its own; ConfigError names the problem
    tree = yaml.safe_load(Path(path).read_text()) or {}
    return [f"{key}={_yaml_value(value)}" for key, value in _flat(tree)]


def entrypoint(overrides: list[str], deadline_s: int = DEFAULT_DEADLINE_S) -> str:
    """`python -m pipeline.deadline <s> -- ray-pipeline train --set ...`, quoted once for the
    shell that runs it: the driver stops itself at the deadline (pipeline/deadline.py says why).

    KubeRay pastes the entrypoint into the submitter's shell command and `ray job submit`
    re-quotes what that shell split, so one command with quoted arguments survives both.
    """
    argv = ["python", "-m", "pipeline.deadline", str(int(deadline_s)), "--", "ray-pipeline"]
    argv.append("train")
    for item in overrides:
        argv += ["--set", item]
    return shlex.join(argv)


def render_rayjob(
    target: Target, name: str, overrides: list[str], run_name: str,
    deadline_s: int = DEFAULT_DEADLINE_S, runtime_env: Mapping[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """A RayJob for the target's long-lived cluster (no backoffLimit: KubeRay refuses retries
    with a clusterSelector; no shutdown: the cluster outlives the job). ``runtime_env`` becomes
    its runtimeEnvYAML (Ray's runtime env of the job: working_dir, pip)."""
    if len(name) > MAX_NAME_LENGTH or not DNS_1035.match(name):
        raise KubernetesError(
            f"RayJob name {name!r}: KubeRay needs a DNS-1035 label of at most {MAX_NAME_LENGTH} "
            "characters"
        )
    part_of = {PART_OF_LABEL: CHART_NAME}
    pod_spec: dict[str, Any] = {"restartPolicy": "Never"}
    if target.service_account:
        pod_spec["serviceAccountName"] = target.service_account
    pod_spec["automountServiceAccountToken"] = False
    pod_spec["securityContext"] = target.pod_security_context
    if target.image_pull_secrets:
        pod_spec["imagePullSecrets"] = target.image_pull_secrets
    pod_spec["containers"] = [
        {
            # No command: KubeRay fills in `ray job submit ... -- <entrypoint>`.
            "name": "ray-job-submitter",
            "image": target.image,
            "imagePullPolicy": target.pull_policy,
            "resources": {
                "requests": dict(SUBMITTER_RESOURCES),
                "limits": dict(SUBMITTER_RESOURCES),
            },
            "securityContext": target.container_security_context,
        }
    ]
    return {
        "apiVersion": API_VERSION,
        "kind": "RayJob",
        "metadata": {
            "name": name,
            "namespace": target.namespace,
            "labels": {
                **target.release_labels, **part_of,
                "app.kubernetes.io/component": "rayjob",
                "app.kubernetes.io/managed-by": "ray-pipeline",
            },
            "annotations": {RUN_NAME_ANNOTATION: run_name},
        },
        "spec": {
            "entrypoint": entrypoint(overrides, deadline_s),
            **(
                {"runtimeEnvYAML": yaml.safe_dump(dict(runtime_env), sort_keys=False)}
                if runtime_env
                else {}
            ),
            "submissionMode": "K8sJobMode",
            "clusterSelector": {CLUSTER_SELECTOR_KEY: target.cluster},
            "activeDeadlineSeconds": int(deadline_s),
            "submitterConfig": {"backoffLimit": SUBMITTER_BACKOFF_LIMIT},
            "submitterPodTemplate": {
                "metadata": {
                    "labels": {
                        **target.release_labels, **part_of,
                        "app.kubernetes.io/component": "submitter",
                    }
                },
                "spec": pod_spec,
            },
        },
    }  # fmt: skip


def target_from_cluster(cluster: Mapping[str, Any]) -> Target:
    """Read the submitter's image, security, pull secrets and the config's ConfigMap from the
    chart's RayCluster, so that a job matches the cluster it runs on."""
    meta = cluster["metadata"]
    labels = meta.get("labels") or {}
    if INSTANCE_LABEL not in labels:
        raise KubernetesError(
            f"RayCluster {meta['name']} has no {INSTANCE_LABEL} label: it was not installed by "
            "the ray-pipeline chart"
        )
    template = cluster["spec"]["headGroupSpec"]["template"]
    pod = template.get("spec") or {}
    ray = pod["containers"][0]
    target = Target(
        namespace=meta["namespace"],
        cluster=meta["name"],
        release_labels={k: labels[k] for k in (NAME_LABEL, INSTANCE_LABEL) if k in labels},
        image=ray["image"],
        pull_policy=ray.get("imagePullPolicy") or "IfNotPresent",
        image_pull_secrets=list(pod.get("imagePullSecrets") or []),
        service_account=pod.get("serviceAccountName"),
    )
    if pod.get("securityContext"):
        target.pod_security_context = pod["securityContext"]
    if ray.get("securityContext"):
        target.container_security_context = ray["securityContext"]
    env = {e["name"]: e.get("value") for e in ray.get("env") or []}
    if env.get(CONFIG_ENV):
        directory, key = posixpath.split(env[CONFIG_ENV])
        mounts = {m["mountPath"].rstrip("/"): m["name"] for m in ray.get("volumeMounts") or []}
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        volume = volumes.get(mounts.get(directory, ""), {})
        if "configMap" in volume:
            target.config_map = (volume["configMap"]["name"], key)
    return target
