"""The config the Ray containers read is a valid pipeline config, and it points at the groups the
chart renders: one source of truth for placement, train sizing and the S3 endpoint."""

from __future__ import annotations

import copy
import math

import pytest


@pytest.fixture
def validate_config():
    config = pytest.importorskip("pipeline.config")
    return config.validate_config


def _node_labels(rendered, group: str) -> dict[str, str]:
    """The Ray labels a node of `group` carries: group-level labels plus ray.io/node-group,
    which KubeRay sets (RAY_NODE_TYPE_NAME) and Ray turns into a node label."""
    spec = rendered.worker_group(group)
    return {**spec.get("labels", {}), "ray.io/node-group": group}


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_config_is_valid_for_the_pipeline(ci, validate_config):
    validate_config(ci.pipeline_config, "helm ConfigMap")


@pytest.mark.parametrize("group_labels", [True, False], ids=["group-labels", "node-group"])
def test_selectors_point_at_the_rendered_groups(render, chart_dir, validate_config, group_labels):
    for path in sorted((chart_dir / "ci").glob("*-values.yaml")):
        if not group_labels and "autoscaling" in path.name:
            continue  # refused: the autoscaler cannot scale for ray.io/node-group
        rendered = render({"ray": {"groupLabels": group_labels}}, path)
        config = validate_config(rendered.pipeline_config, path.name)
        placement = rendered.values["placement"]
        for role, group in (("data", placement["dataGroup"]), ("train", placement["trainGroup"])):
            selector = getattr(config, role).placement.selector
            assert selector, (path.name, role)
            if group_labels:
                assert selector == rendered.worker_group(group)["labels"], (path.name, role)
            else:
                assert selector == {"ray.io/node-group": group}, (path.name, role)


def test_data_work_never_lands_on_gpu_nodes_and_train_work_only_on_the_train_group(ci):
    config = ci.pipeline_config
    groups = ci.values["workerGroups"]
    data_nodes = [
        g for g in groups if _matches(config["data"]["placement"]["selector"], _node_labels(ci, g))
    ]
    train_nodes = [
        g for g in groups if _matches(config["train"]["placement"]["selector"], _node_labels(ci, g))
    ]
    assert ci.values["placement"]["dataGroup"] in data_nodes
    assert all(not groups[g]["resources"].get("gpu") for g in data_nodes), data_nodes
    # train.num_workers is sized from this one group, so the selector must not reach others.
    assert train_nodes == [ci.values["placement"]["trainGroup"]]


def test_shared_labels_spread_data_work_over_cpu_groups(render, chart_dir):
    rendered = render(None, chart_dir / "ci" / "gpu-values.yaml")
    selector = rendered.pipeline_config["data"]["placement"]["selector"]
    matching = [
        g for g in rendered.values["workerGroups"] if _matches(selector, _node_labels(rendered, g))
    ]
    assert sorted(matching) == ["data", "highmem"]


def test_train_workers_fill_the_train_group(ci):
    train = ci.pipeline_config["train"]
    values = ci.values["workerGroups"][ci.values["placement"]["trainGroup"]]
    gpus_per_pod = values["resources"].get("gpu", 0)
    pods = values["maxReplicas"] if ci.values["autoscaling"]["enabled"] else values["replicas"]
    assert train["use_gpu"] is (gpus_per_pod > 0)
    if gpus_per_pod:
        assert train["resources_per_worker"]["GPU"] == 1
        assert train["num_workers"] * train["resources_per_worker"]["GPU"] == pods * gpus_per_pod
    else:
        assert "GPU" not in train["resources_per_worker"]
        assert train["num_workers"] == pods
    cpu = str(values["resources"]["cpu"])
    # Ray counts whole CPUs, rounded up from the container's CPU limit.
    cpus_per_pod = math.ceil(int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu))
    assert train["resources_per_worker"]["CPU"] * train["num_workers"] <= pods * cpus_per_pod


def test_s3_settings_and_defaults_come_from_values(render, validate_config):
    rendered = render(
        {
            "s3": {
                "endpoint": "https://s3.eu.example.com",
                "region": "eu-central-1",
                "bucket": "acme-data",
            },
            "pipelineConfig": {
                "data": {"validation_uri": "s3://other-bucket/val"},
                "s3": {"scheme": "https"},
            },
        }
    )
    config = validate_config(rendered.pipeline_config)
    assert config.s3.endpoint == "https://s3.eu.example.com"
    assert config.s3.region == "eu-central-1"
    assert config.s3.scheme == "https"
    assert config.data.uri == "s3://acme-data/digits" and config.data.train_uri is None
    assert config.data.validation_uri == "s3://other-bucket/val"
    assert config.storage.checkpoint_uri == "s3://acme-data/runs"


def test_user_settings_pass_through(render, validate_config):
    rendered = render({"pipelineConfig": {"train": {"epochs": 3, "model": "resnet18"}}})
    config = validate_config(copy.deepcopy(rendered.pipeline_config))
    assert (config.train.epochs, config.train.model) == (3, "resnet18")


def test_lease_ttl_and_queue_bound_pass_through(render, validate_config):
    own = {
        "pipelineConfig": {
            "storage": {"lease_ttl_s": 120},
            "train": {"placement": {"wait_s": 900}},
        }
    }
    config = validate_config(copy.deepcopy(render(own).pipeline_config))
    assert config.storage.lease_ttl_s == 120 and config.train.placement.wait_s == 900


def test_with_autoscaling_the_pipeline_waits_for_new_nodes(render, chart_dir, validate_config):
    autoscaling = chart_dir / "ci" / "autoscaling-values.yaml"
    config = validate_config(render(None, autoscaling).pipeline_config)
    assert config.data.placement.wait_s == config.train.placement.wait_s == 600
    own = {"pipelineConfig": {"train": {"placement": {"wait_s": 1800}}}}
    config = validate_config(render(own, autoscaling).pipeline_config)
    assert (config.data.placement.wait_s, config.train.placement.wait_s) == (600, 1800)
    # Without an autoscaler nothing would come: the pipeline's default (fail at once) stays.
    assert "wait_s" not in render().pipeline_config["train"]["placement"]


def test_every_ray_container_gets_the_pipelines_node_settings(ci):
    """RAY_NODE_ENV (pipeline/cluster.py) is what the embedded Ray and the test cluster run
    with; the chart gives every Ray container the same, so clusters behave as measured."""
    cluster = pytest.importorskip("pipeline.cluster")
    for name, template in ci.ray_pod_templates():
        for container in template["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            for key, value in cluster.RAY_NODE_ENV.items():
                assert env.get(key) == value, (name, container["name"], key)
