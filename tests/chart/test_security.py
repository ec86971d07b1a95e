"""Secure by default: non-root pods without privileges, no API rights unless the autoscaler needs
them, S3 keys only from a Secret, and NetworkPolicies that admit Ray traffic only from this
release (plus the operator and the configured clients)."""

from __future__ import annotations

import json

import pytest

CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def _containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


def _assert_locked_down(where: str, container_context: dict) -> None:
    assert container_context.get("allowPrivilegeEscalation") is False, where
    assert container_context.get("privileged", False) is False, where
    assert "ALL" in container_context.get("capabilities", {}).get("drop", []), where
    assert not container_context.get("capabilities", {}).get("add"), where
    assert container_context.get("runAsUser", 1) != 0, where


def test_every_pod_runs_non_root_with_seccomp_and_no_privileges(ci):
    specs = list(ci.pod_specs())
    assert specs
    for where, spec in specs:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, where
        assert pod.get("runAsUser") != 0, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
        for container in _containers(spec):
            _assert_locked_down(f"{where}/{container['name']}", container["securityContext"])


def test_ray_pods_run_as_the_image_user(ci):
    for group, template in ci.ray_pod_templates():
        pod = template["spec"]["securityContext"]
        assert (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"]) == (1000, 100, 100), group


def test_autoscaler_sidecar_is_locked_down(render, chart_dir):
    rendered = render(None, chart_dir / "ci" / "autoscaling-values.yaml")
    options = rendered.raycluster["spec"]["autoscalerOptions"]
    _assert_locked_down("autoscaler", options["securityContext"])
    assert options["resources"]["limits"]["memory"]


def test_no_api_rights_without_autoscaling(render):
    rendered = render()
    assert not [
        o
        for o in rendered.objects
        if o["kind"] in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")
    ]
    assert rendered.one("ServiceAccount")["automountServiceAccountToken"] is False
    for where, spec in rendered.pod_specs():
        assert spec["automountServiceAccountToken"] is False, where


def test_autoscaler_gets_only_its_namespaced_rights(render, chart_dir):
    rendered = render(None, chart_dir / "ci" / "autoscaling-values.yaml")
    cluster = rendered.raycluster["metadata"]["name"]
    assert not rendered.all("ClusterRole") and not rendered.all("ClusterRoleBinding")
    role = rendered.one("Role")
    # Named like the cluster: the KubeRay operator then uses it instead of creating its own.
    assert role["metadata"]["name"] == cluster
    rules = {
        (g, r, tuple(sorted(rule["verbs"])))
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    assert rules == {
        ("", "pods", ("get", "list", "patch", "watch")),
        ("", "pods/resize", ("patch",)),
        ("ray.io", "rayclusters", ("get", "patch")),
    }
    (rayclusters,) = [r for r in role["rules"] if r["resources"] == ["rayclusters"]]
    assert rayclusters["resourceNames"] == [cluster]
    binding = rendered.one("RoleBinding")
    head = rendered.raycluster["spec"]["headGroupSpec"]["template"]["spec"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": head["serviceAccountName"],
            "namespace": rendered.namespace,
        }
    ]
    # No Ray pod automounts a token (the autoscaler's own is projected: test_kuberay.py).
    assert head["automountServiceAccountToken"] is False
    for group in rendered.raycluster["spec"]["workerGroupSpecs"]:
        assert group["template"]["spec"]["automountServiceAccountToken"] is False


def test_s3_keys_reach_containers_only_through_the_secret(ci):
    secret = ci.values["s3"]["credentials"]["existingSecret"] or f"{ci.release}-ray-pipeline-s3"
    for where, spec in ci.pod_specs():
        for container in _containers(spec):
            env = {e["name"]: e for e in container.get("env", [])}
            if container["name"].startswith("ray-"):
                assert set(CREDENTIAL_ENV) <= set(env), where
            for name in CREDENTIAL_ENV:
                if name in env:
                    assert "value" not in env[name], (where, name)
                    assert env[name]["valueFrom"]["secretKeyRef"]["name"] == secret, (where, name)


def test_no_secret_value_appears_outside_secrets(ci):
    credentials = ci.values["s3"]["credentials"]["createSecret"]
    secrets = ci.secret_values() | {v for k, v in credentials.items() if k != "enabled" and v}
    outside = json.dumps([o for o in ci.objects if o["kind"] != "Secret"])
    assert [s for s in secrets if s in outside] == []
    for obj in ci.objects:
        if obj["kind"] == "Secret":
            assert not obj["metadata"].get("annotations"), "Secret values never go into annotations"


def test_kind_values_create_the_local_secret(render, chart_dir):
    rendered = render(None, chart_dir / "ci" / "kind-values.yaml")
    secret = rendered.one("Secret")
    assert secret["metadata"]["name"] == f"{rendered.release}-ray-pipeline-s3"
    assert rendered.secret_values() == {"kind-minio", "kind-minio-not-a-secret"}


def test_ambient_credentials_inject_no_keys(render):
    rendered = render({"s3": {"credentials": {"useAmbient": True}}})
    assert not rendered.all("Secret")
    for where, spec in rendered.pod_specs():
        names = {e["name"] for c in _containers(spec) for e in c.get("env", [])}
        assert not names & set(CREDENTIAL_ENV), where


# --- NetworkPolicy ------------------------------------------------------------------------


def _selects(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        present, value = expr["key"] in labels, labels.get(expr["key"])
        ok = {
            "In": present and value in expr.get("values", []),
            "NotIn": not present or value not in expr.get("values", []),
            "Exists": present,
            "DoesNotExist": not present,
        }[expr["operator"]]
        if not ok:
            return False
    return True


def admits(rendered, target: dict, source: dict, port: int) -> bool:
    """Would the rendered NetworkPolicies let `source` reach `target` on TCP `port`?

    Pods are {"labels": ..., "namespace": ..., "namespace_labels": ...}.
    """
    policies = [
        p
        for p in rendered.all("NetworkPolicy")
        if p["metadata"]["namespace"] == target["namespace"]
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and _selects(p["spec"]["podSelector"], target["labels"])
    ]
    if not policies:
        return True  # not isolated
    for policy in policies:
        for rule in policy["spec"].get("ingress") or []:
            if rule.get("ports") and not any(p.get("port") == port for p in rule["ports"]):
                continue
            if not rule.get("from"):
                return True
            for peer in rule["from"]:
                if "ipBlock" in peer:
                    continue
                if "namespaceSelector" in peer:
                    ns_ok = _selects(peer["namespaceSelector"], source["namespace_labels"])
                else:
                    ns_ok = source["namespace"] == target["namespace"]
                if ns_ok and _selects(peer.get("podSelector", {}), source["labels"]):
                    return True
    return False


def _pod(labels: dict, namespace: str) -> dict:
    return {
        "labels": labels,
        "namespace": namespace,
        "namespace_labels": {"kubernetes.io/metadata.name": namespace},
    }


def ray_pod(rendered, group: str) -> dict:
    """A Ray pod as KubeRay creates it: template labels, Ray group labels, KubeRay's own."""
    if group == "headgroup":
        spec = rendered.raycluster["spec"]["headGroupSpec"]
    else:
        spec = rendered.worker_group(group)
    labels = {
        **spec["template"]["metadata"]["labels"],
        **spec.get("labels", {}),
        "ray.io/cluster": rendered.raycluster["metadata"]["name"],
        "ray.io/node-type": "head" if group == "headgroup" else "worker",
        "ray.io/group": group,
        "ray.io/is-ray-node": "yes",
    }
    return _pod(labels, rendered.namespace)


@pytest.fixture
def protected(ci):
    if not ci.values["networkPolicy"]["enabled"]:
        pytest.skip("networkPolicy.enabled is off in this values file")
    return ci


def test_ray_pods_reach_each_other_on_any_port(protected):
    head = ray_pod(protected, "headgroup")
    workers = [ray_pod(protected, g) for g in protected.values["workerGroups"]]
    for worker in workers:
        assert admits(protected, head, worker, 6379)  # GCS
        assert admits(protected, worker, head, 10002)  # a Ray worker port
        assert admits(protected, workers[0], worker, 8076)  # object manager


def test_other_pods_cannot_reach_ray(protected):
    stranger = _pod({"app": "something-else"}, protected.namespace)
    other_release = _pod(
        {"app.kubernetes.io/name": "ray-pipeline", "app.kubernetes.io/instance": "other"},
        protected.namespace,
    )
    for group in ["headgroup", *protected.values["workerGroups"]]:
        target = ray_pod(protected, group)
        for port in (6379, 8265, 10001, 8080, 10002):
            assert not admits(protected, target, stranger, port), (group, port)
            assert not admits(protected, target, other_release, port), (group, port)


# The KubeRay 1.7 operator pod's labels, as its two installs set them:
OPERATOR_POD_LABELS = {
    # helm-chart/kuberay-operator/templates/deployment.yaml (release kuberay-operator)
    "helm": {
        "app.kubernetes.io/name": "kuberay-operator",
        "app.kubernetes.io/instance": "kuberay-operator",
        "app.kubernetes.io/component": "kuberay-operator",
    },
    # ray-operator/config/manager/manager.yaml and ray-operator/config/default (kustomize)
    "kustomize": {
        "app.kubernetes.io/name": "kuberay",
        "app.kubernetes.io/component": "kuberay-operator",
    },
}


@pytest.mark.parametrize("install", sorted(OPERATOR_POD_LABELS))
def test_operator_reaches_only_the_dashboard(protected, install):
    """Blocked from 8265, the operator cannot read job status and fails the RayJob after 300 s
    (rayjob_controller.go: checkJobStatusCheckTimeoutAndUpdateStatusIfNeeded)."""
    operator = _pod(OPERATOR_POD_LABELS[install], "kuberay-system")
    head = ray_pod(protected, "headgroup")
    assert admits(protected, head, operator, 8265)
    assert not admits(protected, head, operator, 6379)
    assert not admits(protected, ray_pod(protected, "data"), operator, 8265)


def test_labelled_rayjob_submitter_reaches_the_head(protected):
    submitter = _pod(
        {
            "app.kubernetes.io/name": "ray-pipeline",
            "app.kubernetes.io/instance": protected.release,
            "app.kubernetes.io/component": "submitter",
            "ray.io/originated-from-crd": "RayJob",
            "ray.io/originated-from-cr-name": "digits-train",
        },
        protected.namespace,
    )
    head = ray_pod(protected, "headgroup")
    assert admits(protected, head, submitter, 8265)
    assert admits(protected, head, submitter, 6379)


def test_configured_clients_and_scrapers(render, chart_dir):
    rendered = render(None, chart_dir / "ci" / "gpu-values.yaml")
    head = ray_pod(rendered, "headgroup")
    ci_runner = _pod({"app": "runner"}, "ml-ci")
    assert admits(rendered, head, ci_runner, 8265) and admits(rendered, head, ci_runner, 10001)
    assert not admits(rendered, head, ci_runner, 6379)
    prometheus = _pod({"app.kubernetes.io/name": "prometheus"}, "monitoring")
    assert admits(rendered, ray_pod(rendered, "train"), prometheus, 8080)
    assert not admits(rendered, ray_pod(rendered, "train"), prometheus, 8265)


def test_minio_serves_only_this_release(render, chart_dir):
    rendered = render(None, chart_dir / "ci" / "kind-values.yaml")
    (deployment,) = rendered.all("Deployment")
    minio = _pod(deployment["spec"]["template"]["metadata"]["labels"], rendered.namespace)
    (job,) = rendered.all("Job")
    bucket_job = _pod(job["spec"]["template"]["metadata"]["labels"], rendered.namespace)
    assert admits(rendered, minio, ray_pod(rendered, "data"), 9000)
    assert admits(rendered, minio, bucket_job, 9000)
    assert not admits(rendered, minio, _pod({"app": "x"}, rendered.namespace), 9000)
    assert not admits(
        rendered,
        minio,
        _pod({"app.kubernetes.io/name": "kuberay-operator"}, "kuberay-system"),
        9000,
    )
