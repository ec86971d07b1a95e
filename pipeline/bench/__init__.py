"""``ray-pipeline bench``: does the pipeline keep the trainer fed, next to its ceilings?

On one synthetic dataset of encoded images, on local disk and on S3, it measures rows/s of:

- ``limit``: the pipeline's own preprocessing alone, one process per data core, on batches
  already in memory: the CPU ceiling of this machine for this work;
- ``raw_read``: pyarrow reading the files: the storage ceiling;
- ``dataloader``: a PyTorch DataLoader over the same files (workers = data cores) with the
  same preprocessing: what users would pick instead;
- ``ray``: the pipeline's own path (``pipeline.data`` → ``iter_torch_batches`` inside a Train
  worker), timed inside the loop from the first request to the last batch;

plus time to first batch (the loop's wait, and the time from its shard request), fit start-up
and tear-down, peak memory (every process of this run, shared memory counted once, and the
object store) and, with ``--model``, the share of each training step spent waiting for data
and the data-group CPUs per train worker that keep that model fed.
"""

from pipeline.bench.paths import ALL_PATHS, PATHS
from pipeline.bench.report import advise_data_cpus, finalize, format_table
from pipeline.bench.run import BenchOptions, run_bench

__all__ = [
    "ALL_PATHS",
    "PATHS",
    "BenchOptions",
    "advise_data_cpus",
    "finalize",
    "format_table",
    "run_bench",
]
