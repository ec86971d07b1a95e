"""One writer per run: a lease on the run folder, ``<storage.checkpoint_uri>/<run_name>/``.

Before anything is written a run creates ``_lease.json`` there, only if it is absent: an S3
conditional write (``If-None-Match: *``; AWS, MinIO and moto honour it) or an exclusive
create on local disk. The object names the holder (Ray job id, host, pid, start time) and a
random token; a background thread rewrites it every ``ttl/3`` (on S3 only if it still is the
version this run wrote, ``If-Match``), and the run deletes it at the end, on error too. A
lease not renewed for ``storage.lease_ttl_s`` is stale: a new run takes it over with the same
compare-and-swap, so a crashed driver blocks its own retry for one TTL at most. Staleness is
judged by the wall clocks of the holder and the reader (hosts keep NTP time).

A server that ignores ``If-None-Match`` (found by a probe: a second conditional create of the
same key succeeds) gets the candidates scheme instead: every contender writes its own object
under ``_lease/`` and holds the run only if a listing right after shows no other live
candidate. Of two contenders at most one can see itself alone (S3 lists what was written
before), so at worst both refuse; neither overwrites the other.

Checkpoints and ``summary.json`` are written only while the lease is held: rank 0 reads the
lease before saving each checkpoint (``check_held``) and the driver before ``summary.json``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from pipeline.config import PipelineConfig, S3Section
from pipeline.console import WAIT_LINE_S
from pipeline.errors import RunLeaseError, StorageError, first_line
from pipeline.storage import Location, _boto_client, resolve

log = logging.getLogger(__name__)

LEASE_FILE = "_lease.json"
CANDIDATES_DIR = "_lease"  # the fallback scheme's folder


@dataclass(frozen=True)
class Holder:
    """What the lease object holds: who writes the run, and since when."""

    run: str
    token: str
    job_id: str | None
    host: str
    pid: int
    started_at: float  # wall clock, seconds
    renewed_at: float
    ttl_s: float

    def age_s(self, now: float | None = None) -> float:
        return (now or time.time()) - self.renewed_at

    def is_stale(self, now: float | None = None) -> bool:
        return self.age_s(now) > self.ttl_s

    def describe(self) -> str:
        """``job 02000000 on host-a (pid 4711) since 14:02:07 UTC``"""
        since = time.strftime("%H:%M:%S UTC", time.gmtime(self.started_at))
        return f"job {self.job_id or '?'} on {self.host} (pid {self.pid}) since {since}"

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Holder:
        return cls(**json.loads(data))


def new_holder(run: str, ttl_s: float, job_id: str | None) -> Holder:
    now = time.time()
    return Holder(
        run=run,
        token=uuid.uuid4().hex,
        job_id=job_id,
        host=socket.gethostname(),
        pid=os.getpid(),
        started_at=now,
        renewed_at=now,
        ttl_s=ttl_s,
    )


# --- where the lease lives: compare-and-swap on one object --------------------------------------


class LocalLeaseStore:
    """The lease file on a local (or shared) disk. Creation is an exclusive create; replacing
    and deleting compare the content under an advisory lock on a sidecar file, so that two
    takers of a stale lease cannot both win."""

    scheme = "exclusive create on local disk"

    def __init__(self, path: str):
        self.path = path
        self.uri = path

    def create(self, holder: Holder) -> str | None:
        """An exclusive create that readers never see half-written: the whole file is written
        under a name of its own, then hard-linked to the lease's name (fails if it exists)."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = f"{self.path}.{holder.token}.tmp"
        with open(tmp, "xb") as f:
            f.write(holder.to_json())
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            return None
        finally:
            os.remove(tmp)
        return holder.to_json().decode()

    def read(self) -> tuple[Holder, str] | None:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return _parse(data, self.uri), data.decode()

    @contextlib.contextmanager
    def _locked(self):
        with open(self.path + ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def replace(self, holder: Holder, version: str) -> str | None:
        with self._locked():
            current = self.read()
            if current is None or current[1] != version:
                return None
            tmp = f"{self.path}.{holder.token}.tmp"
            with open(tmp, "wb") as f:
                f.write(holder.to_json())
            os.replace(tmp, self.path)
        return holder.to_json().decode()

    def delete(self, version: str) -> None:
        with self._locked():
            current = self.read()
            if current is not None and current[1] == version:
                os.remove(self.path)
        # the lock file stays: removing it while another process waits on it would let a
        # third lock a new file of the same name


class S3LeaseStore:
    """The lease object on S3: ``If-None-Match: *`` creates it, ``If-Match: <ETag>`` renews,
    takes over and deletes it."""

    scheme = "S3 conditional writes (If-None-Match / If-Match)"

    def __init__(self, client, bucket: str, key: str):
        self.client, self.bucket, self.key = client, bucket, key
        self.uri = f"s3://{bucket}/{key}"

    def create(self, holder: Holder) -> str | None:
        try:
            r = self.client.put_object(
                Bucket=self.bucket, Key=self.key, Body=holder.to_json(), IfNoneMatch="*"
            )
        except Exception as e:
            if _precondition_failed(e):
                return None
            raise
        return r["ETag"]

    def read(self) -> tuple[Holder, str] | None:
        try:
            r = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except Exception as e:
            if _code(e) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        return _parse(r["Body"].read(), self.uri), r["ETag"]

    def replace(self, holder: Holder, version: str) -> str | None:
        try:
            r = self.client.put_object(
                Bucket=self.bucket, Key=self.key, Body=holder.to_json(), IfMatch=version
            )
        except Exception as e:
            if _precondition_failed(e) or _code(e) in ("NoSuchKey", "404"):
                return None
            raise
        return r["ETag"]

    def delete(self, version: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=version)
        except Exception as e:
            if _precondition_failed(e) or _code(e) in ("NoSuchKey", "404"):
                return
            if _code(e) not in ("NotImplemented", "InvalidArgument", "501"):
                raise
            # a server without conditional deletes: delete it if it is still ours
            current = self.read()
            if current is not None and current[1] == version:
                self.client.delete_object(Bucket=self.bucket, Key=self.key)


class S3CandidateStore:
    """The fallback for S3 servers that ignore conditional writes: each contender's own object
    under ``_lease/``; a contender holds the run when, right after writing, it lists no other
    live candidate. ``version`` is the contender's own key."""

    scheme = "candidate objects (this S3 server ignores If-None-Match)"

    def __init__(self, client, bucket: str, prefix: str):
        self.client, self.bucket, self.prefix = client, bucket, prefix
        self.uri = f"s3://{bucket}/{prefix}/"

    def _key(self, holder: Holder) -> str:
        return f"{self.prefix}/{holder.token}.json"

    def _candidates(self) -> list[tuple[Holder, str]]:
        out = []
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + "/"
        )
        for page in pages:
            for o in page.get("Contents", []):
                with contextlib.suppress(Exception):  # gone since the listing
                    body = self.client.get_object(Bucket=self.bucket, Key=o["Key"])["Body"].read()
                    out.append((_parse(body, self.uri), o["Key"]))
        return out

    def create(self, holder: Holder) -> str | None:
        key = self._key(holder)
        self.client.put_object(Bucket=self.bucket, Key=key, Body=holder.to_json())
        # any other candidate, stale ones too: a stale one is taken over through ``replace``
        # (which says so), not passed over in silence
        if any(h.token != holder.token for h, _ in self._candidates()):
            self.client.delete_object(Bucket=self.bucket, Key=key)
            return None
        return key

    def read(self) -> tuple[Holder, str] | None:
        live = [(h, k) for h, k in self._candidates() if not h.is_stale()]
        stale = [(h, k) for h, k in self._candidates() if h.is_stale()]
        found = sorted(live or stale, key=lambda c: c[0].started_at)
        return found[0] if found else None

    def still_held(self, token: str) -> Holder | None:
        """The holder, if ``token``'s candidate is still there (not taken over)."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{token}.json")
        except Exception:
            return None
        return _parse(body["Body"].read(), self.uri)

    def replace(self, holder: Holder, version: str) -> str | None:
        """Renewal (our own key: rewritten while it still exists) or a takeover of a stale
        candidate (deleted, then the taker enters as a new candidate)."""
        if version == self._key(holder):
            try:
                self.client.head_object(Bucket=self.bucket, Key=version)
            except Exception:
                return None  # taken over: someone deleted our stale candidate
            self.client.put_object(Bucket=self.bucket, Key=version, Body=holder.to_json())
            return version
        self.client.delete_object(Bucket=self.bucket, Key=version)
        return self.create(holder)

    def delete(self, version: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=version)


def _code(e: Exception) -> str:
    return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))


def _precondition_failed(e: Exception) -> bool:
    return _code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


def _parse(data: bytes, uri: str) -> Holder:
    try:
        return Holder.from_json(data)
    except (ValueError, TypeError) as e:
        raise StorageError(
            f"{uri} is not a ray-pipeline lease ({first_line(e)}): if no run holds it, delete it"
        ) from None


def honours_conditional_writes(client, bucket: str, prefix: str) -> bool:
    """Whether the server refuses a second ``If-None-Match: *`` create of one key (a server
    that ignores the header lets it overwrite)."""
    key = f"{prefix}/_lease-probe-{uuid.uuid4().hex}"
    try:
        client.put_object(Bucket=bucket, Key=key, Body=b"1", IfNoneMatch="*")
        try:
            client.put_object(Bucket=bucket, Key=key, Body=b"2", IfNoneMatch="*")
        except Exception as e:
            if _precondition_failed(e):
                return True
            raise
        return False
    finally:
        with contextlib.suppress(Exception):
            client.delete_object(Bucket=bucket, Key=key)


def open_store(
    checkpoint_uri: str,
    run_name: str,
    s3: S3Section,
    *,
    probe: bool = False,
    candidates: bool = False,
):
    """The lease store of a run folder. ``probe``: on S3, check that the server honours
    conditional writes and fall back to candidate objects where it does not (saying so);
    ``candidates``: that fallback without probing (the train workers' view of the run's)."""
    loc: Location = resolve(checkpoint_uri, s3, "storage.checkpoint_uri")
    if not loc.is_s3:
        return LocalLeaseStore(loc.join(run_name, LEASE_FILE))
    client = _boto_client(s3, attempts=3)
    bucket, _, root = loc.path.partition("/")
    prefix = "/".join(p for p in (root, run_name) if p)
    if candidates:
        return S3CandidateStore(client, bucket, f"{prefix}/{CANDIDATES_DIR}")
    if probe and not honours_conditional_writes(client, bucket, prefix):
        log.warning(
            "the S3 server at %s ignores conditional writes (If-None-Match): the run's lease "
            "uses one candidate object per run under %s/ instead",
            client.meta.endpoint_url,
            f"s3://{bucket}/{prefix}/{CANDIDATES_DIR}",
        )
        return S3CandidateStore(client, bucket, f"{prefix}/{CANDIDATES_DIR}")
    return S3LeaseStore(client, bucket, f"{prefix}/{LEASE_FILE}")


# --- the run's lease ----------------------------------------------------------------------------


class RunLease:
    """Held from ``acquire`` to ``release``; renewed by a daemon thread in between. ``lost`` is
    set when a renewal finds another run's lease (or none could be written for a whole TTL)."""

    def __init__(self, store, holder: Holder, say: Callable[[str], None] = log.info):
        self.store = store
        self.holder = holder
        self.say = say
        self.version: str | None = None
        self.lost: str | None = None  # why, once lost
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def ttl_s(self) -> float:
        return self.holder.ttl_s

    def acquire(self, wait: bool = False, poll_s: float | None = None) -> None:
        """Take the lease: create it, or take over a stale one; else refuse (RunLeaseError),
        or with ``wait`` poll until the holder releases it or goes stale."""
        poll_s = poll_s or min(2.0, self.ttl_s / 3)
        started = time.monotonic()
        said = 0.0
        while True:
            self.holder = replace(self.holder, renewed_at=time.time())
            version = self.store.create(self.holder)
            if version is not None:
                self.version = version
                break
            current = self.store.read()
            if current is None:
                continue  # released between the two calls
            other, other_version = current
            if other.is_stale():
                version = self.store.replace(self.holder, other_version)
                if version is not None:
                    self.version = version
                    self.say(
                        f"taking over run '{self.holder.run}': its lease ({self.store.uri}) held "
                        f"by {other.describe()} was not renewed for {other.age_s():.0f}s "
                        f"(storage.lease_ttl_s={other.ttl_s:g})"
                    )
                    break
                continue
            if not wait:
                raise RunLeaseError(
                    f"run '{self.holder.run}' (storage.run_name) is held by {other.describe()}, "
                    f"renewed {max(0.0, other.age_s()):.0f}s ago: pick another run name, or "
                    "wait for it with --wait-for-run"
                )
            waited = time.monotonic() - started
            if not said or waited - said >= WAIT_LINE_S:
                self.say(
                    f"waiting for run '{self.holder.run}': held by {other.describe()}; "
                    f"{waited:.0f} s so far"
                )
                said = waited or 1e-9
            time.sleep(poll_s)
        self._thread = threading.Thread(target=self._renew_loop, name="run-lease", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        last_ok = time.monotonic()
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.renew()
                last_ok = time.monotonic()
            except Exception as e:  # an outage: keep trying until the lease would be stale
                log.warning("could not renew the lease of run '%s': %s", self.holder.run, e)
                if time.monotonic() - last_ok > self.ttl_s:
                    self._lose(f"not renewed for {self.ttl_s:g}s (storage.lease_ttl_s): {e}")
            if self.lost:
                return

    def renew(self) -> None:
        """Rewrite the lease if it is still ours; else mark it lost."""
        if self.lost or self.version is None:
            return
        fresh = replace(self.holder, renewed_at=time.time())
        version = self.store.replace(fresh, self.version)
        if version is not None:
            self.holder, self.version = fresh, version
            return
        current = self.store.read()
        who = current[0].describe() if current else "nobody (it was deleted)"
        self._lose(f"now held by {who}")

    def _lose(self, why: str) -> None:
        self.lost = why
        log.warning("run '%s' lost its lease (%s): it writes nothing more", self.holder.run, why)

    def check(self) -> None:
        """Raise RunLeaseError unless this run still holds the lease."""
        if self.lost:
            raise RunLeaseError(f"run '{self.holder.run}' lost its lease: {self.lost}")
        check_held(self.store, self.holder.token, self.holder.run)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.version is not None and not self.lost:
            try:
                self.store.delete(self.version)
            except Exception as e:  # it goes stale after one TTL anyway
                log.warning("could not release the lease of run '%s': %s", self.holder.run, e)
        self.version = None

    def ticket(self) -> dict:
        """What rank 0 needs to check the lease before it writes a checkpoint."""
        return {
            "token": self.holder.token,
            "run": self.holder.run,
            "candidates": isinstance(self.store, S3CandidateStore),
        }

    def __enter__(self) -> RunLease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def check_held(store, token: str, run: str) -> None:
    """Raise RunLeaseError unless the lease in ``store`` carries ``token``."""
    if isinstance(store, S3CandidateStore):
        if store.still_held(token) is not None:
            return
        current = store.read()
    else:
        current = store.read()
        if current is not None and current[0].token == token:
            return
    who = current[0].describe() if current else "nobody"
    raise RunLeaseError(
        f"run '{run}' lost its lease ({store.uri}) to {who}: stopped before writing again"
    )


def take_run_lease(
    cfg: PipelineConfig,
    job_id: str | None,
    *,
    wait: bool = False,
    say: Callable[[str], None] = log.info,
) -> RunLease:
    """The run's lease, held (and renewed) until ``release``."""
    where = f"{cfg.storage.checkpoint_uri}/{cfg.storage.run_name}"
    try:
        store = open_store(cfg.storage.checkpoint_uri, cfg.storage.run_name, cfg.s3, probe=True)
        lease = RunLease(
            store, new_holder(cfg.storage.run_name, cfg.storage.lease_ttl_s, job_id), say
        )
        lease.acquire(wait=wait)
    except (RunLeaseError, StorageError):
        raise
    except Exception as e:  # denied, unreachable, read-only: the run cannot start
        raise StorageError(
            f"cannot take the run's lease in {where} (storage.checkpoint_uri): {first_line(e)}"
        ) from None
    return lease


def check_ticket(cfg: PipelineConfig, ticket: dict | None) -> None:
    """On rank 0, before each checkpoint: the run still holds its lease."""
    if not ticket:
        return
    store = open_store(
        cfg.storage.checkpoint_uri,
        cfg.storage.run_name,
        cfg.s3,
        candidates=ticket.get("candidates", False),
    )
    check_held(store, ticket["token"], ticket["run"])
