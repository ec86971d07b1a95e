"""Records, whatever the workload: the ones that cannot be used, labels the task cannot take,
and digests that show an epoch delivered every row exactly once. Pure numpy, no Ray."""

from __future__ import annotations

import zlib
from typing import NamedTuple

import numpy as np


class BadRecord(NamedTuple):
    """A record that cannot be used: its index in the batch, a kind to count, and why.

    A preprocessing function may return ``(columns, [BadRecord, ...])``: the pipeline then
    drops those rows and counts them (``data.bad_records=skip``) or stops naming the file and
    row (``fail``)."""

    index: int
    kind: str  # e.g. "bad_label", "undecodable_image", "wrong_image_size"
    reason: str


def check_labels(
    labels: np.ndarray, task: str, num_classes: int | None
) -> tuple[np.ndarray, list[BadRecord]]:
    """Labels as the task's dtype (int64 classes, float32 targets) and the records whose label
    is missing, NaN, not an integer class or outside ``0..num_classes-1``."""
    bad: list[BadRecord] = []
    arr = np.asarray(labels)
    if arr.dtype.kind == "O":  # None among numbers
        nulls = np.array([v is None for v in arr], dtype=bool)
        for i in np.flatnonzero(nulls):
            bad.append(BadRecord(int(i), "bad_label", "label is null"))
        arr = np.where(nulls, np.nan, arr).astype(np.float64)
    if arr.dtype.kind not in "iufb":
        raise TypeError(f"labels are {arr.dtype}, expected numbers")
    already = {b.index for b in bad}
    if task == "regression":
        if arr.dtype.kind == "f":
            for i in np.flatnonzero(~np.isfinite(arr)):
                if int(i) not in already:
                    bad.append(BadRecord(int(i), "bad_label", f"target {arr[i]!r} is not finite"))
        out = np.where(np.isfinite(arr), arr, 0) if arr.dtype.kind == "f" else arr
        return out.astype(np.float32), sorted(bad)
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        safe = np.where(finite, arr, 0)
        integral = finite & (np.floor(safe) == safe)
        for i in np.flatnonzero(~integral):
            if int(i) not in already:
                bad.append(
                    BadRecord(int(i), "bad_label", f"label {arr[i]!r} is not an integer class")
                )
        already |= {int(i) for i in np.flatnonzero(~integral)}
        out = np.where(integral, safe, -1).astype(np.int64)
    else:
        out = arr.astype(np.int64)
    if num_classes is not None:
        for i in np.flatnonzero((out < 0) | (out >= num_classes)):
            if int(i) not in already:
                msg = f"label {out[i]} is outside the classes 0..{num_classes - 1}"
                bad.append(BadRecord(int(i), "bad_label", msg))
    return out, sorted(bad)


def _row_bytes(col: np.ndarray):
    """Each row of a column as bytes: binary values as they are, numbers as float64."""
    if not isinstance(col, np.ndarray):  # a list of bytes: never numpy's fixed-width bytes
        col = np.array(col, dtype=object)
    if col.dtype.kind in "iufb":
        flat = np.ascontiguousarray(col.reshape(len(col), -1), dtype=np.float64)
        return (row.tobytes() for row in flat)
    return (b"" if v is None else v if isinstance(v, bytes) else str(v).encode() for v in col)


def row_digests(columns: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    """CRC-32 of each row's values in ``names`` (in that order), as int64: summed over an
    epoch (``epoch_digest``), two such sums show whether every row arrived exactly once,
    whatever the order. A single binary column's digest is the CRC-32 of its bytes."""
    n = len(columns[names[0]]) if names else 0
    out = np.zeros(n, dtype=np.int64)
    if not n:
        return out
    crcs = [0] * n
    for name in names:
        crcs = [zlib.crc32(b, c) for b, c in zip(_row_bytes(columns[name]), crcs, strict=True)]
    out[:] = crcs
    return out


DIGEST_MIX = 0x9E3779B1  # a second, independent sum: (d * MIX) mod 2**32


def epoch_digest(digests: np.ndarray) -> tuple[int, int]:
    """Order-independent digest of a multiset of row digests: (sum d, sum (d*MIX mod 2**32))."""
    d = np.asarray(digests, dtype=np.int64)
    return int(d.sum()), int(((d * DIGEST_MIX) & 0xFFFFFFFF).sum())
