"""One data stream across epochs: each epoch's pass starts before the previous one ends.

Ray Data's streaming split runs one executor per epoch, and its coordinator starts the next
one only once every train worker has asked for it: it plans, starts the read tasks (an
actor pool, for a preprocessing class) and waits for the first preprocessed block, while
the GPU waits too (2.4 s of a 7.3 s epoch on an H200). Here a dataset has two streaming
splits, two coordinators, and epochs alternate between them: each train worker starts the
next epoch's pass on the idle coordinator while the current one still streams, once the
rows it has yet to receive would last about as long as a pass takes to deliver its first
block. The next epoch's blocks are then made while this epoch's last batches train.

Each pass keeps what Ray's split guarantees per epoch: all of the epoch's rows, once,
split equally between the workers (``streaming_split(equal=True)``), in a new file order,
with fresh augmentation. It plugs into Ray Train as a ``DataConfig``: loops still call
``ray.train.get_dataset_shard`` and ``iter_torch_batches`` as they would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ray.data import DataIterator
from ray.train import DataConfig

FIRST_BLOCK_GUESS_S = 2.0  # a pass's start-up before one was measured
MIN_LEAD_S, MAX_LEAD_S = 0.5, 30.0
ALTERNATE_OFFSET = 1 << 20


def epoch_execution(ds, index: int):
    """An independent copy of ``ds`` whose executions are numbered from ``index``: a seeded
    file shuffle (FileShuffleConfig reseeds per execution) orders each one's files anew."""
    ds = ds.copy(ds, _deep_copy=True)
    if hasattr(ds.context, "_execution_idx"):  # Ray 2.60; elsewhere files shuffle unseeded
        ds.context._execution_idx = index
    return ds


def alternating_splits(ds, options, n: int, first_index: int = 0) -> list[list]:
    """Two streaming splits of ``ds`` (two coordinators): passes alternate between them, so
    the next pass can start while the current one streams, and no pass pays a coordinator's
    process start. Their executions are numbered apart (A: 0, 1, ...; B: 2**20, ...), so
    no two passes share a seeded file order."""
    splits = []
    for offset in (first_index, first_index + ALTERNATE_OFFSET):
        copy = epoch_execution(ds, offset)
        copy.context.execution_options = options
        splits.append(copy.streaming_split(n, equal=True))
    return splits


@dataclass
class _Started:
    """A pass started ahead: its iterator, the bundles already asked for, timings."""

    split: Any
    bundles: Iterator | None = None
    stats: Any = None
    first: Any = None
    error: BaseException | None = None
    asked_at: float = field(default_factory=time.perf_counter)
    done: threading.Event = field(default_factory=threading.Event)


class EpochIterator(DataIterator):
    """A train worker's shard: every pass (``iter_batches``, ``iter_torch_batches``) is one
    epoch, an execution of its own that this worker may have started ahead (see ``plan``)."""

    def __init__(self, splits, rank: int, rows_per_pass: int | None, context, dataset=None):
        """``splits``: this worker's iterators of the two alternating streaming splits; or
        None, with ``dataset``, for a dataset every worker reads whole (its splits are made
        here on first use, on this worker's node, as Ray Train's unsplit iterator would)."""
        self._splits = splits
        self._dataset = dataset
        self._rank = rank
        self._rows_per_pass = rows_per_pass
        self._context = context
        self._init_local()

    def _init_local(self) -> None:
        self._next_pass = 0
        self._last_pass: int | None = None  # nothing is started ahead until a plan is set
        self._started: dict[int, _Started] = {}
        self._lock = threading.Lock()
        self._current: Any = None
        self._lead_s = FIRST_BLOCK_GUESS_S
        self._companions: list[EpochIterator] = []
        self.first_block_s: dict[int, float] = {}  # pass -> from asking to its first block

    def __getstate__(self):
        keep = ("_splits", "_dataset", "_rank", "_rows_per_pass", "_context")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_local()

    # --- what the pipeline's context sets --------------------------------------------------

    def plan(self, first_pass: int, passes: int) -> None:
        """Passes ``first_pass`` .. ``first_pass + passes - 1`` will be read, one an epoch
        (a resumed run starts at its epoch): each starts while the one before streams."""
        self._next_pass = first_pass
        self._last_pass = first_pass + passes - 1

    def start_with(self, companion: EpochIterator) -> None:
        """Start ``companion``'s pass of an epoch (the validation split's) when this one
        starts its next epoch."""
        if companion not in self._companions:
            self._companions.append(companion)

    def start(self, pass_index: int) -> None:
        """Ask for pass ``pass_index`` now, without waiting for it (once; only planned
        passes)."""
        with self._lock:
            if pass_index in self._started or pass_index < self._next_pass:
                return
            if self._last_pass is None or pass_index > self._last_pass:
                return
            started = self._started[pass_index] = _Started(split=None)
        threading.Thread(target=self._start, args=(pass_index, started), daemon=True).start()

    # --- DataIterator -----------------------------------------------------------------------

    def _to_ref_bundle_iterator(self):
        with self._lock:
            p = self._next_pass
            self._next_pass += 1
            started = self._started.pop(p, None)
        if started is None:
            started = _Started(split=None)
            self._start(p, started)
        started.done.wait()
        if started.error is not None:
            raise started.error
        self._current = started.split
        return self._watch(p, started), started.stats, None

    def _on_iteration_end(self, executor) -> None:
        if self._current is not None:
            self._current._on_iteration_end(None)  # the coordinator ends its executor

    def stats(self) -> str:
        return self._current.stats() if self._current is not None else ""

    def schema(self):
        return (self._current or self._split(self._next_pass)).schema()

    def get_context(self):
        return self._context

    # --- internals ----------------------------------------------------------------------------

    def _start(self, p: int, started: _Started) -> None:
        """Get pass ``p``'s split and its first block: this returns once every worker has
        asked for the pass and its executor has made a block."""
        try:
            started.split = self._split(p)
            started.bundles, started.stats, _ = started.split._to_ref_bundle_iterator()
            started.first = next(started.bundles, None)
            self.first_block_s[p] = time.perf_counter() - started.asked_at
        except BaseException as e:  # raised where the pass is read
            started.error = e
        finally:
            started.done.set()

    def _split(self, p: int):
        if self._splits is None:
            with self._lock:
                if self._splits is None:
                    self._splits = [
                        s[0]
                        for s in alternating_splits(
                            self._dataset, self._context.execution_options, 1
                        )
                    ]
        return self._splits[p % 2]

    def _watch(self, p: int, started: _Started) -> Iterator:
        """Pass ``p``'s blocks. Once the rows still to come would last about as long as a
        pass takes to deliver its first block (the last one measured), pass ``p + 1`` and
        the companions' pass ``p`` are started."""
        measured = self.first_block_s.get(p)
        if measured is not None:
            self._lead_s = min(MAX_LEAD_S, max(MIN_LEAD_S, 1.25 * measured + 0.25))
        expected, rows, t0 = self._rows_per_pass, 0, time.perf_counter()
        bundle, asked = started.first, False
        while bundle is not None:
            yield bundle
            rows += bundle.num_rows() or 0
            if not asked and expected:
                rate = rows / max(time.perf_counter() - t0, 1e-6)
                if (expected - rows) / rate <= self._lead_s:
                    asked = True
                    self._start_next(p)
            bundle = next(started.bundles, None)
        self._rows_per_pass = rows  # the epoch's real count (bad records, row-changing code)
        self._start_next(p)

    def _start_next(self, p: int) -> None:
        self.start(p + 1)
        for companion in self._companions:
            companion.start(p)


class EpochDataConfig(DataConfig):
    """Train's ``DataConfig`` with a shard per worker whose every pass is one epoch, started
    ahead (``EpochIterator``). ``rows``: the datasets' row counts, for the start-ahead timing
    (without them a worker learns the count from its first pass)."""

    def __init__(self, *args, rows: dict[str, int] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._rows = dict(rows or {})

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        """Runs once per dataset in Train's dataset manager, on the driver's node: the
        coordinators of split datasets start there, as Train's own do."""
        output: list[dict[str, DataIterator]] = [{} for _ in range(world_size)]
        to_split = (
            set(datasets) if self._datasets_to_split == "all" else set(self._datasets_to_split)
        )
        for name, ds in datasets.items():
            if ds.name is None:
                ds.set_name(name)
            options = self._resolve_execution_options(name)
            context = ds.context.copy()
            context.execution_options = options
            rows = self._rows.get(name)
            if name in to_split:
                a, b = alternating_splits(ds, options, world_size)
                per_pass = rows // world_size if rows else None
                for rank in range(world_size):
                    output[rank][name] = EpochIterator([a[rank], b[rank]], rank, per_pass, context)
            else:
                for rank in range(world_size):
                    output[rank][name] = EpochIterator(None, rank, rows, context, dataset=ds)
        return output
