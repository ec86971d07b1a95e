"""`ray-pipeline submit` and `ray-pipeline status`.

What can run here runs for real: `--dry-run` (the CLI in-process, its YAML validated strictly),
the pure parts (names, overrides, entrypoint, reading the chart's RayCluster, following a
status sequence), and the errors without a cluster (no kubeconfig, a refused connection: the
real client against a closed port). Creating and following a RayJob needs an API server and
the KubeRay operator, which are not here: those tests use tests/k8s/fake_api.py, a small HTTP
server that the real kubernetes client talks to, with scripted RayJob statuses. The real
thing runs in tests/e2e (make kind-e2e).
"""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import k8s
from pipeline.cli import main
from pipeline.config import apply_override, parse_override
from tests.k8s.conftest import CHART_DIR, CI_FILES, REPO
from tests.k8s.fake_api import FakeApiServer, FakeCluster, write_kubeconfig

KIND_VALUES = CHART_DIR / "ci" / "kind-values.yaml"


@pytest.fixture(autouse=True)
def fast_polling(monkeypatch):
    monkeypatch.setattr(k8s.status, "POLL_INTERVAL_S", 0.01)


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- --dry-run ------------------------------------------------------------------------------


def test_dry_run_prints_a_valid_rayjob_and_touches_nothing(capsys, monkeypatch, tmp_path, validate):
    # A kubeconfig whose server would refuse: --dry-run must not even try it.
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kc", "http://127.0.0.1:9")))
    code, out, err = cli(
        capsys, "submit", "--dry-run", "--release", "rp", "-n", "ml", "--set", "train.epochs=3"
    )
    assert code == 0, err
    (job,) = yaml.safe_load_all(out)
    assert validate(job) == []
    assert job["metadata"]["namespace"] == "ml"
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": "rp-ray-pipeline"}
    assert shlex.split(job["spec"]["entrypoint"]) == [
        "python", "-m", "pipeline.deadline", "86400", "--",  # stops itself at the deadline
        "ray-pipeline", "train", "--set", "train.epochs=3",
    ]  # fmt: skip
    assert "backoffLimit" not in job["spec"]  # KubeRay refuses retries with a clusterSelector
    name = job["metadata"]["name"]
    assert name.startswith("digits-cnn-") and len(name) <= 47 and k8s.DNS_1035.match(name)
    container = job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
    assert container["image"] == f"ghcr.io/ray-pipeline/ray-pipeline:{k8s.__version__}"
    assert container["resources"]["requests"] == container["resources"]["limits"]


def test_dry_run_carries_a_local_config_then_the_overrides(capsys, tmp_path, validate):
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "train": {"epochs": 12, "learning_rate": 1e-05, "model": "resnet18"},
                "storage": {"run_name": "exp.42_b"},
                "data": {"placement": {"selector": {"ray-pipeline.io/role": "data"}}},
            }
        )
    )
    code, out, _ = cli(
        capsys, "submit", "--dry-run", "--release", "ml-ray-pipeline", "-n", "team",
        "--config", str(config), "--set", "train.epochs=3",
    )  # fmt: skip
    assert code == 0
    job = yaml.safe_load(out)
    assert validate(job) == []
    argv = shlex.split(job["spec"]["entrypoint"])[5:]
    sets = argv[3::2]
    assert argv[2::2] == ["--set"] * len(sets)
    # The file's leaves first, the command line's --set last (it wins).
    assert sets[-1] == "train.epochs=3" and "train.epochs=12" in sets
    assert "data.placement.selector={ray-pipeline.io/role: data}" in sets
    # The release's own names: a release containing the chart's name is the cluster's name.
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": "ml-ray-pipeline"}
    assert job["metadata"]["name"].startswith("exp-42-b-")
    assert job["metadata"]["annotations"] == {"ray-pipeline.io/run-name": "exp.42_b"}


def test_dry_run_refuses_what_the_job_would_refuse(capsys):
    code, _, err = cli(capsys, "submit", "--dry-run", "--release", "rp", "--set", "train.epochs=0")
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: invalid config")
    code, _, err = cli(capsys, "submit", "--dry-run")
    assert code == 2 and "--release" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "value",
    ["true", "1e3", "", "a b 'c' \"d\"", "s3://bucket/x", 1e-05, 3, True, None, [8, 8, 3],
     {"ray-pipeline.io/role": "train", "zone": "a"}, "multi\nline"],
    ids=repr,
)  # fmt: skip
def test_a_local_config_leaf_reads_back_as_itself(tmp_path, value):
    """Each leaf goes through `--set` (YAML) and two shells (KubeRay's, then Ray's)."""
    item = f"x.y={k8s.rayjob._yaml_value(value)}"
    (back,) = shlex.split(shlex.join([item]))
    tree: dict = {}
    apply_override(tree, *parse_override(back))
    assert tree == {"x": {"y": value}}


def test_config_overrides_are_the_files_leaves(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "train:\n  epochs: 5\n  placement:\n    wait_s: 30\ns3:\n  region: eu-west-1\n"
    )
    assert k8s.config_file_overrides(config) == [
        "train.epochs=5", "train.placement.wait_s=30", "s3.region=eu-west-1"
    ]  # fmt: skip


@pytest.mark.parametrize(
    "run_name", ["digits-cnn", "Exp.1_a", "2024-run", "x" * 100, "a.b.c-d_e", "RUN"]
)
def test_job_names_are_unique_dns_1035_and_fit_kuberay(run_name):
    names = {k8s.job_name(run_name) for _ in range(20)}
    assert len(names) == 20
    for name in names:
        assert len(name) <= k8s.MAX_NAME_LENGTH and k8s.DNS_1035.match(name), name
    assert k8s.job_name("digits-cnn", now=0, token="abcd") == "digits-cnn-01010000-abcd"


def test_chart_fullname_is_the_charts(render):
    helm_python = pytest.importorskip("helm_python")
    from tests.chart.conftest import _sdk_chart

    assert k8s.chart_fullname("rp") == render().raycluster["metadata"]["name"]
    for release in ("team-ray-pipeline", "ray-pipeline", "a"):
        try:
            manifests = _sdk_chart().render({}, name=release, namespace="ml")
        except helm_python.HelmRenderError as e:  # pragma: no cover
            pytest.fail(str(e))
        (cluster,) = [
            d for path, text in manifests.items() if not path.endswith("NOTES.txt")
            for d in yaml.safe_load_all(text) if d and d["kind"] == "RayCluster"
        ]  # fmt: skip
        assert k8s.chart_fullname(release) == cluster["metadata"]["name"]


@pytest.mark.parametrize("ci_file", CI_FILES, ids=lambda p: p.stem)
def test_target_is_read_from_the_charts_raycluster(render, ci_file):
    rendered = render(None, ci_file)
    target = k8s.target_from_cluster(rendered.raycluster)
    head = rendered.raycluster["spec"]["headGroupSpec"]["template"]["spec"]
    assert target.cluster == rendered.raycluster["metadata"]["name"]
    assert target.release_labels == {
        "app.kubernetes.io/name": "ray-pipeline",
        "app.kubernetes.io/instance": rendered.release,
    }
    assert target.image == head["containers"][0]["image"]
    assert target.pull_policy == rendered.values["image"]["pullPolicy"]
    assert target.pod_security_context == head["securityContext"]
    assert target.service_account == head["serviceAccountName"]
    configmap, key = target.config_map
    assert "config.yaml" == key and rendered.one("ConfigMap", configmap)


# --- Following a RayJob ---------------------------------------------------------------------


def statuses_then(*states: tuple[str, str]) -> list[dict]:
    out = []
    for deployment, job in states:
        status = {"jobDeploymentStatus": deployment}
        if job:
            status["jobStatus"] = job
        if deployment not in ("", "Initializing"):
            status["dashboardURL"] = "rp-ray-pipeline-head-svc.ml.svc.cluster.local:8265"
        out.append(status)
    return out


def test_follow_shows_each_change_once_and_the_dashboard(capsys):
    sequence = statuses_then(
        ("Initializing", ""), ("Initializing", ""), ("Running", "PENDING"), ("Running", "RUNNING"),
        ("Running", "RUNNING"), ("Complete", "SUCCEEDED"),
    )  # fmt: skip
    reads = iter(sequence)
    obj, state = k8s.follow(
        lambda: {"metadata": {"name": "j", "namespace": "ml"}, "status": next(reads)},
        sleep=lambda s: None,
    )
    err = capsys.readouterr().err
    changes = [line.split(": ", 1)[1] for line in err.splitlines() if line[:2].isdigit()]
    assert changes == [
        "Initializing", "Running, Ray job PENDING", "Running, Ray job RUNNING",
        "Complete, Ray job SUCCEEDED",
    ]  # fmt: skip
    assert err.count("dashboard: http://rp-ray-pipeline-head-svc.ml.svc.cluster.local:8265") == 1
    assert "kubectl -n ml port-forward svc/rp-ray-pipeline-head-svc 8265:8265" in err
    assert state.outcome == "succeeded" and state.exit_code == 0


def test_follow_stops_at_its_timeout_and_rides_out_a_short_outage():
    clock = iter(range(0, 10_000, 10))
    calls = {"n": 0}

    def get():
        calls["n"] += 1
        if calls["n"] == 2:
            raise k8s.api.Unreachable("cannot reach the Kubernetes API")
        return {"metadata": {"name": "j"}, "status": {"jobDeploymentStatus": "Running"}}

    _, state = k8s.follow(get, timeout_s=60, sleep=lambda s: None, clock=lambda: next(clock))
    assert state.outcome == "progressing" and state.exit_code == k8s.EXIT_UNFINISHED
    assert calls["n"] >= 3


# --- Errors without a cluster (the real client) ---------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*argv: str, kubeconfig: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "KUBECONFIG": kubeconfig, "HOME": "/nonexistent"}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *argv], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_no_kubeconfig_is_one_line(tmp_path):
    proc = run_cli("submit", "--release", "rp", kubeconfig=str(tmp_path / "missing"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: no Kubernetes access: no usable kubeconfig at ")
    assert proc.stderr.count("\n") == 1 and proc.stdout == ""


def test_a_refused_connection_is_one_line(tmp_path):
    port = closed_port()
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}")
    proc = run_cli("status", "rp-train-1", kubeconfig=str(kubeconfig))
    assert proc.returncode == 2
    assert proc.stderr.startswith(
        f"error: cannot reach the Kubernetes API at http://127.0.0.1:{port}"
    )
    assert "refused" in proc.stderr.lower()
    assert proc.stderr.count("\n") == 1


# --- Against a stand-in API server (see the module docstring) -------------------------------


@pytest.fixture
def release(render):
    """The kind release's RayCluster and ConfigMap, as the chart renders them."""
    rendered = render(None, KIND_VALUES)
    return rendered.raycluster, rendered.one("ConfigMap", "rp-ray-pipeline-config")


@pytest.fixture
def api(release, tmp_path, monkeypatch):
    cluster, configmap = release
    fake = FakeCluster(rayclusters=[cluster], configmaps=[configmap])
    with FakeApiServer(fake, tmp_path) as kubeconfig:
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        yield fake


def created(fake: FakeCluster) -> dict:
    (job,) = fake.rayjobs.values()
    return job


def test_submit_creates_the_rayjob_and_exits_0_on_success(api, capsys, validate):
    api.statuses = statuses_then(
        ("Initializing", ""), ("Running", "RUNNING"), ("Complete", "SUCCEEDED")
    )
    code, out, err = cli(capsys, "submit", "--set", "train.epochs=1")
    assert code == 0, err
    job = created(api)
    assert validate(job) == []
    # Taken from the release's RayCluster: its image (kind: never pulled), labels, account.
    pod = job["spec"]["submitterPodTemplate"]["spec"]
    assert pod["containers"][0]["image"] == "ghcr.io/ray-pipeline/ray-pipeline:0.1.0"
    assert pod["containers"][0]["imagePullPolicy"] == "Never"
    assert pod["serviceAccountName"] == "rp-ray-pipeline"
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": "rp-ray-pipeline"}
    assert f"created RayJob ml/{job['metadata']['name']} on RayCluster rp-ray-pipeline" in err
    assert "Complete, Ray job SUCCEEDED" in err and "dashboard: http://" in err
    summary = json.loads(out.splitlines()[-1])
    assert summary["outcome"] == "succeeded" and summary["name"] == job["metadata"]["name"]


@pytest.mark.parametrize(
    "final, code",
    [
        (("Failed", "FAILED"), 1),
        (("Complete", "STOPPED"), 1),
        (("ValidationFailed", ""), 1),
        (("Running", "RUNNING"), 3),  # still running when --timeout passes
    ],
    ids=["failed", "stopped", "validation-failed", "timeout"],
)
def test_submit_exits_non_zero_unless_the_job_succeeded(api, capsys, final, code):
    api.statuses = statuses_then(("Initializing", ""), final)
    got, out, err = cli(capsys, "submit", "--timeout", "0.5")
    assert got == code, err
    assert json.loads(out.splitlines()[-1])["jobDeploymentStatus"] == final[0]


def test_status_reports_and_maps_the_exit_code(api, capsys):
    api.rayjobs[("ml", "rp-train-1")] = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "rp-train-1", "namespace": "ml"},
    }
    for final, expected in [
        (("Running", "RUNNING"), 3),
        (("Complete", "SUCCEEDED"), 0),
        (("Failed", "FAILED"), 1),
    ]:
        api.statuses, api._reads = statuses_then(final), {}
        code, out, err = cli(capsys, "status", "rp-train-1")
        assert code == expected, (final, err)
        assert json.loads(out)["jobStatus"] == final[1]
    api.statuses, api._reads = statuses_then(("Initializing", ""), ("Complete", "SUCCEEDED")), {}
    assert cli(capsys, "status", "rp-train-1", "--follow")[0] == 0
    code, _, err = cli(capsys, "status", "nope")
    assert code == 2 and err == "error: RayJob nope not found in namespace ml\n"


def test_submit_checks_overrides_against_the_clusters_config(api, capsys):
    code, _, err = cli(capsys, "submit", "--set", "train.epochs=0")
    assert code == 2 and "ConfigMap rp-ray-pipeline-config" in err and err.count("\n") == 1
    assert api.rayjobs == {}


@pytest.mark.parametrize(
    "setup, argv, message",
    [
        (
            lambda f: setattr(f, "kuberay", False),
            [],
            "the KubeRay CRDs (ray.io/v1) are not installed",
        ),
        (lambda f: None, ["-n", "nowhere"], "namespace nowhere not found"),
        (lambda f: f.rayclusters.clear(), [], "0 ray-pipeline RayClusters in namespace ml"),
        (lambda f: None, ["--release", "other"], "0 ray-pipeline RayClusters of release other"),
        (lambda f: None, ["--cluster", "gone"], "RayCluster gone not found in namespace ml"),
        (lambda f: setattr(f, "forbidden", True), [], "not allowed"),
    ],
    ids=["no-crd", "no-namespace", "no-cluster", "other-release", "named-cluster", "forbidden"],
)
def test_cluster_problems_are_one_line(api, capsys, setup, argv, message):
    setup(api)
    code, out, err = cli(capsys, "submit", *argv)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert api.rayjobs == {}


def test_kubeconfig_namespace_is_the_default(api, capsys, tmp_path, monkeypatch):
    """The context's namespace (ml in the stand-in kubeconfig) is used without -n."""
    api.statuses = statuses_then(("Complete", "SUCCEEDED"))
    assert cli(capsys, "submit", "--no-wait")[0] == 0
    assert created(api)["metadata"]["namespace"] == "ml"
    assert ("GET", "/api/v1/namespaces/ml") in api.requests


def test_submit_source_needs_no_ray(tmp_path):
    """submit and status run on a laptop with only the light dependencies (no Ray, no torch)."""
    code = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def guard(name, *a, **k):\n"
        "    if name.split('.')[0] in ('ray', 'torch', 'pyarrow'): raise ImportError(name)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
        "from pipeline.cli import main\n"
        "sys.exit(main(['submit', '--dry-run', '--release', 'rp']))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["kind"] == "RayJob"


def test_module_docs_name_the_files_they_mirror():
    assert Path(REPO / "k8s" / "argocd" / "rayjob-health.lua").is_file()
    assert "rayjob-health.lua" in (k8s.__doc__ or "")


def job_owned_cluster(render) -> dict:
    """The RayCluster KubeRay creates for the chart's ephemeral train RayJob, built as
    rayjob_controller.go: constructRayClusterForRayJob builds it: the RayJob's labels copied,
    plus ray.io/originated-from-cr-name, ray.io/originated-from-crd and the submission mode."""
    job = render({"rayJobs": {"mode": "ephemeral", "train": {"enabled": True}}}).one("RayJob")
    labels = {
        **job["metadata"]["labels"],
        "ray.io/originated-from-cr-name": job["metadata"]["name"],
        "ray.io/originated-from-crd": "RayJob",
        "ray.io/job-submission-mode": job["spec"]["submissionMode"],
    }
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {
            "name": f"{job['metadata']['name']}-x7k2q",
            "namespace": "ml",
            "labels": labels,
        },
        "spec": job["spec"]["rayClusterSpec"],
    }


def test_submit_ignores_a_running_ephemeral_jobs_cluster(api, render, capsys):
    """While an ephemeral job of the release runs, its cluster carries the release's labels
    (constructRayClusterForRayJob copies them): submit must still pick the long-lived one."""
    api.rayclusters.append(job_owned_cluster(render))
    api.statuses = statuses_then(("Complete", "SUCCEEDED"))
    code, _, err = cli(capsys, "submit", "--release", "rp", "--no-wait")
    assert code == 0, err
    assert created(api)["spec"]["clusterSelector"] == {"ray.io/cluster": "rp-ray-pipeline"}


def test_a_release_with_only_job_clusters_has_nothing_to_submit_to(api, render, capsys):
    api.rayclusters[:] = [job_owned_cluster(render)]
    code, _, err = cli(capsys, "submit", "--release", "rp")
    assert code == 2 and err.count("\n") == 1
    assert "0 ray-pipeline RayClusters of release rp" in err and "ephemeral" in err
    assert api.rayjobs == {}
