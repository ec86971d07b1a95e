"""`ray-pipeline bench` on the chart-shaped cluster and S3 (moto): every path delivers every
row, and the figures a user reads (the table, the JSON keys) are there.

Small on purpose: the figures themselves are measured by full runs (benchmarks/RESULTS.md),
never asserted here."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.cluster


def test_bench_runs_every_path_on_local_and_s3(ray_cluster, s3, tmp_path):
    out = tmp_path / "bench.json"
    r = run_cli(
        "bench",
        "--address",
        ray_cluster.address,
        "--rows",
        "3000",
        "--workdir",
        str(tmp_path / "work"),
        "--s3-uri",
        "s3://ray-pipeline-bench-it/synthetic/train",
        "--set",
        f"s3.endpoint={s3.endpoint}",
        "--set",
        "train.use_gpu=false",
        "--set",
        "train.resources_per_worker.CPU=1",
        "--data-cpus",
        "1",
        "--model",
        "simple_cnn",
        "--json",
        str(out),
        timeout=300,
    )
    assert r.returncode == 0, r.output[-5000:]
    results = json.loads(out.read_text())

    # the keys the issue names, from the primary storage (S3)
    assert results["primary_storage"] == "s3"
    for key in ("limit", "raw_read", "dataloader", "ray", "ttfb_s", "peak_memory_bytes"):
        assert results[key] > 0, key
    for storage in ("local", "s3"):
        per = results["storages"][storage]
        train_rows = per["rows"]
        assert train_rows > 2000  # the train split of 3000 rows
        for path in ("limit", "raw_read", "dataloader", "ray"):
            assert per[path]["rows"] == train_rows, (storage, path)
        assert per["ray"]["fit_startup_s"] > 0 and per["ray"]["teardown_s"] > 0
        assert per["ray"]["shard_to_first_batch_s"] > 0 and per["ray"]["ttfb_s"] > 0
        # the model's steps: the share spent waiting, and the data CPUs that keep it fed
        advice = per["advice"]
        assert 0 <= per["ray"]["data_wait_fraction"] < 1
        assert advice["model"] == "simple_cnn" and advice["model_rows_per_s"] > 0
        # the data tasks run in the cluster's processes, which the bench cannot time: the
        # per-core rate is the limit's, so the advice is a floor
        assert advice["per_core_from"] == "limit"
        assert advice["data_cpus_per_train_worker"] >= 1
    assert results["advised_data_cpus_per_train_worker"] >= 1
    # the table a user reads
    for line in (
        "local    limit",
        "s3       ray",
        "first batch",
        "after the shard request",
        "advice, s3: simple_cnn",
        "give the data group at least",
    ):
        assert line in r.output, line
    # the dataset is on the bucket for the next run
    assert len(s3.keys("ray-pipeline-bench-it", "synthetic/train/")) >= 8
