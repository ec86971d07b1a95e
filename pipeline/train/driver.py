"""Training on the driver: plan and check the workload, then launch the loop on the train
group with ``TorchTrainer`` and write ``summary.json``.

The loop itself (``pipeline.train.loop``, or the user's ``train.loop``) runs on the train
workers with a ``TrainContext`` (``pipeline.train.context``); preprocessing runs in Ray Data
on the data group (``pipeline.data``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

import ray
import ray.train
from ray.train import (
    CheckpointConfig,
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
    data_group_cpus,
    warm_up_data_workers,
    without_selectors,
)
from pipeline.config import PipelineConfig
from pipeline.console import BOARD_NAMESPACE, ProgressBoard, ProgressPrinter, board_name
from pipeline.data import LEDGER_NAMESPACE, BadRecordLedger, build_dataset, ledger_name
from pipeline.errors import (
    DataError,
    RunLeaseError,
    StorageError,
    UserCodeError,
    find_pipeline_error,
)
from pipeline.lease import take_run_lease
from pipeline.phases import Stamps, process_started, startup_phases, teardown_phases
from pipeline.preflight import check_user_code, plan
from pipeline.queueing import TrainGroupWatch, train_start_options
from pipeline.runtime_env import build_runtime_env, check_working_dir, upload_working_dir
from pipeline.storage import (
    check_bucket,
    is_s3_connection_error,
    resolve,
    resolve_endpoint,
    write_json,
)
from pipeline.tracking import check_tracking, final_model, finish_tracking, open_tracking
from pipeline.train.context import HISTORY_FILE, TrainContext
from pipeline.train.epochs import EpochDataConfig
from pipeline.workload import UserCode, Workload

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"


def train_loop_per_worker(loop_config: dict) -> None:
    """What Ray Train runs on every train worker: the workload's loop with its context."""
    ctx = TrainContext(loop_config)
    loop = ctx.workload.loop.build("train")
    loop(ctx)


# --- on the driver ----------------------------------------------------------------------------


class StopOnDataError(UserCallback):
    """A bad record, or user code that raises, fails the same way on every retry: stop at
    once instead of restarting the worker group ``train.max_failures`` times. Runs on the
    Train controller."""

    def after_exception(self, run_context, worker_exceptions):
        for error in worker_exceptions.values():
            cause = find_pipeline_error(error)
            if isinstance(cause, DataError | UserCodeError | RunLeaseError):
                raise cause


def build_trainer(
    cfg: PipelineConfig,
    datasets: dict,
    storage,
    loop=None,
    extra_loop_config: dict | None = None,
    rows: dict[str, int] | None = None,
) -> Any:
    """The TorchTrainer for ``cfg``: workers on the train group, data options on the data group.

    ``loop`` defaults to the training loop; the benchmark passes its own timing loop.
    ``rows``: each dataset's rows, so a worker knows when to start its next epoch's pass
    (without them it learns the count from its first epoch)."""
    tr = cfg.train
    resources = dict(tr.resources_per_worker) if tr.resources_per_worker else None
    data_options = EpochDataConfig.default_ingest_options()
    if cfg.data.placement.selector:
        data_options.label_selector = dict(cfg.data.placement.selector)
    return TorchTrainer(
        loop or train_loop_per_worker,
        train_loop_config=dict(extra_loop_config or {}),
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
            failure_config=FailureConfig(max_failures=tr.max_failures, **train_start_options(cfg)),
            callbacks=[StopOnDataError()],
        ),
        datasets=datasets,
        # Every epoch is a pass of its own, started while the one before still streams
        # (pipeline.train.epochs). Each runs in a split coordinator actor, even the
        # validation split and a single worker's: in the worker's own process the executor
        # would share its GIL (measured: 30% fewer rows/s).
        dataset_config=EpochDataConfig(
            datasets_to_split=["train"], execution_options=data_options, rows=rows
        ),
    )


def read_history(checkpoint) -> list[dict]:
    """Per-epoch metrics saved beside the latest checkpoint's state (no model download)."""
    if checkpoint is None:
        return []
    with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{HISTORY_FILE}") as f:
        return json.loads(f.read())


def _number(v: Any) -> float | None:
    return v if isinstance(v, int | float) and not isinstance(v, bool) else None


def summarise(history: list[dict], cfg: PipelineConfig, extra: dict) -> dict:
    last = history[-1] if history else {}
    train_s = sum(h["epoch_s"] for h in history) or 1e-9
    return {
        "run_name": cfg.storage.run_name,
        "epochs": last.get("epoch", 0),
        "epochs_configured": cfg.train.epochs,
        "task": cfg.train.task,
        "val_accuracy": _number(last.get("val_accuracy")),
        "val_loss": _number(last.get("val_loss")),
        "train_loss": _number(last.get("train_loss")),
        # every validation figure the loop reported in its last epoch (a user's loop names its own)
        "metrics": {
            k: v
            for k, v in last.items()
            if (k.startswith("val_") or k == "train_loss") and isinstance(v, int | float)
        },
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


def _runtime_env(cfg: PipelineConfig, working_dir: str | None, pip: list[str] | None) -> dict:
    """The job's runtime env. A local working dir goes to S3 when the run's checkpoints do
    (every node downloads it from there, as a RayJob's does), else Ray uploads it to the
    cluster itself; the driver imports from it too."""
    if not working_dir:
        return build_runtime_env(None, pip)
    root = check_working_dir(working_dir)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    uri = str(root)
    if cfg.storage.checkpoint_uri.startswith("s3://"):
        uri = upload_working_dir(root, cfg.storage.checkpoint_uri, cfg.s3)
        log.info("working dir %s shipped as %s", working_dir, uri)
    return build_runtime_env(uri, pip)


def _driver_actor(cls, name: str, namespace: str):
    """A run's bookkeeping actor on the driver's node (the head, under KubeRay), as Train keeps
    its own: a zero-CPU actor could land on a data node, and losing that node must not take
    the run's counters, and with them the training loop, down too."""
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return (
        ray.remote(cls)
        .options(
            name=name,
            namespace=namespace,
            get_if_exists=True,
            num_cpus=0,
            scheduling_strategy=here,
        )
        .remote()
    )


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def build_datasets(workload: Workload, splits, ledger: str | None = None) -> dict:
    """The train and validation datasets, preprocessing on the data group."""
    cfg = workload.cfg
    selector = cfg.data.placement.selector
    actors = cfg.data.preprocess_workers or max(1, data_group_cpus(selector))
    return {
        s.name: build_dataset(
            s, workload.spec, cfg.data, selector=selector, ledger=ledger, actors=actors
        )
        for s in (splits.train, splits.validation)
    }


def run_training(
    cfg: PipelineConfig,
    address: str | None = None,
    *,
    code: UserCode | None = None,
    working_dir: str | None = None,
    pip: list[str] | None = None,
    wait_for_run: bool = False,
) -> dict:
    """Check inputs and user code, connect, take the run's lease (``wait_for_run``: wait for
    another live run of the same name to end), train (resuming if the run has checkpoints),
    write summary.json.

    Every check that can fail on user input runs before the first training step, so a bad
    config, endpoint, dataset or piece of user code costs seconds and leaves existing
    checkpoints untouched."""
    started = time.monotonic()
    stamps = Stamps(process_started=process_started())
    stamps.stamp("run_started")
    p = plan(cfg, code)
    stamps.stamp("planned")
    cfg = p.workload.cfg
    storage = resolve(cfg.storage.checkpoint_uri, cfg.s3, "storage.checkpoint_uri")
    check_bucket(storage, cfg.s3)
    check_tracking(cfg)
    runtime_env = _runtime_env(cfg, working_dir, pip)
    stamps.stamp("storage_checked")

    address = connect(address, runtime_env=runtime_env)
    # one writer per run: nothing goes into the run folder before this
    job_id = ray.get_runtime_context().get_job_id()
    lease = take_run_lease(cfg, job_id, wait=wait_for_run, say=_say)
    try:
        if address == EMBEDDED:
            cfg = without_selectors(cfg)
            p.workload.cfg = cfg
        else:
            check_placement(cfg)
        stamps.stamp("ray_connected")
        workload = check_user_code(p, stamps)
        warm_up_data_workers(cfg.data.placement.selector)

        # named per job too: a run that took over from a live (stalled) holder must not share
        # its actors, which die with the holder's job
        actors = f"{cfg.storage.run_name}-{job_id}"
        name = ledger_name(actors)
        ledger = _driver_actor(BadRecordLedger, name, LEDGER_NAMESPACE)
        board = _driver_actor(ProgressBoard, board_name(actors), BOARD_NAMESPACE)
        datasets = build_datasets(workload, p.splits, name)
        loop_config = {
            "workload": workload,
            "ledger": name,
            "board": board_name(actors),
            "train_rows": p.splits.train.rows,
            "lease": lease.ticket(),
            "source": p.splits.pinned(),  # the snapshot/version read: saved in every checkpoint
        }
        run_folder = f"{storage.uri}/{cfg.storage.run_name}"
        tracked = open_tracking(cfg, run_folder, job_id)
        loop_config["tracking"] = tracked
        rows = {"train": p.splits.train.rows, "validation": p.splits.validation.rows}
        trainer = build_trainer(cfg, datasets, storage, extra_loop_config=loop_config, rows=rows)
        watch = TrainGroupWatch(cfg, job_id, _say)  # a queued run says what it waits for
        stamps.stamp("fit_called")
        try:
            with ProgressPrinter(board), watch:
                result = trainer.fit()
        except Exception as e:
            raise watch.timeout_error(e) or _user_error(e, cfg, storage) from None
        stamps.stamp("fit_returned")
        board_stamps = ray.get(board.take_stamps.remote())
        stamps.update({k: v for k, v in board_stamps.items() if k not in stamps})

        examples = ray.get(ledger.snapshot.remote())["examples"]
        history = read_history(result.checkpoint)
        skipped_files = {**p.splits.train.skipped_files, **p.splits.validation.skipped_files}
        summary = summarise(
            history,
            cfg,
            {
                "checkpoint": storage.uri_of(result.checkpoint.path) if result.checkpoint else None,
                "ray_job_id": job_id,
                "wall_s": round(time.monotonic() - started, 2),
                "train_rows_in_dataset": p.splits.train.rows,
                "source": p.splits.pinned() or None,  # the table snapshot/version each split read
                "class_names": workload.columns.class_names,
                "runtime_env": runtime_env or None,
                "startup": startup_phases(stamps),
                "bad_records": {  # rows skipped in one pass over each split (the last epoch)
                    "skipped_rows": history[-1].get("skipped_records", {}) if history else {},
                    "skipped_files": skipped_files,
                    "examples": examples,
                },
            },
        )
        summary["teardown"] = teardown_phases(stamps)
        lease.check()  # summary.json only by the run that still holds its name
        uri = write_json(storage, f"{cfg.storage.run_name}/{SUMMARY_FILE}", summary)
        summary["summary_uri"] = uri
        if tracked.active:  # summary.json then says what the tracker could not take
            log_model = cfg.tracking.mlflow.log_model
            model = final_model(workload, result.checkpoint) if log_model else None
            summary["tracking"] = finish_tracking(tracked, summary, model)
            write_json(storage, f"{cfg.storage.run_name}/{SUMMARY_FILE}", summary)
        # the file cannot hold its own write: the summary returned (and printed) does
        stamps.stamp("summary_written")
        summary["teardown"] = teardown_phases(stamps)
        return summary
    finally:
        lease.release()
