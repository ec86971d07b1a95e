"""The bench's synthetic dataset: written once, uploaded to S3, opened as a file list."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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


DATASETS = ("synthetic", "jpeg224")  # MNIST-sized PNGs; photo-sized JPEGs cropped to 224
PHOTO_SIDES = (256, 500)  # jpeg224: each side drawn in this range, as ImageNet's photos
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def ensure_local_dataset(
    workdir: Path, rows: int, cfg: PipelineConfig, dataset: str = "synthetic"
) -> Path:
    """The bench dataset under ``workdir``, written once and reused while rows match."""
    from pipeline.prepare import prepare, synthetic_source

    root = workdir / f"{dataset}-{rows}"
    manifest = root / "_manifest.json"
    if manifest.exists():
        m = json.loads(manifest.read_text())
        if m["splits"]["train"]["rows"] + m["splits"]["validation"]["rows"] == rows:
            return root
    print(f"bench: writing {rows} {dataset} rows to {root}", flush=True)
    source = synthetic_source(rows) if dataset == "synthetic" else photo_source(rows)
    # almost everything in train: the bench streams the train split
    prepare(source, str(root), cfg.s3, validation_fraction=0.001, overwrite=True)
    return root


def configure_dataset(cfg: PipelineConfig, dataset: str, manifest: dict) -> None:
    """The dataset's facts, and for jpeg224 the preprocessing photos get: RandomResizedCrop to
    224, horizontal flip, ImageNet's mean and std (no shift, brightness or noise)."""
    from pipeline.config import Augmentation

    cfg.data.image_shape = tuple(manifest["image_shape"])
    cfg.data.num_classes = manifest["num_classes"]
    cfg.data.image_encoding = manifest["encoding"]
    if dataset == "jpeg224":
        pre = cfg.data.preprocessing
        pre.mean, pre.std = list(IMAGENET_MEAN), list(IMAGENET_STD)
        pre.augmentation = Augmentation(
            random_resized_crop=224, horizontal_flip=True, max_shift_px=0, brightness=0
        )


def _photo(args: tuple[int, int]) -> tuple[bytes, int]:
    """One synthetic photo: a smooth colour field in three octaves (sky, light, shading), a few
    textured shapes whose colour says the class, sensor noise; JPEG at quality 92. Smooth
    regions and edges, not noise, so it compresses as photos do."""
    import io

    from PIL import Image, ImageDraw

    seed, label = args
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(PHOTO_SIDES[0], PHOTO_SIDES[1] + 1, size=2))
    field = np.zeros((h, w, 3), np.float32)
    for cells, amplitude in ((3, 90.0), (12, 35.0), (48, 15.0), (160, 10.0)):
        small = rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8)
        up = Image.fromarray(small).resize((w, h), Image.BICUBIC)
        field += (np.asarray(up, np.float32) - 128) * (amplitude / 128)
    field += 128
    img = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    hue = np.array([(label * 37) % 256, (label * 91 + 60) % 256, (label * 53 + 120) % 256])
    for _ in range(int(rng.integers(1, 5))):
        cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        rx, ry = rng.uniform(0.08, 0.3) * w, rng.uniform(0.08, 0.3) * h
        colour = tuple(int(c) for c in np.clip(hue + rng.normal(0, 20, 3), 0, 255))
        box = (cx - rx, cy - ry, cx + rx, cy + ry)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    arr = np.asarray(img, np.float32)
    arr += rng.normal(0, 6, arr.shape).astype(np.float32)  # texture and sensor noise
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=92)
    return buf.getvalue(), label


def photo_source(rows: int, seed: int = 0):
    """``rows`` synthetic photos (``_photo``) of 10 classes, 256-500 px a side, as JPEG."""
    import multiprocessing as mp

    from pipeline.prepare import Source

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=rows)
    jobs = [(seed * 1_000_003 + i, int(labels[i])) for i in range(rows)]
    with mp.get_context("fork").Pool(os.cpu_count() or 1) as pool:
        made = pool.map(_photo, jobs, chunksize=64)
    return Source(
        "jpeg224",
        [b for b, _ in made],
        labels.astype(np.int64),
        (224, 224, 3),  # what the preprocessing makes of them (random_resized_crop)
        "jpeg",
        [str(i) for i in range(10)],
        {"seed": seed, "sides": list(PHOTO_SIDES)},
    )


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
    from pipeline.preflight import local_workload
    from pipeline.sources.parquet import ParquetSplit

    return local_workload(cfg, ParquetSplit("train", ds.loc, ds.files))


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
