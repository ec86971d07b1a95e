"""A user's model: any factory that returns a torch.nn.Module.

`train.model: myvision.models:tiny_convnet` names it; `train.model_args` are its keyword
arguments. `in_channels` and `num_classes` are left out of model_args on purpose: the
pipeline fills parameters of those names from the dataset (Hugging Face's class names, the
images' channels)."""

from __future__ import annotations

from torch import nn


def tiny_convnet(in_channels: int, num_classes: int, width: int = 32) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(width * 4, num_classes),
    )
