"""The model the bench steps (``--model``): a built-in model trained as the built-in loop
trains it (``pipeline.train.gpu``: channels_last and cuDNN's autotuner on CUDA, autocast as
``train.mixed_precision`` says, ``train.compile``), one step per batch already on the device.

The ``ray`` and ``dataloader`` paths step the same model on the same device, so both figures
are rows/s the model trained on; stepping it on one batch kept on the device is the model's
ceiling (the GPU's, on a GPU): what any data path could at best deliver to it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from pipeline.errors import PipelineError
from pipeline.train.gpu import autocast_dtype, compile_errors, in_memory_format, speed_up
from pipeline.usercode import UserCallable, call_factory
from pipeline.workloads.models import BUILTIN, build_optimizer

CEILING_WARM_UP_STEPS = 3  # cuDNN's autotuner, torch.compile and the allocator settle here
CEILING_MIN_SECONDS = 2.0  # timed for at least this long ...
CEILING_MIN_STEPS, CEILING_MAX_STEPS = 3, 200  # ... within these many steps


def local_device(use_gpu: bool) -> torch.device:
    """The device the ``dataloader`` path steps the model on: the first GPU when
    ``train.use_gpu`` (as the ray path's train worker), else the CPU."""
    if not use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise PipelineError(
            "--model with the dataloader path and train.use_gpu=true: this machine has no CUDA "
            "device for the DataLoader's model (run the bench on the GPU machine, or set "
            "train.use_gpu=false)"
        )
    return torch.device("cuda", 0)


class ModelStep:
    """``step(batch)``: one optimiser step of ``name`` on a batch of tensors on ``device``
    (after the device transforms), cross-entropy on the label column."""

    def __init__(self, name: str, workload, device: torch.device, prepare: Callable | None = None):
        train = workload.cfg.train
        model = call_factory(UserCallable("--model", BUILTIN[name]), workload.facts)
        self.memory_format = speed_up(model, device.type, train.compile)
        self.model = prepare(model) if prepare else model.to(device)
        self.optimizer = build_optimizer("adam", self.model.parameters(), 1e-3, 0, 0)
        self.amp = autocast_dtype(train.mixed_precision, device.type)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == torch.float16)
        self.device, self.name, self.compile = device, name, train.compile
        self.x_col, self.y_col = workload.spec.input_column, workload.spec.label_column

    def __call__(self, batch: dict) -> None:
        x = in_memory_format(batch[self.x_col], self.memory_format)
        with compile_errors(self.compile, self.name):
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                loss = torch.nn.functional.cross_entropy(self.model(x), batch[self.y_col])
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def sync(self) -> None:
        """Wait for the steps still queued on the GPU (they belong to what is being timed)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def measure_ceiling(step: ModelStep, batch: dict, on_device=None) -> dict:
    """The model's rows/s on ``batch`` (already on the device, as the data path delivered it,
    uint8 images included), the device transforms and the step repeated: no data wait."""

    def one() -> None:
        b = on_device(dict(batch), "train") if on_device else batch
        step(b)

    for _ in range(CEILING_WARM_UP_STEPS):
        one()
    step.sync()
    steps, start = 0, time.perf_counter()
    while steps < CEILING_MIN_STEPS or (
        steps < CEILING_MAX_STEPS and time.perf_counter() - start < CEILING_MIN_SECONDS
    ):
        one()
        steps += 1
    step.sync()
    seconds = time.perf_counter() - start
    rows = len(batch[step.y_col])
    return {
        "rows_per_s": steps * rows / seconds,
        "steps": steps,
        "batch_rows": rows,
        "seconds": seconds,
        "device": str(step.device),
        "model": step.name,
        "what": "GPU ceiling" if step.device.type == "cuda" else "model ceiling",
    }
