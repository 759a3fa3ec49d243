"""The output folder's side of a batch: what an existing result covers, and what a dead run left behind.

- report_sessions / new_sessions: which exams a result's report.json analysed or refused, so a new exam
  of a known patient redoes it (and the earlier result is kept under OUT/previous/).
- adopt: a result written before the state store (or into an OUT given a new --db) counts for the exams
  its report covers.
- sweep: under the patient's claim, the staging folders of a dead run are removed and its interrupted
  swap (pipeline._write_atomically) is undone or finished, so the rerun gives the outputs of a run that
  was never interrupted.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

from msvol import pipeline
from msvol.ops import exams, states
from msvol.review import store as review_store


def sweep(out_dir: Path, subject: str, keep_previous: str | None = None) -> list[str]:
    """Remove what a dead run left beside OUT/sub-XX, and finish or undo its interrupted swap.

    Call only while holding the patient's claim (nobody else may be writing it). Staging folders are
    deleted (their patient is redone). A retired result (the swap renames OUT/sub-XX away, renames the new
    one in, then deletes or keeps the old one) goes back to OUT/sub-XX when that is missing, so the rerun
    repeats the whole swap; otherwise it goes where the dead run meant it to (`keep_previous`, relative to
    OUT), to OUT/previous/ when a reviewer worked on it, or is deleted. Returns the names handled.
    """
    final, handled = Path(out_dir) / subject, []
    for staging in sorted(final.parent.glob(f".{subject}{pipeline.STAGING}*")):
        shutil.rmtree(staging)
        handled.append(staging.name)
    for retired in sorted(final.parent.glob(f".{subject}{pipeline.RETIRED}*"), key=lambda path: -path.stat().st_mtime):
        handled.append(retired.name)
        if not final.exists():
            retired.rename(final)
            continue
        target = Path(out_dir) / keep_previous if keep_previous else None
        if target is None and any((retired / name).exists() for name in ("final", "review")):
            target = final.parent / "previous" / f"{subject}-{dt.datetime.now():%Y%m%dT%H%M%S}"
        if target is None:
            shutil.rmtree(retired)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            retired.rename(target if not target.exists() else target.with_name(f"{target.name}-{retired.name}"))
    return handled


def report_sessions(folder: Path) -> tuple[set[str] | None, dict[str, str]]:
    """(sessions a result's report.json analysed, {session: reason} of the exams it refused); (None, {}) when
    the report cannot be read."""
    try:
        model = json.loads((folder / "report.json").read_text())
        analysed = {timepoint["session"] for timepoint in model["timepoints"]}
        refused = {flag["scope"].removeprefix("exam ").replace("-", ""): flag["message"]
                   for flag in model.get("qc_flags", ()) if flag["code"] == "exam_refused"}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, {}
    return analysed, refused


def new_sessions(folder: Path, sessions: frozenset[str]) -> set[str]:
    """Usable exams that an existing result (folder/report.json) has not seen, neither analysed nor refused."""
    analysed, refused = report_sessions(folder)
    return set() if analysed is None else set(sessions) - analysed - set(refused)


def adopt(store: review_store.Store, jobs: list[exams.PatientJob], inserted: set[str],
           out_dir: Path) -> list[states.Transition]:
    """Exams seen for the first time whose patient already has a result (written before the state store
    existed, or into an OUT given a new --db): the exams its report covers are done (or refused), an
    unreadable report covers all (left alone, as before: --force redoes it)."""
    transitions = []
    for job in jobs:
        new = [exam for exam in job.exams if exam.exam in inserted]
        if not new or not (out_dir / job.subject).exists():
            continue
        analysed, refused = report_sessions(out_dir / job.subject)
        with store.transaction() as db:
            for exam in new:
                if analysed is None or exam.session in analysed:
                    state, reason = "done", "result of an earlier run"
                elif exam.session in refused:
                    state, reason = "refused", refused[exam.session]
                else:
                    continue
                if states.set_state(db, [exam.exam], state, reason=reason, only_from=("seen", "stable")):
                    transitions.append(states.Transition(exam.exam, job.subject, state, reason))
    return transitions
