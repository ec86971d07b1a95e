"""`ray-pipeline submit --working-dir DIR [--pip REQS]` (issue #11, point 3).

The upload is real: moto's S3 server (tests/conftest.py `s3`) stands in for the release's
bucket. The Kubernetes API is tests/k8s/fake_api.py (no API server or operator here), serving
the chart's own RayCluster and ConfigMap, whose config points at that S3.
"""

from __future__ import annotations

import io
import zipfile

import pytest
import yaml

from pipeline.cli import main
from tests.k8s.fake_api import FakeApiServer, FakeCluster

BUCKET = "rp-code"


@pytest.fixture
def code_dir(tmp_path):
    root = tmp_path / "myproject"
    (root / "mypkg").mkdir(parents=True)
    (root / "mypkg" / "__init__.py").write_text("")
    (root / "mypkg" / "models.py").write_text("def build():\n    return 1\n")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "x.pyc").write_bytes(b"\0")
    return root


@pytest.fixture
def api(render, s3, tmp_path, monkeypatch):
    """The chart's release with its config's S3 at moto, behind the stand-in API server."""
    s3.make_bucket(BUCKET)
    rendered = render({"s3": {"endpoint": s3.endpoint, "bucket": BUCKET}})
    configmap = rendered.one("ConfigMap", "rp-ray-pipeline-config")
    fake = FakeCluster(rayclusters=[rendered.raycluster], configmaps=[configmap])
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with FakeApiServer(fake, tmp_path) as kubeconfig:
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        yield fake


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def created(fake: FakeCluster) -> dict:
    (job,) = fake.rayjobs.values()
    return job


def fetch(s3, uri: str) -> bytes:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def test_submit_ships_the_working_dir_and_pip_in_the_runtime_env(
    api, s3, code_dir, capsys, validate
):
    code, _, err = cli(
        capsys, "submit", "--no-wait", "--working-dir", str(code_dir), "--pip", "rich,tqdm==4.67.1"
    )
    assert code == 0, err
    job = created(api)
    assert validate(job) == []
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert env["pip"] == ["rich", "tqdm==4.67.1"]
    # In the bucket of the job's storage.checkpoint_uri (the chart's s3://<bucket>/runs).
    assert env["working_dir"].startswith(f"s3://{BUCKET}/runs/working-dirs/")
    with zipfile.ZipFile(io.BytesIO(fetch(s3, env["working_dir"]))) as zf:
        names = sorted(zf.namelist())
    # One top-level folder (what Ray expects of a remote package), no bytecode.
    assert names == ["myproject/mypkg/__init__.py", "myproject/mypkg/models.py"]
    assert f"uploaded {code_dir} to {env['working_dir']}" in err


def test_the_same_folder_is_the_same_package(api, s3, code_dir, capsys):
    uris = []
    for _ in range(2):
        assert cli(capsys, "submit", "--no-wait", "--working-dir", str(code_dir))[0] == 0
        job = api.rayjobs.pop(next(iter(api.rayjobs)))
        uris.append(yaml.safe_load(job["spec"]["runtimeEnvYAML"])["working_dir"])
    assert uris[0] == uris[1]
    (code_dir / "mypkg" / "models.py").write_text("def build():\n    return 2\n")
    assert cli(capsys, "submit", "--no-wait", "--working-dir", str(code_dir))[0] == 0
    assert yaml.safe_load(created(api)["spec"]["runtimeEnvYAML"])["working_dir"] != uris[0]


def test_a_local_endpoint_variable_reaches_the_bucket_from_here(
    render, s3, code_dir, tmp_path, monkeypatch, capsys
):
    """The config names the endpoint the cluster reaches (here: nothing answers); from the
    user's machine AWS_ENDPOINT_URL_S3 names one that does, for the upload only."""
    s3.make_bucket(BUCKET)
    rendered = render({"s3": {"endpoint": "http://127.0.0.1:9", "bucket": BUCKET}})
    configmap = rendered.one("ConfigMap", "rp-ray-pipeline-config")
    fake = FakeCluster(rayclusters=[rendered.raycluster], configmaps=[configmap])
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3.endpoint)
    with FakeApiServer(fake, tmp_path) as kubeconfig:
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        code, _, err = cli(capsys, "submit", "--no-wait", "--working-dir", str(code_dir))
    assert code == 0, err
    uri = yaml.safe_load(created(fake)["spec"]["runtimeEnvYAML"])["working_dir"]
    assert fetch(s3, uri)[:2] == b"PK"
    assert "--set" not in created(fake)["spec"]["entrypoint"]  # the job's config is unchanged


def test_dry_run_names_the_package_and_uploads_nothing(s3, code_dir, capsys):
    code, out, err = cli(
        capsys, "submit", "--dry-run", "--release", "rp", "--working-dir", str(code_dir),
        "--set", f"storage.checkpoint_uri=s3://{BUCKET}/dry",
    )  # fmt: skip
    assert code == 0, err
    env = yaml.safe_load(yaml.safe_load(out)["spec"]["runtimeEnvYAML"])
    assert env["working_dir"].startswith(f"s3://{BUCKET}/dry/working-dirs/")
    assert s3.keys(BUCKET, "dry/") == {}


def test_a_missing_working_dir_is_one_line_and_creates_nothing(api, capsys, tmp_path):
    code, out, err = cli(capsys, "submit", "--working-dir", str(tmp_path / "nope"))
    assert code == 2 and out == ""
    assert err == f"error: --working-dir {tmp_path / 'nope'}: does not exist\n"
    assert api.rayjobs == {} and api.requests == []  # checked before the cluster is asked


def test_an_over_limit_working_dir_is_one_line(api, s3, capsys, code_dir, monkeypatch):
    from pipeline import runtime_env

    # Ray's real limit is 512 MiB; a folder that size has no place in a test.
    monkeypatch.setattr(runtime_env, "max_package_bytes", lambda: 16)
    before = s3.keys(BUCKET)  # moto's S3 lives for the session
    code, _, err = cli(capsys, "submit", "--working-dir", str(code_dir))
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: --working-dir {code_dir}: ") and "package limit" in err
    assert api.rayjobs == {} and s3.keys(BUCKET) == before


def test_a_local_checkpoint_uri_cannot_ship_code(api, code_dir, capsys):
    code, _, err = cli(
        capsys, "submit", "--working-dir", str(code_dir),
        "--set", "storage.checkpoint_uri=/tmp/checkpoints",
    )  # fmt: skip
    assert code == 2 and err.count("\n") == 1
    assert "--working-dir" in err and "s3://" in err
    assert api.rayjobs == {}
