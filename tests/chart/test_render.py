"""What a release gets from each ci/ values file: the RayCluster's groups, images, mounts, auth,
autoscaling and MinIO, as the issue asks for them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

CONFIG_PATH = "/etc/ray-pipeline/config.yaml"


def test_lints_without_warnings_or_errors(ci_file: Path, lint):
    values = yaml.safe_load(ci_file.read_text()) or {}
    assert lint(values) == []


def test_head_takes_no_tasks_and_keeps_the_dashboard_in_the_cluster(ci):
    head = ci.raycluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["serviceType"] == "ClusterIP"
    assert head["enableIngress"] is False
    assert not ci.all("Ingress")
    assert [s for s in ci.all("Service") if s["spec"].get("type", "ClusterIP") != "ClusterIP"] == []


def test_versions_match_the_package_and_ray(render, chart_dir: Path):
    ray = pytest.importorskip("ray")
    pyproject = (chart_dir.parents[1] / "pyproject.toml").read_text()
    package_version = re.search(r'^version\s*=\s*"([^"]+)"', pyproject, re.M).group(1)
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())

    rendered = render()
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == package_version
    assert rendered.raycluster["spec"]["rayVersion"] == ray.__version__
    images = {t["spec"]["containers"][0]["image"] for _, t in rendered.ray_pod_templates()}
    assert images == {
        f"ghcr.io/ray-pipeline/ray-pipeline:{package_version}",
        f"ghcr.io/ray-pipeline/ray-pipeline:{package_version}-gpu",
    }


def test_image_repository_and_tag_come_from_values(render):
    rendered = render({"image": {"repository": "registry.local/rp", "tag": "1.2.3"}})
    images = {name: t["spec"]["containers"][0]["image"] for name, t in rendered.ray_pod_templates()}
    assert images == {
        "headgroup": "registry.local/rp:1.2.3",
        "data": "registry.local/rp:1.2.3",
        "train": "registry.local/rp:1.2.3-gpu",
    }


def test_every_ray_container_reads_the_config_at_one_fixed_path(ci):
    for group, template in ci.ray_pod_templates():
        spec = template["spec"]
        ray = spec["containers"][0]
        env = {e["name"]: e for e in ray["env"]}
        assert env["RAY_PIPELINE_CONFIG"]["value"] == CONFIG_PATH, group
        volumes = {v["name"]: v for v in spec["volumes"]}
        (mount,) = [
            m for m in ray["volumeMounts"] if m["mountPath"] == str(Path(CONFIG_PATH).parent)
        ]
        assert mount.get("readOnly") is True, group
        configmap = ci.one("ConfigMap", volumes[mount["name"]]["configMap"]["name"])
        assert Path(CONFIG_PATH).name in configmap["data"], group


def test_groups_get_the_resources_in_values(ci):
    """requests == limits for CPU, memory and nvidia.com/gpu: Ray's counts derive from them."""
    for name, values in ci.values["workerGroups"].items():
        group = ci.worker_group(name)
        assert group["minReplicas"] == values["minReplicas"]
        assert group["maxReplicas"] == values["maxReplicas"]
        if not ci.values["autoscaling"]["enabled"]:
            assert group["replicas"] == values["replicas"]
        (ray,) = group["template"]["spec"]["containers"]
        gpus = values["resources"].get("gpu", 0)
        expected = {"cpu": str(values["resources"]["cpu"]), "memory": values["resources"]["memory"]}
        if gpus:
            expected["nvidia.com/gpu"] = str(gpus)
        assert ray["resources"]["requests"] == expected, name
        assert ray["resources"]["limits"] == expected, name


def test_gpu_groups_get_gpus_a_gpu_image_shm_and_tolerations(ci):
    gpu_groups = [n for n, g in ci.values["workerGroups"].items() if g["resources"].get("gpu")]
    for name in gpu_groups:
        group = ci.worker_group(name)
        spec = group["template"]["spec"]
        ray = spec["containers"][0]
        assert ray["image"].endswith("-gpu"), name
        # KubeRay derives num-gpus from the limit; a rayStartParam could only contradict it.
        assert "num-gpus" not in group["rayStartParams"], name
        assert any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", [])), name
        assert_memory_backed_shm(spec, ci.values["workerGroups"][name]["shmSizeLimit"])


def test_cpu_groups_get_no_gpus_and_the_cpu_image(ci):
    cpu_groups = [n for n, g in ci.values["workerGroups"].items() if not g["resources"].get("gpu")]
    assert ci.values["placement"]["dataGroup"] in cpu_groups
    for name in cpu_groups:
        ray = ci.worker_group(name)["template"]["spec"]["containers"][0]
        assert not ray["image"].endswith("-gpu"), name
        assert not any("gpu" in k for k in ray["resources"]["limits"]), name


def assert_memory_backed_shm(spec: dict, size: str) -> None:
    (shm,) = [m for m in spec["containers"][0]["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == shm["name"]]
    assert volume["emptyDir"] == {"medium": "Memory", "sizeLimit": size}


def test_extra_groups_have_the_same_shape(render, chart_dir: Path):
    rendered = render(None, chart_dir / "ci" / "gpu-values.yaml")
    names = [g["groupName"] for g in rendered.raycluster["spec"]["workerGroupSpecs"]]
    assert sorted(names) == ["data", "highmem", "train", "train-h100"]
    h100 = rendered.worker_group("train-h100")
    assert h100["labels"] == {"ray-pipeline.io/role": "train-h100"}
    spec = h100["template"]["spec"]
    assert spec["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    highmem = rendered.worker_group("highmem")["template"]["spec"]
    assert highmem["tolerations"][0]["value"] == "highmem"


def test_group_labels_are_rendered_only_when_enabled(render):
    on = render()
    assert on.worker_group("data")["labels"] == {"ray-pipeline.io/role": "data"}
    off = render({"ray": {"groupLabels": False}})
    assert all("labels" not in g for g in off.raycluster["spec"]["workerGroupSpecs"])


@pytest.mark.parametrize(
    "auth, expected",
    [
        ({}, {"mode": "token"}),
        ({"existingSecret": "my-ray-token"}, {"mode": "token", "secretName": "my-ray-token"}),
        ({"enabled": False}, {"mode": "disabled"}),
    ],
    ids=["default", "existing-secret", "disabled"],
)
def test_ray_token_authentication(render, auth, expected):
    assert render({"ray": {"auth": auth}}).raycluster["spec"]["authOptions"] == expected


def test_autoscaler_v2_with_idle_timeouts(render, chart_dir: Path):
    rendered = render(None, chart_dir / "ci" / "autoscaling-values.yaml")
    spec = rendered.raycluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    options = spec["autoscalerOptions"]
    assert options["version"] == "v2"
    assert options["idleTimeoutSeconds"] == 120
    assert rendered.worker_group("train")["idleTimeoutSeconds"] == 600
    for name, template in rendered.ray_pod_templates():
        assert template["spec"]["restartPolicy"] == "Never", name
        # The autoscaler owns replicas; `helm upgrade` must not reset them.
        if name != "headgroup":
            assert "replicas" not in rendered.worker_group(name)


def test_autoscaling_off_by_default(render):
    spec = render().raycluster["spec"]
    assert spec["enableInTreeAutoscaling"] is False
    assert "autoscalerOptions" not in spec


def test_minio_for_local_clusters(render, chart_dir: Path):
    rendered = render(None, chart_dir / "ci" / "kind-values.yaml")
    name = f"{rendered.release}-ray-pipeline-minio"
    (container,) = rendered.one("Deployment", name)["spec"]["template"]["spec"]["containers"]
    assert re.fullmatch(r"minio/minio:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", container["image"])
    service = rendered.one("Service", name)
    assert [p["port"] for p in service["spec"]["ports"]] == [9000]
    assert rendered.one("PersistentVolumeClaim", name)["spec"]["resources"]["requests"] == {
        "storage": "2Gi"
    }
    job = rendered.one("Job", f"{rendered.release}-ray-pipeline-minio-bucket")
    assert "post-install" in job["metadata"]["annotations"]["helm.sh/hook"]
    (mc,) = job["spec"]["template"]["spec"]["containers"]
    assert re.fullmatch(r"minio/mc:RELEASE\.[0-9TZ-]+", mc["image"])
    env = {e["name"]: e.get("value") for e in mc["env"]}
    assert env["S3_BUCKET"] == rendered.values["s3"]["bucket"]
    endpoint = f"http://{name}.{rendered.namespace}.svc:9000"
    assert env["S3_ENDPOINT"] == endpoint
    assert rendered.pipeline_config["s3"]["endpoint"] == endpoint


def test_minio_images_are_configurable(render, chart_dir: Path):
    rendered = render(
        {
            "minio": {
                "image": {
                    "repository": "quay.io/minio/minio",
                    "tag": "RELEASE.2025-04-22T22-12-26Z",
                },
                "mcImage": {
                    "repository": "quay.io/minio/mc",
                    "tag": "RELEASE.2025-04-16T18-13-26Z",
                },
            }
        },
        chart_dir / "ci" / "kind-values.yaml",
    )
    images = {
        c["image"]
        for kind in ("Deployment", "Job")
        for o in rendered.all(kind)
        for c in o["spec"]["template"]["spec"]["containers"]
    }
    assert images == {
        "quay.io/minio/minio:RELEASE.2025-04-22T22-12-26Z",
        "quay.io/minio/mc:RELEASE.2025-04-16T18-13-26Z",
    }


def test_no_minio_unless_asked(render):
    rendered = render()
    assert not rendered.all("Deployment") and not rendered.all("Job")
    assert "endpoint" not in rendered.pipeline_config["s3"]
