"""What the built-in loop (and the bench's model step) does so that a model steps fast on a
GPU: channels_last memory format for convolutional models, cuDNN's autotuner, autocast, and
``torch.compile`` when ``train.compile`` is set.

The decisions are pure functions of the model and the device type, so they test on CPU; only
``speed_up`` changes anything, and only the model it is given (before ``prepare_model``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from pipeline.errors import UserCodeError, first_line

# Dynamo and Inductor raise their own types (Unsupported, BackendCompilerFailed, InductorError,
# ...) from these packages: an error from elsewhere is the model's own, not compilation's.
COMPILE_ERROR_MODULES = ("torch._dynamo", "torch._inductor")


def is_convolutional(model: nn.Module) -> bool:
    """Whether ``model`` has 2-D convolutions: the layers channels_last speeds up."""
    return any(isinstance(m, nn.Conv2d | nn.ConvTranspose2d) for m in model.modules())


def memory_format_for(device_type: str, convolutional: bool) -> torch.memory_format:
    """channels_last for 2-D convolutions on CUDA (cuDNN's NHWC kernels use the tensor cores
    directly; ResNet-18 at batch 256 in bf16 on an H200: 44.3 -> 19.2 ms a step, issue 18);
    the contiguous format everywhere else (CPU, MLPs, a user's non-convolutional model)."""
    if device_type == "cuda" and convolutional:
        return torch.channels_last
    return torch.contiguous_format


def in_memory_format(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """A 4-D batch (N, C, H, W) in ``memory_format``; any other input (features, sequences,
    the contiguous format) as it is."""
    if memory_format is torch.contiguous_format or x.dim() != 4:
        return x
    return x.contiguous(memory_format=memory_format)


def autocast_dtype(mode: str, device_type: str) -> torch.dtype | None:
    """``train.mixed_precision``: bf16 (``auto``, ``bf16``) or fp16 on CUDA, None (fp32)
    on CPU or with ``off``."""
    if device_type != "cuda" or mode == "off":
        return None
    return torch.float16 if mode == "fp16" else torch.bfloat16


def speed_up(model: nn.Module, device_type: str, compile: bool) -> torch.memory_format:
    """Prepare ``model`` in place for ``device_type``, before ``prepare_model`` moves it there
    (moving keeps the memory format): channels_last and cuDNN's autotuner on CUDA, and
    ``model.compile()`` when ``compile`` (in place: the state dict keeps its keys, so a
    checkpoint loads with or without ``train.compile``). Returns the memory format the input
    batches should have (``in_memory_format``)."""
    memory_format = memory_format_for(device_type, is_convolutional(model))
    if memory_format is torch.channels_last:
        model.to(memory_format=memory_format)
    if device_type == "cuda":
        # the batch shape is fixed (but for each epoch's last batch): cuDNN times its
        # algorithms once per shape and keeps the fastest
        torch.backends.cudnn.benchmark = True
    if compile:
        model.compile()  # compiles on the first call, on the device
    return memory_format


def is_compile_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) comes from torch.compile's machinery."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if type(e).__module__.startswith(COMPILE_ERROR_MODULES):
            return True
        e = e.__cause__ or e.__context__
    return False


@contextlib.contextmanager
def compile_errors(compiling: bool, model_name: str) -> Iterator[None]:
    """Turn a torch.compile failure in the steps inside into one line naming train.compile
    (compilation happens on the first forward and backward, not at ``model.compile()``)."""
    try:
        yield
    except Exception as e:
        if compiling and is_compile_error(e):
            raise UserCodeError(
                f"train.compile: torch.compile failed on train.model {model_name!r}: "
                f"{first_line(e)}; set train.compile=false to train it eagerly"
            ) from e
        raise
