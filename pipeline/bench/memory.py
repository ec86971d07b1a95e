"""Who used the CPU and how much memory, while a bench path runs."""

from __future__ import annotations

import os
import threading
import time

# --- memory ---------------------------------------------------------------------------------


# Who used the CPU during a measurement: by what a process was seen doing (Ray renames
# its workers "ray::<task>" while they run one).
ROLES = (
    ("mosaic", ("mosaic_run",)),  # the mosaic path's process and its DataLoader workers
    ("data tasks", ("ReadParquet", "MapBatches", "preprocess")),
    ("train worker", ("RayTrainWorker",)),
    ("ray data coordinator", ("SplitCoordinator",)),
    (
        "ray system",
        (
            "raylet",
            "gcs_server",
            "dashboard",
            "Dashboard",
            "log_monitor",
            "monitor.py",
            "runtime_env",
            "TrainController",
            "_StatsActor",
            "AutoscalingCoordinator",
            "PlacementGroupCleaner",
            "PreemptionWatcher",
            "DatasetManager",
        ),
    ),
)


class ProcessSampler:
    """Peak memory and CPU time by role of this process and all its descendants (the local
    Ray, DataLoader workers), sampled every ``interval_s``.

    Memory is PSS, which splits shared pages among the processes that map them, so the object
    store's shared memory is counted once, not once per worker; it is read from smaps_rollup,
    which costs the kernel little: the sampler must not steal the CPU it measures. Little is
    not nothing: for the ~40 processes of a local cluster it was 0.1 of a core (py-spy of the
    bench process: 87% of its samples in the read), taken from the cores the consumer side
    runs on; ``pss_every`` reads it on every n-th sample only (CPU times are read on each)."""

    def __init__(self, interval_s: float = 1.0, pss_every: int = 1):
        self.interval_s = interval_s
        self.pss_every = max(1, pss_every)
        self._count = 0
        self.peak = 0
        self._names: dict[int, set[str]] = {}
        self._affinity: dict[int, frozenset[int]] = {}  # the cores each process may run on
        self._samples: list[tuple[float, dict[int, float]]] = []  # (time.time(), pid -> cpu s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _pss(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        return int(line.split()[1]) << 10
        except OSError:
            pass
        return 0

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        try:
            procs = [me, *me.children(recursive=True)]
        except psutil.Error:
            procs = [me]
        total = 0
        read_pss = self._count % self.pss_every == 0 or self._stop.is_set()
        self._count += 1
        cpu: dict[int, float] = {}
        for p in procs:
            try:
                cpu[p.pid] = sum(p.cpu_times()[:2])
                name = " ".join(p.cmdline()[:3])
                if p.pid not in self._affinity:  # fixed once a process has started
                    self._affinity[p.pid] = frozenset(p.cpu_affinity())
            except psutil.Error:
                continue
            self._names.setdefault(p.pid, set()).add(name)
            if read_pss:
                total += self._pss(p.pid)
        self._samples.append((time.time(), cpu))
        self.peak = max(self.peak, total)

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()

    def cpu_by_role(
        self,
        window: tuple[float, float] | None = None,
        *,
        cores: frozenset[int] | None = None,
        detail: bool = False,
    ) -> dict[str, float]:
        """Average cores each role used, over the measurement or a (time.time()) window of it.

        ``cores``: only the processes pinned within those cores (the pinned layout's data
        node); ``detail``: Ray's system processes by name (raylet, agents) instead of one role."""
        samples = self._samples
        if window is not None:
            inside = [x for x in samples if window[0] <= x[0] <= window[1]]
            samples = inside if len(inside) >= 2 else samples
        (t0, first), t1 = samples[0], samples[-1][0]
        seconds = max(t1 - t0, 1e-9)
        last_cpu: dict[int, float] = {}
        for _, cpu in samples:
            last_cpu.update(cpu)  # each process's last reading, also of those that ended
        me = os.getpid()
        mine = " ".join(self._names.get(me, ()))
        out: dict[str, float] = {}
        for pid, last in last_cpu.items():
            if cores is not None and not self._affinity.get(pid, frozenset()) <= cores:
                continue
            names = " ".join(self._names.get(pid, ()))
            if pid == me:
                role = "bench process"
            elif names == mine:
                role = "forked workers"  # the limit's pool, the DataLoader's workers
            else:
                role = "other"
            for candidate, markers in ROLES:
                hit = next((m for m in markers if m in names), None)
                if hit:
                    role = hit if detail and candidate == "ray system" else candidate
                    break
            if detail and role == "other" and "default_worker" in names:
                role = "idle ray workers"
            # a process born inside the window counts from zero; its last second before it
            # ended is missed (the sampler reads every second)
            out[role] = out.get(role, 0.0) + (last - first.get(pid, 0.0)) / seconds
        return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}
