"""Tests for review.signoff: the confirmed figures, the three final files, amendments, refusals."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from msvol.errors import ReviewStateError
from msvol.review import decisions, findings, signoff
from msvol.synth.review_case import COUNTS, MISSED_CENTRE_MM

NEEDS_POPPLER = pytest.mark.skipif(shutil.which("pdftotext") is None, reason="poppler-utils not installed")


def decide_all_new_and_enlarging(store):
    decisions.decide(store, "01", "01-02:L1", "confirm", reviewer="Dr A")
    decisions.decide(store, "01", "01-02:L2", "reject", reason="artefact", reviewer="Dr A")
    decisions.decide(store, "01", "01-02:L3", "reclassify", status="enlarging", reviewer="Dr A")
    decisions.decide(store, "01", "01-02:L4", "confirm", reviewer="Dr A")


def test_sign_off_needs_every_new_and_enlarging_finding_decided(store, review_out):
    decisions.decide(store, "01", "01-02:L1", "confirm", reviewer="Dr A")
    with pytest.raises(ReviewStateError, match=r"3 new or enlarging finding\(s\) have no decision "
                                               r"\(01-02:L2, 01-02:L3, 01-02:L4\)"):
        signoff.sign_off(store, "01", reviewer="Dr A")
    assert not (review_out / "sub-01" / "final").exists()


def test_confirmed_counts_are_automated_minus_rejected_plus_added(store, review_out):
    decide_all_new_and_enlarging(store)
    decisions.add_lesion(store, "01", "01-02", MISSED_CENTRE_MM, "new", reviewer="Dr A")
    decisions.decide(store, "01", "01-02:L5", "reject", reason="other", note="unchanged", reviewer="Dr A")
    final = signoff.sign_off(store, "01", reviewer="Dr A. Reader")
    interval = final["intervals"][0]
    assert interval["automated"]["counts"] == COUNTS
    assert interval["confirmed"]["counts"] == {"new": 3 - 1 - 1 + 1, "enlarging": 1 + 1, "shrinking": 0,
                                               "resolved": 1, "stable": 1}
    assert interval["confirmed"]["new_volume_mm3"] == pytest.approx(33.0 + 123.0)  # L1 and the added lesion
    assert interval["pbvc_decision"]["decision"] == "pending" and interval["confirmed"]["pbvc_percent"] == -0.61
    written = json.loads((review_out / "sub-01" / "final" / "report.json").read_text())
    assert written == json.loads(json.dumps(final))
    assert final["signed"]["statement"].startswith("confirmed by Dr A. Reader on ")
    by_id = {finding["id"]: finding for finding in interval["findings"]}
    assert (by_id["01-02:L2"]["decision"], by_id["01-02:L2"]["reason"]) == ("rejected", "artefact")
    assert (by_id["01-02:L3"]["decision"], by_id["01-02:L3"]["confirmed_status"]) == ("reclassified", "enlarging")
    assert by_id["01-02:A1"]["decision"] == "added" and by_id["01-02:L6"]["decision"] == "pending"
    html = (review_out / "sub-01" / "final" / "report.html").read_text()
    assert final["signed"]["statement"] in html and "data:image/png;base64," in html


@NEEDS_POPPLER
def test_the_pdf_holds_the_confirmed_counts_and_the_reviewer(store, review_out, tmp_path):
    decide_all_new_and_enlarging(store)
    signoff.sign_off(store, "01", reviewer="Dr Reader")
    pdf = review_out / "sub-01" / "final" / "report.pdf"
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    assert "confirmed by Dr Reader on" in text
    assert "01-02:L2" in text and "artefact" in text.lower()
    subprocess.run(["pdftoppm", "-r", "40", "-png", "-f", "1", "-l", "1", str(pdf), str(tmp_path / "page")],
                   check=True)
    assert list(tmp_path.glob("page*.png"))


def test_a_second_sign_off_without_a_change_is_refused(store):
    decide_all_new_and_enlarging(store)
    signoff.sign_off(store, "01", reviewer="Dr A")
    assert findings.listing(store, "01")[0]["status"] == "signed"
    with pytest.raises(ReviewStateError, match="already signed off.*--amend"):
        signoff.sign_off(store, "01", reviewer="Dr A")
    with pytest.raises(ReviewStateError, match="already signed off"):
        signoff.sign_off(store, "01", reviewer="Dr A", amend_reason="no change made")


def test_an_amendment_is_a_new_version_and_keeps_the_first(store, review_out):
    decide_all_new_and_enlarging(store)
    first = signoff.sign_off(store, "01", reviewer="Dr A")
    decisions.decide(store, "01", "01-02:L1", "reject", reason="already present at baseline", reviewer="Dr B")
    assert findings.listing(store, "01")[0]["status"] == "in review (signed v1)"
    with pytest.raises(ReviewStateError, match="--amend REASON"):
        signoff.sign_off(store, "01", reviewer="Dr B")
    second = signoff.sign_off(store, "01", reviewer="Dr B", amend_reason="lesion 1 seen on the 2019 scan")
    final = review_out / "sub-01" / "final"
    assert second["version"] == 2 and second["supersedes_version"] == 1
    assert json.loads((final / "v1" / "report.json").read_text()) == json.loads(json.dumps(first))
    assert {path.name for path in (final / "v1").iterdir()} == {"report.json", "report.html", "report.pdf"}
    assert json.loads((final / "report.json").read_text())["version"] == 2
    assert second["intervals"][0]["confirmed"]["counts"]["new"] == first["intervals"][0]["confirmed"]["counts"]["new"] - 1
    trail = findings.audit_trail(store, "01")
    assert [entry["action"] for entry in trail if entry["action"] in ("signoff", "amend")] == ["signoff", "amend"]
    assert trail[-1]["reason"] == "lesion 1 seen on the 2019 scan" and trail[-1]["actor"] == "Dr B"


def test_amending_a_subject_never_signed_is_refused(store):
    decide_all_new_and_enlarging(store)
    with pytest.raises(ReviewStateError, match="nothing to amend"):
        signoff.sign_off(store, "01", reviewer="Dr A", amend_reason="typo")


def test_an_automated_report_changed_after_registration_is_refused(store, review_out):
    decide_all_new_and_enlarging(store)
    report = review_out / "sub-01" / "report.json"
    report.write_text(report.read_text().replace("-0.61", "-0.99"))
    with pytest.raises(Exception, match="changed after it was registered"):
        signoff.sign_off(store, "01", reviewer="Dr A")


def test_a_new_analysis_of_a_signed_subject_is_reviewed_and_signed_afresh(store, review_out):
    """Regression: after a rerun (a new report, registered as a new run) the earlier run's sign-off made the
    subject look 'in review' and demanded an amendment reason for the first sign-off of the new run."""
    decide_all_new_and_enlarging(store)
    signoff.sign_off(store, "01", reviewer="Dr A")
    shutil.move(review_out / "sub-01" / "final", review_out / "old-final")  # as a rerun moves it to OUT/previous
    report = review_out / "sub-01" / "report.json"
    report.write_text(report.read_text().replace('"pbvc_percent": -0.61', '"pbvc_percent": -0.58'))
    findings.register_all(store)
    assert findings.listing(store, "01")[0]["status"] == "pending"
    decide_all_new_and_enlarging(store)
    final = signoff.sign_off(store, "01", reviewer="Dr B")
    assert final["version"] == 1 and final["supersedes_version"] is None
    assert final["intervals"][0]["automated"]["pbvc_percent"] == -0.58
    assert findings.listing(store, "01")[0]["status"] == "signed"


def test_a_possible_new_lesion_needs_no_decision_and_counts_only_once_confirmed(tmp_path, database_url):
    """Candidates below the reporting operating point: listed as findings, never blocking the sign-off, counted as
    new only when a reader confirms them (report schema 1.4)."""
    from msvol.review.store import open_store
    from msvol.synth.review_case import write_review_case

    out = tmp_path / "out"
    write_review_case(out)
    path = out / "sub-01" / "report.json"
    report = json.loads(path.read_text())
    interval = report["intervals"][0]
    for lesion in interval["lesions"]:
        if lesion["id"] in (5, 7):  # shrinking 5 and stable 7 become the interval's two candidates
            interval["counts"][lesion["status"]] -= 1
            lesion["status"] = "possible_new"
    interval["counts"]["possible_new"] = 2
    path.write_text(json.dumps(report, indent=2))
    store = open_store(out, database_url)
    try:
        findings.register_all(store)
        keys = {view["id"]: view for view in findings.listing(store, "01")[0]["findings"]}
        assert keys["01-02:L7"]["class"] == "possible_new", "a candidate is a finding the reader sees"
        decide_all_new_and_enlarging(store)
        confirmed = decisions.decide(store, "01", "01-02:L7", "confirm", reviewer="Dr A")
        assert confirmed["current_class"] == "new"
        final = signoff.sign_off(store, "01", reviewer="Dr A")  # L5, still a candidate, does not block it
    finally:
        store.dispose()
    counts = final["intervals"][0]["confirmed"]["counts"]
    assert (counts["new"], counts["possible_new"]) == (3 - 1 - 1 + 1, 1), "L2 rejected, L3 now enlarging, L7 new"
    assert final["intervals"][0]["automated"]["counts"]["possible_new"] == 2
