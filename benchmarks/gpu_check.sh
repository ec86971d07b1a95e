#!/usr/bin/env bash
# The GPU check (issue 18, point 7): one script for a session lent a GPU machine (one H200,
# 16 cores, Python 3.12 with CUDA torch, pyarrow, no Ray). Every figure goes under $OUT, which
# the device tool brings back (at most 8 files): log.txt, step.json, demo.json, bench.json,
# train.json, figures.json.
#
# Here, in the project's root, once (about 52 MB, ignored by git):
#   bash ../shared/gpu/device-wheels.sh .wheels
# then one call of the device tool:
#   run(command="bash benchmarks/gpu_check.sh", carry=[".wheels"], timeout_s=540)
# and give_back. It keeps to BUDGET_S (default 470 s, inside 8 minutes): each step's timeout
# is what is left of it, so a slow step leaves the figures of the ones before.
#
#  1. the model's step alone (benchmarks/gpu_step.py): resnet18, batch 256, bf16, on uint8
#     batches on the GPU: contiguous (the loop before #18), channels_last (now), + train.compile;
#  2. the digits demo on the GPU: val_accuracy >= 0.9;
#  3. on jpeg224, 20,000 photos: `bench --paths limit,dataloader,ray --model resnet18`, 3
#     epochs: the GPU ceiling (the model on a batch kept on the GPU), DataLoader + model and
#     ray + model (the same model on the same GPU), per epoch and from each first batch;
#  4. `ray-pipeline train` with resnet18 on the same photos, 3 epochs, use_gpu;
#  5. figures.json: the headline figures and the issue's ratios (train over DataLoader + model,
#     target >= 1.2; data waits).
#
# Try it on a machine without a GPU first: GPU_CHECK_CPU=1 bash benchmarks/gpu_check.sh runs
# every step tiny on the CPU with this checkout's .venv (no wheels), to show the script works.
set -uo pipefail
CPU_ONLY=${GPU_CHECK_CPU:-0}
OUT=${OUT:-/tmp/gpu-check-out}
WORK=${GPU_CHECK_WORK:-/tmp/gpu-check}
mkdir -p "$OUT" "$WORK"
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
BUDGET_S=${BUDGET_S:-470}
cores=$(nproc)

if [ "$CPU_ONLY" = 1 ]; then
  PY=${PYTHON:-$PWD/.venv/bin/python}
  ROWS=${ROWS:-24}; MODEL=${MODEL:-simple_cnn}; BATCH=${BATCH:-8}; EPOCHS=${EPOCHS:-2}
  USE_GPU=false; DEMO_EPOCHS=1; STEP_ARGS=(--model simple_cnn --batch 8 --size 64 --steps 2
    --variants contiguous,channels_last)
  DATA_CPUS=${DATA_CPUS:-1}
else
  PY=python3
  ROWS=${ROWS:-20000}; MODEL=${MODEL:-resnet18}; BATCH=${BATCH:-256}; EPOCHS=${EPOCHS:-3}
  USE_GPU=true; DEMO_EPOCHS=8; STEP_ARGS=(--model resnet18 --batch 256 --size 224 --steps 30)
  DATA_CPUS=${DATA_CPUS:-$((cores - 1))}  # one core for the consumer / the train worker
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .wheels/*.whl \
    || { echo "FAILED: installing .wheels (bash ../shared/gpu/device-wheels.sh .wheels here)"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
fi
$PY -V
$PY -c "import torch, ray; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'ray', ray.__version__)"

left() { echo $((BUDGET_S - SECONDS)); }
# step NAME MAX_S CMD...: runs CMD with a timeout of MAX_S or what is left of the budget (on
# the CPU, what is left: a shared 2-core machine is slow at anything)
step() {
  local name=$1 max=$2; shift 2
  local t; t=$(left); [ "$t" -gt "$max" ] && [ "$CPU_ONLY" != 1 ] && t=$max
  # its own lines on stderr (the log): stdout is the command's, its last line a summary
  if [ "$t" -lt 20 ]; then echo "SKIPPED $name: ${t}s of the budget left" >&2; return 1; fi
  echo "=== $name (timeout ${t}s, ${SECONDS}s in)" >&2
  local start=$SECONDS
  timeout "$t" "$@"; local rc=$?
  echo "=== $name: exit $rc after $((SECONDS - start))s" >&2
  return $rc
}

# 1. the model's step alone
step "model step" 120 $PY benchmarks/gpu_step.py "${STEP_ARGS[@]}" --json "$OUT/step.json"

# 2. the digits demo on the GPU
step "demo" 150 $PY -m pipeline demo --workdir "$WORK/demo" --set train.use_gpu=$USE_GPU \
  --set train.epochs=$DEMO_EPOCHS | tee "$WORK/demo.txt"
tail -n 1 "$WORK/demo.txt" > "$OUT/demo.json"

# 3. jpeg224: limit, DataLoader + model, ray + model, the model's ceiling
step "bench" 260 $PY -m pipeline bench --dataset jpeg224 --rows "$ROWS" --workdir "$WORK/bench" \
  --storage local --paths limit,dataloader,ray --model "$MODEL" --epochs "$EPOCHS" \
  --data-cpus "$DATA_CPUS" --set train.use_gpu=$USE_GPU --set data.batch_size=$BATCH \
  --json "$OUT/bench.json"

# 4. `ray-pipeline train` on the same photos (the bench wrote them; train split ~all rows)
RUN=jpeg224-$MODEL-$(date +%H%M%S)
cat > "$WORK/train.yaml" <<YAML
data:
  uri: $WORK/bench/jpeg224-$ROWS
  batch_size: $BATCH
  preprocessing:
    mean: [0.485, 0.456, 0.406]
    std: [0.229, 0.224, 0.225]
    augmentation: {random_resized_crop: 224, horizontal_flip: true, max_shift_px: 0, brightness: 0}
train:
  model: $MODEL
  epochs: $EPOCHS
  use_gpu: $USE_GPU
storage:
  checkpoint_uri: $WORK/runs
  run_name: $RUN
YAML
step "train" 200 $PY -m pipeline train --config "$WORK/train.yaml"
cp "$WORK/runs/$RUN/summary.json" "$OUT/train.json"  # with each epoch's figures

# 5. the headline figures
$PY - "$OUT" "$CPU_ONLY" <<'PY'
import json, sys
from pathlib import Path

out, cpu_only = Path(sys.argv[1]), sys.argv[2] == "1"


def load(name):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None


f = {}
demo, bench, train, step = (load(n) for n in ("demo.json", "bench.json", "train.json", "step.json"))
if step:
    f["step_ms"] = {s["variant"]: round(s["ms_per_step"], 2) for s in step}
if demo:
    f["demo_val_accuracy"] = demo.get("val_accuracy")
    f["demo_ok"] = cpu_only or (demo.get("val_accuracy") or 0) >= 0.9
if bench:
    per = bench["storages"]["local"]
    f["model_ceiling_rows_per_s"] = bench.get("model_ceiling")
    f["model_ceiling_device"] = per.get("model_ceiling", {}).get("device")
    for path in ("limit", "dataloader", "ray"):
        if path in per:
            f[f"bench_{path}_rows_per_s"] = per[path]["rows_per_s"]
            f[f"bench_{path}_epochs"] = [
                {k: e.get(k) for k in ("rows_per_s", "rows_per_s_from_first_batch", "ttfb_s")}
                for e in per[path].get("epochs", [])
            ]
            if "data_wait_fraction" in per[path]:
                f[f"bench_{path}_data_wait"] = per[path]["data_wait_fraction"]
if train:
    f["train_rows_per_s"] = train.get("rows_per_s")
    f["train_data_wait"] = train.get("data_wait_fraction")
    f["train_wall_s"] = train.get("wall_s")
    loader = f.get("bench_dataloader_rows_per_s")
    if loader and train.get("rows_per_s"):
        f["train_vs_dataloader"] = train["rows_per_s"] / loader  # issue 18 target: >= 1.2
    if "bench_dataloader_data_wait" in f and train.get("data_wait_fraction") is not None:
        f["train_waits_less_than_dataloader"] = (
            train["data_wait_fraction"] < f["bench_dataloader_data_wait"]
        )
(out / "figures.json").write_text(json.dumps(f, indent=2))
print(json.dumps(f, indent=2))
missing = [n for n, v in (("step", step), ("demo", demo), ("bench", bench), ("train", train)) if not v]
print("MISSING: " + ", ".join(missing) if missing else "every step left its figures")
PY
echo "done in ${SECONDS}s (budget ${BUDGET_S}s)"
