"""Training: the per-worker loop (runs on the train group) and the driver that launches it.

The loop reads top to bottom: restore, build the model, then per epoch stream batches from
the dataset shard, step, evaluate, report a checkpoint. Preprocessing is not here: it runs
in Ray Data on the data group (``pipeline.data``); the loop only waits for finished batches
and measures how long it waits.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F
from ray.train import (
    CheckpointConfig,
    DataConfig,
    FailureConfig,
    RunConfig,
    ScalingConfig,
    UserCallback,
)
from ray.train.torch import TorchTrainer
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.cluster import (
    EMBEDDED,
    check_placement,
    connect,
    warm_up_data_workers,
    without_selectors,
)
from pipeline.config import PipelineConfig
from pipeline.data import (
    LEDGER_NAMESPACE,
    ROW_DIGEST_COLUMN,
    BadRecordLedger,
    build_train_dataset,
    build_validation_dataset,
    check_inputs,
    ledger_name,
)
from pipeline.errors import DataError, StorageError, find_pipeline_error
from pipeline.model import build_model, build_optimizer
from pipeline.storage import (
    check_bucket,
    is_s3_connection_error,
    resolve,
    resolve_endpoint,
    write_json,
)
from pipeline.transforms import DIGEST_MIX

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
HISTORY_FILE = "history.json"  # per-epoch metrics, beside state.pt: summaries read only this
SUMMARY_FILE = "summary.json"


# --- on the train workers ---------------------------------------------------------------------


def _amp_dtype(mode: str, device):
    if device.type != "cuda" or mode == "off":
        return None
    return torch.float16 if mode == "fp16" else torch.bfloat16


def _reduce(values: list[float], op: str) -> list[float]:
    """All-reduce a few numbers across train workers (no-op for one worker)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=backend_device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.tolist()


def _reduce_int(t) -> list[int]:
    """Exact all-reduce (sum) of an int64 tensor across train workers."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
    return [int(v) for v in t.tolist()]


def _batches(shard, cfg: PipelineConfig, device, *, training: bool):
    d = cfg.data
    kwargs: dict[str, Any] = dict(
        batch_size=d.batch_size if training else d.validation_batch_size,
        prefetch_batches=d.prefetch_batches,
        device=device,
        # every column must be named
        dtypes={"image": torch.float32, "label": torch.int64, ROW_DIGEST_COLUMN: torch.int64},
        pin_memory=device.type == "cuda",
    )
    if training and d.local_shuffle_buffer > 0:
        kwargs["local_shuffle_buffer_size"] = d.local_shuffle_buffer
        if d.shuffle_seed is not None:
            kwargs["local_shuffle_seed"] = d.shuffle_seed
    return shard.iter_torch_batches(**kwargs)


def _train_epoch(model, optimizer, scaler, shard, cfg, device, amp_dtype) -> dict:
    model.train()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    digest = torch.zeros(2, device=device, dtype=torch.int64)
    rows = 0
    wait = 0.0
    first_batch_s = None
    start = time.perf_counter()
    batches = iter(_batches(shard, cfg, device, training=True))
    while True:
        t = time.perf_counter()
        batch = next(batches, None)
        waited = time.perf_counter() - t
        wait += waited
        if first_batch_s is None:
            first_batch_s = waited
        if batch is None:
            break
        x, y = batch["image"], batch["label"]
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.detach().double() * len(y)  # stays on device: no sync per step
        d = batch[ROW_DIGEST_COLUMN]
        digest += torch.stack([d.sum(), ((d * DIGEST_MIX) & 0xFFFFFFFF).sum()])
        rows += len(y)
    elapsed = time.perf_counter() - start
    total_rows, total_loss, wait_sum = _reduce([rows, float(loss_sum), wait], "sum")
    digest_sums = _reduce_int(digest)
    (max_elapsed,) = _reduce([elapsed], "max")
    workers = ray.train.get_context().get_world_size()
    return {
        "train_rows": int(total_rows),
        "train_loss": total_loss / max(total_rows, 1),
        "epoch_s": max_elapsed,
        "rows_per_s": total_rows / max(max_elapsed, 1e-9),
        "data_wait_fraction": (wait_sum / workers) / max(max_elapsed, 1e-9),
        "first_batch_s": first_batch_s or 0.0,
        "train_digest": digest_sums,
    }


def _evaluate(model, shard, cfg, device, amp_dtype) -> dict[str, float]:
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    rows = 0
    with torch.no_grad():
        for batch in _batches(shard, cfg, device, training=False):
            x, y = batch["image"], batch["label"]
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
            rows += len(y)
    return {
        "val_rows": rows,
        "val_loss": float(loss_sum) / max(rows, 1),
        "val_accuracy": int(correct) / max(rows, 1),
    }


def train_loop_per_worker(loop_config: dict) -> None:
    cfg = PipelineConfig.model_validate(loop_config["config"])
    tr = cfg.train
    # Request the shards first: get_dataset_shard creates Ray Data's split coordinator (a new
    # process), whose start-up then overlaps the model build; execution begins at the first
    # batch request.
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("validation")
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    torch.manual_seed(tr.seed)

    model = build_model(tr.model, cfg.data.image_shape, cfg.data.num_classes)
    optimizer = build_optimizer(
        tr.optimizer, model.parameters(), tr.learning_rate, tr.weight_decay, tr.momentum
    )
    amp_dtype = _amp_dtype(tr.mixed_precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    start_epoch, history = 0, []

    checkpoint = ray.train.get_checkpoint()  # set when resuming: same run name and storage
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, history = state["epoch"], state["history"]
        if rank == 0:
            log.info("resuming from epoch %d (%s)", start_epoch, checkpoint.path)

    model = ray.train.torch.prepare_model(model)  # to device, DistributedDataParallel
    ledger = _ledger(loop_config.get("ledger")) if rank == 0 else None

    for epoch in range(start_epoch, tr.epochs):
        metrics = {"epoch": epoch + 1}
        if ledger is not None:
            ray.get(ledger.reset.remote())  # count skipped records per epoch
        metrics.update(_train_epoch(model, optimizer, scaler, train_shard, cfg, device, amp_dtype))
        plain = getattr(model, "module", model)
        checkpoint = None
        with tempfile.TemporaryDirectory() as d:
            if rank == 0:  # the full validation set is every worker's; rank 0 evaluates it
                metrics.update(_evaluate(plain, val_shard, cfg, device, amp_dtype))
                if ledger is not None:
                    metrics["skipped_records"] = ray.get(ledger.snapshot.remote())["counts"]
                history.append(metrics)
                state = {
                    "model": plain.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "epoch": epoch + 1,
                    "history": history,
                }
                torch.save(state, os.path.join(d, STATE_FILE))
                with open(os.path.join(d, HISTORY_FILE), "w") as f:
                    json.dump(history, f)
                checkpoint = ray.train.Checkpoint.from_directory(d)
                log.info(format_epoch(metrics, tr.epochs))
            ray.train.report(
                metrics, checkpoint=checkpoint, checkpoint_dir_name=f"epoch-{epoch + 1:04d}"
            )


def _ledger(name: str | None):
    if not name:
        return None
    try:
        return ray.get_actor(name, namespace=LEDGER_NAMESPACE)
    except ValueError:
        return None


def format_epoch(m: dict, epochs: int) -> str:
    return (
        f"epoch {m['epoch']}/{epochs}: train_loss={m['train_loss']:.4f} "
        f"val_loss={m.get('val_loss', float('nan')):.4f} "
        f"val_acc={m.get('val_accuracy', float('nan')):.4f} "
        f"rows/s={m['rows_per_s']:.0f} data_wait={100 * m['data_wait_fraction']:.1f}% "
        f"({m['epoch_s']:.1f}s)"
    )


# --- on the driver ----------------------------------------------------------------------------


class StopOnDataError(UserCallback):
    """A bad record fails the same way on every retry: stop at once instead of restarting the
    worker group ``train.max_failures`` times. Runs on the Train controller."""

    def after_exception(self, run_context, worker_exceptions):
        for error in worker_exceptions.values():
            cause = find_pipeline_error(error)
            if isinstance(cause, DataError):
                raise cause


def build_trainer(
    cfg: PipelineConfig, datasets: dict, storage, loop=None, extra_loop_config: dict | None = None
) -> Any:
    """The TorchTrainer for ``cfg``: workers on the train group, data options on the data group.

    ``loop`` defaults to the training loop; the benchmark passes its own timing loop."""
    tr = cfg.train
    resources = dict(tr.resources_per_worker) if tr.resources_per_worker else None
    data_options = DataConfig.default_ingest_options()
    if cfg.data.placement.selector:
        data_options.label_selector = dict(cfg.data.placement.selector)
    return TorchTrainer(
        loop or train_loop_per_worker,
        train_loop_config={"config": cfg.model_dump(mode="json"), **(extra_loop_config or {})},
        scaling_config=ScalingConfig(
            num_workers=tr.num_workers,
            use_gpu=tr.use_gpu,
            resources_per_worker=resources,
            label_selector=dict(tr.placement.selector) or None,
        ),
        run_config=RunConfig(
            name=cfg.storage.run_name,
            storage_path=storage.path,
            storage_filesystem=storage.fs if storage.is_s3 else None,
            checkpoint_config=CheckpointConfig(num_to_keep=tr.checkpoints_to_keep),
            failure_config=FailureConfig(max_failures=tr.max_failures),
            callbacks=[StopOnDataError()],
        ),
        datasets=datasets,
        # Split even for one worker: the split's coordinator actor runs the executor, which
        # in the worker's own process would share its GIL (measured: 30% fewer rows/s).
        dataset_config=DataConfig(datasets_to_split=["train"], execution_options=data_options),
    )


def read_history(checkpoint) -> list[dict]:
    """Per-epoch metrics saved beside the latest checkpoint's state (no model download)."""
    if checkpoint is None:
        return []
    with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{HISTORY_FILE}") as f:
        return json.loads(f.read())


def summarise(history: list[dict], cfg: PipelineConfig, extra: dict) -> dict:
    last = history[-1] if history else {}
    train_s = sum(h["epoch_s"] for h in history) or 1e-9
    return {
        "run_name": cfg.storage.run_name,
        "epochs": last.get("epoch", 0),
        "epochs_configured": cfg.train.epochs,
        "val_accuracy": last.get("val_accuracy"),
        "val_loss": last.get("val_loss"),
        "train_loss": last.get("train_loss"),
        "rows_per_s": sum(h["train_rows"] for h in history) / train_s,
        "data_wait_fraction": sum(h["data_wait_fraction"] * h["epoch_s"] for h in history)
        / train_s,
        "first_batch_s": last.get("first_batch_s"),
        "history": history,
        **extra,
    }


def _user_error(error: BaseException, cfg: PipelineConfig, storage) -> BaseException:
    """The one-line error for a failed fit: ours if one is inside, else a lost S3 endpoint,
    else Ray's own error unchanged (a bug, shown with its traceback)."""
    cause = find_pipeline_error(error)
    if cause is not None:
        return cause
    if is_s3_connection_error(str(error)):
        return StorageError(
            f"lost the S3 endpoint {resolve_endpoint(cfg.s3).describe()} (s3.endpoint) during "
            f"training, after s3.retry_max_attempts={cfg.s3.retry_max_attempts} retries per "
            "request "
            f"and train.max_failures={cfg.train.max_failures} restarts; checkpoints written before "
            f"are kept under {storage.uri}/{cfg.storage.run_name}: rerun the same command to resume"
        )
    return error


def run_training(cfg: PipelineConfig, address: str | None = None) -> dict:
    """Check inputs, connect, train (resuming if the run has checkpoints), write summary.json.

    Every check that can fail on user input runs before the first Ray task, so a bad
    config, endpoint or dataset costs seconds and leaves existing checkpoints untouched."""
    started = time.monotonic()
    splits = check_inputs(cfg)
    storage = resolve(cfg.storage.checkpoint_uri, cfg.s3, "storage.checkpoint_uri")
    check_bucket(storage, cfg.s3)

    address = connect(address)
    if address == EMBEDDED:
        cfg = without_selectors(cfg)
    else:
        check_placement(cfg)
    warm_up_data_workers(cfg.data.placement.selector)

    name = ledger_name(cfg.storage.run_name)
    # On the driver's node (the head, under KubeRay), as Train keeps its own bookkeeping actors:
    # a zero-CPU actor could land on a data node, and losing that node must not take the run's
    # counters, and with them the training loop, down too.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    ledger = (
        ray.remote(BadRecordLedger)
        .options(
            name=name,
            namespace=LEDGER_NAMESPACE,
            get_if_exists=True,
            num_cpus=0,
            scheduling_strategy=here,
        )
        .remote()
    )
    datasets = {
        "train": build_train_dataset(splits, cfg, cfg.data.placement.selector, name),
        "validation": build_validation_dataset(splits, cfg, cfg.data.placement.selector, name),
    }
    trainer = build_trainer(cfg, datasets, storage, extra_loop_config={"ledger": name})
    try:
        result = trainer.fit()
    except Exception as e:
        raise _user_error(e, cfg, storage) from None

    examples = ray.get(ledger.snapshot.remote())["examples"]
    history = read_history(result.checkpoint)
    skipped_files = {**splits.train_check.skipped_files, **splits.validation_check.skipped_files}
    summary = summarise(
        history,
        cfg,
        {
            "checkpoint": storage.uri_of(result.checkpoint.path) if result.checkpoint else None,
            "ray_job_id": ray.get_runtime_context().get_job_id(),
            "wall_s": round(time.monotonic() - started, 2),
            "train_rows_in_dataset": splits.train_check.rows,
            "bad_records": {  # rows skipped in one pass over each split (the last epoch)
                "skipped_rows": history[-1].get("skipped_records", {}) if history else {},
                "skipped_files": skipped_files,
                "examples": examples,
            },
        },
    )
    summary["summary_uri"] = write_json(storage, f"{cfg.storage.run_name}/{SUMMARY_FILE}", summary)
    return summary
