"""What the KubeRay 1.7.0 operator does with the rendered objects, beyond what its CRDs say.

Each test names the operator function (ray-operator/controllers/ray/..., tag v1.7.0) whose
behaviour it pins: the chart must render what that function accepts and documents what it does.
"""

from __future__ import annotations

import pytest
import yaml

from tests.chart.conftest import CHART_DIR, NAMESPACE, RenderError, _parse, merged_values

CI = CHART_DIR / "ci"
BOTH = {"prepare": {"enabled": True}, "train": {"enabled": True}}
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"  # where Ray's autoscaler reads it


def render_release(release: str, values: dict | None = None) -> tuple[object, str]:
    """(Rendered, NOTES.txt) for a release name of our choosing (the fixtures use `rp`)."""
    helm_python = pytest.importorskip("helm_python")
    from tests.chart.conftest import _sdk_chart

    try:
        manifests = _sdk_chart().render(values or {}, name=release, namespace=NAMESPACE)
    except (helm_python.HelmValuesError, helm_python.HelmRenderError) as e:
        raise RenderError(str(e)) from None
    notes = next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))
    return _parse(manifests, merged_values(values)), notes


def kuberay_check_name(name: str) -> str:
    """utils/util.go: CheckName, as KubeRay 1.7 writes it."""
    if len(name) > 50:
        name = name[len(name) - 50 :]
    if name[0].isdigit() or not name[0].isalnum():
        name = "r" + name[1:]
    return name


def jobs_by_name(rendered) -> dict[str, dict]:
    return {j["metadata"]["labels"]["ray-pipeline.io/job"]: j for j in rendered.all("RayJob")}


# --- 2, 3: ephemeral mode -------------------------------------------------------------------


@pytest.mark.parametrize("ci_file", sorted(CI.glob("*-values.yaml")), ids=lambda p: p.stem)
def test_ephemeral_mode_renders_no_long_lived_cluster(render, ci_file):
    """rayjob_controller.go: Reconcile submits only when the job's own cluster is Ready, which
    raycluster_controller.go: calculateStatus reports once all its pods run: a second, long-lived
    copy of the groups would take the capacity the job's cluster waits for."""
    rendered = render({"rayJobs": {"mode": "ephemeral", **BOTH}}, ci_file)
    assert rendered.all("RayCluster") == []
    # The operator makes the autoscaler's Role per job cluster (common/rbac.go: BuildRole).
    assert rendered.all("Role") == [] and rendered.all("RoleBinding") == []
    assert all("rayClusterSpec" in j["spec"] for j in rendered.all("RayJob"))
    # Cluster mode keeps the release's RayCluster.
    assert render({"rayJobs": {"mode": "cluster", **BOTH}}, ci_file).all("RayCluster")


@pytest.mark.parametrize("ci_file", sorted(CI.glob("*-values.yaml")), ids=lambda p: p.stem)
def test_ephemeral_prepare_gets_the_head_and_the_data_group_only(render, ci_file):
    """KubeRay creates every group of spec.rayClusterSpec (rayjob_controller.go:
    constructRayClusterForRayJob copies it) and waits for all of them: prepare holds no GPU."""
    rendered = render({"rayJobs": {"mode": "ephemeral", **BOTH}}, ci_file)
    jobs = jobs_by_name(rendered)
    data_group = rendered.values["placement"]["dataGroup"]
    prepare = jobs["prepare"]["spec"]["rayClusterSpec"]
    assert [g["groupName"] for g in prepare["workerGroupSpecs"]] == [data_group]
    for group in prepare["workerGroupSpecs"]:
        for container in group["template"]["spec"]["containers"]:
            assert "nvidia.com/gpu" not in container["resources"]["limits"]
    train = jobs["train"]["spec"]["rayClusterSpec"]
    assert {g["groupName"] for g in train["workerGroupSpecs"]} == set(
        rendered.values["workerGroups"]
    )
    assert prepare["headGroupSpec"] == train["headGroupSpec"]


# --- 4: deadlines ---------------------------------------------------------------------------


def test_every_rayjob_stops_itself_at_its_deadline(render):
    """rayjob_controller.go: checkActiveDeadlineAndUpdateStatusIfNeeded only marks the RayJob
    Failed; the entrypoint carries the deadline to the driver (pipeline/deadline.py)."""
    import shlex

    for mode in ("cluster", "ephemeral"):
        rendered = render({"rayJobs": {"mode": mode, "activeDeadlineSeconds": 3600, **BOTH}})
        for job in rendered.all("RayJob"):
            assert job["spec"]["activeDeadlineSeconds"] == 3600
            argv = shlex.split(job["spec"]["entrypoint"])
            assert argv[:6] == ["python", "-m", "pipeline.deadline", "3600", "--", "ray-pipeline"]


def test_docs_no_longer_say_kuberay_stops_the_job():
    values = (CHART_DIR / "values.yaml").read_text()
    readme = (CHART_DIR / "README.md").read_text()
    for text in (values, readme):
        assert "before KubeRay stops it" not in text and "KubeRay stops a job" not in text
        assert "checkActiveDeadlineAndUpdateStatusIfNeeded" in text
        assert "pipeline.deadline" in text


# --- 6: names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "release, message",
    [
        ("9lives", "the RayCluster name 9lives-ray-pipeline is not a DNS-1035 label"),
        ("team.a", "the RayCluster name team.a-ray-pipeline is not a DNS-1035 label"),
        ("r" * 41, "has 54 characters; KubeRay allows 53"),
    ],
    ids=["digit-first", "dot", "54-characters"],
)
def test_cluster_names_the_operator_rejects_fail_at_render(release, message):
    """utils/validation.go: ValidateRayClusterMetadata (<= 53 characters, DNS-1035)."""
    with pytest.raises(RenderError) as e:
        render_release(release)
    assert message in str(e.value) and "fullnameOverride" in str(e.value)


@pytest.mark.parametrize("length", [50, 51, 53])
def test_notes_name_the_auth_secret_kuberay_creates(length):
    """raycluster_controller.go names the auth Secret utils.CheckName(<cluster>): for 51-53
    characters its first characters are cut."""
    release = "a" + "b" * (length - len("-ray-pipeline") - 1)
    rendered, notes = render_release(release)
    cluster = rendered.raycluster["metadata"]["name"]
    assert len(cluster) == length
    secret = kuberay_check_name(cluster)
    assert f"get secret {secret} -o jsonpath" in notes
    assert (secret == cluster) == (length <= 50)


def test_long_names_keep_the_autoscaler_account_and_binding_consistent():
    """common/pod.go: DefaultHeadPodTemplate sets the head pod's account to
    CheckName(<account>) with autoscaling; common/rbac.go: BuildRoleBinding binds that name."""
    release = "a" + "b" * 39  # fullname of 53 characters
    rendered, _ = render_release(
        release, yaml.safe_load((CI / "autoscaling-values.yaml").read_text())
    )
    head = rendered.raycluster["spec"]["headGroupSpec"]["template"]["spec"]
    account = rendered.one("ServiceAccount")["metadata"]["name"]
    assert head["serviceAccountName"] == account == kuberay_check_name(account)
    (subject,) = rendered.one("RoleBinding")["subjects"]
    assert subject["name"] == account


# --- 7: the ServiceAccount token ------------------------------------------------------------


def test_only_the_autoscaler_sidecar_gets_a_token(render):
    """common/pod.go: DefaultHeadPodTemplate appends the autoscaler container and
    mergeAutoscalerOverrides adds autoscalerOptions.volumeMounts to it, and to no other."""
    rendered = render(None, CI / "autoscaling-values.yaml")
    spec = rendered.raycluster["spec"]
    head = spec["headGroupSpec"]["template"]["spec"]
    assert head["automountServiceAccountToken"] is False  # nothing reaches ray-head
    (ray_head,) = [c for c in head["containers"] if c["name"] == "ray-head"]
    mounted = {m["name"] for m in ray_head.get("volumeMounts", [])}
    assert "autoscaler-token" not in mounted
    assert all(m["mountPath"] != TOKEN_PATH for m in ray_head.get("volumeMounts", []))
    (mount,) = spec["autoscalerOptions"]["volumeMounts"]
    assert mount == {"name": "autoscaler-token", "mountPath": TOKEN_PATH, "readOnly": True}
    volumes = {v["name"]: v for v in head["volumes"]}
    sources = volumes["autoscaler-token"]["projected"]["sources"]
    assert {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}} in sources
    assert any(s.get("configMap", {}).get("name") == "kube-root-ca.crt" for s in sources)
    for group in spec["workerGroupSpecs"]:
        assert group["template"]["spec"]["automountServiceAccountToken"] is False


def test_ephemeral_autoscaler_role_is_documented():
    text = (CHART_DIR / "README.md").read_text() + (CHART_DIR / "values.yaml").read_text()
    assert "common/rbac.go: BuildRole" in text and "every RayCluster of" in text


# --- 8: smaller mismatches ------------------------------------------------------------------


def test_an_empty_shm_size_is_documented_as_kuberays_own(render):
    """common/pod.go: addEmptyDir mounts a memory-backed /dev/shm sized to the memory limit
    when the Ray container has none at /dev/shm."""
    rendered = render({"head": {"shmSizeLimit": ""}})
    head = rendered.raycluster["spec"]["headGroupSpec"]["template"]["spec"]
    assert all(m["mountPath"] != "/dev/shm" for m in head["containers"][0]["volumeMounts"])
    schema = (CHART_DIR / "values.schema.json").read_text()
    for text in ((CHART_DIR / "values.yaml").read_text(), (CHART_DIR / "README.md").read_text()):
        assert "empty: no /dev/shm" not in text and "empty: none" not in text
        assert "addEmptyDir" in text
    assert "empty: no /dev/shm" not in schema


@pytest.mark.parametrize(
    "param", ["port", "dashboard-port", "ray-client-server-port", "metrics-export-port"]
)
def test_head_port_params_are_refused(render_error, param):
    """common/service.go: getPortsFromCluster builds the head Service from the container ports,
    which (like the NetworkPolicies) stay at the defaults."""
    message = render_error({"head": {"rayStartParams": {param: "9999"}}})
    assert f"head.rayStartParams.{param}" in message and "remove it" in message


@pytest.mark.parametrize(
    "key", ["app.kubernetes.io/created-by", "app.kubernetes.io/name", "ray.io/node-type"]
)
def test_pod_labels_kuberay_selects_on_are_refused(render_error, key):
    """common/service.go: BuildServiceForHeadPod selects created-by=kuberay-operator whatever
    the pod template says (common/pod.go: labelPod lets the template override it)."""
    message = render_error({"head": {"podLabels": {key: "x"}}})
    assert f"head.podLabels.{key}" in message
    message = render_error({"workerGroups": {"data": {"podLabels": {key: "x"}}}})
    assert f"workerGroups.data.podLabels.{key}" in message


def test_upgrade_strategy_is_for_the_long_lived_cluster_only(render, crds):
    """utils/validation.go: ValidateRayClusterUpgradeOptions refuses upgradeStrategy on a
    cluster created by a RayJob."""
    rendered = render({"upgradeStrategy": "Recreate", "rayJobs": {"mode": "cluster", **BOTH}})
    assert rendered.raycluster["spec"]["upgradeStrategy"] == {"type": "Recreate"}
    assert crds.errors(rendered.raycluster) == []
    assert "upgradeStrategy" not in render().raycluster["spec"]
    ephemeral = render({"upgradeStrategy": "Recreate", "rayJobs": {"mode": "ephemeral", **BOTH}})
    for job in ephemeral.all("RayJob"):
        assert "upgradeStrategy" not in job["spec"]["rayClusterSpec"]


def test_upgrade_strategy_values_are_checked(render_error):
    assert "/upgradeStrategy" in render_error({"upgradeStrategy": "Rolling"})


def test_minio_root_filesystem_is_read_only(render):
    rendered = render(None, CI / "kind-values.yaml")
    (container,) = rendered.one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/data", "/tmp"}


# --- 9: where ray.io/node-group comes from --------------------------------------------------


def test_docs_say_ray_derives_the_node_group_label():
    for path in (CHART_DIR / "README.md", CHART_DIR / "values.yaml"):
        text = " ".join(path.read_text().split())
        assert "RAY_NODE_TYPE_NAME" in text and "resource_and_label_spec" in text, path
        assert "label KubeRay >= 1.1 gives every Ray node" not in text


# --- #11: shipping user code ----------------------------------------------------------------


def test_rayjobs_take_a_runtime_env(render, crds):
    runtime_env = {"working_dir": "s3://bucket/code/abc.zip", "pip": ["scikit-learn==1.6.1"]}
    for mode in ("cluster", "ephemeral"):
        rendered = render({"rayJobs": {"mode": mode, "runtimeEnv": runtime_env, **BOTH}})
        for job in rendered.all("RayJob"):
            assert yaml.safe_load(job["spec"]["runtimeEnvYAML"]) == runtime_env
            assert crds.errors(job) == []
    assert all("runtimeEnvYAML" not in j["spec"] for j in render({"rayJobs": BOTH}).all("RayJob"))


def ray_containers(rendered) -> list[tuple[str, dict]]:
    """Every Ray container: the release's RayCluster and every RayJob's own cluster."""
    specs = [rendered.raycluster["spec"]] if rendered.all("RayCluster") else []
    specs += [
        j["spec"]["rayClusterSpec"] for j in rendered.all("RayJob") if "rayClusterSpec" in j["spec"]
    ]
    found = []
    for spec in specs:
        templates = [spec["headGroupSpec"]["template"]]
        templates += [g["template"] for g in spec["workerGroupSpecs"]]
        for template in templates:
            found += [(c["name"], c) for c in template["spec"]["containers"]]
    return found


@pytest.mark.parametrize(
    "values, endpoint",
    [
        ({"minio": {"enabled": True}, "s3": {"credentials": {"createSecret": {
            "enabled": True, "accessKeyId": "minio", "secretAccessKey": "minio-secret"}}}},
         "http://rp-ray-pipeline-minio.ml.svc:9000"),
        ({"s3": {"endpoint": "https://s3.example.com"}}, "https://s3.example.com"),
        ({"s3": {"endpoint": "minio.storage:9000"}, "pipelineConfig": {"s3": {"scheme": "http"}}},
         "http://minio.storage:9000"),
        ({"s3": {"endpoint": "minio.storage:9000"}}, "https://minio.storage:9000"),
    ],
    ids=["in-chart-minio", "url", "host-port-http", "host-port-default-https"],
)  # fmt: skip
def test_every_ray_container_gets_the_s3_endpoint_for_runtime_env_downloads(
    render, values, endpoint
):
    """Ray downloads s3:// working_dir packages with boto3, which reads AWS_ENDPOINT_URL_S3."""
    for mode in ("cluster", "ephemeral"):
        rendered = render({**values, "rayJobs": {"mode": mode, **BOTH}})
        containers = ray_containers(rendered)
        assert containers
        for name, container in containers:
            env = {e["name"]: e for e in container["env"]}
            assert env["AWS_ENDPOINT_URL_S3"] == {"name": "AWS_ENDPOINT_URL_S3", "value": endpoint}
            assert "secretKeyRef" in env["AWS_ACCESS_KEY_ID"]["valueFrom"], name


def test_aws_s3_gets_no_endpoint_override(render):
    for _, container in ray_containers(render()):
        assert "AWS_ENDPOINT_URL_S3" not in {e["name"] for e in container["env"]}


def test_the_endpoint_variable_is_the_charts(render_error):
    env = [{"name": "AWS_ENDPOINT_URL_S3", "value": "http://elsewhere:9000"}]
    assert "s3.endpoint" in render_error({"head": {"env": env}})


def test_pipeline_config_still_validates_in_ephemeral_mode(render):
    from pipeline.config import validate_config

    rendered = render({"rayJobs": {"mode": "ephemeral", **BOTH}})
    (job,) = [
        j
        for j in rendered.all("RayJob")
        if j["metadata"]["labels"]["ray-pipeline.io/job"] == "train"
    ]
    volume = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["volumes"][0]
    cm = rendered.one("ConfigMap", volume["configMap"]["name"])
    validate_config(yaml.safe_load(cm["data"]["config.yaml"]), "the chart's ConfigMap")
