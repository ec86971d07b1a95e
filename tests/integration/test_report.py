"""`ray-pipeline report` on runs in S3 (moto's server, a real HTTP endpoint): a finished run, one
still training, the PNG, and the one-line errors for a missing bucket or run."""

from __future__ import annotations

import json

import pytest

from pipeline import cli
from tests.unit.test_report import PNG_SIGNATURE, epoch, table


@pytest.fixture
def bucket(s3):
    return s3.make_bucket("reports")


def put(s3, bucket: str, key: str, obj) -> None:
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    s3.client().put_object(Bucket=bucket, Key=key, Body=body)


def report(s3, capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["report", "--set", f"s3.endpoint={s3.endpoint}", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_finished_run_on_s3(s3, bucket, capsys, tmp_path):
    history = [epoch(n) for n in (1, 2)]
    put(s3, bucket, "runs/s3-done/epoch-0002/history.json", history)
    put(s3, bucket, "runs/s3-done/epoch-0002/state.pt", b"\0" * 64)
    summary = {"run_name": "s3-done", "task": "classification", "history": history,
               "metrics": {"val_accuracy": 0.9}, "rows_per_s": 900.0}  # fmt: skip
    put(s3, bucket, "runs/s3-done/summary.json", summary)
    png = tmp_path / "s3.png"
    code, out, err = report(s3, capsys, f"s3://{bucket}/runs/s3-done", "--out", str(png))
    assert code == 0, err
    assert out.splitlines()[0] == (
        f"run s3-done (classification): finished, 2 epochs (from s3://{bucket}/runs/s3-done/"
        "summary.json)"
    )
    assert [r[:2] for r in table(out)[1:]] == [["1", "1.6000"], ["2", "0.8000"]]
    assert "run: val_accuracy=0.9000, 900 rows/s" in out
    assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 20_000


def test_a_run_still_training_on_s3(s3, bucket, capsys):
    history = [epoch(n) for n in (1, 2, 3)]
    put(s3, bucket, "runs/s3-live/epoch-0002/history.json", history[:2])
    put(s3, bucket, "runs/s3-live/epoch-0003/history.json", history)
    put(s3, bucket, "runs/s3-live/epoch-0004/state.pt", b"\0" * 64)  # upload under way
    code, out, err = report(s3, capsys, f"s3://{bucket}/runs/s3-live/")
    assert code == 0, err
    assert out.splitlines()[0] == (
        f"run s3-live: in progress, 3 epochs so far (from s3://{bucket}/runs/s3-live/"
        "epoch-0003/history.json)"
    )
    assert len(table(out)) == 4


def test_a_missing_run_or_bucket_on_s3_is_one_line(s3, bucket, capsys):
    code, _, err = report(s3, capsys, f"s3://{bucket}/runs/never")
    assert code == 2
    assert err.strip() == f"error: RUN s3://{bucket}/runs/never: no such folder"
    code, _, err = report(s3, capsys, "s3://no-such-bucket/runs/x")
    assert code == 2
    assert err.startswith("error: bucket 'no-such-bucket' does not exist at " + s3.endpoint)
    assert "RUN=s3://no-such-bucket/runs/x" in err and len(err.strip().splitlines()) == 1


@pytest.mark.cluster
def test_the_report_of_a_real_training_run(first_run, s3, capsys):
    """The run the integration suite trains (3 epochs to S3), found from its config alone."""
    cfg, _ = first_run
    code, out, err = report(s3, capsys, "--config", str(cfg))
    assert code == 0, err
    assert out.startswith("run digits-it (classification): finished, 3 epochs")
    rows = table(out)[1:]
    assert [r[0] for r in rows] == ["1", "2", "3"]
    for row in rows:  # every figure the built-in loop records is there, none missing
        assert "-" not in row, out
        assert 0 < float(row[3]) <= 1  # val_accuracy
