"""The built-in image workload's preprocessing, as pure functions: numpy in, numpy out.

decode -> augment (training only, random per batch, so every epoch differs) -> normalise.
``preprocess`` is what the pipeline calls on the data group when ``data.preprocess`` is unset;
it plugs in exactly as a user's preprocessing does (a batch of columns in, columns and the
records it could not use out). By default it ships uint8 and the train worker's device
normalises (``Normalise``, a ``data.device_transform``): a quarter of float32's bytes through
the object store and to the GPU, and no float work on the data cores. ``decode_images`` and
``normalise`` serve a user's own image preprocessing too.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from pipeline.config import IMAGE_COLUMN, Augmentation
from pipeline.records import BadRecord

_PIL_MODE = {1: "L", 3: "RGB"}
PNG_MAGIC, JPEG_MAGIC = b"\x89PNG", b"\xff\xd8"


def encode_image(image: np.ndarray, encoding: str) -> bytes:
    """uint8 HxW or HxWxC -> PNG/JPEG/raw bytes (used by prepare and tests)."""
    if encoding == "raw":
        return np.ascontiguousarray(image, dtype=np.uint8).tobytes()
    arr = image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
    buf = io.BytesIO()
    if encoding == "png":
        Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    elif encoding == "jpeg":
        Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    else:
        raise ValueError(f"unknown image encoding {encoding!r}")
    return buf.getvalue()


def decode_images(
    encoded: Sequence[bytes | None], encoding: str, shape: tuple[int, int, int]
) -> tuple[np.ndarray, list[BadRecord]]:
    """Decode a batch into uint8 N x H x W x C.

    Returns the images and the records that failed; their slots are zero. The caller decides,
    by policy, whether a failure stops the run or is skipped.
    """
    h, w, c = shape
    out = np.zeros((len(encoded), h, w, c), dtype=np.uint8)
    bad: list[BadRecord] = []
    if encoding == "raw":
        size = h * w * c
        for i, b in enumerate(encoded):
            if b is None or len(b) != size:
                n = 0 if b is None else len(b)
                bad.append(
                    BadRecord(i, "undecodable_image", f"raw image has {n} bytes, expected {size}")
                )
                continue
            out[i] = np.frombuffer(b, dtype=np.uint8).reshape(h, w, c)
        return out, bad
    mode = _PIL_MODE[c]
    for i, b, arr in _fast_decoded(encoded, encoding, c, bad):
        if arr is not None and arr.shape == (h, w, c):
            out[i] = arr
            continue
        try:  # PIL: every other case, and the one that names what is wrong
            with Image.open(io.BytesIO(b)) as img:
                if img.size != (w, h):
                    msg = f"image is {img.size[0]}x{img.size[1]}, expected {w}x{h}"
                    bad.append(BadRecord(i, "wrong_image_size", msg))
                    continue
                if img.mode != mode:
                    img = img.convert(mode)
                arr = np.asarray(img)
        except Exception as e:  # PIL raises many types for corrupt input
            bad.append(_undecodable(i, encoding, e))
            continue
        out[i] = arr.reshape(h, w, c)
    return out, bad


def _undecodable(i: int, encoding: str, e: Exception) -> BadRecord:
    what = "image" if encoding == "auto" else encoding
    return BadRecord(i, "undecodable_image", f"cannot decode {what}: {e.__class__.__name__}: {e}")


def _fast_decoded(encoded, encoding: str, c: int, bad: list[BadRecord]):
    """(index, bytes, array or None) of each image that is not null, decoded by libspng or
    libjpeg-turbo where they can (None: PIL's turn); null images go to ``bad``."""
    fast = _FAST_DECODERS.get(encoding)
    for i, b in enumerate(encoded):
        if b is None:
            bad.append(BadRecord(i, "undecodable_image", "image is null"))
            continue
        if encoding == "auto":
            fast = _FAST_DECODERS.get(sniff_encoding(b))
        yield i, b, (fast(b, c) if fast is not None else None)


# torchvision's RandomResizedCrop defaults, and the centre crop's share of the shorter side
CROP_SCALE, CROP_RATIO, CENTRE_FRACTION = (0.08, 1.0), (3 / 4, 4 / 3), 0.875


def crop_box(height: int, width: int, rng: np.random.Generator | None) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the region a resized crop takes: with ``rng`` a random
    area and aspect as torchvision's RandomResizedCrop draws them (10 tries, then the centre
    at the nearest allowed aspect), without it the centre square of 0.875 of the shorter side."""
    if rng is not None:
        area = height * width
        log_ratio = np.log(CROP_RATIO)
        for _ in range(10):
            target = area * rng.uniform(*CROP_SCALE)
            aspect = float(np.exp(rng.uniform(*log_ratio)))
            w = int(round(np.sqrt(target * aspect)))
            h = int(round(np.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                return left, top, left + w, top + h
        aspect = width / height
        if aspect < CROP_RATIO[0]:
            w, h = width, int(round(width / CROP_RATIO[0]))
        elif aspect > CROP_RATIO[1]:
            w, h = int(round(height * CROP_RATIO[1])), height
        else:
            w, h = width, height
    else:
        w = h = max(1, int(round(min(height, width) * CENTRE_FRACTION)))
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def decode_resized_crops(
    encoded: Sequence[bytes | None],
    encoding: str,
    channels: int,
    size: int,
    rng: np.random.Generator | None,
) -> tuple[np.ndarray, list[BadRecord]]:
    """Decode images of any size into uint8 N x size x size x C, each a resized crop
    (``crop_box``: random with ``rng``, else the centre), bilinear with antialiasing as PIL
    and torchvision resize. Returns the images and the records that do not decode."""
    out = np.zeros((len(encoded), size, size, channels), dtype=np.uint8)
    bad: list[BadRecord] = []
    mode = _PIL_MODE[channels]
    for i, b, arr in _fast_decoded(encoded, encoding, channels, bad):
        try:
            if arr is not None:
                img = Image.fromarray(arr[..., 0] if channels == 1 else arr)
            else:
                img = Image.open(io.BytesIO(b))
                if img.mode != mode:
                    img = img.convert(mode)
            box = crop_box(img.height, img.width, rng)
            resized = np.asarray(img.resize((size, size), Image.BILINEAR, box=box))
        except Exception as e:  # PIL raises many types for corrupt input
            bad.append(_undecodable(i, encoding, e))
            continue
        out[i] = resized.reshape(size, size, channels)
    return out, bad


def _spng(b: bytes, c: int) -> np.ndarray | None:
    """libspng through pyspng: ~4x PIL on small PNGs, where PIL's Python chunk parser dominates."""
    try:
        arr = pyspng.load(b)
    except Exception:
        return None
    if arr.dtype != np.uint8:
        return None
    arr = arr[..., None] if arr.ndim == 2 else arr
    return arr if arr.shape[2] == c else None


def _turbojpeg(b: bytes, c: int) -> np.ndarray | None:
    """libjpeg-turbo through simplejpeg: ~7x PIL's per-image overhead on small JPEGs."""
    try:
        arr = simplejpeg.decode_jpeg(b, colorspace="GRAY" if c == 1 else "RGB")
    except Exception:
        return None
    return arr if arr.ndim == 3 else arr[..., None]


try:  # optional fast paths; PIL decodes everything without them
    import pyspng
except ImportError:  # pragma: no cover - depends on the installed wheels
    pyspng = None
try:
    import simplejpeg
except ImportError:  # pragma: no cover
    simplejpeg = None

_FAST_DECODERS = {
    k: f
    for k, f, mod in (("png", _spng, pyspng), ("jpeg", _turbojpeg, simplejpeg))
    if mod is not None
}


def augment(images: np.ndarray, rng: np.random.Generator, aug: Augmentation) -> np.ndarray:
    """Random shift, flip, brightness and noise on uint8 N x H x W x C. Returns uint8 when
    only shift and flip apply, else float32 0..255."""
    n, h, w, _ = images.shape
    x = images
    if aug.max_shift_px > 0 and n:
        p = aug.max_shift_px
        padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="constant")
        dy = rng.integers(0, 2 * p + 1, size=n)
        dx = rng.integers(0, 2 * p + 1, size=n)
        rows = dy[:, None] + np.arange(h)[None, :]  # n x h
        cols = dx[:, None] + np.arange(w)[None, :]  # n x w
        x = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    if aug.horizontal_flip and n:
        flip = rng.random(n) < 0.5
        x = x.copy() if x is images else x
        x[flip] = x[flip, :, ::-1]
    if aug.brightness <= 0 and aug.noise_std <= 0:
        return x
    x = x.astype(np.float32)  # an empty batch too: every batch of these settings is float32
    if not n:
        return x
    if aug.brightness > 0:
        scale = rng.uniform(1 - aug.brightness, 1 + aug.brightness, size=(n, 1, 1, 1))
        x *= scale.astype(np.float32)
    if aug.noise_std > 0:
        x += rng.normal(0, aug.noise_std * 255, size=x.shape).astype(np.float32)
    np.clip(x, 0, 255, out=x)
    return x


def to_uint8_nchw(images: np.ndarray) -> np.ndarray:
    """N x H x W x C, uint8 or float 0..255 -> uint8 N x C x H x W (floats rounded)."""
    if images.dtype != np.uint8:
        images = np.rint(images).astype(np.uint8)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


def normalise(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """N x H x W x C (uint8 or float 0..255) -> float32 N x C x H x W, (x/255 - mean)/std."""
    c = images.shape[-1]
    m = np.broadcast_to(np.asarray(mean, dtype=np.float32), (c,))
    s = np.broadcast_to(np.asarray(std, dtype=np.float32), (c,))
    scale = (1.0 / (255.0 * s)).astype(np.float32)
    shift = (m / s).astype(np.float32)
    x = images.astype(np.float32, copy=False) * scale - shift
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def sniff_encoding(b: bytes) -> str | None:
    """png or jpeg from the first bytes (Hugging Face image columns mix both)."""
    if b[:4] == PNG_MAGIC:
        return "png"
    if b[:2] == JPEG_MAGIC:
        return "jpeg"
    return None


def infer_image_shape(encoded: Sequence[bytes | None]) -> tuple[int, int, int] | None:
    """(height, width, channels) of the first image that opens: 1 channel for grey images,
    3 for every other mode (the decoder converts palette and alpha images to RGB)."""
    for b in encoded:
        if b is None:
            continue
        try:
            with Image.open(io.BytesIO(b)) as img:
                w, h = img.size
                return h, w, 1 if img.mode in ("1", "L", "I;16", "I", "F") else 3
        except Exception:
            continue
    return None


def augmented_images(
    batch: dict[str, np.ndarray],
    *,
    split: str,
    image_column: str,
    image_shape: Sequence[int],
    encoding: str = "auto",
    augmentation: dict[str, Any] | None = None,
) -> tuple[np.ndarray, list[BadRecord]]:
    """Decoded (and resized-cropped, with augmentation.random_resized_crop) images, augmented
    in the train split only: N x H x W x C, uint8 or float32 0..255; and the bad records."""
    aug = Augmentation.model_validate(augmentation or {})
    augmenting = split == "train" and aug.enabled
    rng = np.random.default_rng()  # fresh entropy every batch
    if aug.random_resized_crop:
        images, bad = decode_resized_crops(
            batch[image_column],
            encoding,
            int(image_shape[2]),
            aug.random_resized_crop,
            rng if augmenting else None,
        )
    else:
        images, bad = decode_images(batch[image_column], encoding, tuple(image_shape))
    if augmenting:
        images = augment(images, rng, aug)
    return images, bad


def preprocess(
    batch: dict[str, np.ndarray],
    *,
    split: str,
    image_column: str,
    label_column: str,
    image_shape: Sequence[int],
    encoding: str = "auto",
    mean: Sequence[float] = (0.5,),
    std: Sequence[float] = (0.5,),
    augmentation: dict[str, Any] | None = None,
    normalise_on: str = "data",
) -> tuple[dict[str, np.ndarray], list[BadRecord]]:
    """Encoded images -> ``image`` NCHW (augmented in the train split only), the label passed
    through, and the records that do not decode or have another size (any size is fine with
    augmentation.random_resized_crop: only the channels of ``image_shape`` count).

    ``normalise_on="data"``: float32, normalised here; ``"train"``: uint8, for ``Normalise``
    on the train worker's device (mean and std are then unused here)."""
    images, bad = augmented_images(
        batch,
        split=split,
        image_column=image_column,
        image_shape=image_shape,
        encoding=encoding,
        augmentation=augmentation,
    )
    x = to_uint8_nchw(images) if normalise_on == "train" else normalise(images, mean, std)
    return {IMAGE_COLUMN: x, label_column: batch[label_column]}, bad


class Normalise:
    """The train-device half of the built-in image steps (data.preprocessing.normalise_on =
    train): ``column`` uint8 N x C x H x W -> float32 (x/255 - mean)/std, on the batch's device.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], column: str = IMAGE_COLUMN):
        self.column = column
        m = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
        s = np.asarray(std, np.float32).reshape(1, -1, 1, 1)
        self._scale_offset = (1.0 / (255.0 * s), -m / s)  # x * scale + offset
        self._on: dict[Any, tuple[Any, Any]] = {}  # device -> (scale, offset) tensors

    def __call__(self, batch: dict) -> dict:
        import torch

        x = batch[self.column]
        if x.device not in self._on:
            self._on[x.device] = tuple(torch.from_numpy(a).to(x.device) for a in self._scale_offset)
        scale, offset = self._on[x.device]
        batch[self.column] = torch.addcmul(offset, x.to(torch.float32), scale)
        return batch
