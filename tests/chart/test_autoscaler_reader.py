"""Ray's own reader of a RayCluster (the autoscaler's `autoscaling_config`) sees the groups the
values describe: a head with 0 CPUs, a CPU-only data group, a train group with its GPUs,
min/max as in values, and the group labels the pipeline's selectors point at."""

from __future__ import annotations

import copy
import math
import re

import pytest

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}


def memory_bytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(quantity)).groups()
    return math.ceil(float(number) * {**_BINARY, **_DECIMAL}[unit])


def cpu_count(quantity) -> int:
    q = str(quantity)
    return math.ceil(int(q[:-1]) / 1000) if q.endswith("m") else math.ceil(float(q))


@pytest.fixture
def node_types(ci):
    reader = pytest.importorskip("ray.autoscaler._private.kuberay.autoscaling_config")
    cluster = copy.deepcopy(ci.raycluster)
    return reader._derive_autoscaling_config_from_ray_cr(cluster)["available_node_types"]


def test_reader_sees_every_group(ci, node_types):
    assert set(node_types) == {"headgroup", *ci.values["workerGroups"]}


def test_head_offers_no_cpus(node_types):
    head = node_types["headgroup"]
    assert head["resources"]["CPU"] == 0
    assert "GPU" not in head["resources"]
    assert head["min_workers"] == head["max_workers"] == 0


def test_groups_offer_what_values_ask_for(ci, node_types):
    for name, values in ci.values["workerGroups"].items():
        node = node_types[name]
        assert node["min_workers"] == values["minReplicas"], name
        assert node["max_workers"] == values["maxReplicas"], name
        assert node["resources"]["CPU"] == cpu_count(values["resources"]["cpu"]), name
        assert node["resources"]["memory"] == memory_bytes(values["resources"]["memory"]), name
        gpus = values["resources"].get("gpu", 0)
        if gpus:
            assert node["resources"]["GPU"] == gpus, name
        else:
            assert "GPU" not in node["resources"], name


def test_data_group_is_cpu_only_and_train_group_has_its_gpus(ci, node_types):
    data = node_types[ci.values["placement"]["dataGroup"]]["resources"]
    assert data["CPU"] > 0 and "GPU" not in data
    train_values = ci.values["workerGroups"][ci.values["placement"]["trainGroup"]]
    train = node_types[ci.values["placement"]["trainGroup"]]["resources"]
    assert train.get("GPU", 0) == train_values["resources"].get("gpu", 0)


def test_group_labels_are_what_the_reader_sees(ci, node_types):
    for name, values in ci.values["workerGroups"].items():
        expected = values.get("rayLabels", {}) if ci.values["ray"]["groupLabels"] else {}
        assert node_types[name]["labels"] == expected, name


def test_autoscaler_idle_timeouts(render, chart_dir):
    reader = pytest.importorskip("ray.autoscaler._private.kuberay.autoscaling_config")
    rendered = render(None, chart_dir / "ci" / "autoscaling-values.yaml")
    config = reader._derive_autoscaling_config_from_ray_cr(copy.deepcopy(rendered.raycluster))
    assert config["idle_timeout_minutes"] == 2.0
    assert config["available_node_types"]["train"]["idle_timeout_s"] == 600.0
    assert config["available_node_types"]["train"]["min_workers"] == 0
