"""Cost as the work grows (#13, point 4): the driver's time and memory for the pre-flight
(``pipeline.preflight.plan``: listing, every footer, the columns, the sample batch) and for
planning (``pipeline.data.build_dataset`` of the train split: Ray Data's read plan), and
moto's own floor (one bare ranged GET per train file), over
100, 1,000 and 10,000 small Parquet files on moto's S3, and over the same file count with
more rows per file (driver memory should not grow with rows).

    .venv/bin/python benchmarks/scale_plan.py [--files 100,1000,10000] [--rows-per-file 20]
        [--json out.json]

Memory is this process's RSS, sampled every 50 ms: the peak above what it held before the
step (Ray's driver is connected first, so its start-up is not counted).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import threading
import time

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq


class PeakRss:
    """The peak RSS of this process over a block, above its RSS when the block began."""

    def __init__(self, interval_s: float = 0.05):
        self.interval_s, self.peak, self.base = interval_s, 0, 0
        self._stop = threading.Event()

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, me.memory_info().rss)
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self.base = self.peak = psutil.Process().memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.base


def parquet_file(rows: int, seed: int) -> bytes:
    """``rows`` MNIST-sized PNG rows (image, label) as one Parquet file."""
    from pipeline.workloads.image import encode_image

    rng = np.random.default_rng(seed)
    imgs = [encode_image(rng.integers(0, 255, (28, 28), np.uint8), "png") for _ in range(rows)]
    table = pa.table(
        {"image": pa.array(imgs, pa.binary()), "label": pa.array(np.arange(rows) % 10, pa.int64())}
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def upload(client, bucket: str, prefix: str, files: int, body: bytes) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def put(i: int) -> None:
        client.put_object(Bucket=bucket, Key=f"{prefix}/part-{i:05d}.parquet", Body=body)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(files)))


def bare_gets(endpoint: str, bucket: str, prefix: str, files: int, threads: int = 16) -> float:
    """Seconds for one ranged GET of each train file's last 8 KiB from a bare HTTP client
    (moto checks no signatures): what the S3 server itself costs per file, the floor of any
    footer check that reads every file."""
    import http.client
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from urllib.parse import urlparse

    host = urlparse(endpoint)
    local = threading.local()

    def get(i: int) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(host.hostname, host.port)
        conn.request(
            "GET", f"/{bucket}/{prefix}/part-{i:05d}.parquet", headers={"Range": "bytes=-8192"}
        )
        conn.getresponse().read()

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(get, range(files)))
    return time.perf_counter() - start


def measure(endpoint: str, uri: str) -> dict:
    from pipeline.config import PipelineConfig
    from pipeline.data import build_dataset
    from pipeline.preflight import plan

    cfg = PipelineConfig.model_validate({"data": {"uri": uri}, "s3": {"endpoint": endpoint}})
    with PeakRss() as mem:
        start = time.perf_counter()
        p = plan(cfg)
        preflight_s = time.perf_counter() - start
    preflight_mem = mem.growth
    with PeakRss() as mem:
        start = time.perf_counter()
        build_dataset(
            p.splits.train,
            p.workload.spec,
            p.workload.cfg.data,
            selector=None,
        )
        planning_s = time.perf_counter() - start
    return {
        "train_files": len(p.splits.train.files),
        "train_rows": p.splits.train.rows,
        "preflight_s": preflight_s,
        "preflight_rss_growth_bytes": preflight_mem,
        "planning_s": planning_s,
        "planning_rss_growth_bytes": mem.growth,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", default="100,1000,10000")
    ap.add_argument("--rows-per-file", type=int, default=20)
    ap.add_argument("--rows-check", type=int, default=1000, help="files for the rows check")
    ap.add_argument("--json")
    a = ap.parse_args()

    import boto3
    import ray

    from pipeline.bench.dataset import start_moto

    endpoint, moto = start_moto()
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="scale")
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    cases = [(int(n), a.rows_per_file) for n in a.files.split(",")]
    cases.append((a.rows_check, a.rows_per_file * 50))  # same files, 50x the rows
    results = []
    try:
        for files, rows in cases:
            prefix = f"f{files}-r{rows}"
            body = parquet_file(rows, files)
            t = time.perf_counter()
            upload(client, "scale", f"{prefix}/train", files, body)
            upload(client, "scale", f"{prefix}/validation", max(1, files // 10), body)
            print(f"{prefix}: uploaded in {time.perf_counter() - t:.1f}s", flush=True)
            r = {"files": files, "rows_per_file": rows, **measure(endpoint, f"s3://scale/{prefix}")}
            r["bare_get_s"] = bare_gets(endpoint, "scale", f"{prefix}/train", files)
            print(json.dumps(r), flush=True)
            results.append(r)
    finally:
        ray.shutdown()
        moto.stop()
    print(
        f"{'train files':>11} {'rows':>9} {'pre-flight':>11} {'mem':>8} {'planning':>9} {'mem':>8}"
        f" {'bare GETs':>10}"
    )
    for r in results:
        print(
            f"{r['train_files']:>11} {r['train_rows']:>9} {r['preflight_s']:>10.2f}s "
            f"{r['preflight_rss_growth_bytes'] / 2**20:>6.0f}Mi {r['planning_s']:>8.2f}s "
            f"{r['planning_rss_growth_bytes'] / 2**20:>6.0f}Mi {r['bare_get_s']:>9.2f}s"
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
