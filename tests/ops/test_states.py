"""Tests for ops.states (on SQLite and PostgreSQL): sightings become seen, quiet ones stable; changed files put
an exam back to seen with a fresh count; a run's working states are left to it; set_state compares and sets."""

from __future__ import annotations

import datetime as dt

import pytest

from msvol.ops import states
from msvol.ops.exams import FoundExam
from msvol.review.store import now

AN_HOUR_AGO = now() - dt.timedelta(hours=1)


def exam(name: str = "sub-01/ses-01", fingerprint: str = "a" * 64, last_change=AN_HOUR_AGO) -> FoundExam:
    subject, session = name.split("/")
    return FoundExam(name, subject, session.removeprefix("ses-"), fingerprint, last_change)


def state_of(store, name: str) -> states.ExamState:
    with store.transaction() as db:
        return states.read(db, [name])[name]


def test_a_new_exam_is_seen_and_becomes_stable_once_quiet(store):
    fresh = exam("sub-02/ses-01", last_change=now())
    rows, transitions, inserted = states.observe(store, [exam(), fresh], settle_s=300)
    assert inserted == {"sub-01/ses-01", "sub-02/ses-01"}
    assert (rows["sub-01/ses-01"].state, rows["sub-02/ses-01"].state) == ("stable", "seen")
    assert [(change.exam, change.state) for change in transitions] == [
        ("sub-01/ses-01", "seen"), ("sub-02/ses-01", "seen"), ("sub-01/ses-01", "stable")]
    again, transitions, inserted = states.observe(store, [exam(), fresh], settle_s=300)
    assert transitions == [] and inserted == set(), "a second sighting of the same files changes nothing"
    assert again["sub-02/ses-01"].state == "seen"


@pytest.mark.parametrize("state", ["done", "refused", "failed", "quarantined"])
def test_changed_files_put_a_finished_exam_back_to_seen_with_a_fresh_count(store, state):
    states.observe(store, [exam()], settle_s=0)
    with store.transaction() as db:
        states.set_state(db, ["sub-01/ses-01"], state, reason="earlier", attempts=3)
    rows, transitions, _ = states.observe(store, [exam(fingerprint="b" * 64, last_change=now())], settle_s=300)
    row = rows["sub-01/ses-01"]
    assert (row.state, row.attempts, row.reason, row.fingerprint) == ("seen", 0, None, "b" * 64)
    assert [(change.state, change.reason) for change in transitions] == [("seen", "its files changed")]


@pytest.mark.parametrize("state", states.WORKING)
def test_changed_files_of_an_exam_being_analysed_are_left_to_its_run(store, state):
    states.observe(store, [exam()], settle_s=0)
    with store.transaction() as db:
        states.set_state(db, ["sub-01/ses-01"], state, attempts=1)
    rows, transitions, _ = states.observe(store, [exam(fingerprint="b" * 64)], settle_s=0)
    assert (rows["sub-01/ses-01"].state, rows["sub-01/ses-01"].fingerprint) == (state, "b" * 64)
    assert transitions == []
    with store.transaction() as db:  # the run finishing with the old fingerprint cannot call it done
        assert states.set_state(db, ["sub-01/ses-01"], "done", fingerprints={"sub-01/ses-01": "a" * 64}) == []


def test_a_retry_resets_a_quarantined_exam_by_exam_or_by_patient(store):
    states.observe(store, [exam(), exam("sub-01/ses-02")], settle_s=0)
    with store.transaction() as db:
        states.set_state(db, ["sub-01/ses-01", "sub-01/ses-02"], "quarantined", reason="crashed", attempts=3,
                         crash_file="crashes/x.txt")
    rows, _, _ = states.observe(store, [exam(), exam("sub-01/ses-02")], settle_s=0,
                                retry=frozenset({"sub-01/ses-02"}))
    assert rows["sub-01/ses-01"].state == "quarantined"
    assert (rows["sub-01/ses-02"].state, rows["sub-01/ses-02"].attempts, rows["sub-01/ses-02"].crash_file) == (
        "stable", 0, None)
    rows, _, _ = states.observe(store, [exam(), exam("sub-01/ses-02")], settle_s=0, retry=frozenset({"sub-01"}))
    assert rows["sub-01/ses-01"].state == "stable"


def test_set_state_moves_only_from_the_states_given_and_refuses_unknown_states(store):
    states.observe(store, [exam()], settle_s=0)
    with store.transaction() as db:
        assert states.set_state(db, ["sub-01/ses-01"], "running", only_from=("claimed",)) == []
        assert states.set_state(db, ["sub-01/ses-01"], "claimed", only_from=("stable",)) == ["sub-01/ses-01"]
        with pytest.raises(ValueError, match="unknown exam state 'finished'"):
            states.set_state(db, ["sub-01/ses-01"], "finished")
    assert state_of(store, "sub-01/ses-01").state == "claimed"


def test_two_observers_of_one_new_exam_insert_it_once(store):
    first = states.observe(store, [exam()], settle_s=0)
    second = states.observe(store, [exam()], settle_s=0)
    assert first[2] == {"sub-01/ses-01"} and second[2] == set()
    assert states._insert(store, exam(), now()) is False, "the unique exam id refuses a second row"
