"""The bench's data-CPU advice and its report, from the figures of a run (pure functions: the
run itself is tests/integration/test_bench.py)."""

from __future__ import annotations

import json

import pytest

from pipeline.bench import BenchOptions, advise_data_cpus, finalize, format_table
from pipeline.bench.report import add_epoch_rates


def _path(rows_per_s: float) -> dict:
    return {"rows": 1000, "rows_per_s": rows_per_s, "mb_per_s": 1.0, "peak_memory_bytes": 1 << 30}


def _ray(model_rows_per_s: float, *, data_cores: float | None = None, epochs: int = 2) -> dict:
    r = _path(400.0)
    r.update(
        ttfb_s=0.8,
        shard_to_first_batch_s=4.0,
        fit_startup_s=12.0,
        teardown_s=3.0,
        data_wait_fraction=0.02,
        epochs=[{"rows": 500, "seconds": 1.25}] * epochs,
        model_rows_per_s=model_rows_per_s,
        device="cpu",
    )
    if data_cores is not None:
        r.update(data_cores=data_cores, rows_per_data_core_s=400.0 / data_cores)
    return r


def _limit() -> dict:
    """The limit path: 2 data cores preprocessing 25,000 rows/s each."""
    r = _path(50_000.0)
    r.update(data_cores=2.0, rows_per_data_core_s=25_000.0)
    return r


def _report(per: dict, model: str = "resnet18") -> tuple[dict, str]:
    per["advice"] = advise_data_cpus(per, model)
    results = finalize({"rows": 1000, "storages": {"s3": per}}, BenchOptions(model=model))
    return results, format_table(results)


def test_a_model_faster_than_one_data_core_gets_enough_cores_with_headroom():
    # a GPU model taking 60,000 rows/s; the data tasks preprocess 25,000 rows/s per core
    results, table = _report({"limit": _limit(), "ray": _ray(60_000.0)})
    advice = results["storages"]["s3"]["advice"]
    assert advice["data_cores_needed"] == 2.4
    assert advice["data_cpus_per_train_worker"] == 3  # 2.4 cores x 1.25, rounded up
    assert results["advised_data_cpus_per_train_worker"] == 3
    assert "give the data group at least 3 CPU(s) per train worker" in table
    assert "limit path, on the machine running the bench" in table


def test_the_ray_paths_own_rate_wins_over_the_limit_and_is_no_floor():
    # the ray path preprocessed 400 rows/s on 0.02 of a core: 20,000 rows/s per core
    per = {"limit": _limit(), "ray": _ray(30_000.0, data_cores=0.02)}
    results, table = _report(per)
    advice = results["storages"]["s3"]["advice"]
    assert advice["per_core_from"] == "ray" and advice["rows_per_data_core_s"] == 20_000.0
    assert advice["data_cpus_per_train_worker"] == 2  # 1.5 cores x 1.25 = 1.875
    assert "give the data group 2 CPU(s)" in table and "at least" not in table


def test_without_a_per_core_rate_the_advice_says_what_to_add():
    results, table = _report({"ray": _ray(400.0)}, model="simple_cnn")
    assert results["advised_data_cpus_per_train_worker"] is None
    assert "advice, s3: not computed: no per-core rate" in table
    assert "add limit to --paths" in table
    json.dumps(results)  # what --json writes


def test_a_rate_from_one_epoch_is_flagged_as_including_warm_up():
    _, table = _report({"limit": _limit(), "ray": _ray(10_000.0, epochs=1)})
    assert "epoch 1 only, with warm-up: --epochs 2" in table


def test_efficiency_per_epoch_and_after_the_first():
    ray = _ray(0.0)
    ray["epochs"] = [{"rows": 1000, "seconds": 1.0}, {"rows": 1000, "seconds": 0.5}] * 1
    ray["epochs"].append({"rows": 1000, "seconds": 0.25})
    ray["rows_per_s"] = 3000 / 1.75
    per = {"limit": _path(4000.0), "ray": ray}
    results = finalize(
        {"rows": 3000, "layout": "pinned", "storages": {"local": per}}, BenchOptions()
    )
    eff = results["efficiency"]
    assert eff["epochs"] == [0.25, 0.5, 1.0]
    assert eff["later_epochs"] == 2000 / 0.75 / 4000  # rows over seconds of epochs 2-3
    assert eff["all_epochs"] == 3000 / 1.75 / 4000
    table = format_table(results)
    assert "per epoch 0.25, 0.50, 1.00; epochs after the first 0.67" in table
    assert "on the same data cores" in table


@pytest.mark.parametrize(
    ("given", "written"),
    [
        ("t.json", "t-local.json"),
        ("/tmp/runs/t.json", "/tmp/runs/t-local.json"),
        ("out.d/trace", "out.d/trace-local"),  # a dot in a folder's name is not a suffix
        ("./trace", "trace-local"),
    ],
)
def test_the_timeline_goes_beside_the_given_file_one_per_storage(given, written):
    from pipeline.bench.run import timeline_path

    assert timeline_path(given, "local") == written


def test_each_epoch_has_its_rate_whole_and_from_its_first_batch():
    epochs = [
        {"rows": 1000, "seconds": 2.0, "ttfb_s": 1.0},  # half the epoch waiting to start
        {"rows": 1000, "seconds": 0.5, "ttfb_s": 0.0},
        {"rows": 0, "seconds": 0.0, "ttfb_s": None},  # nothing to time
    ]
    add_epoch_rates(epochs)
    assert [e["rows_per_s"] for e in epochs] == [500.0, 2000.0, None]
    assert [e["rows_per_s_from_first_batch"] for e in epochs] == [1000.0, 2000.0, None]


def test_the_table_shows_the_model_ceiling_and_every_paths_epochs():
    loader = _path(300.0)
    loader.update(data_wait_fraction=0.4, device="cuda:0", epochs=[
        {"rows": 600, "seconds": 2.0, "ttfb_s": 0.5}, {"rows": 600, "seconds": 2.0, "ttfb_s": 0.1},
    ])  # fmt: skip
    ray = _ray(900.0)
    ray["epochs"] = [{"rows": 500, "seconds": 1.25, "ttfb_s": 0.25}] * 2
    for r in (loader, ray):
        add_epoch_rates(r["epochs"])
    ceiling = {"rows_per_s": 1200.0, "steps": 40, "batch_rows": 256, "device": "cuda:0",
               "model": "resnet18", "what": "GPU ceiling", "seconds": 8.5}  # fmt: skip
    per = {"limit": _limit(), "dataloader": loader, "ray": ray, "model_ceiling": ceiling}
    results, table = _report(per)
    assert results["model_ceiling"] == 1200.0
    assert results["dataloader_vs_model_ceiling"] == 0.25
    assert "s3       ceiling           1200" in table
    assert "GPU ceiling: resnet18 on cuda:0, 40 steps on one batch of 256" in table
    assert "resnet18 on cuda:0 waits for data 40%" in table  # the DataLoader's, like the ray's
    assert (
        "epochs, s3 dataloader: rows/s 300 / 300; from the first batch 400 / 316; "
        "first-batch wait 0.50 / 0.10 s" in table
    )
    assert "epochs, s3 ray: rows/s 400 / 400; from the first batch 500 / 500" in table
    json.dumps(results)
