"""`ray-pipeline report RUN`: the table a person reads, the PNG they look at, runs still training,
and the one-line errors, on run folders laid out as the training driver writes them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.report import Run, draw, load_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def epoch(n: int, **changes) -> dict:
    """One epoch as pipeline/train/context.py records it (built-in loop, classification)."""
    record = {
        "epoch": n,
        "train_loss": round(1.6 / n, 4),
        "val_loss": round(0.6 / n, 4),
        "val_accuracy": round(min(0.80 + 0.05 * n, 0.99), 4),
        "val_rows": 359,
        "train_rows": 1438,
        "epoch_s": max(2.5 - 0.5 * n, 0.5),
        "rows_per_s": 1438 / max(2.5 - 0.5 * n, 0.5),
        "data_wait_fraction": 0.1 * n,
        "first_batch_s": 0.4,
        "train_digest": [3086219465227, 3079429188763],
        "skipped_records": {},
    }
    record.update(changes)
    return {k: v for k, v in record.items() if v is not None}


def write(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def checkpoint(run: Path, n: int, history: list[dict] | None) -> Path:
    """epoch-NNNN/ with the model state and, unless None, the history so far."""
    folder = run / f"epoch-{n:04d}"
    folder.mkdir(parents=True)
    (folder / "state.pt").write_bytes(b"\0" * 64)
    if history is not None:
        write(folder / "history.json", history)
    return folder


def finished_run(root: Path, epochs: int = 3, name: str = "digits-cnn") -> Path:
    run = root / name
    history = [epoch(n) for n in range(1, epochs + 1)]
    for n in (epochs - 1, epochs):  # checkpoints_to_keep=2 deleted the older ones
        checkpoint(run, n, history[:n])
    write(run / "checkpoint_manager_snapshot.json", {"checkpoints": []})
    write(
        run / "summary.json",
        {
            "run_name": name,
            "task": "classification",
            "epochs": epochs,
            "epochs_configured": epochs,
            "val_accuracy": history[-1]["val_accuracy"],
            "metrics": {"val_accuracy": history[-1]["val_accuracy"], "val_loss": 0.2},
            "rows_per_s": 1200.5,
            "data_wait_fraction": 0.213,
            "wall_s": 37.24,
            "checkpoint": str(run / f"epoch-{epochs:04d}"),
            "history": history,
        },
    )
    return run


def report(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["report", *args])
    out, err = capsys.readouterr()
    return code, out, err


def table(out: str) -> list[list[str]]:
    """The table's rows (header first), split into cells."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["epoch"])
    rows = []
    for line in lines[start:]:
        if not line.strip() or line.startswith("run:"):
            break
        rows.append(line.split())
    return rows


def test_a_finished_run_prints_one_row_per_epoch_with_its_figures(tmp_path, capsys):
    run = finished_run(tmp_path)
    code, out, err = report(capsys, str(run))
    assert code == 0, err
    assert out.splitlines()[0] == (
        f"run digits-cnn (classification): finished, 3 epochs (from {run}/summary.json)"
    )
    header, *rows = table(out)
    assert header == ["epoch", "train", "loss", "val", "loss", "val_accuracy", "rows/s", "data",
                      "wait", "epoch", "s"]  # fmt: skip
    assert rows == [
        ["1", "1.6000", "0.6000", "0.8500", "719", "10.0%", "2.0"],
        ["2", "0.8000", "0.3000", "0.9000", "959", "20.0%", "1.5"],
        ["3", "0.5333", "0.2000", "0.9500", "1,438", "30.0%", "1.0"],
    ]
    assert "run: val_accuracy=0.9500, 1,200 rows/s, data wait 21.3%, 37.2s in all" in out
    assert f"checkpoint: {run}/epoch-0003" in out
    assert "3086219465227" not in out  # the digests are for the exactly-once checks, not people


def test_a_run_in_progress_is_read_from_its_latest_checkpoint_with_a_history(tmp_path, capsys):
    run = tmp_path / "training"
    history = [epoch(n) for n in (1, 2, 3)]
    checkpoint(run, 2, history[:2])  # epoch-0001 deleted by checkpoints_to_keep
    checkpoint(run, 3, history)
    checkpoint(run, 4, None)  # still being written: no history.json yet
    code, out, err = report(capsys, str(run))
    assert code == 0, err
    assert out.splitlines()[0] == (
        f"run training: in progress, 3 epochs so far (from {run}/epoch-0003/history.json)"
    )
    assert [r[0] for r in table(out)[1:]] == ["1", "2", "3"]
    assert "run:" not in out  # no totals before the summary exists


def test_checkpoints_are_ordered_by_number_not_by_name(tmp_path):
    run = tmp_path / "long"
    checkpoint(run, 9999, [epoch(1)])
    checkpoint(run, 10000, [epoch(1), epoch(2)])  # "epoch-10000" sorts before "epoch-9999"
    assert len(load_run(str(run), _s3()).history) == 2


def test_a_run_resumed_past_its_summary_shows_the_newer_checkpoint(tmp_path, capsys):
    """Rerun with a higher train.epochs: summary.json is the old end, the checkpoints go on."""
    run = finished_run(tmp_path, epochs=2)
    checkpoint(run, 3, [epoch(n) for n in (1, 2, 3)])
    code, out, _ = report(capsys, str(run))
    assert code == 0
    assert "in progress, 3 epochs so far" in out and "epoch-0003/history.json" in out


def test_figures_a_loop_did_not_report_show_as_dashes_and_its_own_metrics_get_columns(
    tmp_path, capsys
):
    """A user's regression loop: val_mae and val_r2, no val_loss, no data figures in epoch 2."""
    run = tmp_path / "regression"
    history = [
        epoch(1, val_accuracy=None, val_loss=None, val_mae=0.52, val_r2=0.61),
        {"epoch": 2, "train_loss": 0.3, "val_mae": 0.41, "val_r2": 0.7},
    ]
    checkpoint(run, 2, history)
    code, out, err = report(capsys, str(run))
    assert code == 0, err
    header, one, two = table(out)
    assert header[5:7] == ["val_mae", "val_r2"]  # the task's metric first
    assert one[:6] == ["1", "1.6000", "-", "0.5200", "0.6100", "719"]
    assert two == ["2", "0.3000", "-", "0.4100", "0.7000", "-", "-", "-"]


def test_skipped_records_are_shown_as_totals_per_epoch(tmp_path, capsys):
    run = tmp_path / "bad-input"
    skipped = {"train": {"undecodable_image": 2, "bad_label": 3}, "validation": {"bad_label": 1}}
    checkpoint(run, 2, [epoch(1, skipped_records=skipped), epoch(2)])
    _, out, _ = report(capsys, str(run))
    header, one, two = table(out)
    assert header[-1] == "skipped" and one[-1] == "6" and two[-1] == "0"
    # a run without bad records has no such column
    clean = tmp_path / "clean"
    checkpoint(clean, 1, [epoch(1)])
    _, out, _ = report(capsys, str(clean))
    assert "skipped" not in table(out)[0]


def test_the_run_defaults_to_the_configs_run_folder(tmp_path, capsys):
    finished_run(tmp_path / "runs", name="nightly")
    code, out, _ = report(
        capsys,
        "--set",
        f"storage.checkpoint_uri={tmp_path}/runs",
        "--set",
        "storage.run_name=nightly",
    )
    assert code == 0 and out.startswith("run nightly (classification): finished, 3 epochs")


def _pixels(path: Path):
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.format, image.size, image.convert("RGB")


def test_out_draws_a_png_of_the_run(tmp_path, capsys):
    run = finished_run(tmp_path, epochs=6)
    png = tmp_path / "run.png"
    code, out, err = report(capsys, str(run), "--out", str(png))
    assert code == 0, err
    assert out.splitlines()[-1] == f"wrote {png}"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert 20_000 < png.stat().st_size < 2_000_000
    fmt, (width, height), rgb = _pixels(png)
    assert fmt == "PNG" and width >= 800 and height >= 600
    # Not blank: a fair share of the page is ink, and the curves bring colours besides grey.
    colours = rgb.getcolors(maxcolors=1 << 20)
    ink = sum(n for n, (r, g, b) in colours if min(r, g, b) < 200) / (width * height)
    assert ink > 0.02
    assert any(abs(r - b) > 80 for _, (r, g, b) in colours)  # the blue and orange lines


def test_each_panel_draws_what_the_history_has(tmp_path):
    """A run whose loop reports no validation metric still gets its other three panels."""
    history = [epoch(n, val_accuracy=None) for n in (1, 2, 3)]
    bare = Run(uri=str(tmp_path / "r"), history=history, source="x", finished=False)
    full = Run(uri=str(tmp_path / "r"), history=[epoch(n) for n in (1, 2, 3)], source="x",
               finished=False)  # fmt: skip
    a, b = draw(bare, tmp_path / "bare.png"), draw(full, tmp_path / "full.png")
    assert _pixels(a)[2].tobytes() != _pixels(b)[2].tobytes()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing", "RUN {d}/missing: no such folder"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "RUN {d}/empty: no summary.json and no "
         "checkpoint with history.json"),
        (lambda d: write(d / "r" / "summary.json", '{"history": [') and d / "r",
         "{d}/r/summary.json: not valid JSON"),
        (lambda d: write(d / "r" / "summary.json", {"task": "classification"}) and d / "r",
         '{d}/r/summary.json: no per-epoch "history" list'),
        (lambda d: write(d / "r" / "epoch-0001" / "history.json", "{oops") and d / "r",
         "{d}/r/epoch-0001/history.json: not valid JSON"),
        (lambda d: write(d / "r" / "epoch-0001" / "history.json", [1, 2]) and d / "r",
         "{d}/r/epoch-0001/history.json: history entry 0 is not a JSON object"),
        (lambda d: write(d / "r.json", "{}"), "RUN {d}/r.json: not a folder"),
    ],
    ids=["no-folder", "not-a-run", "bad-summary", "summary-without-history", "bad-history",
         "history-not-epochs", "a-file"],
)  # fmt: skip
def test_unreadable_runs_are_one_line_naming_the_file(tmp_path, capsys, make, message):
    target = make(tmp_path)
    code, out, err = report(capsys, str(target))
    assert code == 2
    assert out == ""
    assert err.startswith("error: " + message.format(d=tmp_path)), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_out_into_a_missing_folder_is_one_line(tmp_path, capsys):
    run = finished_run(tmp_path)
    code, _, err = report(capsys, str(run), "--out", str(tmp_path / "no" / "run.png"))
    assert code == 2
    assert err.strip() == f"error: --out {tmp_path}/no/run.png: folder {tmp_path}/no does not exist"


def test_file_names_are_the_ones_training_writes():
    """report.py keeps its own copies so that it does not load Ray and torch."""
    from pipeline import report
    from pipeline.train import context, driver

    assert report.SUMMARY_FILE == driver.SUMMARY_FILE
    assert report.HISTORY_FILE == context.HISTORY_FILE


def _s3():
    from pipeline.config import load_config

    return load_config(None, []).s3
