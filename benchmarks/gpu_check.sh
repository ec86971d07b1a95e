#!/usr/bin/env bash
# The GPU path (#13, point 5): never run yet. One script for a session that is lent a GPU
# machine; it writes everything under $OUT (the device tool brings that folder back).
#
#   run(command="bash benchmarks/gpu_check.sh", carry=["wheels"], timeout_s=540)
#
# The device machine reaches nothing outside it: bring the wheels it lacks in ./wheels
# (ignored by git, carried): `pip download --dest wheels "ray[data,train]==2.60.0" -r
# docker/requirements-gpu.txt --python-version <its python> --only-binary=:all:`; the carry
# limit is 64 MiB, so where Ray's wheel (79 MB for cp312) does not fit, split the check over
# two sessions or bring the image the chart uses (docker/Dockerfile, GPU target).
#
# Checks, in about 8 minutes of a 15-minute lease:
#  1. `demo` (digits, the built-in CNN) trains on the GPU: use_gpu, bf16 autocast, pinned
#     memory, NCCL (one worker): val_accuracy >= 0.9 in summary.json;
#  2. `bench --model resnet18 --set train.use_gpu=true`: the data-wait share of each step
#     (target < 5%) and the advised data CPUs, with the machine's cores as the data group.
set -euo pipefail
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -V
python3 -m venv /tmp/gpu-venv
/tmp/gpu-venv/bin/pip install -q --no-index --find-links wheels -e . \
  || /tmp/gpu-venv/bin/pip install -q -e .
source /tmp/gpu-venv/bin/activate
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA torch'; print(torch.__version__)"

timeout 240 ray-pipeline demo --workdir /tmp/gpu-demo --set train.use_gpu=true \
  --set train.epochs=3 | tee "$OUT/demo.txt"
python - <<'PY'
import glob, json
(path,) = glob.glob("/tmp/gpu-demo/**/summary.json", recursive=True)[:1] or ["?"]
s = json.load(open(path))
acc = s.get("val_accuracy") or s.get("final", {}).get("val_accuracy")
print("val_accuracy", acc, "OK" if acc and acc >= 0.9 else "BELOW 0.9")
PY

cores=$(nproc)
timeout 270 ray-pipeline bench --workdir /tmp/gpu-bench --rows 50000 --storage local \
  --paths limit,ray --model resnet18 --set train.use_gpu=true --data-cpus $((cores - 2)) \
  --epochs 2 --json "$OUT/bench_resnet18.json"
python - <<PY
import json
r = json.load(open("$OUT/bench_resnet18.json"))
w = r["data_wait_fraction"]
print("data wait", f"{100 * w:.1f}%", "OK" if w < 0.05 else "ABOVE 5%",
      "advised data CPUs per train worker", r.get("advised_data_cpus_per_train_worker"))
PY
