"""Fixtures for tests/k8s: the chart renderer and the strict KubeRay CRD validator come from
tests/chart (one implementation); here they check every RayJob and every object under k8s/.

`validate(obj)` knows four families of objects:
- ray.io/v1 (RayJob, RayCluster): KubeRay's CRDs, strictly (unknown fields are errors), and
  their embedded pod templates against Kubernetes' own schemas too;
- Kubernetes API objects: kubernetes-validate, strict, for Kubernetes 1.33;
- the configs of tools that are not API objects (kustomize's Kustomization, kind's Cluster,
  Argo CD's Application): the small schemas below, written from their documentation for the
  fields this repository uses, unknown fields refused;
- anything else is an error, so that nothing under k8s/ goes unchecked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import (  # noqa: F401  (crds, render, render_error: fixtures)
    CHART_DIR,
    CI_FILES,
    NAMESPACE,
    RELEASE,
    crds,
    render,
    render_error,
)

REPO = Path(__file__).resolve().parents[2]
K8S_DIR = REPO / "k8s"
KUBE_VERSION = "1.33.0"


def kube_errors(obj: dict[str, Any]) -> list[str]:
    """Kubernetes' own schema (strict) for an API object."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    try:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = ".".join(str(p) for p in e.path) or "(root)"
        return [f"{obj['kind']}/{obj['metadata'].get('name')}: {where}: {e.message}"]
    return []


def pod_template_errors(where: str, template: dict[str, Any]) -> list[str]:
    """A pod template inside a custom resource, checked as the PodTemplate it becomes."""
    return kube_errors(
        {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": where},
            "template": template,
        }
    )


def ray_pod_templates(obj: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, template) for every pod template in a RayJob or RayCluster."""
    name = obj["metadata"]["name"]
    spec = obj["spec"]
    found = []
    cluster = spec.get("rayClusterSpec") if obj["kind"] == "RayJob" else spec
    if obj["kind"] == "RayJob" and "submitterPodTemplate" in spec:
        found.append((f"{name}-submitter", spec["submitterPodTemplate"]))
    if cluster:
        found.append((f"{name}-head", cluster["headGroupSpec"]["template"]))
        for group in cluster.get("workerGroupSpecs", []):
            found.append((f"{name}-{group['groupName']}", group["template"]))
    return found


_STR = {"type": "string", "minLength": 1}
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_META = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {"name": _STR, "namespace": _STR, "labels": _STR_MAP, "annotations": _STR_MAP},
}


def _closed(properties: dict[str, Any], required: list[str] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": list(required),
        "properties": properties,
    }


# kustomize: https://kubectl.docs.kubernetes.io/references/kustomize/kustomization/ (the fields
# tests/k8s/test_manifests.py builds: resources, namespace, namePrefix, nameSuffix).
KUSTOMIZATION = _closed(
    {
        "apiVersion": {"const": "kustomize.config.k8s.io/v1beta1"},
        "kind": {"const": "Kustomization"},
        "namespace": _STR,
        "namePrefix": {"type": "string"},
        "nameSuffix": {"type": "string"},
        "resources": {"type": "array", "minItems": 1, "items": _STR},
    },
    ["apiVersion", "kind", "resources"],
)
# kind: https://kind.sigs.k8s.io/docs/user/configuration/
KIND_CLUSTER = _closed(
    {
        "apiVersion": {"const": "kind.x-k8s.io/v1alpha4"},
        "kind": {"const": "Cluster"},
        "name": _STR,
        "nodes": {
            "type": "array",
            "minItems": 1,
            "items": _closed(
                {"role": {"enum": ["control-plane", "worker"]}, "image": _STR, "labels": _STR_MAP},
                ["role"],
            ),
        },
    },
    ["apiVersion", "kind", "nodes"],
)
# Argo CD: https://argo-cd.readthedocs.io/en/stable/operator-manual/declarative-setup/
_ARGO_SOURCE = _closed(
    {
        "repoURL": _STR,
        "targetRevision": _STR,
        "path": _STR,
        "helm": _closed(
            {
                "releaseName": _STR,
                "valueFiles": {"type": "array", "items": _STR},
                "valuesObject": {"type": "object"},
            }
        ),
    },
    ["repoURL", "path"],
)
ARGO_APPLICATION = _closed(
    {
        "apiVersion": {"const": "argoproj.io/v1alpha1"},
        "kind": {"const": "Application"},
        "metadata": _META,
        "spec": _closed(
            {
                "project": _STR,
                "source": _ARGO_SOURCE,
                "destination": _closed(
                    {"server": _STR, "namespace": _STR}, ["server", "namespace"]
                ),
                "syncPolicy": _closed(
                    {
                        "automated": _closed(
                            {"prune": {"type": "boolean"}, "selfHeal": {"type": "boolean"}}
                        ),
                        "syncOptions": {"type": "array", "items": _STR},
                    }
                ),
            },
            ["project", "source", "destination"],
        ),
    },
    ["apiVersion", "kind", "metadata", "spec"],
)
TOOL_SCHEMAS = {
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"): KUSTOMIZATION,
    ("kind.x-k8s.io/v1alpha4", "Cluster"): KIND_CLUSTER,
    ("argoproj.io/v1alpha1", "Application"): ARGO_APPLICATION,
}


def tool_errors(obj: dict[str, Any]) -> list[str]:
    import jsonschema

    schema = TOOL_SCHEMAS[(obj["apiVersion"], obj["kind"])]
    return [
        f"{obj['kind']}: {'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(obj)
    ]


@pytest.fixture(scope="session")
def validate(request):
    """validate(obj) -> errors: strict, for every kind of object this repository ships. Only
    ray.io objects need the KubeRay CRDs (and skip without $KUBERAY_CRD_DIR)."""

    def check(obj: dict[str, Any]) -> list[str]:
        if not isinstance(obj, dict) or "apiVersion" not in obj or "kind" not in obj:
            return [f"not a Kubernetes object (no apiVersion/kind): {str(obj)[:80]}"]
        key = (obj["apiVersion"], obj["kind"])
        if key in TOOL_SCHEMAS:
            return tool_errors(obj)
        if obj["apiVersion"].startswith("ray.io/"):
            errors = request.getfixturevalue("crds").errors(obj)
            for where, template in ray_pod_templates(obj):
                errors += pod_template_errors(where, template)
            return errors
        group = obj["apiVersion"].rpartition("/")[0]
        if "." in group and not group.endswith(".k8s.io"):  # a custom resource we have no CRD of
            return [f"{key}: no schema here for this custom resource"]
        return kube_errors(obj)

    return check


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
