"""Tests for ops.batch: one broken exam never stops the run; crashes leave a traceback; results are kept.

The pipeline itself is replaced (monkeypatch) so only the bookkeeping of run_batch is tested.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest

from msvol import pipeline
from msvol.config import BatchSettings
from msvol.ops.batch import run_batch
from msvol.config import Params
from msvol.datatypes import Patient, Volume
from msvol.synth import dicom as synth_dicom
from tests.builders import image_path, write_subject

DUMMY_RESOURCES = object()
SETTLED = BatchSettings(settle_minutes=0)  # the inputs were written a moment ago


@pytest.fixture
def bids(tmp_path) -> Path:
    """sub-01 is broken (ses-02 has no T1w); sub-02 is a valid one-visit subject."""
    root = tmp_path / "bids"
    broken = write_subject(root, "01", dates={"01": "2020-01-15", "02": "2021-01-20"})
    image_path(broken, "02", "T1w").unlink()
    write_subject(root, "02", dates={"01": "2020-03-01"})
    return root


@pytest.fixture
def calls(monkeypatch) -> dict:
    """Replace Resources.load and run_patient; record what they were given."""
    record = {"load": [], "run": []}

    def load(model_dir=None, change_model_dir=None):
        record["load"].append((model_dir, change_model_dir))
        return DUMMY_RESOURCES

    monkeypatch.setattr(pipeline.Resources, "load", staticmethod(load))
    return record


def crash_in_run_patient(record):
    def run_patient(patient, out_dir, params, resources, *, force=False, progress=None, keep_previous=None):
        record["run"].append((patient, resources, force))
        raise RuntimeError(f"simulated failure for sub-{patient.subject}")
    return run_patient


def succeed_in_run_patient(record):
    def run_patient(patient, out_dir, params, resources, *, force=False, progress=None, keep_previous=None):
        record["run"].append((patient, resources, force))
        folder = Path(out_dir) / f"sub-{patient.subject}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return run_patient


def test_broken_subject_is_set_aside_and_a_crash_does_not_stop_the_batch(bids, tmp_path, calls, monkeypatch):
    monkeypatch.setattr(pipeline, "run_patient", crash_in_run_patient(calls))
    out = tmp_path / "out"
    messages = []
    summary = run_batch(bids, out, Params(), settings=SETTLED, progress=messages.append)

    assert summary.done == [] and summary.skipped == []
    assert [name for name, _ in summary.set_aside] == ["sub-01"]
    reason = summary.set_aside[0][1]
    assert str(bids / "sub-01" / "ses-02" / "anat") in reason and "T1w" in reason

    assert [name for name, _ in summary.crashed] == ["sub-02"]
    crash = summary.crashed[0][1]
    assert crash.parent == out / "crashes" and crash.is_file()
    text = crash.read_text()
    assert "Traceback (most recent call last)" in text
    assert "RuntimeError: simulated failure for sub-02" in text

    # the valid subject reached the pipeline with a loaded patient and the shared resources
    assert len(calls["run"]) == 1
    patient, resources, force = calls["run"][0]
    assert isinstance(patient, Patient) and patient.subject == "02" and len(patient.visits) == 1
    assert resources is DUMMY_RESOURCES and force is False
    assert calls["load"] == [(None, None)], "the shipped models"
    # outcomes are the summary's to report (once); progress only says what is being worked on
    assert not any("set aside" in message or str(crash) in message for message in messages)


def test_resources_are_loaded_once_for_all_subjects(bids, tmp_path, calls, monkeypatch):
    write_subject(bids, "03", dates={"01": "2020-03-01"})
    monkeypatch.setattr(pipeline, "run_patient", succeed_in_run_patient(calls))
    model_dir, change_model_dir = tmp_path / "model", tmp_path / "change_model"
    summary = run_batch(bids, tmp_path / "out", Params(), settings=SETTLED, model_dir=model_dir,
                        change_model_dir=change_model_dir)
    assert summary.done == [tmp_path / "out" / "sub-02", tmp_path / "out" / "sub-03"]
    assert calls["load"] == [(model_dir, change_model_dir)]


@pytest.mark.parametrize("which", ["model_dir", "change_model_dir"])
def test_each_model_folder_reaches_resources_on_its_own(bids, tmp_path, calls, monkeypatch, which):
    monkeypatch.setattr(pipeline, "run_patient", succeed_in_run_patient(calls))
    run_batch(bids, tmp_path / "out", Params(), settings=SETTLED, **{which: tmp_path / "bundle"})
    expected = (tmp_path / "bundle", None) if which == "model_dir" else (None, tmp_path / "bundle")
    assert calls["load"] == [expected]


def test_no_resources_are_loaded_when_every_subject_is_bad(bids, tmp_path, calls, monkeypatch):
    monkeypatch.setattr(pipeline, "run_patient", succeed_in_run_patient(calls))
    summary = run_batch(bids / "sub-01", tmp_path / "out", Params(), settings=SETTLED)
    assert [name for name, _ in summary.set_aside] == ["sub-01"]
    assert calls["load"] == [] and calls["run"] == []


def test_existing_result_is_skipped_without_force(bids, tmp_path, calls, monkeypatch):
    monkeypatch.setattr(pipeline, "run_patient", succeed_in_run_patient(calls))
    out = tmp_path / "out"
    (out / "sub-02").mkdir(parents=True)
    (out / "sub-01").mkdir()  # skipped before ingest, even though its input is broken
    summary = run_batch(bids, out, Params(), settings=SETTLED)
    assert summary.skipped == ["sub-01", "sub-02"]
    assert summary.done == [] and summary.set_aside == [] and summary.crashed == []
    assert calls["run"] == [] and calls["load"] == []


def test_existing_result_is_redone_with_force(bids, tmp_path, calls, monkeypatch):
    monkeypatch.setattr(pipeline, "run_patient", succeed_in_run_patient(calls))
    out = tmp_path / "out"
    (out / "sub-02").mkdir(parents=True)
    summary = run_batch(bids, out, Params(), settings=SETTLED, force=True)
    assert summary.done == [out / "sub-02"]
    assert [name for name, _ in summary.set_aside] == ["sub-01"]
    assert [(patient.subject, force) for patient, _, force in calls["run"]] == [("02", True)]


def test_model_error_while_loading_resources_sets_the_subject_aside(bids, tmp_path, monkeypatch):
    from msvol.errors import ModelError

    def load(model_dir=None, change_model_dir=None):
        raise ModelError("models/lesion_change/configs/metadata.json: bundle file missing")

    monkeypatch.setattr(pipeline.Resources, "load", staticmethod(load))
    summary = run_batch(bids, tmp_path / "out", Params(), settings=SETTLED)
    assert [name for name, _ in summary.set_aside] == ["sub-01", "sub-02"]
    assert "lesion_change/configs/metadata.json" in summary.set_aside[1][1]
    assert summary.crashed == []


def _dicom_exam(export: Path, date: dt.date) -> None:
    """One small head-sized DICOM exam (3D FLAIR + 3D T1) of patient MRN1 on `date`."""
    grid = np.indices((124, 130, 124)).sum(axis=0).astype(np.float32) % 50 + 100
    volume = Volume(grid, np.diag([1.0, 1.0, 1.0, 1.0]), "FLAIR")
    identity = synth_dicom.ExamIdentity("MRN1", "Test^Person", "19700101", date)
    synth_dicom.write_exam(export / date.isoformat(), identity, synth_dicom.VENDORS["siemens"], flair=volume,
                           t1=volume, extras=())


def test_a_new_dicom_exam_redoes_the_patient_and_keeps_the_earlier_result(tmp_path, calls, monkeypatch):
    """Cron over a PACS export: known exams are skipped; a new exam of the same patient is processed."""
    runs = []

    def run_patient(patient, out_dir, params, resources, *, force=False, progress=None, keep_previous=None):
        runs.append((tuple(visit.session for visit in patient.visits), force, keep_previous))
        folder = Path(out_dir) / f"sub-{patient.subject}"
        folder.mkdir(parents=True, exist_ok=True)
        timepoints = [{"session": visit.session} for visit in patient.visits]
        (folder / "report.json").write_text(json.dumps({"timepoints": timepoints}))
        return folder

    monkeypatch.setattr(pipeline, "run_patient", run_patient)
    export, out = tmp_path / "pacs", tmp_path / "out"
    _dicom_exam(export, dt.date(2021, 3, 1))
    first = run_batch(export, out, Params(), settings=SETTLED)
    assert len(first.done) == 1 and runs == [(("20210301",), False, None)]
    assert run_batch(export, out, Params(), settings=SETTLED).skipped == [first.done[0].name]

    _dicom_exam(export, dt.date(2022, 3, 1))
    third = run_batch(export, out, Params(), settings=SETTLED)
    assert [folder.name for folder in third.done] == [first.done[0].name]  # same pseudonym
    sessions, force, keep_previous = runs[-1]
    assert sessions == ("20210301", "20220301") and force is True
    assert keep_previous.parent == out / "previous" and keep_previous.name.startswith(first.done[0].name)

    # an exam the pipeline refused (say its pixels would not decode) is not retried on every later run
    report = first.done[0] / "report.json"
    report.write_text(json.dumps({"timepoints": [{"session": "20210301"}], "qc_flags": [
        {"code": "exam_refused", "scope": "exam 2022-03-01", "message": "..."}]}))
    assert run_batch(export, out, Params(), settings=SETTLED).skipped == [first.done[0].name] and len(runs) == 2
