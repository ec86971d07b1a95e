"""The other ways to ship code: an image built FROM the product image (examples/Dockerfile),
and pip requirements in the job's runtime env. No Docker engine here: the Dockerfile is
checked by reading it and by running its own import check against the example's code."""

from __future__ import annotations

import re
import subprocess
import sys

import tomllib

from pipeline.config import load_config
from pipeline.runtime_env import read_pip
from tests.conftest import ROOT

DOCKERFILE = (ROOT / "examples" / "Dockerfile").read_text()


def test_the_example_image_builds_on_the_product_image_of_this_version():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    base = re.search(r"^ARG BASE=(\S+)$", DOCKERFILE, re.M).group(1)
    assert base == f"ghcr.io/ray-pipeline/ray-pipeline:{version}"
    assert re.search(r"^FROM \$\{BASE\}$", DOCKERFILE, re.M)
    assert re.search(r"^USER 1000:100$", DOCKERFILE, re.M)  # the chart's pods run as this
    for line in re.findall(r"^COPY (?:--\S+ )*(\S+) ", DOCKERFILE, re.M):
        assert (ROOT / line).exists(), line  # the build context is the repository root


def test_the_example_images_import_check_passes_with_the_code_where_it_copies_it():
    check = re.search(r'^RUN python -c "(.+)"$', DOCKERFILE, re.M).group(1)
    env_path = re.search(r"^ENV PYTHONPATH=(\S+)$", DOCKERFILE, re.M).group(1)
    copied = re.search(rf"^COPY (?:--\S+ )*(\S+) {env_path}/", DOCKERFILE, re.M)
    assert copied, "the code is copied onto the image's PYTHONPATH"
    code_parent = (ROOT / copied.group(1)).parent
    p = subprocess.run(
        [sys.executable, "-c", check],
        env={"PYTHONPATH": f"{code_parent}:{ROOT}"},
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr


def test_pip_requirements_reach_the_jobs_runtime_env(tmp_path):
    from pipeline.train.driver import _runtime_env

    reqs = tmp_path / "requirements.txt"
    reqs.write_text("# pinned\nscikit-learn==1.9.1  # for the metrics\n\nrich>=13\n")
    pip = read_pip(str(reqs))
    assert pip == ["scikit-learn==1.9.1", "rich>=13"]
    assert read_pip("rich>=13, tqdm") == ["rich>=13", "tqdm"]
    cfg = load_config(None, [f"storage.checkpoint_uri={tmp_path}/runs"])
    assert _runtime_env(cfg, None, pip) == {"pip": pip}
    code = tmp_path / "code"
    code.mkdir()
    # a local checkpoint store: Ray uploads the folder to the cluster itself
    assert _runtime_env(cfg, str(code), pip) == {"working_dir": str(code), "pip": pip}
    assert str(code) in sys.path  # and the driver imports from it too
    sys.path.remove(str(code))
