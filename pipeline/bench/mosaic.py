"""The ``mosaic`` path: Mosaic Streaming (MDS shards, ``StreamingDataset`` with a DataLoader of
the same worker count and the same preprocessing), the tool users pick for streaming from S3.

mosaicml-streaming pins numpy<2.2 (and more) where the pipeline does not, so it runs from an
environment of its own (``--mosaic-python``) as a subprocess: ``benchmarks/mosaic_run.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pipeline.bench.dataset import Dataset, bench_workload
from pipeline.config import PipelineConfig
from pipeline.errors import PipelineError

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "benchmarks" / "mosaic_run.py"
SETUP = (
    "python -m venv /tmp/mds-venv && /tmp/mds-venv/bin/pip install mosaicml-streaming "
    "pyspng simplejpeg pydantic pyyaml pyarrow boto3, then --mosaic-python "
    "/tmp/mds-venv/bin/python"
)


def _has_streaming(python: str) -> bool:
    probe = subprocess.run(
        [python, "-c", f"import runpy; runpy.run_path({str(RUNNER)!r})['import_streaming']()"],
        capture_output=True,
    )
    return probe.returncode == 0


def measure_mosaic(
    ds: Dataset,
    cfg: PipelineConfig,
    local_root: Path,
    cpus: int,
    cores,
    python: str | None,
    epochs: int,
) -> dict:
    python = python or sys.executable
    if not _has_streaming(python):
        raise PipelineError(f"--paths mosaic: {python} has no mosaicml-streaming: {SETUP}")
    workload = bench_workload(cfg, ds)
    spec = workload.spec
    pre = spec.preprocess
    # MDS shards from the local copy of the rows (on S3 they are uploaded next to the Parquet)
    files = sorted(str(p) for p in (local_root / "train").glob("*.parquet"))
    name = local_root.name  # <dataset>-<rows>
    args = {
        "parquet_files": files,
        "mds_dir": str(local_root.parent / "mds" / name),
        "cache_dir": str(local_root.parent / "mds-cache" / name),
        "remote": f"s3://ray-pipeline-bench/mds/{name}" if ds.storage == "s3" else None,
        "cores": sorted(cores) if cores else None,
        "workers": cpus,
        "batch_size": cfg.data.batch_size,
        "epochs": epochs,
        "image_column": spec.digest_columns[0],
        "label_column": spec.label_column,
        "preprocess": pre.spec,
        "preprocess_args": pre.args,
        # the consumer applies them (uint8 images: the normalisation), as the ray path does
        "device_transforms": [
            {"field": ref.field, "spec": ref.spec, "args": ref.args}
            for ref in workload.device_transforms
        ],
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if ds.storage == "s3":
        env["S3_ENDPOINT_URL"] = cfg.s3.endpoint or ""
    # the arguments in a file: on the command line they would name the preprocessing, which
    # the CPU sampler reads as a data task's name
    spec_file = local_root.parent / f"mosaic-args-{os.getpid()}.json"
    spec_file.write_text(json.dumps(args))
    try:
        proc = subprocess.run(
            [python, str(RUNNER), str(spec_file)], capture_output=True, text=True, env=env
        )
    finally:
        spec_file.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise PipelineError(f"--paths mosaic failed: {proc.stderr.strip()[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    runs = out["epochs"]
    return {
        "rows": sum(e["rows"] for e in runs),
        "seconds": sum(e["seconds"] for e in runs),
        "ttfb_s": runs[0]["ttfb_s"],
        "epochs": runs,
        "convert_s": out["convert_s"],
    }
