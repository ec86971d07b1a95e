"""What a run trains: the config and the user's code turned into the pieces that run.

A workload is the preprocessing (``data.preprocess``, or the built-in image or table steps),
the model (``train.model``), the loss (``train.loss``, or the task's), and the loop
(``train.loop``, or the built-in supervised loop). Built-ins are named by import string like a
user's, so both take the same path through the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.config import PipelineConfig
from pipeline.data import BatchSpec
from pipeline.datasets import Columns
from pipeline.errors import UserCodeError, first_line
from pipeline.usercode import Built, UserCallable
from pipeline.workloads.models import BUILTIN as BUILTIN_MODELS

IMAGE_PREPROCESS = "pipeline.workloads.image:preprocess"
IMAGE_NORMALISE = "pipeline.workloads.image:Normalise"
TABLE_PREPROCESS = "pipeline.workloads.table:stack_features"
SUPERVISED_LOOP = "pipeline.train.loop:supervised_loop"


@dataclass
class UserCode:
    """Objects given from Python (``pipeline.run``) in place of the config's import strings."""

    model: Any = None
    preprocess: Any = None
    loss: Any = None
    loop: Any = None
    device_transform: Any = None


@dataclass
class Workload:
    """The resolved run: what every data task and train worker is handed."""

    cfg: PipelineConfig
    columns: Columns
    spec: BatchSpec
    model: UserCallable
    loss: UserCallable | None
    loop: UserCallable
    device_transforms: list[UserCallable] = field(default_factory=list)  # in order, on device
    facts: dict[str, Any] = field(default_factory=dict)  # filled into model factories
    dtypes: dict[str, dict[str, str]] = field(default_factory=dict)  # split -> column -> dtype

    def model_is_users(self) -> bool:
        return self.model.obj is not None or self.cfg.train.model not in BUILTIN_MODELS

    def device_steps(self, group: str = "train") -> DeviceSteps:
        """The device transforms, built where they run (a train worker)."""
        return DeviceSteps([(ref, ref.build(group)) for ref in self.device_transforms])

    def user_callables(self) -> list[UserCallable]:
        """Every extension point that names user code (to resolve in the pre-flight)."""
        out = [self.spec.preprocess, self.model, self.loop, *self.device_transforms]
        if self.loss is not None:
            out.append(self.loss)
        return out


class DeviceSteps:
    """Applies the device transforms to a batch of tensors; a step that raises or returns
    something other than the batch is named, with the split."""

    def __init__(self, steps: list[tuple[UserCallable, Built]]):
        self.steps = steps

    def __bool__(self) -> bool:
        return bool(self.steps)

    def __call__(self, batch: dict, split: str) -> dict:
        for ref, fn in self.steps:
            try:
                out = fn(batch, split=split)
            except UserCodeError:
                raise
            except Exception as e:
                raise UserCodeError(
                    f"{ref.field} ({ref.name}) raised on a {split} batch: "
                    f"{e.__class__.__name__}: {first_line(e)}"
                ) from None
            if not isinstance(out, dict):
                raise UserCodeError(
                    f"{ref.field} ({ref.name}) returned {type(out).__name__} on a {split} "
                    "batch, expected the batch: a dict of tensors keyed by column"
                )
            batch = out
        return batch


def preprocess_callable(cfg: PipelineConfig, cols: Columns, code: UserCode) -> UserCallable:
    data = cfg.data
    if code.preprocess is not None or data.preprocess is not None:
        return UserCallable(
            "data.preprocess", data.preprocess, code.preprocess, dict(data.preprocess_args)
        )
    if cols.kind == "table":
        return UserCallable(
            "data.preprocess",
            TABLE_PREPROCESS,
            args={"feature_columns": list(cols.features), "label_column": cols.label},
        )
    pre = data.preprocessing
    return UserCallable(
        "data.preprocess",
        IMAGE_PREPROCESS,
        args={
            "image_column": cols.image,
            "label_column": cols.label,
            "image_shape": list(data.image_shape),
            "encoding": data.image_encoding,
            "mean": list(pre.mean),
            "std": list(pre.std),
            "augmentation": pre.augmentation.model_dump(),
            "normalise_on": pre.normalise_on,
        },
    )


def device_transforms(cfg: PipelineConfig, preprocess: UserCallable, code: UserCode):
    """What each train worker applies to a batch on its device, in order: the built-in image
    steps' normalisation (when they ship uint8), then data.device_transform."""
    out = []
    if preprocess.spec == IMAGE_PREPROCESS and preprocess.args.get("normalise_on") == "train":
        pre = cfg.data.preprocessing  # the statistics the data-side steps were given win
        args = preprocess.args
        out.append(
            UserCallable(
                "data.preprocessing.normalise_on",
                IMAGE_NORMALISE,
                args={"mean": args.get("mean", pre.mean), "std": args.get("std", pre.std)},
            )
        )
    data = cfg.data
    if code.device_transform is not None or data.device_transform is not None:
        out.append(
            UserCallable(
                "data.device_transform",
                data.device_transform,
                code.device_transform,
                dict(data.device_transform_args),
            )
        )
    return out


def build_workload(cfg: PipelineConfig, cols: Columns, code: UserCode | None = None) -> Workload:
    """The workload of a config whose dataset facts (image shape, classes) are filled in."""
    code = code or UserCode()
    tr = cfg.train
    model_spec = BUILTIN_MODELS.get(tr.model, tr.model)
    model = UserCallable(
        "train.model",
        None if code.model is not None else model_spec,
        code.model,
        dict(tr.model_args),
    )
    loss = None
    if code.loss is not None or tr.loss is not None:
        loss = UserCallable("train.loss", tr.loss, code.loss, dict(tr.loss_args))
    if code.loop is not None or tr.loop is not None:
        loop = UserCallable("train.loop", tr.loop, code.loop, dict(tr.loop_args))
    else:
        loop = UserCallable("train.loop", SUPERVISED_LOOP)
    digest = [cols.image] if cols.image else list(cols.read)
    preprocess = preprocess_callable(cfg, cols, code)
    spec = BatchSpec(
        columns=list(cols.read),
        digest_columns=digest,
        input_column=cols.input,
        label_column=cols.label,
        task=tr.task,
        num_classes=cfg.data.num_classes if tr.task == "classification" else None,
        preprocess=preprocess,
        bad_records=cfg.data.bad_records,
        map_batch_size=cfg.data.map_batch_size,
        batch_size=cfg.data.batch_size,
        run_name=cfg.storage.run_name,
    )
    return Workload(
        cfg=cfg,
        columns=cols,
        spec=spec,
        model=model,
        loss=loss,
        loop=loop,
        device_transforms=device_transforms(cfg, preprocess, code),
    )


def model_facts(cfg: PipelineConfig, input_shape: tuple[int, ...], label_shape: tuple[int, ...]):
    """What a model factory may take from the data: the input's shape after preprocessing,
    the classes (or the regression target's width)."""
    facts: dict[str, Any] = {"input_shape": tuple(input_shape[1:])}
    if len(input_shape) == 2:
        facts["num_features"] = int(input_shape[1])
    if len(input_shape) == 4:  # N C H W
        facts["in_channels"] = int(input_shape[1])
        facts["image_size"] = int(min(input_shape[2], input_shape[3]))
    if cfg.train.task == "classification":
        facts["num_classes"] = cfg.data.num_classes
        facts["num_outputs"] = cfg.data.num_classes
    else:
        facts["num_outputs"] = int(label_shape[1]) if len(label_shape) == 2 else 1
    return facts


def task_loss(task: str):
    """The task's loss when train.loss is unset: cross-entropy, or MSE for regression."""
    import torch.nn.functional as F

    if task == "regression":

        def mse(outputs, labels):
            if outputs.dim() == 2 and outputs.shape[1] == 1 and labels.dim() == 1:
                outputs = outputs.squeeze(1)
            return F.mse_loss(outputs.float(), labels.float())

        return mse

    def cross_entropy(outputs, labels):
        return F.cross_entropy(outputs.float(), labels)

    return cross_entropy
