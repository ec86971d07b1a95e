"""What a training loop gets from the pipeline on every train worker: ``TrainContext``.

A loop (the built-in ``supervised_loop``, or ``train.loop``) is written the way Ray Train's
tutorial writes one; the context hands it the pieces the pipeline owns::

    def my_loop(ctx):
        model = ctx.prepare_model(ctx.build_model())        # or any nn.Module
        opt = torch.optim.Adam(model.parameters())
        state = ctx.restore()                               # None on a fresh run
        if state:
            model.module_or_self().load_state_dict(...)
        for epoch in ctx.epochs:                            # resumes where the run stopped
            for batch in ctx.train_batches():               # this worker's shard, on device
                ...
            ctx.report({"val_accuracy": acc}, state={"model": ..., "optimizer": ...})

``report`` adds rows/s, data-wait and exactly-once figures to the epoch's metrics, saves the
state with the run's history as the epoch's checkpoint (the next run resumes from it) and
reports to Ray Train; the driver writes ``summary.json`` from that history.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from pipeline import metrics, tracking
from pipeline.config import PipelineConfig
from pipeline.data import ROW_DIGEST_COLUMN, named_actor
from pipeline.lease import check_ticket
from pipeline.phases import Stamps
from pipeline.records import DIGEST_MIX
from pipeline.train.epochs import EpochIterator
from pipeline.usercode import call_factory
from pipeline.workload import task_loss

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
META_KEY = "ray_pipeline"  # the pipeline's own part of state.pt: epoch, history, the user's keys
HISTORY_FILE = "history.json"  # per-epoch metrics, beside state.pt: summaries read only this
PROGRESS_INTERVAL_S = 0.5  # how often rank 0 posts its progress to the driver


def torch_dtypes(dtypes: dict[str, str]) -> dict[str, torch.dtype]:
    """The preprocessing's numpy dtypes as torch's (every column named, as Ray requires)."""
    out = {k: torch.from_numpy(np.empty(0, dtype=v)).dtype for k, v in dtypes.items()}
    out[ROW_DIGEST_COLUMN] = torch.int64
    return out


MAX_BATCHES_PER_FETCH = 8
FETCH_BYTES = 8 << 20  # a fetch of this size costs little memory and no latency to speak of


def batches_per_fetch(workload, batch_size: int) -> int:
    """data.batches_per_fetch, or (0) as many train batches as fit in FETCH_BYTES, 1..8."""
    n = workload.cfg.data.batches_per_fetch
    if n:
        return n
    fetch_bytes = batch_size * max(workload.spec.row_bytes, 1)
    return max(1, min(MAX_BATCHES_PER_FETCH, FETCH_BYTES // fetch_bytes))


SHUFFLE_STORE_SHARE = 8  # the local shuffle buffer takes at most 1/8 of the node's object store


def node_object_store_bytes() -> int | None:
    """This Ray node's object store size (None when Ray does not say); in a Ray worker or
    a connected driver."""
    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id:
            size = (node.get("Resources") or {}).get("object_store_memory")
            return int(size) if size else None
    return None


def shuffle_buffer_rows(workload, batch_size: int, store_bytes: int | None) -> int:
    """data.local_shuffle_buffer, capped at 1/8 of the train node's object store: the blocks
    the buffer draws from stay pinned in the store, and a buffer the store cannot hold beside
    the blocks in flight stalls the stream (photos of 150 KB through a 100 MiB store: 1,024
    rows ran at 0.32 of the data core's rate, 80 rows at 0.64). Never below one batch; 0 stays
    off."""
    rows = workload.cfg.data.local_shuffle_buffer
    row_bytes = workload.spec.row_bytes
    if rows <= 0 or not store_bytes or row_bytes <= 0:
        return rows
    cap = store_bytes // SHUFFLE_STORE_SHARE // row_bytes
    return max(batch_size, min(rows, cap))


def fetch_plan(workload, batch_size: int, store_bytes: int | None) -> tuple[int, int]:
    """(batches per fetch, local shuffle buffer rows) of the train stream. Ray's shuffling
    batcher holds at least a fetch of rows, so with shuffling a fetch is kept within the
    buffer (a buffer capped for a small store stays capped)."""
    shuffle_rows = shuffle_buffer_rows(workload, batch_size, store_bytes)
    per_fetch = batches_per_fetch(workload, batch_size)
    if shuffle_rows > 0:
        per_fetch = min(per_fetch, max(1, shuffle_rows // batch_size))
    return per_fetch, shuffle_rows


def train_stream(shard, workload, batch_size: int, device, store_bytes: int | None):
    """The train split's batches for one epoch, as the training loop streams them: shuffled
    through the capped local buffer (data.shuffle_seed when set), fetched several at once."""
    kwargs: dict[str, Any] = {}
    per_fetch, shuffle_rows = fetch_plan(workload, batch_size, store_bytes)
    if shuffle_rows > 0:
        kwargs["local_shuffle_buffer_size"] = shuffle_rows
        if workload.cfg.data.shuffle_seed is not None:
            kwargs["local_shuffle_seed"] = workload.cfg.data.shuffle_seed
    return stream_batches(shard, workload, "train", batch_size, device, per_fetch, **kwargs)


def stream_batches(
    shard, workload, split: str, batch_size: int, device, per_fetch: int = 1, **kwargs
) -> Iterator[dict[str, torch.Tensor]]:
    """A shard's batches as tensors on ``device``. Ray Data assembles ``per_fetch`` batches at
    once (its cost per batch, in the Train worker's process, is then paid once per fetch) and
    they are handed on as slices: views, no copy. The rows of a fetch are a random draw from
    the local shuffle buffer, so its slices are too."""
    prefetch = workload.cfg.data.prefetch_batches
    fetches = shard.iter_torch_batches(
        batch_size=batch_size * per_fetch,
        prefetch_batches=-(-prefetch // per_fetch),  # the same rows in flight
        device=device,
        dtypes=torch_dtypes(workload.dtypes[split]),  # every column must be named
        pin_memory=device.type == "cuda",
        **kwargs,
    )
    if per_fetch == 1:
        yield from fetches
        return
    for fetch in fetches:
        rows = len(next(iter(fetch.values())))
        for i in range(0, rows, batch_size):
            yield {k: v[i : i + batch_size] for k, v in fetch.items()}


def _reduce(values: list[float], op: str) -> list[float]:
    """All-reduce a few numbers across train workers (no-op for one worker)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=backend_device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.tolist()


def _reduce_int(t) -> list[int]:
    """Exact all-reduce (sum) of an int64 tensor across train workers."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
    return [int(v) for v in t.tolist()]


class _EpochStats:
    """Rows, data wait and digest of the training batches of one epoch on this worker."""

    def __init__(self, device):
        self.device = device
        self.rows = 0
        self.wait = 0.0
        self.first_batch_s: float | None = None
        self.started: float | None = None
        self.posted_rows = 0  # rows already counted in the metrics
        self.digest = torch.zeros(2, device=device, dtype=torch.int64)
        # what the stream delivered, for the record's `stream` figures: an order-sensitive
        # fingerprint of the rows (a new file order changes it) and the sum of the model's
        # input (fresh augmentation changes it); device tensors, read once per epoch
        self.order = torch.zeros((), device=device, dtype=torch.int64)
        self.input_sum = torch.zeros((), device=device, dtype=torch.float64)


class TrainContext:
    """The pipeline's side of a training loop, on one train worker."""

    def __init__(self, loop_config: dict):
        self._stamps = Stamps(loop_started=time.time())  # start-up phases (pipeline.phases)
        workload = loop_config["workload"]
        self.workload = workload
        self.config: PipelineConfig = workload.cfg
        self.args: dict[str, Any] = dict(workload.loop.args)
        # Request the shards first: the first epoch's pass starts below, as soon as the
        # epochs left are known, and its start-up then overlaps the model build.
        self._train_shard = ray.train.get_dataset_shard("train")
        self._val_shard = ray.train.get_dataset_shard("validation")
        context = ray.train.get_context()
        self.rank: int = context.get_world_rank()
        self.world_size: int = context.get_world_size()
        self.device = ray.train.torch.get_device()
        self.input_column: str = workload.spec.input_column
        self.label_column: str = workload.spec.label_column
        self.task: str = workload.spec.task
        self.facts: dict[str, Any] = dict(workload.facts)
        self._on_device = workload.device_steps("train")  # e.g. the images' normalisation
        self._store_bytes = node_object_store_bytes()
        self._said_shuffle_cap = False
        torch.manual_seed(self.config.train.seed)
        self._checkpoint = ray.train.get_checkpoint()  # set when resuming
        self._state: dict | None = None
        self.history: list[dict] = []
        self.start_epoch = 0
        self._board = named_actor(loop_config.get("board")) if self.rank == 0 else None
        self._run = self.config.storage.run_name
        self._rows_per_epoch = loop_config.get("train_rows")  # the whole split, all workers
        self._lease = loop_config.get("lease")  # the run's lease: checked before each checkpoint
        self._source = loop_config.get("source")  # a table's snapshot/version: resume reads it
        self._running: dict[str, Any] = {}
        self._posted_at = 0.0
        self._warned_no_state = False
        if self._checkpoint is not None:
            self._state, self.start_epoch, self.history = self._load_state()
            if self.rank == 0:
                self.say(f"resuming from epoch {self.start_epoch} ({self._checkpoint.path})")
        self.epoch = self.start_epoch  # epochs finished so far
        self._validates = False
        # With bad_records=skip no pass starts ahead: the ledger counts skipped records per
        # epoch (reset at each report), and a pass started before the report would have its
        # counts wiped or given to the epoch before.
        ahead = self.config.data.bad_records != "skip"
        for shard in (self._train_shard, self._val_shard):
            if isinstance(shard, EpochIterator) and ahead:
                shard.plan(self.start_epoch, len(self.epochs))
        if isinstance(self._train_shard, EpochIterator) and ahead:
            self._train_shard.start(self.start_epoch)
        self._stamps.stamp("shards_ready")
        self._stats = _EpochStats(self.device)
        self._ledger = named_actor(loop_config.get("ledger")) if self.rank == 0 else None
        self._tracking = (  # only rank 0 logs to the experiment tracker
            tracking.EpochLog(loop_config.get("tracking"), self.config, self.say)
            if self.rank == 0
            else None
        )
        self._reset_ledger()

    # --- what a loop uses -------------------------------------------------------------------

    @property
    def epochs(self) -> range:
        """The epochs still to train: from the checkpoint's epoch (0 on a fresh run) up to
        train.epochs, 0-based."""
        return range(self.start_epoch, self.config.train.epochs)

    def build_model(self) -> torch.nn.Module:
        """train.model with train.model_args, plus the dataset facts its factory takes."""
        return call_factory(self.workload.model, self.facts, "train")

    def build_loss(self):
        """train.loss (built with train.loss_args), else the task's: cross-entropy or MSE."""
        if self.workload.loss is not None:
            return self.workload.loss.build("train")
        return task_loss(self.task)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """To this worker's device, wrapped in DistributedDataParallel with several workers."""
        return ray.train.torch.prepare_model(model)

    def say(self, line: str) -> None:
        """A line for the person running the job (rank 0's reach the driver's console)."""
        if self._board is not None:
            self._board.say.remote(line)
        else:
            log.info(line)

    def progress(self, **figures: Any) -> None:
        """Running figures for the progress bar, e.g. ``ctx.progress(loss=loss)``, as often as
        every step: a tensor is read (a device sync) only when the bar is next drawn."""
        self._running.update(figures)

    def restore(self) -> dict | None:
        """The ``state`` given to the latest ``report``, on CPU; None on a fresh run."""
        return self._state

    def train_batches(self, batch_size: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """This worker's shard of the train split for one epoch, shuffled, as tensors on the
        device with the preprocessing's dtypes, after the device transforms (the images'
        normalisation, data.device_transform); the time spent waiting for each batch counts
        as data wait."""
        d = self.config.data
        size = batch_size or d.batch_size
        shuffle_rows = shuffle_buffer_rows(self.workload, size, self._store_bytes)
        if 0 < shuffle_rows < d.local_shuffle_buffer and not self._said_shuffle_cap:
            self._said_shuffle_cap = True
            if self.rank == 0:
                self.say(
                    f"local shuffle buffer: {shuffle_rows} rows, not data.local_shuffle_"
                    f"buffer={d.local_shuffle_buffer}: 1/{SHUFFLE_STORE_SHARE} of this "
                    f"node's object store ({self._store_bytes >> 20} MiB) at "
                    f"{self.workload.spec.row_bytes:,} bytes a row"
                )
        batches = train_stream(
            self._train_shard, self.workload, size, self.device, self._store_bytes
        )
        stats = self._stats
        if stats.started is None:
            stats.started = time.perf_counter()
        self._stamps.stamp("first_batch_asked")
        while True:
            t = time.perf_counter()
            batch = next(batches, None)
            waited = time.perf_counter() - t
            stats.wait += waited
            if stats.first_batch_s is None:
                stats.first_batch_s = waited
                if "first_batch" not in self._stamps:
                    self._stamps.stamp("first_batch")
                    self._post_stamps()
            if batch is None:
                return
            digest = batch.pop(ROW_DIGEST_COLUMN)
            stats.digest += torch.stack([digest.sum(), ((digest * DIGEST_MIX) & 0xFFFFFFFF).sum()])
            stats.order = stats.order * 1_000_003 + digest.sum()  # wraps around: a fingerprint
            if self.input_column in batch:
                stats.input_sum += batch[self.input_column].sum(dtype=torch.float64)
            stats.rows += len(digest)
            if self.rank == 0 and time.perf_counter() - self._posted_at >= PROGRESS_INTERVAL_S:
                self._post()
            yield self._on_device(batch, "train") if self._on_device else batch

    def validation_batches(self, batch_size: int | None = None):
        """The whole validation split (every worker sees all of it), as tensors on the device."""
        size = batch_size or self.config.data.validation_batch_size
        if not self._validates and isinstance(self._val_shard, EpochIterator):
            # this loop validates: from now on each epoch's validation pass starts with the
            # next epoch's train pass, before this epoch's training ends
            self._validates = True
            self._train_shard.start_with(self._val_shard)
        for batch in stream_batches(
            self._val_shard, self.workload, "validation", size, self.device
        ):
            batch.pop(ROW_DIGEST_COLUMN)
            yield self._on_device(batch, "validation") if self._on_device else batch

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None = None) -> dict:
        """End an epoch: every worker calls it. Adds the epoch's data figures to ``metrics``,
        saves ``state`` (rank 0's) with the history as the epoch's checkpoint, and reports to
        Ray Train. Returns the metrics as recorded."""
        stats = self._stats
        elapsed = time.perf_counter() - stats.started if stats.started is not None else 0.0
        total_rows, wait_sum, input_sum = _reduce(
            [stats.rows, stats.wait, float(stats.input_sum)], "sum"
        )
        digest = _reduce_int(stats.digest)
        (max_elapsed,) = _reduce([elapsed], "max")
        mine = torch.zeros(self.world_size, dtype=torch.int64, device=self.device)
        mine[self.rank] = stats.rows
        rows_per_worker = _reduce_int(mine)
        record: dict[str, Any] = {"epoch": self.epoch + 1}
        record.update({k: _plain(v) for k, v in metrics.items()})
        if self._source:
            record["source"] = self._source
        record.update(
            {
                "train_rows": int(total_rows),
                "epoch_s": max_elapsed,
                "rows_per_s": total_rows / max(max_elapsed, 1e-9),
                "data_wait_fraction": (wait_sum / self.world_size) / max(max_elapsed, 1e-9),
                "first_batch_s": stats.first_batch_s or 0.0,
                "train_digest": digest,
                "stream": {
                    "rows_per_worker": rows_per_worker,
                    "order_fingerprint": int(stats.order),  # rank 0's
                    "input_sum": input_sum,
                },
            }
        )
        checkpoint = None
        with tempfile.TemporaryDirectory() as d:
            if self.rank == 0:
                check_ticket(self.config, self._lease)  # one writer per run (pipeline.lease)
                if self._ledger is not None:
                    record["skipped_records"] = ray.get(self._ledger.snapshot.remote())["counts"]
                self.history.append(record)
                if state is None and not self._warned_no_state:
                    self.say(
                        "warning: ctx.report() without state: a run resumed from this "
                        "checkpoint starts its model afresh"
                    )
                    self._warned_no_state = True
                torch.save(self._saved(state), os.path.join(d, STATE_FILE))
                with open(os.path.join(d, HISTORY_FILE), "w") as f:
                    json.dump(self.history, f)
                checkpoint = ray.train.Checkpoint.from_directory(d)
                self.say(format_epoch(record, self.config.train.epochs))
                self._record_metrics(record)
                if self._tracking is not None:
                    self._tracking.log(record)
            ray.train.report(
                record, checkpoint=checkpoint, checkpoint_dir_name=f"epoch-{self.epoch + 1:04d}"
            )
        self._stamps["last_report"] = time.time()
        self._post_stamps()
        self.epoch += 1
        self._stats = _EpochStats(self.device)
        self._reset_ledger()
        return record

    # --- internals ----------------------------------------------------------------------------

    def _post_stamps(self) -> None:
        if self._board is not None:
            self._board.stamp.remote(dict(self._stamps))

    def _post(self) -> None:
        """Rank 0's progress to the driver's bar and to the metrics (rows scaled to all
        workers: every worker streams an equal share)."""
        stats = self._stats
        now = time.perf_counter()
        elapsed = now - (stats.started or now)
        rows = stats.rows * self.world_size
        running = {k: _plain(v) for k, v in self._running.items()}
        figures = {
            "epoch": self.epoch + 1,
            "epochs": self.config.train.epochs,
            "rows": rows,
            "total_rows": self._rows_per_epoch,
            "rows_per_s": rows / elapsed if elapsed > 0 else 0.0,
            "data_wait_fraction": stats.wait / elapsed if elapsed > 0 else None,
            **running,
        }
        if self._board is not None:
            self._board.post.remote(figures)
        metrics.set_gauge("pipeline_epoch", figures["epoch"], run=self._run)
        metrics.add("pipeline_train_rows_total", rows - stats.posted_rows, run=self._run)
        stats.posted_rows = rows
        if isinstance(running.get("loss"), float):
            metrics.set_gauge("pipeline_train_loss", running["loss"], run=self._run)
        self._posted_at = now

    def _record_metrics(self, record: dict) -> None:
        run = self._run
        metrics.set_gauge("pipeline_epoch", record["epoch"], run=run)
        metrics.set_gauge("pipeline_train_rows_per_second", record["rows_per_s"], run=run)
        metrics.set_gauge("pipeline_data_wait_fraction", record["data_wait_fraction"], run=run)
        metrics.add(
            "pipeline_train_rows_total", record["train_rows"] - self._stats.posted_rows, run=run
        )
        if isinstance(record.get("train_loss"), int | float):
            metrics.set_gauge("pipeline_train_loss", record["train_loss"], run=run)
        for key, value in record.items():
            if key.startswith("val_") and key != "val_rows" and isinstance(value, int | float):
                metrics.set_gauge("pipeline_validation_metric", value, run=run, metric=key)
        if self._board is not None:
            self._board.post.remote({"done": True})

    def _saved(self, state: dict | None) -> dict:
        """What state.pt holds: the user's state as given, the pipeline's bookkeeping under
        META_KEY, and ``epoch``/``history`` at the top too (for readers of the file) unless the
        user's state has keys of those names."""
        user = dict(state or {})
        meta = {"epoch": self.epoch + 1, "history": self.history, "user_keys": list(user)}
        return {"epoch": meta["epoch"], "history": self.history, **user, META_KEY: meta}

    def _load_state(self) -> tuple[dict, int, list]:
        """(the user's state, epochs done, history) from the latest checkpoint. The run's own
        file: numpy values a loop saved are allowed (torch's safe loader refuses them)."""
        with self._checkpoint.as_directory() as d:
            path = os.path.join(d, STATE_FILE)
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError:
                saved = torch.load(path, map_location="cpu", weights_only=False)
        meta = saved.pop(META_KEY, None)
        if meta is None:  # written before META_KEY: the pipeline's keys were at the top
            return saved, int(saved.get("epoch", 0)), list(saved.get("history", []))
        user = {k: saved[k] for k in meta["user_keys"]}
        return user, int(meta["epoch"]), list(meta["history"])

    def _reset_ledger(self) -> None:
        if self._ledger is not None:
            ray.get(self._ledger.reset.remote())  # count skipped records per epoch


def _plain(v: Any) -> Any:
    """A figure as JSON takes it: tensors and numpy values become numbers or lists."""
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, np.ndarray):
        return v.item() if v.size == 1 else v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def format_epoch(m: dict, epochs: int) -> str:
    """One line per finished epoch: the loss and validation metrics reported, then the data
    figures."""
    shown = [
        f"{k}={v:.4f}"
        for k, v in m.items()
        if (k == "train_loss" or k.startswith("val_"))
        and isinstance(v, int | float)
        and k != "val_rows"
    ]
    return (
        f"epoch {m['epoch']}/{epochs}: {' '.join(shown)} "
        f"rows/s={m['rows_per_s']:.0f} data_wait={100 * m['data_wait_fraction']:.1f}% "
        f"({m['epoch_s']:.1f}s)"
    ).replace("  ", " ")
