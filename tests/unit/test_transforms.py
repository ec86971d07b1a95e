"""Preprocessing functions: shapes, dtypes, normalisation, augmentation, bad records."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import Augmentation, load_config
from pipeline.transforms import (
    augment,
    check_labels,
    decode_images,
    encode_image,
    normalise,
    preprocess,
)


@pytest.fixture
def images():
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, size=(16, 8, 8, 1), dtype=np.uint8)


@pytest.mark.parametrize("encoding", ["png", "raw"])
def test_decode_roundtrips_lossless_encodings(images, encoding):
    encoded = [encode_image(im, encoding) for im in images]
    decoded, bad = decode_images(encoded, encoding, (8, 8, 1))
    assert bad == []
    assert decoded.dtype == np.uint8 and decoded.shape == (16, 8, 8, 1)
    np.testing.assert_array_equal(decoded, images)


def test_decode_jpeg_is_close_and_rgb_works():
    ramp = np.linspace(0, 255, 16, dtype=np.float32)
    one = np.stack(
        [ramp[None, :].repeat(16, 0), ramp[:, None].repeat(16, 1), np.full((16, 16), 128.0)], -1
    )
    smooth = np.stack([one, 255 - one]).astype(np.uint8)
    decoded, bad = decode_images([encode_image(im, "jpeg") for im in smooth], "jpeg", (16, 16, 3))
    assert bad == [] and decoded.shape == (2, 16, 16, 3)
    assert np.abs(decoded.astype(int) - smooth).mean() < 8


def test_decode_reports_bad_records_without_failing_the_batch(images):
    encoded = [encode_image(im, "png") for im in images[:3]]
    encoded[1] = b"\x89PNG garbage"
    encoded.append(encode_image(np.zeros((9, 8), np.uint8), "png"))
    encoded.append(None)
    decoded, bad = decode_images(encoded, "png", (8, 8, 1))
    assert [(b.index, b.kind) for b in bad] == [
        (1, "undecodable_image"),
        (3, "wrong_image_size"),
        (4, "undecodable_image"),
    ]
    assert "8x9, expected 8x8" in bad[1].reason
    np.testing.assert_array_equal(decoded[0], images[0])


def test_normalise_layout_dtype_and_values():
    x = np.array([[[[0], [255]], [[51], [102]]]], dtype=np.uint8)  # 1x2x2x1
    out = normalise(x, [0.5], [0.5])
    assert out.dtype == np.float32 and out.shape == (1, 1, 2, 2) and out.flags.c_contiguous
    np.testing.assert_allclose(out[0, 0], [[-1.0, 1.0], [-0.6, -0.2]], atol=1e-6)
    rgb = np.full((2, 3, 3, 3), 255, dtype=np.uint8)
    out = normalise(rgb, [0.0, 0.5, 1.0], [1.0, 0.5, 0.25])
    np.testing.assert_allclose(out[0, :, 0, 0], [1.0, 1.0, 0.0], atol=1e-6)


def test_augmentation_differs_between_calls_and_keeps_shape(images):
    aug = Augmentation(max_shift_px=1, brightness=0.1, noise_std=0.02, horizontal_flip=True)
    a = augment(images, np.random.default_rng(), aug)
    b = augment(images, np.random.default_rng(), aug)
    assert a.shape == images.shape and a.dtype == np.float32
    assert not np.array_equal(a, b)  # a new epoch sees other augmentations
    assert a.min() >= 0 and a.max() <= 255


def test_shift_moves_pixels_by_at_most_max_shift():
    img = np.zeros((200, 5, 5, 1), np.uint8)
    img[:, 2, 2, 0] = 255
    out = augment(img, np.random.default_rng(0), Augmentation(max_shift_px=1, brightness=0))
    ys, xs = np.nonzero(out[..., 0] == 255)[1:]
    assert set(ys) <= {1, 2, 3} and set(xs) <= {1, 2, 3}
    assert len(set(zip(ys, xs, strict=True))) == 9  # every shift happens


def test_preprocess_augments_only_in_training(images):
    data = load_config().data
    train = preprocess(images, data, training=True, rng=np.random.default_rng(0))
    val1 = preprocess(images, data, training=False, rng=None)
    val2 = preprocess(images, data, training=False, rng=None)
    assert train.shape == val1.shape == (16, 1, 8, 8)
    np.testing.assert_array_equal(val1, val2)
    assert not np.array_equal(train, val1)


def test_check_labels():
    labels, bad = check_labels(np.array([0, 9, 10, -1]), 10)
    assert labels.dtype == np.int64
    assert [b.index for b in bad] == [2, 3] and "outside the classes 0..9" in bad[0].reason
    labels, bad = check_labels(np.array([1.0, np.nan, 2.5, 3.0]), 10)
    assert [b.index for b in bad] == [1, 2] and list(labels[[0, 3]]) == [1, 3]
    _, bad = check_labels(np.array([1, None], dtype=object), 10)
    assert [(b.index, b.reason) for b in bad] == [(1, "label is null")]
