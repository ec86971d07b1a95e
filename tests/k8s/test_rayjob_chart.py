"""The chart's RayJobs (templates/rayjob.yaml), in both modes and with every ci/ values file:
valid for KubeRay 1.7 and Kubernetes, on the release's cluster or on a copy of its spec, with
entrypoints that survive KubeRay's shell, names KubeRay accepts, and a submitter the
NetworkPolicy admits."""

from __future__ import annotations

import shlex

import pytest

from pipeline import k8s
from tests.k8s.conftest import CHART_DIR, CI_FILES, REPO

BOTH = {"prepare": {"enabled": True}, "train": {"enabled": True}}
VALUE_SETS = {p.stem: [p] for p in CI_FILES} | {
    "kind-e2e": [CHART_DIR / "ci" / "kind-values.yaml", REPO / "k8s" / "kind" / "values.yaml"]
}


def command(entrypoint: str) -> tuple[int, list[str]]:
    """(deadline, command) of an entrypoint `python -m pipeline.deadline <s> -- <command>`."""
    argv = shlex.split(entrypoint)
    assert argv[:3] == ["python", "-m", "pipeline.deadline"] and argv[4] == "--", argv
    return int(argv[3]), argv[5:]


@pytest.fixture(params=["cluster", "ephemeral"])
def mode(request) -> str:
    return request.param


@pytest.fixture(params=sorted(VALUE_SETS), ids=str)
def jobs(request, render, mode):
    """(rendered release, {job: RayJob}) with both jobs enabled in `mode`."""
    rendered = render({"rayJobs": {"mode": mode, **BOTH}}, *VALUE_SETS[request.param])
    return rendered, {
        j["metadata"]["labels"]["ray-pipeline.io/job"]: j for j in rendered.all("RayJob")
    }


def test_rayjobs_are_valid_for_kuberay_and_kubernetes(jobs, validate):
    _, found = jobs
    assert sorted(found) == ["prepare", "train"]
    for job in found.values():
        assert validate(job) == []


def test_no_rayjob_unless_enabled(render):
    assert render().all("RayJob") == []
    only_train = render({"rayJobs": {"train": {"enabled": True}}}).all("RayJob")
    assert [j["metadata"]["name"] for j in only_train] == ["rp-ray-pipeline-train-1"]


def test_entrypoints_run_the_pipeline_with_the_mounted_config(jobs):
    rendered, found = jobs
    deadline = rendered.values["rayJobs"]["activeDeadlineSeconds"]
    assert command(found["prepare"]["spec"]["entrypoint"]) == (deadline, [
        "ray-pipeline", "prepare", *map(str, rendered.values["rayJobs"]["prepare"]["args"])
    ])  # fmt: skip
    assert command(found["train"]["spec"]["entrypoint"])[1][:2] == ["ray-pipeline", "train"]
    # No --config: the driver runs on the head, which mounts the config and sets the variable.
    for job in found.values():
        cluster = job["spec"].get("rayClusterSpec") or rendered.raycluster["spec"]
        head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
        env = {"name": "RAY_PIPELINE_CONFIG", "value": "/etc/ray-pipeline/config.yaml"}
        assert env in head["env"]


def test_both_modes_submit_from_a_kubernetes_job_with_a_deadline(jobs):
    rendered, found = jobs
    values = rendered.values["rayJobs"]
    for job in found.values():
        spec = job["spec"]
        assert spec["submissionMode"] == "K8sJobMode"
        assert spec["activeDeadlineSeconds"] == values["activeDeadlineSeconds"] > 0
        assert spec["submitterConfig"] == {"backoffLimit": values["submitter"]["backoffLimit"]}


def test_cluster_mode_targets_the_release_cluster_without_retries(render):
    rendered = render({"rayJobs": {"mode": "cluster", **BOTH}})
    cluster = rendered.raycluster["metadata"]["name"]
    for job in rendered.all("RayJob"):
        spec = job["spec"]
        assert spec["clusterSelector"] == {"ray.io/cluster": cluster}
        # KubeRay refuses backoffLimit > 0 with a clusterSelector, and must not delete the
        # long-lived cluster: no retries, no shutdown, no TTL.
        for key in (
            "rayClusterSpec",
            "backoffLimit",
            "shutdownAfterJobFinishes",
            "ttlSecondsAfterFinished",
        ):
            assert key not in spec, key


@pytest.mark.parametrize("ci_file", CI_FILES, ids=lambda p: p.stem)
def test_ephemeral_mode_brings_the_release_cluster_spec(render, ci_file):
    """One helper renders both: train's cluster is the spec the release's RayCluster has in
    cluster mode (less upgradeStrategy, which KubeRay refuses on a RayJob's cluster)."""
    rendered = render({"rayJobs": {"mode": "ephemeral", **BOTH}}, ci_file)
    long_lived = render({"rayJobs": {"mode": "cluster"}}, ci_file).raycluster["spec"]
    values = rendered.values["rayJobs"]
    for job in rendered.all("RayJob"):
        spec = job["spec"]
        if job["metadata"]["labels"]["ray-pipeline.io/job"] == "train":
            assert spec["rayClusterSpec"] == long_lived
        assert "clusterSelector" not in spec
        assert spec["shutdownAfterJobFinishes"] is True
        assert spec["ttlSecondsAfterFinished"] == values["ttlSecondsAfterFinished"]
        assert spec["backoffLimit"] == values["backoffLimit"]


def test_submitter_is_a_locked_down_release_pod_with_resources(jobs):
    rendered, found = jobs
    values = rendered.values
    selector = {
        "app.kubernetes.io/name": "ray-pipeline",
        "app.kubernetes.io/instance": rendered.release,
    }
    # The NetworkPolicy in front of the Ray pods admits pods with the release's labels.
    if values["networkPolicy"]["enabled"]:
        policy = rendered.one("NetworkPolicy", f"{rendered.release}-ray-pipeline-ray")
        peers = [
            p["podSelector"]["matchLabels"]
            for rule in policy["spec"]["ingress"]
            for p in rule["from"]
            if "podSelector" in p
        ]
        assert selector in peers
    for job in found.values():
        template = job["spec"]["submitterPodTemplate"]
        assert selector.items() <= template["metadata"]["labels"].items()
        spec = template["spec"]
        assert spec["restartPolicy"] == "Never"
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"] == values["podSecurityContext"]
        (container,) = spec["containers"]
        assert "command" not in container  # KubeRay fills in `ray job submit`
        assert container["securityContext"] == values["containerSecurityContext"]
        assert not container["image"].endswith("-gpu")
        assert container["imagePullPolicy"] == values["image"]["pullPolicy"]
        expected = {k: str(v) for k, v in values["rayJobs"]["submitter"]["resources"].items()}
        assert container["resources"] == {"requests": expected, "limits": expected}


def test_argo_cd_sync_waves_put_prepare_before_train(jobs):
    _, found = jobs
    wave = {
        j: int(found[j]["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]) for j in found
    }
    assert 0 < wave["prepare"] < wave["train"]


@pytest.mark.parametrize(
    "args",
    [
        ["synthetic", "--rows", 1000, "--out", "s3://bucket/data set"],
        ["--set", "data.train_uri=s3://b/it's here", "--set", 'storage.run_name=a"b'],
        ["--set", "train.epochs=3; echo pwned", "--set", "x=$(id)", "--set", ""],
    ],
    ids=["spaces", "quotes", "shell"],
)
def test_arguments_are_shell_quoted_like_python_does(render, args):
    """KubeRay pastes the entrypoint into a shell command: each argument must come back whole."""
    rendered = render({"rayJobs": {"train": {"enabled": True, "args": args}}})
    entrypoint = rendered.one("RayJob")["spec"]["entrypoint"]
    argv = ["python", "-m", "pipeline.deadline", "86400", "--", "ray-pipeline", "train"]
    assert entrypoint == shlex.join([*argv, *map(str, args)])
    assert shlex.split(entrypoint)[7:] == [str(a) for a in args]


def test_names_fit_kuberay_and_change_with_the_run_id(render):
    names = [
        j["metadata"]["name"] for j in render({"rayJobs": {**BOTH, "runId": "r7"}}).all("RayJob")
    ]
    assert names == ["rp-ray-pipeline-prepare-r7", "rp-ray-pipeline-train-r7"]
    plain = render({"rayJobs": {**BOTH, "runId": ""}}).all("RayJob")
    assert [j["metadata"]["name"] for j in plain] == [
        "rp-ray-pipeline-prepare",
        "rp-ray-pipeline-train",
    ]
    for name in names:
        assert len(name) <= k8s.MAX_NAME_LENGTH and k8s.DNS_1035.match(name)


@pytest.mark.parametrize(
    "values, message",
    [
        (
            {"fullnameOverride": "x" * 35, "rayJobs": {"runId": "20250101"}},
            "KubeRay allows 47",
        ),
        ({"fullnameOverride": "9lives", "rayJobs": {"runId": "1"}}, "not a DNS-1035 label"),
        ({"rayJobs": {"runId": "Run_1"}}, "/rayJobs/runId"),
        ({"rayJobs": {"mode": "shared"}}, "/rayJobs/mode"),
        ({"rayJobs": {"activeDeadlineSeconds": 0}}, "/rayJobs/activeDeadlineSeconds"),
        (
            {"rayJobs": {"submitter": {"resources": {"cpu": "lots"}}}},
            "/rayJobs/submitter/resources/cpu",
        ),
        ({"rayJobs": {"train": {"enabled": True, "argz": []}}}, "argz"),
    ],
    ids=["too-long", "digit-first", "run-id", "mode", "deadline", "submitter-cpu", "unknown-key"],
)
def test_bad_rayjob_values_are_refused_with_the_value_named(render_error, values, message):
    values = {**values, "rayJobs": {**BOTH, **values.get("rayJobs", {})}}
    assert message in render_error(values)


def test_submit_renders_the_chart_train_job(render, capsys):
    """`ray-pipeline submit` and the chart describe the same job: only names and the chart's
    Helm labels differ (and the service account, which submit reads from the live cluster)."""
    from pipeline.cli import main

    chart = render({"rayJobs": {"train": {"enabled": True}}}).one("RayJob")
    assert main(["submit", "--dry-run", "--release", "rp", "-n", "ml"]) == 0
    import yaml

    cli = yaml.safe_load(capsys.readouterr().out)
    assert cli["spec"]["entrypoint"] == chart["spec"]["entrypoint"]
    for key in ("submissionMode", "clusterSelector", "activeDeadlineSeconds", "submitterConfig"):
        assert cli["spec"][key] == chart["spec"][key], key
    chart_pod = dict(chart["spec"]["submitterPodTemplate"]["spec"])
    chart_pod.pop("serviceAccountName")
    assert cli["spec"]["submitterPodTemplate"]["spec"] == chart_pod
    chart_labels = chart["spec"]["submitterPodTemplate"]["metadata"]["labels"]
    cli_labels = cli["spec"]["submitterPodTemplate"]["metadata"]["labels"]
    assert cli_labels.items() <= chart_labels.items()
