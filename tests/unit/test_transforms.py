"""Preprocessing functions: shapes, dtypes, normalisation, augmentation, bad records."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import Augmentation
from pipeline.records import check_labels
from pipeline.workloads.image import (
    Normalise,
    augment,
    decode_images,
    encode_image,
    infer_image_shape,
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


@pytest.mark.parametrize(
    "channels, mean, std", [(1, [0.5], [0.5]), (3, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
)
def test_uint8_shipped_and_normalised_on_the_device_equals_normalising_on_the_data_group(
    channels, mean, std
):
    import torch

    rng = np.random.default_rng(2)
    imgs = rng.integers(0, 256, size=(5, 6, 7, channels), dtype=np.uint8)
    encoded = np.array([encode_image(im, "png") for im in imgs], dtype=object)
    args = dict(split="validation", image_column="png", label_column="y",
                image_shape=(6, 7, channels), encoding="png", mean=mean, std=std)  # fmt: skip
    batch = {"png": encoded, "y": np.arange(5)}
    on_data, _ = preprocess(batch, **args, normalise_on="data")
    shipped, _ = preprocess(batch, **args, normalise_on="train")
    assert shipped["image"].dtype == np.uint8 and shipped["image"].shape == (5, channels, 6, 7)
    assert shipped["image"].nbytes * 4 == on_data["image"].nbytes
    on_device = Normalise(mean, std)({"image": torch.from_numpy(shipped["image"]), "y": None})
    assert on_device["image"].dtype == torch.float32
    np.testing.assert_allclose(on_device["image"].numpy(), on_data["image"], atol=1e-5)


def test_shift_and_flip_keep_uint8_and_brightness_makes_floats(images):
    aug = Augmentation(max_shift_px=1, brightness=0.0, horizontal_flip=True)
    out = augment(images, np.random.default_rng(), aug)
    assert out.dtype == np.uint8 and out.shape == images.shape
    before = images.copy()
    flipped = augment(
        images,
        np.random.default_rng(0),
        Augmentation(max_shift_px=0, brightness=0.0, horizontal_flip=True),
    )
    for a, b in zip(flipped, images, strict=True):  # each image as it was or mirrored
        assert np.array_equal(a, b) or np.array_equal(a, b[:, ::-1])
    assert not np.array_equal(flipped, images)  # seed 0 mirrors some of the 16
    np.testing.assert_array_equal(images, before)  # the decoded batch is left as it was
    assert augment(images, np.random.default_rng(), Augmentation()).dtype == np.float32
    # a batch whose every record was bad keeps the dtype of the other batches
    empty = images[:0]
    assert augment(empty, np.random.default_rng(), aug).dtype == np.uint8
    assert augment(empty, np.random.default_rng(), Augmentation()).dtype == np.float32


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


def _batch(images):
    return {
        "img": np.array([encode_image(im, "png") for im in images], dtype=object),
        "label": np.arange(len(images)),
    }


def test_preprocess_augments_only_in_training(images):
    args = dict(image_column="img", label_column="label", image_shape=(8, 8, 1))
    (train, bad), (val1, _), (val2, _) = (
        preprocess(_batch(images), split=split, **args)
        for split in ("train", "validation", "validation")
    )
    assert bad == []
    assert train["image"].shape == val1["image"].shape == (16, 1, 8, 8)
    np.testing.assert_array_equal(val1["image"], val2["image"])
    assert not np.array_equal(train["image"], val1["image"])
    np.testing.assert_array_equal(train["label"], np.arange(16))


def test_preprocess_names_images_that_do_not_decode_or_have_another_size(images):
    batch = _batch(images[:3])
    batch["img"][1] = b"not an image"
    batch["img"][2] = encode_image(np.zeros((4, 4, 1), np.uint8), "png")
    out, bad = preprocess(
        batch, split="validation", image_column="img", label_column="label", image_shape=(8, 8, 1)
    )
    assert [(b.index, b.kind) for b in bad] == [(1, "undecodable_image"), (2, "wrong_image_size")]
    assert "expected 8x8" in bad[1].reason
    assert out["image"].shape == (3, 1, 8, 8)


def test_auto_encoding_decodes_png_and_jpeg_in_one_batch():
    ramp = np.linspace(0, 255, 16, dtype=np.uint8)  # smooth: JPEG keeps it close
    rgb = np.stack([np.stack([ramp[:, None].repeat(16, 1)] * 3, axis=-1)] * 2)
    encoded = [encode_image(rgb[0], "png"), encode_image(rgb[1], "jpeg")]
    decoded, bad = decode_images(encoded, "auto", (16, 16, 3))
    assert bad == []
    np.testing.assert_array_equal(decoded[0], rgb[0])  # PNG is lossless
    assert np.abs(decoded[1].astype(int) - rgb[1]).mean() < 20  # JPEG is close
    assert infer_image_shape(encoded) == (16, 16, 3)
    assert infer_image_shape([None, encode_image(rgb[0][..., :1], "png")]) == (16, 16, 1)


def test_check_labels():
    labels, bad = check_labels(np.array([0, 9, 10, -1]), "classification", 10)
    assert labels.dtype == np.int64
    assert [b.index for b in bad] == [2, 3] and "outside the classes 0..9" in bad[0].reason
    labels, bad = check_labels(np.array([1.0, np.nan, 2.5, 3.0]), "classification", 10)
    assert [b.index for b in bad] == [1, 2] and list(labels[[0, 3]]) == [1, 3]
    _, bad = check_labels(np.array([1, None], dtype=object), "classification", 10)
    assert [(b.index, b.reason) for b in bad] == [(1, "label is null")]


def test_check_labels_for_regression_keeps_floats_and_names_non_finite_targets():
    labels, bad = check_labels(np.array([0.5, np.inf, -2.0, np.nan]), "regression", None)
    assert labels.dtype == np.float32
    assert [b.index for b in bad] == [1, 3] and "not finite" in bad[0].reason
    assert list(labels[[0, 2]]) == [0.5, -2.0]


def test_the_device_normalisation_takes_the_statistics_the_image_steps_were_given():
    import torch

    from pipeline.config import load_config
    from pipeline.usercode import UserCallable
    from pipeline.workload import IMAGE_PREPROCESS, UserCode, device_transforms

    cfg = load_config(None, [])  # data.preprocessing's mean/std: 0.5
    # data.preprocess naming the built-in steps, with statistics of its own
    own = {"normalise_on": "train", "mean": [0.1307], "std": [0.3081]}
    pre = UserCallable("data.preprocess", IMAGE_PREPROCESS, args=own)
    (norm,) = device_transforms(cfg, pre, UserCode())
    x = torch.full((1, 1, 1, 1), 255, dtype=torch.uint8)
    out = norm.build("train")({"image": x}, split="train")["image"]
    assert out.item() == pytest.approx((1 - 0.1307) / 0.3081, rel=1e-5)
    # normalised on the data group: nothing left for the device
    pre = UserCallable("data.preprocess", IMAGE_PREPROCESS, args={**own, "normalise_on": "data"})
    assert device_transforms(cfg, pre, UserCode()) == []
