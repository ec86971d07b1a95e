"""What a user reads: NOTES.txt tells them how to reach the dashboard, get the token and submit,
and the chart README documents every value."""

from __future__ import annotations

import json
import re

import yaml

# Values whose content is free-form (maps and lists passed through): documented as one row.
FREE_FORM = {
    "nodeSelector", "tolerations", "affinity", "podLabels", "podAnnotations", "env",
    "rayStartParams", "rayLabels", "annotations", "imagePullSecrets", "operatorFrom",
    "clientFrom", "metricsFrom", "podSecurityContext", "containerSecurityContext", "nodeEnv",
}  # fmt: skip


def _value_paths(node, path=()):
    if path and (path[-1] in FREE_FORM or path[:1] == ("pipelineConfig",) and len(path) == 2):
        yield ".".join(path)
    elif path[-1:] == ("resources",) and path[0] in ("autoscaling", "minio"):
        yield ".".join(path)  # a Kubernetes ResourceRequirements
    elif isinstance(node, dict) and node:
        for key, child in node.items():
            child_path = (*path, key)
            if path == ("workerGroups",):
                child_path = ("workerGroups", "<name>")
            yield from _value_paths(child, child_path)
    else:
        yield ".".join(path)


def _schema_has(schema: dict, path: str) -> bool:
    node = schema
    for part in path.split("."):
        if "$ref" in node:
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
        if part == "<name>":
            node = node.get("additionalProperties")
        else:
            node = node.get("properties", {}).get(part)
        if not isinstance(node, dict):
            return False
    return True


def test_readme_documents_every_value(chart_dir):
    values = yaml.safe_load((chart_dir / "values.yaml").read_text())
    schema = json.loads((chart_dir / "values.schema.json").read_text())
    readme = (chart_dir / "README.md").read_text()
    table = readme.split("\n## Values\n", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([^`]+)` \|", table, re.M))
    assert sorted(set(_value_paths(values)) - documented) == []
    assert sorted(p for p in documented if not _schema_has(schema, p)) == []


def test_readme_lists_every_ci_file(chart_dir):
    readme = (chart_dir / "README.md").read_text()
    for path in sorted((chart_dir / "ci").glob("*-values.yaml")):
        assert f"`ci/{path.name}`" in readme


def test_notes_explain_dashboard_token_and_submission(render_notes):
    notes = render_notes()
    assert "kubectl -n ml port-forward svc/rp-ray-pipeline-head-svc 8265:8265" in notes
    assert "export RAY_AUTH_MODE=token" in notes
    assert "get secret rp-ray-pipeline -o jsonpath='{.data.auth_token}'" in notes
    assert "ray job submit --address http://127.0.0.1:8265 -- ray-pipeline" in notes
    assert '"ray-pipeline.io/role":"train"' in notes


def test_notes_follow_the_values(render_notes, chart_dir):
    own_token = render_notes({"ray": {"auth": {"existingSecret": "team-token"}}})
    assert "get secret team-token" in own_token
    no_auth = render_notes({"ray": {"auth": {"enabled": False}}})
    assert "WARNING: Ray token authentication is OFF" in no_auth
    local = render_notes(None, chart_dir / "ci" / "kind-values.yaml")
    assert "WARNING: Secret rp-ray-pipeline-s3 was created from values" in local
    assert "http://rp-ray-pipeline-minio.ml.svc:9000" in local
    assert "WARNING" not in render_notes()
