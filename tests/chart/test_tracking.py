"""Experiment tracking in the chart: tracking.* reaches the pipeline config and every Ray
container (the release's RayCluster and every RayJob's own cluster) as MLflow's and W&B's own
env vars, credentials only through the named existing Secret; bad tracking values are refused."""

from __future__ import annotations

import pytest

from pipeline.config import validate_config
from tests.chart.test_kuberay import BOTH, ray_containers

MLFLOW = {
    "tracking": {
        "mlflow": {
            "uri": "http://mlflow.mlops.svc:5000",
            "experiment": "digits",
            "logModel": True,
            "credentials": {"existingSecret": "mlflow-auth"},
        }
    }
}

CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def env_of(container) -> dict[str, dict]:
    return {e["name"]: e for e in container["env"]}


def test_off_by_default(render):
    rendered = render({"rayJobs": BOTH})
    assert "tracking" not in rendered.pipeline_config or rendered.pipeline_config["tracking"] == {}
    for _, container in ray_containers(rendered):
        assert not {n for n in env_of(container) if n.startswith(("MLFLOW_", "WANDB_"))}


@pytest.mark.parametrize("mode", ["cluster", "ephemeral"])
def test_every_ray_container_gets_the_mlflow_uri_and_credentials_from_the_secret(
    render, crds, mode
):
    rendered = render({**MLFLOW, "rayJobs": {"mode": mode, **BOTH}})
    containers = ray_containers(rendered)
    assert containers
    for name, container in containers:
        env = env_of(container)
        assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow.mlops.svc:5000", name
        for var in CREDENTIAL_ENV:
            ref = env[var]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "mlflow-auth", "key": var, "optional": True}, (name, var)
            assert "value" not in env[var]
    for job in rendered.all("RayJob"):
        assert crds.errors(job) == []


def test_the_pipeline_config_gets_the_tracking_section_the_pipeline_accepts(render):
    config = render(MLFLOW).pipeline_config
    assert config["tracking"] == {
        "mlflow": {"uri": "http://mlflow.mlops.svc:5000", "experiment": "digits", "log_model": True}
    }
    cfg = validate_config(config)
    assert cfg.tracking.mlflow.tracking_uri() == "http://mlflow.mlops.svc:5000"
    assert cfg.tracking.mlflow.log_model is True


def test_wandb_project_key_and_server(render):
    rendered = render(
        {
            "tracking": {
                "wandb": {
                    "project": "digits",
                    "entity": "ml-team",
                    "baseUrl": "https://wandb.example.com",
                    "credentials": {"existingSecret": "wandb", "apiKeyKey": "key"},
                }
            }
        }
    )
    assert rendered.pipeline_config["tracking"] == {
        "wandb": {"project": "digits", "entity": "ml-team"}
    }
    for name, container in ray_containers(rendered):
        env = env_of(container)
        assert env["WANDB_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "wandb", "key": "key"}
        assert env["WANDB_BASE_URL"]["value"] == "https://wandb.example.com", name
    assert "wandb" not in str(rendered.secret_values())


@pytest.mark.parametrize(
    "values, fragments",
    [
        ({"tracking": {"mlflow": {"uri": "mlflow:5000"}}}, ["tracking", "uri"]),
        ({"tracking": {"mlflow": {"password": "hunter2"}}}, ["password"]),
        ({"tracking": {"wandb": {"apiKey": "abc"}}}, ["apiKey"]),
        (
            {"pipelineConfig": {"tracking": {"mlflow": {"uri": "http://x:5000"}}}},
            ["/pipelineConfig", "tracking"],  # the schema: tracking.* is the one place
        ),
        (
            {"head": {"env": [{"name": "MLFLOW_TRACKING_URI", "value": "http://x:5000"}]}},
            ["head.env[0]", "MLFLOW_TRACKING_URI"],
        ),
        (
            {"head": {"env": [{"name": "WANDB_API_KEY", "value": "abc"}]}},
            ["head.env[0]", "WANDB_API_KEY"],
        ),
    ],
    ids=["uri-without-scheme", "inline-password", "inline-wandb-key", "in-pipelineConfig",
         "uri-in-env", "key-in-env"],
)  # fmt: skip
def test_bad_tracking_values_are_refused_naming_them(render_error, values, fragments):
    message = render_error(values)
    for fragment in fragments:
        assert fragment in message, message
