"""Write scikit-learn's wine table (178 rows, 13 features, 3 classes) as Parquet train and
validation splits, plus the train split's feature statistics the Standardise class reads.

    python examples/table/make_dataset.py data/wine
    python examples/table/make_dataset.py s3://bucket/wine --endpoint http://minio:9000
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import S3Section
from pipeline.storage import resolve, write_json

FEATURES = [
    "alcohol",
    "malic_acid",
    "ash",
    "alcalinity_of_ash",
    "magnesium",
    "total_phenols",
    "flavanoids",
    "nonflavanoid_phenols",
    "proanthocyanins",
    "color_intensity",
    "hue",
    "od280_od315",
    "proline",
]


def write(out_uri: str, endpoint: str | None = None, seed: int = 0) -> dict:
    from sklearn.datasets import load_wine

    wine = load_wine()
    x, y = wine.data.astype(np.float64), wine.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_val = len(y) // 5
    splits = {"validation": order[:n_val], "train": order[n_val:]}
    out = resolve(out_uri, S3Section(endpoint=endpoint), "output")
    for split, idx in splits.items():
        table = pa.table({**{f: x[idx, i] for i, f in enumerate(FEATURES)}, "label": y[idx]})
        path = out.join(split, "part-00000.parquet")
        if not out.is_s3:
            import os

            os.makedirs(os.path.dirname(path), exist_ok=True)
        pq.write_table(table, path, filesystem=out.fs)
    train = x[splits["train"]]
    stats = {
        "mean": dict(zip(FEATURES, train.mean(0).tolist(), strict=True)),
        "std": dict(zip(FEATURES, train.std(0).tolist(), strict=True)),
    }
    write_json(out, "feature_stats.json", stats)
    return {"uri": out.uri, "rows": {k: len(v) for k, v in splits.items()}}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="local folder or s3:// URI")
    p.add_argument("--endpoint", help="S3 endpoint (MinIO), e.g. http://minio:9000")
    args = p.parse_args()
    print(json.dumps(write(args.out, args.endpoint)))
