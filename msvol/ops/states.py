"""The exam state store of `msvol run`: one row per exam, one claim per patient (tables of migration 0003).

An exam is a DICOM study (one patient, one day) or a BIDS session; its id is "sub-XX/ses-YY"
(pseudonymous: the subject is the pseudonym or the BIDS label). The patient ("sub-XX", all its
visits) is the unit of work: its claim is held while the pipeline runs on it.

States, in the order an exam passes them (docs/OPERATIONS.md):
  seen         found; a file in it changed less than --settle-minutes ago (an export still being copied)
  stable       quiet for --settle-minutes: complete, waiting for its patient to be analysed
  claimed      a run holds the claim on its patient
  running      the pipeline runs on its patient; `attempts` counts the tries
  done         analysed: its patient's report includes it
  refused      bad input (reason says why: a 2D FLAIR, no T1, unreadable pixels); not retried until its files change
  failed       internal error in the last try (crash_file); retried by a later run while attempts <= retries
  quarantined  failed 1 + retries times, or the runs working on it died that often; left alone until cleared
An exam whose files change after it settled (a study that becomes stable twice) goes back to seen,
with its attempts and quarantine cleared.

Every write here is one conditional statement (compare-and-set on the state or the fingerprint), so
two runs that observe the same exams at once cannot undo each other's transitions.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Iterable

from sqlalchemy import case, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

# the models live with the store's others, so that its metadata (and Alembic's view of it) is whole
from msvol.review.store import ClaimRow, ExamState, Store, now

__all__ = ["ClaimRow", "ExamState", "STATES", "WORKING", "Transition", "read", "observe", "set_state"]

STATES = ("seen", "stable", "claimed", "running", "done", "refused", "failed", "quarantined")
WORKING = ("claimed", "running")  # a run holds the patient's claim
SETTLED_DONE = ("done", "refused", "quarantined")  # nothing to do unless the files change or a retry is asked
CHUNK = 500  # ids per IN (...) list: well below every backend's parameter limit


@dataclass(frozen=True)
class Transition:
    """One state change, for the event log."""

    exam: str
    subject: str
    state: str
    reason: str | None = None
    attempt: int | None = None


def read(db: Session, exams: Iterable[str]) -> dict[str, ExamState]:
    """The rows of these exam ids (those that have one)."""
    wanted, rows = list(exams), {}
    for start in range(0, len(wanted), CHUNK):
        for row in db.scalars(select(ExamState).where(ExamState.exam.in_(wanted[start:start + CHUNK]))):
            rows[row.exam] = row
    return rows


def observe(store: Store, found: list, *, settle_s: float, retry: frozenset[str] = frozenset(),
            at: dt.datetime | None = None) -> tuple[dict[str, ExamState], list[Transition], set[str]]:
    """Record a sighting of every exam in `found` (exams.FoundExam) and settle the quiet ones.

    New exams are inserted as seen; an exam whose fingerprint changed goes back to seen (unless a run works
    on it: its state is left to that run, which compares fingerprints when it finishes); exams named in
    `retry` (exam or subject ids) are reset to seen with no attempts; a seen exam whose newest change is at
    least `settle_s` old becomes stable.
    Returns (rows by exam id, the transitions made, the ids inserted by this call).
    """
    at = at or now()
    by_id = {exam.exam: exam for exam in found}
    transitions, inserted = [], set()
    with store.transaction() as db:
        existing = read(db, by_id)
    for exam in found:
        if exam.exam not in existing and _insert(store, exam, at):
            inserted.add(exam.exam)
            transitions.append(Transition(exam.exam, exam.subject, "seen"))
    with store.transaction() as db:
        for exam_id, row in existing.items():
            exam = by_id[exam_id]
            if row.fingerprint != exam.fingerprint and _changed(db, row, exam, at):
                if row.state not in WORKING:
                    transitions.append(Transition(exam_id, exam.subject, "seen", "its files changed"))
        wanted = [exam for exam in found if exam.exam in retry or exam.subject in retry]
        for exam in wanted:
            reset = db.execute(update(ExamState).where(ExamState.exam == exam.exam, ExamState.state.not_in(WORKING))
                               .values(state="seen", attempts=0, reason=None, crash_file=None, updated_at=at))
            if reset.rowcount:
                transitions.append(Transition(exam.exam, exam.subject, "seen", "retry asked for (--retry-exam)"))
        cutoff = at - dt.timedelta(seconds=settle_s)
        for exam in found:
            if exam.last_change > cutoff:
                continue
            settled = db.execute(update(ExamState).where(
                ExamState.exam == exam.exam, ExamState.state == "seen", ExamState.fingerprint == exam.fingerprint)
                .values(state="stable", reason=None, updated_at=at))
            if settled.rowcount:
                transitions.append(Transition(exam.exam, exam.subject, "stable"))
    with store.transaction() as db:
        return read(db, by_id), transitions, inserted


def _insert(store: Store, exam, at: dt.datetime) -> bool:
    """Insert the exam as seen; False when another run inserted it first (the unique exam id decides)."""
    try:
        with store.transaction() as db:
            db.add(ExamState(exam=exam.exam, subject=exam.subject, session=exam.session, state="seen", attempts=0,
                             fingerprint=exam.fingerprint, last_change_at=exam.last_change, seen_at=at,
                             updated_at=at))
        return True
    except IntegrityError:
        return False


def _changed(db: Session, row: ExamState, exam, at: dt.datetime) -> bool:
    """New files in a known exam: a new fingerprint; back to seen with a fresh count unless a run works on it."""
    idle = ExamState.state.not_in(WORKING)
    result = db.execute(update(ExamState).where(ExamState.exam == row.exam, ExamState.fingerprint == row.fingerprint)
                        .values(fingerprint=exam.fingerprint, last_change_at=exam.last_change, updated_at=at,
                                state=case((idle, "seen"), else_=ExamState.state),
                                attempts=case((idle, 0), else_=ExamState.attempts),
                                reason=case((idle, None), else_=ExamState.reason)))
    return bool(result.rowcount)


def set_state(db: Session, exams: Iterable[str], state: str, *, reason: str | None = None, only_from=None,
              fingerprints: dict[str, str] | None = None, **values) -> list[str]:
    """Move exams to `state` (from one of `only_from`, when given; only while their fingerprint is the one in
    `fingerprints`, when given); returns the ids moved. Callers hold the patient's claim (claims.guarded)
    except for adoption and the settle step, which only move exams out of seen and stable."""
    if state not in STATES:
        raise ValueError(f"unknown exam state {state!r}; one of {', '.join(STATES)}")
    moved = []
    for exam in exams:
        query = update(ExamState).where(ExamState.exam == exam)
        if only_from is not None:
            query = query.where(ExamState.state.in_(only_from))
        if fingerprints is not None:
            query = query.where(ExamState.fingerprint == fingerprints[exam])
        if db.execute(query.values(state=state, reason=reason, updated_at=now(), **values)).rowcount:
            moved.append(exam)
    return moved
