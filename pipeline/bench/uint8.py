"""``--ship uint8``: images leave the data group as uint8 NCHW and are normalised on the train
device: 4x fewer bytes through the object store and into the device, and the data cores skip
the float conversion. A bench option to measure, not (yet) the product's default."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.config import IMAGE_COLUMN, PipelineConfig
from pipeline.workloads.image import augmented_images

PREPROCESS = "pipeline.bench.uint8:preprocess"


def preprocess(batch: dict[str, np.ndarray], *, split: str, label_column: str, **image_args: Any):
    """The built-in image steps without the normalisation: ``image`` uint8 N x C x H x W
    (``image_args``: those of ``augmented_images``)."""
    images, bad = augmented_images(batch, split=split, **image_args)
    if images.dtype != np.uint8:  # brightness or noise made floats 0..255
        images = np.rint(images, out=images).astype(np.uint8)
    x = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    return {IMAGE_COLUMN: x, label_column: batch[label_column]}, bad


def ship_uint8(cfg: PipelineConfig) -> None:
    """Point ``cfg`` at the uint8 preprocessing, with the built-in's arguments."""
    d = cfg.data
    d.preprocess = PREPROCESS
    d.preprocess_args = {
        "image_column": d.image_column or "image",
        "label_column": d.label_column or "label",
        "image_shape": list(d.image_shape),
        "encoding": d.image_encoding,
        "augmentation": d.preprocessing.augmentation.model_dump(),
    }


def device_normaliser(mean: Sequence[float], std: Sequence[float], channels: int):
    """What the train worker applies to a uint8 NCHW batch on its device: (x/255 - mean)/std."""
    import torch

    m = np.broadcast_to(np.asarray(mean, np.float32), (channels,))
    s = np.broadcast_to(np.asarray(std, np.float32), (channels,))
    scale = torch.from_numpy((1.0 / (255.0 * s)).reshape(1, -1, 1, 1).copy())
    shift = torch.from_numpy((m / s).reshape(1, -1, 1, 1).copy())

    def normalise(x):
        return x.to(torch.float32) * scale.to(x.device) - shift.to(x.device)

    return normalise
