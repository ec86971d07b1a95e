"""The ``mosaic`` path: Mosaic Streaming (MDS shards, ``StreamingDataset``) as a peer."""

from __future__ import annotations

from pipeline.errors import PipelineError


def measure_mosaic(ds, cfg, workdir, cpus, cores, python) -> dict:
    raise PipelineError("--paths mosaic: not built yet")
