"""A data task's work without Ray: is the block path slower than the bench's limit?

The limit times ``Preprocessor.batch`` on numpy batches made before the clock starts. A Ray
read task also converts each Arrow chunk to numpy, adds the path column, preprocesses the
whole file a chunk at a time (``pipeline.data.preprocess_block``) and turns each output into
an Arrow block. This runs each way over the same in-memory files, in one process pinned to
one core, alternating, and prints rows per CPU second.

    .venv/bin/python benchmarks/block_path.py /tmp/bench/synthetic-100000 --core 1

(the folder is a bench dataset: ``ray-pipeline bench`` writes it). Results: RESULTS.md,
"Issue #13, second pass".
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.bench.dataset import bench_workload, configure_dataset, open_dataset
from pipeline.bench.paths import _numpy_batch, _preprocessor
from pipeline.config import load_config
from pipeline.data import PATH_COLUMN, preprocess_block


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "root", type=Path, help="a bench dataset folder, e.g. /tmp/bench/synthetic-100000"
    )
    ap.add_argument("--core", type=int, default=0, help="the core to pin this process to")
    ap.add_argument("--files", type=int, default=4, help="train files to hold in memory")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    os.sched_setaffinity(0, {a.core})

    from ray.data.block import BlockAccessor

    cfg = load_config(None, [])
    manifest = json.loads((a.root / "_manifest.json").read_text())
    configure_dataset(cfg, a.root.name.rsplit("-", 1)[0], manifest)
    ds = open_dataset("local", str(a.root / "train"), cfg)
    workload = bench_workload(cfg, ds)
    spec = workload.spec
    files = ds.files[: a.files]
    tables = [pq.read_table(f, columns=spec.columns) for f in files]
    rows = sum(t.num_rows for t in tables)
    pre = _preprocessor(workload, ds.loc.fs)
    chunk = spec.chunk_rows()

    def limit() -> float:  # the bench's limit: conversion outside the clock
        batches = [_numpy_batch(rb) for t in tables for rb in t.to_batches(max_chunksize=chunk)]
        start = time.process_time()
        for b in batches:
            pre.batch(dict(b))
        return time.process_time() - start

    def block_path() -> float:  # what a read task runs, up to Ray's object store
        start = time.process_time()
        for path, t in zip(files, tables, strict=True):
            block = t.append_column(PATH_COLUMN, pa.array([path] * t.num_rows, pa.string()))
            outs = preprocess_block(
                block, spec=spec, split="train", fs=ds.loc.fs, uri_prefix="", ledger=None
            )
            pa.concat_tables([BlockAccessor.batch_to_block(out) for out in outs])
        return time.process_time() - start

    print(f"{rows} rows in {len(files)} files, chunks of {chunk}, core {a.core}")
    for _ in range(a.rounds):
        for fn in (limit, block_path):
            seconds = fn()
            print(f"{fn.__name__:11s} {rows / seconds:9,.0f} rows per CPU second", flush=True)


if __name__ == "__main__":
    main()
