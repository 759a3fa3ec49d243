"""`msvol run` as a cron job would use it, with the quick stand-in pipeline (tests/ops/quick_pipeline.py):
three patients, then one new exam; an export still being copied; a broken exam among good ones; retries
then quarantine; a stale claim taken over; exit codes; the --log-json events."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from msvol.cli import main
from msvol.ops import claims, states
from msvol.ops.states import ClaimRow, ExamState
from msvol.review.store import now, open_store
from msvol.synth import dicom as synth_dicom
from tests.builders import PATIENT_A, PATIENT_B, SECRETS, head, identity, image_path, write_subject
from tests.ops import quick_pipeline


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    quick_pipeline.install(monkeypatch)


def age(root: Path, minutes: float = 60) -> None:
    """Every file and folder below `root` last changed `minutes` ago (a finished copy)."""
    stamp = (now() - dt.timedelta(minutes=minutes)).timestamp()
    for path in [root, *root.rglob("*")]:
        os.utime(path, (stamp, stamp))


def run(input_path: Path, out: Path, *options, log: Path | None = None):
    args = ["run", str(input_path), "--out", str(out), *map(str, options)]
    return CliRunner().invoke(main, args + (["--log-json", str(log)] if log else []))


def events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def exam_states(out: Path, db_url: str | None = None) -> dict[str, tuple[str, int]]:
    opened = open_store(out, db_url)
    with opened.transaction() as db:
        rows = {row.exam: (row.state, row.attempts) for row in db.scalars(select(ExamState))}
    opened.dispose()
    return rows


def analysed(log: Path, since: int = 0) -> list[str]:
    """The exams a run started the pipeline on (its "running" events), from line `since` of the log."""
    return sorted(event["exam"] for event in events(log)[since:] if event["state"] == "running")


@pytest.fixture
def three(tmp_path) -> Path:
    """sub-01 with two visits, sub-02 and sub-03 with one each, copied an hour ago."""
    root = tmp_path / "bids"
    write_subject(root, "01")
    write_subject(root, "02", dates={"01": "2020-03-01"})
    write_subject(root, "03", dates={"01": "2020-04-01"})
    age(root)
    return root


def test_first_run_on_three_patients_then_a_new_exam_redoes_only_its_patient(three, tmp_path, database_url):
    out, log = tmp_path / "out", tmp_path / "events.jsonl"
    db = ["--db", database_url] if database_url else []
    first = run(three, out, *db, log=log)
    assert first.exit_code == 0, first.output
    assert [line for line in first.stdout.splitlines() if line.startswith("report:")] == [
        f"report: {out / name / 'report.html'}" for name in ("sub-01", "sub-02", "sub-03")]
    assert analysed(log) == ["sub-01/ses-01", "sub-01/ses-02", "sub-02/ses-01", "sub-03/ses-01"]
    assert set(exam_states(out, database_url).values()) == {("done", 1)}

    write_subject(three, "02", dates={"01": "2020-03-01", "02": "2021-03-01"})  # ses-02 arrives (and its date)
    age(three / "sub-02")
    lines = len(events(log))
    second = run(three, out, *db, log=log)
    assert second.exit_code == 0, second.output
    assert analysed(log, lines) == ["sub-02/ses-01", "sub-02/ses-02"], "only the patient with the new exam"
    assert "skipped sub-01: result exists" in second.stdout and "skipped sub-03: result exists" in second.stdout
    report = json.loads((out / "sub-02" / "report.json").read_text())
    assert [timepoint["session"] for timepoint in report["timepoints"]] == ["01", "02"]
    (previous,) = (out / "previous").iterdir()
    assert previous.name.startswith("sub-02-") and len(json.loads((previous / "report.json").read_text())[
        "timepoints"]) == 1, "the earlier result is kept"
    assert exam_states(out, database_url)["sub-02/ses-02"] == ("done", 1)

    lines = len(events(log))
    third = run(three, out, *db, log=log)
    assert third.exit_code == 0 and analysed(log, lines) == [], "nothing new: nothing analysed"
    assert "summary: 0 done, 3 up to date" in third.stderr


def test_an_export_still_being_copied_is_left_alone_until_it_settles(three, tmp_path):
    out, log = tmp_path / "out", tmp_path / "events.jsonl"
    assert run(three, out, "--settle-minutes", "5").exit_code == 0
    write_subject(three, "04", dates={"01": "2020-05-01"})  # being copied: its files changed just now
    age(three / "sub-04", minutes=2)
    os.utime(image_path(three / "sub-04", "01", "T1w"))  # the last file is still growing
    result = run(three, out, "--settle-minutes", "5", log=log)
    assert result.exit_code == 0, result.output
    assert re.search(r"^settling sub-04/ses-01: last change 0\.\d min ago \(--settle-minutes 5\); left for the "
                     r"next run$", result.stdout, re.MULTILINE), result.stdout
    assert not (out / "sub-04").exists() and analysed(log) == []
    assert exam_states(out)["sub-04/ses-01"] == ("seen", 0)
    age(three / "sub-04", minutes=6)  # quiet for longer than the settle time
    lines = len(events(log))
    settled = run(three, out, "--settle-minutes", "5", log=log)
    assert settled.exit_code == 0, settled.output
    assert analysed(log, lines) == ["sub-04/ses-01"] and (out / "sub-04" / "report.json").is_file()
    # seen again first: its files changed (their mtimes) since the last run looked
    assert [event["state"] for event in events(log)[lines:] if event["exam"] == "sub-04/ses-01"] == [
        "seen", "stable", "claimed", "running", "done"]


def test_a_dicom_exam_with_a_file_still_arriving_is_not_stable(tmp_path):
    """The file being copied is not readable DICOM yet (ingest skips it), but its fresh mtime in the series
    folder keeps the exam from settling."""
    from msvol.config import Params
    from msvol.ingest import protocol
    from msvol.ops import exams

    export = tmp_path / "export"
    written = synth_dicom.write_exam(export / "EXAM1", identity(PATIENT_A, dt.date(2022, 5, 12)),
                                     synth_dicom.VENDORS["siemens"], flair=head(1), t1=head(2, "T1w"), extras=())
    age(export)
    (exam,) = exams.discover(export, tmp_path / "out", Params(), protocol.load_protocol()).jobs[0].exams
    assert now() - exam.last_change > dt.timedelta(minutes=59)
    arriving = next(iter(written.values()))[0].parent / "1.2.3.partial-copy"
    arriving.write_bytes(b"DICM" + b"\0" * 100)
    (again,) = exams.discover(export, tmp_path / "out", Params(), protocol.load_protocol()).jobs[0].exams
    assert now() - again.last_change < dt.timedelta(minutes=1)
    assert again.fingerprint == exam.fingerprint, "an unreadable file is not part of the exam"


def test_a_broken_exam_among_good_ones_is_refused_once_and_redone_when_fixed(three, tmp_path):
    out = tmp_path / "out"
    image_path(three / "sub-01", "02", "T1w").unlink()
    result = run(three, out)
    assert result.exit_code == 2, result.output
    assert f"set aside sub-01: {three / 'sub-01' / 'ses-02' / 'anat'}" in result.stderr
    assert (out / "sub-02" / "report.json").is_file() and (out / "sub-03" / "report.json").is_file()
    assert exam_states(out)["sub-01/ses-02"] == ("refused", 1)
    again = run(three, out)
    assert again.exit_code == 0 and "skipped sub-01: nothing new" in again.stdout, "bad input is not retried"
    write_subject(three, "01")  # the site exports the missing T1 (the folder's files change)
    fixed = run(three, out)
    assert fixed.exit_code == 0, fixed.output
    assert f"report: {out / 'sub-01' / 'report.html'}" in fixed.stdout


def test_a_crashing_patient_is_retried_then_quarantined_with_its_crash_file(three, tmp_path, monkeypatch):
    out, log = tmp_path / "out", tmp_path / "events.jsonl"
    monkeypatch.setenv("MSVOL_TEST_CRASH", "sub-02")
    for attempt in (1, 2, 3):
        result = run(three, out, "--retries", "2", log=log)
        assert result.exit_code == 1, result.output
        assert exam_states(out)["sub-02/ses-01"] == ("failed" if attempt < 3 else "quarantined", attempt)
    assert "quarantined sub-02: internal error on try 3 of 3: RuntimeError: simulated internal error in sub-02" \
        in result.stderr
    crashes = sorted((out / "crashes").iterdir())
    assert [path.name.rsplit("-", 1)[1] for path in crashes] == ["attempt1.txt", "attempt2.txt", "attempt3.txt"]
    assert "Traceback (most recent call last)" in crashes[-1].read_text()
    opened = open_store(out)
    with opened.transaction() as db:
        assert db.scalar(select(ExamState.crash_file).where(ExamState.exam == "sub-02/ses-01")) == \
            str(crashes[-1].relative_to(out))
    opened.dispose()
    lines = len(events(log))
    later = run(three, out, log=log)
    assert later.exit_code == 0 and analysed(log, lines) == [], "a quarantined exam is left alone"
    assert "1 exam(s) stay quarantined from earlier runs (sub-02/ses-01); clear with --retry-exam" in later.stderr
    monkeypatch.delenv("MSVOL_TEST_CRASH")
    cleared = run(three, out, "--retry-exam", "sub-02/ses-01", log=log)
    assert cleared.exit_code == 0, cleared.output
    assert exam_states(out)["sub-02/ses-01"] == ("done", 1)


def take_claims(out: Path, subjects, heartbeat_age_s: float = 0.0) -> claims.Owner:
    """Claims of a run on another host, as if it were working on `subjects` (its heartbeat that old)."""
    opened, owner = open_store(out), claims.Owner("token-other", "host-other", "boot-other", 4242)
    for subject in subjects:
        assert isinstance(claims.acquire(opened, subject, owner, 600), claims.Claim)
    with opened.transaction() as db:
        db.execute(ClaimRow.__table__.update().values(heartbeat_at=now() - dt.timedelta(seconds=heartbeat_age_s)))
    opened.dispose()
    return owner


def test_exit_75_when_another_run_holds_every_patient_left(three, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    take_claims(out, ["sub-01", "sub-02", "sub-03"])
    result = run(three, out)
    assert result.exit_code == 75, result.output
    assert "held sub-02: another run works on it (host host-other pid 4242" in result.stderr
    assert not (out / "sub-02").exists()
    opened = open_store(out)
    with opened.transaction() as db:
        db.execute(ClaimRow.__table__.delete().where(ClaimRow.subject != "sub-02"))
    opened.dispose()
    partly = run(three, out)
    assert partly.exit_code == 0, "this run did the rest: the held patient is the other run's"
    assert (out / "sub-01" / "report.json").is_file() and not (out / "sub-02").exists()


def test_a_stale_claim_is_taken_over_logged_and_its_leftovers_swept(three, tmp_path):
    """A run on another host died while writing sub-02: its claim's heartbeat stopped an hour ago, its exam
    is running (try 1) and its staging folder is still there."""
    out, log = tmp_path / "out", tmp_path / "events.jsonl"
    assert run(three, out, "--settle-minutes", "5").exit_code == 0
    opened = open_store(out)
    with opened.transaction() as db:
        states.set_state(db, ["sub-02/ses-01"], "running", attempts=1)
    opened.dispose()
    take_claims(out, ["sub-02"], heartbeat_age_s=3600)
    (out / ".sub-02.partial-999").mkdir()
    (out / ".sub-02.partial-999" / "report.json").write_text("half")
    result = run(three, out, log=log)
    assert result.exit_code == 0, result.output
    assert "warning: sub-02: took over the stale claim of host host-other pid 4242" in result.stderr
    assert not (out / ".sub-02.partial-999").exists()
    logged = {event["state"]: event for event in events(log) if event["subject"] == "sub-02"}
    assert "host host-other pid 4242" in logged["taken_over"]["reason"]
    assert ".sub-02.partial-999" in logged["swept"]["reason"]
    assert logged["running"]["attempt"] == 2 and exam_states(out)["sub-02/ses-01"] == ("done", 2)


def test_a_patient_whose_runs_died_too_often_is_quarantined(three, tmp_path):
    out = tmp_path / "out"
    assert run(three, out).exit_code == 0
    opened = open_store(out)
    with opened.transaction() as db:
        states.set_state(db, ["sub-03/ses-01"], "running", attempts=3)
    opened.dispose()
    take_claims(out, ["sub-03"], heartbeat_age_s=3600)
    result = run(three, out, "--retries", "2")
    assert result.exit_code == 1, result.output
    assert "quarantined sub-03: the runs analysing it died 3 times" in result.stderr
    assert exam_states(out)["sub-03/ses-01"] == ("quarantined", 3)


def test_log_json_has_one_event_per_line_with_pseudonyms_only(tmp_path):
    """A DICOM export whose folder names carry the patient's name: the log has the exam states, no identity."""
    export, out, log = tmp_path / "export", tmp_path / "out", tmp_path / "logs" / "events.jsonl"
    synth_dicom.write_exam(export / "LEAKTEST_ALICE_19610923" / "2021", identity(PATIENT_A, dt.date(2021, 6, 15)),
                           synth_dicom.VENDORS["siemens"], flair=head(1), t1=head(2, "T1w"), extras=())
    synth_dicom.write_exam(export / "LEAKTEST_BORIS", identity(PATIENT_B, dt.date(2022, 5, 20)),
                           synth_dicom.VENDORS["siemens"], flair=head(3), t1=None, extras=())
    result = run(export, out, log=log)
    assert result.exit_code == 2, result.output
    text = log.read_text()
    for secret in SECRETS:
        assert secret not in text, secret
    lines = events(log)
    assert all(set(event) >= {"at", "run", "host", "pid", "subject", "exam", "state", "reason"} for event in lines)
    assert len({event["run"] for event in lines}) == 1
    alice = next(event["subject"] for event in lines if event["state"] == "done")
    assert [event["state"] for event in lines if event["exam"] == f"{alice}/ses-20210615"] == [
        "seen", "stable", "claimed", "running", "done"]
    done = next(event for event in lines if event["state"] == "done")
    assert done["attempt"] == 1 and done["duration_s"] >= 0
    refused = next(event for event in lines if event["state"] == "refused")
    assert refused["exam"].endswith("/ses-20220520") and "no usable exam" in refused["reason"]
    assert "<export>" in refused["reason"], "the export path (the patient's name) is left out"
    assert lines[-1]["state"] == "summary" and lines[-1]["counts"]["done"] == 1


def test_a_run_whose_claim_was_taken_over_stops_at_the_next_stage_and_writes_nothing(three, tmp_path,
                                                                                       monkeypatch):
    """A run stalled past its lease (here: its claim is handed to a "thief" under it) must not finish the
    patient: its heartbeat notices, and the next stage message stops the pipeline."""
    from msvol.config import Params
    from msvol.config import BatchSettings
    from msvol.ops.batch import run_batch

    out = tmp_path / "out"

    def stolen(patient, out_dir, params, resources, **options):
        opened = open_store(out)
        with opened.transaction() as db:
            db.execute(ClaimRow.__table__.update().values(owner="thief"))
        opened.dispose()
        return quick_pipeline.run_patient(patient, out_dir, params, resources, **options)

    monkeypatch.setattr(quick_pipeline.pipeline, "run_patient", stolen)
    monkeypatch.setenv("MSVOL_TEST_STAGE_S", "0.3")
    summary = run_batch(three / "sub-01", out, Params(), settings=BatchSettings(settle_minutes=0, lease_minutes=0.01))
    assert summary.done == [] and [name for name, _ in summary.held] == ["sub-01"]
    assert "another run took over this run's claim" in summary.held[0][1]
    assert not (out / "sub-01").exists() and not list(out.glob(".sub-01*"))
    assert set(exam_states(out).values()) == {("running", 1)}, "the states are the new owner's to write"


def test_run_help_lists_the_operations_options():
    result = CliRunner().invoke(main, ["run", "--help"])
    assert result.exit_code == 0
    for option in ("--settle-minutes", "MSVOL_SETTLE_MINUTES", "--retries", "--lease-minutes", "--retry-exam",
                   "--log-json", "75"):
        assert option in result.output, option


def test_the_store_keeps_refusal_reasons_without_export_paths(tmp_path):
    export, out = tmp_path / "export", tmp_path / "out"
    synth_dicom.write_exam(export / "LEAKTEST_BORIS", identity(PATIENT_B, dt.date(2022, 5, 20)),
                           synth_dicom.VENDORS["siemens"], flair=head(3), t1=None, extras=())
    result = run(export, out)
    assert result.exit_code == 2 and str(export / "LEAKTEST_BORIS") in result.stderr, "the operator sees the path"
    opened = open_store(out)
    with opened.transaction() as db:
        (reason,) = db.scalars(select(ExamState.reason))
    opened.dispose()
    assert "no usable exam" in reason and "<export>" in reason and "LEAKTEST" not in reason
