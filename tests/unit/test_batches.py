"""How many train batches a fetch holds and how many rows the local shuffle buffer may take,
from the config, the preprocessed row's size and the train node's object store."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pipeline.config import load_config
from pipeline.train.context import batches_per_fetch, fetch_plan, shuffle_buffer_rows


def _workload(row_bytes: int, *overrides: str):
    return SimpleNamespace(
        cfg=load_config(None, list(overrides)), spec=SimpleNamespace(row_bytes=row_bytes)
    )


@pytest.mark.parametrize(
    ("row_bytes", "overrides", "expected"),
    [
        (800, (), 8),  # 28x28 uint8: 64 rows are 51 KB, 8 batches fit in 8 MiB
        (150_536, (), 1),  # a 224x224 photo as uint8: one batch is already 9.6 MB
        (20_000, (), 6),  # 64 x 20 KB = 1.28 MB: 6 fit
        (800, ("data.batches_per_fetch=2",), 2),  # set: taken as it is
    ],
)
def test_a_fetch_holds_as_many_batches_as_fit_in_8_mib(row_bytes, overrides, expected):
    assert batches_per_fetch(_workload(row_bytes, *overrides), 64) == expected


@pytest.mark.parametrize(
    ("row_bytes", "store_mib", "overrides", "expected"),
    [
        (800, 100, (), 1024),  # small rows: the configured 1,024 rows fit easily
        (150_536, 100, (), 87),  # photos: 12.5 MiB of a 100 MiB store
        (150_536, 20_000, (), 1024),  # a GPU pod's 20 GiB store holds 1,024 photos
        (150_536, 4, (), 64),  # never below one batch
        (800, 100, ("data.local_shuffle_buffer=0",), 0),  # off stays off
        (800, None, (), 1024),  # the store's size unknown: as configured
    ],
)
def test_the_shuffle_buffer_takes_at_most_an_eighth_of_the_object_store(
    row_bytes, store_mib, overrides, expected
):
    store = None if store_mib is None else store_mib << 20
    assert shuffle_buffer_rows(_workload(row_bytes, *overrides), 64, store) == expected


@pytest.mark.parametrize(
    ("row_bytes", "store_mib", "overrides", "expected"),
    [
        (800, 100, (), (8, 1024)),  # the default: 8 batches a fetch, well within the buffer
        # photos with 4 batches a fetch set: the capped 87-row buffer keeps one batch a fetch
        (150_536, 100, ("data.batches_per_fetch=4",), (1, 87)),
        (800, 100, ("data.local_shuffle_buffer=200",), (3, 200)),  # 3 x 64 rows fit in 200
        (800, 100, ("data.local_shuffle_buffer=0", "data.batches_per_fetch=4"), (4, 0)),
    ],
)
def test_a_fetch_never_holds_more_rows_than_the_shuffle_buffer(
    row_bytes, store_mib, overrides, expected
):
    assert fetch_plan(_workload(row_bytes, *overrides), 64, store_mib << 20) == expected
