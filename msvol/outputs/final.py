"""Final (signed) report model -> one self-contained HTML page, and that same page -> PDF.

At sign-off the review code builds the final report model, writes it as final/report.json and
calls these renderers for final/report.html and final/report.pdf. The automated report is never
changed: this model sits beside it and names it by its sha256. Pure functions, no file writes.

The model (FINAL_SCHEMA_VERSION), the contract between review and this renderer::

    schema_version       "final-1.0"
    subject              pseudonymous id, no "sub-" prefix
    version              1, 2, ...: each amendment after sign-off is a new version
    supersedes_version   null for version 1; else the (lower) version this one amends
    amendment_reason     null for version 1; else the non-empty reason for the amendment
    signed               {"reviewer", "at" (ISO 8601 with offset), "statement"}: the statement is
                         what the signature means, printed verbatim ("confirmed by <reviewer> on <time>")
    automated_report     {"generated", "software": {"name", "version"}, "sha256"}: what was reviewed
    disclaimer           printed at the top of every version
    timepoints           as in report.json: session, date, brain_volume_ml, lesion_count,
                         lesion_volume_ml; optional acquisition (scanner, FLAIR series)
    intervals            list of:
      from_session, to_session, years
      automated, confirmed  {"counts": {new, enlarging, shrinking, resolved, stable},
                             "new_volume_mm3", "enlarging_volume_mm3", "pbvc_percent",
                             "pbvc_annualized_percent"}; confirmed PBVC values may be null
                             (overruled); an annualised PBVC is null for a too-short interval
      pbvc_decision      {"decision": accepted | overruled | pending, "reason", "reviewer", "at"}
      findings           list of finding dicts (below), in the order the report shows them
      qc_flags           [{"code", "message", "scope"}]
    qc_flags             subject-level flags, same shape

A finding::

    id                   unique in the report, e.g. "01-02:L7"; the key of its thumbnail
    kind                 "lesion" (proposed by msvol) | "added" (drawn by the reader)
    automated_status     new | enlarging | shrinking | resolved; null for an added finding
    confirmed_status     new | enlarging | stable | shrinking | resolved; null when rejected or pending
    decision             see DECISIONS: confirmed (status kept), rejected (not counted; reason
                         says why), reclassified (automated_status -> confirmed_status), added,
                         mask_edited (outline corrected by the reader), pending (not decided at sign-off)
    reason               null | "not a lesion" | "artefact" | "already present at baseline" | "other"
    note                 null | free text from the reader
    reviewer, at         who decided and when (ISO 8601); null while pending
    confidence           0-1 from the automated report (a ranking, not a calibrated probability); null if none
    centroid_mm          [x, y, z] in RAS+ mm
    baseline_volume_mm3, followup_volume_mm3    the volumes counted in the confirmed figures
    automated_baseline_volume_mm3, automated_followup_volume_mm3   optional, added by this
                         module: the automated volumes before a mask edit; shown where present
    thumbnail            relative path of the finding's PNG, or null

Pages embed their images as data: URIs (from the `thumbnails` argument, keyed by finding id) and
load nothing else; the PDF renderer refuses every URL that is not a data: URL.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt

import jinja2
import markupsafe

from msvol.outputs.html import trend_svg

FINAL_SCHEMA_VERSION = "final-1.0"
COUNT_CLASSES = ("new", "enlarging", "shrinking", "resolved", "stable", "possible_new")
COUNT_LABELS = {"possible_new": "Possible new, not counted"}
DECISIONS = ("confirmed", "rejected", "reclassified", "added", "mask_edited", "pending")
PBVC_DECISIONS = ("accepted", "overruled", "pending")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def render_final_html(final: dict, thumbnails: dict[str, str]) -> str:
    """The final report as one self-contained HTML page (templates/final_report.html).

    Parameters
    ----------
    final : the final report model of the module docstring.
    thumbnails : finding id -> base64-encoded PNG (no "data:" prefix). A finding without one
        is shown without an image.

    Returns
    -------
    str : the HTML text; every value from the model is escaped.

    Raises
    ------
    ValueError : a wrong schema version, an amendment that does not say what it amends or why,
        an unknown decision, a decision without the status it needs, a time without a valid
        ISO 8601 form, or a thumbnail that is not base64 PNG or names no finding.
    """
    _check_model(final)
    finding_ids = {finding["id"] for interval in final["intervals"] for finding in interval["findings"]}
    for finding_id, png_base64 in thumbnails.items():
        _check_thumbnail(finding_id, png_base64, finding_ids)
    environment = jinja2.Environment(loader=jinja2.PackageLoader("msvol.outputs", "templates"), autoescape=True,
                                     undefined=jinja2.StrictUndefined)
    environment.filters["when"] = display_time
    intervals = [{"model": interval,
                  "rows": _comparison_rows(interval),
                  "findings": [(finding, _decision_text(finding), thumbnails.get(finding["id"]))
                               for finding in interval["findings"]]}
                 for interval in final["intervals"]]
    pending = sum(finding["decision"] == "pending" for interval in final["intervals"]
                  for finding in interval["findings"])
    pending_pbvc = sum(interval["pbvc_decision"]["decision"] == "pending" for interval in final["intervals"])
    return environment.get_template("final_report.html").render(
        final=final, intervals=intervals, pending_findings=pending, pending_pbvc=pending_pbvc,
        trend=markupsafe.Markup(trend_svg(final["timepoints"])))


def render_final_pdf(html: str) -> bytes:
    """The PDF of a page from `render_final_html`, laid out by WeasyPrint with the page's print CSS.

    No base URL and `offline_url_fetcher`: only the page's own data: URIs are read, so a URL
    that reached the page (it should not: every value is escaped) is logged by WeasyPrint and
    left out, never fetched.

    Parameters
    ----------
    html : the HTML text.

    Returns
    -------
    bytes : the PDF document.
    """
    import weasyprint  # heavy (Pango, fonts): only the sign-off needs it

    return weasyprint.HTML(string=html, base_url=None, url_fetcher=offline_url_fetcher()).write_pdf()


def offline_url_fetcher():
    """A WeasyPrint URL fetcher that reads data: URLs and refuses every other URL with ValueError.

    WeasyPrint catches the error, logs "Failed to load ..." and renders without the resource.

    Returns
    -------
    weasyprint.urls.URLFetcher : no redirects, no other protocol.
    """
    import weasyprint.urls

    return weasyprint.urls.URLFetcher(allowed_protocols={"data"}, allow_redirects=False)


def display_time(value: str | None) -> str:
    """An ISO 8601 time as "YYYY-MM-DD HH:MM UTC"; a time without offset is marked as such.

    >>> display_time("2026-12-01T15:03:00+01:00")
    '2026-12-01 14:03 UTC'

    Raises
    ------
    ValueError : not an ISO 8601 time.
    """
    if value is None:
        return "not recorded"
    try:
        moment = dt.datetime.fromisoformat(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"final report: time {value!r} is not ISO 8601 (e.g. 2026-12-01T14:03:00+00:00)") from error
    if moment.tzinfo is None:
        return f"{moment:%Y-%m-%d %H:%M} (time zone not recorded)"
    return f"{moment.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"


def _check_model(final: dict) -> None:
    """Raise ValueError for what the template cannot show honestly; missing keys fail in the template."""
    subject = final["subject"]
    if final["schema_version"] != FINAL_SCHEMA_VERSION:
        raise ValueError(f"sub-{subject} final report: schema_version {final['schema_version']!r}, "
                         f"this renderer reads {FINAL_SCHEMA_VERSION!r}")
    version, supersedes = final["version"], final["supersedes_version"]
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"sub-{subject} final report: version must be an integer >= 1, found {version!r}")
    if version == 1 and supersedes is not None:
        raise ValueError(f"sub-{subject} final report: version 1 cannot supersede version {supersedes}")
    if version > 1:
        if not isinstance(supersedes, int) or not 1 <= supersedes < version:
            raise ValueError(f"sub-{subject} final report version {version}: supersedes_version must be an "
                             f"earlier version, found {supersedes!r}")
        if not (final["amendment_reason"] or "").strip():
            raise ValueError(f"sub-{subject} final report version {version} amends version {supersedes} "
                             "but gives no amendment_reason")
    display_time(final["signed"]["at"])
    for interval in final["intervals"]:
        if interval["pbvc_decision"]["decision"] not in PBVC_DECISIONS:
            raise ValueError(f"sub-{subject} interval {interval['from_session']}-{interval['to_session']}: "
                             f"PBVC decision {interval['pbvc_decision']['decision']!r}, expected one of "
                             f"{', '.join(PBVC_DECISIONS)}")
        for finding in interval["findings"]:
            _check_finding(subject, finding)


def _check_finding(subject: str, finding: dict) -> None:
    decision = finding["decision"]
    where = f"sub-{subject} finding {finding['id']}"
    if decision not in DECISIONS:
        raise ValueError(f"{where}: decision {decision!r}, expected one of {', '.join(DECISIONS)}")
    if decision in ("confirmed", "reclassified", "added", "mask_edited") and finding["confirmed_status"] is None:
        raise ValueError(f"{where}: decision {decision!r} needs a confirmed_status")
    if decision == "rejected" and finding["confirmed_status"] is not None:
        raise ValueError(f"{where}: a rejected finding has no confirmed_status, "
                         f"found {finding['confirmed_status']!r}")
    if decision == "reclassified" and finding["automated_status"] is None:
        raise ValueError(f"{where}: reclassified needs the automated_status it was reclassified from")
    display_time(finding["at"])


def _check_thumbnail(finding_id: str, png_base64: str, finding_ids: set[str]) -> None:
    if finding_id not in finding_ids:
        raise ValueError(f"final report: a thumbnail is given for {finding_id!r}, which is no finding of the report")
    try:
        head = base64.b64decode(png_base64, validate=True)[:len(PNG_SIGNATURE)]
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"final report: the thumbnail of {finding_id} is not base64 ({error})") from error
    if not head.startswith(PNG_SIGNATURE):
        raise ValueError(f"final report: the thumbnail of {finding_id} is not a PNG")


def _decision_text(finding: dict) -> str:
    """The decision in words, as the reader made it."""
    decision, automated, confirmed = finding["decision"], finding["automated_status"], finding["confirmed_status"]
    if decision == "confirmed":
        return f"Confirmed as {confirmed}"
    if decision == "rejected":
        return f"Rejected: {finding['reason']}" if finding["reason"] else "Rejected (no reason recorded)"
    if decision == "reclassified":
        return f"Reclassified from {automated} to {confirmed}"
    if decision == "added":
        return f"Added by the reader as {confirmed}"
    if decision == "mask_edited":
        return f"Mask edited, confirmed as {confirmed}"
    return "Pending: not decided at sign-off"


def _comparison_rows(interval: dict) -> list[tuple[str, str, str, bool]]:
    """(measure, automated, confirmed, changed) for the side-by-side table."""
    automated, confirmed = interval["automated"], interval["confirmed"]
    overruled = interval["pbvc_decision"]["decision"] == "overruled"
    rows = [(f"{COUNT_LABELS.get(name, name.capitalize())} lesions (n)", str(automated["counts"].get(name, 0)),
             str(confirmed["counts"].get(name, 0)), automated["counts"].get(name, 0) != confirmed["counts"].get(name, 0))
            for name in COUNT_CLASSES]
    for key, label in (("new_volume_mm3", "New lesion volume (mm\u00b3)"),
                       ("enlarging_volume_mm3", "Enlarging lesion volume (mm\u00b3)")):
        rows.append((label, _number(automated[key], "{:.1f}"), _number(confirmed[key], "{:.1f}"),
                     automated[key] != confirmed[key]))
    for key, label, unit in (("pbvc_percent", "PBVC", "%"), ("pbvc_annualized_percent", "Annualised PBVC", "%/year")):
        missing = "not reported (overruled)" if overruled else "n/a"
        pattern = "{:+.2f} " + unit
        rows.append((label, _number(automated[key], pattern), _number(confirmed[key], pattern, missing),
                     automated[key] != confirmed[key]))
    return rows


def _number(value: float | None, pattern: str, missing: str = "n/a") -> str:
    return missing if value is None else pattern.format(value)
