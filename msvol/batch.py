"""Many patients: run each subject in turn; one broken exam never stops the batch.

Input is a BIDS dataset (or one sub-* folder) or any folder of DICOM exports (see ingest_dicom).

Each subject is either done (its folder written), skipped (a finished result is already there
and --force was not given; for DICOM input, unless a new exam of that patient has arrived: then
it is redone and the earlier result is kept under OUT/previous/), set aside for bad input (with
the reason), or failed with an internal error (a crash file with the traceback goes under
OUT/crashes/). Each outcome is reported once, in the summary; `progress` tells only what is being done.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import functools
import json
import traceback
from pathlib import Path
from typing import Callable

from msvol import pipeline
from msvol.config import Params
from msvol.datatypes import Patient
from msvol.errors import MsvolError, OutputExistsError
from msvol.ingest import bids, dicom as ingest_dicom, protocol, pseudonyms
from msvol.review import findings, store


@dataclasses.dataclass
class BatchSummary:
    done: list[Path] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    set_aside: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (subject folder, reason)
    crashed: list[tuple[str, Path]] = dataclasses.field(default_factory=list)  # (subject folder, crash file)
    warnings: list[str] = dataclasses.field(default_factory=list)  # e.g. a truncated DICOM file skipped


def run_batch(input_path: Path, out_dir: Path, params: Params, *, force: bool = False,
              model_dir: Path | None = None, change_model_dir: Path | None = None,
              rules: protocol.Protocol | None = None, keep_identifiers: bool = False,
              progress: pipeline.Progress = lambda message: None, db_url: str | None = None) -> BatchSummary:
    """Run every subject found under `input_path`: a BIDS root, one sub-* folder, or DICOM exam folders.

    DICOM patients get a pseudonymous subject id (the link to PatientID stays in OUT/private/)
    unless `keep_identifiers`; `rules` recognise and check their series (default: the standard protocol).
    Every report written (or found finished) is registered in the findings store (`db_url`, default
    SQLite at OUT/msvol.db); a report already registered changes nothing there.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = BatchSummary()
    if ingest_dicom.looks_like_dicom(input_path):
        jobs = _dicom_jobs(input_path, out_dir, params, rules or protocol.load_protocol(), keep_identifiers, summary)
    else:
        jobs = [(subject_dir.name, functools.partial(bids.load_patient, subject_dir, params.ingest), None)
                for subject_dir in bids.find_subjects(input_path)]
    resources = None
    for position, (name, load, sessions) in enumerate(jobs, 1):
        progress(f"[{position}/{len(jobs)}] {name}")
        added = _new_sessions(out_dir / name, sessions)
        if (out_dir / name).exists() and not force and not added:
            summary.skipped.append(name)
            continue
        keep_previous = None
        if added and not force:  # a new exam of a known patient: redo, and keep the earlier result
            keep_previous = out_dir / "previous" / f"{name}-{dt.datetime.now():%Y%m%dT%H%M%S}"
            progress(f"{name}: new exam(s) {', '.join(sorted(added))}; the earlier result moves to {keep_previous}")
        try:
            patient = load()
            resources = resources or pipeline.Resources.load(model_dir, change_model_dir)
            summary.done.append(pipeline.run_patient(patient, out_dir, params, resources,
                                                     force=force or keep_previous is not None, progress=progress,
                                                     keep_previous=keep_previous))
        except OutputExistsError:
            summary.skipped.append(name)
        except MsvolError as exc:
            summary.set_aside.append((name, str(exc)))
        except Exception:  # an internal error in one subject must not sink the batch
            crash = out_dir / "crashes" / f"{name}-{dt.datetime.now():%Y%m%dT%H%M%S}.txt"
            crash.parent.mkdir(parents=True, exist_ok=True)
            crash.write_text(traceback.format_exc())
            summary.crashed.append((name, crash))
    _register(out_dir, [out_dir / name for name in summary.skipped] + summary.done, db_url, summary)
    return summary


def _register(out_dir: Path, folders: list[Path], db_url: str | None, summary: BatchSummary) -> None:
    """Register the subjects' reports in the findings store. A store that cannot be reached costs a
    warning, not the results: the review commands register what is missing when they open the store."""
    reports = [folder / "report.json" for folder in folders if (folder / "report.json").is_file()]
    if not reports:
        return
    try:
        opened = store.open_store(out_dir, db_url)
    except MsvolError as exc:
        summary.warnings.append(f"reports not registered in the findings store: {exc}")
        return
    try:
        for report in reports:
            try:
                findings.register_report(opened, report)
            except (MsvolError, KeyError, ValueError, TypeError) as exc:
                summary.warnings.append(f"{report}: not registered in the findings store ({exc!r})")
    finally:
        opened.dispose()


def _new_sessions(folder: Path, sessions: frozenset[str] | None) -> set[str]:
    """Usable exams of a DICOM patient that its existing result (folder/report.json) has not seen, neither
    analysed nor refused (a refused exam stays refused: redoing the patient on every run would change nothing)."""
    report = folder / "report.json"
    if sessions is None or not report.is_file():
        return set()
    try:
        model = json.loads(report.read_text())
        done = {timepoint["session"] for timepoint in model["timepoints"]}
        done |= {flag["scope"].removeprefix("exam ").replace("-", "") for flag in model.get("qc_flags", ())
                 if flag["code"] == "exam_refused"}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()  # an unreadable report is left alone: skipped like any existing result
    return set(sessions) - done


def _dicom_jobs(input_path: Path, out_dir: Path, params: Params, rules: protocol.Protocol, keep_identifiers: bool,
                summary: BatchSummary) -> list[tuple[str, Callable[[], Patient], frozenset[str]]]:
    """One job per patient of a DICOM export, named by pseudonym (or sanitised PatientID), with the sessions
    of its exams that pass the header checks (a cron run redoes a patient when one of them is new)."""
    inventory = ingest_dicom.scan([input_path], rules, params.ingest)
    summary.warnings.extend(inventory.skipped)
    registry = None if keep_identifiers else pseudonyms.Registry(out_dir)
    subjects = {}
    for patient_id in inventory.patients:
        try:
            subjects[patient_id] = ingest_dicom.sanitise(patient_id) if registry is None \
                else registry.pseudonym(patient_id)
        except MsvolError as exc:
            summary.set_aside.append(("a patient", str(exc)))
    clashes = {subject for subject, count in collections.Counter(subjects.values()).items() if count > 1}
    jobs = []
    for patient_id, exams in inventory.patients.items():
        subject = subjects.get(patient_id)
        if subject in clashes:  # never let two patients share (or overwrite) one folder
            summary.set_aside.append((f"sub-{subject}", "several PatientIDs reduce to this name under "
                                      "--keep-identifiers; run without it (pseudonyms) for these patients"))
        if subject is None or subject in clashes:
            continue
        usable = frozenset(ingest_dicom.session_name(exam) for exam in exams if exam.refusal is None)
        jobs.append((f"sub-{subject}", functools.partial(ingest_dicom.load_patient, exams, subject, params.ingest,
                                                         pseudonymous=registry is not None), usable))
    return sorted(jobs, key=lambda job: job[0])
