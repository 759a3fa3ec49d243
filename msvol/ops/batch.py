"""Many patients, each exam analysed exactly once, whatever else runs at the same time or dies on the way.

Input is a BIDS dataset (or one sub-* folder) or any folder of DICOM exports (see ingest_dicom).
A run (docs/OPERATIONS.md):
1. finds the exams (ops/exams.py) and records them in the state store (ops/states.py): new ones as
   seen, those quiet for `settle_minutes` as stable;
2. for each patient with work left (a stable exam, a failed one to retry, one whose run died), claims
   the patient (ops/claims.py), checks its states again under the claim, sweeps the staging folders a
   dead run left, runs the pipeline with a heartbeat, and records per exam done, refused or failed;
3. registers every finished report in the findings store (the same store).

Each patient ends as one outcome: done (its folder written), skipped (nothing new; a result from before
the state store counts for the exams its report covers), settling (an exam still changing: left for the
next run), held (another live run holds its claim), set aside (bad input, with the reason), failed
(internal error: a crash file with the traceback under OUT/crashes/; retried by later runs up to
`retries` times) or quarantined (failed 1 + retries times). A new exam of a known patient redoes it
and the earlier result moves to OUT/previous/. Each outcome is reported once, in the summary;
`progress` tells only what is being done, `on_event` receives every state change.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import time
import traceback
from pathlib import Path
from typing import Callable, Literal

from sqlalchemy.exc import IntegrityError

from msvol import pipeline
from msvol.config import BatchSettings, Params
from msvol.errors import ConfigError, InputError, MsvolError, ProtocolError, RegistrationError, SpaceError
from msvol.ingest import dicom as ingest_dicom, protocol
from msvol.ops import claims, events, exams, results, states
from msvol.ops.events import Event
from msvol.review import findings, store as review_store

PSEUDONYMS = "#pseudonyms"  # the claim held while new DICOM patients get their pseudonyms
EXAM_PROBLEMS = (InputError, SpaceError, ProtocolError, RegistrationError)  # the input's fault: refused
Outcome = Literal["done", "skipped", "settling", "held", "set_aside", "failed", "quarantined"]


@dataclasses.dataclass(frozen=True)
class PatientResult:
    """What became of one patient in one run: the small record a scheduler's task returns."""

    subject: str
    outcome: Outcome
    folder: Path | None = None  # done, skipped: OUT/sub-XX
    reason: str | None = None  # skipped, held, set_aside, failed, quarantined
    crash: Path | None = None  # failed, quarantined
    refused: tuple[tuple[str, str], ...] = ()  # (exam, reason) refused in an analysed patient
    settling: tuple[tuple[str, float], ...] = ()  # (exam, minutes since its last change)
    taken_over: str | None = None  # the stale claim this run took over


@dataclasses.dataclass
class BatchSummary:
    done: list[Path] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    set_aside: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (subject folder, reason)
    crashed: list[tuple[str, Path]] = dataclasses.field(default_factory=list)  # (subject folder, crash file)
    warnings: list[str] = dataclasses.field(default_factory=list)  # e.g. a truncated DICOM file skipped
    refused: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (exam, reason)
    settling: list[tuple[str, float]] = dataclasses.field(default_factory=list)  # (exam, minutes quiet)
    held: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (subject, who holds it)
    quarantined: list[tuple[str, Path | None, str]] = dataclasses.field(default_factory=list)  # this run
    taken_over: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (subject, stale claim)
    skip_reasons: dict[str, str] = dataclasses.field(default_factory=dict)
    still_quarantined: list[str] = dataclasses.field(default_factory=list)  # exams quarantined earlier

    def add(self, result: PatientResult) -> None:
        if result.taken_over:
            self.taken_over.append((result.subject, result.taken_over))
        self.refused.extend(result.refused)
        self.settling.extend(result.settling)
        if result.outcome == "done":
            self.done.append(result.folder)
        elif result.outcome == "skipped":
            self.skipped.append(result.subject)
            self.skip_reasons[result.subject] = result.reason
        elif result.outcome == "held":
            self.held.append((result.subject, result.reason))
        elif result.outcome == "set_aside":
            self.set_aside.append((result.subject, result.reason))
        elif result.outcome == "failed":
            self.crashed.append((result.subject, result.crash))
        elif result.outcome == "quarantined":
            self.quarantined.append((result.subject, result.crash, result.reason))

    def counts(self) -> dict[str, int]:
        return {"done": len(self.done), "skipped": len(self.skipped), "settling": len(self.settling),
                "held": len(self.held), "set_aside": len(self.set_aside), "refused": len(self.refused),
                "failed": len(self.crashed), "quarantined": len(self.quarantined)}


def run_batch(input_path: Path, out_dir: Path, params: Params, *, force: bool = False,
              model_dir: Path | None = None, change_model_dir: Path | None = None,
              rules: protocol.Protocol | None = None, keep_identifiers: bool = False,
              progress: pipeline.Progress = lambda message: None, db_url: str | None = None,
              settings: BatchSettings = BatchSettings(),
              on_event: Callable[[Event], None] = lambda event: None, cluster=None) -> BatchSummary:
    """Run every patient found under `input_path` that has work left: a BIDS root, one sub-* folder, or DICOM.

    DICOM patients get a pseudonymous subject id (the link to PatientID stays in OUT/private/)
    unless `keep_identifiers`; `rules` recognise and check their series (default: the standard protocol).
    Exam states, claims and findings live in one store (`db_url`, default SQLite at OUT/msvol.db): every
    report written (or found finished) is registered there. `force` redoes every patient (not only new
    exams). `cluster` (an ops.scheduler.Cluster) runs the patients with work left as Dask tasks; by default
    they run here, one after the other. Raises ConfigError when the store cannot be opened, InputError when
    the input holds nothing.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    opened = open_batch_store(out_dir, db_url)
    owner = claims.Owner.current()
    redact = events.redactor(input_path) if ingest_dicom.looks_like_dicom(input_path) else (lambda text: text)

    def emit(event: Event) -> None:
        # a Dask worker's events name the worker process that made them
        on_event(dataclasses.replace(event, reason=redact(event.reason), run=event.run or owner.token,
                                     host=event.host or owner.host, pid=event.pid or owner.pid))

    summary = BatchSummary()
    try:
        lock = functools.partial(claims.mutex, opened, PSEUDONYMS, owner, 60.0, 300.0)
        found = exams.discover(input_path, out_dir, params, rules or protocol.load_protocol(),
                               keep_identifiers=keep_identifiers, pseudonym_lock=lock)
        summary.warnings.extend(found.warnings)
        summary.set_aside.extend(found.set_aside)
        every = [exam for job in found.jobs for exam in job.exams]
        _, transitions, inserted = states.observe(opened, every, settle_s=settings.settle_minutes * 60,
                                                  retry=settings.retry_exams)
        transitions += results.adopt(opened, found.jobs, inserted, out_dir)
        for change in transitions:
            emit(Event(change.subject, change.state, exam=change.exam, reason=change.reason))
        if cluster is None:
            resources = ModelCache(model_dir, change_model_dir)
            for position, job in enumerate(found.jobs, 1):
                progress(f"[{position}/{len(found.jobs)}] {job.subject}")
                summary.add(process_patient(job, out_dir, params, opened, owner, settings, resources=resources,
                                            force=force, progress=progress, on_event=emit))
        else:
            _run_on_cluster(cluster, found.jobs, out_dir, params, opened, db_url, settings, force,
                            (model_dir, change_model_dir), summary, progress, emit)
        with opened.transaction() as db:
            rows = states.read(db, [exam.exam for exam in every])
        summary.still_quarantined = sorted(exam for exam, row in rows.items() if row.state == "quarantined"
                                           and exam not in {name for name, _, _ in summary.quarantined})
        _register(opened, [out_dir / name for name in summary.skipped] + summary.done, summary)
        emit(Event(None, "summary", counts=summary.counts()))
    finally:
        opened.dispose()
    return summary


def _run_on_cluster(cluster, jobs, out_dir, params, opened, db_url, settings, force, model_dirs, summary, progress,
                    emit) -> None:
    """The patients with work left as Dask tasks (ops/scheduler.py); the others are settled here."""
    from msvol.ops import scheduler

    with opened.transaction() as db:
        rows = states.read(db, [exam.exam for job in jobs for exam in job.exams])
    working = []
    for job in jobs:
        waiting = _waiting(job, rows, force, out_dir)
        if waiting is None:
            working.append(job)
        else:
            summary.add(waiting)
    for result, emitted in scheduler.run_on_dask(cluster, working, out_dir, params, db_url=db_url,
                                                 settings=settings, force=force, model_dirs=model_dirs,
                                                 progress=progress):
        for event in emitted:
            emit(event)
        summary.add(result)


def process_patient(job: exams.PatientJob, out_dir: Path, params: Params, store: review_store.Store,
                    owner: claims.Owner, settings: BatchSettings = BatchSettings(), *,
                    resources: Callable[[], pipeline.Resources], force: bool = False,
                    progress: pipeline.Progress = lambda message: None,
                    on_event: Callable[[Event], None] = lambda event: None) -> PatientResult:
    """Analyse one patient if it has work left, under its claim; the state store is the truth.

    Takes paths, settings and a store, returns a small record: a scheduler may run it in any process
    (a task run twice finds the work done, or the claim held, and changes nothing). `resources` loads the
    models (called only when the pipeline runs).
    """
    with store.transaction() as db:
        rows = states.read(db, [exam.exam for exam in job.exams])
    waiting = _waiting(job, rows, force, Path(out_dir))
    if waiting is not None:
        return waiting
    claim = claims.acquire(store, job.subject, owner, settings.lease_minutes * 60)
    if isinstance(claim, claims.Holder):
        on_event(Event(job.subject, "held", reason=f"claimed by another run: {claim.describe()}"))
        return PatientResult(job.subject, "held", reason=claim.describe())
    try:
        taken_over = None
        if claim.taken_over is not None:
            taken_over = f"stale claim of {claim.taken_over.describe()}"
            on_event(Event(job.subject, "taken_over", reason=taken_over))
        result = _under_claim(job, Path(out_dir), params, store, claim, settings, resources, force, progress,
                              on_event)
        return dataclasses.replace(result, taken_over=taken_over)
    except claims.ClaimLost as exc:
        on_event(Event(job.subject, "held", reason=str(exc)))
        return PatientResult(job.subject, "held", reason=str(exc))
    finally:
        claims.release(store, claim)


def _waiting(job: exams.PatientJob, rows: dict, force: bool, out_dir: Path) -> PatientResult | None:
    """The result for a patient with nothing to do now (skipped or settling), or None when it has work."""
    pending, settling = _plan(job, rows, force)
    if settling:
        return PatientResult(job.subject, "settling", settling=tuple(settling))
    if not pending:
        folder = out_dir / job.subject
        reason = "result exists (use --force to redo)" if folder.exists() else \
            "nothing new: its exams were refused or quarantined by an earlier run (see docs/OPERATIONS.md)"
        return PatientResult(job.subject, "skipped", folder=folder if folder.exists() else None, reason=reason)
    return None


def _plan(job: exams.PatientJob, rows: dict, force: bool) -> tuple[list[str], list[tuple[str, float]]]:
    """(exams to analyse, exams still changing with minutes since their last change)."""
    pending, settling, at = [], [], review_store.now()
    for exam in job.exams:
        state = rows[exam.exam].state if exam.exam in rows else "seen"
        if state == "seen":
            settling.append((exam.exam, max(0.0, (at - exam.last_change).total_seconds() / 60)))
        elif state in ("stable", "failed", *states.WORKING):
            pending.append(exam.exam)
        elif force:
            pending.append(exam.exam)
    return pending, settling


def _under_claim(job, out_dir, params, store, claim, settings, resources, force, progress, on_event) -> PatientResult:
    ids = [exam.exam for exam in job.exams]
    with store.transaction() as db:
        rows = states.read(db, ids)
    waiting = _waiting(job, rows, force, out_dir)  # another run may have finished it since we looked
    if waiting is not None:
        return waiting
    pending, _ = _plan(job, rows, force)
    died = [rows[exam] for exam in pending if rows[exam].state in states.WORKING]
    if died and max(row.attempts for row in died) >= 1 + settings.retries:
        reason = (f"the runs analysing it died {max(row.attempts for row in died)} times (killed, out of memory "
                  f"or the host went down)")
        with claims.guarded(store, claim) as db:
            moved = states.set_state(db, [row.exam for row in died], "quarantined", reason=reason,
                                     only_from=states.WORKING)
        for exam in moved:
            on_event(Event(job.subject, "quarantined", exam=exam, reason=reason))
        return PatientResult(job.subject, "quarantined", reason=reason)
    swept = results.sweep(out_dir, job.subject, claim.taken_over.keep_previous if claim.taken_over else None)
    if swept:
        on_event(Event(job.subject, "swept", reason="left by a dead run: " + ", ".join(swept)))
    final = out_dir / job.subject
    keep_previous = None
    if final.exists() and not force and results.new_sessions(final, job.usable_sessions):
        keep_previous = out_dir / "previous" / f"{job.subject}-{dt.datetime.now():%Y%m%dT%H%M%S}"
        added = ", ".join(sorted(results.new_sessions(final, job.usable_sessions)))
        progress(f"{job.subject}: new exam(s) {added}; the earlier result moves to {keep_previous}")
    with claims.guarded(store, claim) as db:
        claims.note_keep_previous(db, claim, keep_previous and str(keep_previous.relative_to(out_dir)))
        claimed = states.set_state(db, pending, "claimed", run=claim.owner.token)
    for exam in claimed:
        on_event(Event(job.subject, "claimed", exam=exam))
    return _run(job, out_dir, params, store, claim, settings, resources, claimed,
                force=force or final.exists(), keep_previous=keep_previous, progress=progress, on_event=on_event)


def _run(job, out_dir, params, store, claim, settings, resources, claimed, *, force, keep_previous, progress,
         on_event) -> PatientResult:
    """Load, mark running, run the pipeline with a heartbeat, and record the outcome of each claimed exam."""
    fingerprints = {exam.exam: exam.fingerprint for exam in job.exams}
    started = time.monotonic()
    with claims.Heartbeat(store, claim, settings.heartbeat_s) as beat:
        def checked(message: str) -> None:  # between stages: stop when another run took the claim over
            if beat.lost.is_set():
                raise claims.ClaimLost(f"{job.subject}: another run took over this run's claim")
            progress(message)

        with claims.guarded(store, claim) as db:
            states.set_state(db, claimed, "running", only_from=("claimed",), attempts=states.ExamState.attempts + 1)
            attempt = max(row.attempts for row in states.read(db, claimed).values())
        try:
            patient = exams.load_patient(job, params)
            loaded = resources()
            stages = 3 * len(patient.visits) + len(pipeline.interval_pairs(len(patient.visits)))
            for exam in claimed:
                on_event(Event(job.subject, "running", exam=exam, attempt=attempt, stages=stages))
            folder = pipeline.run_patient(patient, out_dir, params, loaded, force=force, progress=checked,
                                          keep_previous=keep_previous)
        except claims.ClaimLost:
            raise
        except MsvolError as exc:
            # bad input is refused until its files change; a model or configuration problem is the run's, not
            # the exams': they wait, with no attempt used, for a run with a working setup
            state = "refused" if isinstance(exc, EXAM_PROBLEMS) else "stable"
            with claims.guarded(store, claim) as db:
                states.set_state(db, claimed, state, reason=_stored(job, str(exc)), only_from=("running",),
                                 attempts=states.ExamState.attempts - int(state == "stable"))
            for exam in claimed:
                on_event(Event(job.subject, state, exam=exam, reason=str(exc)))
            return PatientResult(job.subject, "set_aside", reason=str(exc))
        except Exception as exc:  # an internal error in one patient must not sink the batch
            return _failed(job, out_dir, store, claim, settings, claimed, attempt, exc, time.monotonic() - started,
                           on_event)
    duration = time.monotonic() - started
    analysed, refused_in_report = results.report_sessions(folder)
    refused = []
    with claims.guarded(store, claim) as db:
        for exam in (exam for exam in job.exams if exam.exam in claimed):
            state, reason = "done", None
            if analysed is not None and exam.session not in analysed:  # refused by ingest: a flag of the report
                state = "refused"
                reason = refused_in_report.get(exam.session) or exam.refusal or "not analysed (see the report)"
            moved = states.set_state(db, [exam.exam], state, reason=reason, only_from=("running",),
                                     fingerprints=fingerprints, duration_s=round(duration, 1), crash_file=None)
            if not moved:  # its files changed while it was analysed: analyse it again once it settles
                state, reason = "seen", "its files changed while it was analysed"
                states.set_state(db, [exam.exam], state, reason=reason, only_from=("running",))
            elif state == "refused":
                refused.append((exam.exam, reason))
            on_event(Event(job.subject, state, exam=exam.exam, attempt=attempt, duration_s=round(duration, 1),
                           reason=reason))
    return PatientResult(job.subject, "done", folder=folder, refused=tuple(refused))


def _failed(job, out_dir, store, claim, settings, claimed, attempt, exc, duration, on_event) -> PatientResult:
    """Crash file with the traceback; failed, or quarantined when this was the last try."""
    crash = out_dir / "crashes" / f"{job.subject}-{dt.datetime.now():%Y%m%dT%H%M%S}-attempt{attempt}.txt"
    crash.parent.mkdir(parents=True, exist_ok=True)
    partial = crash.with_name(f".{crash.name}.partial")
    partial.write_text(traceback.format_exc())
    partial.replace(crash)
    state = "quarantined" if attempt >= 1 + settings.retries else "failed"
    reason = f"internal error on try {attempt} of {1 + settings.retries}: {type(exc).__name__}: " \
             f"{str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
    with claims.guarded(store, claim) as db:
        states.set_state(db, claimed, state, reason=_stored(job, reason), only_from=("running",),
                         crash_file=str(crash.relative_to(out_dir)), duration_s=round(duration, 1))
    for exam in claimed:
        on_event(Event(job.subject, state, exam=exam, attempt=attempt, duration_s=round(duration, 1), reason=reason))
    return PatientResult(job.subject, "failed" if state == "failed" else "quarantined", reason=reason, crash=crash)


def open_batch_store(out_dir: Path, db_url: str | None, tries: int = 4) -> review_store.Store:
    """The store of a batch (review.store.open_store), tried again after a pause: two runs started together on a
    new store both create its tables (the migrations), and the slower one fails once, then finds them there."""
    for attempt in range(1, tries + 1):
        try:
            return review_store.open_store(out_dir, db_url)
        except ConfigError:
            if attempt == tries:
                raise
            time.sleep(0.5 * attempt)


def _stored(job: exams.PatientJob, reason: str) -> str:
    """A reason as the store keeps it: without the paths of a DICOM export (often named after the patient)."""
    return events.redactor(job.export_root)(reason) if job.export_root is not None else reason


class ModelCache:
    """The models, loaded on first use and then shared by every patient of the process (call it to get them)."""

    def __init__(self, model_dir: Path | None, change_model_dir: Path | None):
        self._folders, self._loaded = (model_dir, change_model_dir), None

    def __call__(self) -> pipeline.Resources:
        if self._loaded is None:
            self._loaded = pipeline.Resources.load(*self._folders)
        return self._loaded


def _register(opened: review_store.Store, folders: list[Path], summary: BatchSummary) -> None:
    """Register the subjects' reports in the findings store; a report that cannot be registered costs a warning."""
    for report in (folder / "report.json" for folder in folders if (folder / "report.json").is_file()):
        for last_try in (False, True):
            try:
                findings.register_report(opened, report)
                break
            except IntegrityError as exc:  # another run registered it at the same moment: the retry finds it
                if last_try:
                    summary.warnings.append(f"{report}: not registered in the findings store ({exc.orig!r})")
            except (MsvolError, KeyError, ValueError, TypeError) as exc:
                summary.warnings.append(f"{report}: not registered in the findings store ({exc!r})")
                break
