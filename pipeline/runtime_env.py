"""Shipping user code to the cluster: a Ray runtime env with a ``working_dir`` and ``pip``.

A local folder is zipped with one top-level folder (what Ray expects of a remote package),
named by its content's SHA-256 and uploaded once to the run's bucket; every Ray node then
downloads it through boto3 (Ray's own runtime-env agent), which honours the standard
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` and credential variables: the chart sets them
on every Ray container, so MinIO works as AWS does.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

from pipeline.errors import ConfigError, StorageError, first_line

# Ray's limit on a package it uploads to the cluster (the gRPC message size, 512 MiB in Ray
# 2.60; RAY_max_grpc_message_size changes it). A package on S3 has no such limit, but a folder
# that large is a dataset or a virtualenv by mistake: the same limit applies to both.
DEFAULT_MAX_BYTES = 512 << 20
EXCLUDED_DIRS = {"__pycache__", ".git", ".venv", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
WORKING_DIRS = "working-dirs"  # under storage.checkpoint_uri: <uri>/working-dirs/<sha>.zip
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same files give the same name


def max_package_bytes() -> int:
    try:
        from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE
    except ImportError:  # Ray moved it: its documented default
        return DEFAULT_MAX_BYTES
    return int(GCS_STORAGE_MAX_SIZE)


def _files(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
        out += [Path(dirpath) / f for f in sorted(filenames) if not f.endswith(".pyc")]
    return out


def check_working_dir(path: str | os.PathLike, flag: str = "--working-dir") -> Path:
    """The folder, resolved; one line naming ``flag`` when it is missing or too large."""
    root = Path(path).expanduser()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise ConfigError(f"{flag} {path}: {what}")
    limit = max_package_bytes()
    total = sum(f.stat().st_size for f in _files(root))
    if total >= limit:
        raise ConfigError(
            f"{flag} {path}: {total / 2**20:.0f} MiB of files, over Ray's package limit of "
            f"{limit / 2**20:.0f} MiB; keep data out of it (read it from S3) and leave out "
            "virtualenvs and build output"
        )
    return root.resolve()


def zip_working_dir(path: str | os.PathLike, flag: str = "--working-dir") -> tuple[bytes, str]:
    """(zip bytes, sha256 hex): every file under one top-level folder named after ``path``,
    in a fixed order with fixed timestamps, so the same content always has the same name."""
    root = check_working_dir(path, flag)
    top = root.name or "working_dir"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in _files(root):
            info = zipfile.ZipInfo(f"{top}/{f.relative_to(root).as_posix()}", _ZIP_TIME)
            info.external_attr = (f.stat().st_mode & 0o777) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, f.read_bytes())
    data = buf.getvalue()
    return data, hashlib.sha256(data).hexdigest()


def upload_working_dir(
    path: str | os.PathLike, checkpoint_uri: str, s3, flag: str = "--working-dir"
) -> str:
    """Zip ``path`` and put it at ``<checkpoint_uri>/working-dirs/<sha256>.zip`` (skipped when
    that object exists); returns its s3:// URI for ``runtime_env["working_dir"]``."""
    from pipeline.storage import check_bucket, resolve

    if not checkpoint_uri.startswith("s3://"):
        raise ConfigError(
            f"{flag}: the cluster downloads the code from S3, and storage.checkpoint_uri "
            f"({checkpoint_uri}) is not an s3:// URI; set it to one, or build the code into "
            "the image (examples/Dockerfile)"
        )
    data, digest = zip_working_dir(path, flag)
    loc = resolve(checkpoint_uri, s3, "storage.checkpoint_uri")
    check_bucket(loc, s3)
    key = loc.join(WORKING_DIRS, f"{digest}.zip")
    uri = loc.uri_of(key)
    try:
        import pyarrow.fs as pafs

        if loc.fs.get_file_info(key).type != pafs.FileType.File:
            with loc.fs.open_output_stream(key) as f:
                f.write(data)
    except OSError as e:
        raise StorageError(f"{flag}: cannot upload {path} to {uri}: {first_line(e)}") from None
    return uri


def read_pip(spec: str | None, flag: str = "--pip") -> list[str]:
    """A requirements file, or requirements separated by commas -> a list for Ray's ``pip``."""
    if not spec:
        return []
    p = Path(spec)
    if p.is_file():
        lines = [ln.split("#", 1)[0].strip() for ln in p.read_text().splitlines()]
        return [ln for ln in lines if ln]
    if os.sep in spec or spec.endswith(".txt"):
        raise ConfigError(f"{flag} {spec}: no such requirements file")
    return [r.strip() for r in spec.split(",") if r.strip()]


def build_runtime_env(working_dir: str | None = None, pip: list[str] | None = None) -> dict:
    """The job's runtime env: every task and actor of the job, Train's included, gets it."""
    env: dict = {}
    if working_dir:
        env["working_dir"] = working_dir
    if pip:
        env["pip"] = list(pip)
    return env
