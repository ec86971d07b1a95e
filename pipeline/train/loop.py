"""The built-in training loop (``train.loop`` unset): supervised learning of ``train.model``
with ``train.loss`` or the task's loss, evaluated by the task's metrics every epoch.

It reads top to bottom as Ray Train's tutorial does, and uses only what a user's loop gets
(``TrainContext``). Preprocessing is not here: it runs in Ray Data on the data group; the
loop only waits for finished batches, and the context measures how long.
"""

from __future__ import annotations

import torch

from pipeline.train.context import TrainContext
from pipeline.train.gpu import autocast_dtype, compile_errors, in_memory_format, speed_up
from pipeline.workloads.models import build_optimizer


def supervised_loop(ctx: TrainContext) -> None:
    tr = ctx.config.train
    model = ctx.build_model()
    optimizer = build_optimizer(
        tr.optimizer, model.parameters(), tr.learning_rate, tr.weight_decay, tr.momentum
    )
    amp_dtype = autocast_dtype(tr.mixed_precision, ctx.device.type)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp_dtype == torch.float16)
    state = ctx.restore()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
    # channels_last for convolutions on CUDA, cuDNN's autotuner, train.compile
    memory_format = speed_up(model, ctx.device.type, tr.compile)
    model = ctx.prepare_model(model)  # to device, DistributedDataParallel
    plain = getattr(model, "module", model)
    loss_fn = ctx.build_loss()
    x_col, y_col = ctx.input_column, ctx.label_column

    # torch.compile compiles on the first training and validation steps: a failure there is
    # one line naming train.compile
    with compile_errors(tr.compile, tr.model):
        for _epoch in ctx.epochs:
            model.train()
            loss_sum = torch.zeros((), device=ctx.device, dtype=torch.float64)
            rows = 0
            for batch in ctx.train_batches():
                x, y = in_memory_format(batch[x_col], memory_format), batch[y_col]
                with torch.autocast(
                    ctx.device.type, dtype=amp_dtype, enabled=amp_dtype is not None
                ):
                    loss = loss_fn(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                loss_sum += loss.detach().double() * len(y)  # stays on device: no sync per step
                rows += len(y)
                ctx.progress(loss=loss.detach())  # read only when the bar is drawn
            total_loss, total_rows = _sum_across_workers(float(loss_sum), rows)
            metrics = {"train_loss": total_loss / max(total_rows, 1)}
            if ctx.rank == 0:  # the full validation set is every worker's; rank 0 evaluates it
                metrics.update(evaluate(plain, ctx, loss_fn, amp_dtype, memory_format))
            state = {
                "model": plain.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
            }
            ctx.report(metrics, state=state)


def _sum_across_workers(loss: float, rows: int) -> tuple[float, float]:
    from pipeline.train.context import _reduce

    total_loss, total_rows = _reduce([loss, float(rows)], "sum")
    return total_loss, total_rows


def evaluate(
    model, ctx: TrainContext, loss_fn, amp_dtype=None, memory_format=torch.contiguous_format
) -> dict[str, float]:
    """The task's validation metrics: loss and accuracy (classification) or loss (MSE unless
    train.loss says otherwise) and mean absolute error (regression)."""
    model.eval()
    loss_sum = torch.zeros((), device=ctx.device, dtype=torch.float64)
    score = torch.zeros((), device=ctx.device, dtype=torch.float64)
    rows = 0
    with torch.no_grad():
        for batch in ctx.validation_batches():
            x, y = in_memory_format(batch[ctx.input_column], memory_format), batch[ctx.label_column]
            with torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = model(x)
            out = out.float()
            loss_sum += loss_fn(out, y).double() * len(y)
            if ctx.task == "classification":
                score += (out.argmax(1) == y).sum()
            else:
                pred = out.squeeze(1) if out.dim() == 2 and out.shape[1] == 1 else out
                score += (pred - y.float()).abs().sum().double()
            rows += len(y)
    n = max(rows, 1)
    metric = "val_accuracy" if ctx.task == "classification" else "val_mae"
    return {"val_rows": rows, "val_loss": float(loss_sum) / n, metric: float(score) / n}
