"""Queued runs say what they wait for.

Ray Train (2.60) reserves its worker group as one placement group, created by the Train
controller (an actor of the driver's job), and waits for it to be placed; after
``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S`` (60 s) it drops it and tries again, forever. While
another run holds the train group, nothing says so. ``TrainGroupWatch`` reads the placement
groups from Ray's GCS on the driver: while this job's group is pending it prints, every
``RAY_PIPELINE_WAIT_LINE_S`` (30 s), what it waits for and who holds the train group's nodes
(other jobs' placed groups there, named by their runs' progress boards):

    waiting for the train group: 1 worker x CPU=1 (train.resources_per_worker); held by run
    'digits-a' (job 02000000) since 14:02; 45 s so far

``train.placement.wait_s`` > 0 bounds the wait: Train's start timeout becomes that long and
its controller does not retry (``train_start_options``), and the timeout becomes one line.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.cluster import matching_nodes, train_worker_demand
from pipeline.config import PipelineConfig
from pipeline.console import WAIT_LINE_S, board_name
from pipeline.errors import ClusterError

log = logging.getLogger(__name__)

START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"  # Ray Train's, read by its controller
POLL_S = 2.0


@dataclass(frozen=True)
class PlacedGroup:
    """One placement group as the GCS knows it."""

    job_id: str
    state: str  # PENDING, PREPARED, CREATED, RESCHEDULING, REMOVED
    node_ids: frozenset[str]
    placed_at: float | None  # wall clock, when its last bundle was placed


def placement_groups() -> list[PlacedGroup]:
    """Every placement group, with the job that created it (Ray's public table leaves the
    job out; the GCS record has it). Empty if Ray's internals moved."""
    try:
        from ray._private.state import state
        from ray.core.generated import gcs_pb2
    except ImportError:
        return []
    states = gcs_pb2.PlacementGroupTableData.PlacementGroupState
    out = []
    for raw in state._connect_and_get_accessor().get_placement_group_table():
        pg = gcs_pb2.PlacementGroupTableData.FromString(raw)
        placed_ms = pg.placement_group_final_bundle_placement_timestamp_ms
        out.append(
            PlacedGroup(
                job_id=pg.creator_job_id.hex(),
                state=states.Name(pg.state),
                node_ids=frozenset(b.node_id.hex() for b in pg.bundles if b.node_id),
                placed_at=placed_ms / 1000 if placed_ms else None,
            )
        )
    return out


def runs_by_job() -> dict[str, str]:
    """Live pipeline runs on the cluster, job id -> run name, from their progress boards
    (named ``progress-<run>-<job id>``)."""
    try:
        from ray._private.state import state
    except ImportError:
        return {}
    prefix = board_name("")
    runs = {}
    for actor in state.actor_table(None, actor_state_name="ALIVE").values():
        name = actor.get("Name") or ""
        suffix = f"-{actor['JobID']}"  # board_name(f"{run}-{job id}"), pipeline.train.driver
        if name.startswith(prefix) and name.endswith(suffix):
            runs[actor["JobID"]] = name[len(prefix) : -len(suffix)]
    return runs


def demand_text(cfg: PipelineConfig) -> str:
    """``1 worker x CPU=1 (train.resources_per_worker)``"""
    tr = cfg.train
    each = ",".join(f"{k}={v:g}" for k, v in train_worker_demand(cfg).items())
    workers = "worker" if tr.num_workers == 1 else "workers"
    return f"{tr.num_workers} {workers} x {each} (train.resources_per_worker)"


def holders_text(groups: list[PlacedGroup], runs: dict[str, str], job_id: str, nodes) -> str:
    """``held by run 'digits-a' (job 02000000) since 14:02`` for every other job's placed
    group on the train group's nodes."""
    held = [
        g
        for g in groups
        if g.job_id != job_id and g.state == "CREATED" and (not nodes or g.node_ids & nodes)
    ]
    if not held:
        return "no other run holds it (the cluster may be scaling up, or short of resources)"
    parts = []
    for g in sorted(held, key=lambda g: g.placed_at or 0):
        who = f"run '{runs[g.job_id]}'" if g.job_id in runs else "another job"
        since = (
            f" since {time.strftime('%H:%M UTC', time.gmtime(g.placed_at))}" if g.placed_at else ""
        )
        parts.append(f"{who} (job {g.job_id}){since}")
    return "held by " + ", ".join(parts)


def waiting_line(demand: str, holders: str, waited_s: float) -> str:
    return f"waiting for the train group: {demand}; {holders}; {waited_s:.0f} s so far"


def train_start_options(cfg: PipelineConfig) -> dict:
    """``FailureConfig`` options for ``train.placement.wait_s``: when set, Train's controller
    gives up on a worker group not placed in time instead of trying again."""
    return {"controller_failure_limit": 0} if cfg.train.placement.wait_s > 0 else {}


class TrainGroupWatch:
    """While this job's train worker group waits to be placed, say so every ``interval_s``."""

    def __init__(
        self,
        cfg: PipelineConfig,
        job_id: str,
        say: Callable[[str], None],
        interval_s: float = WAIT_LINE_S,
    ):
        self.cfg = cfg
        self.job_id = job_id
        self.say = say
        self.interval_s = interval_s
        self.demand = demand_text(cfg)
        self.holders = ""
        self.waited_s = 0.0
        self.lines = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="train-group-watch", daemon=True)
        self._env_before: str | None = None

    def __enter__(self) -> TrainGroupWatch:
        wait_s = self.cfg.train.placement.wait_s
        if wait_s > 0:  # the controller reads it from the driver's environment (propagated)
            self._env_before = os.environ.get(START_TIMEOUT_ENV)
            os.environ[START_TIMEOUT_ENV] = f"{wait_s:g}"
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.cfg.train.placement.wait_s > 0:
            if self._env_before is None:
                os.environ.pop(START_TIMEOUT_ENV, None)
            else:
                os.environ[START_TIMEOUT_ENV] = self._env_before

    def _run(self) -> None:
        waiting_since = None
        last_line = 0.0
        selector = self.cfg.train.placement.selector
        while not self._stop.wait(POLL_S):
            try:
                groups = placement_groups()
                ours = [g for g in groups if g.job_id == self.job_id and g.state != "REMOVED"]
                if any(g.state == "CREATED" for g in ours) or not ours:
                    waiting_since = None
                    continue
                now = time.monotonic()
                waiting_since = waiting_since or now - POLL_S
                self.waited_s = now - waiting_since
                nodes = {n["NodeID"] for n in matching_nodes(selector)} if selector else set()
                self.holders = holders_text(groups, runs_by_job(), self.job_id, nodes)
                # a group is pending for a moment in every run: the first line after a while
                if now - max(last_line, waiting_since) >= self.interval_s:
                    self.say(waiting_line(self.demand, self.holders, self.waited_s))
                    self.lines += 1
                    last_line = now
            except Exception as e:  # watching never fails a run
                log.debug("train group watch: %s", e)

    def timeout_error(self, error: BaseException) -> ClusterError | None:
        """The one line for Train's start timeout under ``train.placement.wait_s``."""
        failure = getattr(error, "controller_failure", None)
        if self.cfg.train.placement.wait_s <= 0 or type(failure).__name__ != (
            "WorkerGroupStartupTimeoutError"
        ):
            return None
        holders = self.holders or "no other run holds it"
        return ClusterError(
            f"the train group did not take run '{self.cfg.storage.run_name}' within "
            f"train.placement.wait_s={self.cfg.train.placement.wait_s:g}s: {self.demand}; "
            f"{holders}"
        )
