"""What the pipeline makes of a dataset's columns, whatever format holds them.

- the columns: an image column (binary, or Hugging Face's ``struct<bytes, path>``), numeric
  feature columns of a table, the label; class names from the ``huggingface`` schema metadata;
- the class count when data.num_classes is unset: the class names, else the largest label of
  the statistics (or of the first batch, where the format keeps none).

Which files or tables make each split, and how they are read, is each format's own:
``pipeline/sources/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa

from pipeline.config import FEATURES_COLUMN, IMAGE_COLUMN, PipelineConfig
from pipeline.errors import DataError

IMAGE_COLUMN_NAMES = ("image", "img", "picture", "photo")


# --- columns -------------------------------------------------------------------------------


def hf_features(schema: pa.Schema) -> dict:
    """The ``features`` of Hugging Face's schema metadata ({} when the file has none)."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw:
        return {}
    try:
        features = json.loads(raw).get("info", {}).get("features", {})
    except (ValueError, AttributeError):
        return {}
    return features if isinstance(features, dict) else {}


def is_image_type(t: pa.DataType) -> bool:
    """Encoded image bytes: binary, or a struct with a binary ``bytes`` field (HF's Image)."""
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return True
    if pa.types.is_struct(t):
        idx = t.get_field_index("bytes")
        return idx >= 0 and (
            pa.types.is_binary(t.field(idx).type) or pa.types.is_large_binary(t.field(idx).type)
        )
    return False


def is_numeric_type(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _is_feature_type(t: pa.DataType) -> bool:
    """A scalar number, or a fixed-size list of numbers (an embedding)."""
    if pa.types.is_fixed_size_list(t):
        return is_numeric_type(t.value_type)
    return is_numeric_type(t)


@dataclass
class Columns:
    """What the pipeline reads, and what each column is for."""

    kind: str  # "image" | "table" | "custom" (a user's preprocessing on other columns)
    read: list[str]
    label: str
    image: str | None = None
    features: list[str] | None = None
    class_names: list[str] | None = None
    input: str = IMAGE_COLUMN
    user_preprocess: bool = False  # the labels may need it to become numbers


def _find_image_column(schema: pa.Schema, features: dict) -> str | None:
    for name, feat in features.items():
        if isinstance(feat, dict) and feat.get("_type") == "Image" and name in schema.names:
            return name
    for name in IMAGE_COLUMN_NAMES:
        if name in schema.names and is_image_type(schema.field(name).type):
            return name
    candidates = [f.name for f in schema if is_image_type(f.type)]
    return candidates[0] if len(candidates) == 1 else None


def _find_label_column(schema: pa.Schema, features: dict) -> str | None:
    if "label" in schema.names:
        return "label"
    labels = [
        name
        for name, feat in features.items()
        if isinstance(feat, dict) and feat.get("_type") == "ClassLabel" and name in schema.names
    ]
    return labels[0] if len(labels) == 1 else None


def resolve_columns(
    cfg: PipelineConfig, schema: pa.Schema, uri: str, user_preprocess: bool = False
) -> Columns:
    """The columns to read, from the config and the first train file's schema; one line
    naming the field when a column the config names (or needs) is not there."""
    data = cfg.data
    names = schema.names
    features = hf_features(schema)
    user_preprocess = user_preprocess or data.preprocess is not None

    def need(col: str, field_name: str) -> str:
        if col not in names:
            raise DataError(
                f"column '{col}' ({field_name}) not found in {uri}; its columns are: "
                f"{', '.join(names)}"
            )
        return col

    label = data.label_column or _find_label_column(schema, features)
    if label is None:
        raise DataError(
            f"no label column in {uri} (data.label_column): no column named 'label' and no "
            f"single Hugging Face ClassLabel; its columns are: {', '.join(names)}"
        )
    need(label, "data.label_column")
    class_names = None
    feat = features.get(label)
    if isinstance(feat, dict) and isinstance(feat.get("names"), list):
        class_names = [str(n) for n in feat["names"]]

    if data.feature_columns:
        for col in data.feature_columns:
            need(col, "data.feature_columns")
        cols = Columns(
            "table", [*data.feature_columns, label], label, features=data.feature_columns
        )
        cols.input = FEATURES_COLUMN
    else:
        image = data.image_column or _find_image_column(schema, features)
        if image is not None:
            need(image, "data.image_column")
            cols = Columns("image", [image, label], label, image=image)
        elif user_preprocess:  # no images: the preprocessing makes the feature matrix
            cols = Columns("custom", [n for n in names if n != label] + [label], label)
            cols.input = FEATURES_COLUMN
        else:
            raise DataError(
                f"no image column in {uri} (data.image_column): no binary or struct<bytes, path> "
                f"column was found among {', '.join(names)}; for a table set "
                "data.feature_columns, or give data.preprocess"
            )
    if data.columns is not None:
        for col in data.columns:
            need(col, "data.columns")
        cols.read = [c for c in data.columns if c != label] + [label]
    cols.class_names = class_names
    cols.user_preprocess = user_preprocess
    if cfg.train.input_column:
        cols.input = cfg.train.input_column
    return cols


@dataclass
class FileInfo:
    """What a format's metadata says of one part of a split (a file, a data file)."""

    rows: int
    problem: str | None = None
    label_range: tuple[float, float] | None = None  # from statistics, None when absent


def infer_num_classes(
    cols: Columns,
    infos: list[FileInfo],
    uri: str,
    *,
    first_batch: tuple[float, float] | None = None,
) -> tuple[int, str]:
    """Class count when data.num_classes is unset, and where it came from: the class names,
    else the largest label + 1 of the statistics, else (a format without statistics) of the
    first batch, said so."""
    if cols.class_names:
        return len(cols.class_names), "the dataset's class names"
    ranges = [i.label_range for i in infos]
    if infos and all(r is not None for r in ranges):
        hi = max(r[1] for r in ranges)
        if hi >= 1 and float(hi).is_integer():
            return int(hi) + 1, f"the largest label, {int(hi)}; set it if that label is wrong"
    if not infos and first_batch is not None:
        hi = first_batch[1]
        if hi >= 1 and float(hi).is_integer():
            return int(hi) + 1, (
                f"the largest label of the first batch, {int(hi)} ({uri} keeps no label "
                "statistics); set it if the data holds larger labels"
            )
    raise DataError(
        f"cannot tell how many classes the labels of {uri} have (no class names in the "
        "Hugging Face metadata, no label statistics in the footers): set data.num_classes"
    )


def column_problem(schema: pa.Schema, cfg: PipelineConfig, cols: Columns, where: str) -> str | None:
    """Why the columns of one file or table (``where``) cannot be read as ``cols`` says, or
    None: a column missing, an image column that holds no encoded images, a feature column
    that is not numbers, a label that is not numbers (integers, to classify)."""
    names = schema.names
    fields = {
        cols.label: "data.label_column",
        **({cols.image: "data.image_column"} if cols.image else {}),
        **{c: "data.feature_columns" for c in cols.features or ()},
    }
    for col in cols.read:
        if col not in names:
            fld = fields.get(col, "data.columns")
            return (
                f"column '{col}' ({fld}) not found in {where}; its columns are: {', '.join(names)}"
            )
    if cols.image and not is_image_type(schema.field(cols.image).type):
        return (
            f"column '{cols.image}' (data.image_column) in {where} is "
            f"{schema.field(cols.image).type}, expected binary or struct<bytes: binary, ...> "
            "(encoded image bytes)"
        )
    for col in cols.features or ():
        t = schema.field(col).type
        if not _is_feature_type(t):
            return f"column '{col}' (data.feature_columns) in {where} is {t}, expected numbers"
    ltype = schema.field(cols.label).type
    if not cols.user_preprocess and not is_numeric_type(ltype):
        expected = "integers" if cfg.train.task == "classification" else "numbers"
        return (
            f"column '{cols.label}' (data.label_column) in {where} is {ltype}, expected {expected}"
        )
    return None


def labels_outside(lo, hi, cfg: PipelineConfig, cols: Columns) -> bool:
    """Whether labels lo..hi fall outside data.num_classes where the built-in checks apply
    (a classification with bad_records=fail and the class count set)."""
    data = cfg.data
    return (
        not cols.user_preprocess
        and cfg.train.task == "classification"
        and data.bad_records == "fail"
        and data.num_classes is not None
        and (lo < 0 or hi >= data.num_classes)
    )


def label_range_of(table: pa.Table, label: str) -> tuple[float, float] | None:
    """The smallest and largest label of rows read (where a format keeps no statistics)."""
    import pyarrow.compute as pc

    col = table.column(label)
    if not is_numeric_type(col.type) or col.null_count == len(col):
        return None
    mm = pc.min_max(col).as_py()
    return float(mm["min"]), float(mm["max"])
