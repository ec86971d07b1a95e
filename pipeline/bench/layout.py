"""``--layout pinned``: a local cluster shaped like the chart's RayCluster, the data node's
processes on cores of their own.

On KubeRay the data group's cores do only data work: the Train worker, Ray's system processes
and the split coordinator live in other pods. On one machine the bench reproduces that with
CPU affinity: the data node's raylet is started while this process is pinned to the data
cores, so the raylet, its agents and every worker it starts inherit them; the head node, the
train node and this process keep the rest. ``limit`` and the DataLoader's workers are pinned
to the same data cores, so the paths compare the work one set of cores does.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.errors import PipelineError

NODE_TYPE_ENV = "RAY_NODE_TYPE_NAME"  # KubeRay sets it per pod; Ray derives ray.io/node-group
HEAD_GROUP, DATA_GROUP, TRAIN_GROUP = "headgroup", "data", "train"


@dataclass
class Pinned:
    """Where each role runs: the data node's cores, and the cores everything else shares."""

    data_cores: frozenset[int]
    other_cores: frozenset[int]
    address: str = ""


def split_cores(data_cpus: int | None) -> Pinned:
    """The last ``data_cpus`` cores of this process's affinity for the data node (default:
    half, at least one), the others for the head, the train node and the bench itself."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise PipelineError(
            f"--layout pinned needs at least 2 cores (this process may use {len(cores)}): "
            "one for the data node, one for the rest"
        )
    n = data_cpus or max(1, len(cores) // 2)
    if not 1 <= n < len(cores):
        raise PipelineError(
            f"--data-cpus {n} with --layout pinned: choose 1..{len(cores) - 1} "
            f"(this process may use {len(cores)} cores; the rest run the head and train node)"
        )
    return Pinned(frozenset(cores[-n:]), frozenset(cores[:-n]))


def pin_to(cores) -> None:
    """Pin the calling process (a forked worker: limit's pool, a DataLoader worker)."""
    if cores:
        os.sched_setaffinity(0, cores)


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def pinned_cluster(pinned: Pinned, object_store_mb: int) -> Iterator[Pinned]:
    """head (0 CPUs, headgroup) and a train node (1 CPU) on the other cores, a data node with
    one CPU per data core on the data cores; yields ``pinned`` with the head's address.

    The bench's private cluster is reached only from this machine, by processes this one
    starts: token authentication (Ray 2.60's default for clusters started outside
    ``ray.init``) is turned off for it, as the test suite's cluster has it."""
    from ray.cluster_utils import Cluster

    from pipeline.cluster import RAY_NODE_ENV

    before = os.sched_getaffinity(0)
    store = object_store_mb << 20
    cluster = None
    with _env(RAY_AUTH_MODE="disabled", **RAY_NODE_ENV):
        try:
            # the bench process (driver, sampler, the limit's and DataLoader's parents) and
            # everything started from here on runs on the other cores unless pinned again
            os.sched_setaffinity(0, pinned.other_cores)
            with _env(**{NODE_TYPE_ENV: HEAD_GROUP}):
                cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
            with _env(**{NODE_TYPE_ENV: TRAIN_GROUP}):
                cluster.add_node(num_cpus=1, object_store_memory=store)
            os.sched_setaffinity(0, pinned.data_cores)  # inherited by the raylet, its workers
            try:
                with _env(**{NODE_TYPE_ENV: DATA_GROUP}):
                    cluster.add_node(num_cpus=len(pinned.data_cores), object_store_memory=store)
            finally:
                os.sched_setaffinity(0, pinned.other_cores)
            pinned.address = cluster.address
            yield pinned
        finally:
            import ray

            if ray.is_initialized():
                ray.shutdown()
            if cluster is not None:
                cluster.shutdown()
            os.sched_setaffinity(0, before)


@contextlib.contextmanager
def process_on(cores) -> Iterator[None]:
    """This process on ``cores`` for a while (the pinned layout without the Ray path)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
