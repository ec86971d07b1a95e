"""``ray-pipeline report RUN``: a run's per-epoch table, and with ``--out`` its curves as a PNG.

RUN is the folder that holds ``summary.json`` (``<storage.checkpoint_uri>/<storage.run_name>``),
local or ``s3://``. A finished run is read from ``summary.json``; a run still training (or resumed
past its summary) from the history saved in its latest checkpoint, ``epoch-NNNN/history.json``.
Any per-epoch figure may be missing (a user's loop reports what it wants): it shows as ``-``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import S3Section, load_config
from pipeline.errors import DataError, StorageError, first_line

if TYPE_CHECKING:  # pyarrow loads when a run is read: the CLI's parser stays light
    import pyarrow.fs as pafs

    from pipeline.storage import Location

# Written by the training driver and context (pipeline/train: driver.SUMMARY_FILE,
# context.HISTORY_FILE and the `epoch-NNNN` checkpoint names); not imported from there because
# that would load Ray and torch for a command that only reads JSON.
SUMMARY_FILE = "summary.json"
HISTORY_FILE = "history.json"
CHECKPOINT_DIR = re.compile(r"^epoch-(\d+)$")

# Figures that are not validation metrics although named val_*.
NOT_METRICS = {"val_loss", "val_rows"}
# The task's metric first (train.task), then whatever else a loop reported, alphabetically.
PREFERRED_METRICS = ("val_accuracy", "val_mae")


@dataclass
class Run:
    """What a run folder says about its epochs."""

    uri: str
    history: list[dict[str, Any]]
    source: str  # the file the history came from
    finished: bool  # summary.json holds the whole history
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.summary.get("run_name") or self.uri.rstrip("/").rsplit("/", 1)[-1]

    @property
    def metrics(self) -> list[str]:
        """The validation metrics any epoch reported (numbers), the task's first."""
        found = {
            k
            for h in self.history
            for k, v in h.items()
            if k.startswith("val_") and k not in NOT_METRICS and _number(v) is not None
        }
        first = [m for m in PREFERRED_METRICS if m in found]
        return first + sorted(found - set(first))


# --- reading a run ---------------------------------------------------------------------------


def load_run(uri: str, s3: S3Section) -> Run:
    """The run at ``uri``: its summary when finished, else its latest checkpoint's history.

    Raises StorageError when the folder is missing or holds neither, DataError when a JSON
    file cannot be read as one; each names the file."""
    import pyarrow.fs as pafs

    from pipeline.storage import check_bucket, resolve

    loc = resolve(uri, s3, "RUN")
    check_bucket(loc, s3)
    info = _info(loc, loc.path)
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"RUN {loc.uri}: no such folder")
    if info.type != pafs.FileType.Directory:
        raise StorageError(f"RUN {loc.uri}: not a folder (give the folder that holds summary.json)")

    summary = None
    summary_path = loc.join(SUMMARY_FILE)
    if _info(loc, summary_path).type == pafs.FileType.File:
        summary = _read_json(loc, summary_path)
        if not isinstance(summary, dict) or not isinstance(summary.get("history"), list):
            raise DataError(f'{loc.uri_of(summary_path)}: no per-epoch "history" list')
    checkpoint = latest_checkpoint_history(loc)

    if summary is not None and (
        checkpoint is None or len(checkpoint[1]) <= len(summary["history"])
    ):
        history, source, finished = summary["history"], summary_path, True
    elif checkpoint is not None:  # training, or resumed with more epochs than the summary has
        source, history = checkpoint
        finished = False
    else:
        raise StorageError(
            f"RUN {loc.uri}: no {SUMMARY_FILE} and no checkpoint with {HISTORY_FILE} "
            "(epoch-NNNN/): not a run folder, or its first epoch has not finished yet"
        )
    for i, h in enumerate(history):
        if not isinstance(h, dict):
            raise DataError(f"{loc.uri_of(source)}: history entry {i} is not a JSON object")
    return Run(
        uri=loc.uri,
        history=history,
        source=loc.uri_of(source),
        finished=finished,
        summary=summary or {},
    )


def latest_checkpoint_history(loc: Location) -> tuple[str, list] | None:
    """(path, history) of the highest-numbered epoch-NNNN/ that has a history.json; older ones
    may be gone (train.checkpoints_to_keep), the newest may still be uploading."""
    import pyarrow.fs as pafs

    try:
        entries = loc.fs.get_file_info(pafs.FileSelector(loc.path))
    except OSError as e:
        raise StorageError(f"RUN {loc.uri}: cannot list it: {first_line(e)}") from None
    numbered = []
    for entry in entries:
        m = CHECKPOINT_DIR.match(entry.base_name)
        if m and entry.type == pafs.FileType.Directory:
            numbered.append((int(m.group(1)), entry.path))
    for _, path in sorted(numbered, reverse=True):
        history_path = f"{path}/{HISTORY_FILE}"
        if _info(loc, history_path).type == pafs.FileType.File:
            history = _read_json(loc, history_path)
            if not isinstance(history, list):
                raise DataError(f"{loc.uri_of(history_path)}: expected a JSON list of epochs")
            return history_path, history
    return None


def _info(loc: Location, path: str) -> pafs.FileInfo:
    try:
        return loc.fs.get_file_info(path)
    except OSError as e:
        raise StorageError(
            f"RUN {loc.uri}: cannot read {loc.uri_of(path)}: {first_line(e)}"
        ) from None


def _read_json(loc: Location, path: str) -> Any:
    try:
        with loc.fs.open_input_stream(path) as f:
            data = f.read()
    except OSError as e:
        raise StorageError(f"cannot read {loc.uri_of(path)}: {first_line(e)}") from None
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{loc.uri_of(path)}: not valid JSON ({first_line(e)})") from None


# --- the table -------------------------------------------------------------------------------


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def skipped_total(epoch: dict[str, Any]) -> int | None:
    """Records skipped in the epoch, all splits and kinds (``{split: {kind: n}}``)."""
    counts = epoch.get("skipped_records")
    if not isinstance(counts, dict):
        return None
    total = 0
    for per_kind in counts.values():
        values = per_kind.values() if isinstance(per_kind, dict) else [per_kind]
        total += sum(int(n) for n in values if _number(n) is not None)
    return total


def _fmt(v: Any, spec: str, scale: float = 1.0, suffix: str = "") -> str:
    n = _number(v)
    return "-" if n is None else f"{n * scale:{spec}}{suffix}"


def table_columns(run: Run) -> list[tuple[str, Any]]:
    """(header, epoch -> cell text) for each column of the per-epoch table."""
    cols: list[tuple[str, Any]] = [
        ("epoch", lambda h, i: str(h.get("epoch", i + 1))),
        ("train loss", lambda h, i: _fmt(h.get("train_loss"), ".4f")),
        ("val loss", lambda h, i: _fmt(h.get("val_loss"), ".4f")),
    ]
    for m in run.metrics:
        cols.append((m, lambda h, i, m=m: _fmt(h.get(m), ".4f")))
    cols += [
        ("rows/s", lambda h, i: _fmt(h.get("rows_per_s"), ",.0f")),
        ("data wait", lambda h, i: _fmt(h.get("data_wait_fraction"), ".1f", 100, "%")),
        ("epoch s", lambda h, i: _fmt(h.get("epoch_s"), ".1f")),
    ]
    if any(skipped_total(h) for h in run.history):
        cols.append(("skipped", lambda h, i: str(skipped_total(h) or 0)))
    return cols


def format_report(run: Run) -> str:
    """The header line, the per-epoch table and, for a finished run, its totals."""
    n = len(run.history)
    task = f" ({run.summary['task']})" if run.summary.get("task") else ""
    if run.finished:
        state = f"finished, {n} epoch{'s' * (n != 1)}"
        configured = run.summary.get("epochs_configured")
        if isinstance(configured, int) and configured > n:
            state += f" of {configured}"
    else:
        state = f"in progress, {n} epoch{'s' * (n != 1)} so far"
    lines = [f"run {run.name}{task}: {state} (from {run.source})"]
    if not run.history:
        return "\n".join([*lines, "no epoch recorded"])

    cols = table_columns(run)
    rows = [[cell(h, i) for _, cell in cols] for i, h in enumerate(run.history)]
    widths = [max(len(head), *(len(r[j]) for r in rows)) for j, (head, _) in enumerate(cols)]
    lines.append("  ".join(head.rjust(w) for (head, _), w in zip(cols, widths, strict=True)))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    if run.finished:
        lines.append(_totals(run))
    return "\n".join(lines)


def _totals(run: Run) -> str:
    s = run.summary
    parts = []
    for m in run.metrics[:1]:  # the task's metric, as the summary has it
        value = _number((s.get("metrics") or {}).get(m, s.get(m)))
        if value is not None:
            parts.append(f"{m}={value:.4f}")
    if _number(s.get("rows_per_s")) is not None:
        parts.append(f"{s['rows_per_s']:,.0f} rows/s")
    if _number(s.get("data_wait_fraction")) is not None:
        parts.append(f"data wait {100 * s['data_wait_fraction']:.1f}%")
    if _number(s.get("wall_s")) is not None:
        parts.append(f"{s['wall_s']:.1f}s in all")
    line = "run: " + ", ".join(parts) if parts else "run: no totals in summary.json"
    return line + (f"\ncheckpoint: {s['checkpoint']}" if s.get("checkpoint") else "")


# --- the plot --------------------------------------------------------------------------------


def _series(run: Run, key: str, scale: float = 1.0) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, h in enumerate(run.history):
        y = _number(h.get(key))
        if y is not None:
            xs.append(_number(h.get("epoch")) or float(i + 1))
            ys.append(y * scale)
    return xs, ys


def draw(run: Run, out: str | Path) -> Path:
    """Loss, validation metric, rows/s and data-wait share per epoch, as a PNG at ``out``."""
    import logging

    # quiet before the import: its first run logs "generated new fontManager" at INFO
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    out = Path(out)
    if not out.parent.is_dir():
        raise StorageError(f"--out {out}: folder {out.parent} does not exist")
    fig = Figure(figsize=(11, 7.5), layout="constrained")
    state = "finished" if run.finished else "in progress"
    fig.suptitle(f"{run.name}: {len(run.history)} epochs ({state})", fontsize=13)
    (loss, metric), (speed, wait) = fig.subplots(2, 2, sharex=True)
    panels = [
        (loss, "loss", [("train loss", "train_loss"), ("val loss", "val_loss")], 1.0),
        (
            metric,
            "validation: " + (", ".join(run.metrics) or "metric"),
            [(m, m) for m in run.metrics],
            1.0,
        ),
        (speed, "train rows/s", [("rows/s", "rows_per_s")], 1.0),
        (wait, "data-wait share of the epoch", [("data wait", "data_wait_fraction")], 100.0),
    ]
    for ax, title, lines, scale in panels:
        ax.set_title(title, loc="left", fontsize=11)
        drawn = 0
        for label, key in lines:
            xs, ys = _series(run, key, scale)
            if xs:
                ax.plot(xs, ys, marker="o", markersize=4, label=label)
                drawn += 1
        if not drawn:
            ax.text(0.5, 0.5, "not reported", ha="center", va="center", transform=ax.transAxes,
                    color="grey")  # fmt: skip
        elif len(lines) > 1:
            ax.legend(frameon=False)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    wait.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    wait.set_ylim(bottom=0)
    speed.set_ylim(bottom=0)
    for ax in (speed, wait):
        ax.set_xlabel("epoch")
    try:
        fig.savefig(out, format="png", dpi=100)
    except OSError as e:
        raise StorageError(f"--out {out}: cannot write it: {e.strerror or e}") from None
    return out


# --- the command -----------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    uri = args.run or f"{cfg.storage.checkpoint_uri.rstrip('/')}/{cfg.storage.run_name}"
    run = load_run(uri, cfg.s3)
    print(format_report(run), flush=True)
    if args.out:
        print(f"wrote {draw(run, args.out)}", flush=True)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `report` subcommand to the CLI."""
    from pipeline.cli import _common  # the same --config / --set / --debug as train

    p = sub.add_parser(
        "report",
        help="a run's per-epoch table, and with --out its curves as a PNG",
        description="Print the per-epoch table of a run (loss, validation metrics, rows/s, "
        "data wait, epoch time) from its summary.json, or, while it trains, from its latest "
        "checkpoint; --out also draws them. s3:// runs use the config's s3 section "
        "(--set s3.endpoint=http://minio:9000).",
    )
    _common(p)
    p.add_argument(
        "run",
        nargs="?",
        metavar="RUN",
        help="the run's folder, local or s3:// (the one holding summary.json; default: "
        "<storage.checkpoint_uri>/<storage.run_name> of the config)",
    )
    p.add_argument("--out", metavar="FILE.png", help="also draw the run's curves into this PNG")
    p.set_defaults(func=cmd_report)
