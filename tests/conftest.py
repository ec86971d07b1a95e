"""Shared fixtures: a real S3 endpoint (moto's server) and a local multi-node Ray cluster
built like the Helm chart's RayCluster (a head that takes no tasks, a `data` node, a
`train` node), and a helper that runs the real CLI in a subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# moto accepts any credentials; Ray workers inherit these from the test process.
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3:
    endpoint: str
    server: object

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def keys(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """Every object under ``prefix`` with its ETag."""
        out = {}
        for page in (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        ):
            for o in page.get("Contents", []):
                out[o["Key"]] = o["ETag"]
        return out

    def make_bucket(self, name: str) -> str:
        with contextlib.suppress(Exception):
            self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3():
    """moto's S3 server on 127.0.0.1 and a free port: a real HTTP S3 endpoint."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    os.environ.update(FAKE_AWS)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    _S3_ENDPOINT.append(f"http://127.0.0.1:{port}")
    yield S3(endpoint=f"http://127.0.0.1:{port}", server=server)
    server.stop()


@contextlib.contextmanager
def _env(key: str, value: str):
    """``key=value`` in this process's environment (what processes started now inherit)."""
    old = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[key]
        else:
            os.environ[key] = old


def _node_group(name: str):
    """KubeRay sets RAY_NODE_TYPE_NAME in each pod; Ray turns it into ray.io/node-group."""
    return _env("RAY_NODE_TYPE_NAME", name)


@dataclass
class RayCluster:
    address: str
    cluster: object
    node_ids: dict[str, str]  # group name -> node id
    nodes: dict[str, object]  # worker group name -> cluster_utils node
    s3_endpoint: str

    def replace_node(self, group: str) -> str:
        """Remove the group's node (as when its pod is deleted) and add a new one in its place."""

        self.cluster.remove_node(self.nodes[group])
        with _node_group(group), _env("AWS_ENDPOINT_URL_S3", self.s3_endpoint):
            self.nodes[group] = self.cluster.add_node(num_cpus=1, object_store_memory=200 << 20)
        self.node_ids[group] = self.nodes[group].node_id
        return self.node_ids[group]


@pytest.fixture(scope="session")
def ray_cluster(s3):
    """head (0 CPUs, group headgroup), one `data` node, one `train` node; the chart's shape.

    Depends on ``s3`` so every Ray process inherits the S3 credentials."""
    import ray
    from ray.cluster_utils import Cluster

    from pipeline.cluster import RAY_NODE_ENV

    os.environ.update(RAY_NODE_ENV)  # what the chart sets on every Ray pod
    # metrics reach each node's Prometheus endpoint every 2 s instead of 10 (tests/integration/
    # test_metrics.py scrapes them during a run of a few seconds)
    os.environ.setdefault("RAY_metrics_report_interval_ms", "2000")
    # The chart sets the S3 endpoint on every Ray container: Ray's runtime-env agent downloads
    # an s3:// working_dir with boto3, which reads it. Only the nodes get it, not this process.
    with _node_group("headgroup"), _env("AWS_ENDPOINT_URL_S3", s3.endpoint):
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = {}
    for group in ("data", "train"):
        with _node_group(group), _env("AWS_ENDPOINT_URL_S3", s3.endpoint):
            nodes[group] = cluster.add_node(num_cpus=1, object_store_memory=200 << 20)
    ray.init(address=cluster.address)
    ids = {}
    for n in ray.nodes():
        group = (n.get("Labels") or {}).get("ray.io/node-group")
        if group:
            ids[group] = n["NodeID"]
    ray.shutdown()
    assert set(ids) == {"headgroup", "data", "train"}, ids
    yield RayCluster(
        address=cluster.address, cluster=cluster, node_ids=ids, nodes=nodes, s3_endpoint=s3.endpoint
    )
    cluster.shutdown()


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def last_line(self) -> dict:
        """The last line of stdout: one JSON object (a run's compact summary)."""
        lines = [line for line in self.stdout.splitlines() if line.strip()]
        assert lines, f"no stdout; stderr:\n{self.stderr[-3000:]}"
        return json.loads(lines[-1])

    def summary(self) -> dict:
        """The run's whole summary: summary.json (history included), which the last line
        points at, with the last line's figures; the last line alone when it points nowhere."""
        compact = self.last_line()
        uri = compact.get("summary_uri")
        if not uri:
            return compact
        return {**read_uri(uri), **compact}


_S3_ENDPOINT: list[str] = []  # moto's, once the s3 fixture runs


def read_uri(uri: str) -> dict:
    """A JSON file at a local path or an s3:// URI on the test's S3 endpoint."""
    if uri.startswith("s3://"):
        import boto3

        bucket, key = uri[len("s3://") :].split("/", 1)
        client = boto3.client("s3", endpoint_url=_S3_ENDPOINT[-1], region_name="us-east-1")
        return json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    return json.loads(Path(uri).read_text())


def run_cli(*args: str, timeout: float = 600, env: dict | None = None) -> CliResult:
    """Run ``ray-pipeline ARGS`` as a user would, in a fresh process."""
    full_env = {**os.environ, **FAKE_AWS, "PYTHONUNBUFFERED": "1", **(env or {})}
    start = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=ROOT,
    )
    return CliResult(p.returncode, p.stdout, p.stderr, time.monotonic() - start)


def start_cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    """``ray-pipeline ARGS`` in a process of its own, not waited for (``finish_cli``)."""
    full_env = {**os.environ, **FAKE_AWS, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd=ROOT,
    )


def finish_cli(p: subprocess.Popen, timeout: float = 600) -> CliResult:
    start = time.monotonic()
    out, err = p.communicate(timeout=timeout)
    return CliResult(p.returncode, out, err, time.monotonic() - start)


def write_config(path: Path, tree: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(tree))
    return path
