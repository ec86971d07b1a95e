"""Render helm/ray-pipeline with Helm's own engine, once per set of values, for tests/chart.

The engine is the `helm` binary when it is on PATH, else helm-python-sdk (Helm v4's Go engine
behind a C ABI). Both validate values.schema.json and run the templates' `fail` checks, so a
rejected value surfaces as Helm's message. Tests get everything through fixtures (`render`,
`render_error`, `render_notes`, `ci`, `crds`), so nothing here is imported by name.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "helm" / "ray-pipeline"
CI_FILES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
RELEASE = "rp"
NAMESPACE = "ml"
# The oldest Kubernetes the chart is checked against (kubernetes-validate schemas).
KUBE_VERSION = "1.33.0"
CONFIG_PATH = "/etc/ray-pipeline/config.yaml"

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class RenderError(Exception):
    """Helm refused the values (schema) or a template failed; str() is Helm's message."""


def helm_binary() -> str | None:
    return shutil.which("helm")


def load_values_file(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def merged_values(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The chart's defaults coalesced with overrides, as Helm does it (maps merge, null deletes)."""

    def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(base)
        for key, value in top.items():
            if value is None:
                out.pop(key, None)
            elif isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
        return out

    return merge(load_values_file(CHART_DIR / "values.yaml"), overrides or {})


@dataclass
class Rendered:
    """The objects a release would get, and the values (chart defaults + overrides) behind them."""

    values: dict[str, Any]
    objects: list[dict[str, Any]]
    release: str = RELEASE
    namespace: str = NAMESPACE

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
        return found[0]

    @property
    def raycluster(self) -> dict[str, Any]:
        return self.one("RayCluster")

    @property
    def pipeline_config(self) -> dict[str, Any]:
        """The config file the Ray containers read (parsed from the ConfigMap they mount)."""
        name = self.raycluster["spec"]["headGroupSpec"]["template"]["spec"]["volumes"][0]
        cm = self.one("ConfigMap", name["configMap"]["name"])
        return yaml.safe_load(cm["data"]["config.yaml"])

    def worker_group(self, name: str) -> dict[str, Any]:
        groups = {g["groupName"]: g for g in self.raycluster["spec"]["workerGroupSpecs"]}
        return groups[name]

    def ray_pod_templates(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(group name, pod template) for the head ("headgroup") and every worker group."""
        spec = self.raycluster["spec"]
        yield "headgroup", spec["headGroupSpec"]["template"]
        for group in spec["workerGroupSpecs"]:
            yield group["groupName"], group["template"]

    def pod_specs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every pod spec the release creates: Ray groups, Deployments, Jobs."""
        for group, template in self.ray_pod_templates():
            yield f"RayCluster/{group}", template["spec"]
        for kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            for obj in self.all(kind):
                yield f"{kind}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"]

    def secret_values(self) -> set[str]:
        """Every value stored in a rendered Secret (decoded)."""
        found: set[str] = set()
        for secret in self.all("Secret"):
            for value in (secret.get("data") or {}).values():
                found.add(base64.b64decode(value).decode())
            found.update((secret.get("stringData") or {}).values())
        return found


def _parse(manifests: dict[str, str], values: dict[str, Any]) -> Rendered:
    objects: list[dict[str, Any]] = []
    for path, text in sorted(manifests.items()):
        if not path.endswith("NOTES.txt"):
            objects.extend(doc for doc in yaml.load_all(text, Loader=_YAML_LOADER) if doc)
    return Rendered(values=values, objects=objects)


@functools.lru_cache(maxsize=1)
def _sdk_chart():
    import helm_python

    helm_python.disable_logging()
    return helm_python.Chart.load(str(CHART_DIR))


def _render_sdk(values: dict[str, Any]) -> dict[str, str]:
    import helm_python

    try:
        return _sdk_chart().render(values, name=RELEASE, namespace=NAMESPACE)
    except (helm_python.HelmValuesError, helm_python.HelmRenderError) as e:
        raise RenderError(str(e)) from None


def _render_binary(helm: str, values: dict[str, Any]) -> dict[str, str]:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(values, f)
    try:
        proc = subprocess.run(
            [helm, "template", RELEASE, str(CHART_DIR), "--namespace", NAMESPACE, "-f", f.name],
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        os.unlink(f.name)
    if proc.returncode != 0:
        raise RenderError(proc.stderr)
    return {f"doc-{i}.yaml": doc for i, doc in enumerate(proc.stdout.split("\n---"))}


@functools.cache
def _render_cached(values_json: str) -> Rendered:
    values = json.loads(values_json)
    helm = helm_binary()
    manifests = _render_binary(helm, values) if helm else _render_sdk(values)
    return _parse(manifests, merged_values(values))


def _render(values: dict[str, Any] | None = None, *files: Path) -> Rendered:
    """Render the chart with values files (in order) and then `values` on top, cached."""
    combined: dict[str, Any] = {}
    for path in files:
        combined = merged_values_onto(combined, load_values_file(path))
    combined = merged_values_onto(combined, values or {})
    return _render_cached(json.dumps(combined, sort_keys=True))


def merged_values_onto(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged_values_onto(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _render_error(values: dict[str, Any], *files: Path) -> str:
    """Helm's message for values the chart must refuse (fails the test if it renders)."""
    try:
        _render(values, *files)
    except RenderError as e:
        return str(e)
    pytest.fail(f"the chart rendered values it should refuse: {values}")


def _render_notes(values: dict[str, Any] | None = None, *files: Path) -> str:
    """NOTES.txt as `helm install` prints it (`helm template` does not render it)."""
    pytest.importorskip("helm_python", reason="NOTES.txt is rendered with helm-python-sdk")
    combined: dict[str, Any] = {}
    for path in files:
        combined = merged_values_onto(combined, load_values_file(path))
    manifests = _render_sdk(merged_values_onto(combined, values or {}))
    return next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))


@pytest.fixture(scope="session")
def render():
    """render(values=None, *values_files) -> Rendered; cached per distinct values."""
    return _render


@pytest.fixture(scope="session")
def render_error():
    """render_error(values, *values_files) -> Helm's error text; fails if the chart renders."""
    return _render_error


@pytest.fixture(scope="session")
def render_notes():
    """render_notes(values=None, *values_files) -> NOTES.txt as `helm install` prints it."""
    return _render_notes


def _lint(values: dict[str, Any]) -> list[str]:
    """Helm's lint findings of warning or error severity for these values."""
    helm = helm_binary()
    if helm:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump(values, f)
        try:
            proc = subprocess.run(
                [helm, "lint", str(CHART_DIR), "--namespace", NAMESPACE, "-f", f.name],
                capture_output=True,
                text=True,
                check=False,
            )
        finally:
            os.unlink(f.name)
        out = proc.stdout + proc.stderr
        found = [line for line in out.splitlines() if "[ERROR]" in line or "[WARNING]" in line]
        if proc.returncode != 0 and not found:
            found = [out]
        return found
    import helm_python

    helm_python.disable_logging()
    report = helm_python.lint(str(CHART_DIR), values, namespace=NAMESPACE)
    return [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2]


@pytest.fixture(scope="session")
def lint():
    """lint(values) -> Helm lint warnings and errors (empty when clean)."""
    return _lint


@pytest.fixture(scope="session")
def chart_dir() -> Path:
    return CHART_DIR


@pytest.fixture(params=CI_FILES, ids=lambda p: p.stem)
def ci_file(request) -> Path:
    return request.param


@pytest.fixture
def ci(ci_file: Path) -> Rendered:
    """The release each ci/ values file describes."""
    return _render(None, ci_file)


# --- KubeRay CRDs --------------------------------------------------------------------------


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI v3 CRD schema as JSON Schema where unknown fields are errors.

    The API server prunes fields its structural schema does not declare, silently; here a
    node with `properties` and neither `additionalProperties` nor
    `x-kubernetes-preserve-unknown-fields` refuses them instead.
    """
    s = dict(schema)
    preserve = bool(s.get("x-kubernetes-preserve-unknown-fields"))
    if s.get("x-kubernetes-embedded-resource"):
        props = dict(s.get("properties", {}))
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
        s["properties"] = props
    if "properties" in s:
        s["properties"] = {k: _strict(v) for k, v in s["properties"].items()}
        if "additionalProperties" not in s and not preserve:
            s["additionalProperties"] = False
    if isinstance(s.get("additionalProperties"), dict):
        s["additionalProperties"] = _strict(s["additionalProperties"])
    if isinstance(s.get("items"), dict):
        s["items"] = _strict(s["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in s:
            s[key] = [_strict(x) for x in s[key]]
    if s.get("x-kubernetes-int-or-string"):
        s.pop("type", None)
        s.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if s.get("nullable") and "type" in s:
        s["type"] = [s["type"], "null"]
    return s


class CRDValidator:
    """Strict validation of custom resources against KubeRay's v1 CRD schemas.

    Not covered: CEL rules (x-kubernetes-validations), which the API server evaluates.
    """

    FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}

    def __init__(self, crd_dir: Path):
        self.crd_dir = crd_dir
        self._validators: dict[str, Any] = {}

    def _validator(self, kind: str):
        if kind not in self._validators:
            import jsonschema

            crd = yaml.load((self.crd_dir / self.FILES[kind]).read_text(), Loader=_YAML_LOADER)
            assert crd["spec"]["names"]["kind"] == kind
            (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
            schema = _strict(v1["schema"]["openAPIV3Schema"])
            self._validators[kind] = jsonschema.Draft7Validator(schema)
        return self._validators[kind]

    def errors(self, obj: dict[str, Any]) -> list[str]:
        assert obj["apiVersion"] == "ray.io/v1", obj["apiVersion"]
        validator = self._validator(obj["kind"])
        return [
            f"{obj['kind']}/{obj['metadata']['name']}: "
            f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
            for e in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.path)))
        ]


@pytest.fixture(scope="session")
def crds() -> CRDValidator:
    raw = os.environ.get("KUBERAY_CRD_DIR")
    if not raw:
        pytest.skip("KUBERAY_CRD_DIR is unset: point it at KubeRay v1 CRDs (`make crds`)")
    path = Path(raw)
    if not path.is_absolute():
        path = (REPO / path).resolve()
    missing = [f for f in CRDValidator.FILES.values() if not (path / f).is_file()]
    if missing:
        pytest.skip(f"KUBERAY_CRD_DIR={raw}: {', '.join(missing)} not found (`make crds`)")
    return CRDValidator(path)


# --- Prometheus Operator's PodMonitor ----------------------------------------------------------


class PodMonitorValidator:
    """Strict validation of a PodMonitor against the Prometheus Operator's CRD schema.

    No package ships the CRD's YAML; cloudcoil-models-prometheus-operator (a dev dependency)
    ships Pydantic models generated from the CRD's openAPIV3Schema, with its field names, types,
    enums and patterns. Their JSON Schema is made strict here as `_strict` does for KubeRay's:
    every object refuses fields it does not declare (the API server would prune them).
    """

    def __init__(self):
        import jsonschema
        from cloudcoil.models.prometheus_operator.v1 import PodMonitor

        schema = PodMonitor.model_json_schema(by_alias=True)
        for node in [schema, *schema.get("$defs", {}).values()]:
            if "properties" in node:
                node.setdefault("additionalProperties", False)
        self._validator = jsonschema.Draft202012Validator(schema)

    def errors(self, obj: dict[str, Any]) -> list[str]:
        assert (obj["apiVersion"], obj["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
        return [
            f"PodMonitor/{obj['metadata']['name']}: "
            f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
            for e in sorted(self._validator.iter_errors(obj), key=lambda e: list(map(str, e.path)))
        ]


@pytest.fixture(scope="session")
def podmonitor_crd() -> PodMonitorValidator:
    return PodMonitorValidator()
