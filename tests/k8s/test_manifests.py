"""Everything under k8s/: every YAML object is valid (strictly), the plain RayJob manifests are
the chart's RayJobs (the chart is their one source; `UPDATE_MANIFESTS=1` rewrites them), the
kustomization that GitOps points at builds into valid RayJobs with names KubeRay accepts, and
the Argo CD and kind files say what the docs say they do."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline import k8s
from tests.k8s.conftest import CHART_DIR, K8S_DIR, NAMESPACE, RELEASE, load_documents

# file under k8s/ -> (rayJobs values, job). Rendered with the chart's defaults for release
# `rp` in namespace `ml`; labels that say "Helm manages this" are dropped (kubectl, Argo CD
# and Flux apply these files).
GENERATED = {
    "rayjobs/cluster/prepare.yaml": ({"mode": "cluster", "runId": ""}, "prepare"),
    "rayjobs/cluster/train.yaml": ({"mode": "cluster", "runId": ""}, "train"),
    "rayjobs/ephemeral/prepare.yaml": ({"mode": "ephemeral", "runId": "ephemeral"}, "prepare"),
    "rayjobs/ephemeral/train.yaml": ({"mode": "ephemeral", "runId": "ephemeral"}, "train"),
}
HELM_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")
HEADER = """\
# Generated from helm/ray-pipeline (release {release}, namespace {namespace}, rayJobs.mode={mode},
# rayJobs.{job}.enabled=true): do not edit. Regenerate after a chart change with
#   UPDATE_MANIFESTS=1 python -m pytest tests/k8s/test_manifests.py
# For another release or other values render your own:
#   helm template <release> helm/ray-pipeline -n <namespace> --set rayJobs.{job}.enabled=true \\
#     --set rayJobs.mode={mode} --show-only templates/rayjob.yaml
"""
HELM_VALUES = {K8S_DIR / "kind" / "values.yaml"}  # chart values, rendered by test_rayjob_chart


def _without_helm_labels(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: (
                {lk: lv for lk, lv in v.items() if lk not in HELM_LABELS}
                if k == "labels" and isinstance(v, dict)
                else _without_helm_labels(v)
            )
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_without_helm_labels(v) for v in node]
    return node


def chart_rayjob(render, values: dict[str, Any], job: str) -> dict[str, Any]:
    rendered = render({"rayJobs": {**values, job: {"enabled": True}}})
    return _without_helm_labels(rendered.one("RayJob"))


def yaml_files() -> list[Path]:
    return sorted(p for p in K8S_DIR.rglob("*") if p.suffix in (".yaml", ".yml"))


@pytest.mark.parametrize("relative", sorted(GENERATED))
def test_plain_rayjobs_are_the_charts(render, relative):
    values, job = GENERATED[relative]
    expected = chart_rayjob(render, values, job)
    path = K8S_DIR / relative
    if os.environ.get("UPDATE_MANIFESTS"):
        header = HEADER.format(release=RELEASE, namespace=NAMESPACE, mode=values["mode"], job=job)
        path.write_text(header + yaml.safe_dump(expected, sort_keys=False, width=100))
    (found,) = load_documents(path)
    assert found == expected, (
        f"k8s/{relative} differs from the chart's RayJob: "
        "UPDATE_MANIFESTS=1 python -m pytest tests/k8s/test_manifests.py"
    )


def test_every_yaml_object_under_k8s_is_valid(validate):
    checked = 0
    for path in yaml_files():
        if path in HELM_VALUES:
            continue
        for obj in load_documents(path):
            assert validate(obj) == [], path
            checked += 1
    assert checked >= 10


def test_only_known_files_live_under_k8s():
    """A new file type under k8s/ needs a check here first."""
    allowed = {".yaml", ".lua", ".md"}
    assert (
        sorted(p.name for p in K8S_DIR.rglob("*") if p.is_file() and p.suffix not in allowed) == []
    )


def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    """What `kustomize build` makes of the fields this repository uses (see KUSTOMIZATION):
    resources (files or directories with a kustomization), namespace, namePrefix/Suffix."""
    (kustomization,) = load_documents(directory / "kustomization.yaml")
    objects: list[dict[str, Any]] = []
    for entry in kustomization["resources"]:
        target = directory / entry
        objects += kustomize_build(target) if target.is_dir() else load_documents(target)
    out = []
    for obj in copy.deepcopy(objects):
        meta = obj["metadata"]
        meta["name"] = (
            kustomization.get("namePrefix", "") + meta["name"] + kustomization.get("nameSuffix", "")
        )
        if "namespace" in kustomization:
            meta["namespace"] = kustomization["namespace"]
        out.append(obj)
    return out


@pytest.mark.parametrize(
    "directory", ["", "rayjobs/cluster", "rayjobs/ephemeral"], ids=lambda d: d or "k8s"
)
def test_kustomizations_build_valid_rayjobs(validate, directory):
    objects = kustomize_build(K8S_DIR / directory)
    assert [o["metadata"]["labels"]["ray-pipeline.io/job"] for o in objects] == ["prepare", "train"]
    for obj in objects:
        assert obj["kind"] == "RayJob"
        assert validate(obj) == []
        name = obj["metadata"]["name"]
        assert len(name) <= k8s.MAX_NAME_LENGTH and k8s.DNS_1035.match(name), name
        assert obj["metadata"]["namespace"] == NAMESPACE


def test_gitops_entry_point_runs_prepare_then_train_on_the_release_cluster():
    objects = kustomize_build(K8S_DIR)
    assert [o["metadata"]["name"] for o in objects] == [
        "rp-ray-pipeline-prepare-run1",
        "rp-ray-pipeline-train-run1",
    ]
    waves = [int(o["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]) for o in objects]
    assert waves == sorted(waves) and waves[0] < waves[1]
    for obj in objects:
        assert obj["spec"]["clusterSelector"] == {"ray.io/cluster": f"{RELEASE}-ray-pipeline"}


@pytest.mark.skipif(
    not (shutil.which("kubectl") or shutil.which("kustomize")), reason="no kubectl or kustomize"
)
def test_the_real_kustomize_agrees():
    tool = shutil.which("kustomize")
    cmd = (
        [tool, "build", str(K8S_DIR)]
        if tool
        else [shutil.which("kubectl"), "kustomize", str(K8S_DIR)]
    )
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    built = [d for d in yaml.safe_load_all(out) if d]
    key = lambda o: o["metadata"]["name"]  # noqa: E731
    assert sorted(built, key=key) == sorted(kustomize_build(K8S_DIR), key=key)


def test_argo_cd_applications_install_the_chart_then_the_jobs():
    apps = {
        a["metadata"]["name"]: a for a in load_documents(K8S_DIR / "argocd" / "application.yaml")
    }
    chart, jobs = apps["ray-pipeline"]["spec"], apps["ray-pipeline-jobs"]["spec"]
    assert chart["source"]["path"] == str(CHART_DIR.relative_to(K8S_DIR.parent))
    # The plain RayJobs target this release's cluster in this namespace.
    assert chart["source"]["helm"]["releaseName"] == RELEASE
    assert chart["destination"]["namespace"] == jobs["destination"]["namespace"] == NAMESPACE
    assert jobs["source"]["path"] == "k8s"
    assert (K8S_DIR.parent / jobs["source"]["path"] / "kustomization.yaml").is_file()
    assert chart["source"]["repoURL"] == jobs["source"]["repoURL"]


def test_kind_cluster_has_a_control_plane_and_cpu_and_gpu_pools():
    (cluster,) = load_documents(K8S_DIR / "kind" / "cluster.yaml")
    roles = [n["role"] for n in cluster["nodes"]]
    assert roles.count("control-plane") == 1
    pools = sorted(
        n.get("labels", {}).get("ray-pipeline.io/pool", "")
        for n in cluster["nodes"]
        if n["role"] == "worker"
    )
    assert pools == ["cpu", "gpu"]
    # The kind values place the groups on those pools.
    values = yaml.safe_load((K8S_DIR / "kind" / "values.yaml").read_text())
    selectors = {
        g: v["nodeSelector"]["ray-pipeline.io/pool"] for g, v in values["workerGroups"].items()
    }
    assert selectors == {"data": "cpu", "train": "gpu"}
    script = (K8S_DIR.parent / "scripts" / "kind-e2e.sh").read_text()
    assert cluster["name"] in script
