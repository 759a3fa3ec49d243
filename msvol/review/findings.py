"""Automated reports -> the findings store: registration, and the findings of a subject with their decisions.

A report is registered once: its SHA-256 identifies the analysis run, so registering the same
report.json again changes nothing (and returns the run already there). Findings are one per new,
enlarging, shrinking and resolved lesion of each interval (key "<from>-<to>:L<lesion id>") and one
per interval for the PBVC ("<from>-<to>:PBVC"); lesions a reviewer adds get "<from>-<to>:A<n>".
The keys follow from the report, so the same report always gives the same findings.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from msvol.errors import InputError, UnknownIdError
from msvol.review.store import AnalysisRun, AuditEntry, Decision, Finding, SessionRow, SignOff, Store, Subject, now

LESION_FINDINGS = ("new", "enlarging", "shrinking", "resolved", "possible_new")
MUST_DECIDE = ("new", "enlarging")  # sign-off needs a decision on every one of these
# what a lesion finding keeps of report.json beyond its volumes (subtraction_only: no model confidence, see report.py)
LESION_DETAILS = ("merged", "split", "confluent", "subtraction_only")


def interval_key(from_session: str, to_session: str) -> str:
    return f"{from_session}-{to_session}"


def subject_name(subject: str) -> str:
    """"01" -> "sub-01" (the folder under OUT)."""
    return subject if subject.startswith("sub-") else f"sub-{subject}"


def subject_id(subject: str) -> str:
    """"sub-01" or "01" -> "01" (the store's key; report.json's `subject`)."""
    return subject.removeprefix("sub-")


def read_report(path: Path) -> tuple[dict, str]:
    """The report model and the SHA-256 of its bytes."""
    try:
        data = Path(path).read_bytes()
        return json.loads(data), hashlib.sha256(data).hexdigest()
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no automated report here; run `msvol run` first") from exc
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the automated report ({exc})") from exc


def register_report(store: Store, report_path: Path) -> tuple[int, bool]:
    """Register report.json (its subject, sessions, analysis run and findings); (run id, newly added).

    A report already registered changes nothing. The audit log records each registration.
    """
    report, digest = read_report(report_path)
    subject = report["subject"]
    with store.transaction() as db:
        existing = db.scalar(select(AnalysisRun).where(AnalysisRun.subject_id == subject,
                                                       AnalysisRun.report_sha256 == digest))
        if existing is not None:
            return existing.id, False
        at = now()
        if db.get(Subject, subject) is None:
            db.add(Subject(id=subject, created_at=at, version=0))
            db.flush()
        known = set(db.scalars(select(SessionRow.session).where(SessionRow.subject_id == subject)))
        for timepoint in report["timepoints"]:
            if timepoint["session"] not in known:
                db.add(SessionRow(subject_id=subject, session=timepoint["session"],
                                  date=dt.date.fromisoformat(timepoint["date"])))
        provenance = report.get("provenance", {})
        run = AnalysisRun(subject_id=subject, report_sha256=digest,
                          report_path=str(Path(report_path).resolve().relative_to(store.out_dir.resolve())),
                          generated=report.get("generated", ""), msvol_version=report["software"]["version"],
                          params_hash=report.get("params_hash", ""), model_versions=provenance.get("models", {}),
                          input_hashes=provenance.get("inputs", {}), registered_at=at)
        db.add(run)
        db.flush()
        rows = list(_findings_of(report, run, at))
        db.add_all(rows)
        db.add(AuditEntry(at=at, actor="msvol", action="register", subject_id=subject, finding_key=None,
                          before=None, after={"report": run.report_path, "sha256": digest, "findings": len(rows)},
                          reason=None))
        return run.id, True


def _findings_of(report: dict, run: AnalysisRun, at: dt.datetime):
    for interval in report["intervals"]:
        prefix = interval_key(interval["from_session"], interval["to_session"])
        thumbnails = interval.get("files", {}).get("thumbnails", {})
        common = dict(run_id=run.id, subject_id=run.subject_id, from_session=interval["from_session"],
                      to_session=interval["to_session"], created_by="msvol", created_at=at)
        for lesion in interval["lesions"]:
            if lesion["status"] in LESION_FINDINGS:
                yield Finding(**common, key=f"{prefix}:L{lesion['id']}", kind="lesion", lesion_id=lesion["id"],
                              automated_status=lesion["status"], baseline_volume_mm3=lesion["baseline_volume_mm3"],
                              followup_volume_mm3=lesion["followup_volume_mm3"], centroid_mm=lesion["centroid_mm"],
                              confidence=lesion.get("confidence"),
                              details={name: lesion.get(name) for name in LESION_DETAILS}
                              | {"thumbnail": thumbnails.get(str(lesion["id"]))})
        yield Finding(**common, key=f"{prefix}:PBVC", kind="pbvc", lesion_id=None, automated_status=None,
                      baseline_volume_mm3=None, followup_volume_mm3=None, centroid_mm=None, confidence=None,
                      details={name: interval.get(name) for name in (
                          "years", "pbvc_percent", "pbvc_annualized_percent", "pbvc_beyond_pathological_cutoff",
                          "alignment_correlation", "qc_flags")})


@dataclass(frozen=True)
class FindingView:
    """A finding with its current decision (None: pending), as the CLI and the API show it."""

    finding: Finding
    decision: Decision | None

    @property
    def current_status(self) -> str | None:
        """The finding's class now: the automated one until a decision changes it; None once rejected."""
        if self.decision is None:
            return self.finding.automated_status
        return self.decision.status

    def as_dict(self) -> dict:
        finding, decision = self.finding, self.decision
        return {
            "id": finding.key, "kind": finding.kind, "interval": interval_key(finding.from_session,
                                                                              finding.to_session),
            "class": finding.automated_status, "current_class": self.current_status,
            "confidence": finding.confidence, "centroid_mm": finding.centroid_mm,
            "baseline_volume_mm3": finding.baseline_volume_mm3,
            "followup_volume_mm3": decision.volume_mm3 if decision is not None and decision.volume_mm3 is not None
            else finding.followup_volume_mm3,
            "details": finding.details,
            "decision": None if decision is None else {
                "action": decision.action, "status": decision.status, "reason": decision.reason,
                "note": decision.note, "reviewer": decision.reviewer, "at": decision.at.isoformat(),
                "mask": decision.mask_path},
        }


def current_run(db: Session, subject: str) -> AnalysisRun:
    """The newest registered analysis run of a subject."""
    run = db.scalar(select(AnalysisRun).where(AnalysisRun.subject_id == subject)
                    .order_by(AnalysisRun.id.desc()).limit(1))
    if run is None:
        known = ", ".join(subject_name(name) for name in db.scalars(select(Subject.id).order_by(Subject.id)))
        raise UnknownIdError(f"unknown subject {subject_name(subject)}; subjects in this store: {known or 'none'}")
    return run


def subject_findings(db: Session, subject: str) -> list[FindingView]:
    """Every finding of the subject's current run with its newest decision, in key order
    (lesions of each interval by id, then added ones, then the PBVC)."""
    run = current_run(db, subject)
    findings = db.scalars(select(Finding).where(Finding.run_id == run.id)).all()
    latest: dict[int, Decision] = {}
    for decision in db.scalars(select(Decision).where(Decision.finding_id.in_([f.id for f in findings]))
                               .order_by(Decision.id)):
        latest[decision.finding_id] = decision
    order = {"lesion": 0, "added": 1, "pbvc": 2}
    return sorted((FindingView(finding, latest.get(finding.id)) for finding in findings),
                  key=lambda view: (view.finding.from_session, view.finding.to_session, order[view.finding.kind],
                                    view.finding.lesion_id or 0, view.finding.key))


def find(db: Session, subject: str, key: str) -> FindingView:
    views = subject_findings(db, subject)
    for view in views:
        if view.finding.key == key:
            return view
    examples = ", ".join(view.finding.key for view in views[:5])
    raise UnknownIdError(f"{subject_name(subject)} has no finding {key!r}; list them with `msvol findings OUT "
                     f"--subject {subject_name(subject)}` (e.g. {examples})")


def register_all(store: Store) -> int:
    """Register every OUT/sub-*/report.json not yet in the store; how many were new."""
    return sum(register_report(store, path)[1] for path in sorted(store.out_dir.glob("sub-*/report.json")))


def review_status(db: Session, subject: str) -> str:
    """Of the current analysis run: pending (no decision yet), in review, signed (the newest sign-off covers
    every decision), or "in review (signed vN)" when decisions changed after sign-off N."""
    run = current_run(db, subject)
    version = db.get(Subject, subject).version
    signed = db.scalar(select(SignOff).where(SignOff.run_id == run.id).order_by(SignOff.version.desc()).limit(1))
    if signed is not None:
        return "signed" if signed.subject_version == version else f"in review (signed v{signed.version})"
    decided = db.scalar(select(Decision.id).join(Finding, Decision.finding_id == Finding.id)
                        .where(Finding.run_id == run.id).limit(1))
    return "pending" if decided is None else "in review"


def listing(store: Store, subject: str | None = None) -> list[dict]:
    """Per subject (one, or all): version, review status and every finding (`FindingView.as_dict`)."""
    with store.transaction() as db:
        subjects = [subject] if subject is not None else list(db.scalars(select(Subject.id).order_by(Subject.id)))
        result = []
        for name in subjects:
            views = subject_findings(db, name)  # raises InputError for an unknown subject
            sessions = db.scalars(select(SessionRow).where(SessionRow.subject_id == name).order_by(SessionRow.date))
            signed = db.scalar(select(SignOff).where(SignOff.run_id == current_run(db, name).id)
                               .order_by(SignOff.version.desc()).limit(1))
            result.append({"subject": name, "version": db.get(Subject, name).version,
                           "status": review_status(db, name),
                           "sessions": [{"session": row.session, "date": row.date.isoformat()} for row in sessions],
                           "signed": None if signed is None else {
                               "version": signed.version, "reviewer": signed.reviewer,
                               "at": signed.at.isoformat(timespec="seconds"), "reading_seconds": signed.reading_seconds},
                           "findings": [view.as_dict() for view in views]})
        return result


def audit_trail(store: Store, subject: str | None = None) -> list[dict]:
    """The audit log, oldest first (one subject's, or all)."""
    with store.transaction() as db:
        if subject is not None:
            current_run(db, subject)  # an unknown subject is an error, not an empty trail
        query = select(AuditEntry).order_by(AuditEntry.id)
        if subject is not None:
            query = query.where(AuditEntry.subject_id == subject)
        return [{"at": entry.at.isoformat(timespec="seconds"), "actor": entry.actor, "action": entry.action,
                 "subject": entry.subject_id, "finding": entry.finding_key, "before": entry.before,
                 "after": entry.after, "reason": entry.reason} for entry in db.scalars(query)]
