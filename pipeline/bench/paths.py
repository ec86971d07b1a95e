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


def _limit_worker(args) -> tuple[int, float, float | None]:
    """Preprocess some of the in-memory batches; returns rows, the CPU seconds it took and
    when (``time.monotonic``, one clock for every process) its first batch was done."""
    indices, workload = args
    pre = _preprocessor(workload, pafs.LocalFileSystem())
    n, cpu0, first_at = 0, time.process_time(), None
    for i in indices:
        out = pre.batch(dict(_LIMIT_BATCHES[i]))
        n += len(out[workload.spec.label_column])
        first_at = first_at or time.monotonic()
    return n, time.process_time() - cpu0, first_at


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
        start = time.monotonic()
        done = pool.map(_limit_worker, shards)
        seconds = time.monotonic() - start
        # let the workers exit: the pool's exit would SIGTERM them, and a fork of a process
        # that runs Ray prints Ray's stack dump on SIGTERM
        pool.close()
        pool.join()
    _LIMIT_BATCHES = []
    rows, cpu_s = sum(n for n, _, _ in done), sum(c for _, c, _ in done)
    firsts = [f for _, _, f in done if f is not None]
    first = min(firsts) - start if firsts else None  # the first batch any worker finished
    return {
        "rows": rows,
        "seconds": seconds,
        "ttfb_s": first,
        "data_cores": cpu_s / seconds,
        "epochs": [{"rows": rows, "seconds": seconds, "ttfb_s": first}],
    }


def measure_raw_read(ds: Dataset, workload) -> dict:
    """pyarrow reading every file (multi-threaded, batches read ahead): the storage ceiling."""
    import pyarrow.dataset as pads

    start = time.perf_counter()
    batches = pads.dataset(ds.files, filesystem=ds.loc.fs, format="parquet").to_batches(
        columns=workload.spec.columns, use_threads=True
    )
    rows, first = 0, None
    for rb in batches:
        first = time.perf_counter() - start if first is None else first
        rows += rb.num_rows
    seconds = time.perf_counter() - start
    return {
        "rows": rows,
        "seconds": seconds,
        "ttfb_s": first,
        "epochs": [{"rows": rows, "seconds": seconds, "ttfb_s": first}],
    }


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


def measure_dataloader(
    ds: Dataset, workload, cpus: int, cores=None, *, epochs: int = 1, model: str | None = None
) -> dict:
    """A DataLoader of ``cpus`` workers (pinned to ``cores`` when given) over the files, for
    ``epochs`` epochs (persistent workers, as a user running several epochs would set). With
    ``model``, each batch goes to the device the ray path's train worker uses and steps the
    same model (``ModelStep``): rows/s the model trained on, like the ray path's."""
    import functools

    import torch
    from torch.utils.data import DataLoader, IterableDataset

    from pipeline.bench.model_step import ModelStep, local_device, measure_ceiling

    device = local_device(workload.cfg.train.use_gpu) if model else torch.device("cpu")
    step = ModelStep(model, workload, device) if model else None
    stream = type("ParquetStream", (_ParquetStream, IterableDataset), {})(
        ds, workload, workload.cfg.data.batch_size
    )
    loader = DataLoader(
        stream,
        batch_size=None,
        num_workers=cpus,
        prefetch_factor=4,
        persistent_workers=epochs > 1,
        pin_memory=device.type == "cuda",
        multiprocessing_context="fork",
        worker_init_fn=functools.partial(_pin_worker, cores),
    )
    # uint8 images are normalised here, in the consumer (on its device), as the ray path's
    # Train worker does on its own
    on_device = workload.device_steps("train")
    x_col, y_col = workload.spec.input_column, workload.spec.label_column
    out: list[dict] = []
    kept = None  # a full batch on the device, for the model's ceiling
    for _ in range(epochs):
        rows, first = 0, None
        start = time.perf_counter()
        batches = iter(loader)  # workers start here (once, when persistent): part of the wait
        wait = time.perf_counter() - start
        while True:
            t = time.perf_counter()
            item = next(batches, None)
            wait += time.perf_counter() - t
            first = time.perf_counter() - start if first is None else first
            if item is None:
                break
            x, y = item
            rows += len(y)
            batch = {
                x_col: x.to(device, non_blocking=True),
                y_col: y.to(device, non_blocking=True),
            }
            if kept is None or len(kept[y_col]) < len(y):
                kept = dict(batch)  # the device transforms replace columns in place
            if on_device:
                batch = on_device(batch, "train")
            if step is not None:
                step(batch)
        if step is not None:
            step.sync()
        seconds = time.perf_counter() - start
        out.append({"rows": rows, "seconds": seconds, "ttfb_s": first, "wait_s": wait})
    del batches, loader  # the persistent workers end here
    r = {
        "rows": sum(e["rows"] for e in out),
        "seconds": sum(e["seconds"] for e in out),
        "ttfb_s": out[0]["ttfb_s"],
        "data_wait_fraction": sum(e["wait_s"] for e in out)
        / max(sum(e["seconds"] for e in out), 1e-9),
        "epochs": out,
    }
    if step is not None:
        r["device"] = str(device)
        r["model_ceiling"] = measure_ceiling(step, kept, on_device)
        del step
        if device.type == "cuda":  # the ray path's train worker gets the GPU's memory
            torch.cuda.empty_cache()
    return r


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

    from pipeline.bench.model_step import ModelStep, measure_ceiling
    from pipeline.train.context import node_object_store_bytes, train_stream

    loop_start = time.time()
    workload = config["workload"]
    cfg = workload.cfg
    y_col = workload.spec.label_column
    # first, as in the training loop: Ray Data's split coordinator starts while the model is
    # built, so a loop with a model waits less for its first batch than one without
    shard_at = time.time()
    shard = ray.train.get_dataset_shard("train")
    device = ray.train.torch.get_device()
    step = None
    if config.get("model"):  # the same model step as the dataloader path's
        step = ModelStep(config["model"], workload, device, prepare=ray.train.torch.prepare_model)
    on_device = workload.device_steps("train")  # uint8 images: normalised here, as in training
    store = node_object_store_bytes()
    epochs = []
    first_batch_at = None
    kept = None  # a full batch as delivered (on the device), for the model's ceiling
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
            if step is not None and (kept is None or len(kept[y_col]) < len(batch[y_col])):
                kept = dict(batch)  # the device transforms replace columns in place
            if on_device:
                batch = on_device(batch, "train")
            if step is not None:
                step(batch)
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
    loop_end = time.time()
    ceiling = measure_ceiling(step, kept, on_device) if step is not None and kept else None
    collector = ray.get_actor(config["collector"])
    ray.get(
        collector.put.remote(
            {
                "epochs": epochs,
                "loop_start": loop_start,
                "shard_to_first_batch_s": first_batch_at and first_batch_at - shard_at,
                "stream_start": stream_start,
                "loop_end": loop_end,
                "ceiling_s": time.time() - loop_end,
                "model_ceiling": ceiling,
                "device": str(device),
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
        # the model's ceiling is measured after the last epoch: not tear-down
        "teardown_s": fit_end - out["loop_end"] - out["ceiling_s"],
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
        r["device"] = out["device"]
        if out["model_ceiling"]:
            r["model_ceiling"] = out["model_ceiling"]
    return r


def spilled_bytes() -> int:
    """Bytes the object store has spilled to disk so far (Ray's own memory summary)."""
    import ray
    from ray._private.internal_api import memory_summary

    text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    m = re.search(r"Spilled (\d+) MiB", text)
    return int(m.group(1)) << 20 if m else 0
