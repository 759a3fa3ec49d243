"""Sign-off: the confirmed result, as OUT/sub-XX/final/report.json, report.html, report.pdf (and, for DICOM
input, a DICOM SEG of the confirmed lesions and a DICOM SR), versioned.

A subject can be signed off when every new and enlarging finding has a decision. The final report
holds the automated and the confirmed figures side by side. Confirmed counts are the automated
counts with each decided finding moved to its decided class (a rejected one leaves its class, a
reclassified one changes class) and each added lesion counted in its class.

A change after sign-off is an amendment: signing again (with a reason) writes version N+1 into
final/ and moves version N to final/vN/; nothing signed is ever deleted.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

from sqlalchemy import select

from msvol.errors import InputError, ReviewStateError
from msvol.outputs import final as final_output
from msvol.review import final_dicom
from msvol.review.decisions import bump_version, reviewer_name, subject_version
from msvol.review.findings import MUST_DECIDE, FindingView, current_run, read_report, subject_findings, subject_name
from msvol.review.store import AnalysisRun, AuditEntry, SignOff, Store, Subject, now

SCHEMA_VERSION = "final-1.0"
DECISION_WORDS = {None: "pending", "confirm": "confirmed", "reject": "rejected", "reclassify": "reclassified",
                  "edit_mask": "mask_edited", "add": "added", "accept": "accepted", "overrule": "overruled"}


def sign_off(store: Store, subject: str, *, reviewer: str, amend_reason: str | None = None,
             expected_version: int | None = None) -> dict:
    """Sign the subject off; returns the final report model (also written to OUT/sub-XX/final/).

    Raises ReviewStateError when a new or enlarging finding is undecided, when nothing changed
    since the last sign-off, or when an amendment comes without a reason.
    """
    reviewer = reviewer_name(reviewer)
    with store.transaction() as db:
        run = current_run(db, subject)
        views = subject_findings(db, subject)
        undecided = [view.finding.key for view in views
                     if view.finding.automated_status in MUST_DECIDE and view.decision is None]
        if undecided:
            raise ReviewStateError(
                f"{subject_name(subject)} cannot be signed off: {len(undecided)} new or enlarging finding(s) have no "
                f"decision ({', '.join(undecided)}); decide each with `msvol decide` first")
        previous = db.scalar(select(SignOff).where(SignOff.run_id == run.id)
                             .order_by(SignOff.version.desc()).limit(1))
        _check_amendment(subject, previous, db, amend_reason)
        version = bump_version(db, subject, expected_version)
        signed_at = now()
        final = build_final(store, run, views, reviewer=reviewer, signed_at=signed_at,
                            version=1 if previous is None else previous.version + 1,
                            supersedes=None if previous is None else previous.version, amend_reason=amend_reason)
        row = db.get(Subject, subject)
        reading_seconds = None if row.reading_started_at is None else (signed_at - row.reading_started_at).total_seconds()
        row.reading_started_at = None  # an amendment's reading is timed anew
        db.add(SignOff(subject_id=subject, run_id=run.id, version=final["version"], subject_version=version,
                       reviewer=reviewer, at=signed_at, amendment_reason=amend_reason, reading_seconds=reading_seconds,
                       summary={interval["from_session"] + "-" + interval["to_session"]: interval["confirmed"]
                                for interval in final["intervals"]}))
        db.add(AuditEntry(at=signed_at, actor=reviewer, action="amend" if previous else "signoff",
                          subject_id=subject, finding_key=None,
                          before=None if previous is None else {"version": previous.version},
                          after={"version": final["version"], "statement": final["signed"]["statement"]},
                          reason=amend_reason))
        write_final(store, subject, final)
        return final


def _check_amendment(subject: str, previous: SignOff | None, db, amend_reason: str | None) -> None:
    if previous is None:
        if amend_reason:
            raise ReviewStateError(f"{subject_name(subject)} has not been signed off yet: there is nothing to amend; "
                                   f"sign it off without --amend")
        return
    if subject_version(db, subject) == previous.subject_version:
        raise ReviewStateError(
            f"{subject_name(subject)} is already signed off (version {previous.version}, {previous.reviewer}, "
            f"{previous.at:%Y-%m-%d %H:%M} UTC) and nothing changed since. To amend it, record the changed "
            f"decision with `msvol decide`, then `msvol signoff ... --amend REASON`")
    if not (amend_reason or "").strip():
        raise ReviewStateError(
            f"{subject_name(subject)} was signed off as version {previous.version}; decisions changed since. "
            f"Signing again amends it: give the reason with --amend REASON")


def build_final(store: Store, run: AnalysisRun, views: list[FindingView], *, reviewer: str, signed_at,
                version: int, supersedes: int | None, amend_reason: str | None) -> dict:
    """The final report model (the contract of msvol.outputs.final)."""
    report, digest = read_report(store.out_dir / run.report_path)
    if digest != run.report_sha256:
        raise InputError(f"{store.out_dir / run.report_path}: the automated report changed after it was registered "
                         f"(sha256 {digest[:12]} != {run.report_sha256[:12]}); run `msvol run` again to register it")
    when = signed_at.strftime("%Y-%m-%d %H:%M UTC")
    return {
        "schema_version": SCHEMA_VERSION, "subject": report["subject"], "version": version,
        "supersedes_version": supersedes, "amendment_reason": amend_reason,
        "signed": {"reviewer": reviewer, "at": signed_at.isoformat(timespec="seconds"),
                   "statement": f"confirmed by {reviewer} on {when}"},
        "automated_report": {"generated": report.get("generated"), "software": report.get("software"),
                             "sha256": digest, "path": run.report_path},
        "disclaimer": report.get("disclaimer"), "timepoints": report["timepoints"],
        "intervals": [_interval(interval, views) for interval in report["intervals"]],
        "qc_flags": report.get("qc_flags", []),
    }


def _interval(interval: dict, views: list[FindingView]) -> dict:
    mine = [view for view in views if (view.finding.from_session, view.finding.to_session)
            == (interval["from_session"], interval["to_session"])]
    lesions = [view for view in mine if view.finding.kind != "pbvc"]
    pbvc = next(view for view in mine if view.finding.kind == "pbvc")
    automated_counts = dict(interval["counts"])
    confirmed_counts = dict(automated_counts)
    for view in lesions:
        if view.finding.automated_status in confirmed_counts:
            confirmed_counts[view.finding.automated_status] -= 1
        if view.current_status in confirmed_counts:
            confirmed_counts[view.current_status] += 1
    findings = [_finding(view) for view in lesions]
    pbvc_word = DECISION_WORDS[pbvc.decision.action if pbvc.decision else None]
    keep_pbvc = pbvc_word != "overruled"
    return {
        "from_session": interval["from_session"], "to_session": interval["to_session"], "years": interval["years"],
        "automated": {"counts": automated_counts, **_volumes(lesions, confirmed=False),
                      "pbvc_percent": interval["pbvc_percent"],
                      "pbvc_annualized_percent": interval["pbvc_annualized_percent"]},
        "confirmed": {"counts": confirmed_counts, **_volumes(lesions, confirmed=True),
                      "pbvc_percent": interval["pbvc_percent"] if keep_pbvc else None,
                      "pbvc_annualized_percent": interval["pbvc_annualized_percent"] if keep_pbvc else None},
        "pbvc_decision": {"decision": pbvc_word,
                          "reason": pbvc.decision.reason if pbvc.decision else None,
                          "reviewer": pbvc.decision.reviewer if pbvc.decision else None,
                          "at": pbvc.decision.at.isoformat(timespec="seconds") if pbvc.decision else None},
        "findings": findings, "qc_flags": interval.get("qc_flags", []),
    }


def _volumes(lesions: list[FindingView], *, confirmed: bool) -> dict:
    totals = {"new_volume_mm3": 0.0, "enlarging_volume_mm3": 0.0}
    for view in lesions:
        status = view.current_status if confirmed else view.finding.automated_status
        if status in ("new", "enlarging"):
            volume = view.as_dict()["followup_volume_mm3"] if confirmed else view.finding.followup_volume_mm3
            totals[f"{status}_volume_mm3"] += volume or 0.0
    return {name: round(value, 1) for name, value in totals.items()}


def _finding(view: FindingView) -> dict:
    shown, decision = view.as_dict(), view.decision
    return {
        "id": view.finding.key, "kind": view.finding.kind, "automated_status": view.finding.automated_status,
        "confirmed_status": view.current_status, "decision": DECISION_WORDS[decision.action if decision else None],
        "reason": decision.reason if decision else None, "note": decision.note if decision else None,
        "reviewer": decision.reviewer if decision else None,
        "at": decision.at.isoformat(timespec="seconds") if decision else None,
        "confidence": view.finding.confidence, "centroid_mm": view.finding.centroid_mm,
        "baseline_volume_mm3": view.finding.baseline_volume_mm3, "followup_volume_mm3": shown["followup_volume_mm3"],
        "thumbnail": (view.finding.details or {}).get("thumbnail"), "mask": decision.mask_path if decision else None,
    }


def write_final(store: Store, subject: str, final: dict) -> Path:
    """Write final/ for `final["version"]`: staged completely first; an earlier version moves to final/vN/."""
    folder = store.out_dir / subject_name(subject)
    target = folder / "final"
    staging = folder / f".final-{final['version']}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        thumbnails = {}
        for interval in final["intervals"]:
            for finding in interval["findings"]:
                if finding["thumbnail"] and (folder / finding["thumbnail"]).is_file():
                    thumbnails[finding["id"]] = base64.b64encode((folder / finding["thumbnail"]).read_bytes()).decode()
        html = final_output.render_final_html(final, thumbnails)
        (staging / "report.json").write_text(json.dumps(final, indent=2) + "\n")
        (staging / "report.html").write_text(html)
        (staging / "report.pdf").write_bytes(final_output.render_final_pdf(html))
        previous = target if target.exists() and final["supersedes_version"] is not None else None
        final_dicom.write_final_dicom(store.out_dir, subject, final, staging, previous)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists() and final["supersedes_version"] is not None:
        kept = target / f"v{final['supersedes_version']}"
        kept.mkdir(exist_ok=False)
        for item in sorted(target.iterdir()):
            if item != kept and not (item.is_dir() and item.name.startswith("v") and item.name[1:].isdigit()):
                item.rename(kept / item.name)
    target.mkdir(exist_ok=True)
    for item in sorted(staging.iterdir()):
        item.rename(target / item.name)
    staging.rmdir()
    return target


def start_reading(store: Store, subject: str) -> dict:
    """Mark that a reviewer opened the subject (the review page does, once per reading); sign-off stores the
    time from here as the reading time. A reading already under way keeps its start."""
    with store.transaction() as db:
        current_run(db, subject)  # an unknown subject is an error
        row = db.get(Subject, subject)
        if row.reading_started_at is None:
            row.reading_started_at = now()
        return {"subject": subject, "reading_started_at": row.reading_started_at.isoformat(timespec="seconds")}

