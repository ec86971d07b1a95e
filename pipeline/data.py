"""Where preprocessing runs: Ray Data reads Parquet and preprocesses on the data group.

``read_parquet`` and ``map_batches`` both carry the data group's label selector (Ray runs a
read or map task wherever it fits otherwise), and so does the ``DataConfig`` handed to the
trainer: Train executes the datasets with its own execution options.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.config import DataSection, PipelineConfig
from pipeline.errors import DataError
from pipeline.storage import Location, check_bucket, list_files, resolve
from pipeline.transforms import check_labels, decode_images, preprocess

log = logging.getLogger(__name__)

PATH_COLUMN = "path"  # added by read_parquet(include_paths=True): errors name the file
LEDGER_NAMESPACE = "ray-pipeline"


@dataclass
class FileCheck:
    """What the pre-flight footer check found in one split."""

    files: list[str]
    rows: int = 0
    skipped_files: dict[str, str] = field(default_factory=dict)  # path -> reason


# --- pre-flight: fail before any cluster work, naming the file, column or field ----------


def _check_footer(loc: Location, path: str, data: DataSection) -> tuple[int, str | None]:
    """Rows in ``path`` and why it cannot be used (None when it can)."""
    uri = loc.uri_of(path)
    try:
        with loc.fs.open_input_file(path) as f:
            md = pq.ParquetFile(f).metadata
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError for a corrupt footer
        return 0, f"file {uri} is not a readable Parquet file: {str(e).splitlines()[0]}"
    schema = md.schema.to_arrow_schema()
    names = schema.names
    for col, fld in ((data.image_column, "data.image_column"), (data.label_column, "data.label_column")):
        if col not in names:
            return md.num_rows, (
                f"column '{col}' ({fld}) not found in {uri}; its columns are: {', '.join(names)}"
            )
    itype = schema.field(data.image_column).type
    if not (pa.types.is_binary(itype) or pa.types.is_large_binary(itype)):
        return md.num_rows, (
            f"column '{data.image_column}' (data.image_column) in {uri} is {itype}, expected binary "
            "(encoded image bytes)"
        )
    ltype = schema.field(data.label_column).type
    if not (pa.types.is_integer(ltype) or pa.types.is_floating(ltype)):
        return md.num_rows, (
            f"column '{data.label_column}' (data.label_column) in {uri} is {ltype}, expected integers"
        )
    if data.bad_records == "fail":
        col_idx = names.index(data.label_column)
        first_row = 0
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            stats = rg.column(col_idx).statistics
            if stats is not None and stats.has_min_max:
                lo, hi = stats.min, stats.max
                if lo < 0 or hi >= data.num_classes:
                    return md.num_rows, (
                        f"labels {lo}..{hi} in {uri} rows {first_row}-{first_row + rg.num_rows - 1} "
                        f"are outside the classes 0..{data.num_classes - 1} (data.num_classes)"
                    )
            first_row += rg.num_rows
    return md.num_rows, None


def check_split(loc: Location, data: DataSection, *, threads: int = 16) -> FileCheck:
    """List a split's Parquet files and check every footer (in parallel: on S3 each is a GET)."""
    files = list_files(loc)
    if not files:
        raise DataError(f"no Parquet files under {loc.uri} ({loc.field})")
    result = FileCheck(files=files)
    if not data.validate_files:
        return result
    with ThreadPoolExecutor(max_workers=min(threads, len(files))) as pool:
        checks = list(pool.map(lambda p: _check_footer(loc, p, data), files))
    good = []
    for path, (rows, problem) in zip(files, checks):
        if problem is None:
            good.append(path)
            result.rows += rows
        elif data.bad_records == "skip":
            log.warning("skipping %s", problem)
            result.skipped_files[loc.uri_of(path)] = problem
        else:
            raise DataError(problem + " (data.bad_records=fail; 'skip' skips such files)")
    if not good:
        raise DataError(f"no usable Parquet files under {loc.uri} ({loc.field})")
    result.files = good
    return result


@dataclass
class Splits:
    train: Location
    validation: Location
    train_check: FileCheck
    validation_check: FileCheck


def check_inputs(cfg: PipelineConfig) -> Splits:
    train = resolve(cfg.data.train_uri, cfg.s3, "data.train_uri")
    val = resolve(cfg.data.validation_uri, cfg.s3, "data.validation_uri")
    for loc in (train, val):
        check_bucket(loc, cfg.s3)
    return Splits(train, val, check_split(train, cfg.data), check_split(val, cfg.data))


# --- the data path --------------------------------------------------------------------------


def _locate_row(fs: pafs.FileSystem, path: str, column: str, value) -> int | None:
    """Row number of the first record in ``path`` whose ``column`` equals ``value``.

    Only used on the error path: Ray batches carry the file but not the row."""
    try:
        with fs.open_input_file(path) as f:
            values = pq.read_table(f, columns=[column]).column(0).to_pylist()
    except Exception:
        return None
    for i, v in enumerate(values):
        if v == value or (isinstance(v, float) and isinstance(value, float) and v != v and value != value):
            return i
    return None


class BadRecordLedger:
    """Counts skipped records by reason; one named actor per run (Ray Data has no counters)."""

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.examples: dict[str, str] = {}

    def add(self, counts: dict[str, int], examples: dict[str, str]) -> None:
        for k, n in counts.items():
            self.counts[k] = self.counts.get(k, 0) + n
        for k, v in examples.items():
            self.examples.setdefault(k, v)

    def snapshot(self) -> dict:
        return {"counts": dict(self.counts), "examples": dict(self.examples)}


def ledger_name(run_name: str) -> str:
    return f"bad-records-{run_name}"


def preprocess_batch(
    batch: dict[str, np.ndarray],
    *,
    data: DataSection,
    training: bool,
    fs: pafs.FileSystem,
    uri_prefix: str,
    ledger: str | None,
) -> dict[str, np.ndarray]:
    """One Ray Data batch -> {"image": float32 NCHW, "label": int64}, applying the
    bad-record policy. Runs in a map task on the data group."""
    encoded = batch[data.image_column]
    labels, bad = check_labels(batch[data.label_column], data.num_classes)
    images, bad_images = decode_images(encoded, data.image_encoding, data.image_shape)
    bad = sorted(bad + bad_images)
    if bad:
        paths = batch.get(PATH_COLUMN)
        i, kind, reason = bad[0]
        path = str(paths[i]) if paths is not None else "?"
        if data.bad_records == "fail":
            col = data.label_column if kind == "bad_label" else data.image_column
            raw = batch[col][i]
            value = raw.item() if hasattr(raw, "item") else raw
            row = _locate_row(fs, path, col, value)
            where = f"row {row}" if row is not None else "a row"
            raise DataError(
                f"bad record in {uri_prefix}{path}, {where}: {reason} "
                "(data.bad_records=fail; set data.bad_records=skip to skip and count such rows)"
            )
        keep = np.ones(len(labels), dtype=bool)
        counts: dict[str, int] = {}
        examples: dict[str, str] = {}
        for j, kind, r in bad:
            if keep[j]:
                keep[j] = False
                counts[kind] = counts.get(kind, 0) + 1
                examples.setdefault(kind, f"{uri_prefix}{paths[j] if paths is not None else '?'}: {r}")
        if ledger:
            import ray

            try:
                actor = ray.get_actor(ledger, namespace=LEDGER_NAMESPACE)
                ray.get(actor.add.remote(counts, examples))
            except ValueError:  # no ledger (dataset used outside `train`): just log
                log.warning("skipped bad records: %s", counts)
        images, labels = images[keep], labels[keep]
    rng = np.random.default_rng() if training else None  # fresh entropy: differs every epoch
    return {"image": preprocess(images, data, training=training, rng=rng), "label": labels}


def build_dataset(
    loc: Location,
    files: list[str],
    cfg: PipelineConfig,
    *,
    training: bool,
    selector: dict[str, str] | None,
    ledger: str | None = None,
):
    """read_parquet -> map_batches(preprocess), both pinned to the data group."""
    import ray.data
    from ray.data import DataContext, FileShuffleConfig

    # Ray 2.60's Parquet datasource V2 starts 32 footer-reading actors per execution, i.e. per
    # epoch, scheduled with SPREAD (ignoring the label selector). On a 2-core node that costs
    # ~9 s per epoch (benchmarks/RESULTS.md); V1 reads footers at plan time and runs read
    # tasks where the selector says.
    ctx = DataContext.get_current()
    ctx.use_datasource_v2 = False
    # Inside Train workers the per-operator bars print as blank lines; the loop prints
    # one line per epoch with rows/s and data wait instead.
    ctx.enable_operator_progress_bars = False
    data = cfg.data
    shuffle = None
    if training and data.file_shuffle:
        shuffle = FileShuffleConfig(seed=data.shuffle_seed) if data.shuffle_seed is not None else "files"
    placement = {"label_selector": selector} if selector else {}
    ds = ray.data.read_parquet(
        files,
        filesystem=loc.fs,
        columns=[data.image_column, data.label_column],
        shuffle=shuffle,
        include_paths=True,
        **placement,
    )
    return ds.map_batches(
        preprocess_batch,
        batch_size=data.map_batch_size,
        batch_format="numpy",
        zero_copy_batch=True,
        fn_kwargs=dict(
            data=data,
            training=training,
            fs=loc.fs,
            uri_prefix="s3://" if loc.is_s3 else "",
            ledger=ledger,
        ),
        **placement,
    )


def build_train_dataset(splits: Splits, cfg: PipelineConfig, selector, ledger=None):
    return build_dataset(
        splits.train, splits.train_check.files, cfg, training=True, selector=selector, ledger=ledger
    )


def build_validation_dataset(splits: Splits, cfg: PipelineConfig, selector, ledger=None):
    return build_dataset(
        splits.validation, splits.validation_check.files, cfg, training=False, selector=selector,
        ledger=ledger,
    )
