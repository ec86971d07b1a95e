"""One prepared dataset and one finished training run, shared by the integration modules."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli, write_config

BUCKET = "ray-pipeline-it"
RUN = "digits-it"


def cluster_config(s3, **sections) -> dict:
    tree = {
        "data": {
            "train_uri": f"s3://{BUCKET}/digits/train",
            "validation_uri": f"s3://{BUCKET}/digits/validation",
        },
        "train": {"epochs": 3, "resources_per_worker": {"CPU": 1}},
        "storage": {"run_name": RUN, "checkpoint_uri": f"s3://{BUCKET}/checkpoints"},
        "s3": {"endpoint": s3.endpoint},
    }
    for name, values in sections.items():
        tree.setdefault(name, {}).update(values)
    return tree


@pytest.fixture(scope="session")
def dataset(s3):
    s3.make_bucket(BUCKET)
    r = run_cli(
        "prepare", "digits", "--out", f"s3://{BUCKET}/digits", "--set", f"s3.endpoint={s3.endpoint}"
    )
    assert r.returncode == 0, r.output
    return r.summary()


@pytest.fixture(scope="session")
def first_run(ray_cluster, s3, dataset, tmp_path_factory):
    cfg = write_config(tmp_path_factory.mktemp("cfg") / "config.yaml", cluster_config(s3))
    r = run_cli("train", "--address", ray_cluster.address, "--config", str(cfg))
    assert r.returncode == 0, r.output[-5000:]
    return cfg, r
