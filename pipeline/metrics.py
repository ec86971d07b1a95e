"""The pipeline's figures as Ray metrics: each Ray node's Prometheus endpoint serves them
beside Ray Data's and Ray Train's own (Ray prefixes every name with ``ray_``), so the chart's
PodMonitor scrapes them and its Grafana dashboard draws them. Every series carries ``run``.

Made lazily, once per process (a metric can only be made inside a Ray worker or driver);
when Ray's metrics are unavailable, recording is a no-op: figures never fail a run.
"""

from __future__ import annotations

import logging
from functools import cache

log = logging.getLogger(__name__)

GAUGES = {
    "pipeline_epoch": ("the epoch the run is in (1-based)", ("run",)),
    "pipeline_train_rows_per_second": ("training rows per second, this epoch", ("run",)),
    "pipeline_data_wait_fraction": ("share of the epoch the loop waited for data", ("run",)),
    "pipeline_train_loss": ("training loss (running, then the epoch's)", ("run",)),
    "pipeline_validation_metric": ("a validation figure of the last epoch", ("run", "metric")),
}
COUNTERS = {
    "pipeline_train_rows_total": ("rows the training loop consumed", ("run",)),
    "pipeline_preprocessed_rows_total": ("rows preprocessed on the data group", ("run", "split")),
    "pipeline_skipped_records_total": ("bad records skipped", ("run", "split", "kind")),
}


@cache
def _metric(name: str):
    try:
        from ray.util.metrics import Counter, Gauge
    except ImportError:  # pragma: no cover - Ray without metrics
        return None
    try:
        if name in GAUGES:
            desc, tags = GAUGES[name]
            return Gauge(name, description=desc, tag_keys=tags)
        desc, tags = COUNTERS[name]
        return Counter(name, description=desc, tag_keys=tags)
    except Exception as e:  # outside a Ray process, or metrics off
        log.debug("metric %s unavailable: %s", name, e)
        return None


def set_gauge(name: str, value: float, **tags: str) -> None:
    m = _metric(name)
    if m is not None and value is not None:
        try:
            m.set(float(value), tags=tags)
        except Exception as e:  # never fail a run over a figure
            log.debug("metric %s: %s", name, e)


def add(name: str, value: float, **tags: str) -> None:
    m = _metric(name)
    if m is not None and value:
        try:
            m.inc(float(value), tags=tags)
        except Exception as e:
            log.debug("metric %s: %s", name, e)
