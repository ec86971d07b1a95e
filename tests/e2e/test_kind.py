"""The product end to end on kind: `make kind-e2e` (scripts/kind-e2e.sh) creates a cluster,
installs KubeRay 1.7.0 and the chart with MinIO, builds and loads the image, runs the prepare
and train RayJobs and `ray-pipeline submit` to SUCCEEDED, finds the checkpoints in MinIO and
tears down. It runs where docker (with a running engine), kind, helm and kubectl are present
(GitHub Actions: .github/workflows/e2e-kind.yml) and is skipped, naming what is missing, where
they are not."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("docker", "kind", "helm", "kubectl")


def missing_tools() -> list[str]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if "docker" not in missing:
        engine = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
        if engine.returncode != 0:
            missing.append("a running docker engine")
    return missing


@pytest.mark.slow
def test_make_kind_e2e():
    missing = missing_tools()
    if missing:
        pytest.skip(f"make kind-e2e needs {', '.join(missing)}, not found here")
    make = shutil.which("make") or pytest.skip("make kind-e2e needs make, not found here")
    proc = subprocess.run([make, "kind-e2e"], cwd=ROOT, timeout=3600, check=False)
    assert proc.returncode == 0, "make kind-e2e failed; its output above says where"
