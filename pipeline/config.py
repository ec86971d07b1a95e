"""The pipeline's one typed config schema: YAML file + ``--set a.b=c`` overrides.

Secrets never come from here: S3 credentials come from the standard AWS environment
variables or a mounted credentials file (``AWS_SHARED_CREDENTIALS_FILE``), which both
pyarrow and boto3 read through the AWS default credential chain.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError
from pipeline.usercode import check_import_string, is_import_string

# KubeRay (>= 1.1) labels every Ray node with its group name under this key; the Helm chart
# names its worker groups `data` and `train`. These defaults are what the chart renders too.
NODE_GROUP_LABEL = "ray.io/node-group"
DATA_GROUP = "data"
TRAIN_GROUP = "train"

SECRET_KEYS = {
    "access_key",
    "access_key_id",
    "aws_access_key_id",
    "secret_key",
    "secret_access_key",
    "aws_secret_access_key",
    "session_token",
    "aws_session_token",
    "password",
    "token",
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Placement(_Section):
    """Which Ray nodes may run this part of the job, by node label (empty: any node)."""

    selector: dict[str, str] = Field(default_factory=dict)
    wait_s: float = Field(
        0.0,
        ge=0,
        description="when no node matches yet, ask the autoscaler for one and wait this long; "
        "0 = fail at once. For train.placement also: wait at most this long for the train "
        "group to take the run (while other runs hold it); 0 = wait as long as it takes",
    )


class Augmentation(_Section):
    """Random per-batch augmentation of training images; different in every epoch."""

    enabled: bool = True
    max_shift_px: int = Field(1, ge=0, description="random translation, pixels each way")
    horizontal_flip: bool = False
    brightness: float = Field(0.1, ge=0, le=1, description="random brightness scale +/-")
    noise_std: float = Field(0.0, ge=0, le=1, description="gaussian noise, in [0,1] units")
    random_resized_crop: int | None = Field(
        None,
        ge=1,
        description="images of any size become this many pixels square: in training a random "
        "8-100% of the area at an aspect of 3/4-4/3 (torchvision's RandomResizedCrop), "
        "otherwise the centre (the shorter side resized to size/0.875); default off: every "
        "image must be data.image_shape",
    )


class Preprocessing(_Section):
    """Normalisation applied after decode (and augmentation): (x/255 - mean) / std."""

    mean: list[float] = Field(default_factory=lambda: [0.5])
    std: list[float] = Field(default_factory=lambda: [0.5])
    normalise_on: Literal["train", "data"] = Field(
        "train",
        description="train: images leave the data group as uint8 and each train worker "
        "normalises them on its device (4x fewer bytes through the object store and to the "
        "GPU); data: the data group ships float32",
    )
    augmentation: Augmentation = Field(default_factory=Augmentation)

    @field_validator("std")
    @classmethod
    def _positive_std(cls, v: list[float]) -> list[float]:
        if any(s <= 0 for s in v):
            raise ValueError("every std must be > 0")
        return v


IMAGE_COLUMN = "image"  # the model input of image datasets (NCHW; float32 once normalised)
FEATURES_COLUMN = "features"  # the model input of tables (float32 N x F)


class DataSection(_Section):
    """Where the data is, what its columns are, and how a batch is preprocessed.

    ``uri`` is a dataset root whose splits are found by file or folder name (``train/``,
    ``data/train-00000-of-00002.parquet``, ``validation``/``valid``/``val``, ``test``), as
    Hugging Face lays datasets out; ``train_uri``/``validation_uri`` name a split directly."""

    format: Literal["parquet", "csv", "json", "iceberg", "delta", "lance"] | None = Field(
        None,
        description="default: parquet, or csv/json/delta from what data.uri holds (.csv, "
        ".json/.jsonl files, a _delta_log/ folder)",
    )
    uri: str | None = "data/digits"
    train_uri: str | None = None
    validation_uri: str | None = None
    table: str | None = Field(
        None, description="iceberg: <namespace>.<table> holding both splits (data.split_column)"
    )
    train_table: str | None = None
    validation_table: str | None = None
    catalog: dict[str, Any] = Field(
        default_factory=dict,
        description="iceberg: pyiceberg's catalog properties (type: sql, uri: sqlite:///...,"
        " warehouse: s3://...; type: rest, uri: ...); name: the catalog's name",
    )
    split_column: str | None = Field(
        None, description="one table or folder holding both splits: the column naming each row's"
    )
    split_values: dict[str, str] = Field(
        default_factory=lambda: {"train": "train", "validation": "validation"},
        description="the split column's value for each split",
    )
    snapshot: int | None = Field(
        None, description="iceberg: the snapshot id to read (default: the current one, pinned)"
    )
    version: int | None = Field(
        None, description="delta / lance: the version to read (default: the latest, pinned)"
    )
    image_column: str | None = Field(
        None,
        description="binary or struct<bytes, path> column of encoded images; "
        "default: Hugging Face's Image feature, else a column named image/img",
    )
    label_column: str | None = Field(
        None, description="default: 'label', else Hugging Face's one ClassLabel column"
    )
    feature_columns: list[str] | None = Field(
        None, description="a table: numeric columns stacked into `features` (float32 N x F)"
    )
    columns: list[str] | None = Field(
        None, description="the columns data.preprocess receives (default: those above)"
    )
    preprocess: str | None = Field(
        None,
        description="package.module:attr, a function fn(batch, **preprocess_args) or a class "
        "(instantiated once per data worker); default: the built-in image or table steps",
    )
    preprocess_args: dict[str, Any] = Field(default_factory=dict)
    device_transform: str | None = Field(
        None,
        description="package.module:attr, fn(batch, **device_transform_args) -> batch (or a "
        "class), run on each train worker's device on every batch of tensors before the loop "
        "gets it (after the built-in normalisation, for images)",
    )
    device_transform_args: dict[str, Any] = Field(default_factory=dict)
    preprocess_workers: int = Field(
        0, ge=0, description="actors of a preprocessing class; 0 = one per data-group CPU"
    )
    image_encoding: Literal["auto", "png", "jpeg", "raw"] = "auto"
    image_shape: tuple[int, int, int] | None = Field(
        None, description="height, width, channels; default: the first image's"
    )
    num_classes: int | None = Field(
        None, ge=2, description="default: Hugging Face's class names, else the largest label + 1"
    )
    preprocessing: Preprocessing = Field(default_factory=Preprocessing)
    file_shuffle: bool = True
    shuffle_seed: int | None = None
    local_shuffle_buffer: int = Field(
        1024,
        ge=0,
        description="rows; 0 disables; at most 1/8 of the train node's object store, never "
        "below one batch (a run that caps it says so); a fetch (data.batches_per_fetch) "
        "holds no more rows than the buffer",
    )
    batch_size: int = Field(64, ge=1, description="per train worker")
    validation_batch_size: int = Field(512, ge=1)
    prefetch_batches: int = Field(4, ge=0)
    batches_per_fetch: int = Field(
        0,
        ge=0,
        description="train batches Ray Data assembles at once, handed to the loop as slices: "
        "Ray's cost per batch is paid once per fetch; 0 = as many as fit in 8 MiB, at most 8; "
        "with shuffling, at most the local shuffle buffer's rows",
    )
    map_batch_size: int = Field(512, ge=1, description="rows per preprocessing call")
    read_tasks: int = Field(
        0, ge=0, description="read tasks per epoch; 0 = one per file (Ray splits big files)"
    )
    bad_records: Literal["fail", "skip"] = "fail"
    validate_files: bool = Field(True, description="check every file's footer before training")
    placement: Placement = Field(
        default_factory=lambda: Placement(selector={NODE_GROUP_LABEL: DATA_GROUP})
    )

    @field_validator("image_shape")
    @classmethod
    def _shape(cls, v: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
        if v is None:
            return v
        h, w, c = v
        if h < 1 or w < 1 or c not in (1, 3):
            raise ValueError("must be [height >= 1, width >= 1, channels 1 or 3]")
        return v

    @field_validator("uri", "train_uri", "validation_uri")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        return None if v is None else check_uri(v)

    @field_validator("preprocess")
    @classmethod
    def _preprocess(cls, v: str | None) -> str | None:
        return None if v is None else check_import_string(v, "data.preprocess")

    @field_validator("device_transform")
    @classmethod
    def _device_transform(cls, v: str | None) -> str | None:
        return None if v is None else check_import_string(v, "data.device_transform")

    @field_validator("feature_columns")
    @classmethod
    def _features(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("name at least one column (or leave it unset for images)")
        return v

    @model_validator(mode="after")
    def _sources(self) -> DataSection:
        tables = self.table is not None or (
            self.train_table is not None and self.validation_table is not None
        )
        if self.format == "iceberg" and not tables:
            raise ValueError(
                "data.table: an iceberg source names <namespace>.<table> (or both "
                "data.train_table and data.validation_table)"
            )
        if self.format == "iceberg" and not self.catalog:
            raise ValueError("data.catalog: an iceberg source names its catalog's properties")
        if (
            self.table is not None
            and self.split_column is None
            and not (self.train_table or self.validation_table)
        ):
            raise ValueError(
                "data.split_column: one table holds both splits; name the column that says "
                "which (or set data.train_table and data.validation_table)"
            )
        unknown = set(self.split_values) - {"train", "validation"}
        if unknown:
            raise ValueError(f"data.split_values: {sorted(unknown)[0]} is not a split (train, "
                             "validation)")  # fmt: skip
        # one renamed split keeps the other's default value
        self.__dict__["split_values"] = {"train": "train", "validation": "validation",
                                         **self.split_values}  # fmt: skip
        if self.format == "iceberg":
            return self
        if self.uri is None and (self.train_uri is None or self.validation_uri is None):
            raise ValueError(
                "data.uri: set a dataset root, or both data.train_uri and data.validation_uri"
            )
        if self.image_shape is not None:
            c = self.image_shape[2]
            for name in ("mean", "std"):
                values = getattr(self.preprocessing, name)
                if len(values) not in (1, c):
                    raise ValueError(
                        f"preprocessing.{name} has {len(values)} values; the image has "
                        f"{c} channel(s)"
                    )
        return self


BUILTIN_MODELS = ("simple_cnn", "resnet18", "mlp")


class TrainSection(_Section):
    model: str = Field(
        "simple_cnn",
        description=f"a built-in model ({', '.join(BUILTIN_MODELS)}) or package.module:attr, "
        "a factory called with model_args that returns a torch.nn.Module",
    )
    model_args: dict[str, Any] = Field(default_factory=dict)
    task: Literal["classification", "regression"] = "classification"
    loss: str | None = Field(
        None, description="package.module:attr, loss(outputs, labels) -> scalar tensor"
    )
    loss_args: dict[str, Any] = Field(default_factory=dict)
    loop: str | None = Field(
        None, description="package.module:attr, a per-worker loop taking a TrainContext"
    )
    loop_args: dict[str, Any] = Field(default_factory=dict)
    input_column: str | None = Field(
        None, description="the batch column the model gets; default image, or features"
    )
    epochs: int = Field(8, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    learning_rate: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    resources_per_worker: dict[str, float] | None = None
    mixed_precision: Literal["auto", "bf16", "fp16", "off"] = Field(
        "auto", description="auto: bf16 on GPU, off on CPU"
    )
    compile: bool = Field(
        False,
        description="compile the built-in loop's model with torch.compile on each train worker "
        "(the pre-flight still runs it eagerly); the first steps take the compilation",
    )
    seed: int = 0
    max_failures: int = Field(3, ge=-1, description="worker-group restarts; -1 = unlimited")
    checkpoints_to_keep: int = Field(2, ge=1)
    placement: Placement = Field(
        default_factory=lambda: Placement(selector={NODE_GROUP_LABEL: TRAIN_GROUP})
    )

    @field_validator("resources_per_worker")
    @classmethod
    def _resources(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None and any(q < 0 for q in v.values()):
            raise ValueError("resource amounts must be >= 0")
        return v

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if v in BUILTIN_MODELS or is_import_string(v):
            return v
        raise ValueError(
            f"train.model: {v!r} is neither a built-in model ({', '.join(BUILTIN_MODELS)}) nor "
            "an import string package.module:attr"
        )

    @field_validator("loss")
    @classmethod
    def _loss(cls, v: str | None) -> str | None:
        return None if v is None else check_import_string(v, "train.loss")

    @field_validator("loop")
    @classmethod
    def _loop(cls, v: str | None) -> str | None:
        return None if v is None else check_import_string(v, "train.loop")


class StorageSection(_Section):
    run_name: str = Field("digits-cnn", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    checkpoint_uri: str = "runs"
    lease_ttl_s: float = Field(
        60.0,
        ge=1,
        description="one writer per run: the run's lease (renewed every third of this) is "
        "stale, and may be taken over by a new run of the same name, when not renewed this long",
    )

    @field_validator("checkpoint_uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        return check_uri(v)


class S3Section(_Section):
    endpoint: str | None = Field(
        None, description="host:port or URL of an S3-compatible endpoint; default AWS"
    )
    region: str = "us-east-1"
    scheme: Literal["http", "https"] | None = Field(None, description="default: from endpoint")
    connect_timeout_s: float = Field(5.0, gt=0)
    request_timeout_s: float = Field(60.0, gt=0)
    retry_max_attempts: int = Field(
        10,
        ge=1,
        le=16,
        description="per S3 request, backoff doubling from 25 ms: 10 rides out ~25 s of outage",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            found = sorted(k for k in data if str(k).lower() in SECRET_KEYS)
            if found:
                raise ValueError(
                    f"s3.{found[0]}: credentials are never read from the config; set "
                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment or mount a "
                    "credentials file and point AWS_SHARED_CREDENTIALS_FILE at it"
                )
        return data


class MlflowSection(_Section):
    uri: str | None = Field(
        None,
        description="the MLflow tracking server (http(s)://host:port); default: "
        "$MLFLOW_TRACKING_URI; unset: no MLflow run. Credentials come from "
        "MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN in the environment",
    )
    experiment: str = Field("ray-pipeline", min_length=1, description="created when missing")
    log_model: bool = Field(False, description="log the final model with mlflow.pytorch")

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r}: expected an http(s):// URL of an MLflow tracking server")
        return v

    def tracking_uri(self) -> str | None:
        """The server: this section's uri, else $MLFLOW_TRACKING_URI (http(s) only)."""
        uri = self.uri or os.environ.get("MLFLOW_TRACKING_URI") or None
        return uri if uri and uri.startswith(("http://", "https://")) else None


class WandbSection(_Section):
    project: str | None = Field(
        None,
        description="a Weights & Biases project; unset: no W&B run. WANDB_API_KEY, "
        "WANDB_BASE_URL and WANDB_MODE come from the environment",
    )
    entity: str | None = None


class TrackingSection(_Section):
    mlflow: MlflowSection = Field(default_factory=MlflowSection)
    wandb: WandbSection = Field(default_factory=WandbSection)


class PipelineConfig(_Section):
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)
    storage: StorageSection = Field(default_factory=StorageSection)
    s3: S3Section = Field(default_factory=S3Section)
    tracking: TrackingSection = Field(default_factory=TrackingSection)


def check_uri(v: str) -> str:
    if "://" in v and not v.startswith(("s3://", "file://")):
        raise ValueError(f"'{v}': only s3:// URIs and local paths are supported")
    if v.startswith("s3://") and len(v) <= len("s3://"):
        raise ValueError("an s3:// URI needs a bucket")
    if not v.strip():
        raise ValueError("must not be empty")
    return v


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        if msg.split(":", 1)[0].startswith(field):  # the message already names the field
            lines.append(msg)
        else:
            lines.append(f"{field}: {msg}")
    return f"invalid config ({source}): " + "; ".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=c`` -> (["a", "b"], c) with c parsed as YAML (numbers, bools, lists)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=5")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: value is not valid YAML: {e}") from None
    return path, value


def apply_override(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for i, part in enumerate(path[:-1]):
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a section")
        node = nxt
    node[path[-1]] = value


def load_config(path: str | os.PathLike | None = None, overrides: list[str] = ()) -> PipelineConfig:
    """Load the config from YAML (or defaults), apply overrides, validate everything."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        try:
            text = p.read_text()
        except OSError as e:
            raise ConfigError(f"cannot read config file {p}: {e.strerror or e}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p}: top level must be a mapping of sections")
        tree = loaded
    for item in overrides:
        keys, value = parse_override(item)
        apply_override(tree, keys, value)
    if overrides:
        source += " with --set"
    return validate_config(tree, source)


def validate_config(tree: dict[str, Any], source: str = "config") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None


def dump_config(cfg: PipelineConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
