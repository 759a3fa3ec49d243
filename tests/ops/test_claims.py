"""Tests for ops.claims: of runs racing for one patient exactly one wins, on SQLite and on PostgreSQL;
a stale claim (old heartbeat, or a dead process on this host) is taken over; a live one is not."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import update

from msvol.ops import claims
from msvol.ops.states import ClaimRow
from msvol.review.store import now, open_store

REPO = Path(__file__).resolve().parents[2]
SUBJECTS = [f"sub-{index:02d}" for index in range(24)]


def other_host(name: str = "elsewhere") -> claims.Owner:
    return claims.Owner(f"token-{name}", f"host-{name}", "boot-elsewhere", 4242)


def age_heartbeat(store, subject: str, seconds: float) -> None:
    with store.transaction() as db:
        db.execute(update(ClaimRow).where(ClaimRow.subject == subject)
                   .values(heartbeat_at=now() - dt.timedelta(seconds=seconds)))


def test_of_many_threads_racing_for_one_patient_exactly_one_wins(store):
    barrier, results = threading.Barrier(12), []

    def contend(index: int) -> None:
        owner = claims.Owner(f"thread-{index}", f"host-{index}", "boot", 1000 + index)
        barrier.wait()
        results.append(claims.acquire(store, "sub-01", owner, lease_s=600))

    threads = [threading.Thread(target=contend, args=(index,)) for index in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    won = [result for result in results if isinstance(result, claims.Claim)]
    assert len(results) == 12 and len(won) == 1
    held = [result for result in results if isinstance(result, claims.Holder)]
    assert {holder.owner for holder in held} == {won[0].owner.token}


def race(out: str, url: str, start_at: float, seed: int) -> None:
    """One racing process (run by the test below): claim every subject, in its own order, from `start_at` on."""
    import random

    opened = open_store(Path(out), url or None)
    owner = claims.Owner.current()
    order = random.Random(seed).sample(SUBJECTS, len(SUBJECTS))
    time.sleep(max(0.0, start_at - time.time()))
    won = [subject for subject in order if isinstance(claims.acquire(opened, subject, owner, 600), claims.Claim)]
    opened.dispose()
    print(json.dumps(won), flush=True)
    sys.stdin.read()  # stay alive until every racer is done: a dead racer's claims may rightly be taken over


@pytest.mark.parametrize("stale", [False, True], ids=["fresh", "stale"])
def test_processes_racing_for_every_patient_never_both_win_one(store, tmp_path, stale):
    """Four processes claim the same 24 patients at the same moment (first claims, or takeovers of 24 stale
    claims of a dead host): every patient is won by exactly one of them."""
    if stale:
        for subject in SUBJECTS:
            assert isinstance(claims.acquire(store, subject, other_host(), 600), claims.Claim)
            age_heartbeat(store, subject, 3600)
    url = "" if store.engine.dialect.name == "sqlite" else store.url
    start_at = time.time() + 3.0  # after every interpreter has started
    code = ("import sys; from tests.ops.test_claims import race; "
            "race(*sys.argv[1:3], float(sys.argv[3]), int(sys.argv[4]))")
    racers = [subprocess.Popen([sys.executable, "-c", code, str(store.out_dir), url, str(start_at), str(seed)],
                               cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True) for seed in range(4)]
    won = [json.loads(racer.stdout.readline() or "null") for racer in racers]
    for racer in racers:
        _, stderr = racer.communicate(timeout=120)
        assert racer.returncode == 0, stderr
    every = [subject for wins in won for subject in wins]
    assert sorted(every) == SUBJECTS, f"each patient claimed by exactly one process: {won}"


def test_a_live_claim_of_another_host_is_held(store):
    first = claims.acquire(store, "sub-01", other_host(), lease_s=600)
    assert isinstance(first, claims.Claim)
    second = claims.acquire(store, "sub-01", claims.Owner.current(), lease_s=600)
    assert isinstance(second, claims.Holder)
    assert second.host == "host-elsewhere" and second.pid == 4242 and second.heartbeat_age_s < 60
    assert "host host-elsewhere pid 4242" in second.describe()


def test_a_stale_claim_is_taken_over_and_its_owner_learns_it_lost(store):
    dead = claims.acquire(store, "sub-01", other_host(), lease_s=60)
    age_heartbeat(store, "sub-01", 61)
    me = claims.Owner.current()
    taken = claims.acquire(store, "sub-01", me, lease_s=600)
    assert isinstance(taken, claims.Claim) and taken.owner == me
    assert taken.taken_over.owner == "token-elsewhere" and taken.taken_over.heartbeat_age_s >= 61
    # the old owner, waking up, cannot renew nor write states, and cannot release the new claim
    assert claims.renew(store, dead) is False
    with pytest.raises(claims.ClaimLost):
        with claims.guarded(store, dead):
            pass
    claims.release(store, dead)
    assert isinstance(claims.acquire(store, "sub-01", other_host("third"), 600), claims.Holder)
    assert claims.renew(store, taken) is True


def test_a_heartbeat_just_before_the_takeover_wins(store):
    """The takeover is a compare-and-set on the revision read: a renewal in between makes it fail."""
    holder = claims.acquire(store, "sub-01", other_host(), lease_s=60)
    age_heartbeat(store, "sub-01", 120)
    with store.transaction() as db:
        stale_revision = db.get(ClaimRow, "sub-01").revision
    assert claims.renew(store, holder)  # the owner was only slow
    with store.transaction() as db:
        assert db.get(ClaimRow, "sub-01").revision > stale_revision
        taken = db.execute(update(ClaimRow).where(ClaimRow.subject == "sub-01", ClaimRow.revision == stale_revision)
                           .values(owner="late"))
        assert taken.rowcount == 0
    assert isinstance(claims.acquire(store, "sub-01", claims.Owner.current(), 600), claims.Holder)


def test_the_claim_of_a_dead_process_on_this_host_is_taken_over_at_once(store):
    """kill -9 leaves a claim with a fresh heartbeat; on the same host its pid tells it is gone."""
    url = "" if store.engine.dialect.name == "sqlite" else store.url
    code = ("import sys, os, signal; from pathlib import Path; from msvol.ops import claims; "
            "from msvol.review.store import open_store; s = open_store(Path(sys.argv[1]), sys.argv[2] or None); "
            "assert isinstance(claims.acquire(s, 'sub-01', claims.Owner.current(), 600), claims.Claim); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    victim = subprocess.Popen([sys.executable, "-c", code, str(store.out_dir), url], cwd=REPO,
                              stderr=subprocess.PIPE)
    assert victim.wait(timeout=60) == -9, victim.stderr.read()
    taken = claims.acquire(store, "sub-01", claims.Owner.current(), lease_s=600)
    assert isinstance(taken, claims.Claim) and taken.taken_over is not None
    assert taken.taken_over.pid == victim.pid and taken.taken_over.heartbeat_age_s < 60, "dead, not stale"


def test_a_heartbeat_keeps_the_claim_and_stopping_it_lets_the_lease_run_out(store):
    mine = claims.acquire(store, "sub-01", claims.Owner.current(), lease_s=1.0)
    with claims.Heartbeat(store, mine, interval_s=0.1) as beat:
        time.sleep(1.5)
        assert isinstance(claims.acquire(store, "sub-01", other_host(), 600), claims.Holder)
        assert not beat.lost.is_set()
    time.sleep(1.2)
    assert isinstance(claims.acquire(store, "sub-01", other_host(), 600), claims.Claim)


def test_a_heartbeat_notices_a_takeover(store):
    mine = claims.acquire(store, "sub-01", claims.Owner.current(), lease_s=600)
    with store.transaction() as db:
        db.execute(update(ClaimRow).where(ClaimRow.subject == "sub-01").values(owner="someone-else"))
    with claims.Heartbeat(store, mine, interval_s=0.05) as beat:
        assert beat.lost.wait(5)


def test_the_mutex_waits_for_the_holder_and_then_serialises(store):
    inside, order = threading.Lock(), []

    def critical(name: str) -> None:
        with claims.mutex(store, "#pseudonyms", claims.Owner(name, "host", "boot", os.getpid()), 60, 30):
            assert inside.acquire(blocking=False), "two holders of the mutex at once"
            order.append(name)
            time.sleep(0.2)
            inside.release()

    threads = [threading.Thread(target=critical, args=(f"run-{index}",)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(order) == [f"run-{index}" for index in range(4)]
