"""Claims: which run works on which patient, held by compare-and-set in the store, never by file locks.

A claim is one row of `claims` keyed by the patient ("sub-XX"), naming its owner (a random token per
msvol process), host, boot id, pid, start, heartbeat and lease. The protocol (docs/OPERATIONS.md):

- acquire: INSERT the row. The primary key lets exactly one of two concurrent inserts succeed.
- a row already there is taken over only when it is stale: its heartbeat is older than its lease, or its
  owner ran on this host and that process is gone (or the host rebooted since). The takeover is
  `UPDATE ... WHERE subject = ? AND revision = <the revision read>`: every write bumps `revision`,
  so of two runs taking over the same stale claim (or a takeover racing a late heartbeat) one wins.
- heartbeat: `UPDATE ... SET heartbeat_at, revision + 1 WHERE subject = ? AND owner = <me>`, from a
  background thread; 0 rows means the claim was taken over, and the run stops work on that patient.
- state changes of the patient's exams happen in a transaction whose first statement is such a
  heartbeat (`guarded`): it proves the claim and, on PostgreSQL, locks the row until the commit.
- release: DELETE the row WHERE owner = <me>.

No flock and no file-level locking is involved: the database decides each compare-and-set. On a
PostgreSQL store that holds on any file system, NFS included. An SQLite store decides them with
SQLite's own locking, which is safe on a local disk only (hence PostgreSQL when OUT is on NFS).
Times come from the database server (PostgreSQL) so that hosts with skewed clocks agree on staleness.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from msvol.errors import MsvolError
from msvol.ops.states import ClaimRow
from msvol.review.store import Store, now


class ClaimLost(MsvolError):
    """Another run took over this run's claim (this run was stalled past its lease): stop work on the patient."""


@dataclasses.dataclass(frozen=True)
class Owner:
    """This process, as a claim names it."""

    token: str
    host: str
    boot_id: str
    pid: int

    @classmethod
    def current(cls) -> "Owner":
        return cls(uuid.uuid4().hex, socket.gethostname(), _boot_id(), os.getpid())


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds (or held) a claim, as read from the store."""

    subject: str
    owner: str
    host: str
    pid: int
    started_at: dt.datetime
    heartbeat_age_s: float
    lease_s: float
    keep_previous: str | None

    def describe(self) -> str:
        return f"host {self.host} pid {self.pid}, started {self.started_at:%Y-%m-%d %H:%M:%S} UTC, " \
               f"last heartbeat {self.heartbeat_age_s:.0f} s ago (lease {self.lease_s:.0f} s)"


@dataclasses.dataclass(frozen=True)
class Claim:
    """A claim this process holds; `taken_over` is the stale claim it replaced, if any."""

    subject: str
    owner: Owner
    lease_s: float
    taken_over: Holder | None = None


def acquire(store: Store, subject: str, owner: Owner, lease_s: float) -> Claim | Holder:
    """Claim `subject` for `owner`: the Claim when won, else the Holder of the live claim that stands."""
    for _ in range(5):  # each pass ends in a decision unless the row vanished or changed in between
        at = _db_now(store)
        try:
            with store.transaction() as db:
                db.add(ClaimRow(subject=subject, owner=owner.token, host=owner.host, boot_id=owner.boot_id,
                                pid=owner.pid, started_at=at, heartbeat_at=at, lease_s=lease_s, revision=1))
            return Claim(subject, owner, lease_s)
        except IntegrityError:
            pass
        with store.transaction() as db:
            row = db.get(ClaimRow, subject)
            if row is None:
                continue  # released in between: insert again
            holder = _holder(row, at)
            if not _stale(row, holder, owner):
                return holder
            taken = db.execute(update(ClaimRow).where(ClaimRow.subject == subject, ClaimRow.revision == row.revision)
                               .values(owner=owner.token, host=owner.host, boot_id=owner.boot_id, pid=owner.pid,
                                       started_at=at, heartbeat_at=at, lease_s=lease_s, keep_previous=None,
                                       revision=ClaimRow.revision + 1))
            if taken.rowcount == 1:
                return Claim(subject, owner, lease_s, taken_over=holder)
    with store.transaction() as db:
        row = db.get(ClaimRow, subject)
        if row is None:
            raise ClaimLost(f"{subject}: the claim kept changing hands; try again")
        return _holder(row, _db_now(store))


def renew(store: Store, claim: Claim) -> bool:
    """Heartbeat: True while the claim is still this process's."""
    at = _db_now(store)
    with store.transaction() as db:
        return _renew(db, claim, at)


def release(store: Store, claim: Claim) -> None:
    with store.transaction() as db:
        db.execute(delete(ClaimRow).where(ClaimRow.subject == claim.subject, ClaimRow.owner == claim.owner.token))


@contextlib.contextmanager
def guarded(store: Store, claim: Claim):
    """A transaction that writes only while `claim` holds: its first statement renews the claim (and on
    PostgreSQL locks the claim row until the commit, so no takeover can interleave). Raises ClaimLost."""
    at = _db_now(store)
    with store.transaction() as db:
        if not _renew(db, claim, at):
            raise ClaimLost(f"{claim.subject}: another run took over this run's claim")
        yield db


def note_keep_previous(db, claim: Claim, path: str | None) -> None:
    """Record, on the claim, where the result being replaced goes (a rerun after a kill finishes the move)."""
    db.execute(update(ClaimRow).where(ClaimRow.subject == claim.subject, ClaimRow.owner == claim.owner.token)
               .values(keep_previous=path))


class Heartbeat:
    """Renews a claim every `interval_s` from a background thread while the pipeline runs. `lost` is set
    when the claim was taken over; the batch checks it between pipeline stages."""

    def __init__(self, store: Store, claim: Claim, interval_s: float):
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(store, claim, interval_s), daemon=True,
                                        name=f"msvol-heartbeat-{claim.subject}")

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self, store: Store, claim: Claim, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                if not renew(store, claim):
                    self.lost.set()
                    return
            except Exception:  # a store that is briefly unreachable: try again; the lease covers a few misses
                continue


@contextlib.contextmanager
def mutex(store: Store, name: str, owner: Owner, lease_s: float, wait_s: float):
    """Hold the claim `name` (not a subject: e.g. "#pseudonyms") for a short critical section, waiting up
    to `wait_s` for another run to release it. Raises ClaimLost when it stays held."""
    deadline = time.monotonic() + wait_s
    while True:
        result = acquire(store, name, owner, lease_s)
        if isinstance(result, Claim):
            break
        if time.monotonic() > deadline:
            raise ClaimLost(f"{name}: held by another run ({result.describe()}) for more than {wait_s:.0f} s")
        time.sleep(0.2)
    try:
        yield result
    finally:
        release(store, result)


def _renew(db, claim: Claim, at: dt.datetime) -> bool:
    renewed = db.execute(update(ClaimRow).where(ClaimRow.subject == claim.subject, ClaimRow.owner == claim.owner.token)
                         .values(heartbeat_at=at, revision=ClaimRow.revision + 1))
    return renewed.rowcount == 1


def _holder(row: ClaimRow, at: dt.datetime) -> Holder:
    return Holder(row.subject, row.owner, row.host, row.pid, row.started_at,
                  max(0.0, (at - row.heartbeat_at).total_seconds()), row.lease_s, row.keep_previous)


def _stale(row: ClaimRow, holder: Holder, me: Owner) -> bool:
    """A claim whose heartbeat is older than its lease, or whose owner on this host is gone."""
    if row.owner == me.token:
        return True  # this process's own claim (e.g. left by an interrupted mutex): take it back
    if holder.heartbeat_age_s > row.lease_s:
        return True
    if row.host != me.host:
        return False
    if row.boot_id != me.boot_id:
        return True  # this host rebooted since: its processes are gone
    return not _alive(row.pid)  # the same pid as ours is alive: another run in this process (threads)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process with that pid: it lives
    try:  # a killed process its parent has not reaped yet still answers kill(0): a zombie is dead
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _boot_id() -> str:
    """This boot of this host (Linux); a pid names a process only within one boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:64]
    except OSError:
        return "unknown"


def _db_now(store: Store) -> dt.datetime:
    """The database server's clock (PostgreSQL), or this host's for SQLite (a local file: the same clock)."""
    if store.engine.dialect.name == "sqlite":
        return now()
    with store.engine.connect() as connection:
        value = connection.execute(select(func.now())).scalar_one()
    return value.astimezone(dt.timezone.utc) if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
