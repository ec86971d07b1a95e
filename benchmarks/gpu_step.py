"""One model's training step on batches already on the device, the three ways the built-in
loop can take it: as the loop took it before issue 18 (contiguous), with what it does now on
CUDA (channels_last, cuDNN's autotuner: ``pipeline.train.gpu.speed_up``), and with
``train.compile`` as well. uint8 images normalised on the device, autocast as
``train.mixed_precision: auto`` (bf16 on CUDA), Adam. No data path, no Ray.

    python benchmarks/gpu_step.py --model resnet18 --batch 256 --size 224 --json step.json

Prints one line per variant and writes them as JSON: ms a step and rows/s.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from pipeline.train.gpu import autocast_dtype, in_memory_format, speed_up
from pipeline.workloads.image import Normalise
from pipeline.workloads.models import resnet18, simple_cnn

MODELS = {
    "resnet18": lambda size: resnet18(3, 10, size),
    "simple_cnn": lambda size: simple_cnn(3, 10),
}


def time_steps(variant: str, model_name: str, batch: int, size: int, steps: int) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = MODELS[model_name](size)
    if variant == "contiguous":
        memory_format = torch.contiguous_format
        torch.backends.cudnn.benchmark = False
    else:
        memory_format = speed_up(model, device.type, compile=variant == "channels_last+compile")
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    amp = autocast_dtype("auto", device.type)
    normalise = Normalise([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        b = normalise({"image": x, "label": y})
        inputs = in_memory_format(b["image"], memory_format)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = torch.nn.functional.cross_entropy(model(inputs), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    for _ in range(3):  # warm-up: autotuning, compilation
        step()
    sync()
    warm_up_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = time.perf_counter() - start
    return {
        "variant": variant,
        "memory_format": str(memory_format),  # speed_up's choice: contiguous on a CPU
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "model": model_name,
        "device": str(device),
        "batch": batch,
        "image_size": size,
        "ms_per_step": 1000 * seconds / steps,
        "rows_per_s": batch * steps / seconds,
        "warm_up_s": warm_up_s,
        "steps": steps,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), default="resnet18")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--variants", default="contiguous,channels_last,channels_last+compile")
    p.add_argument("--json", dest="json_path")
    a = p.parse_args()
    out = []
    for variant in a.variants.split(","):
        r = time_steps(variant, a.model, a.batch, a.size, a.steps)
        out.append(r)
        print(
            f"{variant:24} {r['ms_per_step']:8.1f} ms a step  {r['rows_per_s']:9.0f} rows/s  "
            f"(warm-up {r['warm_up_s']:.1f} s, {r['device']}, {r['memory_format']})",
            flush=True,
        )
        if a.json_path:  # after each variant: a later one timed out still leaves these
            with open(a.json_path, "w") as f:
                json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
