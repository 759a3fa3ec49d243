"""Tests for ops.cohort (and its parse, rows, stats, tables and page modules) and the `msvol cohort` command.

The reports are made by the real report builder (msvol.outputs.report.build_report) from stage results
whose figures are chosen here, so every expected row, rate and share below is worked out by hand from
them. The signed-off subject goes through the real review: register, decide, add a lesion, sign off.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import math
import socket

import pytest
from click.testing import CliRunner

from msvol.cli import main
from msvol.config import COHORT_MEASURES, CohortParams, Params
from msvol.datatypes import AtrophyResult, IntervalResult, LesionChange, QCFlag, TimepointMeasures
from msvol.ops import cohort, cohort_page, cohort_stats, cohort_tables
from msvol.outputs import report

CUTOFF = Params().atrophy.pathological_annualized_pbvc_percent  # -0.40 %/year
REVIEWER = "Dr Quillfeather Reviewer"  # must never reach the cohort outputs
NOTE = "phone Mrs Examplename about this"  # free text of the reader: never copied either


def change(lesion_id: int, status: str, baseline_mm3: float, followup_mm3: float) -> LesionChange:
    return LesionChange(lesion_id, status, baseline_mm3, followup_mm3, (1.5 * lesion_id, -2.0, 3.25),
                        () if status == "new" else (lesion_id,), () if status == "resolved" else (lesion_id,),
                        confidence=0.9)


def write_report(out, subject: str, dates: list[str], intervals: list[tuple], subject_flags=()) -> dict:
    """OUT/sub-<subject>/report.json from the real builder; intervals are (from, to, years, pbvc, annualised,
    changes, interval flags)."""
    timepoints = [TimepointMeasures(f"{index + 1:02d}", dt.date.fromisoformat(date), 1500.0 - index, 1450.0,
                                    1700.0, 0.88, 10 + index, 2.5) for index, date in enumerate(dates)]
    results = [IntervalResult(first, second, AtrophyResult(pbvc, annualized, years, 0.98, -1.0), tuple(changes),
                              tuple(flags)) for first, second, years, pbvc, annualized, changes, flags in intervals]
    model = report.build_report(
        subject, timepoints, results, params=Params(), methods=[], qc_flags=list(subject_flags), lesion_files={},
        interval_files={}, provenance={"models": {"per_visit": {"name": "seg-unet", "version": "2.0.0"}},
                                       "inputs": {}})
    folder = out / f"sub-{subject}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(report.render_json(model))
    return model


@pytest.fixture
def known_out(tmp_path):
    """Five patients with known figures (see each comment); none signed off."""
    out = tmp_path / "out"
    poor = QCFlag("poor_alignment", "Poor alignment.", "ses-01_to_ses-03")
    # sub-01: 3 visits; consecutive: 2 new + 1 enlarging, then 1 new; baseline-to-latest -0.45 %/y (beyond)
    write_report(out, "01", ["2020-01-01", "2021-01-01", "2022-01-01"], [
        ("01", "02", 1.0, -0.5, -0.5, [change(1, "new", 0, 30), change(2, "new", 0, 25),
                                       change(3, "enlarging", 40, 90), change(4, "stable", 50, 50)], ()),
        ("02", "03", 1.0, -0.3, -0.3, [change(5, "new", 0, 20), change(1, "stable", 30, 30)], ()),
        ("01", "03", 2.0, -0.9, -0.45, [change(1, "new", 0, 30), change(2, "new", 0, 25), change(5, "new", 0, 20),
                                        change(3, "enlarging", 40, 90), change(4, "stable", 50, 50)], (poor,))])
    # sub-02: quiet, -0.2 %/y: free of both
    write_report(out, "02", ["2019-03-01", "2021-03-01"], [
        ("01", "02", 2.0, -0.4, -0.2, [change(1, "stable", 60, 60), change(2, "shrinking", 80, 40)], ())])
    # sub-03: quiet but -0.6 %/y: activity-free (a possible new lesion is never counted), not atrophy-free
    write_report(out, "03", ["2020-06-01", "2021-06-01"], [
        ("01", "02", 1.0, -0.6, -0.6, [change(1, "resolved", 30, 0), change(2, "possible_new", 0, 12)], ())])
    # sub-04: quiet, 0.3 years: no annualised PBVC, so the second measure cannot be judged
    write_report(out, "04", ["2020-01-01", "2020-04-20"], [("01", "02", 0.3, -0.1, None, [], ())])
    # sub-05: one visit: nothing to judge
    write_report(out, "05", ["2021-05-05"], [], subject_flags=[QCFlag("scanner_change", "x", "subject")])
    return out


def build(out, cutoff=CUTOFF):
    return cohort.build_cohort(out, cutoff_percent=cutoff, params=CohortParams())


def by_subject(rows):
    return {row["participant_id"]: row for row in rows}


def test_patient_rows_hold_the_hand_computed_follow_up(known_out):
    patients = by_subject(build(known_out).patients)
    first = patients["sub-01"]
    assert (first["visits"], first["followup_years"], first["new_lesions"], first["enlarging_lesions"]) == (
        3, 2.0, 3, 1)
    assert first["new_lesions_per_year"] == 1.5  # 3 new over 1 + 1 years; the 01-03 interval is not counted again
    assert first["annualized_pbvc_percent"] == -0.45 and first["pbvc_interval"] == "ses-01_to_ses-03"
    assert (first["pbvc_beyond_cutoff"], first["pbvc_qc_flags"]) == (True, "poor_alignment")
    assert (first["mri_activity_free"], first["mri_activity_free_atrophy_within_cutoff"]) == (False, False)
    expected = {"sub-02": (True, True, False, 0.0), "sub-03": (True, False, True, 0.0),
                "sub-04": (True, None, None, 0.0), "sub-05": (None, None, None, None)}
    for participant, (free, both, beyond, rate) in expected.items():
        row = patients[participant]
        assert (row["mri_activity_free"], row["mri_activity_free_atrophy_within_cutoff"], row["pbvc_beyond_cutoff"],
                row["new_lesions_per_year"]) == (free, both, beyond, rate), participant
    assert patients["sub-04"]["annualized_pbvc_percent"] is None and patients["sub-04"]["followup_years"] == 0.3
    assert patients["sub-05"]["followup_years"] is None and patients["sub-05"]["qc_flags"] == "scanner_change"
    assert {row["source"] for row in patients.values()} == {"automated"}
    assert {row["signoff_version"] for row in patients.values()} == {None}


def test_visit_interval_and_lesion_rows(known_out):
    built = build(known_out)
    visits = [row for row in built.visits if row["participant_id"] == "sub-01"]
    assert [row["session_id"] for row in visits] == ["ses-01", "ses-02", "ses-03"]
    assert [row["years_from_baseline"] for row in visits] == [0.0, round(366 / 365.25, 4), round(731 / 365.25, 4)]
    assert (visits[1]["brain_volume_ml"], visits[1]["lesion_count"]) == (1499.0, 11)
    assert len(built.visits) == 3 + 2 + 2 + 2 + 1
    intervals = {(row["participant_id"], row["from_session_id"], row["to_session_id"]): row for row in built.intervals}
    assert len(intervals) == 3 + 1 + 1 + 1
    first = intervals[("sub-01", "ses-01", "ses-02")]
    assert (first["consecutive"], first["baseline_to_latest"], first["new_lesions"], first["enlarging_lesions"],
            first["stable_lesions"]) == (True, False, 2, 1, 1)
    assert (first["new_volume_mm3"], first["enlarging_volume_mm3"], first["pbvc_decision"]) == (55.0, 90.0, None)
    whole = intervals[("sub-01", "ses-01", "ses-03")]
    assert (whole["consecutive"], whole["baseline_to_latest"], whole["qc_flags"]) == (False, True, "poor_alignment")
    only = intervals[("sub-02", "ses-01", "ses-02")]
    assert (only["consecutive"], only["baseline_to_latest"], only["shrinking_lesions"]) == (True, True, 1)
    assert intervals[("sub-04", "ses-01", "ses-02")]["pbvc_beyond_cutoff"] is None
    quiet = intervals[("sub-03", "ses-01", "ses-02")]
    assert (quiet["new_lesions"], quiet["possible_new_lesions"], quiet["resolved_lesions"]) == (0, 1, 1)
    assert first["possible_new_lesions"] == 0
    # findings: every non-stable lesion of every interval (4 of sub-01's 11 lesions are stable)
    lesions = [row for row in built.lesions if row["participant_id"] == "sub-01"]
    assert len(lesions) == 3 + 1 + 4
    assert {row["finding_id"] for row in lesions if row["from_session_id"] == "ses-01"
            and row["to_session_id"] == "ses-02"} == {"01-02:L1", "01-02:L2", "01-02:L3"}
    enlarging = next(row for row in lesions if row["finding_id"] == "01-02:L3")
    assert (enlarging["status"], enlarging["baseline_volume_mm3"], enlarging["followup_volume_mm3"],
            enlarging["centroid_x_mm"], enlarging["decision"]) == ("enlarging", 40.0, 90.0, 4.5, None)
    assert len(built.lesions) == 8 + 1 + 2
    candidate = next(row for row in built.lesions if row["finding_id"] == "01-02:L2" and row["participant_id"] == "sub-03")
    assert (candidate["status"], candidate["followup_volume_mm3"]) == ("possible_new", 12.0)


def test_cohort_summary_shares_and_rates_by_hand(known_out):
    summary = build(known_out).summary
    # activity judged for sub-01..04 (sub-05 has one visit): 02, 03, 04 are free
    assert summary["mri_activity_free"]["count"] == 3 and summary["mri_activity_free"]["total"] == 4
    # the second measure: sub-01 no (active), sub-02 yes, sub-03 no (-0.6), sub-04 cannot be judged
    assert (summary["mri_activity_free_atrophy_within_cutoff"]["count"],
            summary["mri_activity_free_atrophy_within_cutoff"]["total"]) == (1, 3)
    assert summary["mri_activity_free"]["fraction"] == 0.75
    rate = summary["new_lesions_per_patient_year"]
    assert (rate["events"], rate["patients"], rate["years"]) == (3, 4, pytest.approx(5.3))
    assert rate["pooled_rate_per_year"] == pytest.approx(3 / 5.3)
    expected = cohort_stats.negative_binomial_rate([3, 0, 0, 0], [2.0, 2.0, 1.0, 0.3], confidence_level=0.95)
    assert rate["rate_per_year"] == pytest.approx(expected.rate_per_year)
    assert summary["annualized_pbvc_percent"] == {"evaluable": 3, "cutoff_percent_per_year": CUTOFF,
                                                  "beyond_cutoff": 2, "median": -0.45, "q1": -0.525, "q3": -0.325}
    assert (summary["patients"], summary["followup_years"], summary["skipped"]) == (5, 5.3, 0)


def test_the_negative_binomial_rate_with_equal_follow_up_is_the_mean_count_per_year():
    estimate = cohort_stats.negative_binomial_rate([0, 0, 0, 1, 9], [2.0] * 5, confidence_level=0.95)
    assert estimate.rate_per_year == pytest.approx(1.0, rel=1e-9)  # mean 2 lesions in 2 years
    assert estimate.dispersion > 1  # one patient with 9: strongly overdispersed
    assert estimate.lower < 1.0 < estimate.upper


def test_the_negative_binomial_rate_is_the_maximum_likelihood_one():
    """An independent fit of the same model with scipy's nbinom gives the same rate."""
    from scipy import optimize, stats

    counts, years = [0, 3, 1, 12, 0, 2], [1.0, 2.5, 0.7, 3.1, 1.9, 2.2]

    def negative_log_likelihood(theta):
        rate, alpha = math.exp(theta[0]), math.exp(theta[1])
        return -sum(stats.nbinom.logpmf(count, 1 / alpha, 1 / (1 + alpha * rate * year))
                    for count, year in zip(counts, years))

    best = optimize.minimize(negative_log_likelihood, [0.0, 0.0], method="Nelder-Mead",
                             options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 4000})
    estimate = cohort_stats.negative_binomial_rate(counts, years, confidence_level=0.95)
    assert estimate.rate_per_year == pytest.approx(math.exp(best.x[0]), rel=1e-4)
    assert estimate.dispersion == pytest.approx(math.exp(best.x[1]), rel=1e-3)
    assert estimate.rate_per_year != pytest.approx(estimate.pooled_rate_per_year, rel=1e-3)


def test_counts_without_overdispersion_give_the_poisson_rate_and_no_events_give_zero():
    poisson = cohort_stats.negative_binomial_rate([2, 3, 1], [1.0, 1.5, 1.0], confidence_level=0.95)
    assert poisson.dispersion == 0.0 and poisson.rate_per_year == pytest.approx(6 / 3.5)
    # Wald interval on the log rate: exp(log(6 / 3.5) +- 1.96 / sqrt(6))
    assert poisson.upper == pytest.approx(6 / 3.5 * math.exp(1.959964 / math.sqrt(6)), rel=1e-5)
    none = cohort_stats.negative_binomial_rate([0, 0], [1.0, 2.0], confidence_level=0.95)
    assert (none.rate_per_year, none.lower, none.upper) == (0.0, None, None)
    with pytest.raises(ValueError, match="follow-up years > 0"):
        cohort_stats.negative_binomial_rate([1], [0.0], confidence_level=0.95)


def test_wilson_share_by_hand():
    share = cohort_stats.wilson_share(8, 10, confidence_level=0.95)
    z = 1.959964
    centre = (0.8 + z * z / 20) / (1 + z * z / 10)
    half = z * math.sqrt(0.8 * 0.2 / 10 + z * z / 400) / (1 + z * z / 10)
    assert share.lower == pytest.approx(centre - half, abs=1e-6)
    assert share.upper == pytest.approx(centre + half, abs=1e-6)
    assert cohort_stats.wilson_share(0, 0, confidence_level=0.95).fraction is None
    for count in (0, 7):  # the bounds never cross the fraction, also at the ends (a plot's error bars need that)
        share = cohort_stats.wilson_share(count, 7, confidence_level=0.95)
        assert share.lower <= share.fraction <= share.upper and 0.0 <= share.lower and share.upper <= 1.0
    assert cohort_stats.wilson_share(0, 7, confidence_level=0.95).lower == 0.0


@pytest.fixture
def signed_out(tmp_path, monkeypatch):
    """sub-08 (msvol.synth.review_case: 3 new, 1 enlarging, 1 shrinking, 1 resolved, 1 stable; PBVC -0.61 %)
    signed off twice after real decisions, and sub-02 of known_out unsigned."""
    from msvol.outputs import final as final_output
    from msvol.review import decisions, findings, signoff, store
    from msvol.synth.review_case import MISSED_CENTRE_MM, write_review_case

    # the cohort never reads the PDF; WeasyPrint's layout would only slow the test
    monkeypatch.setattr(final_output, "render_final_pdf", lambda html: b"%PDF-1.7\n")
    out = tmp_path / "out"
    write_review_case(out, subject="08")
    write_report(out, "02", ["2019-03-01", "2021-03-01"], [("01", "02", 2.0, -0.4, -0.2, [], ())])
    opened = store.open_store(out, None)
    try:
        findings.register_all(opened)
        decisions.decide(opened, "08", "01-02:L1", "confirm", reviewer=REVIEWER)
        decisions.decide(opened, "08", "01-02:L2", "reject", reason="artefact", note=NOTE, reviewer=REVIEWER)
        decisions.decide(opened, "08", "01-02:L3", "reclassify", status="enlarging", reviewer=REVIEWER)
        decisions.decide(opened, "08", "01-02:L4", "confirm", reviewer=REVIEWER)
        decisions.add_lesion(opened, "08", "01-02", MISSED_CENTRE_MM, "new", reviewer=REVIEWER)
        signoff.sign_off(opened, "08", reviewer=REVIEWER)
        decisions.decide(opened, "08", "01-02:PBVC", "overrule", reason="motion", note=NOTE, reviewer=REVIEWER)
        signoff.sign_off(opened, "08", reviewer=REVIEWER, amend_reason="PBVC overruled")
    finally:
        opened.dispose()
    return out


def test_confirmed_figures_replace_the_automated_ones_and_are_marked(signed_out):
    built = build(signed_out)
    patients = by_subject(built.patients)
    signed = patients["sub-08"]
    assert (signed["source"], signed["signoff_version"]) == ("confirmed", 2)
    # 3 new - L2 rejected - L3 reclassified + 1 added = 2 new; 1 enlarging + L3 = 2
    assert (signed["new_lesions"], signed["enlarging_lesions"], signed["mri_activity_free"]) == (2, 2, False)
    assert signed["annualized_pbvc_percent"] is None  # overruled at the amendment
    assert signed["mri_activity_free_atrophy_within_cutoff"] is False  # active, whatever the atrophy
    assert (patients["sub-02"]["source"], patients["sub-02"]["signoff_version"]) == ("automated", None)
    interval = next(row for row in built.intervals if row["participant_id"] == "sub-08")
    assert (interval["new_lesions"], interval["enlarging_lesions"], interval["pbvc_percent"],
            interval["pbvc_decision"], interval["source"]) == (2, 2, None, "overruled", "confirmed")
    assert interval["alignment_correlation"] == 0.98  # from report.json: sign-off does not change it
    lesions = {row["finding_id"]: row for row in built.lesions if row["participant_id"] == "sub-08"}
    assert set(lesions) == {"01-02:L1", "01-02:L2", "01-02:L3", "01-02:L4", "01-02:L5", "01-02:L6", "01-02:A1"}
    assert (lesions["01-02:L2"]["decision"], lesions["01-02:L2"]["status"], lesions["01-02:L2"]["reason"]) == (
        "rejected", None, "artefact")
    assert (lesions["01-02:L3"]["automated_status"], lesions["01-02:L3"]["status"]) == ("new", "enlarging")
    added = lesions["01-02:A1"]
    assert (added["kind"], added["lesion_id"], added["status"], added["merged"]) == ("added", None, "new", None)
    assert (lesions["01-02:L5"]["decision"], lesions["01-02:L5"]["merged"]) == ("pending", False)
    assert {row["signoff_version"] for row in lesions.values()} == {2}


def test_a_sign_off_of_an_earlier_run_is_not_used(signed_out):
    report_path = signed_out / "sub-08" / "report.json"
    model = json.loads(report_path.read_text())
    model["generated"] = "2026-12-24T10:00:00+00:00"  # a rerun: new bytes, new analysis run
    report_path.write_text(json.dumps(model))
    built = build(signed_out)
    signed = by_subject(built.patients)["sub-08"]
    assert (signed["source"], signed["new_lesions"], signed["annualized_pbvc_percent"]) == ("automated", 3, -0.601)
    assert any("sub-08/final/report.json (version 2) signs an earlier analysis run" in note for note in built.notes)


def test_no_reviewer_name_or_note_reaches_the_outputs(signed_out, tmp_path):
    result = CliRunner().invoke(main, ["cohort", str(signed_out), "--out", str(tmp_path / "cohort")])
    assert result.exit_code == 0, result.output
    for path in (tmp_path / "cohort").iterdir():
        text = path.read_bytes()
        for secret in (REVIEWER, "Quillfeather", NOTE, "Examplename"):
            assert secret.encode() not in text, (path.name, secret)


CORRUPTIONS = {
    "not JSON": (lambda text: text[:-40], "sub-06/report.json", "not valid JSON"),
    "a count as text": (lambda text: text.replace('"new": 1', '"new": "two"', 1), "sub-06/report.json",
                        "intervals[0].counts.new: expected an integer, found 'two'"),
    "another subject": (lambda text: text.replace('"subject": "06"', '"subject": "66"'), "sub-06/report.json",
                        "subject '66' does not match its folder sub-06"),
    "no timepoints": (lambda text: text.replace('"timepoints"', '"timepoint"'), "sub-06/report.json",
                      "timepoints: missing"),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_malformed_report_is_listed_and_the_rest_is_kept(known_out, tmp_path, corruption):
    edit, path, reason = CORRUPTIONS[corruption]
    write_report(known_out, "06", ["2020-01-01", "2021-01-01"], [("01", "02", 1.0, -0.2, -0.2,
                                                                  [change(1, "new", 0, 20)], ())])
    report_path = known_out / "sub-06" / "report.json"
    report_path.write_text(edit(report_path.read_text()))
    built = build(known_out)
    assert [(item.path, reason in item.reason) for item in built.skipped] == [(path, True)], built.skipped
    assert len(built.patients) == 5 and "sub-06" not in by_subject(built.patients)
    result = CliRunner().invoke(main, ["cohort", str(known_out), "--out", str(tmp_path / "cohort")])
    assert result.exit_code == 2  # like `msvol run` with a subject set aside: the tables are still written
    assert f"left out {path}: " in result.stderr and reason in result.stderr
    record = json.loads((tmp_path / "cohort" / "cohort.json").read_text())
    assert record["skipped"][0]["path"] == path and record["summary"]["patients"] == 5
    page = (tmp_path / "cohort" / "cohort.html").read_text()
    assert path in page


def test_a_malformed_final_report_names_the_final_file(signed_out):
    final_path = signed_out / "sub-08" / "final" / "report.json"
    model = json.loads(final_path.read_text())
    model["intervals"][0]["confirmed"]["counts"]["new"] = -1
    final_path.write_text(json.dumps(model))
    built = build(signed_out)
    assert [item.path for item in built.skipped] == ["sub-08/final/report.json"]
    assert "counts must be >= 0" in built.skipped[0].reason


def test_a_subject_folder_without_a_report_is_listed(known_out):
    (known_out / "sub-09").mkdir()
    assert [item.path for item in build(known_out).skipped] == ["sub-09/report.json"]


def test_no_reports_or_no_folder_is_bad_input(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["cohort", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "no sub-*/report.json found" in result.stderr
    result = CliRunner().invoke(main, ["cohort", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "not a folder" in result.stderr
    assert not (tmp_path / "empty" / "cohort").exists()


@pytest.fixture
def written(known_out, tmp_path):
    dest = tmp_path / "cohort"
    result = CliRunner().invoke(main, ["cohort", str(known_out), "--out", str(dest)])
    assert result.exit_code == 0, result.output
    return dest


@pytest.mark.parametrize("table", list(cohort_tables.TABLES))
def test_parquet_and_tsv_read_back_equal(written, known_out, table):
    import pandas as pd

    from_tsv = cohort_tables.read_table(written / f"{table}.tsv")
    from_parquet = cohort_tables.read_table(written / f"{table}.parquet")
    pd.testing.assert_frame_equal(from_tsv, from_parquet)
    pd.testing.assert_frame_equal(from_tsv, cohort_tables.frame(table, getattr(build(known_out), table)))
    assert len(from_tsv) > 0 and from_tsv.isna().any().any()  # the round trip covered missing values too


@pytest.mark.parametrize("table", list(cohort_tables.TABLES))
def test_the_data_dictionary_covers_every_column_and_value(written, table):
    dictionary = json.loads((written / f"{table}.json").read_text())
    lines = (written / f"{table}.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    assert list(dictionary) == header
    for name in header:
        assert dictionary[name]["Description"] and dictionary[name]["LongName"], name
    cells = [line.split("\t") for line in lines[1:]]
    for index, name in enumerate(header):
        levels = dictionary[name].get("Levels")
        if levels:
            assert {row[index] for row in cells} - {"n/a"} <= set(levels), name


def test_a_row_outside_the_dictionary_is_refused():
    with pytest.raises(ValueError, match=r"lacks \['session_id'\] or has \['surname'\]"):
        cohort_tables.frame("visits", [{**{column.name: None for column in cohort_tables.TABLES["visits"]
                                           if column.name != "session_id"}, "surname": "x"}])


def test_the_page_embeds_three_plots_and_loads_nothing(written):
    page = (written / "cohort.html").read_text()
    images = page.split('src="data:image/png;base64,')[1:]
    assert len(images) == 3
    for image in images:
        assert base64.b64decode(image.split('"', 1)[0]).startswith(b"\x89PNG\r\n\x1a\n")
    for title in ("Annualised PBVC per patient", "New T2 lesions per patient-year", "Patients free of MRI activity"):
        assert f'alt="{title}"' in page
    assert "http" not in page and "<script" not in page and "<link" not in page
    assert "MRI activity-free" in page and "75.0 %" in page  # 3 of 4
    assert "Kappos et al., Mult Scler 2016" in page and "De Stefano" in page


def test_the_pbvc_plot_draws_one_dot_per_patient_and_the_cutoff(monkeypatch):
    """Read back from the figure itself: the ranked values and the horizontal cut-off line."""
    patients = [{"participant_id": f"sub-{n}", "annualized_pbvc_percent": value, "source": source}
                for n, value, source in (("1", -0.2, "automated"), ("2", -0.7, "confirmed"), ("3", None, "automated"))]
    captured = []
    monkeypatch.setattr(cohort_page, "_png", lambda figure: captured.append(figure) or "")
    cohort_page.pbvc_plot(patients, -0.4)
    axes = captured[0].axes[0]
    points = sorted(tuple(point) for collection in axes.collections for point in collection.get_offsets())
    assert points == [(1.0, -0.7), (2.0, -0.2)]
    assert any(list(line.get_ydata()) == [-0.4, -0.4] for line in axes.lines)


def test_cohort_json_records_versions_parameters_and_the_command(written):
    from msvol import __version__

    record = json.loads((written / "cohort.json").read_text())
    assert record["software"] == {"name": "msvol", "version": __version__}
    assert record["atrophy_cutoff"]["value"] == CUTOFF and "De Stefano" in record["atrophy_cutoff"]["source"]
    assert record["cohort_params"]["max_active_lesions_for_activity_free"]["value"] == 0
    assert "Havrdova" in record["cohort_params"]["max_active_lesions_for_activity_free"]["source"]
    assert record["definitions"] == COHORT_MEASURES
    assert record["reports"]["models"] == {"per_visit: seg-unet 2.0.0": 5}
    assert list(record["reports"]["params_by_hash"]) == [Params().hash()]
    assert record["reports"]["params_by_hash"][Params().hash()]["reports"] == 5
    assert record["command"] == ["msvol", "cohort", str(written.parent / "out"), "--out", str(written)]
    for name, digest in record["files"].items():
        assert hashlib.sha256((written / name).read_bytes()).hexdigest() == digest, name
    assert set(record["files"]) == {f"{table}.{suffix}" for table in cohort_tables.TABLES
                                    for suffix in ("tsv", "json", "parquet")} | {"cohort.html"}


def test_a_protocol_cutoff_is_applied_and_differing_report_cutoffs_are_noted(known_out, tmp_path):
    protocol = tmp_path / "strict.yaml"
    protocol.write_text("params:\n  atrophy:\n    pathological_annualized_pbvc_percent: -0.5\n")
    result = CliRunner().invoke(main, ["cohort", str(known_out), "--out", str(tmp_path / "c"), "--protocol",
                                       str(protocol)])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "c" / "cohort.json").read_text())
    assert record["atrophy_cutoff"]["value"] == -0.5
    assert record["summary"]["annualized_pbvc_percent"]["beyond_cutoff"] == 1  # only sub-03's -0.6
    assert any("5 at -0.4 %/year" in note for note in record["notes"]) and "note: reports made" in result.stderr


def test_outputs_are_replaced_whole_or_not_at_all(written, known_out, monkeypatch):
    before = {path.name: path.read_bytes() for path in written.iterdir()}
    stale = written / f"{cohort.STAGING_PREFIX}{socket.gethostname()}-999999999"  # a killed run's staging
    stale.mkdir()

    def broken(record, patients):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(cohort_page, "render_page", broken)
    result = CliRunner().invoke(main, ["cohort", str(known_out), "--out", str(written)])
    assert result.exit_code == 1 and "internal error: RuntimeError: plotting failed" in result.stderr
    crash = written / "cohort-crash.txt"
    assert "RuntimeError" in crash.read_text()
    crash.unlink()
    assert {path.name: path.read_bytes() for path in written.iterdir()} == before  # no table half-replaced
    monkeypatch.undo()
    assert CliRunner().invoke(main, ["cohort", str(known_out), "--out", str(written)]).exit_code == 0
    assert not [path for path in written.iterdir() if path.name.startswith(cohort.STAGING_PREFIX)]
