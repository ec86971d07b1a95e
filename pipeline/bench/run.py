"""One bench run: datasets, the paths on each storage, the memory check."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.bench.dataset import (
    Dataset,
    bench_workload,
    configure_dataset,
    ensure_local_dataset,
    open_dataset,
    start_moto,
    subset,
    upload,
)
from pipeline.bench.layout import pinned_cluster, process_on, split_cores
from pipeline.bench.memory import ProcessSampler
from pipeline.bench.mosaic import measure_mosaic
from pipeline.bench.paths import (
    PATHS,
    measure_dataloader,
    measure_limit,
    measure_raw_read,
    measure_ray,
)
from pipeline.bench.report import add_epoch_rates, advise_data_cpus, finalize
from pipeline.config import PipelineConfig
from pipeline.errors import PipelineError
from pipeline.storage import resolve_endpoint


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
    layout: str = "shared"  # "pinned": a local 3-node cluster, the data node on its own cores
    dataset: str = "synthetic"  # or "jpeg224"
    ship: str | None = None  # uint8 = normalise_on train, float32 = data; None: the config's
    mosaic_python: str | None = None  # the interpreter of the mosaic path's environment
    timeline: str | None = None  # the ray path's Ray timeline (Chrome trace), per storage


def timeline_path(path: str, storage: str) -> str:
    """--timeline t.json: t-local.json and t-s3.json, one per storage (in t.json's folder)."""
    p = Path(path)
    return str(p.with_name(f"{p.stem}-{storage}{p.suffix}"))


def run_bench(cfg: PipelineConfig, opts: BenchOptions, address: str | None) -> dict:
    from pipeline.cluster import EMBEDDED, connect, without_selectors

    pinned = split_cores(opts.data_cpus) if opts.layout == "pinned" else None
    if pinned and address:
        raise PipelineError("--layout pinned starts its own local cluster: drop --address")
    workdir = opts.workdir.resolve()
    local_root = ensure_local_dataset(workdir, opts.rows, cfg, opts.dataset)
    cfg = cfg.model_copy(deep=True)
    configure_dataset(cfg, opts.dataset, json.loads((local_root / "_manifest.json").read_text()))
    pre = cfg.data.preprocessing
    if opts.ship is not None:
        pre.normalise_on = "train" if opts.ship == "uint8" else "data"
    ship = "uint8" if pre.normalise_on == "train" else "float32"

    moto = None
    datasets: dict[str, Dataset] = {}
    if "local" in opts.storages:
        datasets["local"] = open_dataset("local", str(local_root / "train"), cfg)
    if "s3" in opts.storages:
        if resolve_endpoint(cfg.s3).override is None and opts.s3_uri is None:
            endpoint, moto = start_moto()
            cfg.s3.endpoint = endpoint
            cfg.s3.scheme = "http"
        uri = opts.s3_uri or f"s3://ray-pipeline-bench/{opts.dataset}-{opts.rows}/train"
        upload(local_root, uri, cfg)
        datasets["s3"] = open_dataset("s3", uri, cfg)

    cores = pinned.data_cores if pinned else None
    cpus = len(pinned.data_cores) if pinned else opts.data_cpus or os.cpu_count() or 1
    results: dict = {
        "rows": opts.rows,
        "data_cpus": cpus,
        "layout": opts.layout,
        "dataset": opts.dataset,
        "ship": ship,
        "storages": {},
    }
    if pinned:
        results["cores"] = {"data": sorted(pinned.data_cores), "other": sorted(pinned.other_cores)}
    embedded = None
    with contextlib.ExitStack() as stack:
        if moto is not None:
            stack.callback(moto.stop)
        if pinned and "ray" in opts.paths:
            address = stack.enter_context(pinned_cluster(pinned, opts.object_store_mb)).address
            cfg.train.use_gpu = False
            cfg.train.resources_per_worker = {"CPU": 1}  # the train node's one CPU
        elif pinned:
            stack.enter_context(process_on(pinned.other_cores))
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
                import ray

                stack.callback(ray.shutdown)
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
                # memory read every 5 s: the --memory-check runs read it every second
                with ProcessSampler(pss_every=5) as mem:
                    if path == "limit":
                        r = measure_limit(ds, workload, cpus, cores)
                    elif path == "raw_read":
                        r = measure_raw_read(ds, workload)
                    elif path == "dataloader":
                        r = measure_dataloader(
                            ds, workload, cpus, cores, epochs=opts.epochs, model=opts.model
                        )
                    elif path == "mosaic":
                        r = measure_mosaic(
                            ds, cfg, local_root, cpus, cores, opts.mosaic_python, opts.epochs
                        )
                    else:
                        r = measure_ray(
                            ds,
                            cfg,
                            workdir,
                            model=opts.model,
                            epochs=opts.epochs,
                            timeline=opts.timeline and timeline_path(opts.timeline, name),
                        )
                r["rows_per_s"] = r["rows"] / r["seconds"]
                add_epoch_rates(r["epochs"])
                r["mb_per_s"] = r["rows_per_s"] * per["bytes_per_row"] / 1e6
                r["peak_memory_bytes"] = mem.peak
                # the ray path: while batches stream (not Train's start-up and tear-down)
                window = r.pop("stream_window", None)
                r["cpu_cores_by_role"] = mem.cpu_by_role(window)
                if pinned:  # what ran on the data cores, process by process
                    r["data_node_cores_by_role"] = mem.cpu_by_role(
                        window, cores=pinned.data_cores, detail=True
                    )
                    r["other_cores_by_role"] = mem.cpu_by_role(
                        window, cores=pinned.other_cores, detail=True
                    )
                role = {"dataloader": "forked workers", "ray": "data tasks"}.get(path)
                if role:  # the limit's workers time themselves (the sampler misses short runs)
                    r["data_cores"] = r["cpu_cores_by_role"].get(role, 0.0)
                if r.get("data_cores", 0) >= 0.1:  # below, a second's sampling is mostly noise
                    # what bounds a path: cores its preprocessing got x rows per such core
                    r["rows_per_data_core_s"] = r["rows_per_s"] / r["data_cores"]
                per[path] = r
            # the model's rows/s on a batch kept on the device: the ray path's train worker's
            # when it ran, else the DataLoader's (the same model on the same device)
            ceiling = next(
                (
                    per[p]["model_ceiling"]
                    for p in ("ray", "dataloader")
                    if "model_ceiling" in per.get(p, {})
                ),
                None,
            )
            if ceiling:
                per["model_ceiling"] = ceiling
            if opts.model and "ray" in per:
                per["advice"] = advise_data_cpus(per, opts.model)
            results["storages"][name] = per
        if opts.memory_check and "ray" in opts.paths:
            results["memory_check"] = memory_check(
                datasets.get("local") or datasets["s3"], cfg, workdir, opts
            )
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
