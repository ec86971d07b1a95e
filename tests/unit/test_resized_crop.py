"""augmentation.random_resized_crop: images of any size become one square size, a random crop
in training and the centre otherwise (pure numpy, no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import Augmentation
from pipeline.workloads.image import (
    CROP_RATIO,
    CROP_SCALE,
    crop_box,
    decode_resized_crops,
    encode_image,
    preprocess,
)


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], -1)
    return np.clip(base + rng.normal(0, 3, (h, w, 3)), 0, 255).astype(np.uint8)


def test_random_boxes_stay_inside_and_follow_scale_and_ratio():
    rng = np.random.default_rng(0)
    for h, w in ((256, 500), (500, 256), (300, 300)):
        for _ in range(200):
            left, top, right, bottom = crop_box(h, w, rng)
            assert 0 <= left < right <= w and 0 <= top < bottom <= h
            area = (right - left) * (bottom - top) / (h * w)
            aspect = (right - left) / (bottom - top)
            assert CROP_SCALE[0] * 0.9 <= area <= CROP_SCALE[1]
            assert CROP_RATIO[0] * 0.9 <= aspect <= CROP_RATIO[1] * 1.1


def test_random_boxes_differ_and_the_centre_box_is_fixed():
    rng = np.random.default_rng(1)
    assert len({crop_box(400, 300, rng) for _ in range(20)}) > 10
    assert crop_box(400, 300, None) == crop_box(400, 300, None) == (19, 69, 281, 331)


def test_images_of_any_size_decode_to_one_size():
    encoded = [
        encode_image(_photo(h, w, i), "jpeg")
        for i, (h, w) in enumerate(((256, 500), (480, 270), (300, 300)))
    ]
    out, bad = decode_resized_crops(encoded, "jpeg", 3, 64, np.random.default_rng(0))
    assert out.shape == (3, 64, 64, 3) and out.dtype == np.uint8 and not bad
    assert out.std() > 10  # image content, not zeros


def test_the_centre_crop_keeps_the_middle_of_the_image():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, 60:140] = 255  # a white band in the middle
    (out,), _ = decode_resized_crops([encode_image(img, "png")], "png", 3, 32, None)
    assert out[:, 8:24].mean() > 250  # the band fills the middle of the crop
    assert out[:, 0].mean() < 5 and out[:, -1].mean() < 5  # the crop's edges: black


def test_undecodable_images_are_bad_records_and_others_survive():
    good = encode_image(_photo(280, 320), "jpeg")
    out, bad = decode_resized_crops([good, b"\xff\xd8 not a jpeg", None], "jpeg", 3, 32, None)
    assert [b.index for b in bad] == [1, 2]
    assert {b.kind for b in bad} == {"undecodable_image"}
    assert out[0].std() > 10 and not out[1].any()


@pytest.mark.parametrize("split", ["train", "validation"])
def test_preprocess_with_a_resized_crop_returns_the_crop_size(split):
    batch = {
        "img": np.array(
            [encode_image(_photo(256 + 40 * i, 500 - 50 * i, i), "jpeg") for i in range(4)],
            dtype=object,
        ),
        "label": np.arange(4),
    }
    aug = Augmentation(
        random_resized_crop=48, max_shift_px=0, brightness=0, horizontal_flip=True
    ).model_dump()
    args = dict(
        split=split,
        image_column="img",
        label_column="label",
        image_shape=(256, 500, 3),  # the first image's: only the channels count
        encoding="jpeg",
        mean=[0.485, 0.456, 0.406],
        std=[0.229, 0.224, 0.225],
        augmentation=aug,
    )
    out, bad = preprocess(batch, **args)
    assert not bad and out["image"].shape == (4, 3, 48, 48) and out["image"].dtype == np.float32
    again, _ = preprocess(batch, **args)
    # training draws new crops every call; validation is the same every time
    assert np.array_equal(out["image"], again["image"]) == (split == "validation")
