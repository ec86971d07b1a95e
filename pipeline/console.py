"""What a person sees: the pipeline's own lines, progress while it works, Ray's internals
only with ``--verbose``.

Quiet by default: Ray's driver-side loggers are set to errors, its deprecation warnings are
hidden, and the workers' output is not forwarded to the driver (``log_to_driver=False``).
The training loop tells the driver what it does through a small actor, ``ProgressBoard``
(rank 0 posts, the driver polls); the driver draws a progress bar per epoch on a terminal
and prints a plain line every few seconds elsewhere (RayJob logs, CI), and one line per
finished epoch in both.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import warnings
from typing import Any, TextIO

log = logging.getLogger(__name__)

PLAIN_INTERVAL_S = 5.0  # a progress line this often when stdout is not a terminal
# a run that waits (for its run name, for the train group) says so this often; tests shorten it
WAIT_LINE_S = float(os.environ.get("RAY_PIPELINE_WAIT_LINE_S", "30"))
BOARD_NAMESPACE = "ray-pipeline"  # the ledger's too (pipeline.data.LEDGER_NAMESPACE)
_state = {"verbose": False}


def setup(verbose: bool = False, debug: bool = False) -> None:
    """Logging for the CLI: the pipeline's lines as they are, Ray's only when verbose."""
    _state["verbose"] = verbose or debug
    level = logging.DEBUG if debug else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(verbose or debug))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if verbose or debug:
        return
    quiet_ray()
    # Ray Data's progress bars in this process (the loop draws its own)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


def quiet() -> bool:
    return not _state["verbose"]


RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.air", "filelock")
CHATTY_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "matplotlib", "PIL")


def quiet_ray() -> None:
    """Ray's loggers to errors, its deprecation warnings off (unless verbose). Again after
    ``ray.init`` and ``import ray.data``: both configure Ray's loggers, and importing Ray
    puts its own warning filter in front of ours."""
    if not quiet():
        return
    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for name in CHATTY_LOGGERS:  # "Found credentials in environment variables", ...
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    _raylet_messages_to_log()


def _raylet_messages_to_log() -> None:
    """Ray's driver prints the messages raylets publish to every job (``(raylet) WARNING: 6
    PYTHON worker processes have been started ...``) straight to the console, whatever
    ``log_to_driver`` says (``listen_error_messages``, which looks up ``print_to_stdstream``
    at each message). Quiet, they go to the ``ray`` logger instead: shown with --verbose, and
    the raylet's own log keeps them anyway."""
    try:
        import ray._private.worker as ray_worker
    except ImportError:
        return
    shown = ray_worker.print_to_stdstream
    if getattr(shown, "quiet_raylet", False):
        return

    def print_unless_quiet(data, ignore_prefix: bool):
        if data.get("pid") == "raylet" and quiet():
            for line in data.get("lines", []):
                logging.getLogger("ray").warning("(raylet) %s", line)
            return
        shown(data, ignore_prefix)

    print_unless_quiet.quiet_raylet = True
    ray_worker.print_to_stdstream = print_unless_quiet


class _Formatter(logging.Formatter):
    """Info lines as they are; warnings and errors say so; the logger's name when verbose."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info and self.verbose:
            msg += "\n" + self.formatException(record.exc_info)
        if self.verbose:
            return f"{record.levelname} {record.name}: {msg}"
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {msg}"
        return msg


# --- the board the training loop posts to ----------------------------------------------------


class ProgressBoard:
    """One per run, on the driver's node: rank 0 posts progress and messages, the driver
    takes them. Plain state, no Ray calls: posting is a fire-and-forget actor call."""

    def __init__(self):
        self.progress: dict[str, Any] = {}
        self.lines: list[str] = []
        self.stamps: dict[str, float] = {}  # rank 0's start-up and tear-down moments

    def stamp(self, stamps: dict[str, float]) -> None:
        self.stamps.update(stamps)

    def post(self, progress: dict[str, Any]) -> None:
        self.progress = progress

    def say(self, line: str) -> None:
        self.lines.append(line)

    def take_stamps(self) -> dict[str, float]:
        return dict(self.stamps)

    def take(self) -> tuple[dict[str, Any], list[str]]:
        lines, self.lines = self.lines, []
        return self.progress, lines


def board_name(run_name: str) -> str:
    return f"progress-{run_name}"


# --- drawing -----------------------------------------------------------------------------------


def _fmt_rows(n: float) -> str:
    return f"{int(n):,}"


def _fmt_s(s: float) -> str:
    s = max(0.0, s)
    return f"{s:.0f}s" if s < 100 else f"{int(s // 60)}m{int(s % 60):02d}s"


PROGRESS_KEYS = {
    "epoch",
    "epochs",
    "rows",
    "total_rows",
    "rows_per_s",
    "data_wait_fraction",
    "done",
}


def progress_text(p: dict[str, Any], width: int = 24) -> str:
    """``epoch 3/8 [#######.........] 4,096/14,380 rows 2,140 rows/s loss 0.41 wait 12% 5s left``"""
    done, total = p.get("rows", 0), p.get("total_rows") or 0
    parts = [f"epoch {p.get('epoch', '?')}/{p.get('epochs', '?')}"]
    if total:
        frac = min(1.0, done / total)
        filled = int(frac * width)
        parts.append("[" + "#" * filled + "." * (width - filled) + "]")
        parts.append(f"{_fmt_rows(done)}/{_fmt_rows(total)} rows")
    else:
        parts.append(f"{_fmt_rows(done)} rows")
    rate = p.get("rows_per_s") or 0
    if rate:
        parts.append(f"{_fmt_rows(rate)} rows/s")
    for key, value in p.items():  # running figures a loop gave ctx.progress (numbers only)
        if key not in PROGRESS_KEYS and isinstance(value, int | float):
            parts.append(f"{key} {value:.4g}")
    if isinstance(p.get("data_wait_fraction"), int | float):
        parts.append(f"wait {100 * p['data_wait_fraction']:.0f}%")
    if total and rate and done < total:
        parts.append(f"{_fmt_s((total - done) / rate)} left")
    return " ".join(parts)


class ProgressPrinter:
    """Draws what the board says: on a terminal one line redrawn in place, elsewhere a plain
    line every ``PLAIN_INTERVAL_S`` seconds; messages (epoch lines, resuming) as they come."""

    def __init__(self, board, stream: TextIO | None = None, interval_s: float = 0.5):
        """``board``: the run's ProgressBoard actor, or a plain ProgressBoard (tests)."""
        self.board = board
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._drawn = False
        self._last_plain = 0.0
        self._last_text = ""

    def __enter__(self) -> ProgressPrinter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._once()  # the last lines posted
        self._clear()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._once()

    def _take(self):
        if isinstance(self.board, ProgressBoard):
            return self.board.take()
        import ray

        return ray.get(self.board.take.remote(), timeout=5)

    def _once(self) -> None:
        try:
            self._draw()
        except Exception as e:  # drawing never fails a run nor hides its error
            log.debug("progress: %s", e)

    def _draw(self) -> None:
        try:
            progress, lines = self._take()
        except Exception:  # the board is gone or busy: nothing to draw this time
            return
        for line in lines:
            self._clear()
            print(line, file=self.stream, flush=True)
        if not progress or progress.get("done"):
            return
        text = progress_text(progress)
        if self.tty:
            self._clear()
            self.stream.write(text)
            self.stream.flush()
            self._drawn = True
        elif text != self._last_text and time.monotonic() - self._last_plain >= PLAIN_INTERVAL_S:
            print(text, file=self.stream, flush=True)
            self._last_plain = time.monotonic()
            self._last_text = text

    def _clear(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._drawn = False


class FileProgress:
    """Progress of a local loop (``prepare``): a redrawn line on a terminal, else a plain line
    every few seconds; ``done`` prints the last state."""

    def __init__(self, what: str, total: int, unit: str = "rows", stream: TextIO | None = None):
        self.what, self.total, self.unit = what, total, unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = self._last = time.monotonic()
        self._text = ""
        self._shown = ""

    def update(self, done: int, extra: str = "") -> None:
        now = time.monotonic()
        rate = done / max(now - self.start, 1e-9)
        self._text = f"{self.what}: {_fmt_rows(done)}/{_fmt_rows(self.total)} {self.unit}"
        self._text += f" ({_fmt_rows(rate)} {self.unit}/s){extra}"
        if self.tty:
            self.stream.write("\r\033[K" + self._text)
            self.stream.flush()
        elif now - self._last >= PLAIN_INTERVAL_S:
            self._print()
            self._last = now

    def _print(self) -> None:
        print(self._text, file=self.stream, flush=True)
        self._shown = self._text

    def done(self) -> None:
        """The final state, on a line of its own."""
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()
        if self._text and self._text != self._shown:
            self._print()
