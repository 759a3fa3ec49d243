"""Cohort tables from the reports in an output folder: what `msvol cohort OUT` reads and computes.

Every OUT/sub-*/report.json (schema 1.x, msvol.outputs.report) is read; where the subject was signed
off and OUT/sub-*/final/report.json (msvol.outputs.final) signs that same analysis run (its
`automated_report.sha256` is the SHA-256 of report.json), the confirmed figures replace the automated
ones. Vocabulary of the rows:

- source: "automated" (report.json) or "confirmed" (final/report.json; `signoff_version` is its version).
  A final report that signs an earlier analysis run is not used; a note says so.
- consecutive interval: between visits next to each other in date order; baseline_to_latest: first to
  last visit. The pipeline writes both; with two visits they are one interval.
- a patient's counts (new, enlarging lesions) and follow-up years sum the consecutive intervals (the
  baseline-to-latest interval would count each lesion twice); a patient's annualised PBVC is that of
  the baseline-to-latest interval (one registration over the whole follow-up).
- lesion finding: a new, enlarging, shrinking or resolved lesion of an interval (the review's findings),
  or one the reader added; stable lesions are counted in the interval rows only.
- the MRI parts of NEDA-3 and NEDA-4 (config.COHORT_MEASURES): "MRI activity-free" and "MRI
  activity-free and atrophy within the cut-off"; never called NEDA.

A report that cannot be read is set aside with its path and reason; the others still make the cohort.
Nothing identifying is copied: no reviewer names, no free-text notes (subjects are pseudonymous ids).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import shutil
import socket
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from msvol import __version__
from msvol.config import COHORT_MEASURES, AtrophyParams, CohortParams
from msvol.errors import InputError
from msvol.ops import cohort_page, cohort_parse, cohort_stats, cohort_tables
from msvol.ops.cohort_rows import interval_rows, lesion_rows, patient_row, visit_rows

STAGING_PREFIX = ".cohort-partial-"
CUTOFF_FIELD = "pathological_annualized_pbvc_percent"  # of AtrophyParams: the one atrophy cut-off msvol uses


class SubjectError(InputError):
    """One subject's report (or final report) cannot be used: `path` (relative to OUT) and `reason`."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


@dataclass(frozen=True)
class Skipped:
    """A subject left out of the cohort: its file (relative to OUT) and why."""

    path: str
    reason: str


@dataclass
class Cohort:
    """The rows of the four tables (dicts keyed by column name, msvol.ops.cohort_tables), and what was read."""

    visits: list[dict] = field(default_factory=list)
    intervals: list[dict] = field(default_factory=list)
    lesions: list[dict] = field(default_factory=list)
    patients: list[dict] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reports: dict = field(default_factory=dict)  # versions, models and parameters found in the reports
    summary: dict = field(default_factory=dict)


def build_cohort(out_dir: Path, *, cutoff_percent: float, params: CohortParams) -> Cohort:
    """Read every report of OUT into cohort rows and the cohort summary.

    Parameters
    ----------
    out_dir : OUT of `msvol run`.
    cutoff_percent : the pathological annualised PBVC (%/year; a value <= it is beyond the cut-off).
    params : the cohort measures' thresholds (config.CohortParams).

    Returns
    -------
    Cohort : rows sorted by subject; `skipped` lists the reports set aside and why.

    Raises
    ------
    InputError : OUT is not a folder, holds no sub-*/report.json, or none of them can be read.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise InputError(f"{out_dir}: not a folder; give OUT of `msvol run`")
    folders = sorted(path for path in out_dir.glob("sub-*") if path.is_dir())
    reports = [folder / "report.json" for folder in folders if (folder / "report.json").is_file()]
    if not reports:
        raise InputError(f"{out_dir}: no sub-*/report.json found; run `msvol run INPUT --out {out_dir}` first")
    cohort = Cohort(skipped=[Skipped(f"{folder.name}/report.json", "no report.json: not analysed, or set aside "
                                                                    "by `msvol run`")
                             for folder in folders if not (folder / "report.json").is_file()])
    facts = []
    for report_path in reports:
        try:
            subject = read_subject(report_path, cutoff_percent=cutoff_percent, params=params)
        except SubjectError as error:
            cohort.skipped.append(Skipped(error.path, error.reason))
            continue
        cohort.visits += subject["visits"]
        cohort.intervals += subject["intervals"]
        cohort.lesions += subject["lesions"]
        cohort.patients.append(subject["patient"])
        cohort.notes += subject["notes"]
        facts.append(subject["facts"])
    if not cohort.patients:
        raise InputError(f"{out_dir}: none of the {len(reports)} report(s) could be read: "
                         + "; ".join(f"{item.path}: {item.reason}" for item in cohort.skipped))
    cohort.reports = _report_facts(facts, cutoff_percent, cohort.notes)
    cohort.summary = summarise(cohort, cutoff_percent=cutoff_percent, params=params)
    return cohort


def read_subject(report_path: Path, *, cutoff_percent: float, params: CohortParams) -> dict:
    """One subject's rows: {"visits", "intervals", "lesions": [row], "patient": row, "notes": [str], "facts": dict}.

    Raises
    ------
    SubjectError : report.json (or a final/report.json) cannot be read or lacks a field the tables need;
        `path` names the file (sub-XX/...), `reason` the field or the failure.
    """
    report_path = Path(report_path)
    label = f"{report_path.parent.name}/{report_path.name}"
    final_path = report_path.parent / "final" / "report.json"
    final_label = f"{report_path.parent.name}/final/report.json"
    try:
        report, digest = cohort_parse.read_json(report_path)
        automated = cohort_parse.parse_report(report, report_path.parent.name)
    except cohort_parse.Malformed as error:
        raise SubjectError(label, str(error)) from None
    confirmed, notes = None, []
    if final_path.is_file():
        try:
            final, _ = cohort_parse.read_json(final_path)
            confirmed = cohort_parse.parse_final(final, automated["subject"])
        except cohort_parse.Malformed as error:
            raise SubjectError(final_label, str(error)) from None
        if confirmed["sha256"] != digest:
            notes.append(f"{final_label} (version {confirmed['version']}) signs an earlier analysis run than "
                         f"{label} (sha256 {confirmed['sha256'][:12]} != {digest[:12]}); the automated figures of "
                         f"the current run are used")
            confirmed = None
    rows = _subject_rows(automated, confirmed, cutoff_percent=cutoff_percent, params=params, notes=notes)
    rows["notes"] = notes
    rows["facts"] = {"msvol_version": automated["msvol_version"], "schema_version": automated["schema_version"],
                     "params_hash": automated["params_hash"], "params": automated["params"],
                     "models": automated["models"]}
    return rows


def summarise(cohort: Cohort, *, cutoff_percent: float, params: CohortParams) -> dict:
    """Cohort figures: counts of rows, the two MRI activity shares, the new-lesion rate, annualised PBVC spread."""
    patients = cohort.patients
    level = params.confidence_level

    def share(column: str) -> dict:
        known = [row[column] for row in patients if row[column] is not None]
        return vars(cohort_stats.wilson_share(sum(known), len(known), confidence_level=level))

    followed = [row for row in patients if row["new_lesions"] is not None and (row["followup_years"] or 0) > 0]
    rate = (vars(cohort_stats.negative_binomial_rate([row["new_lesions"] for row in followed],
                                                     [row["followup_years"] for row in followed],
                                                     confidence_level=level)) if followed else None)
    annualized = sorted(row["annualized_pbvc_percent"] for row in patients
                        if row["annualized_pbvc_percent"] is not None)
    return {
        "patients": len(patients),
        "confirmed": sum(row["source"] == "confirmed" for row in patients),
        "automated": sum(row["source"] == "automated" for row in patients),
        "visits": len(cohort.visits), "intervals": len(cohort.intervals), "lesion_findings": len(cohort.lesions),
        "skipped": len(cohort.skipped),
        "followup_years": round(sum(row["followup_years"] or 0.0 for row in patients), 4),
        "mri_activity_free": share("mri_activity_free"),
        "mri_activity_free_atrophy_within_cutoff": share("mri_activity_free_atrophy_within_cutoff"),
        "new_lesions_per_patient_year": rate,
        "annualized_pbvc_percent": {
            "evaluable": len(annualized), "cutoff_percent_per_year": cutoff_percent,
            "beyond_cutoff": sum(value <= cutoff_percent for value in annualized),
            "median": _quantile(annualized, 0.5), "q1": _quantile(annualized, 0.25), "q3": _quantile(annualized, 0.75)},
    }


def write_cohort(cohort: Cohort, dest: Path, *, command: list[str], cutoff_percent: float,
                 params: CohortParams) -> dict[str, Path]:
    """Write the tables (TSV + JSON dictionary + Parquet), cohort.html and cohort.json into `dest`.

    Every file is written into a staging folder inside `dest`, then moved into place with os.replace,
    cohort.json last: it lists every file with its SHA-256, so a set whose hashes match it is complete.
    Staging folders left by a killed run (their process gone) are swept first.

    Returns
    -------
    dict : file name -> path in `dest`.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    _sweep_staging(dest)
    staging = dest / f"{STAGING_PREFIX}{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        for table in cohort_tables.TABLES:
            cohort_tables.write_table(table, getattr(cohort, table), staging)
        record = cohort_record(cohort, command=command, cutoff_percent=cutoff_percent, params=params)
        record["files"] = {path.name: _sha256(path) for path in sorted(staging.iterdir())}
        (staging / "cohort.html").write_text(cohort_page.render_page(record, cohort.patients))
        record["files"]["cohort.html"] = _sha256(staging / "cohort.html")
        (staging / "cohort.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
        names = sorted(record["files"]) + ["cohort.json"]
        for name in names:
            os.replace(staging / name, dest / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {name: dest / name for name in names}


def cohort_record(cohort: Cohort, *, command: list[str], cutoff_percent: float, params: CohortParams) -> dict:
    """The cohort.json model (without "files"): versions, the command, effective parameters with their sources,
    definitions, what the reports were made with, the summary, the reports left out and the notes."""
    cutoff_field = next(item for item in dataclasses.fields(AtrophyParams) if item.name == CUTOFF_FIELD)
    return {
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "software": {"name": "msvol", "version": __version__},
        "command": list(command),
        "atrophy_cutoff": {"field": f"atrophy.{CUTOFF_FIELD}", "value": cutoff_percent,
                           **dict(cutoff_field.metadata)},
        "cohort_params": {item.name: {"value": getattr(params, item.name), **dict(item.metadata)}
                          for item in dataclasses.fields(params)},
        "definitions": dict(COHORT_MEASURES),
        "summary": cohort.summary,
        "reports": cohort.reports,
        "skipped": [dataclasses.asdict(item) for item in cohort.skipped],
        "notes": list(cohort.notes),
        "tables": {table: {"rows": len(getattr(cohort, table)),
                           "columns": [column.name for column in cohort_tables.TABLES[table]]}
                   for table in cohort_tables.TABLES},
    }


def _sweep_staging(dest: Path) -> None:
    """Remove this host's staging folders whose process is gone (a run killed before it finished); another
    host's are left alone (its process cannot be checked from here)."""
    mine = f"{STAGING_PREFIX}{socket.gethostname()}-"
    for folder in dest.glob(f"{mine}*"):
        pid = folder.name.removeprefix(mine)
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- rows --------------------------------------------------------------------------------------------------------

def _subject_rows(automated: dict, confirmed: dict | None, *, cutoff_percent: float, params: CohortParams,
                  notes: list[str]) -> dict:
    participant = f"sub-{automated['subject']}"
    if confirmed is not None:
        missing = [f"{first}-{second}" for first, second in ((item["from"], item["to"])
                                                             for item in automated["intervals"])
                   if (first, second) not in confirmed["intervals"]]
        if missing:
            raise SubjectError(f"{participant}/final/report.json",
                               f"signs report.json but lacks its interval(s) {', '.join(missing)}")
    source = {"source": "automated" if confirmed is None else "confirmed",
              "signoff_version": None if confirmed is None else confirmed["version"]}
    timepoints = sorted(automated["timepoints"], key=lambda item: (item["date"], item["session"]))
    visits = visit_rows(participant, timepoints, source)
    intervals = interval_rows(participant, automated, confirmed, timepoints, source, cutoff_percent)
    lesions = lesion_rows(participant, automated, confirmed, source)
    patient = patient_row(participant, automated, confirmed, timepoints, intervals, source,
                          cutoff_percent=cutoff_percent, params=params, notes=notes)
    return {"visits": visits, "intervals": intervals, "lesions": lesions, "patient": patient}


def _report_facts(facts: list[dict], cutoff_percent: float, notes: list[str]) -> dict:
    """What the reports were made with: msvol versions, models, parameter sets (by hash) and their atrophy cut-offs."""
    by_hash: dict[str, dict] = {}
    cutoffs: Counter = Counter()
    for item in facts:
        entry = by_hash.setdefault(item["params_hash"] or "not recorded", {"reports": 0, "params": item["params"]})
        entry["reports"] += 1
        atrophy = item["params"].get("atrophy")
        cutoff = atrophy.get("pathological_annualized_pbvc_percent") if isinstance(atrophy, dict) else None
        cutoffs["not recorded" if cutoff is None else str(cutoff)] += 1
    differing = {value: count for value, count in cutoffs.items() if value not in ("not recorded", str(cutoff_percent))}
    if differing:
        notes.append("reports made with another atrophy cut-off (" + ", ".join(
            f"{count} at {value} %/year" for value, count in sorted(differing.items())) + f"): the cohort applies "
            f"{cutoff_percent} %/year to every patient, not the reports' own pbvc_beyond_pathological_cutoff")
    return {
        "read": len(facts),
        "msvol_versions": dict(Counter(item["msvol_version"] for item in facts)),
        "schema_versions": dict(Counter(item["schema_version"] for item in facts)),
        "models": dict(Counter(f"{role}: {model}" for item in facts for role, model in sorted(item["models"].items()))),
        "atrophy_cutoffs_percent_per_year": dict(cutoffs),
        "params_by_hash": by_hash,
    }


def _quantile(values: list[float], fraction: float) -> float | None:
    """Linear-interpolation quantile of sorted values (numpy's default method); None when empty."""
    if not values:
        return None
    position = fraction * (len(values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(values) - 1)
    return round(values[low] + (values[high] - values[low]) * (position - low), 4)

