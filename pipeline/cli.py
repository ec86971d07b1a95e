"""``ray-pipeline``: prepare, train, demo (and bench, submit, status).

User mistakes (PipelineError) are caught once, here, and printed as one line; a traceback
only with --debug.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from pipeline import __version__
from pipeline.config import PipelineConfig, load_config
from pipeline.errors import PipelineError

CONFIG_ENV = "RAY_PIPELINE_CONFIG"  # the Helm chart mounts the config and sets this


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        "-c",
        default=os.environ.get(CONFIG_ENV),
        help=f"YAML config file (default: ${CONFIG_ENV}, else built-in defaults)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=5 (repeatable)",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="show everything Ray and its workers print (hidden by default)",
    )


def _address(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address",
        default=None,
        help="Ray address (default: $RAY_ADDRESS, else start a local Ray in this process)",
    )


def _user_code(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--working-dir",
        help="a folder of your code (model, preprocessing, loop) shipped to every Ray node as "
        "the job's working_dir: through the run's S3 bucket when storage.checkpoint_uri is "
        "s3://, else uploaded to the cluster by Ray",
    )
    p.add_argument(
        "--pip",
        help="requirements installed on every Ray node for this job: a requirements file, or "
        "names separated by commas",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ray-pipeline",
        description="Parquet on S3/MinIO -> Ray Data on the CPU group -> Ray Train on the GPU "
        "group.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="write an image dataset as Parquet (train + validation)")
    _common(p)
    p.add_argument("source", choices=["digits", "synthetic", "imagefolder"])
    p.add_argument("directory", nargs="?", help="imagefolder: root with one sub-folder per class")
    p.add_argument("--out", help="local path or s3:// URI (default: parent of data.train_uri)")
    p.add_argument("--rows", type=int, default=60_000, help="synthetic: number of rows")
    p.add_argument("--encoding", choices=["png", "jpeg", "raw"], default="png")
    p.add_argument("--image-size", help="imagefolder: resize every image to HxW, e.g. 64x64")
    p.add_argument("--validation-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--layout",
        choices=["folders", "huggingface"],
        default="folders",
        help="folders: train/part-N.parquet; huggingface: data/train-N-of-M.parquet with an "
        "Image struct column and class names, as Hugging Face's datasets writes them",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing Parquet files")
    p.add_argument("--create-bucket", action="store_true", help="create the S3 bucket if missing")
    p.add_argument(
        "--format",
        choices=["parquet", "iceberg"],
        default="parquet",
        help="iceberg: one table with a `split` column, in the catalog of data.catalog / "
        "--catalog, named by --table",
    )
    p.add_argument(
        "--catalog",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="iceberg: a catalog property (type=sql, uri=sqlite:///..., warehouse=s3://...)",
    )
    p.add_argument("--table", help="iceberg: <namespace>.<table> (default: data.table)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train on the cluster (resumes a run with checkpoints)")
    _common(p)
    _address(p)
    _user_code(p)
    p.add_argument(
        "--wait-for-run",
        action="store_true",
        help="when another live run holds this run's name (storage.run_name), wait for it to "
        "end instead of refusing (exit 2)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="embedded default: local Ray, local files, digits, small CNN")
    _common(p)
    p.add_argument("--workdir", default="demo-output", help="where data and checkpoints go")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="measure ingest: limit, raw read, DataLoader, the Ray path")
    _common(p)
    _address(p)
    p.add_argument("--rows", type=int, default=200_000, help="synthetic dataset size")
    p.add_argument("--workdir", default="bench-data", help="where the dataset is cached")
    p.add_argument("--storage", default="local,s3", help="comma-separated: local, s3")
    p.add_argument("--paths", default="limit,raw_read,dataloader,ray", help="comma-separated")
    p.add_argument("--data-cpus", type=int, help="data cores (default: all of this machine's)")
    p.add_argument(
        "--s3-uri",
        help="dataset location on S3 (default: a bucket on s3.endpoint, "
        "or on a local moto server when no endpoint is set)",
    )
    p.add_argument(
        "--model",
        choices=["simple_cnn", "resnet18"],
        help="also step this model, as the built-in loop does, in the ray and dataloader paths on "
        "the same device (train.use_gpu): rows/s it trained on, the data-wait share of each "
        "step, its ceiling on a batch kept on the device (the GPU ceiling), and the data-group "
        "CPUs per train worker that keep it fed (add limit to --paths for a per-core rate on a "
        "cluster)",
    )
    p.add_argument(
        "--epochs", type=int, default=1, help="epochs of the ray, dataloader and mosaic paths"
    )
    p.add_argument(
        "--memory-check",
        action="store_true",
        help="also run the Ray path over 1x and 5x the object store's size of data",
    )
    p.add_argument("--object-store-mb", type=int, default=100, help="object store of the local Ray")
    p.add_argument(
        "--layout",
        choices=["shared", "pinned"],
        default="shared",
        help="pinned: start a local head/data/train cluster with the data node's processes on "
        "their own cores (--data-cpus, default half), the rest on the others; limit, "
        "dataloader and mosaic run on the same data cores",
    )
    p.add_argument(
        "--dataset",
        choices=["synthetic", "jpeg224"],
        default="synthetic",
        help="synthetic: MNIST-sized PNGs; jpeg224: photos of 256-500 px as JPEG, "
        "RandomResizedCrop to 224, flip, normalise",
    )
    p.add_argument(
        "--ship",
        choices=["float32", "uint8"],
        help="uint8 (data.preprocessing.normalise_on=train): images leave the data group as "
        "uint8 and the train worker normalises them; float32 (normalise_on=data): the data "
        "group does; default: as the config says (train unless set)",
    )
    p.add_argument(
        "--mosaic-python",
        help="the mosaic path's interpreter, an environment with mosaicml-streaming "
        "(default: this one, if it has it)",
    )
    p.add_argument(
        "--timeline",
        help="write Ray's task timeline of the ray path to this file, one per storage "
        "(t.json -> t-local.json): a Chrome trace of actor starts, planning and data tasks",
    )
    p.add_argument("--json", dest="json_path", help="write the figures to this file")
    p.set_defaults(func=cmd_bench)

    from pipeline import k8s, report

    report.register(sub)  # report
    k8s.register(sub)  # submit, status
    return parser


def _load(args) -> PipelineConfig:
    return load_config(args.config, args.overrides)


TASK_METRIC = {"classification": "val_accuracy", "regression": "val_mae"}


def compact_summary(summary: dict) -> dict:
    """The last line of a run: its headline figures and where the rest is (summary.json keeps
    the per-epoch history)."""
    metric = TASK_METRIC.get(summary.get("task"), "val_accuracy")
    out = {"run_name": summary.get("run_name"), "epochs": summary.get("epochs")}
    metrics = summary.get("metrics") or {}
    if metric in metrics:
        out[metric] = metrics[metric]
    else:  # a user's loop that reports other figures: all of its validation ones
        out.update({k: v for k, v in metrics.items() if k.startswith("val_")})
    for key in ("rows_per_s", "data_wait_fraction", "wall_s", "checkpoint", "summary_uri"):
        out[key] = summary.get(key)
    return out


def _human_lines(summary: dict, compact: dict) -> list[str]:
    shown = [
        f"{k} {v:.4f}" for k, v in compact.items() if k.startswith("val_") and v is not None
    ] or ["no validation metric reported"]
    wait = summary.get("data_wait_fraction") or 0.0
    lines = [
        f"done: {', '.join(shown)} after {summary.get('epochs')} epochs in "
        f"{summary.get('wall_s', 0):.0f}s ({summary.get('rows_per_s', 0):,.0f} rows/s, "
        f"data wait {100 * wait:.0f}%)",
    ]
    skipped = (summary.get("bad_records") or {}).get("skipped_rows") or {}
    total = sum(sum(v.values()) for v in skipped.values() if isinstance(v, dict))
    if total:
        lines.append(f"skipped records in the last epoch: {total} (see summary.json)")
    if summary.get("startup"):
        from pipeline.phases import describe

        lines.append(describe(summary["startup"], summary.get("teardown") or {}))
    lines.append(f"checkpoint: {summary.get('checkpoint')}")
    lines.append(f"summary:    {summary.get('summary_uri')}")
    return lines


def _print_summary(summary: dict) -> None:
    compact = compact_summary(summary)
    for line in _human_lines(summary, compact):
        print(line, file=sys.stderr)
    sys.stderr.flush()
    print(json.dumps(compact, sort_keys=True, default=str), flush=True)


def _prepare_table(args, cfg, src) -> int:
    """prepare --format iceberg: one table with a split column."""
    from pipeline.prepare_table import split_table, write_iceberg

    catalog = dict(cfg.data.catalog)
    for item in args.catalog:
        key, sep, value = item.partition("=")
        if not sep:
            raise PipelineError(f"--catalog {item}: expected KEY=VALUE")
        catalog[key] = value
    cfg.data.catalog = catalog
    name = args.table or cfg.data.table or f"default.{src.name}"
    t = time.monotonic()
    table = split_table(src, args.validation_fraction, args.seed)
    written = write_iceberg(table, cfg, name, overwrite=args.overwrite)
    print(
        f"wrote {table.num_rows} rows to iceberg table {name} (snapshot {written['snapshot']}, "
        f"{time.monotonic() - t:.1f}s)",
        file=sys.stderr,
    )
    settings = [
        "data.format=iceberg",
        f"data.table={name}",
        "data.split_column=split",
        *(f"data.catalog.{k}={v}" for k, v in catalog.items()),
    ]
    print("train it with: " + " ".join(f"--set {o}" for o in settings), file=sys.stderr)
    print(json.dumps({**written, "format": "iceberg", "source": src.name}), flush=True)
    return 0


def cmd_prepare(args) -> int:
    from pipeline import prepare as prep

    cfg = _load(args)
    out = args.out
    train_uri = (cfg.data.train_uri or "").rstrip("/")
    if out is None and train_uri.endswith("/train"):  # splits named one by one
        out = train_uri[: -len("/train")]
    out = out or cfg.data.uri
    if out is None:
        raise PipelineError("--out is required when data.uri is not set")
    if args.source == "digits":
        src = prep.digits_source(args.encoding)
    elif args.source == "synthetic":
        src = prep.synthetic_source(args.rows, args.encoding, args.seed)
    else:
        if not args.directory:
            raise PipelineError("prepare imagefolder needs DIRECTORY (one sub-folder per class)")
        size = _parse_size(args.image_size) if args.image_size else None
        src = prep.imagefolder_source(args.directory, size)
    if args.format != "parquet":
        return _prepare_table(args, cfg, src)
    t = time.monotonic()
    manifest = prep.prepare(
        src,
        out,
        cfg.s3,
        validation_fraction=args.validation_fraction,
        seed=args.seed,
        overwrite=args.overwrite,
        create_bucket=args.create_bucket,
        huggingface=args.layout == "huggingface",
    )
    s = manifest["splits"]
    print(
        f"wrote {s['train']['rows']} train rows in {s['train']['files']} files and "
        f"{s['validation']['rows']} validation rows in {s['validation']['files']} files to "
        f"{manifest['uri']} ({time.monotonic() - t:.1f}s)",
        file=sys.stderr,
    )
    print(
        "train it with: " + " ".join(f"--set {o}" for o in prep.train_overrides(manifest)),
        file=sys.stderr,
    )
    print(json.dumps(manifest, sort_keys=True), flush=True)
    return 0


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        if h < 1 or w < 1:
            raise ValueError
    except ValueError:
        raise PipelineError(f"--image-size {text!r}: expected HxW, e.g. 64x64") from None
    return h, w


def cmd_train(args) -> int:
    from pipeline.runtime_env import read_pip
    from pipeline.train import run_training

    cfg = _load(args)
    pip = read_pip(args.pip)
    summary = run_training(
        cfg, args.address, working_dir=args.working_dir, pip=pip, wait_for_run=args.wait_for_run
    )
    _shutdown_ray(summary)
    _print_summary(summary)
    return 0


def cmd_demo(args) -> int:
    from pipeline import prepare as prep
    from pipeline.train import run_training

    workdir = Path(args.workdir).resolve()
    overrides = [
        f"data.uri={workdir}/digits",
        f"storage.checkpoint_uri={workdir}/runs",
        f"storage.run_name=demo-{time.strftime('%Y%m%d-%H%M%S')}",
        *args.overrides,
    ]
    cfg = load_config(args.config, overrides)
    print(f"demo: preparing scikit-learn digits in {workdir}/digits", file=sys.stderr, flush=True)
    prep.prepare(prep.digits_source(), f"{workdir}/digits", cfg.s3, overwrite=True)
    print(
        f"demo: training {cfg.train.model} for {cfg.train.epochs} epochs on a local Ray",
        file=sys.stderr,
        flush=True,
    )
    summary = run_training(cfg, "local")
    _shutdown_ray(summary)
    _print_summary(summary)
    return 0


def cmd_bench(args) -> int:
    from pipeline.bench import ALL_PATHS, BenchOptions, format_table, run_bench

    cfg = _load(args)
    paths = tuple(p for p in args.paths.split(",") if p)
    unknown = set(paths) - set(ALL_PATHS)
    if unknown:
        raise PipelineError(
            f"--paths: unknown {sorted(unknown)}; choose from {', '.join(ALL_PATHS)}"
        )
    storages = tuple(s for s in args.storage.split(",") if s)
    if set(storages) - {"local", "s3"}:
        raise PipelineError(f"--storage: expected local and/or s3, got {args.storage!r}")
    opts = BenchOptions(
        rows=args.rows,
        workdir=Path(args.workdir),
        storages=storages,
        paths=paths,
        data_cpus=args.data_cpus,
        s3_uri=args.s3_uri,
        model=args.model,
        epochs=args.epochs,
        memory_check=args.memory_check,
        object_store_mb=args.object_store_mb,
        layout=args.layout,
        dataset=args.dataset,
        ship=args.ship,
        mosaic_python=args.mosaic_python,
        timeline=args.timeline,
    )
    results = run_bench(cfg, opts, args.address)
    results["command"] = "ray-pipeline " + " ".join(sys.argv[1:])
    print(format_table(results), flush=True)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=2, sort_keys=True, default=str))
    return 0


def _shutdown_ray(summary: dict | None = None) -> None:
    """Leave Ray (the embedded one stops); a run's summary gets the time it took."""
    import ray

    if ray.is_initialized():
        t = time.monotonic()
        ray.shutdown()
        if summary is not None and "teardown" in summary:
            summary["teardown"]["ray_shutdown"] = round(time.monotonic() - t, 3)


def main(argv: list[str] | None = None) -> int:
    from pipeline import console

    args = build_parser().parse_args(argv)
    console.setup(verbose=getattr(args, "verbose", False), debug=getattr(args, "debug", False))
    try:
        return args.func(args)
    except PipelineError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
