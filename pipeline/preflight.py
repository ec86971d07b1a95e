"""Before any training: the dataset's files and columns, and the user's code on real data.

``plan`` runs on the driver from listings and footers alone (no Ray): splits, columns, every
footer, the class count and image shape when the config leaves them unset, and one real
batch of each split. ``check_user_code`` then runs, within seconds, what training would run
first: every import string is resolved on the driver, on a data-group node and on a
train-group node (with the job's runtime env); the preprocessing runs on the real batches on
the data group and its output is checked; the model's forward and the loss run on that
output on the train group, on CPU. The dtypes the train workers ask ``iter_torch_batches``
for are the ones that output has.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.config import NODE_GROUP_LABEL, PipelineConfig
from pipeline.data import PATH_COLUMN, ROW_DIGEST_COLUMN, Preprocessor, to_numpy
from pipeline.datasets import infer_num_classes, label_range_of, resolve_columns
from pipeline.errors import (
    ConfigError,
    DataError,
    UserCodeError,
    find_pipeline_error,
    first_line,
)
from pipeline.sources import Split, Splits, find_splits
from pipeline.usercode import call_factory
from pipeline.workload import (
    SUPERVISED_LOOP,
    UserCode,
    Workload,
    build_workload,
    model_facts,
    task_loss,
)
from pipeline.workloads.image import infer_image_shape

log = logging.getLogger(__name__)

SAMPLE_ROWS = 64  # the real batch the preprocessing runs on
FORWARD_ROWS = 8  # the rows of its output the model's forward gets


@dataclass
class Plan:
    workload: Workload
    splits: Splits
    samples: dict[str, tuple[pa.Table, str]]  # split -> its first rows, and where from


def _columns(cfg: PipelineConfig, split: Split, user_preprocess=False):
    """The columns the run reads, from the train split's schema: with bad_records=skip, from
    its first file whose columns resolve (a bad file is then skipped by the footer check)."""
    first_error = None
    for schema, where in split.schemas(cfg.data.bad_records):
        try:
            if isinstance(schema, DataError):
                raise schema
            return resolve_columns(cfg, schema, where, user_preprocess)
        except DataError as e:
            first_error = first_error or e
    raise first_error


def plan(cfg: PipelineConfig, code: UserCode | None = None) -> Plan:
    """Every check that needs only the files; the config comes back with its dataset facts
    (classes, image shape) filled in."""
    splits = find_splits(cfg)
    user_preprocess = code is not None and code.preprocess is not None
    cols = _columns(cfg, splits.train, user_preprocess)
    infos = splits.train.check(cfg, cols) + splits.validation.check(cfg, cols)
    samples = {s.name: s.sample(cols.read, SAMPLE_ROWS) for s in (splits.train, splits.validation)}
    cfg = cfg.model_copy(deep=True)
    data = cfg.data
    if cfg.train.task == "classification" and data.num_classes is None:
        first_batch = None
        if (
            not splits.train.label_statistics
        ):  # the format keeps none: the first batch says what it can
            first_batch = label_range_of(samples["train"][0], cols.label)
        data.num_classes, source = infer_num_classes(
            cols, infos, splits.train.where, first_batch=first_batch
        )
        log.info("classes: %d (data.num_classes, from %s)", data.num_classes, source)
    builtin_images = (
        cols.kind == "image"
        and data.preprocess is None
        and (code is None or code.preprocess is None)
    )
    if builtin_images and data.image_shape is None:
        encoded = to_numpy(samples["train"][0].select([cols.image]))[cols.image]
        shape = infer_image_shape(encoded)
        if shape is None:
            raise DataError(
                f"no image in the first rows of {splits.train.uri_prefix}{samples['train'][1]} "
                f"column '{cols.image}' opens: set data.image_shape and data.image_encoding"
            )
        data.image_shape = shape
        log.info("images: %dx%dx%d (data.image_shape, from the first image)", *shape)
    if builtin_images:
        c = data.image_shape[2]
        for name in ("mean", "std"):
            if len(getattr(data.preprocessing, name)) not in (1, c):
                raise ConfigError(
                    f"data.preprocessing.{name} has {len(getattr(data.preprocessing, name))} "
                    f"values; the images have {c} channel(s)"
                )
    return Plan(build_workload(cfg, cols, code), splits, samples)


# --- user code on real data, where it runs --------------------------------------------------


def _describe(arr) -> str:
    """dtype and shape of a numpy array or tensor: float32 [8, 1, 8, 8]."""
    return f"{str(arr.dtype).removeprefix('torch.')} {list(arr.shape)}"


def _data_side(workload: Workload, samples: dict, fs_by_split: dict, prefixes: dict) -> dict:
    """On a data-group node: build the preprocessing as a data worker does and run it on
    each split's real batch. Returns each split's output dtypes and shapes, and a few rows."""
    out = {}
    for split, table in samples.items():
        pre = Preprocessor(workload.spec, split, fs_by_split[split], prefixes[split], None)
        table, path = table
        cols = to_numpy(table)
        cols[PATH_COLUMN] = np.array([path] * len(table), dtype=object)
        batch = pre.batch(cols)
        batch.pop(ROW_DIGEST_COLUMN)
        n = len(batch[workload.spec.label_column])
        if not n:
            raise DataError(f"every row of the first batch of the {split} split is a bad record")
        out[split] = {
            "dtypes": {k: str(v.dtype) for k, v in batch.items()},
            "shapes": {k: list(v.shape) for k, v in batch.items()},
            "row_bytes": int(sum(v.nbytes for v in batch.values()) // n) + 8,
            "rows": {k: v[:FORWARD_ROWS] for k, v in batch.items()},
        }
    return out


def _train_side(
    workload: Workload,
    rows: dict[str, np.ndarray],
    run_forward: bool,
    validation_rows: dict[str, np.ndarray] | None = None,
) -> dict:
    """On a train-group node: resolve the model, loss and loop as a train worker does, apply
    the device transforms to each split's preprocessed rows (a transform may differ by split),
    then run the forward and the loss on them, on CPU. Returns the model factory's facts,
    taken from the train batch the model gets."""
    import torch

    for ref in (workload.model, workload.loop, workload.loss):
        if ref is not None:
            ref.target("train")
    spec = workload.spec
    steps = workload.device_steps("train")
    batches = {"train": _on_device(spec, steps, rows, "train")}
    if validation_rows is not None:
        batches["validation"] = _on_device(spec, steps, validation_rows, "validation")
    x, y = batches["train"][spec.input_column], batches["train"][spec.label_column]
    facts = model_facts(workload.cfg, tuple(x.shape), tuple(y.shape))
    if not run_forward:
        return facts
    model = call_factory(workload.model, facts, "train")
    if not isinstance(model, torch.nn.Module):
        raise UserCodeError(
            f"train.model: {workload.model.name}(...) returned {type(model).__name__}, "
            "expected a torch.nn.Module"
        )
    loss_fn = workload.loss.build("train") if workload.loss else task_loss(spec.task)
    field_name = f"train.loss ({workload.loss.name})" if workload.loss else "train.task"
    for split, batch in batches.items():
        x, y = batch[spec.input_column], batch[spec.label_column]
        which = "first batch" if split == "train" else "first validation batch"
        model.train(split == "train" and len(x) > 1)  # BatchNorm cannot train on one row
        try:
            with torch.set_grad_enabled(split == "train"):
                outputs = model(x)
        except Exception as e:
            raise UserCodeError(
                f"train.model ({workload.model.name}): forward failed on the {which} (input "
                f"'{spec.input_column}' {_describe(x)}): "
                f"{e.__class__.__name__}: {first_line(e)}"
            ) from None
        try:
            loss = loss_fn(outputs, y)
        except Exception as e:
            shape = list(outputs.shape) if hasattr(outputs, "shape") else type(outputs).__name__
            raise UserCodeError(
                f"{field_name}: the loss failed on the model's output {shape} and labels "
                f"{_describe(y)} of the {which}: {e.__class__.__name__}: {first_line(e)}"
            ) from None
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            shape = list(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise UserCodeError(
                f"{field_name} returned {shape}, expected a scalar tensor (reduce it, e.g. .mean())"
            )
    return facts


def _on_device(spec, steps, rows: dict[str, np.ndarray], split: str) -> dict:
    """Preprocessed rows as the tensors a train worker's loop gets for ``split``: after the
    device transforms, with the model's columns checked."""
    import torch

    batch = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in rows.items()}
    if not steps:
        return batch
    batch = steps(batch, split)
    for col, what, fld in spec.model_columns():
        if not isinstance(batch.get(col), torch.Tensor):
            raise UserCodeError(
                f"data.device_transform: the {split} batch it returns has no tensor '{col}' "
                f"({what}, {fld}); it has: {', '.join(batch) or 'nothing'}"
            )
    return batch


def learn_from_output(workload: Workload, result: dict) -> Workload:
    """Fill in what the preprocessing's output on real batches says: each split's dtypes and
    the bytes of a preprocessed row. The model factory's facts come from the train side
    (``_train_side``): the batch the model gets, after the device transforms."""
    workload.dtypes = {k: v["dtypes"] for k, v in result.items()}
    workload.spec.row_bytes = result["train"]["row_bytes"]
    return workload


def local_workload(cfg: PipelineConfig, split: Split) -> Workload:
    """The workload of a config on one split's files, checked in this process (no Ray): what
    the bench preprocesses outside Ray. The config's dataset facts must be set."""
    cols = _columns(cfg, split)
    workload = build_workload(cfg, cols)
    sample = split.sample(cols.read, SAMPLE_ROWS)
    result = _data_side(
        workload, {"train": sample}, {"train": split.fs}, {"train": split.uri_prefix}
    )
    result["validation"] = result["train"]
    learn_from_output(workload, result)
    workload.facts = _train_side(workload, result["train"]["rows"], run_forward=False)
    return workload


def _group(cfg_selector: dict[str, str], default: str) -> str:
    return cfg_selector.get(NODE_GROUP_LABEL, default) if cfg_selector else default


def check_user_code(p: Plan, stamps: dict | None = None) -> Workload:
    """Resolve and run the workload's code on the driver, a data node and a train node; fill
    in the dtypes, row size and model facts it learns. Raises one line on the first problem.
    ``stamps`` (pipeline.phases.Stamps) gets the moment each group's check ended."""
    import ray

    workload = p.workload
    cfg = workload.cfg
    for ref in workload.user_callables():
        ref.target("driver")
    splits = {"train": p.splits.train, "validation": p.splits.validation}
    data_sel = dict(cfg.data.placement.selector)
    train_sel = dict(cfg.train.placement.selector)
    data_task = ray.remote(_data_side).options(
        num_cpus=0, **({"label_selector": data_sel} if data_sel else {})
    )
    train_task = ray.remote(_train_side).options(
        num_cpus=0, **({"label_selector": train_sel} if train_sel else {})
    )
    try:
        result = ray.get(
            data_task.remote(
                workload,
                p.samples,
                {k: s.fs for k, s in splits.items()},
                {k: s.uri_prefix for k, s in splits.items()},
            )
        )
        learn_from_output(workload, result)
        if stamps is not None:
            stamps.stamp("preflight_data")
        # a user's loop may build its own model: the forward runs when train.model is used
        run_forward = workload.loop.spec == SUPERVISED_LOOP or workload.model_is_users()
        val = result.get("validation")
        workload.facts = ray.get(
            train_task.remote(
                workload, result["train"]["rows"], run_forward, val["rows"] if val else None
            )
        )
    except Exception as e:
        cause = find_pipeline_error(e)
        if cause is not None:
            raise cause from None
        raise
    if stamps is not None:
        stamps.stamp("preflight_train")
    _log_columns(workload, _group(data_sel, "data"))
    return workload


def _log_columns(workload: Workload, group: str) -> None:
    shown = ", ".join(f"{k} {v}" for k, v in workload.dtypes["train"].items())
    log.info("preprocessing checked on the %s group: a batch has %s", group, shown)
    if workload.device_transforms:
        names = ", ".join(f"{ref.field} ({ref.name})" for ref in workload.device_transforms)
        log.info("then on each train worker's device: %s", names)
