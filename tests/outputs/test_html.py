"""Tests for outputs.html: lesion thumbnails, the trend chart, the self-contained HTML page."""

from __future__ import annotations

import base64
import io
import re
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest
from PIL import Image

from msvol.datatypes import IntervalImages
from msvol.outputs.html import OUTLINE_RGB, PANEL_GAP_PX, UPSCALE, lesion_thumbnails, render_html, trend_svg

SHAPE = (40, 40, 40)
# Lesion 3 at follow-up: a 6-voxel cube at patient left (low x), anterior (high y), on a RAS 1 mm grid.
LESION_BOX = (slice(6, 12), slice(26, 32), slice(17, 23))


@pytest.fixture
def images() -> IntervalImages:
    rng = np.random.default_rng(0)
    baseline_flair = rng.normal(100, 5, SHAPE).astype(np.float32)
    followup_flair = rng.normal(100, 5, SHAPE).astype(np.float32)
    followup_flair[LESION_BOX] += 100
    baseline_labels = np.zeros(SHAPE, np.int32)
    baseline_labels[30:34, 5:9, 5:9] = 9  # a baseline-only lesion, absent at follow-up
    followup_labels = np.zeros(SHAPE, np.int32)
    followup_labels[LESION_BOX] = 3
    return IntervalImages(baseline_flair, followup_flair, baseline_labels, followup_labels, np.eye(4))


def decode(png_base64: str) -> np.ndarray:
    image = Image.open(io.BytesIO(base64.b64decode(png_base64)))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def outline_pixels(rgb: np.ndarray) -> np.ndarray:
    return np.all(rgb == OUTLINE_RGB, axis=2)


def test_thumbnail_is_a_png_of_the_documented_size(images):
    window = 40
    rgb = decode(lesion_thumbnails(images, [3], window_mm=window)[3])
    panel = window * UPSCALE
    assert rgb.shape == (2 * panel + PANEL_GAP_PX, 3 * panel + 2 * PANEL_GAP_PX, 3)


def test_outline_sits_on_the_lesion_edge(images):
    window = 40
    rgb = decode(lesion_thumbnails(images, [3], window_mm=window)[3])
    panel = window * UPSCALE
    for top in (0, panel + PANEL_GAP_PX):  # the same outline on the baseline and follow-up rows
        axial = rgb[top:top + panel, :panel]
        rows, columns = np.nonzero(outline_pixels(axial))
        # The 6-voxel cube spans 6 * UPSCALE output pixels; the outline is its inner edge.
        assert rows.max() - rows.min() + 1 == 6 * UPSCALE
        assert columns.max() - columns.min() + 1 == 6 * UPSCALE
        assert tuple(axial[rows.min(), columns.min()]) == OUTLINE_RGB
        centre = axial[(rows.min() + rows.max()) // 2, (columns.min() + columns.max()) // 2]
        assert centre[0] == centre[1] == centre[2], "the lesion inside the outline stays grey"
    assert outline_pixels(rgb[:panel, panel + PANEL_GAP_PX:]).any(), "coronal and sagittal are outlined too"


def test_axial_panel_is_in_radiological_orientation(images):
    """The lesion lies near the left anterior corner of the volume, so the black padding beyond
    the volume shows where patient left (image right) and anterior (image top) are drawn."""
    window = 40
    rgb = decode(lesion_thumbnails(images, [3], window_mm=window)[3])
    axial = rgb[window * UPSCALE + PANEL_GAP_PX:, : window * UPSCALE]  # follow-up row
    edge = 3 * UPSCALE
    assert np.all(axial[:, -edge:] == 0), "beyond the patient-left border: black on the image right"
    assert np.all(axial[:edge] == 0), "beyond the anterior border: black at the top"
    assert axial[-edge:, :edge].any(), "the posterior patient-right corner is inside the volume"


def test_thumbnail_does_not_depend_on_the_voxel_axis_order(images):
    """The same anatomy stored left-to-right or right-to-left, or with axes swapped, looks the same."""
    flip_x = np.array([[-1, 0, 0, SHAPE[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    flipped = IntervalImages(*(array[::-1] for array in (images.baseline_flair, images.followup_flair,
                                                         images.baseline_labels, images.followup_labels)),
                             flip_x)
    swap_xy = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    swapped = IntervalImages(*(array.transpose(1, 0, 2) for array in (images.baseline_flair, images.followup_flair,
                                                                      images.baseline_labels,
                                                                      images.followup_labels)), swap_xy)
    expected = decode(lesion_thumbnails(images, [3], window_mm=20)[3])
    assert np.array_equal(decode(lesion_thumbnails(flipped, [3], window_mm=20)[3]), expected)
    assert np.array_equal(decode(lesion_thumbnails(swapped, [3], window_mm=20)[3]), expected)


def test_id_absent_at_followup_is_found_at_baseline(images):
    rgb = decode(lesion_thumbnails(images, [9], window_mm=20)[9])
    assert outline_pixels(rgb).any()


def test_unknown_id_is_an_error(images):
    with pytest.raises(ValueError, match="lesion 42"):
        lesion_thumbnails(images, [42], window_mm=20)


def test_inputs_are_not_modified(images):
    before = images.followup_labels.copy(), images.followup_flair.copy()
    lesion_thumbnails(images, [3], window_mm=20)
    assert np.array_equal(images.followup_labels, before[0])
    assert np.array_equal(images.followup_flair, before[1])


def timepoint(session: str, date: str, brain_volume_ml: float) -> dict:
    return {"session": session, "date": date, "brain_volume_ml": brain_volume_ml,
            "normalized_brain_volume_ml": brain_volume_ml * 1.1, "intracranial_volume_ml": 1500.0,
            "brain_parenchymal_fraction": brain_volume_ml / 1500.0, "lesion_count": 4, "lesion_volume_ml": 2.5,
            "files": {"lesions": f"{session}/lesions.nii.gz"}}


def test_trend_svg_with_one_timepoint_is_well_formed():
    svg = ElementTree.fromstring(trend_svg([timepoint("ses-01", "2024-01-10", 1100.0)]))
    assert len(svg.findall("circle")) == 1
    assert svg.findall("polyline") == []
    texts = [text.text for text in svg.iter("text")]
    assert "2024-01-10" in texts and "Brain volume (ml)" in texts and "Date" in texts


def test_trend_svg_with_three_timepoints_runs_left_to_right_in_time():
    points = [timepoint("ses-01", "2022-01-10", 1110.0), timepoint("ses-02", "2023-01-10", 1105.0),
              timepoint("ses-03", "2023-07-10", 1098.0)]
    svg = ElementTree.fromstring(trend_svg(points))
    x = [float(circle.get("cx")) for circle in svg.findall("circle")]
    y = [float(circle.get("cy")) for circle in svg.findall("circle")]
    assert len(svg.findall("polyline")) == 1
    assert x[0] < x[1] < x[2]
    assert (x[2] - x[1]) < (x[1] - x[0]), "x is proportional to time: 6 months after 12"
    assert y[0] < y[1] < y[2], "a falling volume goes down the chart"


def test_trend_svg_labels_only_the_newer_of_two_close_dates():
    points = [timepoint("ses-01", "2020-01-10", 1110.0), timepoint("ses-02", "2024-01-10", 1105.0),
              timepoint("ses-03", "2024-01-20", 1104.0)]
    texts = [text.text for text in ElementTree.fromstring(trend_svg(points)).iter("text")]
    assert "2020-01-10" in texts and "2024-01-20" in texts and "2024-01-10" not in texts


def test_trend_svg_needs_a_timepoint():
    with pytest.raises(ValueError):
        trend_svg([])


@pytest.fixture
def report() -> dict:
    def lesion(lesion_id, status, baseline, followup, confidence, **notes):
        model = {"id": lesion_id, "status": status, "baseline_volume_mm3": baseline,
                 "followup_volume_mm3": followup, "centroid_mm": [10.5, -20.0, 30.5],
                 "baseline_labels": [1] if baseline else [], "followup_labels": [lesion_id],
                 "merged": False, "split": False, "confluent": False, "confidence": confidence, **notes}
        if status in ("new", "enlarging"):
            model["review"] = {"decision": "pending"}
        return model

    return {
        "schema_version": "1.0",
        "software": {"name": "msvol", "version": "0.1.0"},
        "generated": "2025-01-01T00:00:00+00:00",
        "status": "automated result, awaiting radiologist confirmation",
        "disclaimer": "msvol is research software, not a medical device.",
        "subject": "07",
        "timepoints": [timepoint("ses-01", "2023-01-10", 1110.0), timepoint("ses-02", "2024-01-12", 1104.0),
                       timepoint("ses-03", "2024-03-01", 1103.5)],
        "intervals": [
            {"from_session": "ses-01", "to_session": "ses-02", "years": 1.0055, "pbvc_percent": -0.55,
             "pbvc_annualized_percent": -0.547, "pbvc_beyond_pathological_cutoff": True,
             "alignment_correlation": 0.9812, "boundary_shift_ml": 6.1,
             "counts": {"new": 2, "enlarging": 1, "shrinking": 0, "resolved": 0, "stable": 1},
             "lesions": [lesion(3, "new", 0.0, 52.0, 0.9), lesion(8, "new", 0.0, 31.0, 0.4),
                         lesion(11, "enlarging", 40.0, 95.0, 0.7, confluent=True),
                         lesion(5, "stable", 60.0, 61.0, 0.95)],
             "qc_flags": [{"code": "scanner_change", "message": "The scanner model changed between visits.",
                           "scope": "ses-01_to_ses-02"}],
             "files": {"new_lesions": "ses-01_to_ses-02/new_lesions.nii.gz"}},
            {"from_session": "ses-02", "to_session": "ses-03", "years": 0.1314, "pbvc_percent": -0.05,
             "pbvc_annualized_percent": None, "pbvc_beyond_pathological_cutoff": None,
             "alignment_correlation": 0.9901, "boundary_shift_ml": 0.5,
             "counts": {"new": 0, "enlarging": 0, "shrinking": 0, "resolved": 0, "stable": 4},
             "lesions": [], "qc_flags": [], "files": {}},
        ],
        "qc_flags": [{"code": "short_interval", "message": "Visits less than 6 months apart.", "scope": "subject"}],
        "methods": "Bias correction with N4 [tustison2010].",
        "references": {"tustison2010": "Tustison NJ et al. N4ITK. IEEE Trans Med Imaging 2010;29:1310-20."},
        "params": {"atrophy": {"pathological_annualized_pbvc_percent": -0.4}},
        "params_hash": "0123456789abcdef",
    }


@pytest.fixture
def thumbnails(images) -> dict:
    return {("ses-01", "ses-02"): lesion_thumbnails(images, [3], window_mm=10)}


def test_html_shows_status_flags_and_every_lesion_to_review(report, thumbnails):
    page = render_html(report, thumbnails)
    for text in (report["status"], report["disclaimer"], "sub-07", "The scanner model changed between visits.",
                 "Visits less than 6 months apart.", "n/a (interval too short)", "confluent",
                 report["params_hash"], "tustison2010", "pending"):
        assert text in page
    for lesion_id in (3, 8, 11):
        assert f"Lesion {lesion_id}:" in page
    assert "Lesion 5:" not in page, "stable lesions are counted, not listed for review"
    assert page.count("data:image/png;base64,") == 1, "lesion 3 has a thumbnail, 8 and 11 do not"
    assert "No thumbnail available." in page


def test_html_is_self_contained(report, thumbnails):
    page = render_html(report, thumbnails)
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower()
    assert all(source.startswith("data:") for source in re.findall(r'src="([^"]*)"', page))


def test_html_escapes_report_text(report, thumbnails):
    report["subject"] = "<script>alert(1)</script>"
    report["qc_flags"][0]["message"] = "<img src=x onerror=alert(1)>"
    page = render_html(report, thumbnails)
    assert "<script" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def reviewed_ids(page: str) -> list[int]:
    return [int(lesion_id) for lesion_id in re.findall(r"<h4>Lesion (\d+):", page)]


def test_review_list_puts_the_least_confident_finding_first(report, thumbnails):
    page = render_html(report, thumbnails)
    assert reviewed_ids(page) == [8, 11, 3], "confidence 0.4, 0.7, 0.9"
    for shown in ("Lesion 8: new (confidence 0.40)", "Lesion 11: enlarging (confidence 0.70)",
                  "Lesion 3: new (confidence 0.90)"):
        assert shown in page
    assert "Least certain first" in page
    assert [lesion["id"] for lesion in report["intervals"][0]["lesions"]] == [3, 8, 11, 5], "report not modified"


def test_review_list_puts_findings_without_confidence_first_and_shows_none(report, thumbnails):
    report["intervals"][0]["lesions"][0]["confidence"] = None  # lesion 3: no model gave one
    page = render_html(report, thumbnails)
    assert reviewed_ids(page) == [3, 8, 11]
    assert "Lesion 3: new</h4>" in page


def test_review_list_keeps_the_report_order_between_equal_confidences(report, thumbnails):
    for lesion in report["intervals"][0]["lesions"]:
        lesion["confidence"] = 0.5
    assert reviewed_ids(render_html(report, thumbnails)) == [3, 8, 11]


def test_a_possible_new_lesion_only_the_subtraction_image_shows_says_so(report, thumbnails):
    assert "subtraction image only" not in render_html(report, thumbnails)
    report["intervals"][0]["lesions"].append(
        {"id": 20, "status": "possible_new", "baseline_volume_mm3": 0.0, "followup_volume_mm3": 19.0,
         "centroid_mm": [1.0, 2.0, 3.0], "baseline_labels": [], "followup_labels": [], "merged": False, "split": False,
         "confluent": False, "confidence": None, "subtraction_only": True, "review": {"decision": "pending"}})
    report["intervals"][0]["counts"]["possible_new"] = 1
    page = render_html(report, thumbnails)
    assert "Lesion 20: possible new (not counted)" in page
    assert "new FLAIR hyperintensity on the subtraction image only: no model proposed it." in page
