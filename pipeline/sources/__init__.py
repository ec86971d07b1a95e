"""Where the data is: one module per format, each behind the interface of ``base.Split``.

``find_splits(cfg)`` picks the format (data.format, else what data.uri holds) and returns the
train and validation splits; the pre-flight and the data path ask them, never the format.
"""

from __future__ import annotations

import importlib

from pipeline.config import PipelineConfig
from pipeline.sources.base import Split, Splits

# data.format -> the module that reads it; a new format is one new module here
FORMATS = {
    "parquet": "pipeline.sources.parquet",
    "iceberg": "pipeline.sources.iceberg",
}
# formats whose reads are pinned to a snapshot or version: a resumed run reads the one it began on
PINNED = {"iceberg", "delta", "lance"}


def source_format(cfg: PipelineConfig) -> str:
    """data.format, else parquet."""
    return cfg.data.format or "parquet"


def find_splits(cfg: PipelineConfig) -> Splits:
    """The train and validation splits of the configured source, located and listed (no
    rows read); a table at the snapshot or version the run began on when it resumes."""
    fmt = source_format(cfg)
    module = importlib.import_module(FORMATS[fmt])
    if fmt in PINNED:
        return module.find_splits(cfg, pins=resumed_pins(cfg))
    return module.find_splits(cfg)


def resumed_pins(cfg: PipelineConfig) -> dict:
    """The snapshot or version of each split that the run's latest checkpoint read ({} for a
    new run): what the resumed run must read again, whatever the table holds now."""
    import pyarrow.fs as pafs

    from pipeline.report import latest_checkpoint_history
    from pipeline.storage import resolve

    storage = resolve(cfg.storage.checkpoint_uri, cfg.s3, "storage.checkpoint_uri")
    run = type(storage)(storage.uri, storage.fs, storage.join(cfg.storage.run_name), storage.field)
    try:
        if run.fs.get_file_info(run.path).type != pafs.FileType.Directory:
            return {}
    except OSError:
        return {}  # the storage check after the pre-flight names an unreachable bucket
    found = latest_checkpoint_history(run)
    if not found or not found[1]:
        return {}
    return found[1][-1].get("source") or {}


__all__ = ["FORMATS", "Split", "Splits", "find_splits", "source_format"]
