"""A whole per-worker training loop: `train.loop: myloop.loop:train_loop`.

It reads like Ray Train's getting-started tutorial; the pipeline's TrainContext (`ctx`)
gives it the dataset shards (preprocessed on the data group, with their dtypes, data wait
measured), the device, `prepare_model`, the state to resume from, the epochs still to run
and `report`, which checkpoints the state and records the epoch's metrics. Keyword
arguments come from `train.loop_args`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def build_model(in_channels: int, num_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )


def train_loop(ctx, lr: float = 0.003, weight_decay: float = 0.0) -> None:
    # the data's facts: in_channels, image_size, num_classes (or num_features for tables)
    model = ctx.prepare_model(build_model(ctx.facts["in_channels"], ctx.facts["num_classes"]))
    plain = getattr(model, "module", model)  # DDP wraps the model with several workers
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)

    state = ctx.restore()  # None on a fresh run; the latest report's state when resuming
    if state is not None:
        plain.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])

    for _epoch in ctx.epochs:
        model.train()
        losses = []
        for batch in ctx.train_batches():
            x, y = batch["image"], batch["label"]
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())

        model.eval()
        correct = total = 0
        with torch.no_grad():
            for batch in ctx.validation_batches():
                pred = model(batch["image"]).argmax(1)
                correct += int((pred == batch["label"]).sum())
                total += len(pred)

        ctx.report(
            {"train_loss": sum(losses) / max(len(losses), 1), "val_accuracy": correct / total},
            state={"model": plain.state_dict(), "optimizer": optimizer.state_dict()},
        )
