"""The table example's model: a small MLP; `num_features` and `num_classes` come from the
data when model_args leaves them out."""

from __future__ import annotations

from torch import nn


def mlp(num_features: int, num_classes: int, hidden: int = 32) -> nn.Module:
    return nn.Sequential(
        nn.Linear(num_features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )
