"""The image and the tooling around it, checked without docker: the Dockerfile builds on the Ray
that pyproject.toml pins, requirements are pinned and agree with the repository's pins, the
build context holds what the Dockerfile copies, `make image` builds both tags, the image's own
check passes on this environment, and the kind scripts and workflow hang together."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

from tests.k8s.conftest import CHART_DIR, REPO

DOCKERFILE = (REPO / "docker" / "Dockerfile").read_text()
PYPROJECT = (REPO / "pyproject.toml").read_text()
FLAVOURS = ("cpu", "gpu")


def dockerfile_arg(name: str) -> str:
    return re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE, re.M).group(1)


def ray_pin() -> str:
    """`2.60` from pyproject's `ray[...]==2.60.*`."""
    return re.search(r'"ray\[[^\]]*\]==([0-9.]+)\.\*"', PYPROJECT).group(1)


def requirements(flavour: str) -> dict[str, str]:
    """name -> the version after `==` in docker/requirements-<flavour>.txt."""
    pins = {}
    for line in (REPO / "docker" / f"requirements-{flavour}.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name, sep, version = line.partition("==")
            assert sep, f"requirements-{flavour}.txt: {line} is not pinned with =="
            pins[re.sub(r"\[.*\]", "", name).lower()] = version
    return pins


def test_base_image_is_the_ray_pyproject_pins():
    ray_version = dockerfile_arg("RAY_VERSION")
    assert ray_version.startswith(ray_pin() + "."), (ray_version, ray_pin())
    assert dockerfile_arg("PYTHON_TAG") == "py311"
    froms = re.findall(r"^FROM (\S+)(?: AS (\S+))?$", DOCKERFILE, re.M)
    bases = {alias: image for image, alias in froms}
    assert bases["base-cpu"] == "rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}"
    assert bases["base-gpu"] == "rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-gpu"
    assert froms[-1] == ("base-${FLAVOUR}", "")
    # The chart tells KubeRay the same version, and the tests run with it.
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert values["ray"]["version"] == ray_version
    ray = pytest.importorskip("ray")
    assert ray.__version__ == ray_version


def test_image_runs_as_the_ray_user_and_installs_a_wheel_without_replacing_ray():
    runtime = DOCKERFILE.rsplit("FROM base-${FLAVOUR}", 1)[1]
    assert re.search(r"^USER 1000:100$", runtime, re.M)  # the base's `ray`, as the chart expects
    assert not re.search(r"^USER (0|root)", runtime, re.M)
    assert "pip wheel" in DOCKERFILE and "--no-deps /tmp/dist/*.whl" in runtime
    assert "-c /tmp/base-packages.txt" in runtime  # the base's packages are constraints


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_requirements_are_pinned_and_agree_with_the_repository(flavour):
    pins = requirements(flavour)
    constraints = (REPO / "constraints.txt").read_text()
    torch = re.search(r"^torch==(\S+)$", constraints, re.M).group(1)
    assert pins["torch"].split("+")[0] == torch
    assert pins["torch"].endswith("+cpu") == (flavour == "cpu")
    assert pins["ray"] == dockerfile_arg("RAY_VERSION")
    text = (REPO / "docker" / f"requirements-{flavour}.txt").read_text()
    if flavour == "cpu":
        assert "--extra-index-url https://download.pytorch.org/whl/cpu" in text
    # Every dependency of the package is pinned here or named as the base image's.
    base = re.search(r"^# From the base image: (.+)$", text, re.M).group(1).split()
    deps = [
        re.match(r"[A-Za-z0-9_.-]+", d).group(0)
        for d in tomllib.loads(PYPROJECT)["project"]["dependencies"]
    ]
    assert len(deps) > 5
    for dep in deps:
        assert dep.lower() in pins or dep.lower() in base, dep


def test_build_context_holds_what_the_dockerfile_copies():
    rules = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*"  # an allowlist: nothing reaches the daemon unless named
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    sources = []
    for line in re.findall(r"^COPY (?!--from)(.+)$", DOCKERFILE, re.M):
        parts = [p for p in line.split() if not p.startswith("--")]
        sources += parts[:-1]
    assert sources
    for source in sources:
        top = source.replace("${FLAVOUR}", "cpu").rstrip("/").split("/")[0]
        assert top in allowed, source
        assert list(REPO.glob(source.replace("${FLAVOUR}", "*").rstrip("/"))), source


def test_image_check_passes_on_this_environment(capsys, monkeypatch):
    """docker/check_image.py, the Dockerfile's last step, on the test environment (CPU)."""
    pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("check_image", REPO / "docker" / "check_image.py")
    check_image = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_image)
    # `ray-pipeline --version` as the image runs it: from this environment's bin/.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    ray_version = dockerfile_arg("RAY_VERSION")
    assert check_image.main(["--flavour", "cpu", "--ray-version", ray_version]) == 0
    assert "every requirement of ray-pipeline met" in capsys.readouterr().out
    assert check_image.main(["--flavour", "gpu", "--ray-version", "0.0.1"]) == 1
    err = capsys.readouterr().err
    assert "CPU-only torch" in err and "built for 0.0.1" in err


def test_make_image_builds_both_tags(tmp_path):
    """`make image` with a stand-in `docker` on PATH that records what it is asked to build."""
    make = shutil.which("make") or pytest.skip("no make")
    fake = tmp_path / "docker"
    fake.write_text('#!/bin/sh\necho "$@" >> "$DOCKER_LOG"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "calls"
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "DOCKER_LOG": str(log)}
    subprocess.run(
        [make, "-s", "image"], cwd=REPO, env=env, check=True, capture_output=True, timeout=60
    )
    version = re.search(r'^version = "([^"]+)"$', PYPROJECT, re.M).group(1)
    calls = log.read_text().splitlines()
    build = "build --file docker/Dockerfile --build-arg FLAVOUR={} --tag {} ."
    assert calls == [
        build.format("cpu", f"ghcr.io/ray-pipeline/ray-pipeline:{version}"),
        build.format("gpu", f"ghcr.io/ray-pipeline/ray-pipeline:{version}-gpu"),
    ]
    # The tags are the ones the chart runs: image.repository, appVersion and gpuTagSuffix.
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert f"{values['image']['repository']}:{chart['appVersion']}" in calls[0]
    assert calls[1].endswith(f":{chart['appVersion']}{values['image']['gpuTagSuffix']} .")


def test_scripts_parse_and_pass_shellcheck():
    scripts = sorted((REPO / "scripts").glob("*.sh"))
    assert scripts
    for script in scripts:
        assert script.read_text().startswith("#!/usr/bin/env bash\n")
        assert "set -euo pipefail" in script.read_text()
        subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck"):
        proc = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout


def test_kind_e2e_script_does_what_the_issue_lists():
    script = (REPO / "scripts" / "kind-e2e.sh").read_text()
    for needle in (
        "trap cleanup EXIT",
        "kind create cluster",
        "--config k8s/kind/cluster.yaml",
        'KUBERAY_VERSION="1.7.0"',
        "https://ray-project.github.io/kuberay-helm/",
        "scripts/build-image.sh cpu",
        "kind load docker-image",
        "helm/ray-pipeline/ci/kind-values.yaml",
        "rayJobs.prepare.enabled=true",
        "rayJobs.train.enabled=true",
        "Complete/SUCCEEDED",
        'ray-pipeline" submit',
        "epoch-0002/state.pt",
        "kind delete cluster",
    ):
        assert needle in script, needle
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^kind-e2e:.*\n\tbash scripts/kind-e2e\.sh$", makefile, re.M)
    assert re.search(r"^image:.*\n\tbash scripts/build-image\.sh cpu gpu$", makefile, re.M)


def test_github_workflow_runs_make_kind_e2e():
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "e2e-kind.yml").read_text())
    (job,) = workflow["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest"
    steps = job["steps"]
    uses = [s.get("uses", "").split("@")[0] for s in steps]
    assert {"actions/checkout", "helm/kind-action", "azure/setup-helm"} <= set(uses)
    kind = steps[uses.index("helm/kind-action")]
    assert kind["with"]["install_only"] is True  # the script creates the cluster itself
    assert any(s.get("run", "").strip() == "make kind-e2e" for s in steps)
    triggers = workflow[True] if True in workflow else workflow["on"]  # YAML 1.1 reads `on` as True
    assert "pull_request" in triggers and "workflow_dispatch" in triggers
