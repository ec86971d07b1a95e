"""Run a command until a deadline: `python -m pipeline.deadline SECONDS -- COMMAND ...`.

The entrypoint of every RayJob (the chart's and `ray-pipeline submit`'s) is wrapped with it.
KubeRay 1.7 does not stop a Ray job at `activeDeadlineSeconds` when the RayJob runs on an
existing cluster (a clusterSelector): it only marks the RayJob Failed with DeadlineExceeded
(rayjob_controller.go: checkActiveDeadlineAndUpdateStatusIfNeeded), and the driver, its
actors and their GPUs go on. So the driver's own process stops itself: at the deadline the
command gets SIGTERM, then SIGKILL after a grace period; the Ray job then ends FAILED and Ray
frees what the driver held. The clock starts when the driver starts, so the stop comes at most
the time the RayJob spent Initializing (waiting for its cluster) after KubeRay's deadline;
`ray-pipeline submit` / `status` stop the Ray job at KubeRay's own deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

EXIT_DEADLINE = 124  # what coreutils' timeout returns
GRACE_S = 30.0  # from SIGTERM to SIGKILL: time for the driver to shut its Ray workers down


def run(seconds: float, argv: list[str], grace_s: float = GRACE_S) -> int:
    """Run ``argv``; its exit code, or EXIT_DEADLINE when it was stopped at the deadline.

    SIGTERM and SIGINT sent to this process (Ray's `ray job stop`) are passed on to the command.
    """
    child = subprocess.Popen(argv)

    def forward(signum, _frame):
        if child.poll() is None:
            child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    try:
        return child.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        pass
    print(
        f"deadline: {' '.join(argv[:2])} ran for {seconds:g}s, its deadline "
        "(rayJobs.activeDeadlineSeconds / submit --deadline): stopping it",
        file=sys.stderr,
        flush=True,
    )
    child.terminate()
    try:
        child.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
    return EXIT_DEADLINE


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: python -m pipeline.deadline SECONDS -- COMMAND [ARG ...]"
    if len(args) < 3 or args[1] != "--":
        print(usage, file=sys.stderr)
        return 2
    try:
        seconds = float(args[0])
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        print(f"error: deadline {args[0]!r}: expected seconds > 0", file=sys.stderr)
        return 2
    grace = float(os.environ.get("RAY_PIPELINE_DEADLINE_GRACE_S", GRACE_S))
    return run(seconds, args[2:], grace)


if __name__ == "__main__":
    sys.exit(main())
