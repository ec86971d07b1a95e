"""What the trackers get from a run: the config as flat parameters, an epoch's record as
metrics, and (Weights & Biases, offline: WANDB_MODE=offline, no server) the files wandb writes
for one pipeline run, read back record by record."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

from pipeline.config import validate_config
from pipeline.tracking import epoch_metrics, flatten
from tests.conftest import ROOT

RECORD = {
    "epoch": 2,
    "train_loss": 0.25,
    "val_accuracy": 0.9,
    "rows_per_s": 1500.0,
    "data_wait_fraction": 0.1,
    "train_digest": [12, 34],
    "skipped_records": {"train": 2, "validation": 1},
}


def test_the_config_becomes_flat_parameters():
    cfg = validate_config({"train": {"epochs": 3, "model_args": {"widths": [8, 16]}}})
    params = flatten(cfg.model_dump(mode="json"))
    assert params["train.epochs"] == "3"
    assert params["train.model_args.widths"] == "[8, 16]"
    assert params["storage.run_name"] == "digits-cnn"
    assert all(isinstance(v, str) for v in params.values())


def test_an_epoch_record_becomes_metrics():
    assert epoch_metrics(RECORD) == {
        "train_loss": 0.25,
        "val_accuracy": 0.9,
        "rows_per_s": 1500.0,
        "data_wait_fraction": 0.1,
        "skipped_records": 3.0,
        "skipped_records.train": 2.0,
        "skipped_records.validation": 1.0,
    }


# --- Weights & Biases, offline -----------------------------------------------------------------

BLOCK = 32768  # wandb's run file: a LevelDB-style log of protobuf records in 32 KiB blocks
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path):
    """The records of an offline run's ``run-<id>.wandb`` file, as wandb's protobufs."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, parts = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:
            pos += left  # a block's tail too short for a header is padding
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        if kind == 0:
            break
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


LOG_TWO_EPOCHS = """
import sys
from pipeline.config import validate_config
from pipeline.tracking import EpochLog, open_tracking
cfg = validate_config({"tracking": {"wandb": {"project": "digits"}},
                       "train": {"epochs": 2}, "storage": {"run_name": "digits-wandb"}})
log = EpochLog(open_tracking(cfg, sys.argv[1], "01000000"), cfg)
for epoch in (1, 2):
    log.log({"epoch": epoch, "train_loss": 1.0 / epoch, "val_accuracy": 0.4 * epoch,
             "rows_per_s": 100.0, "skipped_records": {"train": 0}})
"""


def test_wandb_offline_run_holds_the_config_and_every_epoch(tmp_path):
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path),
        "WANDB_SILENT": "true",
    }
    for _ in range(2):  # a resumed pipeline run logs to the same W&B run id
        p = subprocess.run(
            [sys.executable, "-c", LOG_TWO_EPOCHS, str(tmp_path / "runs" / "digits-wandb")],
            capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
        )  # fmt: skip
        assert p.returncode == 0, p.stderr[-3000:]
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    assert len({r.name.rsplit("-", 1)[-1] for r in runs}) == 1  # one run id
    records = list(wandb_records(next(runs[0].glob("run-*.wandb"))))
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.display_name == "digits-wandb" and run.project == "digits"
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["train"]["epochs"] == 2 and config["storage"]["run_name"] == "digits-wandb"
    history = [
        {
            item.key or "/".join(item.nested_key): json.loads(item.value_json)
            for item in r.history.item
        }
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    assert [h["_step"] for h in history] == [1, 2]
    assert [h["val_accuracy"] for h in history] == [0.4, 0.8]
    assert [h["train_loss"] for h in history] == [1.0, 0.5]
    assert all(h["skipped_records"] == 0 for h in history)
