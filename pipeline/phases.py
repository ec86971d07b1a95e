"""Where a run's time goes before its first batch and after its last.

The driver and the train worker of rank 0 each stamp the moments a phase ends (wall-clock
seconds, so the two processes' stamps line up on one machine or on NTP-synced nodes);
``startup_phases`` turns the stamps into seconds per phase, in the order they happen.
``summary.json`` keeps them under ``startup`` and ``teardown``, and the console shows the
totals.
"""

from __future__ import annotations

import os
import time

# (phase, the stamp that ends it), in order; each phase starts where the one before ended
STARTUP = (
    ("cli_and_imports", "run_started"),  # from the process's start
    ("listing_and_footers", "planned"),
    ("storage_checks", "storage_checked"),
    ("ray_start", "ray_connected"),
    ("preflight_data_group", "preflight_data"),
    ("preflight_train_group", "preflight_train"),
    ("datasets_and_trainer", "fit_called"),
    ("trainer_and_worker_group", "loop_started"),  # Train's controller, workers, process group
    ("stream_setup", "shards_ready"),  # the datasets' shards, the first pass asked for
    ("model_build", "first_batch_asked"),  # the loop's model, restore, prepare_model
    ("first_block", "first_batch"),  # the first pass's first batch
)
TEARDOWN = (
    ("train_teardown", "fit_returned"),  # from the last epoch's report
    ("summary", "summary_written"),
)


def process_started() -> float:
    """When this process started (wall clock), so interpreter start and imports count too."""
    try:
        import psutil

        return psutil.Process(os.getpid()).create_time()
    except Exception:  # no psutil, or no /proc: count from the first stamp
        return time.time()


class Stamps(dict):
    """Named wall-clock moments; the first stamp of a name wins (a resumed loop's second
    first batch is not the run's)."""

    def stamp(self, name: str, at: float | None = None) -> None:
        self.setdefault(name, time.time() if at is None else at)


def _phases(stamps: dict, order, start: float | None) -> dict[str, float]:
    out: dict[str, float] = {}
    last = start
    for phase, end in order:
        if end not in stamps:
            continue
        if last is not None:
            out[phase] = round(max(0.0, stamps[end] - last), 3)
        last = stamps[end]
    return out


def startup_phases(stamps: dict) -> dict[str, float]:
    """Seconds per start-up phase, from the process's start to the first batch."""
    return _phases(stamps, STARTUP, stamps.get("process_started"))


def teardown_phases(stamps: dict) -> dict[str, float]:
    """Seconds per tear-down phase, from the last epoch's report."""
    return _phases(stamps, TEARDOWN, stamps.get("last_report"))


def describe(startup: dict[str, float], teardown: dict[str, float]) -> str:
    """One console line: the totals and the largest parts."""
    top = sorted(startup.items(), key=lambda kv: -kv[1])[:3]
    parts = ", ".join(f"{k.replace('_', ' ')} {v:.1f}s" for k, v in top)
    return (
        f"start-up: {sum(startup.values()):.1f}s to the first batch ({parts}); "
        f"tear-down: {sum(teardown.values()):.1f}s"
    )
