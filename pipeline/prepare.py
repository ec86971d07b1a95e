"""Write an image-classification dataset as Parquet, split into train and validation.

Layout: ``<out>/train/part-NNNNN.parquet``, ``<out>/validation/...``, ``<out>/_manifest.json``.
Images stay encoded (PNG by default), so decoding is real CPU work on the data group.

File and row-group sizes are chosen for streaming reads (see README, "Dataset layout"):
- files of at most ~64 MiB, and at least ``min_files`` of them, so every data CPU has a
  file to read in parallel and S3 GETs stay large;
- row groups of ~4 MiB, so a reader holds little in memory and the first batch comes early;
- the image column uncompressed and without dictionary or statistics (PNG/JPEG bytes do
  not compress further; decompressing them would only burn data-group CPU), the label
  column with statistics so a pre-flight check can see out-of-range labels from footers.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import S3Section
from pipeline.console import FileProgress
from pipeline.errors import DataError, StorageError, first_line
from pipeline.storage import (
    Location,
    check_bucket,
    list_files,
    resolve,
    write_json,
)
from pipeline.workloads.image import encode_image

TARGET_FILE_BYTES = 64 << 20
TARGET_ROW_GROUP_BYTES = 4 << 20
MIN_FILES = 8
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


@dataclass
class Source:
    """An in-memory dataset: encoded images, labels and what they are."""

    name: str
    images: list[bytes]
    labels: np.ndarray
    shape: tuple[int, int, int]
    encoding: str
    classes: list[str]
    extra: dict = field(default_factory=dict)


@dataclass
class Layout:
    rows_per_file: int
    row_group_rows: int


def choose_layout(rows: int, bytes_per_row: float, min_files: int = MIN_FILES) -> Layout:
    """Rows per file and per row group for a split of ``rows`` rows (see module doc)."""
    bytes_per_row = max(bytes_per_row, 1.0)
    per_file = max(1, int(TARGET_FILE_BYTES // bytes_per_row))
    per_file = min(per_file, max(1, math.ceil(rows / min_files)))
    per_group = max(1, min(per_file, int(TARGET_ROW_GROUP_BYTES // bytes_per_row)))
    return Layout(rows_per_file=per_file, row_group_rows=per_group)


# --- sources -------------------------------------------------------------------------------


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)  # 8x8, 0..16 -> 0..255
    return images, d.target.astype(np.int64)


def digits_source(encoding: str = "png") -> Source:
    """The 1,797 handwritten 8x8 digits bundled with scikit-learn: real data, offline."""
    images, labels = _digits_arrays()
    encoded = [encode_image(im, encoding) for im in images]
    return Source("digits", encoded, labels, (8, 8, 1), encoding, [str(i) for i in range(10)])


def synthetic_source(rows: int, encoding: str = "png", seed: int = 0) -> Source:
    """MNIST-shaped (28x28x1) digits: scikit-learn's digits upscaled to 20x20, placed at a
    random offset in a 28x28 canvas, with random contrast and noise. Learnable, any size."""
    from PIL import Image

    if rows < 1:
        raise DataError("synthetic --rows must be >= 1")
    base, base_labels = _digits_arrays()
    up = np.stack(
        [np.asarray(Image.fromarray(b).resize((20, 20), Image.BILINEAR)) for b in base]
    ).astype(np.float32)
    rng = np.random.default_rng(seed)
    encoded: list[bytes] = []
    labels = np.empty(rows, dtype=np.int64)
    chunk = 4096
    progress = FileProgress("prepare: encoding", rows)
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        idx = rng.integers(0, len(base), size=n)
        oy = rng.integers(0, 9, size=n)
        ox = rng.integers(0, 9, size=n)
        contrast = rng.uniform(0.6, 1.0, size=(n, 1, 1)).astype(np.float32)
        canvas = rng.normal(0, 12, size=(n, 28, 28)).astype(np.float32)
        for j in range(n):
            canvas[j, oy[j] : oy[j] + 20, ox[j] : ox[j] + 20] += up[idx[j]] * contrast[j]
        imgs = np.clip(canvas, 0, 255).astype(np.uint8)
        encoded.extend(encode_image(im, encoding) for im in imgs)
        progress.update(len(encoded))
        labels[start : start + n] = base_labels[idx]
    progress.done()
    return Source(
        "synthetic",
        encoded,
        labels,
        (28, 28, 1),
        encoding,
        [str(i) for i in range(10)],
        {"seed": seed},
    )


def imagefolder_source(
    root: str | os.PathLike, size: tuple[int, int] | None = None, channels: int | None = None
) -> Source:
    """Class sub-folders of PNG/JPEG files. Images are stored as they are when they all have
    one size (and mode); with ``size`` (height, width) they are resized and re-encoded."""
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"imagefolder: {root} is not a directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(
            f"imagefolder: {root} needs at least two class sub-folders, found {classes}"
        )
    images: list[bytes] = []
    labels: list[int] = []
    shape: tuple[int, int, int] | None = None
    encodings: set[str] = set()
    for label, cls in enumerate(classes):
        files = sorted(
            p for p in (root / cls).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        for path in files:
            raw = path.read_bytes()
            try:
                with Image.open(path) as img:
                    img.load()
                    c = channels or (1 if img.mode in ("L", "1", "I;16") else 3)
                    mode = "L" if c == 1 else "RGB"
                    fmt = img.format
                    if size is not None or img.mode != mode or fmt not in ("PNG", "JPEG"):
                        target = (size[1], size[0]) if size else img.size
                        im = img.convert(mode).resize(target, Image.BILINEAR)
                        arr = np.asarray(im)
                        raw = encode_image(arr, "png")
                        fmt = "PNG"
                    this = (img.size[1], img.size[0], c) if size is None else (size[0], size[1], c)
            except (UnidentifiedImageError, OSError) as e:
                raise DataError(f"imagefolder: cannot read image {path}: {e}") from None
            if shape is None:
                shape = this
            elif this != shape:
                raise DataError(
                    f"imagefolder: {path} is {this[1]}x{this[0]}x{this[2]} but earlier images are "
                    f"{shape[1]}x{shape[0]}x{shape[2]}; pass --image-size HxW to resize all"
                )
            encodings.add("jpeg" if fmt == "JPEG" else "png")
            images.append(raw)
            labels.append(label)
    if not images:
        raise DataError(f"imagefolder: no .png/.jpg/.jpeg files under {root}")
    if len(encodings) > 1:  # decoding takes one declared encoding; PIL reads both anyway
        encodings = {"png"}
    return Source(
        "imagefolder",
        images,
        np.asarray(labels, dtype=np.int64),
        shape,
        encodings.pop(),
        classes,
        {"root": str(root)},
    )


# --- writing -------------------------------------------------------------------------------


def split_indices(
    labels: np.ndarray, validation_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified shuffle split: every class keeps its share in both splits."""
    if not 0 < validation_fraction < 1:
        raise DataError(f"--validation-fraction must be between 0 and 1, got {validation_fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * validation_fraction))
        if len(idx) > 1:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    train_idx, val_idx = np.concatenate(train), np.concatenate(val)
    rng.shuffle(train_idx)
    rng.shuffle(val_idx)
    return train_idx, val_idx


HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _schema(src: Source, huggingface: bool = False) -> pa.Schema:
    meta = {
        "ray_pipeline": json.dumps(
            {"encoding": src.encoding, "image_shape": list(src.shape), "classes": src.classes}
        )
    }
    if huggingface:  # what `datasets` writes: an Image feature and a ClassLabel with names
        features = {
            "image": {"_type": "Image"},
            "label": {"names": src.classes, "_type": "ClassLabel"},
        }
        meta["huggingface"] = json.dumps({"info": {"features": features}})
        return pa.schema([("image", HF_IMAGE), ("label", pa.int64())], metadata=meta)
    return pa.schema([("image", pa.binary()), ("label", pa.int64())], metadata=meta)


def _image_array(imgs: list[bytes], start: int, huggingface: bool, ext: str = "png") -> pa.Array:
    if not huggingface:
        return pa.array(imgs, type=pa.binary())
    paths = pa.array([f"{start + i:06d}.{ext}" for i in range(len(imgs))], type=pa.string())
    return pa.StructArray.from_arrays(
        [pa.array(imgs, type=pa.binary()), paths], fields=list(HF_IMAGE)
    )


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


def write_split(
    src: Source,
    indices: np.ndarray,
    out: Location,
    split: str,
    layout: Layout | None = None,
    huggingface: bool = False,
) -> dict:
    """One split as Parquet: ``<split>/part-NNNNN.parquet``, or Hugging Face's
    ``data/<split>-NNNNN-of-MMMMM.parquet`` with an Image struct column."""
    schema = _schema(src, huggingface)
    imgs = [src.images[i] for i in indices]
    labels = src.labels[indices]
    bytes_per_row = (sum(len(b) for b in imgs) / max(len(imgs), 1)) + 8
    layout = layout or choose_layout(len(imgs), bytes_per_row)
    directory = out.join("data" if huggingface else split)
    if not out.is_s3:
        os.makedirs(directory, exist_ok=True)
    files = []
    chunks = list(_chunks(len(imgs), layout.rows_per_file))
    progress = FileProgress(f"prepare: {split}", len(imgs))
    for n, (a, b) in enumerate(chunks):
        table = pa.Table.from_arrays(
            [
                _image_array(imgs[a:b], a, huggingface, src.encoding),
                pa.array(labels[a:b], type=pa.int64()),
            ],
            schema=schema,
        )
        name = f"{split}-{n:05d}-of-{len(chunks):05d}" if huggingface else f"part-{n:05d}"
        path = f"{directory}/{name}.parquet"
        try:
            pq.write_table(
                table,
                path,
                filesystem=out.fs,
                row_group_size=layout.row_group_rows,
                compression={"image": "NONE", "label": "ZSTD"},
                use_dictionary=["label"],
                write_statistics=["label"],
            )
        except OSError as e:
            raise StorageError(f"cannot write {out.uri_of(path)}: {first_line(e)}") from None
        files.append(out.uri_of(path))
        progress.update(b, f", {n + 1}/{len(chunks)} files")
    progress.done()
    return {
        "rows": len(imgs),
        "files": len(files),
        "rows_per_file": layout.rows_per_file,
        "row_group_rows": layout.row_group_rows,
        "bytes_per_row": round(bytes_per_row, 1),
        "class_counts": np.bincount(labels, minlength=len(src.classes)).tolist(),
    }


def prepare(
    src: Source,
    out_uri: str,
    s3: S3Section,
    *,
    validation_fraction: float = 0.2,
    seed: int = 0,
    overwrite: bool = False,
    create_bucket: bool = False,
    layout: Layout | None = None,
    huggingface: bool = False,
) -> dict:
    """Split ``src`` and write both splits under ``out_uri``; returns the manifest.
    ``huggingface``: Hugging Face's layout and column types (as `datasets` writes Parquet)."""
    out = resolve(out_uri, s3, "output", create_bucket=create_bucket)
    check_bucket(out, s3, create=create_bucket)
    for split in ("train", "validation"):
        existing = _existing(out, split, huggingface)
        if existing and not overwrite:
            raise StorageError(
                f"{out.uri} already holds {len(existing)} Parquet file(s) of the {split} split; "
                "pass --overwrite to replace them"
            )
        for path in existing:
            out.fs.delete_file(path)
    train_idx, val_idx = split_indices(src.labels, validation_fraction, seed)
    manifest = {
        "source": src.name,
        "encoding": src.encoding,
        "image_shape": list(src.shape),
        "classes": src.classes,
        "num_classes": len(src.classes),
        "seed": seed,
        "layout": "huggingface" if huggingface else "folders",
        **src.extra,
        "splits": {
            "train": write_split(src, train_idx, out, "train", layout, huggingface),
            "validation": write_split(src, val_idx, out, "validation", layout, huggingface),
        },
    }
    write_json(out, "_manifest.json", manifest)
    manifest["uri"] = out.uri
    return manifest


def _existing(out: Location, split: str, huggingface: bool = False) -> list[str]:
    """The split's Parquet files already there (none where the folder does not exist); a
    listing that fails is an error, never an empty folder whose files could be replaced."""
    if huggingface:
        files = list_files(Location(out.uri, out.fs, out.join("data"), "output"), missing_ok=True)
        return [f for f in files if os.path.basename(f).startswith(f"{split}-")]
    return list_files(Location(out.uri, out.fs, out.join(split), "output"), missing_ok=True)


def train_overrides(manifest: dict) -> list[str]:
    """The ``--set`` flags that point training at a prepared dataset."""
    # the splits, the image shape and encoding and the classes are read from the files
    return [f"data.uri={manifest['uri']}"]
