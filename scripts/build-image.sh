#!/usr/bin/env bash
# Build the product image with docker: scripts/build-image.sh [cpu] [gpu]  (default: both).
#   cpu: $IMAGE:$TAG      from rayproject/ray:<ray>-py311, CPU torch
#   gpu: $IMAGE:$TAG-gpu  from rayproject/ray:<ray>-py311-gpu, CUDA torch (the chart's
#        image.gpuTagSuffix)
# IMAGE defaults to the chart's image.repository, TAG to the package version (the chart's
# appVersion). `make image` runs this for both flavours.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${IMAGE:-ghcr.io/ray-pipeline/ray-pipeline}"
TAG="${TAG:-$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)}"
[ -n "$TAG" ] || { echo "error: no version in pyproject.toml; set TAG" >&2; exit 2; }
command -v docker >/dev/null || { echo "error: docker is not installed" >&2; exit 2; }

flavours=("$@")
[ ${#flavours[@]} -gt 0 ] || flavours=(cpu gpu)
for flavour in "${flavours[@]}"; do
  case "$flavour" in
    cpu) tag="$IMAGE:$TAG" ;;
    gpu) tag="$IMAGE:$TAG-gpu" ;;
    *) echo "error: unknown flavour '$flavour' (cpu or gpu)" >&2; exit 2 ;;
  esac
  echo "==> building $tag ($flavour)" >&2
  DOCKER_BUILDKIT=1 docker build --file docker/Dockerfile --build-arg "FLAVOUR=$flavour" \
    --tag "$tag" .
done
