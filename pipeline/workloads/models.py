"""Built-in models: a small CNN for digit-sized images, ResNet-18 (plain torch, no
torchvision) and an MLP for tables.

Each is a factory like a user's ``train.model``: the pipeline fills the parameters named
after dataset facts (``in_channels``, ``image_size``, ``num_classes``, ``num_features``,
``num_outputs``) that ``train.model_args`` leaves unset."""

from __future__ import annotations

import torch
from torch import nn


class SimpleCNN(nn.Module):
    """Two conv blocks and a small head; ~0.1M parameters, any input size >= 4x4."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.2),
            nn.Linear(64 * 4 * 4, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.down is None else self.down(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2015). Small inputs (< 64 px) get the CIFAR stem: a 3x3 conv and
    no max-pool, so 28x28 images are not shrunk to nothing before the first block."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int):
        super().__init__()
        if image_size < 64:
            stem = [
                nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(True),
            ]
        else:
            stem = [
                nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(True),
                nn.MaxPool2d(3, 2, 1),
            ]
        layers = []
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.body = nn.Sequential(*stem, *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


class MLP(nn.Module):
    """Fully connected layers with ReLU and dropout, for a table's feature vector."""

    def __init__(self, num_features: int, num_outputs: int, hidden=(128, 64), dropout=0.1):
        super().__init__()
        layers, width = [], num_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, num_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def simple_cnn(in_channels: int, num_classes: int) -> nn.Module:
    return SimpleCNN(in_channels, num_classes)


def resnet18(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return ResNet18(in_channels, num_classes, image_size)


def mlp(num_features: int, num_outputs: int, hidden=(128, 64), dropout: float = 0.1) -> nn.Module:
    return MLP(num_features, num_outputs, tuple(hidden), dropout)


BUILTIN = {
    "simple_cnn": "pipeline.workloads.models:simple_cnn",
    "resnet18": "pipeline.workloads.models:resnet18",
    "mlp": "pipeline.workloads.models:mlp",
}


def build_optimizer(name: str, params, lr: float, weight_decay: float, momentum: float):
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True
        )
    raise ValueError(f"unknown optimizer {name!r}")
