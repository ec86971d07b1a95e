"""Kubernetes submission: `ray-pipeline submit` and `ray-pipeline status` (KubeRay RayJob).

`submit` renders a RayJob that runs `ray-pipeline train` on the Helm chart's long-lived
RayCluster (`clusterSelector: {ray.io/cluster: <name>}`), creates it under a unique name and
follows it to a terminal state. The driver runs on that cluster's head, where the chart mounts
the pipeline config; the user's `--set` overrides (and the leaves of a local `--config`) travel
in the entrypoint. A RayJob with a cluster of its own is the chart's `rayJobs.mode: ephemeral`:
its cluster spec is the chart's, and this module does not copy it.

`interpret()` reads a RayJob's status. `submit`, `status` and the Argo CD health check
(k8s/argocd/rayjob-health.lua) give the same verdict for every pair of statuses.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import posixpath
import re
import secrets
import shlex
import string
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from pipeline import __version__
from pipeline.config import apply_override, load_config, parse_override, validate_config
from pipeline.errors import ConfigError, KubernetesError, first_line

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

# KubeRay 1.7's values (ray-operator/apis/ray/v1/rayjob_types.go); "" is New / not yet known.
DEPLOYMENT_STATUSES = (
    "", "Initializing", "Running", "Complete", "Failed", "ValidationFailed",
    "Suspending", "Suspended", "Retrying", "Waiting",
)  # fmt: skip
JOB_STATUSES = ("", "PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED")

EXIT_SUCCEEDED, EXIT_FAILED, EXIT_UNFINISHED = 0, 1, 3
POLL_INTERVAL_S = 2.0  # how often submit and status --follow read the RayJob


# --- What a RayJob's status means -----------------------------------------------------------


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


# --- Rendering a RayJob ---------------------------------------------------------------------


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


def entrypoint(overrides: list[str]) -> str:
    """`ray-pipeline train --set ...`, quoted once for the shell that runs it.

    KubeRay pastes the entrypoint into the submitter's shell command and `ray job submit`
    re-quotes what that shell split, so one command with quoted arguments survives both.
    """
    argv = ["ray-pipeline", "train"]
    for item in overrides:
        argv += ["--set", item]
    return shlex.join(argv)


def render_rayjob(
    target: Target, name: str, overrides: list[str], run_name: str,
    deadline_s: int = DEFAULT_DEADLINE_S,
) -> dict[str, Any]:  # fmt: skip
    """A RayJob for the target's long-lived cluster (no backoffLimit: KubeRay refuses retries
    with a clusterSelector; no shutdown: the cluster outlives the job)."""
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
            "entrypoint": entrypoint(overrides),
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


# --- The Kubernetes API ---------------------------------------------------------------------


class _Unreachable(KubernetesError):
    """The API server did not answer; following a job tolerates a short outage."""


class _NotFound(KubernetesError):
    """404: the object, its namespace or its API (a CRD) does not exist."""


class _Forbidden(KubernetesError):
    """401 or 403."""


def _kubeconfig_path() -> str:
    return os.environ.get("KUBECONFIG") or str(Path("~/.kube/config").expanduser())


def _context_namespace(context: str | None) -> str:
    """The namespace of the kubeconfig's current (or the named) context, else `default`."""
    from kubernetes import config

    contexts, active = config.list_kube_config_contexts(config_file=_kubeconfig_path())
    if context:
        active = next((c for c in contexts if c["name"] == context), active)
    return (active.get("context") or {}).get("namespace") or "default"


class KubeApi:
    """The few calls submit and status make, each failing with one clear line."""

    TIMEOUT_S = 15

    def __init__(self, context: str | None = None):
        from kubernetes import client, config

        self._client = client
        path = _kubeconfig_path()
        cfg = client.Configuration()
        try:
            config.load_kube_config(
                config_file=path, context=context, client_configuration=cfg, persist_config=False
            )
            self.namespace = _context_namespace(context)
        except (config.ConfigException, OSError, TypeError, ValueError) as e:
            if context or not os.environ.get("KUBERNETES_SERVICE_HOST"):
                raise KubernetesError(
                    f"no Kubernetes access: no usable kubeconfig at {path} ({_api_error_line(e)}); "
                    "set KUBECONFIG or pass --context"
                ) from None
            config.load_incluster_config(client_configuration=cfg)
            sa_ns = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
            self.namespace = sa_ns.read_text().strip() if sa_ns.exists() else "default"
        # A refused connection is reported at once (following a job rides out short outages);
        # urllib3 would retry it and log each retry.
        cfg.retries = 0
        logging.getLogger("urllib3").setLevel(logging.ERROR)
        self.host = cfg.host
        api = client.ApiClient(cfg)
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    @contextlib.contextmanager
    def _calls(self, what: str) -> Iterator[None]:
        import urllib3

        try:
            yield
        except self._client.ApiException as e:
            status = _status_message(e)
            if e.status in (401, 403):
                raise _Forbidden(f"{what}: not allowed ({status})") from None
            if e.status == 404:
                raise _NotFound(f"{what}: not found ({status})") from None
            if e.status is not None and e.status >= 500:
                failed = f"{what}: the API server failed ({e.status}: {status})"
                raise _Unreachable(failed) from None
            raise KubernetesError(f"{what}: {status} ({e.status})") from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise _Unreachable(
                f"cannot reach the Kubernetes API at {self.host}: {_api_error_line(reason)}"
            ) from None

    def _get(self, call: Callable[[], Any], what: str, missing: str) -> Any:
        """A call whose 404 means `missing` (a sentence for the user)."""
        try:
            with self._calls(what):
                return call()
        except _NotFound:
            raise KubernetesError(missing) from None

    def check_namespace(self, namespace: str) -> None:
        try:
            self._get(
                lambda: self.core.read_namespace(namespace, _request_timeout=self.TIMEOUT_S),
                f"namespace {namespace}",
                f"namespace {namespace} not found (create it, or pass --namespace)",
            )
        except _Forbidden:
            pass  # reading namespaces is often not allowed: creating the job will tell

    def check_crds(self) -> None:
        resources = self._get(
            lambda: self.custom.get_api_resources(GROUP, VERSION, _request_timeout=self.TIMEOUT_S),
            f"{API_VERSION} API",
            f"the KubeRay CRDs ({API_VERSION}) are not installed in this cluster: install the "
            "KubeRay operator (helm install kuberay-operator kuberay/kuberay-operator "
            "--version 1.7.0)",
        )
        names = {r.name for r in resources.resources or []}
        if "rayjobs" not in names:
            raise KubernetesError(
                f"the RayJob CRD ({API_VERSION}) is not installed in this cluster: install the "
                "KubeRay operator 1.7"
            )

    def rayclusters(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        with self._calls(f"listing RayClusters in {namespace}"):
            found = self.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, "rayclusters",
                label_selector=label_selector, _request_timeout=self.TIMEOUT_S,
            )  # fmt: skip
        return list(found.get("items") or [])

    def raycluster(self, namespace: str, name: str) -> dict[str, Any]:
        return self._get(
            lambda: self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, "rayclusters", name, _request_timeout=self.TIMEOUT_S
            ),
            f"RayCluster {name}",
            f"RayCluster {name} not found in namespace {namespace}: install the chart (helm "
            f"install <release> helm/ray-pipeline -n {namespace}) or pass --release/--cluster",
        )

    def config_text(self, namespace: str, name: str, key: str) -> str:
        cm = self._get(
            lambda: self.core.read_namespaced_config_map(
                name, namespace, _request_timeout=self.TIMEOUT_S
            ),
            f"ConfigMap {name}",
            f"ConfigMap {name} (the pipeline config) not found in namespace {namespace}",
        )
        return (cm.data or {}).get(key, "")

    def create_rayjob(self, body: dict[str, Any]) -> dict[str, Any]:
        namespace = body["metadata"]["namespace"]
        return self._get(
            lambda: self.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, "rayjobs", body, _request_timeout=self.TIMEOUT_S
            ),
            f"creating RayJob {body['metadata']['name']} in {namespace}",
            f"namespace {namespace} not found (create it, or pass --namespace)",
        )

    def rayjob(self, namespace: str, name: str) -> dict[str, Any]:
        return self._get(
            lambda: self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, "rayjobs", name, _request_timeout=self.TIMEOUT_S
            ),
            f"RayJob {name}",
            f"RayJob {name} not found in namespace {namespace}",
        )


def _api_error_line(e: object) -> str:
    """The part of an error the user needs: `[Errno 111] Connection refused`, not urllib3's
    description of its connection object."""
    line = first_line(e)
    errno = re.search(r"\[Errno -?\d+\] .*", line)
    return errno.group(0) if errno else line.split(">: ", 1)[-1]


def _status_message(e: Any) -> str:
    """The message of a Kubernetes Status body, else the HTTP reason."""
    try:
        body = json.loads(e.body or "")
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
    except ValueError:
        pass
    return str(e.reason or "").strip() or "no reason given"


def find_target(
    api: KubeApi, namespace: str, release: str | None, cluster: str | None, image: str | None
) -> Target:
    """The chart's RayCluster: --cluster by name, else the one of --release (or the only one)."""
    api.check_namespace(namespace)
    api.check_crds()
    if cluster:
        obj = api.raycluster(namespace, cluster)
    else:
        selector = f"{PART_OF_LABEL}={CHART_NAME}"
        if release:
            selector += f",{INSTANCE_LABEL}={release}"
        found = api.rayclusters(namespace, selector)
        names = sorted(c["metadata"]["name"] for c in found)
        if len(found) != 1:
            which = f"of release {release} " if release else ""
            listed = f" ({', '.join(names)})" if names else ""
            raise KubernetesError(
                f"{len(found)} ray-pipeline RayClusters {which}in namespace {namespace}{listed}: "
                + ("pass --release or --cluster" if found else "install the chart first "
                   f"(helm install <release> helm/ray-pipeline -n {namespace})")
            )  # fmt: skip
        obj = found[0]
    target = target_from_cluster(obj)
    if image:
        target.image = image
    return target


def cluster_config(api: KubeApi, target: Target, overrides: list[str]) -> str | None:
    """Validate the config the job will see (the cluster's mounted config plus the overrides);
    its run name, or None when the ConfigMap cannot be read (the driver then checks it)."""
    if not target.config_map:
        return None
    name, key = target.config_map
    try:
        text = api.config_text(target.namespace, name, key)
    except _Unreachable:
        raise
    except KubernetesError as e:  # not allowed to read it, or gone: the driver will check
        print(f"note: {e}; the job itself checks your overrides", file=sys.stderr)
        return None
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return None
    for item in overrides:
        apply_override(tree, *parse_override(item))
    cfg = validate_config(tree, f"ConfigMap {name} with your overrides")
    return cfg.storage.run_name


# --- Following a job ------------------------------------------------------------------------


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
        except _Unreachable as e:
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
            print(_dashboard_hint(obj), file=out, flush=True)
        if state.finished or (timeout_s is not None and clock() - start >= timeout_s):
            return obj, state
        sleep(interval_s)


def _dashboard_hint(obj: Mapping[str, Any]) -> str:
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


def _finish(obj: Mapping[str, Any], state: JobState, followed_s: float | None = None) -> int:
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


# --- The commands ---------------------------------------------------------------------------


def _namespace(args: argparse.Namespace, api: KubeApi | None) -> str:
    """--namespace, else the kubeconfig context's (read locally: --dry-run calls no API)."""
    if args.namespace:
        return args.namespace
    if api is not None:
        return api.namespace
    try:
        return _context_namespace(args.context)
    except Exception:  # no kubeconfig at all: a dry run still renders
        return "default"


def cmd_submit(args: argparse.Namespace) -> int:
    overrides = config_file_overrides(args.config) if args.config else []
    overrides += list(args.overrides)
    if args.deadline < 1:
        raise ConfigError("--deadline must be at least 1 second")
    if args.dry_run:
        if not args.release:
            raise KubernetesError(
                "--dry-run does not read the cluster: name the chart's release with --release "
                "(and its RayCluster with --cluster when it has a fullnameOverride)"
            )
        run_name = load_config(None, overrides).storage.run_name
        target = release_target(_namespace(args, None), args.release, args.cluster, args.image)
        manifest = render_rayjob(target, job_name(run_name), overrides, run_name, args.deadline)
        print(yaml.safe_dump(manifest, sort_keys=False, width=120), end="", flush=True)
        return 0

    api = KubeApi(args.context)
    target = find_target(api, _namespace(args, api), args.release, args.cluster, args.image)
    run_name = cluster_config(api, target, overrides)
    if run_name is None:
        run_name = load_config(None, overrides).storage.run_name
    manifest = render_rayjob(target, job_name(run_name), overrides, run_name, args.deadline)
    name, namespace = manifest["metadata"]["name"], target.namespace
    api.create_rayjob(manifest)
    print(
        f"created RayJob {namespace}/{name} on RayCluster {target.cluster}: "
        f"{manifest['spec']['entrypoint']}\n"
        f"  driver logs: kubectl -n {namespace} logs -f job/{name}\n"
        f"  Ctrl-C stops following, not the job (kubectl -n {namespace} delete rayjob {name} "
        "stops it)",
        file=sys.stderr,
        flush=True,
    )
    if args.no_wait:
        print(json.dumps({"name": name, "namespace": namespace}), flush=True)
        return 0
    obj, state = follow(lambda: api.rayjob(namespace, name), timeout_s=args.timeout)
    return _finish(obj, state, args.timeout)


def cmd_status(args: argparse.Namespace) -> int:
    api = KubeApi(args.context)
    namespace = _namespace(args, api)
    if args.follow:
        obj, state = follow(lambda: api.rayjob(namespace, args.name), timeout_s=args.timeout)
        return _finish(obj, state, args.timeout)
    obj = api.rayjob(namespace, args.name)
    state = interpret(obj.get("status"))
    print(f"{args.name}: {state.describe()}", file=sys.stderr)
    if (obj.get("status") or {}).get("dashboardURL"):
        print(_dashboard_hint(obj), file=sys.stderr)
    return _finish(obj, state)


def _cluster_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--namespace", "-n", help="namespace (default: the kubeconfig context's)")
    p.add_argument("--context", help="kubeconfig context (default: the current one)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `submit` and `status` subcommands to the CLI."""
    p = sub.add_parser(
        "submit",
        help="run `ray-pipeline train` as a RayJob on the chart's RayCluster and follow it",
        description="Create a RayJob (KubeRay) that runs `ray-pipeline train` on the Helm "
        "chart's long-lived RayCluster with the config mounted there plus your overrides, "
        "under a unique name, and follow it. Exit 0 only when the Ray job SUCCEEDED.",
    )
    p.add_argument(
        "--config", "-c", default=None,
        help="a local config file: its values are passed to the job as --set overrides",
    )  # fmt: skip
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a value of the cluster's config, e.g. --set train.epochs=5 (repeatable)",
    )  # fmt: skip
    p.add_argument("--release", help="the chart's Helm release (default: the only one)")
    p.add_argument("--cluster", help="the RayCluster's name (default: the release's)")
    p.add_argument("--image", help="submitter image (default: the RayCluster's head image)")
    p.add_argument(
        "--deadline", type=int, default=DEFAULT_DEADLINE_S, metavar="SECONDS",
        help=f"activeDeadlineSeconds: KubeRay fails the job then (default {DEFAULT_DEADLINE_S})",
    )  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="print the RayJob; touch nothing")
    p.add_argument("--no-wait", action="store_true", help="create the job and return")
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop following after this long (exit 3; the job goes on)",
    )
    _cluster_flags(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser(
        "status",
        help="show a RayJob's state (exit 0 SUCCEEDED, 1 failed, 3 not finished)",
    )
    p.add_argument("name", help="the RayJob's name")
    p.add_argument("--follow", "-f", action="store_true", help="follow it until it finishes")
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="with --follow: stop following after this long (exit 3)",
    )
    _cluster_flags(p)
    p.set_defaults(func=cmd_status)
