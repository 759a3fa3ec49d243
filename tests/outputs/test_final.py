"""Tests for outputs.final: the signed final report as HTML and as PDF (WeasyPrint, poppler to read it back)."""

from __future__ import annotations

import base64
import copy
import io
import re
import shutil
import socket
import subprocess

import numpy as np
import pytest
from PIL import Image

from msvol.outputs.final import display_time, offline_url_fetcher, render_final_html, render_final_pdf

REVIEWER = "Dr A. Reader"
STATEMENT = "confirmed by Dr A. Reader on 2026-12-01 14:03 UTC"
THUMBNAIL_ID = "01-02:L7"
# Counts chosen so that no automated figure equals its confirmed one by accident.
AUTOMATED_COUNTS = {"new": 3, "enlarging": 1, "shrinking": 0, "resolved": 0, "stable": 12}
CONFIRMED_COUNTS = {"new": 2, "enlarging": 2, "shrinking": 0, "resolved": 0, "stable": 13}

needs_poppler = pytest.mark.skipif(shutil.which("pdftoppm") is None or shutil.which("pdfimages") is None,
                                   reason="poppler-utils (pdftoppm, pdfimages) not installed")


def finding(finding_id, decision, automated_status, confirmed_status, **changes) -> dict:
    model = {"id": finding_id, "kind": "lesion", "automated_status": automated_status,
             "confirmed_status": confirmed_status, "decision": decision, "reason": None, "note": None,
             "reviewer": REVIEWER, "at": "2026-12-01T13:58:00+00:00", "confidence": 0.93,
             "centroid_mm": [-12.25, 30.0, 8.5], "baseline_volume_mm3": 0.0, "followup_volume_mm3": 85.0,
             "thumbnail": None}
    model.update(changes)
    return model


def interval(from_session, to_session, findings, **changes) -> dict:
    model = {"from_session": from_session, "to_session": to_session, "years": 1.0,
             "automated": {"counts": dict(AUTOMATED_COUNTS), "new_volume_mm3": 120.5, "enlarging_volume_mm3": 300.0,
                           "pbvc_percent": -0.55, "pbvc_annualized_percent": -0.55},
             "confirmed": {"counts": dict(CONFIRMED_COUNTS), "new_volume_mm3": 97.5, "enlarging_volume_mm3": 340.0,
                           "pbvc_percent": -0.55, "pbvc_annualized_percent": -0.55},
             "pbvc_decision": {"decision": "accepted", "reason": None, "reviewer": REVIEWER,
                               "at": "2026-12-01T14:01:00+00:00"},
             "findings": findings, "qc_flags": []}
    model.update(changes)
    return model


def final_model() -> dict:
    """Two intervals; between them every decision kind, one finding with a thumbnail."""
    first = [
        finding(THUMBNAIL_ID, "confirmed", "new", "new", thumbnail="thumbnails/ses-01_to_ses-02/lesion-7.png"),
        finding("01-02:L8", "rejected", "new", None, reason="artefact", note="flow artefact near the fourth ventricle",
                confidence=0.41),
        finding("01-02:L9", "reclassified", "new", "enlarging", reason="already present at baseline",
                baseline_volume_mm3=40.0),
        finding("01-02:A1", "added", None, "new", kind="added", confidence=None, followup_volume_mm3=12.5),
    ]
    second = [
        finding("02-03:L3", "mask_edited", "enlarging", "enlarging", baseline_volume_mm3=50.0,
                followup_volume_mm3=70.0, automated_baseline_volume_mm3=50.0, automated_followup_volume_mm3=95.0),
        finding("02-03:L4", "pending", "new", None, reviewer=None, at=None, confidence=0.55),
    ]
    overruled = {"decision": "overruled", "reason": "head motion at follow-up", "reviewer": REVIEWER,
                 "at": "2026-12-01T14:02:00+00:00"}
    second_interval = interval("02", "03", second, years=0.5, pbvc_decision=overruled,
                               qc_flags=[{"code": "scanner_change", "message": "scanner changed between visits",
                                          "scope": "02-03"}])
    second_interval["confirmed"].update(pbvc_percent=None, pbvc_annualized_percent=None)
    return {
        "schema_version": "final-1.0", "subject": "01", "version": 1, "supersedes_version": None,
        "signed": {"reviewer": REVIEWER, "at": "2026-12-01T14:03:00+00:00", "statement": STATEMENT},
        "amendment_reason": None,
        "automated_report": {"generated": "2026-11-30T09:00:00+00:00",
                             "software": {"name": "msvol", "version": "0.1.0"}, "sha256": "ab" * 32},
        "disclaimer": "msvol is research software, not a medical device.",
        "timepoints": [
            {"session": session, "date": date, "brain_volume_ml": volume, "lesion_count": count,
             "lesion_volume_ml": 4.2, "acquisition": {"manufacturer": "Siemens", "field_strength_t": 3.0}}
            for session, date, volume, count in (("01", "2024-01-10", 1200.0, 13), ("02", "2025-01-12", 1193.4, 16),
                                                 ("03", "2025-07-15", 1190.0, 16))],
        "intervals": [interval("01", "02", first), second_interval],
        "qc_flags": [{"code": "low_snr", "message": "noisy FLAIR at ses-03", "scope": "ses-03"}],
    }


@pytest.fixture
def final() -> dict:
    return final_model()


def png_base64(width: int = 120, height: int = 80, seed: int = 0) -> str:
    """A small RGB PNG of random grey-ish noise with a gold square (no alpha, so one PDF image)."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    rgb[20:40, 30:60] = (255, 215, 0)
    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@pytest.fixture(scope="module")
def thumbnail() -> str:
    return png_base64()


@pytest.fixture
def pdf_file(final, thumbnail, tmp_path):
    path = tmp_path / "report.pdf"
    path.write_bytes(render_final_pdf(render_final_html(final, {THUMBNAIL_ID: thumbnail})))
    return path


def pdf_text(path) -> str:
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True,
                          text=True).stdout


def test_html_holds_the_signature_and_both_sets_of_figures(final, thumbnail):
    page = render_final_html(final, {THUMBNAIL_ID: thumbnail})
    assert STATEMENT in page
    assert "Version</dt><dd>1</dd>" in page
    assert "amends version" not in page
    rows = re.findall(r"<td>(\w+) lesions \(n\)</td><td>(\d+)</td><td>(\d+)</td>", page)
    expected = [(name.capitalize(), str(count), str(CONFIRMED_COUNTS[name])) for name, count in AUTOMATED_COUNTS.items()]
    assert rows == expected * 2
    assert "120.5" in page and "97.5" in page  # new lesion volume, automated and confirmed
    assert "-0.55 %/year" in page
    assert "not reported (overruled)" in page and "overruled: head motion at follow-up" in page
    assert "noisy FLAIR at ses-03" in page and "scanner changed between visits" in page


def test_html_shows_every_finding_with_its_decision_and_reason(final, thumbnail):
    page = render_final_html(final, {THUMBNAIL_ID: thumbnail})
    findings = [finding for interval in final["intervals"] for finding in interval["findings"]]
    assert {finding["decision"] for finding in findings} == {"confirmed", "rejected", "reclassified", "added",
                                                             "mask_edited", "pending"}
    for finding in findings:
        assert f'data-decision="{finding["decision"]}" id="finding-{finding["id"]}"' in page
    for text in ("Confirmed as new", "Rejected: artefact", "flow artefact near the fourth ventricle",
                 "Reclassified from new to enlarging", "already present at baseline", "Added by the reader as new",
                 "Mask edited, confirmed as enlarging",
                 "at 03; automated, before the edit: 50.0 mm&sup3; at 02, 95.0 mm&sup3; at 03",
                 "Pending: not decided at sign-off", "Not decided at sign-off: 1 finding(s), 0 PBVC result(s)",
                 f"{REVIEWER}, 2026-12-01 13:58 UTC", "0.41"):
        assert text in " ".join(page.split())
    assert page.count("data:image/png;base64,") == 1
    assert f'src="data:image/png;base64,{thumbnail}"' in page


def test_amendment_names_the_version_it_amends_and_why(final):
    final.update(version=2, supersedes_version=1, amendment_reason="lesion 01-02:L9 re-read after the MDT meeting")
    page = render_final_html(final, {})
    assert "amends version 1" in page
    assert "lesion 01-02:L9 re-read after the MDT meeting" in page
    assert "Thumbnail not embedded (thumbnails/ses-01_to_ses-02/lesion-7.png)" in page


@pytest.mark.parametrize("changes", [{"version": 2}, {"version": 2, "supersedes_version": 1},
                                     {"version": 2, "supersedes_version": 2, "amendment_reason": "x"},
                                     {"supersedes_version": 1}, {"schema_version": "final-0.9"}])
def test_amendment_without_what_or_why_is_refused(final, changes):
    final.update(changes)
    with pytest.raises(ValueError, match="sub-01"):
        render_final_html(final, {})


def test_inconsistent_findings_and_thumbnails_are_refused(final, thumbnail):
    broken = copy.deepcopy(final)
    broken["intervals"][0]["findings"][0]["decision"] = "maybe"
    with pytest.raises(ValueError, match="01-02:L7: decision 'maybe'"):
        render_final_html(broken, {})
    broken = copy.deepcopy(final)
    broken["intervals"][0]["findings"][1]["confirmed_status"] = "new"
    with pytest.raises(ValueError, match="rejected finding"):
        render_final_html(broken, {})
    with pytest.raises(ValueError, match="no finding"):
        render_final_html(final, {"01-02:L99": thumbnail})
    with pytest.raises(ValueError, match="not base64"):
        render_final_html(final, {THUMBNAIL_ID: 'x" onerror="alert(1)'})
    with pytest.raises(ValueError, match="not a PNG"):
        render_final_html(final, {THUMBNAIL_ID: base64.b64encode(b"GIF89a" + bytes(30)).decode()})


def test_every_value_is_escaped(final):
    injection = '<script>alert(1)</script><img src="http://192.0.2.1/x.png"> & "quotes"'
    final["intervals"][0]["findings"][1]["note"] = injection
    final["signed"]["reviewer"] = "<b>Dr</b> O'Brien"
    page = render_final_html(final, {})
    assert "<script>" not in page and "<img src=\"http" not in page and "<b>Dr</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=&#34;http://192.0.2.1/x.png&#34;&gt; &amp; " in page
    assert "&lt;b&gt;Dr&lt;/b&gt; O&#39;Brien" in page


def test_display_time_is_utc_and_refuses_non_iso():
    assert display_time("2026-12-01T15:03:00+01:00") == "2026-12-01 14:03 UTC"
    assert display_time("2026-12-01T14:03:00") == "2026-12-01 14:03 (time zone not recorded)"
    with pytest.raises(ValueError, match="not ISO 8601"):
        display_time("yesterday")


def test_pdf_holds_the_confirmed_figures_reviewer_and_statement(pdf_file):
    assert pdf_file.read_bytes().startswith(b"%PDF")
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext (poppler-utils) not installed")
    text = pdf_text(pdf_file)
    assert STATEMENT in text
    assert REVIEWER in text
    for name, automated in AUTOMATED_COUNTS.items():
        assert re.search(rf"{name.capitalize()} lesions \(n\)\s+{automated}\s+{CONFIRMED_COUNTS[name]}\b", text), name
    assert "Pending: not decided at sign-off" in text
    assert "page 1 of" in text  # the print CSS's page footer


@needs_poppler
def test_pdf_first_page_is_drawn(pdf_file, tmp_path):
    subprocess.run(["pdftoppm", "-r", "50", "-png", "-f", "1", "-l", "1", "-singlefile", str(pdf_file),
                    str(tmp_path / "page")], check=True, capture_output=True)
    grey = np.asarray(Image.open(tmp_path / "page.png").convert("L"), float)
    # A4 at 50 dpi is 413 x 585 pixels.
    assert abs(grey.shape[0] - 585) <= 2 and abs(grey.shape[1] - 413) <= 2
    assert grey.std() > 10
    assert 0.02 < (grey < 200).mean() < 0.6  # text and the signature box, on a mostly white page


@needs_poppler
def test_pdf_embeds_the_thumbnail(pdf_file, thumbnail):
    listing = subprocess.run(["pdfimages", "-list", str(pdf_file)], check=True, capture_output=True,
                             text=True).stdout.splitlines()[2:]
    assert len(listing) == 1
    columns = listing[0].split()
    assert columns[2] == "image" and columns[3:5] == ["120", "80"]


def test_offline_fetcher_reads_data_urls_and_refuses_the_rest(thumbnail):
    fetcher = offline_url_fetcher()
    response = fetcher(f"data:image/png;base64,{thumbnail}")
    assert response.read() == base64.b64decode(thumbnail)
    for url in ("http://192.0.2.1/x.png", "https://192.0.2.1/x.css", "file:///etc/hostname", "ftp://192.0.2.1/x"):
        with pytest.raises(ValueError, match="disallowed protocol"):
            fetcher(url)


def test_pdf_rendering_opens_no_connection(monkeypatch, caplog):
    """Remote and local URLs written straight into the HTML are refused, never fetched."""
    attempts = []
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: attempts.append(address))
    monkeypatch.setattr(socket, "create_connection", lambda address, *args, **kwargs: attempts.append(address))
    page = ('<html><head><link rel="stylesheet" href="http://192.0.2.1/x.css">'
            '<style>@import url("https://192.0.2.1/y.css");</style></head><body><p>text</p>'
            '<img src="http://192.0.2.1/x.png"><img src="file:///etc/hostname">'
            f'<img src="data:image/png;base64,{png_base64(8, 8)}"></body></html>')
    with caplog.at_level("ERROR", logger="weasyprint"):
        pdf = render_final_pdf(page)
    assert pdf.startswith(b"%PDF")
    assert attempts == []
    refused = " ".join(record.getMessage() for record in caplog.records)
    for url in ("http://192.0.2.1/x.css", "https://192.0.2.1/y.css", "http://192.0.2.1/x.png", "file:///etc/hostname"):
        assert url in refused
