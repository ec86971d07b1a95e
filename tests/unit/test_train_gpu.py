"""The built-in loop's GPU side (pipeline/train/gpu.py), on CPU: which models and devices get
channels_last, which inputs are converted, autocast per device, and train.compile (a real
torch.compile on CPU, and a real compilation failure named as train.compile)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.config import PipelineConfig
from pipeline.errors import UserCodeError
from pipeline.train.gpu import (
    autocast_dtype,
    compile_errors,
    in_memory_format,
    is_compile_error,
    is_convolutional,
    memory_format_for,
    speed_up,
)
from pipeline.workloads.models import mlp, resnet18, simple_cnn


def test_convolutional_models_get_channels_last_on_cuda_only():
    assert is_convolutional(simple_cnn(1, 10)) and is_convolutional(resnet18(3, 10, 224))
    assert not is_convolutional(mlp(8, 3))
    assert memory_format_for("cuda", True) is torch.channels_last
    assert memory_format_for("cuda", False) is torch.contiguous_format  # an MLP on a GPU
    assert memory_format_for("cpu", True) is torch.contiguous_format


def test_only_four_dimensional_batches_change_memory_format():
    images = torch.zeros(4, 3, 8, 8)
    converted = in_memory_format(images, torch.channels_last)
    assert converted.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(converted, images)  # the same values, another layout
    features = torch.zeros(4, 8)
    assert in_memory_format(features, torch.channels_last) is features
    assert in_memory_format(images, torch.contiguous_format) is images


def test_autocast_follows_mixed_precision_on_cuda_and_is_off_on_cpu():
    assert autocast_dtype("auto", "cuda") is torch.bfloat16
    assert autocast_dtype("bf16", "cuda") is torch.bfloat16
    assert autocast_dtype("fp16", "cuda") is torch.float16
    assert autocast_dtype("off", "cuda") is None
    assert autocast_dtype("bf16", "cpu") is None


def test_speed_up_on_cpu_leaves_the_model_as_built():
    model = simple_cnn(1, 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert speed_up(model, "cpu", compile=False) is torch.contiguous_format
    conv = model.features[0].weight
    assert conv.is_contiguous() and not torch.backends.cudnn.benchmark
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_channels_last_weights_keep_their_values_and_outputs():
    # what speed_up does to a convolutional model on CUDA, applied on CPU: the same function
    model = simple_cnn(1, 10).eval()
    x = torch.randn(2, 1, 12, 12)
    expected = model(x)
    model.to(memory_format=torch.channels_last)
    assert model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    out = model(in_memory_format(x, torch.channels_last))
    assert torch.allclose(out, expected, atol=1e-5)


def test_compile_is_off_by_default_and_set_from_config():
    assert PipelineConfig().train.compile is False
    cfg = PipelineConfig.model_validate({"train": {"compile": True}})
    assert cfg.train.compile is True


def _graph_break(x):
    torch._dynamo.graph_break()
    return x + 1


def test_a_compilation_failure_is_one_line_naming_train_compile():
    # a real failure of torch.compile: fullgraph=True refuses a graph break
    fails = torch.compile(_graph_break, fullgraph=True, backend="eager")
    with pytest.raises(UserCodeError, match=r"^train.compile: torch.compile failed on "
                       r"train.model 'simple_cnn': .*set train.compile=false"):  # fmt: skip
        with compile_errors(True, "simple_cnn"):
            fails(torch.zeros(2))
    # the model's own errors pass through as they are, compiled or not
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        with compile_errors(True, "mlp"):
            mlp(8, 3)(torch.zeros(2, 5))
    assert not is_compile_error(ValueError("x"))


@pytest.mark.slow  # Inductor's first compilation on CPU: 21-37 s on the 2-core machine
def test_train_compile_trains_and_checkpoints_load_without_it():
    torch.manual_seed(0)
    model = simple_cnn(1, 3)
    assert speed_up(model, "cpu", compile=True) is torch.contiguous_format
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,))
    losses = []
    with compile_errors(True, "simple_cnn"):
        for _ in range(8):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]  # it learns the batch
    # compiled in place: a checkpoint's keys are the eager model's
    eager = simple_cnn(1, 3)
    eager.load_state_dict(model.state_dict())
    assert torch.allclose(eager.eval()(x), model.eval()(x), atol=1e-4)
