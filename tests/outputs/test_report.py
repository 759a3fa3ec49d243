"""Tests for report: the report model (output contract), its JSON and its CSV, from hand-made results."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
import re

import pytest

from msvol.config import Params
from msvol.datatypes import AtrophyResult, IntervalResult, LesionChange, QCFlag, TimepointMeasures
from msvol.outputs import report

METHODS = [
    "Images were bias-corrected with N4 [tustison2010].",
    "Lesions were segmented with a 3D U-Net [monai, ronneberger2015].",
    "Lesions are connected components of the thresholded probability map.",
]
CITED = {"tustison2010", "monai", "ronneberger2015"}

# (status, id) of the first interval's changes: 2 new, 1 enlarging, 1 shrinking, 1 resolved, 3 stable
FIRST_CHANGES = [("new", 1), ("new", 2), ("enlarging", 3), ("shrinking", 4), ("stable", 5), ("stable", 6),
                 ("stable", 7), ("resolved", 8)]
SECOND_CHANGES = [("stable", 1), ("enlarging", 2)]


def change(status: str, lesion_id: int) -> LesionChange:
    baseline = {"new": 0.0, "resolved": 40.0}.get(status, 50.0)
    followup = {"new": 30.0, "resolved": 0.0, "enlarging": 90.0, "shrinking": 20.0}.get(status, 50.0)
    # confidence as lesion_change.fuse_change gives it: none for a resolved lesion (nothing at follow-up)
    confidence = None if status == "resolved" else round(0.5 + 0.05 * lesion_id, 3)
    return LesionChange(lesion_id, status, baseline, followup, (10.04 * lesion_id, -5.06, 20.0),
                        () if status == "new" else (lesion_id,), () if status == "resolved" else (lesion_id,),
                        confidence=confidence)


def timepoint(session: str, date: dt.date, lesion_count: int) -> TimepointMeasures:
    return TimepointMeasures(session, date, 1200.123, 1350.456, 1500.0, 0.80012, lesion_count, 3.4567)


def interval(first: str, second: str, changes, years: float, pbvc: float, annualized, flags=()) -> IntervalResult:
    atrophy = AtrophyResult(pbvc, annualized, years, 0.97654, -2.5)
    return IntervalResult(first, second, atrophy, tuple(change(*item) for item in changes), tuple(flags))


@pytest.fixture
def results():
    timepoints = [timepoint("01", dt.date(2020, 1, 15), 6), timepoint("02", dt.date(2021, 1, 14), 7),
                  timepoint("03", dt.date(2021, 4, 1), 8)]
    intervals = [
        interval("01", "02", FIRST_CHANGES, 0.9966, -0.61234, -0.61444),
        interval("02", "03", SECOND_CHANGES, 0.2122, -0.1, None,
                 flags=[QCFlag("short_interval", "Interval of 0.21 years: PBVC is not annualised.",
                               "ses-02_to_ses-03")]),
    ]
    return timepoints, intervals


def build(results, params=None, qc_flags=()):
    timepoints, intervals = results
    return report.build_report(
        "07", timepoints, intervals, params=params or Params(), methods=METHODS, qc_flags=list(qc_flags),
        lesion_files={tp.session: f"ses-{tp.session}/lesions.nii.gz" for tp in timepoints},
        interval_files={("01", "02"): {"new_lesions": "intervals/ses-01_to_ses-02/new_lesions.nii.gz"}})


def test_report_has_the_contract_keys(results):
    model = build(results)
    for key in ("schema_version", "subject", "timepoints", "intervals", "qc_flags", "methods", "references",
                "params", "params_hash", "params_sources", "disclaimer", "status", "software"):
        assert key in model, key
    assert model["schema_version"] == report.SCHEMA_VERSION
    assert model["subject"] == "07"


def test_timepoints_carry_session_date_and_volumes(results):
    timepoints = build(results)["timepoints"]
    assert [tp["session"] for tp in timepoints] == ["01", "02", "03"]
    assert [tp["date"] for tp in timepoints] == ["2020-01-15", "2021-01-14", "2021-04-01"]
    first = timepoints[0]
    assert first["brain_volume_ml"] == pytest.approx(1200.12)
    assert first["normalized_brain_volume_ml"] == pytest.approx(1350.46)
    assert first["intracranial_volume_ml"] == pytest.approx(1500.0)
    assert first["brain_parenchymal_fraction"] == pytest.approx(0.8001)
    assert first["lesion_count"] == 6
    assert first["lesion_volume_ml"] == pytest.approx(3.457)
    assert first["files"] == {"lesions": "ses-01/lesions.nii.gz"}


def test_intervals_carry_sessions_years_and_pbvc(results):
    first, second = build(results)["intervals"]
    assert (first["from_session"], first["to_session"]) == ("01", "02")
    assert (second["from_session"], second["to_session"]) == ("02", "03")
    assert first["years"] == pytest.approx(0.9966)
    assert first["pbvc_percent"] == pytest.approx(-0.612)
    assert first["pbvc_annualized_percent"] == pytest.approx(-0.614)
    assert second["pbvc_annualized_percent"] is None
    assert second["pbvc_beyond_pathological_cutoff"] is None
    # -0.614 %/year is beyond the -0.40 %/year cut-off (inclusive)
    assert first["pbvc_beyond_pathological_cutoff"] is True
    assert first["files"] == {"new_lesions": "intervals/ses-01_to_ses-02/new_lesions.nii.gz"}
    assert second["files"] == {}
    assert [flag["code"] for flag in second["qc_flags"]] == ["short_interval"]
    assert first["qc_flags"] == []


def test_pathological_cutoff_is_inclusive(results):
    timepoints, _ = results
    at_cutoff = [interval("01", "02", [], 1.0, -0.40, Params().atrophy.pathological_annualized_pbvc_percent)]
    just_above = [interval("01", "02", [], 1.0, -0.39, -0.39)]
    assert build((timepoints[:2], at_cutoff))["intervals"][0]["pbvc_beyond_pathological_cutoff"] is True
    assert build((timepoints[:2], just_above))["intervals"][0]["pbvc_beyond_pathological_cutoff"] is False


def test_counts_are_integers_that_match_the_changes(results):
    first, second = build(results)["intervals"]
    assert first["counts"] == {"new": 2, "enlarging": 1, "shrinking": 1, "resolved": 1, "stable": 3, "possible_new": 0}
    assert second["counts"] == {"new": 0, "enlarging": 1, "shrinking": 0, "resolved": 0, "stable": 1, "possible_new": 0}
    for model in (first, second):
        assert all(type(value) is int for value in model["counts"].values())
        statuses = [lesion["status"] for lesion in model["lesions"]]
        assert {name: statuses.count(name) for name in model["counts"]} == model["counts"]


def test_lesions_carry_id_status_volumes_and_centroid(results):
    lesions = build(results)["intervals"][0]["lesions"]
    assert [(lesion["status"], lesion["id"]) for lesion in lesions] == FIRST_CHANGES
    enlarging = lesions[2]
    assert enlarging["baseline_volume_mm3"] == 50.0 and enlarging["followup_volume_mm3"] == 90.0
    assert enlarging["centroid_mm"] == [30.1, -5.1, 20.0]
    assert lesions[0]["baseline_labels"] == [] and lesions[0]["followup_labels"] == [1]
    assert lesions[7]["followup_labels"] == []


def test_every_lesion_carries_its_confidence(results):
    lesions = build(results)["intervals"][0]["lesions"]
    assert [lesion["confidence"] for lesion in lesions] == [0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, None]
    loaded = json.loads(report.render_json(build(results)))
    assert [lesion["confidence"] for lesion in loaded["intervals"][0]["lesions"]] == \
        [0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, None], "null in JSON when no model gave one"


def test_only_new_and_enlarging_lesions_await_review(results):
    for model in build(results)["intervals"]:
        for lesion in model["lesions"]:
            if lesion["status"] in ("new", "enlarging"):
                assert lesion["review"] == {"decision": "pending"}
            else:
                assert "review" not in lesion


def test_params_and_hash_are_the_effective_ones(results):
    model = build(results)
    assert model["params_hash"] == Params().hash()
    assert model["params"]["lesions"]["min_new_lesion_volume_mm3"] == Params().lesions.min_new_lesion_volume_mm3
    assert "lesions.min_new_lesion_volume_mm3" in model["params_sources"]
    custom = Params(lesions=dataclasses.replace(Params().lesions, min_new_lesion_volume_mm3=20.0))
    custom_model = build(results, params=custom)
    assert custom_model["params_hash"] == custom.hash() != Params().hash()
    assert custom_model["params"]["lesions"]["min_new_lesion_volume_mm3"] == 20.0


def test_references_are_exactly_the_cited_keys(results):
    model = build(results)
    assert set(model["references"]) == CITED
    assert model["references"]["monai"] == report.REFERENCES["monai"]
    assert model["methods"] == " ".join(METHODS)


def _stage_sentence(stage: str) -> str:
    if stage == "segment":
        return "[monai, ronneberger2015, billot2023]"  # segment's sentence is built at run time with these keys
    import importlib

    return importlib.import_module(f"msvol.stages.{stage}").METHODS


@pytest.mark.parametrize("stage", ["preprocess", "register", "lesions", "atrophy", "segment"])
def test_every_key_cited_by_a_stage_has_a_reference(stage):
    """A stage citing a key unknown to REFERENCES would leave a dangling citation in the report."""
    cited = {key.strip() for group in re.findall(r"\[([^\]]+)\]", _stage_sentence(stage))
             for key in group.split(",")}
    assert cited <= set(report.REFERENCES), cited - set(report.REFERENCES)


def test_qc_flags_of_the_subject_are_listed(results):
    flag = QCFlag("single_visit", "Only one visit.", "subject")
    assert build(results, qc_flags=[flag])["qc_flags"] == [
        {"code": "single_visit", "message": "Only one visit.", "scope": "subject"}]


def test_no_patient_identifying_field_anywhere(results):
    model = build(results)
    text = report.render_json(model)

    def keys(node, path=()):
        if isinstance(node, dict):
            for key, value in node.items():
                yield path + (key,)
                yield from keys(value, path + (key,))
        elif isinstance(node, list):
            for value in node:
                yield from keys(value, path)

    def words(key: str) -> set[str]:
        return set(re.split(r"[^a-z0-9]+", key.lower()))

    # params_sources keys are "section.field": their words are field-name words, checked the same way
    name_keys = [path for path in keys(model) if words(path[-1]) & {"name", "patientname", "surname"}]
    assert name_keys == [("software", "name")]  # the program's name, not a person's
    for forbidden in ("patient", "birth", "birthdate", "dob", "sex", "age"):
        assert not [path for path in keys(model) if forbidden in words(path[-1])], forbidden
    assert "PatientName" not in text and "PatientBirthDate" not in text


def test_render_json_round_trips(results):
    model = build(results)
    loaded = json.loads(report.render_json(model))
    assert loaded["intervals"][0]["counts"] == model["intervals"][0]["counts"]
    assert loaded["timepoints"] == model["timepoints"]
    assert loaded["params_hash"] == model["params_hash"]


def test_render_csv_has_one_row_per_interval(results):
    model = build(results)
    rows = list(csv.DictReader(io.StringIO(report.render_csv(model))))
    assert len(rows) == 2
    assert tuple(rows[0]) == report.INTERVAL_CSV_COLUMNS
    first, second = rows
    assert first["subject"] == "07"
    assert (first["from_session"], first["to_session"]) == ("01", "02")
    assert (second["from_session"], second["to_session"]) == ("02", "03")
    assert float(first["pbvc_percent"]) == pytest.approx(-0.612)
    assert float(first["pbvc_annualized_percent"]) == pytest.approx(-0.614)
    assert second["pbvc_annualized_percent"] == ""
    assert float(first["years"]) == pytest.approx(0.9966)
    assert float(first["alignment_correlation"]) == pytest.approx(0.9765)
    assert {name: int(first[name]) for name in ("new", "enlarging", "shrinking", "resolved", "stable")} == \
        {"new": 2, "enlarging": 1, "shrinking": 1, "resolved": 1, "stable": 3}
    assert first["qc_flags"] == "" and second["qc_flags"] == "short_interval"


def test_render_csv_of_a_single_visit_has_only_the_header(results):
    timepoints, _ = results
    text = report.render_csv(build((timepoints[:1], [])))
    assert text.splitlines() == [",".join(report.INTERVAL_CSV_COLUMNS)]


def test_timepoints_carry_the_acquisition_and_the_html_shows_it(results):
    from msvol.datatypes import Acquisition
    from msvol.outputs.html import render_html

    timepoints, intervals = results
    scanners = {"01": Acquisition("SIEMENS", "Prisma", 3.0, "syngo MR E11", "t2_spc_da-fl_sag_p2_iso"),
                "02": Acquisition("GE MEDICAL SYSTEMS", "DISCOVERY MR750", 1.5, None, "Sag CUBE T2 FLAIR")}
    model = report.build_report(
        "07", timepoints, intervals, params=Params(), methods=METHODS, qc_flags=[],
        lesion_files={}, interval_files={}, acquisitions=scanners)
    assert model["timepoints"][0]["acquisition"] == {
        "manufacturer": "SIEMENS", "model": "Prisma", "field_strength_t": 3.0, "software": "syngo MR E11",
        "protocol": "t2_spc_da-fl_sag_p2_iso"}
    assert model["timepoints"][2]["acquisition"]["manufacturer"] is None  # not recorded for that session
    html = render_html(model, {})
    assert "SIEMENS, Prisma, 3 T, t2_spc_da-fl_sag_p2_iso" in html
    assert "GE MEDICAL SYSTEMS, DISCOVERY MR750, 1.5 T, Sag CUBE T2 FLAIR" in html
    assert "not recorded" in html
