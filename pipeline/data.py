"""Where preprocessing runs: Ray Data reads Parquet and preprocesses on the data group.

``read_parquet`` and ``map_batches`` both carry the data group's label selector (Ray runs a
read or map task wherever it fits otherwise), and so does the ``DataConfig`` handed to the
trainer: Train executes the datasets with its own execution options.

The core knows no workload: a batch of Parquet columns goes through the preprocessing the
workload names (the built-in image or table steps, or ``data.preprocess``), and the core
checks what comes out, applies the bad-record policy to the labels and to the records the
preprocessing could not use, and adds each row's digest.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline import metrics
from pipeline.errors import DataError, PipelineError, UserCodeError, first_line
from pipeline.records import BadRecord, check_labels, row_digests
from pipeline.sources import Split
from pipeline.usercode import UserCallable

log = logging.getLogger(__name__)

PATH_COLUMN = "path"  # added by read_parquet(include_paths=True): errors name the file
ROW_DIGEST_COLUMN = "row_digest"  # lets an epoch prove it saw every row exactly once
LEDGER_NAMESPACE = "ray-pipeline"
MIN_BLOCK_BYTES = 8 << 20


@dataclass
class BatchSpec:
    """Everything a data task needs to preprocess a batch; built on the driver, picklable."""

    columns: list[str]  # the Parquet columns read
    digest_columns: list[str]
    input_column: str
    label_column: str
    task: str
    num_classes: int | None
    preprocess: UserCallable
    bad_records: str = "fail"
    row_bytes: int = 0  # bytes of one preprocessed row (from the pre-flight batch)
    map_batch_size: int = 512
    batch_size: int = 64
    run_name: str = ""  # the metrics' `run` tag
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    def model_columns(self) -> list[tuple[str, str, str]]:
        """(column, what it is, the config field naming it) of what every batch must carry."""
        return [
            (self.input_column, "the model's input", "train.input_column"),
            (self.label_column, "the label", "data.label_column"),
        ]

    def output_block_bytes(self) -> int:
        """Preprocessed blocks of at least 8 MiB (or a training batch, if larger). Every block
        costs the executor and the consumer a fixed amount; 8 MiB blocks carried ~1.8x the
        rows/s of 1 MiB ones for 28x28 images, and still leave the data group within ~0.1 s."""
        return max(MIN_BLOCK_BYTES, self.batch_size * max(self.row_bytes, 1))

    def chunk_rows(self) -> int:
        """Rows per preprocessing call: data.map_batch_size, fewer if they would overfill a
        block."""
        if self.row_bytes <= 0:
            return self.map_batch_size
        return max(1, min(self.map_batch_size, self.output_block_bytes() // self.row_bytes))


# --- Arrow -> numpy --------------------------------------------------------------------------


def _column_to_numpy(col: pa.ChunkedArray) -> np.ndarray:
    """One column as numpy: encoded images (binary, or Hugging Face's struct<bytes, path>) as
    an object array of bytes, fixed-size lists of numbers as a 2-D array, numbers as they are."""
    t = col.type
    if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0:
        col = pa.chunked_array([c.field("bytes") for c in col.chunks], type=t.field("bytes").type)
        t = col.type
    if pa.types.is_fixed_size_list(t) and col.null_count == 0:
        flat = (
            np.concatenate([c.flatten().to_numpy(zero_copy_only=False) for c in col.chunks])
            if col.num_chunks
            else np.zeros(0)
        )
        return flat.reshape(len(col), t.list_size)
    return col.to_numpy()


def to_numpy(table: pa.Table) -> dict[str, np.ndarray]:
    return {name: _column_to_numpy(table.column(name)) for name in table.column_names}


# --- checking what the preprocessing returns -------------------------------------------------


def check_output(
    out, rows_in: int, spec: BatchSpec
) -> tuple[dict[str, np.ndarray], list[BadRecord]]:
    """The preprocessing's result as (columns, bad records), or one line naming the field and
    the column that is wrong: not a dict, unequal lengths, not numbers, input or label missing."""
    name = f"data.preprocess ({spec.preprocess.name})"
    bad: list[BadRecord] = []
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], dict):
        out, bad = out
        bad = [BadRecord(*b) for b in bad]
    if not isinstance(out, dict):
        raise UserCodeError(
            f"{name} returned {type(out).__name__}, expected a dict of numpy arrays keyed by "
            "column (or (dict, bad_records))"
        )
    cols: dict[str, np.ndarray] = {}
    for key, value in out.items():
        arr = np.asarray(value)
        if arr.ndim == 0:
            raise UserCodeError(f"{name}: column '{key}' is a scalar, expected one value per row")
        if arr.dtype.kind not in "iufb":
            raise UserCodeError(
                f"{name}: column '{key}' is {arr.dtype} ({type(value).__name__}); what reaches "
                "training must be numbers: drop the column or encode it as numbers"
            )
        cols[str(key)] = arr
    lengths = {k: len(v) for k, v in cols.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{k}: {n}" for k, n in lengths.items())
        raise UserCodeError(f"{name}: columns have different lengths ({shown})")
    for col, what, fld in spec.model_columns():
        if col not in cols:
            raise UserCodeError(
                f"{name} returned no column '{col}' ({what}, {fld}); it returned: "
                f"{', '.join(cols) or 'nothing'}"
            )
    rows_out = lengths[spec.label_column]
    if bad and rows_out != rows_in:
        raise UserCodeError(
            f"{name} reported bad records but returned {rows_out} rows for "
            f"{rows_in}: with bad records, return one row per input row"
        )
    outside = [b.index for b in bad if not 0 <= b.index < rows_out]
    if outside:
        raise UserCodeError(
            f"{name} reported a bad record at index {outside[0]} of a batch of {rows_out} rows"
        )
    return cols, bad


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


def named_actor(name: str | None, namespace: str = LEDGER_NAMESPACE):
    """A run's named bookkeeping actor (ledger, progress board), or None when there is none
    (no name, or the dataset is used outside `train`, e.g. by the bench)."""
    if not name:
        return None
    import ray

    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        return None


def _report_skipped(ledger: str | None, split: str, counts: dict, examples: dict) -> None:
    actor = named_actor(ledger)
    if actor is None:
        log.warning("skipped bad records in %s: %s", split, counts)
        return
    import ray

    ray.get(actor.add.remote(split, counts, examples))  # before the batch is delivered


class Preprocessor:
    """One split's preprocessing on a data worker: Parquet columns in, checked numeric columns
    out, bad records handled by policy. A class named in data.preprocess is built once here."""

    def __init__(self, spec: BatchSpec, split: str, fs, uri_prefix: str, ledger: str | None):
        self.spec, self.split, self.fs, self.uri_prefix, self.ledger = (
            spec,
            split,
            fs,
            uri_prefix,
            ledger,
        )
        self.fn = spec.preprocess.build(group="data")

    def __call__(self, block: pa.Table) -> Iterator[dict[str, np.ndarray]]:
        """A whole read block, preprocessed a chunk at a time (``chunk_rows``).

        Taking whole blocks (``batch_size=None``) lets Ray fuse the map into the read task: one
        operator, so every data core preprocesses, instead of Ray reserving cores for a read
        operator that has little to do; yielding chunks keeps each output block small."""
        step = self.spec.chunk_rows()
        for start in range(0, block.num_rows, step):
            yield self.batch(to_numpy(block.slice(start, step)))

    def batch(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.spec
        paths = columns.pop(PATH_COLUMN, None)
        n = len(columns[spec.columns[0]])
        # before the preprocessing, which may change the arrays it is handed
        digests = row_digests(columns, spec.digest_columns)
        try:
            result = self.fn(dict(columns), split=self.split)
        except PipelineError:
            raise
        except Exception as e:
            where = f" on a batch of {self._file(paths, 0)}" if paths is not None else ""
            raise UserCodeError(
                f"data.preprocess ({spec.preprocess.name}) raised{where}: "
                f"{e.__class__.__name__}: {first_line(e)}"
            ) from None
        out, bad = check_output(result, n, spec)
        try:
            labels, bad_labels = check_labels(out[spec.label_column], spec.task, spec.num_classes)
        except TypeError as e:
            raise UserCodeError(
                f"data.preprocess ({spec.preprocess.name}): column '{spec.label_column}' "
                f"(data.label_column): {e}"
            ) from None
        out[spec.label_column] = labels
        rows = len(labels)
        aligned = rows == n  # one output row per input row: rows keep their file and digest
        if not aligned:  # a preprocessing that adds or drops rows: no per-row digest
            digests = np.zeros(rows, np.int64)
        bad = sorted({b.index: b for b in [*bad_labels, *bad]}.values())
        if bad:
            keep = self._handle_bad(bad, columns, paths, rows, aligned)
            out = {k: v[keep] for k, v in out.items()}
            digests = digests[keep]
        out[ROW_DIGEST_COLUMN] = digests
        metrics.add(
            "pipeline_preprocessed_rows_total",
            len(out[ROW_DIGEST_COLUMN]),
            run=spec.run_name,
            split=self.split,
        )
        return out

    def _file(self, paths, i: int) -> str:
        return f"{self.uri_prefix}{paths[i]}" if paths is not None else "?"

    def _handle_bad(
        self, bad: list[BadRecord], columns, paths, rows: int, aligned: bool
    ) -> np.ndarray:
        """Stop naming the file and row (fail), or the rows to keep (skip). Output rows map to
        input rows, their files and row numbers only when the preprocessing kept them
        one-to-one; otherwise the batch's first file is named."""
        spec = self.spec
        i, kind, reason = bad[0]
        src = i if aligned else 0
        if spec.bad_records == "fail":
            col = spec.label_column if kind == "bad_label" else spec.digest_columns[0]
            row = None
            if aligned and paths is not None and col in columns:
                raw = columns[col][i]
                value = raw.item() if hasattr(raw, "item") else raw
                row = _locate_row(self.fs, str(paths[i]), col, value)
            where = f"row {row}" if row is not None else "a row"
            raise DataError(
                f"bad record in {self._file(paths, src)}, {where}: {reason} "
                "(data.bad_records=fail; set data.bad_records=skip to skip and count such rows)"
            )
        keep = np.ones(rows, dtype=bool)
        counts: dict[str, int] = {}
        examples: dict[str, str] = {}
        for j, kind, why in bad:
            if keep[j]:
                keep[j] = False
                counts[kind] = counts.get(kind, 0) + 1
                examples.setdefault(kind, f"{self._file(paths, j if aligned else 0)}: {why}")
        _report_skipped(self.ledger, self.split, counts, examples)
        for kind, count in counts.items():
            metrics.add(
                "pipeline_skipped_records_total",
                count,
                run=spec.run_name,
                split=self.split,
                kind=kind,
            )
        return keep


_PREPROCESSORS: dict[tuple[str, str], Preprocessor] = {}  # per worker process


def preprocess_block(block: pa.Table, **kwargs) -> Iterator[dict[str, np.ndarray]]:
    """A read task's preprocessing (a function in data.preprocess, or a built-in): the
    Preprocessor is built once per worker process and split."""
    key = (kwargs["spec"].token, kwargs["split"])
    pre = _PREPROCESSORS.get(key)
    if pre is None:
        pre = _PREPROCESSORS[key] = Preprocessor(**kwargs)
    yield from pre(block)


class PreprocessActor:
    """A class in data.preprocess: Ray Data's actor pool, one instance per data worker."""

    def __init__(self, **kwargs):
        self.pre = Preprocessor(**kwargs)

    def __call__(self, block: pa.Table) -> Iterator[dict[str, np.ndarray]]:
        yield from self.pre(block)


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


def configure_data_context(spec: BatchSpec) -> None:
    from ray.data import DataContext

    from pipeline.console import quiet_ray

    quiet_ray()  # importing ray.data configured its loggers

    # Ray 2.60's Parquet datasource V2 starts 32 footer-reading actors per execution, i.e. per
    # epoch, scheduled with SPREAD (ignoring the label selector). On a 2-core node that costs
    # ~9 s per epoch (benchmarks/RESULTS.md); V1 reads footers at plan time and runs read
    # tasks where the selector says.
    ctx = DataContext.get_current()
    ctx.use_datasource_v2 = False
    # Inside Train workers the per-operator bars print as blank lines; the loop prints
    # one line per epoch with rows/s and data wait instead.
    ctx.enable_operator_progress_bars = False
    ctx.target_max_block_size = spec.output_block_bytes()
    if IdleExecutorBackoff not in ctx.custom_execution_callback_classes:
        ctx.custom_execution_callback_classes = [
            *ctx.custom_execution_callback_classes,
            IdleExecutorBackoff,
        ]
    # S3 retries are s3.retry_max_attempts in pyarrow, a bounded window; Ray Data's own layer
    # on top (10 attempts, backoff up to 32 s each) would stretch a lasting outage to minutes.
    ctx.retried_io_errors = []


def build_dataset(
    split: Split,
    spec: BatchSpec,
    data,
    *,
    selector: dict[str, str] | None,
    ledger: str | None = None,
    actors: int = 1,
):
    """The split's read (its format's Ray reader) -> map_batches(preprocessing), both pinned
    to the data group.

    ``data`` is the config's data section; ``actors`` the pool size when data.preprocess is
    a class."""
    import inspect

    from ray.data import FileShuffleConfig

    configure_data_context(spec)
    shuffle = None
    if split.name == "train" and data.file_shuffle:
        shuffle = (
            FileShuffleConfig(seed=data.shuffle_seed) if data.shuffle_seed is not None else "files"
        )
    placement = {"label_selector": selector} if selector else {}
    pooled = inspect.isclass(spec.preprocess.target())
    ds = split.read(
        spec.columns,
        shuffle=shuffle,
        # one task per file or fragment, not Ray's 128 MiB bin-packing (a small dataset: one)
        read_tasks=data.read_tasks,
        # with an actor pool the reads only read: let them share the actors' cores
        **({"num_cpus": 0} if pooled else {}),
        **placement,
    )
    kwargs = dict(
        spec=spec,
        split=split.name,
        fs=split.fs,
        uri_prefix=split.uri_prefix,
        ledger=ledger,
    )
    common = dict(batch_size=None, batch_format="pyarrow", zero_copy_batch=True, **placement)
    if pooled:
        return ds.map_batches(
            PreprocessActor, fn_constructor_kwargs=kwargs, concurrency=max(1, actors), **common
        )
    return ds.map_batches(preprocess_block, fn_kwargs=kwargs, **common)
