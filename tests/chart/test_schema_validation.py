"""Every rendered object is valid for the API server: core kinds against Kubernetes' own schemas
(kubernetes-validate, strict), RayCluster and RayJob strictly against KubeRay's v1 CRDs, where
an unknown field is an error because the API server would drop it without a word."""

from __future__ import annotations

import pytest

KUBE_VERSION = "1.33.0"

# Values beyond the ci/ files that switch other branches of the templates.
VARIANTS = {
    "no-group-labels": {"ray": {"groupLabels": False}},
    "auth-off-existing-sa": {
        "ray": {"auth": {"enabled": False}},
        "serviceAccount": {"create": False, "name": "ml-runner"},
        "networkPolicy": {"enabled": False},
    },
    "ambient-s3": {"s3": {"credentials": {"useAmbient": True}, "endpoint": "s3.example.com"}},
    "minio-without-persistence": {
        "minio": {"enabled": True, "persistence": {"enabled": False}},
        "s3": {"credentials": {"existingSecret": "local-keys"}},
    },
}


@pytest.fixture(params=sorted(VARIANTS), ids=str)
def variant(request, render):
    return render(VARIANTS[request.param])


def _k8s_errors(obj: dict) -> list[str]:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    try:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        return [f"{obj['kind']}/{obj['metadata'].get('name')}: {path}: {e.message}"]
    return []


def _pod_template_errors(where: str, template: dict) -> list[str]:
    """A RayCluster's pod templates checked as what they become: Kubernetes pod templates."""
    wrapped = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": where},
        "template": template,
    }
    return _k8s_errors(wrapped)


def _core_errors(rendered) -> list[str]:
    errors: list[str] = []
    for obj in rendered.objects:
        if not obj["apiVersion"].startswith("ray.io/"):
            errors += _k8s_errors(obj)
    for group, template in rendered.ray_pod_templates():
        errors += _pod_template_errors(group, template)
    return errors


def _crd_errors(rendered, crds) -> list[str]:
    ray_objects = [o for o in rendered.objects if o["apiVersion"].startswith("ray.io/")]
    assert ray_objects, "no KubeRay object rendered"
    return [e for obj in ray_objects for e in crds.errors(obj)]


def test_core_objects_are_valid_kubernetes(ci):
    assert _core_errors(ci) == []


def test_core_objects_of_variants_are_valid_kubernetes(variant):
    assert _core_errors(variant) == []


def test_ray_objects_match_the_kuberay_crds(ci, crds):
    assert _crd_errors(ci, crds) == []


def test_ray_objects_of_variants_match_the_kuberay_crds(variant, crds):
    assert _crd_errors(variant, crds) == []


def test_cluster_spec_is_also_a_valid_rayjob_cluster_spec(ci, crds):
    """The RayCluster spec comes from one helper that a RayJob's rayClusterSpec will include."""
    rayjob = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "ephemeral"},
        "spec": {
            "entrypoint": "ray-pipeline train",
            "shutdownAfterJobFinishes": True,
            "rayClusterSpec": ci.raycluster["spec"],
        },
    }
    assert crds.errors(rayjob) == []


def test_strict_crd_validation_catches_a_field_the_api_server_would_drop(ci, crds):
    """The validator itself: a misspelt or misplaced field is an error, not silently fine."""
    import copy

    cluster = copy.deepcopy(ci.raycluster)
    cluster["spec"]["workerGroupSpecs"][0]["rayLabels"] = {"a": "b"}  # the CRD calls it `labels`
    cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resource"] = {}
    errors = crds.errors(cluster)
    assert any("rayLabels" in e for e in errors), errors
    assert any("'resource'" in e for e in errors), errors
