"""The four paths the bench measures: limit, raw_read, dataloader and ray."""

from __future__ import annotations

import multiprocessing as mp
import re
import time
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.bench.dataset import Dataset, bench_workload
from pipeline.bench.layout import pin_to
from pipeline.config import PipelineConfig
from pipeline.storage import resolve

PATHS = ("limit", "raw_read", "dataloader", "ray")  # the default set
ALL_PATHS = (*PATHS, "mosaic")  # mosaic: Mosaic Streaming, run from its own environment


# --- the four paths ---------------------------------------------------------------------------


def _numpy_batch(rb) -> dict:
    """A record batch as the numpy batch the pipeline's preprocessing takes."""
    import pyarrow as pa

    from pipeline.data import to_numpy

    return to_numpy(pa.Table.from_batches([rb]))


def _preprocessor(workload, fs):
    from pipeline.data import Preprocessor

    return Preprocessor(workload.spec, "train", fs, "", None)


_LIMIT_BATCHES: list = []  # set before forking the limit's workers (copy-on-write)


def _limit_worker(args) -> tuple[int, float]:
    """Preprocess some of the in-memory batches; returns rows and the CPU seconds it took."""
    indices, workload = args
    pre = _preprocessor(workload, pafs.LocalFileSystem())
    n, cpu0 = 0, time.process_time()
    for i in indices:
        out = pre.batch(dict(_LIMIT_BATCHES[i]))
        n += len(out[workload.spec.label_column])
    return n, time.process_time() - cpu0


def measure_limit(ds: Dataset, workload, cpus: int, cores=None) -> dict:
    """Preprocessing alone: in-memory batches, one forked process per data core (pinned to
    ``cores`` when given: the pinned layout's data cores)."""
    global _LIMIT_BATCHES
    spec = workload.spec
    batches = []
    for path in ds.files:
        with ds.loc.fs.open_input_file(path) as f:
            table = pq.read_table(f, columns=spec.columns)
        for rb in table.to_batches(max_chunksize=spec.chunk_rows()):
            batches.append(_numpy_batch(rb))
    _LIMIT_BATCHES = batches
    shards = [(list(range(i, len(batches), cpus)), workload) for i in range(cpus)]
    ctx = mp.get_context("fork")
    with ctx.Pool(cpus, initializer=pin_to, initargs=(cores,)) as pool:
        pool.map(_limit_worker, [([0], workload)] * cpus)  # warm up: imports, first calls
        start = time.perf_counter()
        done = pool.map(_limit_worker, shards)
        seconds = time.perf_counter() - start
        # let the workers exit: the pool's exit would SIGTERM them, and a fork of a process
        # that runs Ray prints Ray's stack dump on SIGTERM
        pool.close()
        pool.join()
    _LIMIT_BATCHES = []
    rows, cpu_s = sum(n for n, _ in done), sum(c for _, c in done)
    return {"rows": rows, "seconds": seconds, "data_cores": cpu_s / seconds}


def measure_raw_read(ds: Dataset, workload) -> dict:
    """pyarrow reading every file (multi-threaded): the storage ceiling."""
    import pyarrow.dataset as pads

    start = time.perf_counter()
    table = pads.dataset(ds.files, filesystem=ds.loc.fs, format="parquet").to_table(
        columns=workload.spec.columns, use_threads=True
    )
    seconds = time.perf_counter() - start
    return {"rows": table.num_rows, "seconds": seconds}


class _ParquetStream:
    """A torch IterableDataset: each DataLoader worker reads its share of files row group by
    row group and runs the pipeline's preprocessing, yielding training-sized batches."""

    def __init__(self, ds: Dataset, workload, batch_size: int):
        self.files, self.fs, self.batch_size = ds.files, ds.loc.fs, batch_size
        self.workload = workload

    def __iter__(self):
        import torch
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        files = self.files[info.id :: info.num_workers] if info else self.files
        spec = self.workload.spec
        pre = _preprocessor(self.workload, self.fs)
        for path in files:
            with self.fs.open_input_file(path) as f:
                reader = pq.ParquetFile(f)
                for rb in reader.iter_batches(batch_size=spec.chunk_rows(), columns=spec.columns):
                    out = pre.batch(_numpy_batch(rb))
                    x = torch.from_numpy(out[spec.input_column])
                    y = torch.from_numpy(out[spec.label_column])
                    for i in range(0, len(y), self.batch_size):
                        yield x[i : i + self.batch_size], y[i : i + self.batch_size]


def measure_dataloader(ds: Dataset, workload, cpus: int, cores=None) -> dict:
    """A DataLoader of ``cpus`` workers (pinned to ``cores`` when given) over the files."""
    import functools

    from torch.utils.data import DataLoader, IterableDataset

    stream = type("ParquetStream", (_ParquetStream, IterableDataset), {})(
        ds, workload, workload.cfg.data.batch_size
    )
    loader = DataLoader(
        stream,
        batch_size=None,
        num_workers=cpus,
        prefetch_factor=4,
        multiprocessing_context="fork",
        worker_init_fn=functools.partial(_pin_worker, cores),
    )
    # uint8 images are normalised here, in the consumer (on its CPU), as the ray path's
    # Train worker does on its device
    on_device = workload.device_steps("train")
    x_col, y_col = workload.spec.input_column, workload.spec.label_column
    rows = 0
    start = time.perf_counter()
    first = None
    for x, y in loader:
        if first is None:
            first = time.perf_counter() - start
        rows += len(y)
        if on_device:
            on_device({x_col: x, y_col: y}, "train")
    return {"rows": rows, "seconds": time.perf_counter() - start, "ttfb_s": first}


def _pin_worker(cores, _worker_id: int) -> None:
    pin_to(cores)


class _Collector:
    """Receives the Train worker's timings (Train V2 keeps metrics only with checkpoints)."""

    def __init__(self):
        self.items = []

    def put(self, item):
        self.items.append(item)

    def get(self):
        return self.items


def bench_loop(config: dict) -> None:
    """Runs in the Train worker: iterate the shard like the training loop does, time it."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from pipeline.train.context import node_object_store_bytes, train_stream
    from pipeline.usercode import UserCallable, call_factory
    from pipeline.workloads.models import BUILTIN, build_optimizer

    loop_start = time.time()
    workload = config["workload"]
    cfg = workload.cfg
    x_col, y_col = workload.spec.input_column, workload.spec.label_column
    # first, as in the training loop: Ray Data's split coordinator starts while the model is
    # built, so a loop with a model waits less for its first batch than one without
    shard_at = time.time()
    shard = ray.train.get_dataset_shard("train")
    device = ray.train.torch.get_device()
    model = optimizer = None
    if config.get("model"):
        factory = UserCallable("--model", BUILTIN[config["model"]])
        model = ray.train.torch.prepare_model(call_factory(factory, workload.facts))
        optimizer = build_optimizer("adam", model.parameters(), 1e-3, 0, 0)
    on_device = workload.device_steps("train")  # uint8 images: normalised here, as in training
    store = node_object_store_bytes()
    epochs = []
    first_batch_at = None
    stream_start = time.time()
    for _ in range(config["epochs"]):
        rows, wait, first = 0, 0.0, None
        started_at = time.time()
        d = cfg.data
        batches = train_stream(shard, workload, d.batch_size, device, store)
        start = time.perf_counter()
        while True:
            t = time.perf_counter()
            batch = next(batches, None)
            waited = time.perf_counter() - t
            wait += waited
            first = waited if first is None else first
            if batch is None:
                break
            first_batch_at = first_batch_at or time.time()
            rows += len(batch[y_col])
            if on_device:
                batch = on_device(batch, "train")
            if model is not None:
                loss = torch.nn.functional.cross_entropy(model(batch[x_col]), batch[y_col])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        if device.type == "cuda":  # steps still queued on the GPU belong to this epoch
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        epochs.append(
            {
                "rows": rows,
                "seconds": seconds,
                "ttfb_s": first,
                "wait_s": wait,
                "started_at": started_at,
            }
        )
    collector = ray.get_actor(config["collector"])
    ray.get(
        collector.put.remote(
            {
                "epochs": epochs,
                "loop_start": loop_start,
                "shard_to_first_batch_s": first_batch_at and first_batch_at - shard_at,
                "stream_start": stream_start,
                "loop_end": time.time(),
            }
        )
    )
    ray.train.report({"done": 1})


def measure_ray(
    ds: Dataset,
    cfg: PipelineConfig,
    workdir: Path,
    *,
    model: str | None,
    epochs: int,
    timeline: str | None = None,
) -> dict:
    """The Ray path: a real TorchTrainer whose loop times each epoch. ``timeline``: write Ray's
    task timeline of the run there (Chrome trace: open in chrome://tracing or Perfetto)."""
    import ray

    from pipeline.cluster import warm_up_data_workers
    from pipeline.data import build_dataset
    from pipeline.sources.parquet import ParquetSplit
    from pipeline.train import build_trainer

    name = f"bench-collector-{time.time_ns()}"
    collector = ray.remote(_Collector).options(name=name, num_cpus=0).remote()
    workload = bench_workload(cfg, ds)
    train = build_dataset(
        ParquetSplit("train", ds.loc, ds.files),
        workload.spec,
        cfg.data,
        selector=cfg.data.placement.selector,
    )
    storage = resolve(str(workdir / "ray-runs"), cfg.s3, "bench storage")
    trainer = build_trainer(
        cfg,
        {"train": train},
        storage,
        loop=bench_loop,
        extra_loop_config={
            "collector": name,
            "model": model,
            "epochs": epochs,
            "workload": workload,
        },
    )
    warm_up_data_workers(cfg.data.placement.selector)  # as `train` does
    before_spill = spilled_bytes()
    fit_start = time.time()
    trainer.fit()
    fit_end = time.time()
    if timeline:
        ray.timeline(timeline)  # where the start-up goes: actor starts, planning, first tasks
    (out,) = ray.get(collector.get.remote())
    ray.kill(collector)
    first = out["epochs"][0]
    total_rows = sum(e["rows"] for e in out["epochs"])
    total_s = sum(e["seconds"] for e in out["epochs"])
    r = {
        "rows": total_rows,
        "seconds": total_s,
        "ttfb_s": first["ttfb_s"],
        "shard_to_first_batch_s": out["shard_to_first_batch_s"],
        "data_wait_fraction": sum(e["wait_s"] for e in out["epochs"]) / max(total_s, 1e-9),
        "fit_startup_s": out["loop_start"] - fit_start,
        "teardown_s": fit_end - out["loop_end"],
        "epochs": out["epochs"],
        "stream_window": (out["stream_start"], out["loop_end"]),
        "spilled_bytes": spilled_bytes() - before_spill,
    }
    if model:
        # the rate the model takes rows at when it never waits: time in its steps only, after
        # the first epoch when there is one (that one also warms up the model and the data)
        steady = out["epochs"][1:] or out["epochs"]
        busy_s = sum(e["seconds"] - e["wait_s"] for e in steady)
        r["model_rows_per_s"] = sum(e["rows"] for e in steady) / max(busy_s, 1e-9)
    return r


def spilled_bytes() -> int:
    """Bytes the object store has spilled to disk so far (Ray's own memory summary)."""
    import ray
    from ray._private.internal_api import memory_summary

    text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    m = re.search(r"Spilled (\d+) MiB", text)
    return int(m.group(1)) << 20 if m else 0
