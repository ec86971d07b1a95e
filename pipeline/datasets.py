"""Which files make each split, what their columns are, and whether every file can be read.

All of it runs on the driver before any Ray work, from listings and Parquet footers only:
- splits from a dataset root by file or folder name, as Hugging Face lays datasets out
  (``data/train-00000-of-00002.parquet``, ``train/part-0.parquet``, ``validation``, ``valid``,
  ``val``, ``test``), or one URI per split;
- the columns: an image column (binary, or Hugging Face's ``struct<bytes, path>``), numeric
  feature columns of a table, the label; class names from the ``huggingface`` schema metadata;
- every footer, in parallel (on S3 each is a GET), naming the file and column that is wrong.
"""

from __future__ import annotations

import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq

from pipeline.config import FEATURES_COLUMN, IMAGE_COLUMN, PipelineConfig
from pipeline.errors import DataError, first_line
from pipeline.storage import Location, check_bucket, list_files, resolve

log = logging.getLogger(__name__)

SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
}
_TOKEN = re.compile(r"[-_.]")
IMAGE_COLUMN_NAMES = ("image", "img", "picture", "photo")


# --- splits ------------------------------------------------------------------------------


def split_of(relpath: str) -> str | None:
    """The split a file belongs to, from the first folder or file-name word that names one:
    ``data/train-00000-of-00002.parquet`` and ``train/part-0.parquet`` are both train."""
    parts = relpath.strip("/").split("/")
    parts[-1] = parts[-1].rsplit(".", 1)[0]
    for part in parts:
        for token in _TOKEN.split(part.lower()):
            if token in SPLIT_NAMES:
                return SPLIT_NAMES[token]
    return None


def discover_splits(loc: Location, sizes: dict[str, int] | None = None) -> dict[str, list[str]]:
    """Every Parquet file under a dataset root, grouped by split (files of no split left out);
    ``sizes`` gets each file's size."""
    files = list_files(loc, sizes=sizes)
    if not files:
        raise DataError(f"no Parquet files under {loc.uri} ({loc.field})")
    root = loc.path.rstrip("/")
    found: dict[str, list[str]] = {}
    for path in files:
        rel = path[len(root) :].lstrip("/") if path.startswith(root) else path
        split = split_of(rel)
        if split is not None:
            found.setdefault(split, []).append(path)
    return found


@dataclass
class Split:
    """One split: where it is and which files it reads."""

    name: str
    loc: Location
    files: list[str]
    sizes: dict[str, int] = field(default_factory=dict)  # path -> bytes, from the listing
    rows: int | None = 0  # None: not counted (data.validate_files=false)
    skipped_files: dict[str, str] = field(default_factory=dict)  # uri -> reason


@dataclass
class Splits:
    train: Split
    validation: Split


def find_splits(cfg: PipelineConfig) -> Splits:
    """The train and validation files: named by data.train_uri / data.validation_uri, else
    found by name under data.uri (validation: validation/valid/val/dev, else test)."""
    data = cfg.data
    found: dict[str, list[str]] | None = None
    root = None
    sizes: dict[str, int] = {}
    if data.train_uri is None or data.validation_uri is None:
        root = resolve(data.uri, cfg.s3, "data.uri")
        check_bucket(root, cfg.s3)
        found = discover_splits(root, sizes)

    def one(name: str, uri: str | None, field_name: str) -> Split:
        if uri is not None:
            loc = resolve(uri, cfg.s3, field_name)
            check_bucket(loc, cfg.s3)
            own: dict[str, int] = {}
            files = list_files(loc, sizes=own)
            if not files:
                raise DataError(f"no Parquet files under {loc.uri} ({field_name})")
            return Split(name, loc, files, own)
        files = found.get(name)
        if not files and name == "validation" and found.get("test"):
            log.info("no validation split under %s: validating on its test split", root.uri)
            files = found["test"]
        if not files:
            names = "train" if name == "train" else "validation, valid, val, dev or test"
            have = ", ".join(f"{k} ({len(v)} files)" for k, v in sorted(found.items())) or "none"
            raise DataError(
                f"no {name} split under {root.uri} (data.uri): expected Parquet files or folders "
                f"named {names}; splits found: {have}; or set data.{name}_uri"
            )
        return Split(name, root, files, {p: sizes[p] for p in files})

    return Splits(
        one("train", data.train_uri, "data.train_uri"),
        one("validation", data.validation_uri, "data.validation_uri"),
    )


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


# --- footers -------------------------------------------------------------------------------


@dataclass
class FileInfo:
    rows: int
    problem: str | None = None
    label_range: tuple[float, float] | None = None  # from statistics, None when absent


_PARQUET = pds.ParquetFileFormat()


def read_footer(loc: Location, path: str, size: int | None = None) -> pq.FileMetaData:
    """A file's Parquet footer; with its ``size`` known (from the listing), one ranged read
    of its tail: no request for the size first (half the requests on S3)."""
    if size is None:
        with loc.fs.open_input_file(path) as f:
            return pq.ParquetFile(f).metadata
    return _PARQUET.make_fragment(path, loc.fs, file_size=size).metadata


def _leaf_count(t: pa.DataType) -> int:
    """How many Parquet leaf columns a field of type ``t`` is stored as."""
    if isinstance(t, pa.ExtensionType):
        return _leaf_count(t.storage_type)
    if pa.types.is_struct(t):
        return sum(_leaf_count(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_map(t):
        return _leaf_count(t.key_type) + _leaf_count(t.item_type)
    if (
        pa.types.is_list(t)
        or pa.types.is_large_list(t)
        or pa.types.is_fixed_size_list(t)
        or pa.types.is_list_view(t)
        or pa.types.is_large_list_view(t)
    ):
        return _leaf_count(t.value_type)
    return 1


def leaf_columns(schema: pa.Schema, name: str) -> list[int]:
    """The Parquet leaf column numbers of the top-level field ``name``: a row group's
    statistics, types and sizes are numbered by leaf (``image.bytes``, ``image.path``,
    ``label``), not by top-level field, so every nested column before ``name`` shifts it."""
    start = 0
    for f in schema:
        n = _leaf_count(f.type)
        if f.name == name:
            return list(range(start, start + n))
        start += n
    raise KeyError(name)


def check_footer(
    loc: Location, path: str, cfg: PipelineConfig, cols: Columns, size: int | None = None
) -> FileInfo:
    """Rows in ``path``, its label range, and why it cannot be used (None when it can)."""
    uri = loc.uri_of(path)
    data = cfg.data
    try:
        md = read_footer(loc, path, size)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError for a corrupt footer
        return FileInfo(0, f"file {uri} is not a readable Parquet file: {first_line(e)}")
    schema = md.schema.to_arrow_schema()
    names = schema.names
    fields = {
        cols.label: "data.label_column",
        **({cols.image: "data.image_column"} if cols.image else {}),
        **{c: "data.feature_columns" for c in cols.features or ()},
    }
    for col in cols.read:
        if col not in names:
            fld = fields.get(col, "data.columns")
            return FileInfo(
                md.num_rows,
                f"column '{col}' ({fld}) not found in {uri}; its columns are: {', '.join(names)}",
            )
    if cols.image and not is_image_type(schema.field(cols.image).type):
        return FileInfo(
            md.num_rows,
            f"column '{cols.image}' (data.image_column) in {uri} is "
            f"{schema.field(cols.image).type}, expected binary or struct<bytes: binary, ...> "
            "(encoded image bytes)",
        )
    for col in cols.features or ():
        t = schema.field(col).type
        if not _is_feature_type(t):
            return FileInfo(
                md.num_rows,
                f"column '{col}' (data.feature_columns) in {uri} is {t}, expected numbers",
            )
    ltype = schema.field(cols.label).type
    builtin = not cols.user_preprocess
    if builtin and not is_numeric_type(ltype):
        expected = "integers" if cfg.train.task == "classification" else "numbers"
        return FileInfo(
            md.num_rows,
            f"column '{cols.label}' (data.label_column) in {uri} is {ltype}, expected {expected}",
        )
    label_leaf = leaf_columns(schema, cols.label)
    if len(label_leaf) != 1:  # a nested label cannot be a class number
        return FileInfo(
            md.num_rows,
            f"column '{cols.label}' (data.label_column) in {uri} is {ltype}, expected one "
            "number per row",
        )
    info = FileInfo(md.num_rows, label_range=_label_range(md, label_leaf[0]))
    if (
        builtin
        and cfg.train.task == "classification"
        and data.bad_records == "fail"
        and data.num_classes is not None
    ):
        first_row = 0
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            stats = rg.column(label_leaf[0]).statistics
            if stats is not None and stats.has_min_max and is_numeric_type(ltype):
                lo, hi = stats.min, stats.max
                if lo < 0 or hi >= data.num_classes:
                    info.problem = (
                        f"labels {lo:g}..{hi:g} in {uri} "
                        f"rows {first_row}-{first_row + rg.num_rows - 1} "
                        f"are outside the classes 0..{data.num_classes - 1} (data.num_classes; "
                        "data.bad_records=skip skips and counts such rows)"
                    )
                    return info
            first_row += rg.num_rows
    return info


def _label_range(md: pq.FileMetaData, col: int) -> tuple[float, float] | None:
    lo = hi = None
    for g in range(md.num_row_groups):
        stats = md.row_group(g).column(col).statistics
        if stats is None or not stats.has_min_max:
            return None
        try:
            a, b = float(stats.min), float(stats.max)
        except (TypeError, ValueError):
            return None
        lo = a if lo is None else min(lo, a)
        hi = b if hi is None else max(hi, b)
    return None if lo is None else (lo, hi)


def check_split(
    split: Split, cfg: PipelineConfig, cols: Columns, *, threads: int = 16
) -> list[FileInfo]:
    """Check every footer of a split; drop bad files (skip) or fail naming the first."""
    data = cfg.data
    if not data.validate_files:
        split.rows = None
        return []
    with ThreadPoolExecutor(max_workers=min(threads, len(split.files))) as pool:
        infos = list(
            pool.map(
                lambda p: check_footer(split.loc, p, cfg, cols, split.sizes.get(p)), split.files
            )
        )
    good, kept = [], []
    split.rows = 0
    for path, info in zip(split.files, infos, strict=True):
        if info.problem is None:
            good.append(path)
            kept.append(info)
            split.rows += info.rows
        elif data.bad_records == "skip":
            log.warning("skipping %s", info.problem)
            split.skipped_files[split.loc.uri_of(path)] = info.problem
        else:
            problem = info.problem
            if "data.bad_records" not in problem:
                problem += " (data.bad_records=skip skips such files)"
            raise DataError(problem)
    if not good:
        raise DataError(f"no usable Parquet files in the {split.name} split ({split.loc.uri})")
    split.files = good
    return kept


def infer_num_classes(cols: Columns, infos: list[FileInfo], uri: str) -> tuple[int, str]:
    """Class count when data.num_classes is unset, and where it came from: the class names,
    else the largest label + 1."""
    if cols.class_names:
        return len(cols.class_names), "the dataset's class names"
    ranges = [i.label_range for i in infos]
    if infos and all(r is not None for r in ranges):
        hi = max(r[1] for r in ranges)
        if hi >= 1 and float(hi).is_integer():
            return int(hi) + 1, f"the largest label, {int(hi)}; set it if that label is wrong"
    raise DataError(
        f"cannot tell how many classes the labels of {uri} have (no class names in the "
        "Hugging Face metadata, no label statistics in the footers): set data.num_classes"
    )


def read_sample(split: Split, columns: list[str], rows: int = 64) -> pa.Table:
    """The first ``rows`` rows of the split's first file: the pre-flight's real batch."""
    path = split.files[0]
    try:
        with split.loc.fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            batch = next(pf.iter_batches(batch_size=rows, columns=columns), None)
    except Exception as e:
        raise DataError(f"cannot read {split.loc.uri_of(path)}: {first_line(e)}") from None
    if batch is None:
        raise DataError(f"{split.loc.uri_of(path)} has no rows")
    return pa.Table.from_batches([batch])


def first_schema(split: Split) -> pa.Schema:
    path = split.files[0]
    try:
        with split.loc.fs.open_input_file(path) as f:
            return pq.ParquetFile(f).schema_arrow
    except Exception as e:
        raise DataError(
            f"file {split.loc.uri_of(path)} is not a readable Parquet file: {first_line(e)}"
        ) from None
