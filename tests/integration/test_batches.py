"""How a training loop's batches come out of Ray Data: several train batches fetched at once
and handed on as slices, every row once, in batches of the size asked for."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.data import ROW_DIGEST_COLUMN

pytestmark = pytest.mark.cluster


@pytest.fixture
def ray_on_cluster(ray_cluster):
    import ray

    ray.init(address=ray_cluster.address)
    yield
    ray.shutdown()


@pytest.mark.parametrize("per_fetch", [1, 8])
def test_fetched_batches_are_sliced_into_train_batches_with_every_row_once(
    ray_on_cluster, per_fetch
):
    import ray
    import torch

    from pipeline.train.context import stream_batches

    rows = 1000
    ds = ray.data.from_items(
        [
            {"x": np.full(3, i, np.float32), "label": i % 10, ROW_DIGEST_COLUMN: i}
            for i in range(rows)
        ]
    )
    workload = SimpleNamespace(
        cfg=load_config(None, []),
        dtypes={"train": {"x": "float32", "label": "int64"}},
    )
    batches = list(
        stream_batches(
            ds.iterator(),
            workload,
            "train",
            64,
            torch.device("cpu"),
            per_fetch,
            local_shuffle_buffer_size=256,
        )
    )
    # 15 full batches and the rest (Ray may hand the short one over before the last full one)
    assert sorted(len(b["label"]) for b in batches) == [40] + [64] * 15
    seen = torch.cat([b[ROW_DIGEST_COLUMN] for b in batches])
    assert sorted(seen.tolist()) == list(range(rows))  # every row, once
    assert seen.tolist() != list(range(rows))  # shuffled
    for b in batches:  # the columns of a slice still belong together
        assert torch.equal(b["x"][:, 0].long(), b[ROW_DIGEST_COLUMN])
        assert b["x"].dtype == torch.float32 and b["x"].shape[1:] == (3,)
