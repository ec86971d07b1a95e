"""Where preprocessing runs: Ray Data reads Parquet and preprocesses on the data group.

``read_parquet`` and ``map_batches`` both carry the data group's label selector (Ray runs a
read or map task wherever it fits otherwise), and so does the ``DataConfig`` handed to the
trainer: Train executes the datasets with its own execution options.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.config import DataSection, PipelineConfig
from pipeline.errors import DataError, first_line
from pipeline.storage import Location, check_bucket, list_files, resolve
from pipeline.transforms import check_labels, decode_images, preprocess, row_digests

log = logging.getLogger(__name__)

PATH_COLUMN = "path"  # added by read_parquet(include_paths=True): errors name the file
ROW_DIGEST_COLUMN = "row_digest"  # lets an epoch prove it saw every row exactly once
LEDGER_NAMESPACE = "ray-pipeline"


@dataclass
class FileCheck:
    """What the pre-flight footer check found in one split."""

    files: list[str]
    rows: int | None = 0  # None: not counted (data.validate_files=false)
    skipped_files: dict[str, str] = field(default_factory=dict)  # path -> reason


# --- pre-flight: fail before any cluster work, naming the file, column or field ----------


def _check_footer(loc: Location, path: str, data: DataSection) -> tuple[int, str | None]:
    """Rows in ``path`` and why it cannot be used (None when it can)."""
    uri = loc.uri_of(path)
    try:
        with loc.fs.open_input_file(path) as f:
            md = pq.ParquetFile(f).metadata
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError for a corrupt footer
        return 0, f"file {uri} is not a readable Parquet file: {first_line(e)}"
    schema = md.schema.to_arrow_schema()
    names = schema.names
    for col, fld in (
        (data.image_column, "data.image_column"),
        (data.label_column, "data.label_column"),
    ):
        if col not in names:
            return md.num_rows, (
                f"column '{col}' ({fld}) not found in {uri}; its columns are: {', '.join(names)}"
            )
    itype = schema.field(data.image_column).type
    if not (pa.types.is_binary(itype) or pa.types.is_large_binary(itype)):
        return md.num_rows, (
            f"column '{data.image_column}' (data.image_column) in {uri} is {itype}, "
            "expected binary (encoded image bytes)"
        )
    ltype = schema.field(data.label_column).type
    if not (pa.types.is_integer(ltype) or pa.types.is_floating(ltype)):
        return md.num_rows, (
            f"column '{data.label_column}' (data.label_column) in {uri} is {ltype}, "
            "expected integers"
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
                        f"labels {lo:g}..{hi:g} in {uri} "
                        f"rows {first_row}-{first_row + rg.num_rows - 1} "
                        f"are outside the classes 0..{data.num_classes - 1} (data.num_classes; "
                        "data.bad_records=skip skips and counts such rows)"
                    )
            first_row += rg.num_rows
    return md.num_rows, None


def check_split(loc: Location, data: DataSection, *, threads: int = 16) -> FileCheck:
    """List a split's Parquet files and check every footer (in parallel: on S3 each is a GET)."""
    files = list_files(loc)
    if not files:
        raise DataError(f"no Parquet files under {loc.uri} ({loc.field})")
    if not data.validate_files:
        return FileCheck(files=files, rows=None)
    result = FileCheck(files=files)
    with ThreadPoolExecutor(max_workers=min(threads, len(files))) as pool:
        checks = list(pool.map(lambda p: _check_footer(loc, p, data), files))
    good = []
    for path, (rows, problem) in zip(files, checks, strict=True):
        if problem is None:
            good.append(path)
            result.rows += rows
        elif data.bad_records == "skip":
            log.warning("skipping %s", problem)
            result.skipped_files[loc.uri_of(path)] = problem
        else:
            if "data.bad_records" not in problem:
                problem += " (data.bad_records=skip skips such files)"
            raise DataError(problem)
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
        if v == value or (
            isinstance(v, float) and isinstance(value, float) and v != v and value != value
        ):
            return i
    return None


class BadRecordLedger:
    """Counts skipped records per split and kind; one named actor per run.

    Ray Data has no counters, so map tasks report here (only when they skip something) and
    the training loop reads the counts once per epoch."""

    def __init__(self):
        self.counts: dict[str, dict[str, int]] = {}
        self.examples: dict[str, str] = {}

    def add(self, split: str, counts: dict[str, int], examples: dict[str, str]) -> None:
        mine = self.counts.setdefault(split, {})
        for kind, n in counts.items():
            mine[kind] = mine.get(kind, 0) + n
        for kind, text in examples.items():
            self.examples.setdefault(kind, text)

    def reset(self) -> None:
        self.counts = {}

    def snapshot(self) -> dict:
        return {
            "counts": {k: dict(v) for k, v in self.counts.items()},
            "examples": dict(self.examples),
        }


def ledger_name(run_name: str) -> str:
    return f"bad-records-{run_name}"


def _report_skipped(ledger: str | None, split: str, counts: dict, examples: dict) -> None:
    if not ledger:
        log.warning("skipped bad records in %s: %s", split, counts)
        return
    import ray

    try:
        actor = ray.get_actor(ledger, namespace=LEDGER_NAMESPACE)
    except ValueError:  # the dataset is used outside `train` (e.g. the bench)
        log.warning("skipped bad records in %s: %s", split, counts)
        return
    ray.get(actor.add.remote(split, counts, examples))  # before the batch is delivered


def preprocess_batch(
    batch: dict[str, np.ndarray],
    *,
    data: DataSection,
    split: str,
    fs: pafs.FileSystem,
    uri_prefix: str,
    ledger: str | None,
) -> dict[str, np.ndarray]:
    """One Ray Data batch -> {"image": float32 NCHW, "label": int64, "row_digest": int64},
    applying the bad-record policy. Runs in a map task on the data group; only the train
    split is augmented."""
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
        for j, kind, why in bad:
            if keep[j]:
                keep[j] = False
                counts[kind] = counts.get(kind, 0) + 1
                examples.setdefault(
                    kind, f"{uri_prefix}{paths[j] if paths is not None else '?'}: {why}"
                )
        _report_skipped(ledger, split, counts, examples)
        images, labels, encoded = images[keep], labels[keep], encoded[keep]
    training = split == "train"
    rng = np.random.default_rng() if training else None  # fresh entropy: differs every epoch
    return {
        "image": preprocess(images, data, training=training, rng=rng),
        "label": labels,
        ROW_DIGEST_COLUMN: row_digests(encoded),
    }


MIN_BLOCK_BYTES = 8 << 20


def decoded_row_bytes(data: DataSection) -> int:
    h, w, c = data.image_shape
    return h * w * c * 4 + 16  # float32 image, int64 label and digest


def output_block_bytes(data: DataSection) -> int:
    """Preprocessed blocks of at least 8 MiB (or a training batch, if larger). Every block
    costs the executor and the consumer a fixed amount; 8 MiB blocks carried ~1.8x the rows/s
    of 1 MiB ones for 28x28 images, and still leave the data group within ~0.1 s."""
    return max(MIN_BLOCK_BYTES, data.batch_size * decoded_row_bytes(data))


def chunk_rows(data: DataSection) -> int:
    """Rows per preprocessing call: data.map_batch_size, fewer if they would overfill a block."""
    return max(1, min(data.map_batch_size, output_block_bytes(data) // decoded_row_bytes(data)))


def preprocess_block(block: dict[str, np.ndarray], **kwargs) -> Iterator[dict[str, np.ndarray]]:
    """A whole read block, preprocessed a chunk at a time (``chunk_rows``).

    Taking whole blocks (``batch_size=None``) lets Ray fuse the map into the read task: one
    operator, so every data core decodes, instead of Ray reserving cores for a read operator
    that has little to do; yielding chunks keeps each output block small."""
    n = len(block[kwargs["data"].label_column])
    step = chunk_rows(kwargs["data"])
    for start in range(0, n, step):
        chunk = {k: v[start : start + step] for k, v in block.items()}
        yield preprocess_batch(chunk, **kwargs)


class IdleExecutorBackoff:
    """Ray Data 2.60's executor loop blocks in ``ray.wait`` only until some task is "ready";
    a task held back by output backpressure stays ready, so while the consumer is slower
    than the reading (a training step longer than it takes to read its batch) the loop spins
    a core at 100% (measured: 0.3-0.8 of a core on the split coordinator during CPU
    training). While every operator is idle or held back, sleep 2 ms per step: output still
    moves 500 times a second, far above the rate at which blocks are consumed."""

    def before_execution_starts(self, executor) -> None:
        pass

    def on_execution_step(self, executor) -> None:
        try:
            ops = list(getattr(executor, "_topology", None) or ())
            waiting = ops and all(
                not op.get_active_tasks() or op._in_task_output_backpressure for op in ops
            )
        except Exception:  # Ray internals moved: no back-off, nothing else changes
            return
        if waiting:
            time.sleep(0.002)

    def after_execution_succeeds(self, executor) -> None:
        pass

    def after_execution_fails(self, executor, error) -> None:
        pass


def build_dataset(
    loc: Location,
    files: list[str],
    cfg: PipelineConfig,
    *,
    split: str,
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
    ctx.target_max_block_size = output_block_bytes(cfg.data)
    if IdleExecutorBackoff not in ctx.custom_execution_callback_classes:
        ctx.custom_execution_callback_classes = [
            *ctx.custom_execution_callback_classes,
            IdleExecutorBackoff,
        ]
    # S3 retries are s3.retry_max_attempts in pyarrow, a bounded window; Ray Data's own layer
    # on top (10 attempts, backoff up to 32 s each) would stretch a lasting outage to minutes.
    ctx.retried_io_errors = []
    data = cfg.data
    shuffle = None
    if split == "train" and data.file_shuffle:
        shuffle = (
            FileShuffleConfig(seed=data.shuffle_seed) if data.shuffle_seed is not None else "files"
        )
    placement = {"label_selector": selector} if selector else {}
    ds = ray.data.read_parquet(
        files,
        filesystem=loc.fs,
        columns=[data.image_column, data.label_column],
        shuffle=shuffle,
        include_paths=True,
        # one task per file, not Ray's 128 MiB bin-packing (a small dataset: one task)
        override_num_blocks=data.read_tasks or len(files),
        **placement,
    )
    return ds.map_batches(
        preprocess_block,
        batch_size=None,
        batch_format="numpy",
        zero_copy_batch=True,
        fn_kwargs=dict(
            data=data,
            split=split,
            fs=loc.fs,
            uri_prefix="s3://" if loc.is_s3 else "",
            ledger=ledger,
        ),
        **placement,
    )


def build_train_dataset(splits: Splits, cfg: PipelineConfig, selector, ledger=None):
    return build_dataset(
        splits.train, splits.train_check.files, cfg, split="train", selector=selector, ledger=ledger
    )


def build_validation_dataset(splits: Splits, cfg: PipelineConfig, selector, ledger=None):
    return build_dataset(
        splits.validation,
        splits.validation_check.files,
        cfg,
        split="validation",
        selector=selector,
        ledger=ledger,
    )
