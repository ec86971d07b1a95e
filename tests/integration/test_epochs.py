"""One data stream across epochs (pipeline.train.epochs) keeps every per-epoch guarantee.

Each epoch is a pass of its own, started while the one before still streams, on one of two
alternating split coordinators. On the 3-node cluster, with two train workers sharing the
train node: every epoch delivers every training row exactly once (the dataset's own
order-free digest), split equally between the workers, in a new order, with new
augmentation. (Resuming at an epoch boundary with this stream: test_train_cluster's rerun
and tests/faults.)"""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.records import epoch_digest, row_digests
from tests.conftest import run_cli, write_config
from tests.integration.conftest import BUCKET, cluster_config

pytestmark = pytest.mark.cluster

EPOCHS = 3


def train_split_digest(s3) -> tuple[int, list[int]]:
    """The train split's rows and their order-free digest, read from the bucket directly."""
    images = []
    for key in sorted(s3.keys(BUCKET, "digits/train/")):
        if key.endswith(".parquet"):
            body = s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
            images += pq.read_table(io.BytesIO(body))["image"].to_pylist()
    column = np.empty(len(images), dtype=object)
    column[:] = images
    return len(images), list(epoch_digest(row_digests({"image": column}, ["image"])))


@pytest.fixture(scope="module")
def two_worker_run(ray_cluster, s3, dataset, tmp_path_factory):
    tree = cluster_config(
        s3,
        # two workers share the train node's one CPU; no local shuffle, so a batch's order
        # is the stream's own (file order and the data tasks' interleaving)
        train={"epochs": EPOCHS, "num_workers": 2, "resources_per_worker": {"CPU": 0.5}},
        data={"local_shuffle_buffer": 0},
        storage={"run_name": "epochs-two-workers", "checkpoint_uri": f"s3://{BUCKET}/epochs"},
    )
    cfg = write_config(tmp_path_factory.mktemp("epochs") / "config.yaml", tree)
    r = run_cli("train", "--address", ray_cluster.address, "--config", str(cfg))
    assert r.returncode == 0, r.output[-5000:]
    return r.summary()


def test_every_epoch_delivers_every_row_once_in_equal_shards(two_worker_run, s3):
    rows, digest = train_split_digest(s3)
    history = two_worker_run["history"]
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    for h in history:
        assert h["train_rows"] == rows, h
        assert h["train_digest"] == digest, h  # each row once: none lost, none twice
        per_worker = h["stream"]["rows_per_worker"]
        assert len(per_worker) == 2 and per_worker[0] == per_worker[1] == rows // 2, h


def test_every_epoch_has_a_new_order_and_new_augmentation(two_worker_run):
    history = two_worker_run["history"]
    orders = [h["stream"]["order_fingerprint"] for h in history]
    sums = [h["stream"]["input_sum"] for h in history]
    assert len(set(orders)) == EPOCHS, orders  # the rows came in another order each epoch
    # the same rows, augmented anew: the pixels the model got differ from epoch to epoch
    assert len(set(sums)) == EPOCHS, sums


def test_the_run_says_where_its_start_up_went(two_worker_run):
    startup, teardown = two_worker_run["startup"], two_worker_run["teardown"]
    assert set(startup) >= {
        "cli_and_imports",
        "listing_and_footers",
        "ray_start",
        "preflight_data_group",
        "preflight_train_group",
        "trainer_and_worker_group",
        "stream_setup",
        "model_build",
        "first_block",
    }, startup
    assert all(v >= 0 for v in startup.values()) and "train_teardown" in teardown


def test_without_augmentation_the_epochs_feed_the_same_pixels(ray_cluster, s3, dataset, tmp_path):
    """The control: the input checksum above changes only because augmentation does."""
    tree = cluster_config(
        s3,
        train={"epochs": 2, "num_workers": 1},
        data={"preprocessing": {"augmentation": {"enabled": False}}},
        storage={"run_name": "epochs-no-aug", "checkpoint_uri": f"s3://{BUCKET}/epochs"},
    )
    cfg = write_config(tmp_path / "config.yaml", tree)
    r = run_cli("train", "--address", ray_cluster.address, "--config", str(cfg))
    assert r.returncode == 0, r.output[-5000:]
    sums = [h["stream"]["input_sum"] for h in r.summary()["history"]]
    assert len(sums) == 2 and sums[0] == sums[1], sums
