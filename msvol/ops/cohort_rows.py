"""One subject's parsed reports -> its rows of the four cohort tables (columns: msvol.ops.cohort_tables).

The parsed models come from msvol.ops.cohort_parse: `automated` is report.json, `confirmed` the final
report that signs it (or None). Where the subject was signed off, counts, lesion volumes, PBVC and
findings are the confirmed ones; alignment, QC flags and the lesion bookkeeping flags (merged, split,
confluent), which sign-off does not change, come from report.json. Pure functions.
"""

from __future__ import annotations

from msvol.config import CohortParams
from msvol.ops.cohort_parse import CANDIDATE_CLASSES, COUNT_CLASSES
from msvol.review.findings import LESION_FINDINGS, interval_key

DAYS_PER_YEAR = 365.25  # Julian year, for the visit dates' distance from baseline


def session_id(session: str) -> str:
    return f"ses-{session}"


def visit_rows(participant: str, timepoints: list[dict], source: dict) -> list[dict]:
    """One row per visit, in date order; years_from_baseline from the visit dates."""
    baseline = timepoints[0]["date"] if timepoints else None
    return [{
        "participant_id": participant, "session_id": session_id(timepoint["session"]),
        "acq_date": timepoint["date"].isoformat(),
        "years_from_baseline": round((timepoint["date"] - baseline).days / DAYS_PER_YEAR, 4),
        **{name: timepoint[name] for name in ("brain_volume_ml", "normalized_brain_volume_ml",
                                              "intracranial_volume_ml", "brain_parenchymal_fraction",
                                              "lesion_count", "lesion_volume_ml")},
        "scanner_manufacturer": timepoint["manufacturer"], "scanner_model": timepoint["model"],
        "field_strength_t": timepoint["field_strength_t"], **source,
    } for timepoint in timepoints]


def interval_rows(participant: str, automated: dict, confirmed: dict | None, timepoints: list[dict], source: dict,
                  cutoff_percent: float) -> list[dict]:
    """One row per interval of report.json, with its kind (consecutive, baseline_to_latest) from the visit order."""
    order = [timepoint["session"] for timepoint in timepoints]
    rows = []
    for interval in automated["intervals"]:
        first, second = order.index(interval["from"]), order.index(interval["to"])
        if confirmed is None:
            figures = {"counts": interval["counts"], "pbvc_percent": interval["pbvc_percent"],
                       "pbvc_annualized_percent": interval["pbvc_annualized_percent"], "pbvc_decision": None,
                       **{f"{status}_volume_mm3": round(sum(lesion["followup_volume_mm3"]
                                                            for lesion in interval["lesions"]
                                                            if lesion["status"] == status), 1)
                          for status in ("new", "enlarging")}}
        else:
            figures = confirmed["intervals"][(interval["from"], interval["to"])]
        annualized = figures["pbvc_annualized_percent"]
        rows.append({
            "participant_id": participant, "from_session_id": session_id(interval["from"]),
            "to_session_id": session_id(interval["to"]),
            "consecutive": second == first + 1, "baseline_to_latest": first == 0 and second == len(order) - 1,
            "years": interval["years"], "pbvc_percent": figures["pbvc_percent"],
            "pbvc_annualized_percent": annualized,
            "pbvc_beyond_cutoff": None if annualized is None else annualized <= cutoff_percent,
            "pbvc_decision": figures["pbvc_decision"], "alignment_correlation": interval["alignment_correlation"],
            **{f"{status}_lesions": figures["counts"].get(status, 0) for status in COUNT_CLASSES + CANDIDATE_CLASSES},
            "new_volume_mm3": figures["new_volume_mm3"], "enlarging_volume_mm3": figures["enlarging_volume_mm3"],
            "qc_flags": ";".join(interval["qc_flags"]) or None, **source,
        })
    return rows


def lesion_rows(participant: str, automated: dict, confirmed: dict | None, source: dict) -> list[dict]:
    """One row per lesion finding: the automated non-stable lesions, or the signed findings (added ones too)."""
    rows = []
    for interval in automated["intervals"]:
        pair = (interval["from"], interval["to"])
        by_id = {lesion["id"]: lesion for lesion in interval["lesions"]}
        common = {"participant_id": participant, "from_session_id": session_id(pair[0]),
                  "to_session_id": session_id(pair[1])}
        if confirmed is None:
            findings = [{"id": f"{interval_key(*pair)}:L{lesion['id']}", "kind": "lesion", "lesion_id": lesion["id"],
                         "automated_status": lesion["status"], "status": lesion["status"], "decision": None,
                         "reason": None, **{name: lesion[name] for name in ("confidence", "baseline_volume_mm3",
                                                                            "followup_volume_mm3", "centroid_mm")}}
                        for lesion in interval["lesions"] if lesion["status"] in LESION_FINDINGS]
        else:
            findings = [{**finding, "lesion_id": _lesion_id(finding)}
                        for finding in confirmed["intervals"][pair]["findings"]]
        for finding in findings:
            lesion = by_id.get(finding["lesion_id"], {})
            x, y, z = finding["centroid_mm"]
            rows.append({
                **common, "finding_id": finding["id"], "lesion_id": finding["lesion_id"], "kind": finding["kind"],
                "automated_status": finding["automated_status"], "status": finding["status"],
                "decision": finding["decision"], "reason": finding["reason"], "confidence": finding["confidence"],
                "baseline_volume_mm3": finding["baseline_volume_mm3"],
                "followup_volume_mm3": finding["followup_volume_mm3"],
                "centroid_x_mm": x, "centroid_y_mm": y, "centroid_z_mm": z,
                **{name: lesion.get(name) for name in ("merged", "split", "confluent")}, **source,
            })
    return rows


def _lesion_id(finding: dict) -> int | None:
    """The automated lesion id of a finding key "<from>-<to>:L<id>"; None for a lesion the reader added."""
    _, _, tail = finding["id"].rpartition(":")
    return int(tail[1:]) if finding["kind"] == "lesion" and tail[:1] == "L" and tail[1:].isdigit() else None


def patient_row(participant: str, automated: dict, confirmed: dict | None, timepoints: list[dict],
                intervals: list[dict], source: dict, *, cutoff_percent: float, params: CohortParams,
                notes: list[str]) -> dict:
    """The patient's follow-up: counts over the consecutive intervals, atrophy over baseline-to-latest, the
    two MRI activity measures (None where they cannot be judged)."""
    order = [timepoint["session"] for timepoint in timepoints]
    consecutive = [row for row in intervals if row["consecutive"]]
    complete = len(order) >= 2 and len(consecutive) == len(order) - 1
    if len(order) >= 2 and not complete:
        notes.append(f"{participant}: report.json lacks consecutive interval(s) ({len(consecutive)} of "
                     f"{len(order) - 1}); its lesion counts and activity are not judged")
    whole = next((row for row in intervals if row["baseline_to_latest"]), None)
    years = round(sum(row["years"] for row in consecutive), 4) if complete else None
    new = sum(row["new_lesions"] for row in consecutive) if complete else None
    enlarging = sum(row["enlarging_lesions"] for row in consecutive) if complete else None
    annualized = None if whole is None else whole["pbvc_annualized_percent"]
    beyond = None if annualized is None else annualized <= cutoff_percent
    activity_free = None if new is None else new + enlarging <= params.max_active_lesions_for_activity_free
    if activity_free is None or activity_free is False:
        atrophy_too = activity_free  # unknown stays unknown; an active patient is not free whatever the atrophy
    else:
        atrophy_too = None if beyond is None else not beyond
    return {
        "participant_id": participant, "visits": len(order),
        "baseline_session_id": session_id(order[0]) if order else None,
        "latest_session_id": session_id(order[-1]) if order else None,
        "followup_years": years, "new_lesions": new, "enlarging_lesions": enlarging,
        "new_lesions_per_year": None if not years else round(new / years, 4),
        "annualized_pbvc_percent": annualized,
        "pbvc_interval": None if whole is None else f"{whole['from_session_id']}_to_{whole['to_session_id']}",
        "pbvc_beyond_cutoff": beyond, "mri_activity_free": activity_free,
        "mri_activity_free_atrophy_within_cutoff": atrophy_too,
        "pbvc_qc_flags": None if whole is None else whole["qc_flags"],
        "qc_flags": ";".join(automated["qc_flags"]) or None,
        **source, "signed_at": None if confirmed is None else confirmed["signed_at"],
        "msvol_version": automated["msvol_version"], "params_hash": automated["params_hash"],
    }
