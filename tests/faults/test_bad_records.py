"""Bad records among good ones: a Parquet file with another schema, images that do not
decode, NaN and out-of-range labels. `data.bad_records=skip` drops and counts them (the counts
land in summary.json); `fail` stops at the first, naming its file and row, without retrying."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.records import epoch_digest, row_digests
from tests.conftest import run_cli
from tests.faults.conftest import BUCKET, Expected, fault_config

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

UNDECODABLE_ROWS = (7, 42)
BAD_LABEL_ROWS = {3: float("nan"), 5: 12.0, 9: 2.5}  # 12.0 is out of range: footers show it
RUNTIME_BAD_LABEL_ROWS = {3: float("nan"), 9: 2.5}  # only reading the rows shows these


def put_table(s3, key: str, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    s3.client().put_object(Bucket=BUCKET, Key=key, Body=buf.getvalue())


def good_rows(s3, n: int) -> tuple[list[bytes], list[int]]:
    """The first ``n`` rows of the prepared dataset's first file: real PNG digits."""
    body = (
        s3.client()
        .get_object(Bucket=BUCKET, Key="synthetic/train/part-00000.parquet")["Body"]
        .read()
    )
    t = pq.read_table(io.BytesIO(body)).slice(0, n)
    return t.column("image").to_pylist(), t.column("label").to_pylist()


def make_dataset(s3, faults_data, prefix: str, *, other_schema: bool, bad_labels: dict) -> Expected:
    """Copy the good training files to ``prefix`` and add the bad ones; returns what a clean
    epoch must deliver: the good rows only. The bad files sort after the good ones, so the
    pre-flight's real batch (the first file's first rows) is clean and they surface while
    training."""
    client = s3.client()
    kept: list[bytes] = []
    for key in s3.keys(BUCKET, "synthetic/train/"):
        client.copy_object(
            Bucket=BUCKET,
            Key=key.replace("synthetic/", f"{prefix}/", 1),
            CopySource={"Bucket": BUCKET, "Key": key},
        )
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        kept += pq.read_table(io.BytesIO(body)).column("image").to_pylist()

    images, labels = good_rows(s3, 100)
    broken = [
        b"\x89PNG\r\n\x1a\n not really" if i in UNDECODABLE_ROWS else im
        for i, im in enumerate(images)
    ]
    put_table(
        s3,
        f"{prefix}/train/zz-bad-images.parquet",
        pa.table({"image": pa.array(broken, pa.binary()), "label": pa.array(labels, pa.int64())}),
    )
    kept += [im for i, im in enumerate(images) if i not in UNDECODABLE_ROWS]

    images, labels = good_rows(s3, 50)
    float_labels = [bad_labels.get(i, float(v)) for i, v in enumerate(labels)]
    put_table(
        s3,
        f"{prefix}/train/zz-float-labels.parquet",
        pa.table(
            {"image": pa.array(images, pa.binary()), "label": pa.array(float_labels, pa.float64())}
        ),
    )
    kept += [im for i, im in enumerate(images) if i not in bad_labels]

    if other_schema:
        put_table(
            s3,
            f"{prefix}/train/other-schema.parquet",
            pa.table(
                {"img": pa.array(images, pa.binary()), "target": pa.array(labels, pa.int64())}
            ),
        )
    return Expected(
        rows=len(kept), digest=list(epoch_digest(row_digests({"image": kept}, ["image"])))
    )


def train_with_policy(ray_cluster, s3, tmp_path, prefix: str, policy: str, *args: str):
    """`train` on the dataset under ``prefix`` with data.bad_records=``policy``. The classes
    are named: a largest label of 12 would otherwise make 13 of them."""
    cfg = fault_config(
        tmp_path,
        s3.endpoint,
        f"bad-{policy}",
        data__bad_records=policy,
        data__train_uri=f"s3://{BUCKET}/{prefix}/train",
        data__num_classes=10,
    )
    return run_cli("train", "--address", ray_cluster.address, "--config", str(cfg), *args)


def test_skip_drops_and_counts_bad_records(ray_cluster, s3, faults_data, tmp_path):
    expected = make_dataset(
        s3, faults_data, "skip-bad", other_schema=True, bad_labels=BAD_LABEL_ROWS
    )
    r = train_with_policy(ray_cluster, s3, tmp_path, "skip-bad", "skip")
    assert r.returncode == 0, r.output[-5000:]
    summary = r.summary()
    bad = summary["bad_records"]
    other = f"s3://{BUCKET}/skip-bad/train/other-schema.parquet"
    assert list(bad["skipped_files"]) == [other]
    assert "column 'image'" in bad["skipped_files"][other]
    # every epoch skipped exactly the injected rows and delivered every good row once
    assert bad["skipped_rows"] == {"train": {"undecodable_image": 2, "bad_label": 3}}
    for h in summary["history"]:
        assert h["skipped_records"] == {"train": {"undecodable_image": 2, "bad_label": 3}}
        assert h["train_rows"] == expected.rows
        assert h["train_digest"] == expected.digest
    assert "bad-images.parquet" in bad["examples"]["undecodable_image"]
    assert "float-labels.parquet" in bad["examples"]["bad_label"]


def test_fail_names_the_file_and_row_and_does_not_retry(ray_cluster, s3, faults_data, tmp_path):
    make_dataset(s3, faults_data, "fail-bad", other_schema=False, bad_labels=RUNTIME_BAD_LABEL_ROWS)
    # --verbose: Train's own lines show whether it restarted the workers
    r = train_with_policy(ray_cluster, s3, tmp_path, "fail-bad", "fail", "--verbose")
    assert r.returncode == 2, r.output[-5000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, r.stderr[-5000:]
    error = errors[0]
    prefix = f"bad record in s3://{BUCKET}/fail-bad/train/"
    assert error.startswith("error: " + prefix), error
    # whichever bad record came first, the message names its file and exact row
    if "bad-images.parquet" in error:
        assert f"bad-images.parquet, row {UNDECODABLE_ROWS[0]}: cannot decode image" in error
    else:
        row = int(error.split("float-labels.parquet, row ")[1].split(":")[0])
        assert row in RUNTIME_BAD_LABEL_ROWS and "label" in error
    # a bad record fails the same way every time: Train did not restart the workers
    assert r.output.count("Attempting to start training worker group") == 1
    assert "data.bad_records=skip" in error


def test_labels_outside_the_classes_fail_before_training(ray_cluster, s3, faults_data, tmp_path):
    images, labels = good_rows(s3, 20)
    labels[4] = 10
    put_table(
        s3,
        "range-bad/train/part-00000.parquet",
        pa.table({"image": pa.array(images, pa.binary()), "label": pa.array(labels, pa.int64())}),
    )
    cfg = fault_config(
        tmp_path,
        s3.endpoint,
        "bad-range",
        data__train_uri=f"s3://{BUCKET}/range-bad/train",
        data__num_classes=10,
    )
    r = run_cli("train", "--address", ray_cluster.address, "--config", str(cfg), timeout=60)
    assert r.returncode == 2
    assert (
        f"error: labels 0..10 in s3://{BUCKET}/range-bad/train/part-00000.parquet rows 0-19 are "
        "outside the classes 0..9 (data.num_classes;"
    ) in r.stderr
