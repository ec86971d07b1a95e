"""The Kubernetes API calls of `submit` and `status`, each failing with one clear line, and
finding the chart's RayCluster a job runs on."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import apply_override, parse_override, validate_config
from pipeline.errors import KubernetesError, first_line
from pipeline.k8s.rayjob import (
    API_VERSION,
    CHART_NAME,
    GROUP,
    INSTANCE_LABEL,
    ORIGINATED_FROM_CRD_LABEL,
    PART_OF_LABEL,
    VERSION,
    Target,
    target_from_cluster,
)


class Unreachable(KubernetesError):
    """The API server did not answer; following a job tolerates a short outage."""


class NotFound(KubernetesError):
    """404: the object, its namespace or its API (a CRD) does not exist."""


class Forbidden(KubernetesError):
    """401 or 403."""


def _kubeconfig_path() -> str:
    return os.environ.get("KUBECONFIG") or str(Path("~/.kube/config").expanduser())


def context_namespace(context: str | None) -> str:
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
            self.namespace = context_namespace(context)
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
        # What a plain HTTP client needs to go through the API server (the dashboard proxy).
        token = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken")
        self.auth_headers = {"Authorization": token} if token else {}
        self.verify: str | bool = cfg.ssl_ca_cert or bool(cfg.verify_ssl)
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
                raise Forbidden(f"{what}: not allowed ({status})") from None
            if e.status == 404:
                raise NotFound(f"{what}: not found ({status})") from None
            if e.status is not None and e.status >= 500:
                failed = f"{what}: the API server failed ({e.status}: {status})"
                raise Unreachable(failed) from None
            raise KubernetesError(f"{what}: {status} ({e.status})") from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise Unreachable(
                f"cannot reach the Kubernetes API at {self.host}: {_api_error_line(reason)}"
            ) from None

    def _get(self, call: Callable[[], Any], what: str, missing: str) -> Any:
        """A call whose 404 means `missing` (a sentence for the user)."""
        try:
            with self._calls(what):
                return call()
        except NotFound:
            raise KubernetesError(missing) from None

    def check_namespace(self, namespace: str) -> None:
        try:
            self._get(
                lambda: self.core.read_namespace(namespace, _request_timeout=self.TIMEOUT_S),
                f"namespace {namespace}",
                f"namespace {namespace} not found (create it, or pass --namespace)",
            )
        except Forbidden:
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

    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        """One key of a Secret, decoded; None when it is missing or not readable."""
        import base64

        try:
            with self._calls(f"Secret {name}"):
                secret = self.core.read_namespaced_secret(
                    name, namespace, _request_timeout=self.TIMEOUT_S
                )
        except (NotFound, Forbidden):
            return None
        value = (secret.data or {}).get(key)
        return base64.b64decode(value).decode() if value else None

    def service_proxy_url(self, namespace: str, service: str, port: int | str) -> str:
        """The API server's proxy to a Service port (it authenticates the caller and strips
        the Authorization header before forwarding)."""
        return f"{self.host}/api/v1/namespaces/{namespace}/services/{service}:{port}/proxy"

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
        # KubeRay copies a RayJob's labels onto the RayCluster it creates for it
        # (rayjob_controller.go: constructRayClusterForRayJob), so an ephemeral job's cluster
        # carries the release's labels too; it also marks it as the RayJob's.
        found = [
            c for c in api.rayclusters(namespace, selector)
            if (c["metadata"].get("labels") or {}).get(ORIGINATED_FROM_CRD_LABEL) != "RayJob"
        ]  # fmt: skip
        names = sorted(c["metadata"]["name"] for c in found)
        if len(found) != 1:
            which = f"of release {release} " if release else ""
            listed = f" ({', '.join(names)})" if names else ""
            raise KubernetesError(
                f"{len(found)} ray-pipeline RayClusters {which}in namespace {namespace}{listed}: "
                + ("pass --release or --cluster" if found else "install the chart first "
                   f"(helm install <release> helm/ray-pipeline -n {namespace}); with "
                   "rayJobs.mode=ephemeral the release has no long-lived RayCluster to submit to")
            )  # fmt: skip
        obj = found[0]
    target = target_from_cluster(obj)
    if image:
        target.image = image
    return target


def cluster_config(api: KubeApi, target: Target, overrides: list[str]) -> Any:
    """The config the job will see (the cluster's mounted config plus the overrides), validated;
    None when the ConfigMap cannot be read (the driver then checks it)."""
    if not target.config_map:
        return None
    name, key = target.config_map
    try:
        text = api.config_text(target.namespace, name, key)
    except Unreachable:
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
    return validate_config(tree, f"ConfigMap {name} with your overrides")
