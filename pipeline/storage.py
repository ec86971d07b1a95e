"""Where data and checkpoints live: local paths or s3:// URIs on AWS S3 or MinIO.

pyarrow's S3 filesystem does the data path (Ray Data and Ray Train take it directly);
boto3 does the pre-flight checks, because its errors say exactly what is wrong
(unreachable endpoint, missing bucket, denied access) within a bounded time.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from pipeline.config import S3Section
from pipeline.errors import StorageError, first_line


@dataclass(frozen=True)
class S3Endpoint:
    """Resolved endpoint: ``override`` is host:port for pyarrow, ``url`` is for boto3."""

    override: str | None
    scheme: str
    region: str

    @property
    def url(self) -> str | None:
        return f"{self.scheme}://{self.override}" if self.override else None

    def describe(self) -> str:
        return self.url or f"AWS S3 ({self.region})"


def resolve_endpoint(s3: S3Section) -> S3Endpoint:
    """Endpoint from config, else the standard AWS_ENDPOINT_URL(_S3) variables."""
    raw = s3.endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    scheme = s3.scheme
    override = None
    if raw:
        if "://" in raw:
            parsed = urlparse(raw)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise StorageError(
                    f"s3.endpoint {raw!r}: expected http(s)://host:port or host:port"
                )
            override = parsed.netloc
            scheme = scheme or parsed.scheme
        else:
            override = raw
    return S3Endpoint(override=override, scheme=scheme or "https", region=s3.region)


def s3_filesystem(s3: S3Section, *, allow_bucket_creation: bool = False) -> pafs.S3FileSystem:
    ep = resolve_endpoint(s3)
    kwargs: dict[str, Any] = dict(
        region=ep.region,
        scheme=ep.scheme,
        connect_timeout=s3.connect_timeout_s,
        request_timeout=s3.request_timeout_s,
        # Backoff doubles from 25 ms: 10 attempts ride out ~25 s of outage per request, 6 ~1.5 s.
        # (The "standard" strategy also spends a shared retry quota that concurrent readers
        # drain within seconds of an outage; this one has none.)
        retry_strategy=pafs.AwsDefaultS3RetryStrategy(max_attempts=s3.retry_max_attempts),
        allow_bucket_creation=allow_bucket_creation,
    )
    if ep.override:
        kwargs["endpoint_override"] = ep.override
    return pafs.S3FileSystem(**kwargs)


@dataclass(frozen=True)
class Location:
    """A URI split into a pyarrow filesystem and a path on it (no scheme)."""

    uri: str
    fs: pafs.FileSystem
    path: str
    field: str  # the config field it came from, for error messages

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    @property
    def bucket(self) -> str:
        return self.path.split("/", 1)[0]

    def join(self, *parts: str) -> str:
        return "/".join([self.path.rstrip("/"), *parts])

    def uri_of(self, path: str) -> str:
        return f"s3://{path}" if self.is_s3 else path


def resolve(uri: str, s3: S3Section, field: str, *, create_bucket: bool = False) -> Location:
    if uri.startswith("s3://"):
        path = uri[len("s3://") :].strip("/")
        fs = s3_filesystem(s3, allow_bucket_creation=create_bucket)
        return Location(uri=uri.rstrip("/"), fs=fs, path=path, field=field)
    local = uri[len("file://") :] if uri.startswith("file://") else uri
    path = str(Path(local).expanduser().resolve())
    return Location(uri=path, fs=pafs.LocalFileSystem(), path=path, field=field)


PREFLIGHT_READ_TIMEOUT_S = 10  # x 2 attempts + connect: a hung endpoint fails within ~25 s


def _boto_client(s3: S3Section, attempts: int = 2):
    import boto3
    from botocore.config import Config

    ep = resolve_endpoint(s3)
    cfg = Config(
        connect_timeout=s3.connect_timeout_s,
        read_timeout=min(s3.request_timeout_s, PREFLIGHT_READ_TIMEOUT_S),
        retries={"total_max_attempts": attempts, "mode": "standard"},
        s3={"addressing_style": "path"} if ep.override else {},
    )
    return boto3.client("s3", endpoint_url=ep.url, region_name=ep.region, config=cfg)


def check_bucket(loc: Location, s3: S3Section, *, create: bool = False) -> None:
    """Fail fast, with one clear line, if the bucket of ``loc`` cannot be used."""
    if not loc.is_s3:
        return
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    ep = resolve_endpoint(s3)
    client = _boto_client(s3)
    try:
        client.head_bucket(Bucket=loc.bucket)
    except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError) as e:
        raise StorageError(
            f"cannot reach S3 endpoint {ep.describe()} (s3.endpoint) for {loc.field}={loc.uri}: "
            f"{e.__class__.__name__}"
        ) from None
    except NoCredentialsError:
        raise StorageError(
            f"no S3 credentials for {loc.field}={loc.uri}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY or AWS_SHARED_CREDENTIALS_FILE"
        ) from None
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            if create:
                _create_bucket(client, loc, ep)
                return
            raise StorageError(
                f"bucket '{loc.bucket}' does not exist at {ep.describe()} ({loc.field}={loc.uri})"
            ) from None
        if code in ("403", "AccessDenied", "Forbidden"):
            raise StorageError(
                f"access denied to bucket '{loc.bucket}' at {ep.describe()} ({loc.field}): "
                "check the credentials in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
            ) from None
        raise StorageError(f"S3 error for {loc.field}={loc.uri}: {code} {e}") from None
    except BotoCoreError as e:
        raise StorageError(
            f"S3 endpoint {ep.describe()} (s3.endpoint) failed for {loc.field}: {e}"
        ) from None


def _create_bucket(client, loc: Location, ep) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    kwargs = {}
    if ep.region and ep.region != "us-east-1":  # AWS refuses the constraint in us-east-1 only
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": ep.region}
    try:
        client.create_bucket(Bucket=loc.bucket, **kwargs)
    except (BotoCoreError, ClientError) as e:
        raise StorageError(
            f"cannot create bucket '{loc.bucket}' at {ep.describe()} ({loc.field}={loc.uri}): "
            f"{first_line(e)}"
        ) from None


def list_files(
    loc: Location,
    suffix: str = ".parquet",
    *,
    missing_ok: bool = False,
    sizes: dict[str, int] | None = None,
) -> list[str]:
    """Every file under ``loc`` ending in ``suffix``, sorted; errors name the config field.
    A ``loc`` that does not exist is an error, or no files with ``missing_ok``. ``sizes``, if
    given, gets each file's size from the listing (a reader that knows it skips a request)."""
    try:
        info = loc.fs.get_file_info(loc.path)
        if info.type == pafs.FileType.File:
            infos = [info]
        elif info.type == pafs.FileType.NotFound:
            if missing_ok:
                return []
            raise StorageError(f"{loc.field}: {loc.uri} does not exist")
        else:
            infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=True))
    except OSError as e:
        raise StorageError(f"{loc.field}: cannot list {loc.uri}: {first_line(e)}") from None
    files = [
        i
        for i in infos
        if i.type == pafs.FileType.File
        and i.path.endswith(suffix)
        and (i.path == loc.path or not os.path.basename(i.path).startswith(("_", ".")))
    ]
    if sizes is not None:
        sizes.update((i.path, i.size) for i in files)
    return sorted(i.path for i in files)


def write_json(loc: Location, relpath: str, obj: Any) -> str:
    path = loc.join(relpath)
    data = json.dumps(obj, indent=2, sort_keys=True).encode()
    try:
        if not loc.is_s3:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with loc.fs.open_output_stream(path) as f:
            f.write(data)
    except OSError as e:
        raise StorageError(f"cannot write {loc.uri_of(path)}: {first_line(e)}") from None
    return loc.uri_of(path)


S3_CONNECTION_ERRORS = (
    "AWS Error NETWORK_CONNECTION",
    "curlCode: 7",
    "curlCode: 28",
    "Could not connect",
)


def is_s3_connection_error(text: str) -> bool:
    """Whether an error (as text, through Ray's wrapping) says the S3 endpoint was unreachable."""
    return any(marker in text for marker in S3_CONNECTION_ERRORS)
