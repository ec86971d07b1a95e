"""The bench's synthetic dataset: written once, uploaded to S3, opened as a file list."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.config import PipelineConfig
from pipeline.errors import PipelineError
from pipeline.storage import Location, list_files, resolve


@dataclass
class Dataset:
    """One copy of the bench dataset: where it is and what it holds."""

    storage: str  # "local" | "s3"
    loc: Location
    files: list[str]
    rows: int
    stored_bytes: int


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
