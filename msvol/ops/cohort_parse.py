"""Reading report.json and final/report.json for the cohort: each field the tables need, checked for its type.

`parse_report` and `parse_final` return plain dicts (the parsed models msvol.ops.cohort_rows reads) or
raise Malformed naming the field ("intervals[0].counts.new: expected an integer, found 'two'"); the
caller adds the file. Dates become datetime.date, numbers float.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from pathlib import Path

from msvol.errors import InputError
from msvol.outputs.final import FINAL_SCHEMA_VERSION

COUNT_CLASSES = ("new", "enlarging", "shrinking", "resolved", "stable")  # counted; every report has them
# schema 1.4: candidates below the reporting operating point, listed for the reader and never counted; 0 when absent
CANDIDATE_CLASSES = ("possible_new",)
LESION_STATUSES = COUNT_CLASSES + CANDIDATE_CLASSES
REPORT_SCHEMA_MAJOR = "1."


class Malformed(InputError):
    """A report that cannot be read, or a field of it missing or of the wrong type; the message names no file."""


def read_json(path: Path) -> tuple[dict, str]:
    """The JSON object in `path` and the SHA-256 of its bytes; Malformed when unreadable or not an object."""
    try:
        data = Path(path).read_bytes()
        model = json.loads(data)
    except OSError as error:
        raise Malformed(f"cannot be read ({error.strerror or error})") from None
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        raise Malformed(f"not valid JSON ({error})") from None
    if not isinstance(model, dict):
        raise Malformed(f"expected a JSON object, found {type(model).__name__}")
    return model, hashlib.sha256(data).hexdigest()


_KINDS = {
    "str": (lambda value: isinstance(value, str), "a string"),
    "int": (lambda value: isinstance(value, int) and not isinstance(value, bool), "an integer"),
    "number": (lambda value: isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
               "a number"),
    "bool": (lambda value: isinstance(value, bool), "true or false"),
    "list": (lambda value: isinstance(value, list), "a list"),
    "dict": (lambda value: isinstance(value, dict), "an object"),
}


def _get(mapping: dict, key: str, kind: str, where: str, *, default=...):
    """mapping[key] checked against kind ("number", "str?" = a string or null); `default` when the key may be absent.
    `where` is the path of `mapping` in the report ("intervals[0].", "" at the top)."""
    if key not in mapping:
        if default is not ...:
            return default
        raise Malformed(f"{where}{key}: missing")
    return _check(mapping[key], kind, f"{where}{key}")


def _check(value, kind: str, label: str):
    nullable = kind.endswith("?")
    check, expected = _KINDS[kind.rstrip("?")]
    if value is None and nullable:
        return None
    if not check(value):
        raise Malformed(f"{label}: expected {expected}{' or null' if nullable else ''}, found {value!r:.60}")
    return float(value) if kind.startswith("number") else value


def parse_report(report: dict, folder_name: str) -> dict:
    version = _get(report, "schema_version", "str", "")
    if not version.startswith(REPORT_SCHEMA_MAJOR):
        raise Malformed(f"schema_version {version!r}: this msvol reads report schema {REPORT_SCHEMA_MAJOR}x")
    subject = _get(report, "subject", "str", "")
    if f"sub-{subject}" != folder_name:
        raise Malformed(f"subject {subject!r} does not match its folder {folder_name} (expected 'sub-{subject}')")
    timepoints = []
    for index, item in enumerate(_get(report, "timepoints", "list", "")):
        where = f"timepoints[{index}]."
        item = _check(item, "dict", where[:-1])
        date = _get(item, "date", "str", where)
        try:
            date = dt.date.fromisoformat(date)
        except ValueError:
            raise Malformed(f"{where}date: expected YYYY-MM-DD, found {date!r:.40}") from None
        acquisition = _get(item, "acquisition", "dict", where, default={})
        timepoints.append({
            "session": _get(item, "session", "str", where), "date": date,
            **{name: _get(item, name, "number?", where) for name in (
                "brain_volume_ml", "normalized_brain_volume_ml", "intracranial_volume_ml",
                "brain_parenchymal_fraction", "lesion_volume_ml")},
            "lesion_count": _get(item, "lesion_count", "int?", where),
            "manufacturer": _get(acquisition, "manufacturer", "str?", where + "acquisition.", default=None) or None,
            "model": _get(acquisition, "model", "str?", where + "acquisition.", default=None) or None,
            "field_strength_t": _get(acquisition, "field_strength_t", "number?", where + "acquisition.", default=None)})
    sessions = [timepoint["session"] for timepoint in timepoints]
    if len(set(sessions)) != len(sessions):
        raise Malformed(f"timepoints: a session is listed twice ({', '.join(sessions)})")
    intervals = []
    for index, item in enumerate(_get(report, "intervals", "list", "")):
        where = f"intervals[{index}]."
        item = _check(item, "dict", where[:-1])
        interval = {"from": _get(item, "from_session", "str", where), "to": _get(item, "to_session", "str", where),
                    "years": _get(item, "years", "number", where),
                    "pbvc_percent": _get(item, "pbvc_percent", "number?", where),
                    "pbvc_annualized_percent": _get(item, "pbvc_annualized_percent", "number?", where),
                    "alignment_correlation": _get(item, "alignment_correlation", "number?", where, default=None),
                    "counts": _counts(_get(item, "counts", "dict", where), where + "counts."),
                    "qc_flags": _flag_codes(_get(item, "qc_flags", "list", where, default=[]), where + "qc_flags"),
                    "lesions": [_lesion(lesion, f"{where}lesions[{number}].")
                                for number, lesion in enumerate(_get(item, "lesions", "list", where))]}
        for end in ("from", "to"):
            if interval[end] not in sessions:
                raise Malformed(f"{where}{end}_session: {interval[end]!r} is none of the timepoints' sessions")
        intervals.append(interval)
    software = _get(report, "software", "dict", "")
    provenance = _get(report, "provenance", "dict", "", default={})
    models = _get(provenance, "models", "dict", "provenance.", default={})
    return {"schema_version": version, "subject": subject, "timepoints": timepoints, "intervals": intervals,
            "qc_flags": _flag_codes(_get(report, "qc_flags", "list", "", default=[]), "qc_flags"),
            "msvol_version": _get(software, "version", "str", "software."),
            "params_hash": _get(report, "params_hash", "str", "", default="") or None,
            "params": _get(report, "params", "dict", "", default={}),
            "models": {role: f"{model.get('name', '?')} {model.get('version', '?')}" for role, model in models.items()
                       if isinstance(model, dict)}}


def _counts(counts: dict, where: str) -> dict:
    values = {name: _get(counts, name, "int", where) for name in COUNT_CLASSES}
    values.update({name: _get(counts, name, "int", where, default=0) for name in CANDIDATE_CLASSES})
    if any(value < 0 for value in values.values()):
        raise Malformed(f"{where[:-1]}: counts must be >= 0, found {values}")
    return values


def _flag_codes(flags: list, where: str) -> list[str]:
    return [_get(_check(flag, "dict", f"{where}[{index}]"), "code", "str", f"{where}[{index}].")
            for index, flag in enumerate(flags)]


def _lesion(lesion, where: str) -> dict:
    lesion = _check(lesion, "dict", where[:-1])
    status = _get(lesion, "status", "str", where)
    if status not in LESION_STATUSES:
        raise Malformed(f"{where}status: {status!r} is not one of {', '.join(LESION_STATUSES)}")
    return {"id": _get(lesion, "id", "int", where), "status": status,
            "baseline_volume_mm3": _get(lesion, "baseline_volume_mm3", "number", where),
            "followup_volume_mm3": _get(lesion, "followup_volume_mm3", "number", where),
            "centroid_mm": _centroid(lesion, where), "confidence": _get(lesion, "confidence", "number?", where,
                                                                        default=None),
            **{name: _get(lesion, name, "bool", where, default=False) for name in ("merged", "split", "confluent")}}


def _centroid(item: dict, where: str) -> list[float | None]:
    centroid = _get(item, "centroid_mm", "list?", where, default=None)
    if centroid is None:
        return [None, None, None]
    if len(centroid) != 3:
        raise Malformed(f"{where}centroid_mm: expected [x, y, z], found {centroid!r:.60}")
    return [_check(value, "number", f"{where}centroid_mm[{axis}]") for axis, value in enumerate(centroid)]


def parse_final(final: dict, subject: str) -> dict:
    version = _get(final, "schema_version", "str", "")
    if version != FINAL_SCHEMA_VERSION:
        raise Malformed(f"schema_version {version!r}: this msvol reads final reports {FINAL_SCHEMA_VERSION!r}")
    if _get(final, "subject", "str", "") != subject:
        raise Malformed(f"subject {final['subject']!r} differs from report.json's {subject!r}")
    intervals = {}
    for index, item in enumerate(_get(final, "intervals", "list", "")):
        where = f"intervals[{index}]."
        item = _check(item, "dict", where[:-1])
        figures = _get(item, "confirmed", "dict", where)
        inner = where + "confirmed."
        findings = []
        for number, finding in enumerate(_get(item, "findings", "list", where)):
            spot = f"{where}findings[{number}]."
            finding = _check(finding, "dict", spot[:-1])
            findings.append({
                "id": _get(finding, "id", "str", spot), "kind": _get(finding, "kind", "str", spot),
                "automated_status": _get(finding, "automated_status", "str?", spot),
                "status": _get(finding, "confirmed_status", "str?", spot),
                "decision": _get(finding, "decision", "str", spot), "reason": _get(finding, "reason", "str?", spot),
                "confidence": _get(finding, "confidence", "number?", spot, default=None),
                "baseline_volume_mm3": _get(finding, "baseline_volume_mm3", "number?", spot),
                "followup_volume_mm3": _get(finding, "followup_volume_mm3", "number?", spot),
                "centroid_mm": _centroid(finding, spot)})
        key = (_get(item, "from_session", "str", where), _get(item, "to_session", "str", where))
        intervals[key] = {
            "years": _get(item, "years", "number", where), "counts": _counts(_get(figures, "counts", "dict", inner),
                                                                             inner + "counts."),
            "new_volume_mm3": _get(figures, "new_volume_mm3", "number", inner),
            "enlarging_volume_mm3": _get(figures, "enlarging_volume_mm3", "number", inner),
            "pbvc_percent": _get(figures, "pbvc_percent", "number?", inner),
            "pbvc_annualized_percent": _get(figures, "pbvc_annualized_percent", "number?", inner),
            "pbvc_decision": _get(_get(item, "pbvc_decision", "dict", where), "decision", "str",
                                  where + "pbvc_decision."),
            "findings": findings}
    signed = _get(final, "signed", "dict", "")
    return {"version": _get(final, "version", "int", ""), "signed_at": _get(signed, "at", "str", "signed."),
            "sha256": _get(_get(final, "automated_report", "dict", ""), "sha256", "str", "automated_report."),
            "intervals": intervals}
