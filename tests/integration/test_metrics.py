"""The pipeline's figures on each Ray node's Prometheus endpoint, scraped during a real run on
the local multi-node cluster, as the chart's PodMonitor would scrape the Ray pods."""

from __future__ import annotations

import re
import time
import urllib.request

import pytest

from tests.conftest import write_config
from tests.faults.conftest import TrainRun
from tests.integration.conftest import BUCKET, cluster_config

pytestmark = pytest.mark.cluster

RUN = "metrics-it"
SERIES = re.compile(r"^(ray_pipeline_\w+)\{([^}]*)\} ([0-9.eE+-]+)$")


def metrics_ports(address: str) -> dict[str, int]:
    import ray

    ray.init(address=address)
    try:
        return {
            (n.get("Labels") or {}).get("ray.io/node-group"): n["MetricsExportPort"]
            for n in ray.nodes()
            if n.get("Alive")
        }
    finally:
        ray.shutdown()


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """Every ray_pipeline_* series of one node: (name, labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = SERIES.match(line)
        if m:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


def values(seen: dict, name: str, **labels: str) -> list[float]:
    want = set(labels.items())
    return [v for (n, ls), v in seen.items() if n == name and want <= set(ls)]


def test_a_run_exports_its_figures_to_prometheus(ray_cluster, s3, dataset, tmp_path):
    ports = metrics_ports(ray_cluster.address)
    tree = cluster_config(s3, train={"epochs": 6}, storage={"run_name": RUN})
    run = TrainRun(ray_cluster, write_config(tmp_path / "m.yaml", tree), s3, RUN, bucket=BUCKET)
    run.start()
    seen = {"train": {}, "data": {}}
    while run.proc.poll() is None:
        for group in seen:
            try:
                seen[group].update(scrape(ports[group]))
            except OSError:
                pass  # the agent not up yet
        time.sleep(1)
    r = run.wait()
    assert r.returncode == 0, r.output[-4000:]
    train, data = seen["train"], seen["data"]
    run_tag = {"run": RUN}
    epochs = values(train, "ray_pipeline_epoch", **run_tag)
    assert epochs and 1 <= max(epochs) <= 6, train
    assert max(values(train, "ray_pipeline_train_rows_per_second", **run_tag)) > 0
    waits = values(train, "ray_pipeline_data_wait_fraction", **run_tag)
    assert waits and all(0 <= w <= 1 for w in waits)
    acc = values(train, "ray_pipeline_validation_metric", metric="val_accuracy", **run_tag)
    assert acc and all(0 <= a <= 1 for a in acc)
    assert values(train, "ray_pipeline_train_loss", **run_tag)
    assert max(values(train, "ray_pipeline_train_rows_total", **run_tag)) >= 1000
    # preprocessing ran on the data node, and its counter is there
    rows = values(data, "ray_pipeline_preprocessed_rows_total", split="train", **run_tag)
    assert rows and max(rows) >= dataset["splits"]["train"]["rows"]
