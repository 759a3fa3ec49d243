"""Tests for protocol: recognising series by the shipped rules, conformance checks, the documented choice."""

from __future__ import annotations

from pathlib import Path

import pytest

from msvol.config import IngestParams, load_params
from msvol.datatypes import Acquisition, SeriesInfo
from msvol.errors import ConfigError
from msvol.ingest import protocol

REPO = Path(__file__).resolve().parents[2]
RULES = protocol.load_protocol()
LIMITS = IngestParams()

FLAIR_3D = dict(description="t2_spc_da-fl_sag_p2_iso", mr_acquisition_type="3D", repetition_time_ms=5000.0,
                echo_time_ms=386.0, inversion_time_ms=1800.0)
T1_3D = dict(description="t1_mprage_sag_p2_iso", mr_acquisition_type="3D", repetition_time_ms=2300.0,
             echo_time_ms=2.98, inversion_time_ms=900.0)


def series(number=5, spacing=(1.0, 1.0, 1.0), shape=(192, 256, 176), thickness=None, **overrides) -> SeriesInfo:
    values = dict(series_uid=f"1.2.3.{number}", study_uid="1.2.3", number=number, modality="MR",
                  image_type=("ORIGINAL", "PRIMARY", "M", "NONE"), acquisition=Acquisition(
                      manufacturer="SIEMENS", model="Prisma", field_strength_t=3.0, software="syngo MR E11"),
                  shape=shape, pixel_spacing_mm=spacing[:2], slice_spacing_mm=spacing[2],
                  slice_thickness_mm=spacing[2] if thickness is None else thickness, geometry_error_mm=0.0,
                  contrast_agent=None, files=(), frame_numbers=(), **FLAIR_3D)
    values.update(overrides)
    return SeriesInfo(**values)


def statuses(checks) -> dict[str, str]:
    return {check.rule: check.status for check in checks}


@pytest.mark.parametrize("description, role", [
    ("t2_spc_da-fl_sag_p2_iso", "flair"), ("Sag CUBE T2 FLAIR", "flair"), ("3D_Brain_VIEW_FLAIR_SHC", "flair"),
    ("AX T2 FLAIR 5mm", "flair"), ("t1_mprage_sag_p2_iso", "t1"), ("Sag BRAVO", "t1"), ("T1W_3D_TFE", "t1"),
    ("t2_spc_da-fl_sag_p2_iso_MPR_tra", None), ("T1_POST_GD", None), ("t1_se_tra", None), ("ep2d_diff_tra", None),
    ("localizer", None), ("mp2rage_UNI_Images", None),
])
def test_shipped_rules_recognise_vendor_descriptions(description, role):
    assert protocol.recognise(series(description=description), RULES) == role


def test_localisers_and_non_mr_are_never_candidates():
    assert protocol.recognise(series(image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")), RULES) is None
    assert protocol.recognise(series(modality="CT"), RULES) is None


def test_a_conforming_3d_flair_passes_every_check():
    checks = protocol.check_series(series(), "flair", RULES, LIMITS)
    assert {check.status for check in checks} == {"pass"}, checks
    acquisition = next(check for check in checks if check.rule == "MR acquisition type")
    assert (acquisition.measured, acquisition.limit) == ("3D", "3D")


def test_a_2d_thick_flair_fails_with_measured_values_and_limits():
    thick = series(description="AX T2 FLAIR 5mm", mr_acquisition_type="2D", spacing=(0.9, 0.9, 6.0), thickness=5.0,
                   shape=(256, 256, 28), repetition_time_ms=9000.0, echo_time_ms=90.0, inversion_time_ms=2500.0)
    checks = {check.rule: check for check in protocol.check_series(thick, "flair", RULES, LIMITS)}
    assert checks["MR acquisition type"].status == "fail" and checks["MR acquisition type"].measured == "2D"
    assert checks["voxel size (mm)"].status == "fail" and checks["voxel size (mm)"].measured == "6.00"
    assert checks["slice thickness (mm)"].status == "fail" and "1.5" in checks["slice thickness (mm)"].limit
    assert checks["gap between slices (mm)"].status == "warn" and checks["gap between slices (mm)"].measured == "1.00"
    decision = protocol.choose("flair", [thick], RULES, LIMITS)
    assert decision.chosen is None
    assert "MR acquisition type 2D (needs 3D)" in decision.why and "AX T2 FLAIR 5mm" in decision.why


@pytest.mark.parametrize("voxel, expected", [(1.0, "pass"), (1.2, "pass"), (1.25, "warn"), (1.5, "warn"),
                                             (1.51, "fail")])
def test_voxel_size_is_graded_at_the_configured_limits(voxel, expected):
    checks = statuses(protocol.check_series(series(spacing=(1.0, 1.0, voxel)), "flair", RULES, LIMITS))
    assert checks["voxel size (mm)"] == expected


def test_timing_outside_the_expected_range_warns_and_absent_ti_warns():
    checks = statuses(protocol.check_series(series(echo_time_ms=20.0, inversion_time_ms=None), "flair", RULES, LIMITS))
    assert checks["echo time (ms)"] == "warn" and checks["inversion time (ms)"] == "warn"
    assert checks["repetition time (ms)"] == "pass"


def test_irregular_slices_missing_geometry_and_unreadable_series_fail():
    assert statuses(protocol.check_series(series(geometry_error_mm=0.8), "flair", RULES, LIMITS))[
        "slice positions on one grid (mm)"] == "fail"
    assert statuses(protocol.check_series(series(geometry_error_mm=0.009), "flair", RULES, LIMITS))[
        "slice positions on one grid (mm)"] == "pass"
    broken = series(problems=("2 images repeat a slice position",), geometry_error_mm=None, slice_spacing_mm=None)
    checks = statuses(protocol.check_series(broken, "flair", RULES, LIMITS))
    assert checks["readable as one 3D volume"] == "fail" and checks["voxel size (mm)"] == "fail"


def test_small_field_of_view_fails_and_unusual_field_strength_warns():
    small = series(shape=(100, 256, 176))
    assert statuses(protocol.check_series(small, "flair", RULES, LIMITS))["field of view (mm)"] == "fail"
    odd = series(acquisition=Acquisition(field_strength_t=7.0))
    assert statuses(protocol.check_series(odd, "flair", RULES, LIMITS))["field strength (T)"] == "warn"


def test_contrast_enhanced_t1_warns():
    t1 = series(contrast_agent="Gadovist", **{**T1_3D, "description": "t1_mprage_sag_p2_iso"})
    assert statuses(protocol.check_series(t1, "t1", RULES, LIMITS))["contrast agent"] == "warn"


def test_choice_prefers_conforming_then_fewer_warnings_then_original_then_finer_then_later():
    good = series(number=5)
    two_d = series(number=3, description="AX T2 FLAIR 5mm", mr_acquisition_type="2D", spacing=(0.9, 0.9, 5.0))
    decision = protocol.choose("flair", [two_d, good], RULES, LIMITS)
    assert decision.chosen.series is good and "passes every required check" in decision.why
    assert "series 3 'AX T2 FLAIR 5mm'" in decision.why

    warned = series(number=7, echo_time_ms=20.0)
    assert protocol.choose("flair", [warned, good], RULES, LIMITS).why.endswith("fewer protocol warnings")
    derived = series(number=8, image_type=("DERIVED", "SECONDARY"))
    assert "ORIGINAL" in protocol.choose("flair", [derived, good], RULES, LIMITS).why
    coarse = series(number=9, spacing=(1.1, 1.1, 1.1))
    assert "smaller voxels" in protocol.choose("flair", [coarse, good], RULES, LIMITS).why
    repeat = series(number=11)
    decision = protocol.choose("flair", [good, repeat], RULES, LIMITS)
    assert decision.chosen.series is repeat and "acquired later" in decision.why


def test_exam_decisions_give_one_decision_per_role_and_explain_a_missing_t1():
    decisions = protocol.exam_decisions([series(), series(number=1, description="localizer")], RULES, LIMITS)
    assert decisions["flair"].chosen is not None
    assert decisions["t1"].chosen is None and "no series matches the 3D T1 rule" in decisions["t1"].why


def test_the_site_copy_of_the_protocol_equals_the_shipped_one():
    """protocols/ms_standard.yaml is what a site edits; the package ships the same file so a wheel finds it."""
    shipped = protocol.DEFAULT_PROTOCOL
    assert str(shipped).startswith(str(Path(protocol.__file__).parent)), "found inside the package"
    assert shipped.read_bytes() == (REPO / "protocols" / "ms_standard.yaml").read_bytes(), \
        "copy protocols/ms_standard.yaml over msvol/ingest/protocols/ms_standard.yaml (or back): they differ"
    assert protocol.load_protocol().source == shipped


def test_the_shipped_protocol_params_equal_the_defaults():
    """protocols/ms_standard.yaml documents the defaults; a site copy changes them."""
    assert load_params(REPO / "protocols" / "ms_standard.yaml").ingest == IngestParams()


@pytest.mark.parametrize("text, message", [
    ("series: {flair: {include: [x]}}\n", "exactly the roles"),
    ("series: {flair: {include: ['(']}, t1: {include: [t1]}}\n", "invalid pattern"),
    ("series: {flair: {include: [x], expect: {echo_time: [1, 2]}}, t1: {include: [t1]}}\n", "unknown key"),
    ("series: {flair: {include: [x], expect: {echo_time_ms: [5, 2]}}, t1: {include: [t1]}}\n", "[low, high]"),
    ("series: {flair: {include: [x], require: {mr_acquisition_type: 4D}}, t1: {include: [t1]}}\n", "2D or 3D"),
    ("series: {flair: {include: []}, t1: {include: [t1]}}\n", "at least one pattern"),
])
def test_bad_protocol_files_name_the_file_and_the_key(tmp_path, text, message):
    path = tmp_path / "site.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="site.yaml") as error:
        protocol.load_protocol(path)
    assert message in str(error.value)


def test_a_site_protocol_changes_recognition(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text("series:\n  flair: {include: ['^DF3D$'], require: {mr_acquisition_type: 3D}}\n"
                    "  t1: {include: ['^T1GRE$']}\n")
    site = protocol.load_protocol(path)
    assert protocol.recognise(series(description="DF3D"), site) == "flair"
    assert protocol.recognise(series(description="t2_spc_da-fl_sag_p2_iso"), site) is None
