"""Bad input gets one clear line naming the field, file or column, a non-zero exit, and
loses nothing: the finished run's checkpoints stay as they were and still load.

Each case reruns `train` with the same run name and storage as the finished run."""

from __future__ import annotations

import contextlib
import io
import socket
import threading

import pytest
import torch

from tests.conftest import free_port, run_cli
from tests.integration.conftest import BUCKET, RUN

pytestmark = pytest.mark.cluster

CKPT_PREFIX = f"checkpoints/{RUN}/"


@pytest.fixture
def checkpoints_untouched(s3, first_run):
    """Asserts after the test that no checkpoint object changed and the latest still loads."""
    before = s3.keys(BUCKET, CKPT_PREFIX)
    assert any(k.endswith("state.pt") for k in before)
    yield
    after = s3.keys(BUCKET, CKPT_PREFIX)
    assert after == before
    latest = max(k for k in after if k.endswith("state.pt"))
    body = s3.client().get_object(Bucket=BUCKET, Key=latest)["Body"].read()
    assert "model" in torch.load(io.BytesIO(body), weights_only=True)


def train(ray_cluster, first_run, *overrides: str, timeout: float = 120):
    cfg, _ = first_run
    args = ["train", "--address", ray_cluster.address, "--config", str(cfg)]
    for o in overrides:
        args += ["--set", o]
    return run_cli(*args, timeout=timeout)


def assert_one_line_error(r, *fragments: str) -> None:
    assert r.returncode != 0, r.output[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    error_lines = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, r.stderr[-3000:]
    for fragment in fragments:
        assert fragment in error_lines[0], error_lines[0]


@contextlib.contextmanager
def silent_endpoint():
    """A TCP server that accepts connections and never answers: an S3 endpoint that hangs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    conns, stop = [], threading.Event()

    def accept():
        sock.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conns.append(sock.accept()[0])

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        t.join()
        for c in conns:
            c.close()
        sock.close()


def test_refused_endpoint_fails_at_once(ray_cluster, first_run, checkpoints_untouched):
    endpoint = f"http://127.0.0.1:{free_port()}"
    r = train(ray_cluster, first_run, f"s3.endpoint={endpoint}", timeout=30)
    assert_one_line_error(r, "cannot reach S3 endpoint", endpoint, "s3.endpoint")


def test_endpoint_that_hangs_fails_within_30s(ray_cluster, first_run, checkpoints_untouched):
    with silent_endpoint() as endpoint:
        r = train(ray_cluster, first_run, f"s3.endpoint={endpoint}", timeout=30)
    assert_one_line_error(r, "cannot reach S3 endpoint", endpoint)


def test_missing_bucket(ray_cluster, first_run, checkpoints_untouched):
    r = train(ray_cluster, first_run, "data.train_uri=s3://no-such-bucket/digits/train")
    assert_one_line_error(r, "bucket 'no-such-bucket' does not exist", "data.train_uri")


def test_missing_prefix(ray_cluster, first_run, checkpoints_untouched):
    r = train(ray_cluster, first_run, f"data.validation_uri=s3://{BUCKET}/nothing-here/validation")
    assert_one_line_error(
        r, "data.validation_uri", f"s3://{BUCKET}/nothing-here/validation", "does not exist"
    )


@pytest.fixture
def dataset_with_corrupt_file(s3, dataset):
    """A copy of the train split plus one file that is not Parquet."""
    client = s3.client()
    for key in s3.keys(BUCKET, "digits/train/"):
        client.copy_object(
            Bucket=BUCKET,
            Key=key.replace("digits/", "corrupt/", 1),
            CopySource={"Bucket": BUCKET, "Key": key},
        )
    client.put_object(
        Bucket=BUCKET, Key="corrupt/train/part-00099.parquet", Body=b"PAR1 not really"
    )
    return f"s3://{BUCKET}/corrupt/train"


def test_corrupt_parquet_file_is_named(
    ray_cluster, first_run, dataset_with_corrupt_file, checkpoints_untouched
):
    r = train(ray_cluster, first_run, f"data.train_uri={dataset_with_corrupt_file}")
    assert_one_line_error(
        r, f"{dataset_with_corrupt_file}/part-00099.parquet", "not a readable Parquet file"
    )


@pytest.mark.parametrize("field", ["image_column", "label_column"])
def test_missing_column_is_named(ray_cluster, first_run, field, checkpoints_untouched):
    r = train(ray_cluster, first_run, f"data.{field}=pixels")
    assert_one_line_error(r, "column 'pixels'", f"data.{field}", f"s3://{BUCKET}/digits/")


def test_labels_outside_the_model_classes(ray_cluster, first_run, checkpoints_untouched):
    r = train(ray_cluster, first_run, "data.num_classes=5")
    assert_one_line_error(
        r, "outside the classes 0..4", "data.num_classes", f"s3://{BUCKET}/digits/", "rows "
    )


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("train.learning_rate=-1", ["train.learning_rate", "greater than 0"]),
        ("data.batch_size=zero", ["data.batch_size", "integer"]),
        ("train.optimizer=adagrad", ["train.optimizer", "'adam'"]),
        ("data.image_shape=[8,8,2]", ["data.image_shape", "channels 1 or 3"]),
        ("s3.secret_access_key=abc", ["s3.secret_access_key", "never read from the config"]),
        ("data.colour=blue", ["data.colour", "unknown field"]),
    ],
)
def test_invalid_config_values_name_the_field(
    ray_cluster, first_run, override, fragments, checkpoints_untouched
):
    r = train(ray_cluster, first_run, override, timeout=60)
    assert_one_line_error(r, "invalid config", *fragments)


def test_no_node_in_the_selected_group(ray_cluster, first_run, checkpoints_untouched):
    r = train(ray_cluster, first_run, "train.placement.selector={ray.io/node-group: gpu}")
    assert_one_line_error(
        r,
        "no alive Ray node matches train.placement.selector",
        "'ray.io/node-group': 'gpu'",
        "ray.io/node-group=train",  # what the cluster does have
    )


def test_more_workers_than_the_train_group_holds(ray_cluster, first_run, checkpoints_untouched):
    # the train node has 1 CPU: two workers of 1 CPU would wait forever
    r = train(ray_cluster, first_run, "train.num_workers=2")
    assert_one_line_error(r, "2 train workers (train.num_workers) need CPU=1", "have CPU=1 in all")


# --- user code: one line naming the field and where it failed, nothing written -------------

USER_CODE = """
import torch


def model(num_classes, width=8):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, num_classes))


def preprocess(batch):
    return {"image": batch["image"], "label": batch["label"]}
"""


@pytest.fixture
def driver_only_code(tmp_path):
    """A module importable by the driver (its PYTHONPATH) but shipped to no Ray node."""
    (tmp_path / "onlyhere.py").write_text(USER_CODE)
    return {"PYTHONPATH": str(tmp_path)}


def test_an_import_string_that_does_not_resolve_on_the_driver(
    ray_cluster, first_run, checkpoints_untouched
):
    r = train(ray_cluster, first_run, "train.model=mypkg.models:build")
    assert_one_line_error(
        r, "train.model: cannot import 'mypkg.models' on the driver: No module named 'mypkg'"
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "data.preprocess=onlyhere:preprocess",
            "data.preprocess: cannot import 'onlyhere' on the data group: "
            "No module named 'onlyhere'",
        ),
        (
            "train.model=onlyhere:model",
            "train.model: cannot import 'onlyhere' on the train group: No module named 'onlyhere'",
        ),
    ],
)
def test_code_the_job_does_not_ship_is_named_with_the_node_group(
    ray_cluster, first_run, driver_only_code, override, message, checkpoints_untouched
):
    cfg, _ = first_run
    r = run_cli(
        "train", "--address", ray_cluster.address, "--config", str(cfg), "--set", override,
        env=driver_only_code, timeout=120,
    )  # fmt: skip
    assert_one_line_error(r, message)


def test_a_model_whose_forward_fails_on_the_first_batch(
    ray_cluster, first_run, tmp_path, checkpoints_untouched
):
    code = tmp_path / "code"
    code.mkdir()
    (code / "usermodels.py").write_text(USER_CODE)
    cfg, _ = first_run
    r = run_cli(
        "train", "--address", ray_cluster.address, "--config", str(cfg),
        "--set", "train.model=usermodels:model", "--working-dir", str(code), timeout=120,
    )  # fmt: skip
    assert_one_line_error(
        r,
        "train.model (usermodels:model): forward failed on the first batch",
        "input 'image' float32 [8, 1, 8, 8]",
        "mat1 and mat2 shapes cannot be multiplied",
    )


def test_a_working_dir_that_does_not_exist_or_is_too_large(
    ray_cluster, first_run, tmp_path, checkpoints_untouched
):
    cfg, _ = first_run
    base = ["train", "--address", ray_cluster.address, "--config", str(cfg)]
    r = run_cli(*base, "--working-dir", str(tmp_path / "nope"), timeout=60)
    assert_one_line_error(r, f"--working-dir {tmp_path / 'nope'}: does not exist")
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "weights.bin").write_bytes(b"\0" * 4096)
    r = run_cli(
        *base, "--working-dir", str(tmp_path / "big"), timeout=60,
        env={"RAY_max_grpc_message_size": "2048"},  # Ray's package limit, made small
    )  # fmt: skip
    assert_one_line_error(r, "over Ray's package limit")
