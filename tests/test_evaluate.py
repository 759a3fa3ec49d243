"""Tests for evaluate: hand-made cubes on a 20x20x20 grid of 2 mm voxels (8 mm3), written in both
truth layouts, with every expected number worked out by hand in the comments."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from msvol.cli import main
from msvol.errors import InputError
from msvol.evaluate import (
    SIZE_BINS_MM3,
    evaluate,
    render_table,
    score_enlarging,
    score_new_lesions,
    score_scan,
)
from msvol.evaluate_lesions import score_shrinking_resolved

SHAPE = (20, 20, 20)
AFFINE = np.array([[2.0, 0, 0, -20], [0, 2, 0, -30], [0, 0, 2, 10], [0, 0, 0, 1]])  # voxel = 8 mm3


def labels(*cubes) -> np.ndarray:
    """Label map from (value, (x0, x1, y0, y1, z0, z1)) half-open boxes."""
    data = np.zeros(SHAPE, dtype=np.int16)
    for value, (x0, x1, y0, y1, z0, z1) in cubes:
        data[x0:x1, y0:y1, z0:z1] = value
    return data


# Baseline scan, truth: A 5^3 = 125 voxels = 1000 mm3 (>500); B 3^3 = 27 voxels = 216 mm3 (100-500);
# C 2^3 = 8 voxels = 64 mm3 (<100). A and C share label 5: label values are not lesions.
A, B, C = (2, 7, 2, 7, 2, 7), (10, 13, 2, 5, 2, 5), (15, 17, 15, 17, 15, 17)
TRUTH_01 = labels((5, A), (7, B), (5, C))
# Prediction: A exactly; B split in two 9-voxel slabs (z = 2 and z = 4, not 26-connected); C missed;
# a false positive of 8 voxels. Truth 160 voxels, predicted 151, overlap 143.
PRED_01 = labels((1, A), (1, (10, 13, 2, 5, 2, 3)), (1, (10, 13, 2, 5, 4, 5)), (1, (15, 17, 2, 4, 15, 17)))

# Follow-up truth (synth ids): 1 stable (A); 2 new, 27 voxels = 216 mm3; 3 new, 2 voxels = 16 mm3
# (>= the 14 mm3 minimum, < 30); 4 new_below_minimum, 1 voxel = 8 mm3; 5 enlarging, 48 voxels.
NEW_LARGE, NEW_SMALL, BELOW_MIN, ENLARGING = (10, 13, 10, 13, 10, 13), (15, 16, 2, 3, 10, 12), \
    (17, 18, 17, 18, 17, 18), (2, 5, 14, 18, 14, 18)
TRUTH_02 = labels((1, A), (2, NEW_LARGE), (3, NEW_SMALL), (4, BELOW_MIN), (5, ENLARGING))
FATES = {"1": "stable", "2": "new", "3": "new", "4": "new_below_minimum", "5": "enlarging"}
# Predicted new: one voxel in lesion 2 (hit), one on lesion 4 (below minimum), one inside the stable
# lesion (false), one in empty space (false). lesion 3 is missed. Predicted enlarging: one voxel of 5.
PRED_NEW = labels((1, (11, 12, 11, 12, 11, 12)), (2, BELOW_MIN), (3, (3, 5, 3, 5, 3, 5)), (4, (7, 9, 16, 18, 2, 4)))
PRED_ENLARGING = labels((1, (3, 4, 15, 16, 15, 16)))
TRUE_PBVC, MEASURED_PBVC = -0.5, -0.8


def save(data: np.ndarray, path, affine=AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(data, affine).to_filename(path)


def write_prediction(root) -> None:
    subject = root / "sub-01"
    save(PRED_01, subject / "ses-01" / "lesions.nii.gz")
    save(TRUTH_02, subject / "ses-02" / "lesions.nii.gz")  # a perfect follow-up segmentation
    save(PRED_01, subject / "ses-03" / "lesions.nii.gz")  # no truth for ses-03
    save(PRED_NEW, subject / "intervals" / "ses-01_to_ses-02" / "new_lesions.nii.gz")
    save(PRED_ENLARGING, subject / "intervals" / "ses-01_to_ses-02" / "enlarging_lesions.nii.gz")
    (subject / "report.json").write_text(json.dumps({"subject": "01", "intervals": [
        {"from_session": "01", "to_session": "02", "pbvc_percent": MEASURED_PBVC}]}))
    save(PRED_01, root / "sub-02" / "ses-01" / "lesions.nii.gz")  # a subject without truth


def write_synth_truth(root) -> None:
    folder = root / "derivatives" / "truth" / "sub-01"
    # Synth ids name lesions, so A and C (one label in the generic truth) get their own ids here.
    save(labels((5, A), (7, B), (6, C)), folder / "sub-01_ses-01_lesions.nii.gz")
    save(TRUTH_02, folder / "sub-01_ses-02_lesions.nii.gz")
    (folder / "sub-01_truth.json").write_text(json.dumps({"intervals": [
        {"from_session": "01", "to_session": "02", "pbvc_percent": TRUE_PBVC, "fates": FATES}]}))


def write_generic_truth(root) -> None:
    subject = root / "sub-01"
    save(TRUTH_01, subject / "ses-01" / "lesions.nii.gz")
    save(TRUTH_02, subject / "ses-02" / "lesions.nii.gz")
    interval = subject / "intervals" / "ses-01_to_ses-02"
    save(labels((1, NEW_LARGE), (2, NEW_SMALL)), interval / "new_lesions.nii.gz")
    save(labels((5, ENLARGING)), interval / "enlarging_lesions.nii.gz")
    (subject / "pbvc.json").write_text(json.dumps({"ses-01_to_ses-02": TRUE_PBVC}))


@pytest.fixture
def prediction(tmp_path):
    write_prediction(tmp_path / "out")
    return tmp_path / "out"


def test_scan_metrics_for_the_baseline_case():
    scan = score_scan(PRED_01 > 0, TRUTH_01 > 0, 8.0)
    assert scan["truth_lesions"] == 3 and scan["pred_lesions"] == 4
    assert scan["detected"] == 2  # A, and B once although split; C missed
    assert scan["true_positive_pred"] == 3 and scan["false_positives"] == 1  # both halves of B are hits
    assert scan["sensitivity"] == pytest.approx(2 / 3)
    assert scan["precision"] == pytest.approx(3 / 4)
    assert scan["f1"] == pytest.approx(12 / 17)  # 2 (2/3)(3/4) / (2/3 + 3/4)
    assert scan["dice"] == pytest.approx(2 * 143 / (151 + 160))
    assert scan["truth_volume_mm3"] == 1280.0 and scan["pred_volume_mm3"] == 1208.0
    assert scan["volume_ratio"] == pytest.approx(151 / 160)
    assert scan["sensitivity_by_size"] == {"<100": {"truth": 1, "detected": 0, "sensitivity": 0.0},
                                           "100-500": {"truth": 1, "detected": 1, "sensitivity": 1.0},
                                           ">500": {"truth": 1, "detected": 1, "sensitivity": 1.0}}


def test_components_are_26_connected_and_bins_include_their_lower_bound():
    truth = np.zeros((6, 6, 6), dtype=bool)
    truth[1, 1, 1] = truth[2, 2, 2] = True  # corner contact only: one lesion
    truth[4, 4, 4:6] = True
    scan = score_scan(truth, truth, 50.0)  # lesions of 100 mm3 each: lower bound of "100-500"
    assert scan["truth_lesions"] == 2 and scan["sensitivity_by_size"]["100-500"]["truth"] == 2
    assert SIZE_BINS_MM3 == ((0, 100), (100, 500), (500, float("inf")))


def test_empty_sides_have_explicit_values():
    empty, one = np.zeros(SHAPE, bool), labels((1, C)) > 0
    assert {key: score_scan(empty, empty, 8.0)[key] for key in ("sensitivity", "precision", "f1", "dice",
                                                                 "volume_ratio")} == {
        "sensitivity": None, "precision": None, "f1": 1.0, "dice": 1.0, "volume_ratio": None}
    only_predicted = score_scan(one, empty, 8.0)
    assert (only_predicted["sensitivity"], only_predicted["precision"], only_predicted["f1"],
            only_predicted["false_positives"]) == (None, 0.0, 0.0, 1)
    only_truth = score_scan(empty, one, 8.0)
    assert (only_truth["sensitivity"], only_truth["precision"], only_truth["f1"], only_truth["dice"]) == (
        0.0, None, 0.0, 0.0)


def test_new_lesion_threshold_of_30_mm3_is_inclusive():
    truth = np.zeros((8, 8, 8), dtype=bool)
    truth[1, 1, 1:4] = True  # 3 voxels x 10 mm3 = 30 mm3
    truth[5, 5, 5] = True  # 10 mm3
    new = score_new_lesions(truth, truth, 10.0)
    assert (new["truth_new"], new["truth_new_ge30"], new["detected_new_ge30"]) == (2, 1, 1)


def test_synth_layout(prediction, tmp_path):
    write_synth_truth(tmp_path / "bids")
    result = evaluate(prediction, tmp_path / "bids")
    json.dumps(result, allow_nan=False)  # JSON-ready
    assert result["truth_layout"] == "synth"
    assert [(scan["subject"], scan["session"]) for scan in result["scans"]] == [("01", "01"), ("01", "02")]
    assert result["scans"][1]["dice"] == 1.0 and result["scans"][1]["truth_lesions"] == 5
    (pair,) = result["pairs"]
    assert (pair["truth_new"], pair["detected_new"], pair["new_sensitivity"]) == (2, 1, 0.5)
    assert (pair["truth_new_ge30"], pair["detected_new_ge30"], pair["new_sensitivity_ge30"]) == (1, 1, 1.0)
    # The hit on lesion 4 (new_below_minimum) is not false; the ones in the stable lesion and in space are.
    assert (pair["pred_new"], pair["false_new"]) == (4, 2)
    assert (pair["truth_enlarging"], pair["detected_enlarging"], pair["enlarging_sensitivity"]) == (1, 1, 1.0)
    assert pair["pbvc_error_percent"] == -0.3  # measured -0.8 minus true -0.5, rounded to 1e-9
    overall = result["overall"]
    assert (overall["scans"], overall["truth_lesions"], overall["detected"]) == (2, 8, 7)
    assert (overall["pred_lesions"], overall["true_positive_pred"], overall["false_positives"]) == (9, 8, 1)
    assert overall["sensitivity"] == pytest.approx(7 / 8) and overall["precision"] == pytest.approx(8 / 9)
    assert overall["f1"] == pytest.approx(2 * (7 / 8) * (8 / 9) / (7 / 8 + 8 / 9))
    assert overall["mean_dice"] == pytest.approx((286 / 311 + 1) / 2)
    assert overall["mean_volume_ratio"] == pytest.approx((151 / 160 + 1) / 2)
    # Follow-up bins: lesion 3 (16), 4 (8) -> <100; 2 (216), 5 (384) -> 100-500; A -> >500.
    assert overall["sensitivity_by_size"]["<100"] == {"truth": 3, "detected": 2, "sensitivity": 2 / 3}
    assert overall["sensitivity_by_size"]["100-500"]["truth"] == 3
    assert (overall["new_sensitivity"], overall["new_sensitivity_ge30"], overall["mean_false_new_per_pair"]) == (
        0.5, 1.0, 2.0)
    assert overall["max_abs_pbvc_error_percent"] == pytest.approx(0.3)
    assert overall["mean_pbvc_error_percent"] == pytest.approx(-0.3)
    assert {(entry["subject"], entry.get("session"), entry["reason"]) for entry in result["skipped"]} == {
        ("02", None, "in prediction only"), ("01", "03", "in prediction only")}
    # The derivatives/truth folder itself is accepted too, with the same numbers.
    direct = evaluate(prediction, tmp_path / "bids" / "derivatives" / "truth")
    assert direct["overall"] == overall


def test_synth_lesion_in_two_pieces_is_one_lesion(tmp_path):
    """The generator confines lesions to white matter: one id may be rendered as two components."""
    truth = labels((3, A), (3, C))  # one lesion id, two distant pieces
    predicted = labels((1, A))  # finds the large piece only
    by_id = score_scan(predicted > 0, truth > 0, 8.0, truth_ids=truth)
    by_component = score_scan(predicted > 0, truth > 0, 8.0)
    assert (by_id["truth_lesions"], by_id["detected"], by_id["sensitivity"]) == (1, 1, 1.0)
    assert (by_component["truth_lesions"], by_component["detected"], by_component["sensitivity"]) == (2, 1, 0.5)


def test_generic_layout_counts_every_unmatched_prediction_as_false_new(prediction, tmp_path):
    write_generic_truth(tmp_path / "truth")
    result = evaluate(prediction, tmp_path / "truth")
    assert result["truth_layout"] == "generic"
    assert result["scans"][0]["f1"] == pytest.approx(12 / 17)
    (pair,) = result["pairs"]
    # No below-minimum class here: the prediction on that spot is a false new lesion.
    assert (pair["truth_new"], pair["detected_new"], pair["pred_new"], pair["false_new"]) == (2, 1, 4, 3)
    assert pair["enlarging_sensitivity"] == 1.0
    assert (pair["pbvc_measured_percent"], pair["pbvc_true_percent"]) == (MEASURED_PBVC, TRUE_PBVC)


def test_interval_without_new_lesion_truth_is_reported(prediction, tmp_path):
    write_generic_truth(tmp_path / "truth")
    (tmp_path / "truth" / "sub-01" / "intervals" / "ses-01_to_ses-02" / "new_lesions.nii.gz").unlink()
    result = evaluate(prediction, tmp_path / "truth")
    (pair,) = result["pairs"]
    assert pair["new_sensitivity"] is None and pair["pbvc_error_percent"] == pytest.approx(-0.3)
    assert result["overall"]["pairs_with_new_lesion_truth"] == 0 and result["overall"]["new_sensitivity"] is None
    assert any("new-lesion metrics not computed" in entry["reason"] for entry in result["skipped"])


def test_grid_mismatch_names_the_file(prediction, tmp_path):
    write_generic_truth(tmp_path / "truth")
    shifted = AFFINE.copy()
    shifted[0, 3] += 1.0
    save(PRED_01, prediction / "sub-01" / "ses-01" / "lesions.nii.gz", shifted)
    with pytest.raises(InputError, match=r"sub-01/ses-01/lesions\.nii\.gz: grid differs"):
        evaluate(prediction, tmp_path / "truth")
    save(PRED_01[:-1], prediction / "sub-01" / "ses-01" / "lesions.nii.gz")
    with pytest.raises(InputError, match=r"shape \(19, 20, 20\) vs \(20, 20, 20\)"):
        evaluate(prediction, tmp_path / "truth")


def test_bad_inputs_raise_input_errors(prediction, tmp_path):
    with pytest.raises(InputError, match="truth folder not found"):
        evaluate(prediction, tmp_path / "missing")
    write_generic_truth(tmp_path / "truth")
    (tmp_path / "truth" / "sub-01").rename(tmp_path / "truth" / "sub-09")
    with pytest.raises(InputError, match="no subject in common"):
        evaluate(prediction, tmp_path / "truth")
    (tmp_path / "truth" / "sub-09").rename(tmp_path / "truth" / "sub-01")
    broken = prediction / "sub-01" / "ses-02" / "lesions.nii.gz"
    broken.write_bytes(b"not a nifti")
    with pytest.raises(InputError, match=r"ses-02/lesions\.nii\.gz: cannot be read"):
        evaluate(prediction, tmp_path / "truth")


def test_render_table_shows_the_key_figures(prediction, tmp_path):
    write_synth_truth(tmp_path / "bids")
    table = render_table(evaluate(prediction, tmp_path / "bids"))
    assert "2 scans, 1 pairs (truth layout: synth)" in table
    scan_line = next(line for line in table.splitlines() if line.startswith("sub-01 ses-01 "))
    assert scan_line.split()[2:] == ["3", "4", "2", "1", "0.667", "0.750", "0.706", "0.920", "0.944"]
    pair_line = next(line for line in table.splitlines() if line.startswith("sub-01 ses-01->ses-02"))
    assert pair_line.split()[2:] == ["2", "1", "0.500", "1", "1.000", "2", "1.000", "-0.300"]
    assert "<100 2/3 = 0.667" in table
    assert "sub-02: in prediction only" in table and "sub-01 ses-03: in prediction only" in table


def test_volumes_use_the_affine_voxel_volume(prediction, tmp_path):
    write_generic_truth(tmp_path / "truth")
    scan = evaluate(prediction, tmp_path / "truth")["scans"][0]
    assert (scan["truth_volume_mm3"], scan["pred_volume_mm3"]) == (160 * 8.0, 151 * 8.0)


# --- msvol evaluate, through click's CliRunner ---------------------------------------------------


def invoke(*args: str):
    return CliRunner().invoke(main, [str(arg) for arg in args])


def test_evaluate_prints_the_table_and_writes_json(tmp_path):
    """The hand-made prediction and synth truth above: 2 scans and 1 pair in common."""
    write_prediction(tmp_path / "out")
    write_synth_truth(tmp_path / "bids")
    json_path = tmp_path / "eval" / "result.json"
    result = invoke("evaluate", "--pred", tmp_path / "out", "--truth", tmp_path / "bids", "--json", json_path)
    assert result.exit_code == 0, result.output
    assert "2 scans, 1 pairs (truth layout: synth)" in result.stdout
    expected = evaluate(tmp_path / "out", tmp_path / "bids")
    assert result.stdout.rstrip("\n") == render_table(expected).rstrip("\n")  # click.echo adds a newline
    written = json.loads(json_path.read_text())
    assert written["overall"]["scans"] == 2 and written["overall"]["pairs"] == 1
    assert written["pairs"][0]["pbvc_error_percent"] == -0.3
    assert not list(json_path.parent.glob(".*partial")), "written atomically"


def test_evaluate_with_a_missing_truth_folder_exits_2(tmp_path):
    write_prediction(tmp_path / "out")
    missing = tmp_path / "no_truth_here"
    result = invoke("evaluate", "--pred", tmp_path / "out", "--truth", missing)
    assert result.exit_code == 2
    assert "no_truth_here" in result.output
    assert "Traceback" not in result.output


def test_evaluate_without_truth_label_maps_exits_2_naming_the_folder(tmp_path):
    write_prediction(tmp_path / "out")
    (tmp_path / "truth").mkdir()
    result = invoke("evaluate", "--pred", tmp_path / "out", "--truth", tmp_path / "truth")
    assert result.exit_code == 2
    assert str(tmp_path / "truth") in result.stderr and "no truth label maps" in result.stderr


# --- issue 12: new lesions by size, candidates, don't-count enlargements, shrinking/resolved calls,
# scan-rescan and PBVC recovery ---------------------------------------------------------------------

def test_new_lesions_by_size_with_candidates_counted_once_found():
    """1 mm3 voxels: truth new lesions of 10, 29, 30, 150 and 600 mm3; reported: the 150 and 600 ones and
    a false one; candidates: on the 10 (label 1), on the 30 (label 2), on nothing (3), on the reported 150 (4)."""
    shape = (30, 30, 30)

    def box(x0, size):  # size voxels as a 1-voxel-thick bar along x at row x0
        mask = np.zeros(shape, bool)
        flat = np.zeros(30 * 30, bool)
        flat[:size] = True
        mask[x0] = flat.reshape(30, 30)
        return mask

    lesions = [box(0, 10), box(3, 29), box(6, 30), box(9, 150), box(12, 600)]
    truth = np.logical_or.reduce(lesions)
    predicted = lesions[3] | lesions[4] | box(20, 5)
    candidates = np.zeros(shape, np.int32)
    for label, (row, column) in enumerate(((0, 0), (6, 3), (25, 0), (9, 1)), start=1):
        candidates[row, 0, column] = label
    new = score_new_lesions(predicted, truth, 1.0, candidates=candidates)
    assert new["new_by_size"] == {"<30": {"truth": 2, "reported": 0, "reported_or_candidate": 1},
                                  "30-100": {"truth": 1, "reported": 0, "reported_or_candidate": 1},
                                  "100-500": {"truth": 1, "reported": 1, "reported_or_candidate": 1},
                                  ">500": {"truth": 1, "reported": 1, "reported_or_candidate": 1}}
    assert (new["detected_new"], new["detected_new_or_candidate"], new["truth_new"]) == (2, 4, 5)
    assert (new["new_sensitivity"], new["new_sensitivity_or_candidate"]) == (0.4, 0.8)
    assert (new["candidates"], new["false_candidates"], new["false_new"]) == (4, 1, 1)
    without = score_new_lesions(predicted, truth, 1.0)  # no candidates at all: none
    assert (without["candidates"], without["detected_new_or_candidate"]) == (0, 2)


def test_enlarging_that_does_not_count_is_a_false_enlarging():
    counting = labels((1, ENLARGING)) > 0
    merger, stable = labels((1, B)) > 0, labels((1, A)) > 0
    predicted = counting | merger | stable  # three predicted enlarging lesions
    result = score_enlarging(predicted, counting, merger)
    assert (result["truth_enlarging"], result["detected_enlarging"], result["enlarging_sensitivity"]) == (1, 1, 1.0)
    assert (result["pred_enlarging"], result["false_enlarging"], result["false_enlarging_dont_count"]) == (3, 2, 1)


def test_shrinking_and_resolved_calls_are_false_unless_the_truth_lesion_shrank_or_resolved():
    truth = labels((7, A), (8, B))  # 7 shrank, 8 is stable
    predicted = labels((1, A), (2, B), (3, C))  # 3: a baseline lesion with no truth behind it
    calls = [("shrinking", (1,)), ("resolved", (2,)), ("shrinking", (3,)), ("resolved", ())]
    result = score_shrinking_resolved(calls, predicted, truth, [7])
    assert result == {"pred_shrinking": 2, "pred_resolved": 2, "false_shrinking": 1, "false_resolved": 2,
                      "false_shrinking_resolved": 3}


# Subject 03 (synth truth): baseline A (1, stable), a small version of ENLARGING (5), MERGER (6), NOISE (7), SHRINK (8).
MERGER, NOISE, SHRINK = (10, 12, 16, 18, 2, 4), (16, 19, 10, 13, 16, 19), (6, 9, 8, 10, 15, 18)
FATES_03 = {"1": "stable", "2": "new", "3": "new", "5": "enlarging", "6": "enlarging_by_merger",
            "7": "enlarging_below_noise", "8": "shrinking"}


def write_subject_03(pred_root, truth_root, candidates: str) -> None:
    folder = truth_root / "derivatives" / "truth" / "sub-03"
    save(labels((1, A), (5, (2, 4, 14, 16, 14, 16)), (6, MERGER), (7, NOISE), (8, SHRINK)),
         folder / "sub-03_ses-01_lesions.nii.gz")
    save(labels((1, A), (2, NEW_LARGE), (3, NEW_SMALL), (5, ENLARGING), (6, MERGER), (7, NOISE),
                (8, (6, 8, 8, 10, 15, 18))), folder / "sub-03_ses-02_lesions.nii.gz")
    (folder / "sub-03_truth.json").write_text(json.dumps({"intervals": [
        {"from_session": "01", "to_session": "02", "pbvc_percent": -1.0, "fates": FATES_03}]}))
    subject = pred_root / "sub-03"
    save(labels((1, A), (2, MERGER), (3, SHRINK), (4, (17, 19, 0, 2, 0, 2))), subject / "ses-01" / "lesions.nii.gz")
    followup = labels((1, A), (2, NEW_LARGE), (9, NEW_SMALL), (5, ENLARGING), (6, MERGER), (7, NOISE))
    save(followup, subject / "ses-02" / "lesions.nii.gz")
    interval = subject / "intervals" / "ses-01_to_ses-02"
    save(labels((2, NEW_LARGE)), interval / "new_lesions.nii.gz")
    save(labels((5, ENLARGING), (6, MERGER), (7, NOISE)), interval / "enlarging_lesions.nii.gz")
    calls = [{"id": 3, "status": "shrinking", "baseline_labels": [3]}, {"id": 20, "status": "resolved",
                                                                         "baseline_labels": [4]},
             {"id": 1, "status": "shrinking", "baseline_labels": [1]}]
    entry = {"from_session": "01", "to_session": "02", "pbvc_percent": -0.8, "lesions": calls}
    small_voxel_mm = (AFFINE @ [15, 2, 10, 1])[:3].tolist()
    if candidates == "lesions":
        entry["lesions"] = calls + [{"id": 9, "status": "possible_new", "followup_labels": [9]}]
    elif candidates == "centroid":
        entry["candidates"] = [{"centroid_mm": small_voxel_mm}]
    elif candidates == "map":
        save(labels((1, NEW_SMALL)), interval / "possible_new_lesions.nii.gz")
    (subject / "report.json").write_text(json.dumps({"intervals": [entry]}))


@pytest.mark.parametrize("candidates", ["lesions", "centroid", "map", "none"])
def test_candidates_enlarging_and_calls_through_evaluate(tmp_path, candidates):
    write_subject_03(tmp_path / "out", tmp_path / "bids", candidates)
    result = evaluate(tmp_path / "out", tmp_path / "bids")
    (pair,) = result["pairs"]
    found = 1 if candidates == "none" else 2
    assert (pair["truth_new"], pair["detected_new"], pair["detected_new_or_candidate"]) == (2, 1, found)
    assert pair["candidates"] == found - 1 and pair["false_candidates"] == 0
    assert pair["new_by_size"]["<30"] == {"truth": 1, "reported": 0, "reported_or_candidate": found - 1}
    assert pair["new_by_size"]["100-500"] == {"truth": 1, "reported": 1, "reported_or_candidate": 1}
    # enlarging: 5 found; the predictions on the merger (6) and the below-noise growth (7) are false
    assert (pair["truth_enlarging"], pair["detected_enlarging"], pair["false_enlarging"],
            pair["false_enlarging_dont_count"]) == (1, 1, 2, 2)
    # calls: shrinking of 8 (true); resolved of a baseline false positive and shrinking of stable A (false)
    assert (pair["pred_shrinking"], pair["false_shrinking"], pair["pred_resolved"], pair["false_resolved"]) == (
        2, 1, 1, 1)
    assert pair["pbvc_recovery"] == pytest.approx(0.8) and not pair["scan_rescan"] and pair["rescan"] is None
    overall = result["overall"]
    assert overall["new_by_size"]["<30"]["sensitivity_reported"] == 0.0
    assert overall["new_by_size"]["<30"]["sensitivity_reported_or_candidate"] == (0.0 if candidates == "none" else 1.0)
    assert overall["new_sensitivity_or_candidate_below_100"] == overall["new_by_size"]["<30"][
        "sensitivity_reported_or_candidate"]
    assert overall["mean_candidates_per_pair"] == found - 1
    assert (overall["mean_false_enlarging_per_pair"], overall["mean_false_shrinking_resolved_per_pair"]) == (2.0, 2.0)
    assert overall["median_pbvc_recovery"] == pytest.approx(0.8)
    assert "<30 0 / " in render_table(result)


def test_scan_rescan_pair_reports_count_and_volume_differences(tmp_path):
    folder = tmp_path / "bids" / "derivatives" / "truth" / "sub-04"
    for session in ("01", "02"):
        save(labels((1, A), (2, B)), folder / f"sub-04_ses-{session}_lesions.nii.gz")
    (folder / "sub-04_truth.json").write_text(json.dumps({"intervals": [
        {"from_session": "01", "to_session": "02", "pbvc_percent": 0.0, "scan_rescan": True,
         "fates": {"1": "stable", "2": "stable"}}]}))
    subject = tmp_path / "out" / "sub-04"
    save(labels((1, A), (2, B)), subject / "ses-01" / "lesions.nii.gz")  # 152 voxels = 1216 mm3
    save(labels((1, A), (2, B), (3, BELOW_MIN)), subject / "ses-02" / "lesions.nii.gz")  # one voxel more
    save(labels((1, BELOW_MIN)), subject / "intervals" / "ses-01_to_ses-02" / "new_lesions.nii.gz")
    (subject / "report.json").write_text(json.dumps({
        "timepoints": [{"session": "01", "lesion_count": 2, "lesion_volume_ml": 1.216},
                       {"session": "02", "lesion_count": 3, "lesion_volume_ml": 1.224}],
        "intervals": [{"from_session": "01", "to_session": "02", "pbvc_percent": -0.05, "lesions": []}]}))
    result = evaluate(tmp_path / "out", tmp_path / "bids")
    (pair,) = result["pairs"]
    assert pair["scan_rescan"] and pair["pbvc_recovery"] is None and pair["false_new"] == 1
    rescan = pair["rescan"]
    assert rescan["counts"] == [2, 3] and rescan["count_difference"] == 1
    assert rescan["volumes_mm3"] == [1216.0, 1224.0]
    assert rescan["volume_difference_percent"] == pytest.approx(100 * 8 / 1216)
    assert rescan["report_count_difference"] == 1
    assert rescan["report_volume_difference_percent"] == pytest.approx(100 * 8 / 1216)
    assert rescan["abs_pbvc_percent"] == pytest.approx(0.05)
    overall = result["overall"]
    assert (overall["scan_rescan_pairs"], overall["scan_rescan_max_abs_count_difference"]) == (1, 1)
    assert overall["scan_rescan_mean_abs_pbvc_percent"] == pytest.approx(0.05)
    assert overall["false_shrinking_resolved"] == 0 and overall["pairs_with_calls"] == 1
    assert "Scan-rescan sub-04 ses-01->ses-02: lesions 2 -> 3" in render_table(result)
