"""The built-in table workload: numeric feature columns stacked into one ``features`` matrix.

``stack_features`` is what the pipeline calls on the data group for a table
(``data.feature_columns``) when ``data.preprocess`` is unset; a user's preprocessing can call
it too and then transform the matrix (see examples/table).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.config import FEATURES_COLUMN
from pipeline.records import BadRecord


def feature_matrix(batch: dict[str, np.ndarray], columns: Sequence[str]) -> np.ndarray:
    """The named columns as float32 N x F (a fixed-size list column adds its width)."""
    parts = []
    for name in columns:
        col = np.asarray(batch[name])
        if col.dtype.kind == "O":  # nulls among numbers, or lists
            col = np.array([np.nan if v is None else v for v in col], dtype=np.float64)
        parts.append(col.reshape(len(col), -1).astype(np.float32, copy=False))
    return np.concatenate(parts, axis=1) if parts else np.zeros((0, 0), np.float32)


def stack_features(
    batch: dict[str, np.ndarray], *, feature_columns: Sequence[str], label_column: str
) -> tuple[dict[str, np.ndarray], list[BadRecord]]:
    """``features`` float32 N x F and the label passed through; rows with a missing or
    non-finite feature are bad records."""
    x = feature_matrix(batch, feature_columns)
    bad = [
        BadRecord(int(i), "bad_feature", f"a feature is {x[i][~np.isfinite(x[i])][0]!r}")
        for i in np.flatnonzero(~np.isfinite(x).all(axis=1))
    ]
    return {FEATURES_COLUMN: x, label_column: batch[label_column]}, bad
