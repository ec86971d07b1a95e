"""The bench's ``mosaic`` path, run by ``pipeline.bench.mosaic`` in an environment that has
mosaicml-streaming (its pins, numpy<2.2 among them, differ from the pipeline's).

Reads one JSON object of arguments from the file argv[1] names; writes the bench's Parquet
train files as MDS shards (once per dataset, in ``mds_dir``), uploads them to ``remote`` (S3,
the same moto server) when given, then streams them with ``StreamingDataset`` and a DataLoader
of ``workers`` workers (pinned to ``cores``) that run the pipeline's own preprocessing on each
batch of ``batch_size`` rows. Prints one JSON line: the epochs' rows and seconds.

Imports only ``pipeline.workloads`` (numpy, PIL, pydantic) and ``pipeline.usercode`` (the
device transforms, applied in the consumer) from the pipeline, never Ray.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import shutil
import sys
import time


def convert(files: list[str], columns: tuple[str, str], out: str) -> float:
    """The Parquet files as MDS shards of 8 MiB in ``out``; seconds it took (0 when there)."""
    import pyarrow.parquet as pq
    from streaming import MDSWriter

    if os.path.exists(os.path.join(out, "index.json")):
        return 0.0
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    image, label = columns
    with MDSWriter(out=out, columns={image: "bytes", label: "int"}, size_limit=8 << 20) as w:
        for path in files:
            table = pq.read_table(path, columns=[image, label])
            for img, lab in zip(
                table.column(image).to_pylist(), table.column(label).to_pylist(), strict=True
            ):
                w.write({image: img, label: int(lab)})
    return time.perf_counter() - start


def upload(local: str, remote: str) -> None:
    import boto3

    bucket, _, prefix = remote.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT_URL"])
    try:
        s3.create_bucket(Bucket=bucket)
    except Exception:  # noqa: BLE001 - exists already
        pass
    for name in sorted(os.listdir(local)):
        s3.upload_file(os.path.join(local, name), bucket, f"{prefix}/{name}")


def collate(samples: list[dict], *, fn, args: dict, columns: tuple[str, str]):
    """A batch of MDS samples through the pipeline's preprocessing, in the worker."""
    import numpy as np
    import torch

    image, label = columns
    batch = {
        image: np.array([s[image] for s in samples], dtype=object),
        label: np.array([s[label] for s in samples], dtype=np.int64),
    }
    out, _bad = fn(batch, split="train", **args)
    return torch.from_numpy(out["image"]), torch.from_numpy(np.asarray(out[label]))


def pin(cores: list[int] | None, _worker_id: int) -> None:
    if cores:
        os.sched_setaffinity(0, cores)


def import_streaming():
    """``streaming``, with its vision datasets (CIFAR-10 etc., unused here) stubbed out when
    torchvision does not load: PyPI's torchvision wheel is built for the CUDA torch, and with
    the CPU torch its operators fail to register at import."""
    import types

    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - RuntimeError: operator torchvision::nms does not exist
        for name in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[name]
        sys.modules["streaming.vision"] = types.ModuleType("streaming.vision")
    import streaming

    return streaming


def main() -> None:
    with open(sys.argv[1]) as f:
        a = json.load(f)
    import_streaming()
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory
    from torch.utils.data import DataLoader

    columns = (a["image_column"], a["label_column"])
    convert_s = convert(a["parquet_files"], columns, a["mds_dir"])
    if a.get("remote"):  # a fresh moto server each bench run
        upload(a["mds_dir"], a["remote"])
    module, _, attr = a["preprocess"].partition(":")
    fn = getattr(importlib.import_module(module), attr)
    clean_stale_shared_memory()
    cache = a["cache_dir"]
    shutil.rmtree(cache, ignore_errors=True)  # the first epoch downloads, as in a fresh job
    ds = StreamingDataset(
        remote=a.get("remote"),
        local=cache if a.get("remote") else a["mds_dir"],
        shuffle=True,
        batch_size=a["batch_size"],
    )
    loader = DataLoader(
        ds,
        batch_size=a["batch_size"],
        num_workers=a["workers"],
        prefetch_factor=4,
        persistent_workers=True,
        collate_fn=functools.partial(collate, fn=fn, args=a["preprocess_args"], columns=columns),
        worker_init_fn=functools.partial(pin, a.get("cores")),
    )
    from pipeline.usercode import UserCallable

    steps = [UserCallable(**t).build("train") for t in a.get("device_transforms", [])]
    epochs = []
    for _ in range(a["epochs"]):
        rows, first = 0, None
        start = time.perf_counter()
        for x, y in loader:
            first = first if first is not None else time.perf_counter() - start
            rows += len(y)
            batch = {"image": x, columns[1]: y}
            for step in steps:
                batch = step(batch, split="train")
        epochs.append({"rows": rows, "seconds": time.perf_counter() - start, "ttfb_s": first})
    print(json.dumps({"epochs": epochs, "convert_s": convert_s}), flush=True)


if __name__ == "__main__":
    main()
