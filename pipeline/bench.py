"""``ray-pipeline bench``: does the pipeline keep the trainer fed, next to its ceilings?

On one synthetic dataset of encoded images, on local disk and on S3, it measures rows/s of:

- ``limit``: the pipeline's own preprocessing alone, one process per data core, on batches
  already in memory: the CPU ceiling of this machine for this work;
- ``raw_read``: pyarrow reading the files: the storage ceiling;
- ``dataloader``: a PyTorch DataLoader over the same files (workers = data cores) with the
  same preprocessing: what users would pick instead;
- ``ray``: the pipeline's own path (``pipeline.data`` → ``iter_torch_batches`` inside a Train
  worker), timed inside the loop from the first request to the last batch;

plus time to first batch (the loop's wait, and the time from its shard request), fit start-up
and tear-down, peak memory (every process of this run, shared memory counted once, and the
object store) and, with ``--model``, the share of each training step spent waiting for data
and the data-group CPUs per train worker that keep that model fed.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.config import PipelineConfig
from pipeline.errors import PipelineError
from pipeline.storage import Location, list_files, resolve, resolve_endpoint

PATHS = ("limit", "raw_read", "dataloader", "ray")


@dataclass
class Dataset:
    """One copy of the bench dataset: where it is and what it holds."""

    storage: str  # "local" | "s3"
    loc: Location
    files: list[str]
    rows: int
    stored_bytes: int


# --- memory ---------------------------------------------------------------------------------


# Who used the CPU during a measurement: by what a process was seen doing (Ray renames
# its workers "ray::<task>" while they run one).
ROLES = (
    ("data tasks", ("ReadParquet", "MapBatches", "preprocess")),
    ("train worker", ("RayTrainWorker",)),
    ("ray data coordinator", ("SplitCoordinator",)),
    (
        "ray system",
        (
            "raylet",
            "gcs_server",
            "dashboard",
            "Dashboard",
            "log_monitor",
            "monitor.py",
            "runtime_env",
            "TrainController",
            "_StatsActor",
            "AutoscalingCoordinator",
            "PlacementGroupCleaner",
            "PreemptionWatcher",
            "DatasetManager",
        ),
    ),
)


class ProcessSampler:
    """Peak memory and CPU time by role of this process and all its descendants (the local
    Ray, DataLoader workers), sampled every ``interval_s``.

    Memory is PSS, which splits shared pages among the processes that map them, so the object
    store's shared memory is counted once, not once per worker; it is read from smaps_rollup,
    which costs the kernel little: the sampler must not steal the CPU it measures."""

    def __init__(self, interval_s: float = 1.0):
        self.interval_s = interval_s
        self.peak = 0
        self._names: dict[int, set[str]] = {}
        self._samples: list[tuple[float, dict[int, float]]] = []  # (time.time(), pid -> cpu s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _pss(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        return int(line.split()[1]) << 10
        except OSError:
            pass
        return 0

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        try:
            procs = [me, *me.children(recursive=True)]
        except psutil.Error:
            procs = [me]
        total = 0
        cpu: dict[int, float] = {}
        for p in procs:
            try:
                cpu[p.pid] = sum(p.cpu_times()[:2])
                name = " ".join(p.cmdline()[:3])
            except psutil.Error:
                continue
            self._names.setdefault(p.pid, set()).add(name)
            total += self._pss(p.pid)
        self._samples.append((time.time(), cpu))
        self.peak = max(self.peak, total)

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()

    def cpu_by_role(self, window: tuple[float, float] | None = None) -> dict[str, float]:
        """Average cores each role used, over the measurement or a (time.time()) window of it."""
        samples = self._samples
        if window is not None:
            inside = [x for x in samples if window[0] <= x[0] <= window[1]]
            samples = inside if len(inside) >= 2 else samples
        (t0, first), t1 = samples[0], samples[-1][0]
        seconds = max(t1 - t0, 1e-9)
        last_cpu: dict[int, float] = {}
        for _, cpu in samples:
            last_cpu.update(cpu)  # each process's last reading, also of those that ended
        me = os.getpid()
        mine = " ".join(self._names.get(me, ()))
        out: dict[str, float] = {}
        for pid, last in last_cpu.items():
            names = " ".join(self._names.get(pid, ()))
            if pid == me:
                role = "bench process"
            elif names == mine:
                role = "forked workers"  # the limit's pool, the DataLoader's workers
            else:
                role = "other"
            for candidate, markers in ROLES:
                if any(m in names for m in markers):
                    role = candidate
                    break
            # a process born inside the window counts from zero; its last second before it
            # ended is missed (the sampler reads every second)
            out[role] = out.get(role, 0.0) + (last - first.get(pid, 0.0)) / seconds
        return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


# --- dataset ----------------------------------------------------------------------------------


def ensure_local_dataset(workdir: Path, rows: int, cfg: PipelineConfig) -> Path:
    """The synthetic dataset under ``workdir``, written once and reused while rows match."""
    from pipeline.prepare import prepare, synthetic_source

    root = workdir / f"synthetic-{rows}"
    manifest = root / "_manifest.json"
    if manifest.exists():
        m = json.loads(manifest.read_text())
        if m["splits"]["train"]["rows"] + m["splits"]["validation"]["rows"] == rows:
            return root
    print(f"bench: writing {rows} synthetic rows to {root}", flush=True)
    # almost everything in train: the bench streams the train split
    prepare(synthetic_source(rows), str(root), cfg.s3, validation_fraction=0.001, overwrite=True)
    return root


def upload(local_root: Path, uri: str, cfg: PipelineConfig) -> None:
    from pipeline.storage import check_bucket

    loc = resolve(uri, cfg.s3, "--s3-uri", create_bucket=True)
    check_bucket(loc, cfg.s3, create=True)
    existing = {os.path.basename(p) for p in list_files(loc)} if _exists(loc) else set()
    local = sorted((local_root / "train").glob("*.parquet"))
    if {p.name for p in local} == existing:
        return
    print(f"bench: uploading {len(local)} files to {uri}", flush=True)
    for p in local:
        pafs.copy_files(str(p), loc.join(p.name), destination_filesystem=loc.fs)


def bench_workload(cfg: PipelineConfig, ds: Dataset):
    """The image workload of the bench's dataset, checked on its first rows (no Ray)."""
    from pipeline.datasets import Split
    from pipeline.preflight import local_workload

    return local_workload(cfg, Split("train", ds.loc, ds.files))


def _exists(loc: Location) -> bool:
    return loc.fs.get_file_info(loc.path).type != pafs.FileType.NotFound


def open_dataset(storage: str, uri: str, cfg: PipelineConfig) -> Dataset:
    loc = resolve(uri, cfg.s3, "bench dataset")
    files = list_files(loc)
    infos = loc.fs.get_file_info(files)
    rows = 0
    for path in files:
        with loc.fs.open_input_file(path) as f:
            rows += pq.ParquetFile(f).metadata.num_rows
    return Dataset(storage, loc, files, rows, sum(i.size for i in infos))


def subset(ds: Dataset, rows: int) -> Dataset:
    """The first files of ``ds`` holding at least ``rows`` rows."""
    files, total, size = [], 0, 0
    infos = dict(zip(ds.files, ds.loc.fs.get_file_info(ds.files), strict=True))
    for path in ds.files:
        with ds.loc.fs.open_input_file(path) as f:
            n = pq.ParquetFile(f).metadata.num_rows
        files.append(path)
        total += n
        size += infos[path].size
        if total >= rows:
            break
    return Dataset(ds.storage, ds.loc, files, total, size)


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


def measure_limit(ds: Dataset, workload, cpus: int) -> dict:
    """Preprocessing alone: in-memory batches, one forked process per data core."""
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
    with ctx.Pool(cpus) as pool:
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


def measure_dataloader(ds: Dataset, workload, cpus: int) -> dict:
    from torch.utils.data import DataLoader, IterableDataset

    stream = type("ParquetStream", (_ParquetStream, IterableDataset), {})(
        ds, workload, workload.cfg.data.batch_size
    )
    loader = DataLoader(
        stream, batch_size=None, num_workers=cpus, prefetch_factor=4, multiprocessing_context="fork"
    )
    rows = 0
    start = time.perf_counter()
    first = None
    for _, y in loader:
        if first is None:
            first = time.perf_counter() - start
        rows += len(y)
    return {"rows": rows, "seconds": time.perf_counter() - start, "ttfb_s": first}


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

    from pipeline.train.context import torch_dtypes
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
    epochs = []
    first_batch_at = None
    stream_start = time.time()
    for _ in range(config["epochs"]):
        rows, wait, first = 0, 0.0, None
        started_at = time.time()
        d = cfg.data
        batches = iter(
            shard.iter_torch_batches(
                batch_size=d.batch_size,
                prefetch_batches=d.prefetch_batches,
                device=device,
                dtypes=torch_dtypes(workload.dtypes["train"]),
                pin_memory=device.type == "cuda",
                local_shuffle_buffer_size=d.local_shuffle_buffer or None,
            )
        )
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
    ds: Dataset, cfg: PipelineConfig, workdir: Path, *, model: str | None, epochs: int
) -> dict:
    import ray

    from pipeline.cluster import warm_up_data_workers
    from pipeline.data import build_dataset
    from pipeline.datasets import Split
    from pipeline.train import build_trainer

    name = f"bench-collector-{time.time_ns()}"
    collector = ray.remote(_Collector).options(name=name, num_cpus=0).remote()
    workload = bench_workload(cfg, ds)
    train = build_dataset(
        Split("train", ds.loc, ds.files),
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


# --- the run ----------------------------------------------------------------------------------


@dataclass
class BenchOptions:
    rows: int = 200_000
    workdir: Path = Path("bench-data")
    storages: tuple[str, ...] = ("local", "s3")
    paths: tuple[str, ...] = PATHS
    data_cpus: int | None = None
    s3_uri: str | None = None  # default: s3://ray-pipeline-bench/synthetic-N on moto or s3.endpoint
    model: str | None = None
    epochs: int = 1
    memory_check: bool = False
    object_store_mb: int = 100


def start_moto() -> tuple[str, object]:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise PipelineError(
            "the S3 bench needs an endpoint: pass --set s3.endpoint=... or install moto[server] "
            "(the dev extra) for a local one"
        ) from None
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request
    server.start()
    for k, v in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}.items():
        os.environ.setdefault(k, v)
    return f"http://127.0.0.1:{port}", server


def run_bench(cfg: PipelineConfig, opts: BenchOptions, address: str | None) -> dict:
    from pipeline.cluster import EMBEDDED, connect, without_selectors

    workdir = opts.workdir.resolve()
    local_root = ensure_local_dataset(workdir, opts.rows, cfg)
    cfg = cfg.model_copy(deep=True)
    meta = json.loads((local_root / "_manifest.json").read_text())
    cfg.data.image_shape = tuple(meta["image_shape"])
    cfg.data.num_classes = meta["num_classes"]
    cfg.data.image_encoding = meta["encoding"]

    moto = None
    datasets: dict[str, Dataset] = {}
    if "local" in opts.storages:
        datasets["local"] = open_dataset("local", str(local_root / "train"), cfg)
    if "s3" in opts.storages:
        if resolve_endpoint(cfg.s3).override is None and opts.s3_uri is None:
            endpoint, moto = start_moto()
            cfg.s3.endpoint = endpoint
            cfg.s3.scheme = "http"
        uri = opts.s3_uri or f"s3://ray-pipeline-bench/synthetic-{opts.rows}/train"
        upload(local_root, uri, cfg)
        datasets["s3"] = open_dataset("s3", uri, cfg)

    cpus = opts.data_cpus or os.cpu_count() or 1
    results: dict = {"rows": opts.rows, "data_cpus": cpus, "storages": {}}
    embedded = None
    try:
        if "ray" in opts.paths:
            # embedded: data gets every core; the Train worker only iterates (and steps a
            # model), placed by a custom resource so that it takes no data core
            embedded = (
                connect(
                    address,
                    num_cpus=cpus,
                    resources={"bench_trainer": 1},
                    object_store_memory=opts.object_store_mb << 20,
                )
                == EMBEDDED
            )
            if embedded:
                cfg = without_selectors(cfg)
                cfg.train.resources_per_worker = {"CPU": 0, "bench_trainer": 1}
        for name, ds in datasets.items():
            workload = bench_workload(cfg, ds)
            per: dict = {
                "files": len(ds.files),
                "rows": ds.rows,
                "bytes_per_row": ds.stored_bytes / ds.rows,
            }
            for path in opts.paths:
                if path == "limit" and name != "local" and "local" in datasets:
                    per["limit"] = results["storages"]["local"]["limit"]  # storage plays no part
                    continue
                print(f"bench: {name} {path} ...", flush=True)
                with ProcessSampler() as mem:
                    if path == "limit":
                        r = measure_limit(ds, workload, cpus)
                    elif path == "raw_read":
                        r = measure_raw_read(ds, workload)
                    elif path == "dataloader":
                        r = measure_dataloader(ds, workload, cpus)
                    else:
                        r = measure_ray(ds, cfg, workdir, model=opts.model, epochs=opts.epochs)
                r["rows_per_s"] = r["rows"] / r["seconds"]
                r["mb_per_s"] = r["rows_per_s"] * per["bytes_per_row"] / 1e6
                r["peak_memory_bytes"] = mem.peak
                # the ray path: while batches stream (not Train's start-up and tear-down)
                r["cpu_cores_by_role"] = mem.cpu_by_role(r.pop("stream_window", None))
                role = {"dataloader": "forked workers", "ray": "data tasks"}.get(path)
                if role:  # the limit's workers time themselves (the sampler misses short runs)
                    r["data_cores"] = r["cpu_cores_by_role"].get(role, 0.0)
                if r.get("data_cores", 0) >= 0.1:  # below, a second's sampling is mostly noise
                    # what bounds a path: cores its preprocessing got x rows per such core
                    r["rows_per_data_core_s"] = r["rows_per_s"] / r["data_cores"]
                per[path] = r
            if opts.model and "ray" in per:
                per["advice"] = advise_data_cpus(per, opts.model)
            results["storages"][name] = per
        if opts.memory_check and "ray" in opts.paths:
            results["memory_check"] = memory_check(
                datasets.get("local") or datasets["s3"], cfg, workdir, opts
            )
    finally:
        if embedded:
            import ray

            ray.shutdown()
        if moto is not None:
            moto.stop()
    return finalize(results, opts)


def memory_check(ds: Dataset, cfg: PipelineConfig, workdir: Path, opts: BenchOptions) -> dict:
    """The ray path over 1x and 5x the object store's size of (decoded) data."""
    decoded_row = bench_workload(cfg, ds).spec.row_bytes
    store = opts.object_store_mb << 20
    out = {"object_store_bytes": store, "decoded_bytes_per_row": decoded_row}
    for factor in (1, 5):
        part = subset(ds, int(factor * store / decoded_row))
        print(f"bench: memory {factor}x ({part.rows} rows) ...", flush=True)
        with ProcessSampler() as mem:
            r = measure_ray(part, cfg, workdir, model=None, epochs=1)
        out[f"{factor}x"] = {
            "rows": part.rows,
            "decoded_bytes": part.rows * decoded_row,
            "peak_memory_bytes": mem.peak,
            "spilled_bytes": r["spilled_bytes"],
            "rows_per_s": r["rows"] / r["seconds"],
        }
    out["peak_ratio_5x_to_1x"] = out["5x"]["peak_memory_bytes"] / out["1x"]["peak_memory_bytes"]
    return out


# Above the bare need: the cost of augmentation varies from batch to batch, and a model's
# rate varies with its inputs; a data group run at 80% keeps up with both.
ADVICE_HEADROOM = 1.25


def advise_data_cpus(per: dict, model: str) -> dict:
    """Data-group CPUs per train worker that keep ``model`` fed: the rows/s its steps take when
    they never wait, over the rows/s one data core preprocesses, plus headroom.

    The per-core rate is the ray path's own when the bench could time its data tasks (at least
    0.1 of a core, on the embedded Ray: on a cluster they run on other machines), else the
    limit's, measured on the machine running the bench: usually above what the ray path
    reaches (0.65-0.88 of it on the 2-core machine of benchmarks/RESULTS.md), so the advice
    is then a floor. Without either rate, ``data_cpus_per_train_worker`` is None and
    ``missing`` says what to add."""
    ray_path = per["ray"]
    need = ray_path.get("model_rows_per_s") or 0.0
    out: dict = {
        "model": model,
        "model_rows_per_s": need,
        "from_first_epoch": len(ray_path["epochs"]) == 1,  # see measure_ray
        "data_cpus_per_train_worker": None,
    }
    source = next((p for p in ("ray", "limit") if per.get(p, {}).get("rows_per_data_core_s")), None)
    if source is None:
        out["missing"] = (
            "no per-core rate: the data tasks used under 0.1 of a core; add limit to --paths"
        )
    elif need <= 0:
        out["missing"] = "no model rate: no rows after the first epoch"
    else:
        per_core = per[source]["rows_per_data_core_s"]
        out.update(
            rows_per_data_core_s=per_core,
            per_core_from=source,
            data_cores_needed=need / per_core,
            data_cpus_per_train_worker=max(1, math.ceil(ADVICE_HEADROOM * need / per_core)),
        )
    return out


def finalize(results: dict, opts: BenchOptions) -> dict:
    """Top-level keys from the primary storage (S3 when measured: the product's path)."""
    primary = "s3" if "s3" in results["storages"] else "local"
    per = results["storages"][primary]
    results["primary_storage"] = primary
    for path in PATHS:
        if path in per:
            results[path] = per[path]["rows_per_s"]
    if "ray" in per:
        results["ttfb_s"] = per["ray"]["ttfb_s"]
        results["peak_memory_bytes"] = per["ray"]["peak_memory_bytes"]
        results["fit_startup_s"] = per["ray"]["fit_startup_s"]
        results["teardown_s"] = per["ray"]["teardown_s"]
        results["data_wait_fraction"] = per["ray"]["data_wait_fraction"]
        if "dataloader" in per:
            results["ray_vs_dataloader"] = (
                per["ray"]["rows_per_s"] / per["dataloader"]["rows_per_s"]
            )
        if "limit" in per:
            results["ray_vs_limit"] = per["ray"]["rows_per_s"] / per["limit"]["rows_per_s"]
        if per.get("advice"):
            results["advised_data_cpus_per_train_worker"] = per["advice"][
                "data_cpus_per_train_worker"
            ]  # None when the advice lacks a rate (see advice.missing)
    results["model"] = opts.model
    return results


def format_table(results: dict) -> str:
    lines = [
        f"{'storage':8} {'path':11} {'rows/s':>10} {'MB/s':>8} {'vs limit':>9} "
        f"{'peak mem':>10}  notes"
    ]
    for name, per in results["storages"].items():
        limit = per.get("limit", {}).get("rows_per_s")
        for path in PATHS:
            if path not in per:
                continue
            r = per[path]
            notes = []
            if r.get("rows_per_data_core_s"):
                notes.append(
                    f"{r['data_cores']:.2f} data cores x "
                    f"{r['rows_per_data_core_s']:.0f} rows/s each"
                )
            if r.get("ttfb_s") is not None:
                notes.append(f"first batch {r['ttfb_s']:.2f}s")
            if r.get("shard_to_first_batch_s") is not None:
                notes.append(f"{r['shard_to_first_batch_s']:.2f}s after the shard request")
            if path == "ray":
                epochs = [e["rows"] / e["seconds"] for e in r["epochs"]]
                if len(epochs) > 1:
                    notes.append(
                        f"epoch 1 {epochs[0]:.0f} rows/s, "
                        f"later {sum(epochs[1:]) / len(epochs[1:]):.0f}"
                    )
                notes += [
                    f"fit start-up {r['fit_startup_s']:.1f}s",
                    f"tear-down {r['teardown_s']:.1f}s",
                ]
                if results.get("model"):  # without a model the loop only waits for data
                    notes.append(
                        f"{results['model']} step waits for data "
                        f"{100 * r['data_wait_fraction']:.0f}%"
                    )
            ratio = f"{r['rows_per_s'] / limit:.2f}x" if limit else "-"
            lines.append(
                f"{name:8} {path:11} {r['rows_per_s']:>10.0f} {r['mb_per_s']:>8.1f} {ratio:>9} "
                f"{r['peak_memory_bytes'] / 2**20:>8.0f}Mi  {', '.join(notes)}"
            )
    for name, per in results["storages"].items():
        for path in ("limit", "dataloader", "ray"):
            if path in per and per[path].get("cpu_cores_by_role"):
                split = ", ".join(
                    f"{k} {v:.2f}" for k, v in per[path]["cpu_cores_by_role"].items() if v >= 0.01
                )
                lines.append(f"cores used, {name} {path}: {split}")
    for name, per in results["storages"].items():
        a = per.get("advice")
        if not a:
            continue
        if a["data_cpus_per_train_worker"] is None:
            lines.append(f"advice, {name}: not computed: {a['missing']}")
            continue
        source, floor = "ray path", ""
        if a["per_core_from"] == "limit":
            source, floor = "limit path, on the machine running the bench", " at least"
        warm = ""
        if a["from_first_epoch"]:
            warm = " (epoch 1 only, with warm-up: --epochs 2 measures it steadier)"
        lines.append(
            f"advice, {name}: {a['model']} takes {a['model_rows_per_s']:.0f} rows/s per train "
            f"worker when it never waits{warm}; one data core preprocesses "
            f"{a['rows_per_data_core_s']:.0f} rows/s ({source}), "
            f"so each train worker needs {a['data_cores_needed']:.2f} data cores: give the data "
            f"group{floor} {a['data_cpus_per_train_worker']} CPU(s) per train worker "
            f"({ADVICE_HEADROOM:.2f}x headroom)"
        )
    mc = results.get("memory_check")
    if mc:
        lines.append(
            f"memory: 1x object store of data ({mc['1x']['rows']} rows) peak "
            f"{mc['1x']['peak_memory_bytes'] / 2**20:.0f}Mi, 5x ({mc['5x']['rows']} rows) peak "
            f"{mc['5x']['peak_memory_bytes'] / 2**20:.0f}Mi: "
            f"ratio {mc['peak_ratio_5x_to_1x']:.2f}; "
            f"spilled {mc['5x']['spilled_bytes'] >> 20} MiB"
        )
    return "\n".join(lines)
