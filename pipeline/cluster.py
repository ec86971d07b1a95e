"""Connecting to Ray, and checking that the cluster has the nodes the config selects."""

from __future__ import annotations

import logging
import os
import time

from pipeline.config import PipelineConfig, Placement
from pipeline.errors import ClusterError, ConfigError

log = logging.getLogger(__name__)

EMBEDDED = "local"  # ray.init(address="local"): a Ray started in this process, one node

# Settings for every Ray node (the Helm chart sets the same env on its pods; a test checks).
# Ray ends idle task workers after 1 s once a node runs more workers than CPUs, which the
# Train and Ray Data actors always make it do: every epoch then paid ~2 s to start and import
# fresh data workers (benchmarks/RESULTS.md). Keep idle workers for 5 minutes instead.
RAY_NODE_ENV = {"RAY_idle_worker_killing_time_threshold_ms": "300000"}


def resolve_address(address: str | None) -> str:
    """--address, else RAY_ADDRESS (set in KubeRay pods and RayJob submitters), else local.

    Always explicit: a bare ray.init() can attach to a stale session in Ray's temp folder."""
    return address or os.environ.get("RAY_ADDRESS") or EMBEDDED


def connect(address: str | None, runtime_env: dict | None = None, **embedded_options) -> str:
    """Start or join Ray; returns the address used. ``runtime_env`` is the job's (every task
    and actor gets it); ``embedded_options`` (``num_cpus``, ``resources``, ...) go to
    ``ray.init`` when it starts the embedded Ray."""
    import ray

    address = resolve_address(address)
    if ray.is_initialized():
        return address
    options = {}
    if address == EMBEDDED:
        for key, value in RAY_NODE_ENV.items():  # read by the raylet that ray.init starts
            os.environ.setdefault(key, value)
        options = dict(embedded_options)
    if runtime_env:
        options["runtime_env"] = runtime_env
    from pipeline.console import quiet, quiet_ray

    # quiet: the workers' output (Ray Data's plans, Train's chatter) stays in their log files
    # under the session dir; the loop reports to the driver through pipeline.console
    options.setdefault("log_to_driver", not quiet())
    level = logging.ERROR if quiet() else logging.WARNING
    try:
        ray.init(address=address, logging_level=level, **options)
    except ConnectionError as e:
        raise ClusterError(
            f"cannot connect to Ray at {address} (--address / RAY_ADDRESS): {e}"
        ) from None
    except ValueError as e:  # Ray refuses a runtime env (size, missing path) with ValueError
        if not runtime_env:
            raise
        raise ConfigError(f"--working-dir / --pip: Ray refused the runtime env: {e}") from None
    quiet_ray()
    return address


def data_group_cpus(selector: dict[str, str]) -> int:
    """CPUs of the alive nodes the data selector matches (all nodes without one)."""
    nodes = matching_nodes(selector) if selector else _alive_nodes()
    return int(sum(n.get("Resources", {}).get("CPU", 0) for n in nodes))


def without_selectors(cfg: PipelineConfig) -> PipelineConfig:
    """The embedded Ray is one node: it cannot carry both group labels, so placement is free."""
    cfg = cfg.model_copy(deep=True)
    cfg.data.placement = Placement()
    cfg.train.placement = Placement()
    return cfg


def _matches(labels: dict[str, str], selector: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def matching_nodes(selector: dict[str, str]) -> list[dict]:
    return [n for n in _alive_nodes() if _matches(n.get("Labels") or {}, selector)]


def _describe_groups() -> str:
    groups = sorted(
        {
            ",".join(
                f"{k}={v}"
                for k, v in sorted((n.get("Labels") or {}).items())
                if k != "ray.io/node-id"
            )
            or "(no labels)"
            for n in _alive_nodes()
        }
    )
    return "; ".join(groups)


def _wait_for(field: str, placement: Placement, demand: dict[str, float]) -> list[dict]:
    nodes = matching_nodes(placement.selector)
    if nodes or placement.wait_s <= 0:
        return nodes
    from ray.autoscaler.sdk import request_resources

    log.warning(
        "no node matches %s %s yet; asking the autoscaler and waiting up to %.0fs",
        field,
        placement.selector,
        placement.wait_s,
    )
    request_resources(bundles=[demand], bundle_label_selectors=[placement.selector])
    deadline = time.monotonic() + placement.wait_s
    try:
        while time.monotonic() < deadline:
            nodes = matching_nodes(placement.selector)
            if nodes:
                return nodes
            time.sleep(2)
    finally:
        request_resources(bundles=[])
    return nodes


def train_worker_demand(cfg: PipelineConfig) -> dict[str, float]:
    """What one train worker asks of its node (train.resources_per_worker, train.use_gpu)."""
    worker = dict(cfg.train.resources_per_worker or {"CPU": 1})
    if cfg.train.use_gpu:
        worker.setdefault("GPU", 1)
    return worker


def check_placement(cfg: PipelineConfig) -> None:
    """Fail in seconds, not hang, when no node can take the data or train work."""
    tr = cfg.train
    worker = train_worker_demand(cfg)
    checks = (
        ("data.placement", cfg.data.placement, {"CPU": 1}),
        ("train.placement", tr.placement, worker),
    )
    for field, placement, demand in checks:
        if not placement.selector:
            continue
        nodes = _wait_for(field, placement, demand)
        if not nodes:
            raise ClusterError(
                f"no alive Ray node matches {field}.selector {placement.selector}; "
                f"the cluster's nodes carry: {_describe_groups()}"
            )
        if field == "train.placement" and placement.wait_s <= 0:
            for res, amount in worker.items():
                total = sum(n.get("Resources", {}).get(res, 0) for n in nodes)
                if total < amount * tr.num_workers:
                    raise ClusterError(
                        f"{tr.num_workers} train workers (train.num_workers) need {res}={amount}"
                        f" each (train.resources_per_worker"
                        f"{', train.use_gpu' if res == 'GPU' else ''}) but nodes matching "
                        f"{placement.selector} have {res}={total:g} in all"
                    )


def _warm_up_worker() -> int:
    """Import what a read-and-preprocess task imports, so the first epoch's tasks start warm."""
    import importlib

    import pipeline.data  # noqa: F401  (pyarrow, numpy, the config schema)
    import pipeline.workloads.image  # noqa: F401  (PIL and the decoders)

    for module in (
        "pyarrow.dataset",
        "ray.data",
        "ray.data._internal.datasource.parquet_datasource",
    ):
        try:
            importlib.import_module(module)
        except ImportError:  # a private module moved: that part is simply not warmed
            pass
    return os.getpid()


def train_runtime_env() -> dict:
    """The runtime env Ray Train gives its controller, and so the split coordinator and the
    data tasks it launches. Ray pools workers by runtime env (its serialized form), so
    warm-up tasks must carry the same one to warm the workers the first epoch will use.
    Mirrors Ray Train 2.60 internals; if they move, warm-up is skipped, nothing breaks."""
    try:
        from ray._common.constants import RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR as warn
        from ray.train.v2._internal.constants import (
            DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE as default,
        )
        from ray.train.v2._internal.constants import get_env_vars_to_propagate
    except ImportError:
        return {}
    env = get_env_vars_to_propagate()
    env.setdefault(warn, default)
    return {"env_vars": env}


def warm_up_data_workers(selector: dict[str, str]) -> list:
    """Start one worker per data-group CPU before training (not waited for): with idle workers
    kept (RAY_NODE_ENV), the first epoch's read tasks then skip process start-up and imports."""
    import ray

    runtime_env = train_runtime_env()
    if not runtime_env:
        return []
    cpus = data_group_cpus(selector)
    options = {"num_cpus": 1, "runtime_env": runtime_env}
    if selector:
        options["label_selector"] = selector
    task = ray.remote(_warm_up_worker).options(**options)
    # Only tasks: Ray never hands a worker that ran a task to an actor, so Train's own actors
    # (controller, split coordinator, ...) start their processes whatever is warmed here.
    return [task.remote() for _ in range(min(cpus, 256))]
