"""Exams found under an input folder, grouped into patients (the jobs of a batch), with their quiet time.

Exam: a BIDS session (sub-XX/ses-YY with an anat/ folder) or a DICOM study (one patient, one day:
ingest_dicom groups series by PatientID and date). Its id is "sub-XX/ses-YY", pseudonymous: for
DICOM, XX is the patient's pseudonym (or sanitised PatientID under --keep-identifiers) and YY the
exam date, YYYYMMDD, as the output folders name them.

Fingerprint: a SHA-256 of the exam's files (path, size, mtime in ns; paths relative to the dataset root or
to the exam's own folder, so hosts that mount the input elsewhere agree): a new, grown or rewritten file
gives a new fingerprint. Last change: the newest mtime among those files, the folders holding them
and their other entries (a file still being copied, a series folder just created); an exam is stable
once its last change is --settle-minutes old. For a BIDS session the subject's sessions.tsv counts as
one of its files (it gives the visit dates).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import hashlib
import os
from pathlib import Path
from typing import Callable, ContextManager

from msvol.config import Params
from msvol.datatypes import Patient
from msvol.errors import MsvolError
from msvol.ingest import bids, dicom as ingest_dicom, protocol, pseudonyms


@dataclasses.dataclass(frozen=True)
class FoundExam:
    exam: str  # "sub-XX/ses-YY"
    subject: str  # "sub-XX"
    session: str  # "YY"
    fingerprint: str
    last_change: dt.datetime  # UTC
    refusal: str | None = None  # why its DICOM headers alone refuse it (ingest then leaves it out)


@dataclasses.dataclass(frozen=True)
class PatientJob:
    """One patient and what a worker needs to analyse it: paths and header facts, no pixel data."""

    subject: str  # "sub-XX", the output folder's name and the claim's key
    exams: tuple[FoundExam, ...]
    bids_folder: Path | None = None  # BIDS input: the sub-XX folder
    dicom_exams: tuple[ingest_dicom.Exam, ...] = ()  # DICOM input: the patient's exams by date
    pseudonymous: bool = True
    export_root: Path | None = None  # DICOM input: the export, whose paths the store and the log leave out

    @property
    def usable_sessions(self) -> frozenset[str]:
        """Sessions the pipeline can analyse, as far as the headers tell."""
        return frozenset(exam.session for exam in self.exams if exam.refusal is None)


@dataclasses.dataclass
class Discovery:
    jobs: list[PatientJob]
    warnings: list[str]  # e.g. a truncated DICOM file skipped
    set_aside: list[tuple[str, str]]  # (name, reason): patients that cannot become a job


def load_patient(job: PatientJob, params: Params) -> Patient:
    """Read and check every visit of the job's patient (raises InputError naming each problem)."""
    if job.bids_folder is not None:
        return bids.load_patient(job.bids_folder, params.ingest)
    return ingest_dicom.load_patient(job.dicom_exams, job.subject.removeprefix("sub-"), params.ingest,
                                     pseudonymous=job.pseudonymous)


def discover(input_path: Path, out_dir: Path, params: Params, rules: protocol.Protocol, *,
             keep_identifiers: bool = False,
             pseudonym_lock: Callable[[], ContextManager] = contextlib.nullcontext) -> Discovery:
    """Every patient under `input_path` (a BIDS root, one sub-* folder, or DICOM exam folders), by name.

    New DICOM patients get a pseudonym from OUT/private/pseudonyms.tsv under `pseudonym_lock` (so two
    runs that meet a new patient at once give it one pseudonym). Raises InputError when the input is
    not a folder or holds neither BIDS subjects nor DICOM images.
    """
    if ingest_dicom.looks_like_dicom(input_path):
        return _dicom(Path(input_path), Path(out_dir), params, rules, keep_identifiers, pseudonym_lock)
    discovery = Discovery([], [], [])
    for subject_dir in bids.find_subjects(input_path):
        sessions = sorted(path for path in subject_dir.glob("ses-*") if (path / "anat").is_dir())
        if not sessions:
            discovery.set_aside.append((subject_dir.name, f"{subject_dir}: no ses-*/anat folders found"))
            continue
        table = subject_dir / f"{subject_dir.name}_sessions.tsv"
        exams = []
        for session_dir in sessions:
            files = [path for path in session_dir.rglob("*") if path.is_file()] + [table] * table.is_file()
            folders = [session_dir, *(path for path in session_dir.rglob("*") if path.is_dir())]
            exams.append(_found(subject_dir.name, session_dir.name.removeprefix("ses-"), files, folders,
                                subject_dir.parent))
        discovery.jobs.append(PatientJob(subject_dir.name, tuple(exams), bids_folder=subject_dir))
    return discovery


def _dicom(input_path: Path, out_dir: Path, params: Params, rules: protocol.Protocol, keep_identifiers: bool,
           pseudonym_lock) -> Discovery:
    """One job per patient of a DICOM export, named by pseudonym (or sanitised PatientID)."""
    inventory = ingest_dicom.scan([input_path], rules, params.ingest)
    discovery = Discovery([], list(inventory.skipped), [])
    subjects = {}
    with pseudonym_lock():
        registry = None if keep_identifiers else pseudonyms.Registry(out_dir)  # read under the lock
        for patient_id in inventory.patients:
            try:
                subjects[patient_id] = ingest_dicom.sanitise(patient_id) if registry is None \
                    else registry.pseudonym(patient_id)
            except MsvolError as exc:
                discovery.set_aside.append(("a patient", str(exc)))
    clashes = {subject for subject, count in collections.Counter(subjects.values()).items() if count > 1}
    for patient_id, patient_exams in inventory.patients.items():
        subject = subjects.get(patient_id)
        if subject in clashes:  # never let two patients share (or overwrite) one folder
            discovery.set_aside.append((f"sub-{subject}", "several PatientIDs reduce to this name under "
                                        "--keep-identifiers; run without it (pseudonyms) for these patients"))
        if subject is None or subject in clashes:
            continue
        exams = []
        for exam in patient_exams:
            files = sorted({path for series in exam.series for path in series.files})
            folders = sorted({path.parent for path in files} | {exam.folder})
            found = _found(f"sub-{subject}", ingest_dicom.session_name(exam), files, folders, exam.folder,
                           siblings=True)
            exams.append(dataclasses.replace(found, refusal=exam.refusal))
        discovery.jobs.append(PatientJob(f"sub-{subject}", tuple(exams), dicom_exams=patient_exams,
                                         pseudonymous=registry is not None, export_root=input_path))
    discovery.jobs.sort(key=lambda job: job.subject)
    return discovery


def _found(subject: str, session: str, files: list[Path], folders: list[Path], root: Path, *,
           siblings: bool = False) -> FoundExam:
    """The exam's fingerprint (its own files) and last change (those files, their folders and, with
    `siblings`, every other entry of those folders: a file still arriving may not be readable yet)."""
    digest, newest = hashlib.sha256(), 0
    for path in files:
        try:
            status = path.stat()
        except FileNotFoundError:  # removed while we looked: the next run sees the new state
            continue
        digest.update(f"{_relative(path, root)}\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
        newest = max(newest, status.st_mtime_ns)
    for folder in folders:
        with contextlib.suppress(FileNotFoundError):
            newest = max(newest, folder.stat().st_mtime_ns)
            if siblings:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        with contextlib.suppress(FileNotFoundError):
                            newest = max(newest, entry.stat(follow_symlinks=False).st_mtime_ns)
    last_change = dt.datetime.fromtimestamp(newest / 1e9, dt.timezone.utc)
    return FoundExam(f"{subject}/ses-{session}", subject, session, digest.hexdigest(), last_change)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
