"""Start-up and tear-down phases from the moments the driver and rank 0 stamp."""

from __future__ import annotations

from pipeline.phases import Stamps, describe, startup_phases, teardown_phases


def test_each_phase_runs_from_the_stamp_before_it_in_order():
    stamps = Stamps(process_started=100.0)
    for name, at in [
        ("run_started", 101.5),
        ("planned", 101.7),
        ("storage_checked", 101.7),
        ("ray_connected", 104.0),
        ("preflight_data", 105.0),
        ("preflight_train", 105.5),
        ("fit_called", 105.6),
        ("loop_started", 109.0),
        ("shards_ready", 109.2),
        ("first_batch_asked", 110.0),
        ("first_batch", 110.1),
    ]:
        stamps.stamp(name, at)
    phases = startup_phases(stamps)
    assert list(phases) == [
        "cli_and_imports",
        "listing_and_footers",
        "storage_checks",
        "ray_start",
        "preflight_data_group",
        "preflight_train_group",
        "datasets_and_trainer",
        "trainer_and_worker_group",
        "stream_setup",
        "model_build",
        "first_block",
    ]
    assert phases["cli_and_imports"] == 1.5 and phases["ray_start"] == 2.3
    assert abs(sum(phases.values()) - 10.1) < 1e-9  # the phases add up to process start..batch
    line = describe(phases, {"train_teardown": 1.0, "ray_shutdown": 0.5})
    assert line.startswith("start-up: 10.1s to the first batch (trainer and worker group 3.4s")
    assert line.endswith("tear-down: 1.5s")


def test_a_phase_whose_stamp_is_missing_merges_into_the_next():
    stamps = Stamps(process_started=0.0, run_started=1.0, ray_connected=4.0, first_batch=9.0)
    assert startup_phases(stamps) == {
        "cli_and_imports": 1.0,
        "ray_start": 3.0,
        "first_block": 5.0,
    }


def test_the_first_stamp_of_a_name_is_kept():
    stamps = Stamps()
    stamps.stamp("first_batch", 5.0)
    stamps.stamp("first_batch", 50.0)  # a later epoch's: not the run's first
    assert stamps["first_batch"] == 5.0


def test_teardown_counts_from_the_last_report():
    stamps = Stamps(last_report=10.0, fit_returned=12.5, summary_written=12.75)
    assert teardown_phases(stamps) == {"train_teardown": 2.5, "summary": 0.25}
