"""One writer per run: the lease on a run folder, on local disk and on a real S3 endpoint
(moto's server), including one that ignores conditional writes."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from pipeline.config import load_config
from pipeline.errors import RunLeaseError
from pipeline.lease import (
    LEASE_FILE,
    RunLease,
    S3CandidateStore,
    S3LeaseStore,
    check_held,
    honours_conditional_writes,
    new_holder,
    open_store,
    take_run_lease,
)

BUCKET = "ray-pipeline-lease"


@pytest.fixture(params=["local", "s3"])
def store_uri(request, tmp_path):
    """A checkpoint URI on local disk, then on moto's S3 server."""
    if request.param == "local":
        return str(tmp_path / "runs"), None
    s3 = request.getfixturevalue("s3")
    s3.make_bucket(BUCKET)
    return f"s3://{BUCKET}/runs-{tmp_path.name}", s3.endpoint


def _cfg(uri_endpoint, run="run-a", ttl=60):
    uri, endpoint = uri_endpoint
    overrides = [f"storage.checkpoint_uri={uri}", f"storage.run_name={run}"]
    overrides.append(f"storage.lease_ttl_s={ttl}")
    if endpoint:
        overrides.append(f"s3.endpoint={endpoint}")
    return load_config(None, overrides)


def test_a_second_run_of_the_same_name_refuses_naming_the_holder(store_uri):
    cfg = _cfg(store_uri)
    first = take_run_lease(cfg, job_id="01000000")
    try:
        with pytest.raises(RunLeaseError) as e:
            take_run_lease(cfg, job_id="02000000")
        msg = str(e.value)
        assert "run 'run-a' (storage.run_name) is held by job 01000000" in msg
        assert "since" in msg and "--wait-for-run" in msg
        # another name is another folder: not blocked
        take_run_lease(_cfg(store_uri, run="run-b"), job_id="03000000").release()
    finally:
        first.release()
    # released: the name is free again, and nothing of the lease is left
    second = take_run_lease(cfg, job_id="02000000")
    assert second.holder.job_id == "02000000"
    second.release()
    store = open_store(cfg.storage.checkpoint_uri, "run-a", cfg.s3)
    assert store.read() is None


def contend(n: int, take) -> tuple[list, list[str]]:
    """``take(i)`` in ``n`` threads released at once: (the leases won, the refusals)."""
    won, refused = [], []
    barrier = threading.Barrier(n)

    def one(i):
        barrier.wait()
        try:
            won.append(take(i))
        except RunLeaseError as e:
            refused.append(str(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won, refused


def test_runs_started_together_one_wins(store_uri):
    cfg = _cfg(store_uri)
    won, refused = contend(6, lambda i: take_run_lease(cfg, job_id=f"0{i}000000"))
    assert len(won) == 1 and len(refused) == 5
    assert all(f"held by job {won[0].holder.job_id}" in r for r in refused)
    won[0].release()


def test_a_stale_lease_is_taken_over_and_its_old_holder_learns_it(store_uri):
    cfg = _cfg(store_uri, ttl=1)
    said = []
    old = RunLease(
        open_store(cfg.storage.checkpoint_uri, "run-a", cfg.s3),
        new_holder("run-a", 1.0, "01000000"),
    )
    old.acquire()
    old._stop.set()  # a driver that stopped renewing (hung, or killed)
    old._thread.join()
    time.sleep(1.3)
    new = take_run_lease(cfg, job_id="02000000", say=said.append)
    assert len(said) == 1 and said[0].startswith("taking over run 'run-a'")
    assert "held by job 01000000" in said[0] and "storage.lease_ttl_s=1" in said[0]
    # the old holder's next renewal finds the new lease: lost, and it may not write
    old.renew()
    assert old.lost and "job 02000000" in old.lost
    with pytest.raises(RunLeaseError, match="lost its lease"):
        old.check()
    check_held(new.store, new.holder.token, "run-a")  # the new one may
    old.release()  # a lost lease is not deleted by its old holder
    assert new.store.read()[0].token == new.holder.token
    new.release()


def test_the_lease_is_renewed_while_held(store_uri):
    cfg = _cfg(store_uri, ttl=1)
    lease = take_run_lease(cfg, job_id="01000000")
    first = lease.store.read()[0].renewed_at
    time.sleep(1.5)  # the holder renews every ttl/3: never stale while it lives
    holder = lease.store.read()[0]
    assert holder.renewed_at > first and not holder.is_stale()
    with pytest.raises(RunLeaseError):
        take_run_lease(cfg, job_id="02000000")
    lease.release()


def test_wait_for_run_takes_the_lease_once_released(store_uri):
    cfg = _cfg(store_uri, ttl=3)
    first = take_run_lease(cfg, job_id="01000000")
    said = []
    got = []
    waiter = threading.Thread(
        target=lambda: got.append(
            take_run_lease(cfg, job_id="02000000", wait=True, say=said.append)
        )
    )
    waiter.start()
    time.sleep(1.5)
    assert not got and said and said[0].startswith("waiting for run 'run-a': held by job 01000000")
    first.release()
    waiter.join(timeout=20)
    assert got and got[0].store.read()[0].job_id == "02000000"
    got[0].release()


def test_local_lease_is_one_file_in_the_run_folder(tmp_path):
    cfg = load_config(None, [f"storage.checkpoint_uri={tmp_path}", "storage.run_name=r1"])
    lease = take_run_lease(cfg, job_id="01000000")
    assert (tmp_path / "r1" / LEASE_FILE).exists()
    lease.release()
    assert not (tmp_path / "r1" / LEASE_FILE).exists()


def _ignoring_client(s3):
    """A client whose conditional headers never reach the server: to moto's server, a request
    exactly as from an S3 server that ignores If-None-Match / If-Match (none runs here)."""
    client = s3.client()

    def strip(params, **_):
        params.pop("IfNoneMatch", None)
        params.pop("IfMatch", None)

    client.meta.events.register("before-parameter-build.s3.PutObject", strip)
    return client


def test_a_server_that_ignores_conditional_writes_is_found_and_the_fallback_holds(s3):
    s3.make_bucket(BUCKET)
    assert honours_conditional_writes(s3.client(), BUCKET, "probe")
    client = _ignoring_client(s3)
    assert not honours_conditional_writes(client, BUCKET, "probe")
    # on such a server the single object would let both win; the candidates scheme does not
    unsafe = [
        S3LeaseStore(client, BUCKET, "unsafe/_lease.json").create(new_holder("r", 60, str(i)))
        for i in range(2)
    ]
    assert all(unsafe)
    store = S3CandidateStore(client, BUCKET, "fallback/_lease")

    def take(i):
        lease = RunLease(store, new_holder("r", 60, f"0{i}000000"))
        lease.acquire()
        return lease

    won, refused = contend(4, take)
    assert len(won) <= 1 and len(won) + len(refused) == 4
    # once settled, a newcomer is refused while the holder lives, then gets it
    for lease in won:
        lease.release()
    first = RunLease(store, new_holder("r", 60, "05000000"))
    first.acquire()
    with pytest.raises(RunLeaseError, match="held by job 05000000"):
        RunLease(store, new_holder("r", 60, "06000000")).acquire()
    check_held(store, first.holder.token, "r")
    first.release()
    second = RunLease(store, new_holder("r", 60, "06000000"))
    second.acquire()
    second.release()


def test_a_stale_candidate_is_taken_over(s3):
    s3.make_bucket(BUCKET)
    store = S3CandidateStore(_ignoring_client(s3), BUCKET, "fallback-stale/_lease")
    old = new_holder("r", 1, "01000000")
    store.create(replace(old, renewed_at=time.time() - 10))
    said = []
    new = RunLease(store, new_holder("r", 1, "02000000"), say=said.append)
    new.acquire()
    assert said and said[0].startswith("taking over run 'r'")
    with pytest.raises(RunLeaseError):
        check_held(store, old.token, "r")
    new.release()


def test_a_bucket_it_may_not_write_is_one_line_naming_the_field(s3):
    from pipeline.errors import StorageError

    cfg = load_config(
        None,
        [
            "storage.checkpoint_uri=s3://no-such-bucket-for-leases/runs",
            f"s3.endpoint={s3.endpoint}",
        ],
    )
    with pytest.raises(StorageError, match=r"cannot take the run's lease in s3://no-such-bucket"):
        take_run_lease(cfg, job_id="01000000")
