"""`ray-pipeline bench` on the chart-shaped cluster and S3 (moto): every path delivers every
row, and the figures a user reads (the table, the JSON keys) are there.

Small on purpose: the figures themselves are measured by full runs (benchmarks/RESULTS.md),
never asserted here."""

from __future__ import annotations

import json
import os

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
        "--epochs",
        "2",
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
            # every path: each epoch's rows/s, whole and from its first batch, and that wait
            epochs = per[path]["epochs"]
            each = train_rows if path in ("dataloader", "ray") else per[path]["rows"]
            assert [e["rows"] for e in epochs] == [each] * len(epochs), (storage, path)
            assert len(epochs) == (2 if path in ("dataloader", "ray") else 1), (storage, path)
            for e in epochs:
                assert e["ttfb_s"] >= 0 and e["rows_per_s_from_first_batch"] >= e["rows_per_s"] > 0
        assert per["limit"]["rows"] == per["raw_read"]["rows"] == train_rows
        # like with like: the DataLoader steps the same model on the same device as the ray
        # path, and the model's rate on a batch kept on the device stands beside them
        assert per["dataloader"]["device"] == per["ray"]["device"] == "cpu"
        assert 0 < per["dataloader"]["data_wait_fraction"] < 1
        ceiling = per["model_ceiling"]
        assert ceiling["model"] == "simple_cnn" and ceiling["what"] == "model ceiling"
        assert ceiling["rows_per_s"] > 0 and ceiling["steps"] >= 3
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
    assert results["model_ceiling"] > 0 and results["dataloader_vs_model_ceiling"] > 0
    # the table a user reads
    for line in (
        "local    limit",
        "s3       ray",
        "first batch",
        "after the shard request",
        "advice, s3: simple_cnn",
        "give the data group at least",
        "s3       ceiling",
        "simple_cnn on cpu waits for data",
        "epochs, s3 dataloader: rows/s",
        "first-batch wait",
    ):
        assert line in r.output, line
    # the dataset is on the bucket for the next run
    assert len(s3.keys("ray-pipeline-bench-it", "synthetic/train/")) >= 8


def _bench(tmp_path, *args: str):
    """``ray-pipeline bench`` on local files with ``args``: its output and its JSON."""
    out = tmp_path / "bench.json"
    r = run_cli(
        "bench",
        f"--workdir={tmp_path / 'work'}",
        "--storage=local",
        f"--json={out}",
        *args,
        timeout=300,
    )
    assert r.returncode == 0, r.output[-5000:]
    return r, json.loads(out.read_text())


needs_two_cores = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="--layout pinned needs 2 cores"
)


@needs_two_cores
def test_bench_pinned_layout_starts_its_cluster_and_reports_efficiency(tmp_path):
    # the bench's own head/data/train cluster; images shipped as float32, normalised by the
    # data group (the other benches ship uint8, the default, normalised in the Train worker)
    r, results = _bench(
        tmp_path,
        "--layout=pinned",
        "--rows=2000",
        "--paths=limit,ray",
        "--epochs=2",
        "--ship=float32",
        f"--timeline={tmp_path / 'trace.json'}",
    )
    assert results["layout"] == "pinned" and results["ship"] == "float32"
    # Ray's timeline of the run: the data tasks are in it, on the data node's worker processes
    trace = json.loads((tmp_path / "trace-local.json").read_text())
    assert any("_map_task" in e.get("name", "") for e in trace)
    assert set(results["cores"]["data"]).isdisjoint(results["cores"]["other"])
    per = results["storages"]["local"]
    assert per["limit"]["rows"] == per["rows"] > 1900
    assert [e["rows"] for e in per["ray"]["epochs"]] == [per["rows"]] * 2
    assert all(e["seconds"] > 0 for e in per["ray"]["epochs"])
    eff = results["efficiency"]
    assert len(eff["epochs"]) == 2 and eff["later_epochs"] > 0 and eff["all_epochs"] > 0
    # what ran on the data cores was the data node's: its tasks, never the train worker
    assert "train worker" not in per["ray"]["data_node_cores_by_role"]
    assert "efficiency, local: ray rows/s over limit's on the same data cores" in r.output


@needs_two_cores
def test_bench_jpeg224_runs_limit_and_dataloader_on_the_data_cores(tmp_path):
    _, results = _bench(
        tmp_path, "--layout=pinned", "--dataset=jpeg224", "--rows=120", "--paths=limit,dataloader"
    )
    per = results["storages"]["local"]
    assert results["dataset"] == "jpeg224" and results["layout"] == "pinned"
    assert per["limit"]["rows"] == per["dataloader"]["rows"] == per["rows"] > 100
    assert per["bytes_per_row"] > 10_000  # photos, not thumbnails


def _mosaic_python() -> str | None:
    """An interpreter with mosaicml-streaming: $MOSAIC_PYTHON, else this one if it has it."""
    import sys

    from pipeline.bench.mosaic import _has_streaming

    python = os.environ.get("MOSAIC_PYTHON") or sys.executable
    return python if _has_streaming(python) else None


def test_bench_mosaic_path_streams_every_row(tmp_path):
    python = _mosaic_python()
    if python is None:
        pytest.skip("no mosaicml-streaming: set MOSAIC_PYTHON (see pipeline/bench/mosaic.py)")
    _, results = _bench(
        tmp_path, "--rows=1500", "--paths=mosaic", f"--mosaic-python={python}", "--data-cpus=1"
    )
    per = results["storages"]["local"]
    assert per["mosaic"]["rows"] == per["rows"] > 1400
