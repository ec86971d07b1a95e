"""A preprocessing class: set-up once per data worker, then one call per batch.

`data.preprocess: mytable.preprocess:Standardise` names it; `data.preprocess_args` are the
constructor's keyword arguments. Ray Data runs it in an actor pool on the data group."""

from __future__ import annotations

import json
from urllib.parse import urlparse

import numpy as np

from pipeline.workloads.table import feature_matrix


def _read(uri: str) -> bytes:
    if uri.startswith("s3://"):
        import boto3  # honours AWS_ENDPOINT_URL_S3, which the chart sets on every Ray pod

        u = urlparse(uri)
        obj = boto3.client("s3").get_object(Bucket=u.netloc, Key=u.path.lstrip("/"))
        return obj["Body"].read()
    with open(uri, "rb") as f:
        return f.read()


class Standardise:
    """(x - mean) / std per feature, with the statistics of the train split read once; the
    statistics file names the feature columns, in order."""

    def __init__(self, stats_uri: str):
        stats = json.loads(_read(stats_uri))
        self.columns = list(stats["mean"])
        self.mean = np.array([stats["mean"][c] for c in self.columns], dtype=np.float32)
        self.std = np.array([stats["std"][c] for c in self.columns], dtype=np.float32)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feature_matrix(batch, self.columns)
        return {"features": (x - self.mean) / self.std, "label": batch["label"]}
