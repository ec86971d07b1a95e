# ray-pipeline: `make demo` runs the main job on the embedded default, `make test` the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt
KUBERAY_VERSION ?= v1.7.0
KUBERAY_CRD_DIR ?= $(CURDIR)/.crds
export KUBERAY_CRD_DIR

.PHONY: setup demo test test-fast lint crds bench clean

$(BIN)/ray-pipeline: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q --upgrade pip
	$(PIP) -e '.[dev]'
	@touch $@

setup: $(BIN)/ray-pipeline ## create .venv and install the pipeline with dev tools

demo: setup ## prepare digits locally, train a small CNN on a local Ray, print the summary
	$(BIN)/ray-pipeline demo

test: setup ## the whole suite (unit, chart, integration on a local multi-node Ray + S3)
	$(BIN)/python -m pytest -q

test-fast: setup ## everything but the tests that start a Ray cluster
	$(BIN)/python -m pytest -q -m "not cluster"

lint: setup
	$(BIN)/ruff check pipeline tests

crds: ## download KubeRay's CRDs (the chart tests validate against them) into .crds/
	mkdir -p .crds
	for f in ray.io_rayclusters.yaml ray.io_rayjobs.yaml; do \
	  curl -fsSL -o .crds/$$f https://raw.githubusercontent.com/ray-project/kuberay/$(KUBERAY_VERSION)/ray-operator/config/crd/bases/$$f; \
	done

clean:
	rm -rf $(VENV) demo-output .pytest_cache

# --- Images and a local run on kind (need docker; kind-e2e also kind, helm, kubectl) ---------
.PHONY: image kind-e2e

image: ## build ghcr.io/ray-pipeline/ray-pipeline:<version> (CPU) and :<version>-gpu (docker/Dockerfile)
	bash scripts/build-image.sh cpu gpu

kind-e2e: ## kind cluster, KubeRay 1.7.0, the chart with MinIO; prepare + train RayJobs to SUCCEEDED; tear down
	bash scripts/kind-e2e.sh
