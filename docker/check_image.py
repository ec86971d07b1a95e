"""The last step of docker/Dockerfile: fail the build unless the image is what the chart expects.

Checks that Ray is the version the Dockerfile was given, that every requirement of the
installed ray-pipeline (and of the Ray extras it asks for) is met, that torch is a CUDA build
exactly in the GPU flavour, and that `ray-pipeline --version` runs. Standard library and
`packaging` (a dependency of Ray) only.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import subprocess
import sys

from packaging.requirements import Requirement

DIST = "ray-pipeline"


def unmet(requirement: Requirement, extra: str = "", seen: set[str] | None = None) -> list[str]:
    """What is missing or of the wrong version for one requirement (and its extras)."""
    if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
        return []
    seen = set() if seen is None else seen
    if str(requirement) in seen:  # extras may name each other
        return []
    seen.add(str(requirement))
    try:
        installed = metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
        return [f"{requirement} is not installed"]
    problems = []
    if not requirement.specifier.contains(installed, prereleases=True):
        problems.append(f"{requirement.name} {installed} does not satisfy {requirement}")
    for wanted in sorted(requirement.extras):
        for text in metadata.requires(requirement.name) or []:
            inner = Requirement(text)
            if inner.marker and "extra" in str(inner.marker):
                problems += unmet(inner, wanted, seen)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavour", choices=["cpu", "gpu"], required=True)
    parser.add_argument("--ray-version", required=True)
    args = parser.parse_args(argv)

    problems: list[str] = []
    ray_version = metadata.version("ray")
    if ray_version != args.ray_version:
        problems.append(f"Ray is {ray_version}, the image is built for {args.ray_version}")
    for text in metadata.requires(DIST) or []:
        problems += unmet(Requirement(text))

    import torch

    cuda = torch.version.cuda
    if args.flavour == "cpu" and cuda:
        problems.append(f"the CPU image has a CUDA build of torch ({torch.__version__})")
    if args.flavour == "gpu" and not cuda:
        problems.append(f"the GPU image has a CPU-only torch ({torch.__version__})")

    cli = subprocess.run(["ray-pipeline", "--version"], capture_output=True, text=True)
    if cli.returncode != 0:
        problems.append(f"`ray-pipeline --version` failed: {cli.stderr.strip()[-500:]}")

    for problem in problems:
        print(f"image check: {problem}", file=sys.stderr)
    if not problems:
        print(
            f"image check: {cli.stdout.strip()}, Ray {ray_version}, torch {torch.__version__} "
            f"({'CUDA ' + cuda if cuda else 'CPU'}), every requirement of {DIST} met"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
