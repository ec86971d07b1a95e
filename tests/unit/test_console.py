"""What a person sees: the progress line, what reaches a log that is not a terminal, and the
end of a run."""

from __future__ import annotations

import io

from pipeline import console
from pipeline.cli import _human_lines, compact_summary


def test_progress_text_shows_rows_rate_loss_wait_and_time_left():
    text = console.progress_text(
        {
            "epoch": 3,
            "epochs": 8,
            "rows": 4096,
            "total_rows": 14380,
            "rows_per_s": 2140.0,
            "loss": 0.4127,
            "data_wait_fraction": 0.12,
        }
    )
    assert text.startswith("epoch 3/8 [######")
    assert "4,096/14,380 rows" in text and "2,140 rows/s" in text
    assert "loss 0.4127" in text and "wait 12%" in text and "5s left" in text


class _Log(io.StringIO):
    def isatty(self) -> bool:
        return False


def test_a_log_gets_plain_lines_without_control_characters(monkeypatch):
    monkeypatch.setattr(console, "PLAIN_INTERVAL_S", 0.0)
    board, out = console.ProgressBoard(), _Log()
    printer = console.ProgressPrinter(board, stream=out)
    board.say("resuming from epoch 1 (s3://b/runs/r/epoch-0001)")
    board.post({"epoch": 2, "epochs": 2, "rows": 640, "total_rows": 1438, "rows_per_s": 900.0})
    printer._once()
    board.say("epoch 2/2: train_loss=0.5000 rows/s=900 data_wait=10.0% (1.6s)")
    board.post({"done": True})
    printer._once()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("resuming from epoch 1")
    assert lines[1].startswith("epoch 2/2 [") and "640/1,438 rows" in lines[1]
    assert lines[2].startswith("epoch 2/2: train_loss=0.5000")
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_a_run_ends_with_human_lines_and_a_compact_json():
    summary = {
        "run_name": "r",
        "task": "regression",
        "epochs": 4,
        "val_accuracy": None,
        "metrics": {"train_loss": 0.2, "val_loss": 0.3, "val_mae": 0.41},
        "rows_per_s": 1234.5,
        "data_wait_fraction": 0.05,
        "wall_s": 61.0,
        "checkpoint": "s3://b/runs/r/epoch-0004",
        "summary_uri": "s3://b/runs/r/summary.json",
        "history": [{"epoch": i} for i in range(1, 5)],
        "bad_records": {"skipped_rows": {"train": {"bad_label": 3}}},
    }
    compact = compact_summary(summary)
    assert compact["val_mae"] == 0.41 and "history" not in compact
    assert compact["summary_uri"] == "s3://b/runs/r/summary.json" and compact["epochs"] == 4
    lines = _human_lines(summary, compact)
    assert lines[0] == "done: val_mae 0.4100 after 4 epochs in 61s (1,234 rows/s, data wait 5%)"
    assert "skipped records in the last epoch: 3" in lines[1]
    assert lines[-1] == "summary:    s3://b/runs/r/summary.json"


def test_a_users_loop_with_its_own_metric_shows_it():
    compact = compact_summary({"task": "classification", "metrics": {"val_f1": 0.8}})
    assert compact["val_f1"] == 0.8 and "val_accuracy" not in compact


def test_figures_that_are_not_numbers_do_not_break_the_bar():
    text = console.progress_text({"epoch": 1, "epochs": 2, "rows": 5, "loss": [0.1, 0.2]})
    assert text.startswith("epoch 1/2") and "loss" not in text
    assert "acc 0.5" in console.progress_text({"epoch": 1, "epochs": 2, "acc": 0.5})


def test_raylet_messages_stay_off_the_quiet_console_and_show_with_verbose(capfd, monkeypatch):
    import logging

    import ray._private.worker as ray_worker

    from pipeline import console

    monkeypatch.setattr(ray_worker, "print_to_stdstream", ray_worker.print_to_stdstream)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    warning = "WARNING: 6 PYTHON worker processes have been started on node: abc"
    message = {"lines": [warning], "pid": "raylet", "is_err": False}
    try:
        console.setup(verbose=False)
        # what Ray's listen_error_messages thread calls for every message a raylet publishes
        ray_worker.print_to_stdstream(message, ignore_prefix=False)
        hidden = capfd.readouterr()
        assert warning not in hidden.out + hidden.err
        console.setup(verbose=True)
        ray_worker.print_to_stdstream(message, ignore_prefix=False)
        shown = capfd.readouterr()
        assert warning in shown.out + shown.err
    finally:
        console._state["verbose"] = False
        for name in console.RAY_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
