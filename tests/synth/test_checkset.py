"""The independent check set's truth must agree with what it renders.

A small head phantom (84 x 92 x 84 at 1 mm: scalp, skull with marrow, CSF, grey matter, white matter,
two ventricles, five old lesions) stands in for the generator's base patient, so every case renders
in seconds. Acquisition is switched off (no pose, bias, noise, gain) where a test compares images.
"""

from __future__ import annotations

import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from msvol import evaluate
from msvol.config import IngestParams
from msvol.ingest import bids
from msvol.synth import checkset, checkset_geometry, checkset_render

SHAPE = (84, 92, 84)
# (id, centre mm, radius mm): all inside the white matter (radius 20 mm), clear of the ventricles
OLD = ((1, (10, -8, 8), 3.5), (2, (-10, 8, -6), 2.6), (3, (0, -13, -9), 4.5), (4, (-9, -10, 9), 3.0),
       (5, (9, 9, -7), 4.2))
QUIET = checkset.Acquisition(max_rotation_deg=0, max_translation_mm=0, t1_motion_deg=0, t1_motion_mm=0,
                             bias_amplitude=(0, 0), noise_sigma=(0, 0), gain=(1, 1), stored_white_matter=(1000, 1000))
CHANGES = checkset.SubjectDesign(
    subject="01", base_seed=0, new_volumes_mm3=(20.0, 60.0, 200.0, 45.0),
    new_sites=("deep_white_matter", "periventricular", "juxtacortical", "next_to_old"),
    new_contrasts=(0.2, 0.5, 0.8, 0.35), enlarging_factors=(2.5,), merger=True, below_noise_factor=1.07,
    small_old_volumes_mm3=(18.0,), grid_pad_voxels=(0, 0, 0), acquisition=QUIET)
SEED = [7, 1]


def phantom() -> checkset.Base:
    affine = checkset_geometry.centred_affine(SHAPE)
    x, y, z = checkset_geometry.grid_points_mm(SHAPE, affine)
    radius = np.sqrt(x ** 2 + (y * 30 / 34) ** 2 + z ** 2)
    brain, white, inner, skull, marrow, outer, scalp = (np.clip(edge - radius + 0.5, 0, 1)
                                                        for edge in (26, 20, 29, 31, 33, 34, 37))
    ventricles = np.zeros(SHAPE, np.float32)
    for side in (-6, 6):
        shell = np.sqrt(((x - side) / 3) ** 2 + (y / 10) ** 2 + ((z - 2) / 4) ** 2)
        ventricles = np.maximum(ventricles, np.clip(3 - 3 * shell, 0, 1))
    tissue, wm = brain * (1 - ventricles), white * (1 - ventricles)
    layers = {"wm": wm, "gm": tissue - wm, "csf": inner - tissue, "skull": skull - inner + outer - marrow,
              "marrow": marrow - skull, "scalp": scalp - outer}
    flair = sum(level * layers[name] for name, level in
                {"wm": 1, "gm": 1.33, "csf": 0.17, "skull": 0.1, "marrow": 0.7, "scalp": 1.3}.items())
    t1 = sum(level * layers[name] for name, level in
             {"wm": 1, "gm": 0.6, "csf": 0.15, "skull": 0.05, "marrow": 0.95, "scalp": 1.1}.items())
    labels = np.zeros(SHAPE, np.int32)
    for lesion_id, centre, size in OLD:
        inside = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= size ** 2
        labels[inside] = lesion_id
        flair, t1 = np.where(inside, 2.2, flair), np.where(inside, 0.45, t1)
    return checkset.normalised_base(flair.astype(np.float32), t1.astype(np.float32), labels,
                                    tissue.astype(np.float32), affine, dict.fromkeys(range(1, 6), "deep_white_matter"),
                                    {"generator": "tests.synth.test_checkset.phantom"})


@pytest.fixture(scope="module")
def base():
    return phantom()


@pytest.fixture(scope="module")
def changes(base):
    return checkset.make_subject(base, CHANGES, SEED)


def findings(subject) -> dict:
    return {finding["id"]: finding for finding in subject["truth"]["intervals"][0]["findings"]}


def test_new_and_grown_lesions_are_where_the_truth_says_with_the_stated_volume_and_contrast(changes):
    baseline, followup = changes["visits"]
    scale = 1000.0  # QUIET stores white matter as 1000
    before, after = baseline["flair"] / scale, followup["flair"] / scale
    t1_after = followup["t1"] / scale
    found = findings(changes)
    changed_lesions = [lesion_id for lesion_id, finding in found.items() if finding["fate"] != "stable"]
    # Nothing but the new and grown lesions (and their soft edges, <= 2 voxels) changed.
    touched = ndimage.binary_dilation(np.isin(followup["labels"], changed_lesions), iterations=2)
    assert np.abs(after - before)[~touched].max() < 0.02
    new = [finding for finding in found.values() if finding["fate"] == "new"]
    assert len(new) == 4 and not baseline["labels"][np.isin(baseline["labels"], [f["id"] for f in new])].any()
    checked = 0
    for finding in new:
        mask = followup["labels"] == finding["id"]
        assert finding["volume_mm3"] == mask.sum()  # 1 mm voxels
        assert abs(mask.sum() - finding["designed_volume_mm3"]) <= max(1, 0.05 * finding["designed_volume_mm3"])
        assert ndimage.label(mask, np.ones((3, 3, 3)))[1] == 1
        core = ndimage.binary_erosion(mask, iterations=2 if finding["edge_mm"] > 1 else 1)
        if core.sum() >= 3:  # blended into white matter of level ~1: FLAIR (1 + contrast), T1 ratio
            assert after[core].mean() == pytest.approx(1 + finding["flair_contrast"], abs=0.04)
            assert t1_after[core].mean() == pytest.approx(finding["t1_ratio"], abs=0.04)
            assert (after[core] - before[core]).mean() == pytest.approx(finding["flair_contrast"], abs=0.05)
            checked += 1
    assert checked >= 2


def test_enlarging_merger_below_noise_and_next_to_old_are_marked(changes):
    baseline, followup = changes["visits"]
    found = findings(changes)
    by_fate = {}
    for finding in found.values():
        by_fate.setdefault(finding["fate"], []).append(finding)
    (enlarging,), (below_noise,), (merger,) = by_fate["enlarging"], by_fate["enlarging_below_noise"], \
        by_fate["enlarging_by_merger"]
    assert enlarging["counts"] and not below_noise["counts"] and not merger["counts"]
    assert enlarging["volume_mm3"] / enlarging["baseline_volume_mm3"] == pytest.approx(2.5, rel=0.06)
    assert 1.0 < below_noise["volume_mm3"] / below_noise["baseline_volume_mm3"] < 1.12
    pieces = {}
    for visit in (baseline, followup):
        components, _ = ndimage.label(visit["labels"] > 0, np.ones((3, 3, 3)))
        pieces[visit["session"]] = {int(c) for c in np.unique(components[np.isin(
            visit["labels"], [merger["id"], merger["merges_with"]])])}
    assert len(pieces["01"]) == 2 and len(pieces["02"]) == 1  # apart at baseline, joined at follow-up
    assert merger["volume_mm3"] - merger["baseline_volume_mm3"] < 30 and merger["joined"]
    (near,) = [f for f in found.values() if f.get("site") == "next_to_old" and f["fate"] == "new"]
    distance = ndimage.distance_transform_edt(followup["labels"] != near["next_to"])
    assert 2.5 <= distance[followup["labels"] == near["id"]].min() <= 4.5
    fates = changes["truth"]["intervals"][0]["fates"]
    assert {fates[str(i)] for i in range(1, 6) if i not in (enlarging["id"], below_noise["id"])} == {"stable"}
    # stable: the three untouched old lesions (the merger's neighbour among them) and the inserted old one
    assert changes["truth"]["intervals"][0]["counts"] == {"new": 4, "enlarging": 1, "shrinking": 0, "resolved": 0,
                                                          "stable": 4, "not_counted": 2}


def test_the_contraction_gives_the_stated_brain_volume_change_and_leaves_the_skull(base):
    design = dataclasses.replace(CHANGES, pbvc_percent=-2.0, new_volumes_mm3=(), new_sites=(), new_contrasts=(),
                                 enlarging_factors=(), merger=False, below_noise_factor=None)
    subject = checkset.make_subject(base, design, SEED)
    baseline, followup = subject["visits"]
    (interval,) = subject["truth"]["intervals"]
    assert interval["pbvc_percent"] == -2.0
    rendered = 100 * (followup["tissue"].sum() / baseline["tissue"].sum() - 1)
    assert rendered == pytest.approx(-2.0, abs=0.05) and interval["pbvc_rendered_percent"] == pytest.approx(
        rendered, abs=1e-3)
    # the phantom's inner skull lies ~3 mm beyond the brain; from 6 mm out (diploe, outer table, scalp)
    # nothing may move
    beyond_skull = ndimage.distance_transform_edt(baseline["tissue"] <= 0.01) > 6
    assert np.abs(followup["flair"].astype(float) - baseline["flair"])[beyond_skull].max() <= 1
    assert np.abs(followup["flair"].astype(float) - baseline["flair"])[baseline["brain"]].max() > 100  # it did move
    volumes = [sum(lesion["visits"][s]["volume_mm3"] for lesion in subject["truth"]["lesions"]) for s in ("01", "02")]
    assert volumes[1] / volumes[0] == pytest.approx(0.98, abs=0.03)  # lesions contract with the brain


def test_scan_rescan_pair_differs_only_in_pose_noise_and_bias(base):
    design = checkset.SubjectDesign(subject="07", base_seed=0, rescan=True, years=7 / 365.25,
                                    small_old_volumes_mm3=(15.0, 30.0), grid_pad_voxels=(0, 0, 0))
    subject = checkset.make_subject(base, design, SEED)
    baseline, followup = subject["visits"]
    (interval,) = subject["truth"]["intervals"]
    assert interval["scan_rescan"] and interval["pbvc_percent"] == 0.0 and abs(interval["pbvc_rendered_percent"]) < 0.1
    assert set(interval["fates"].values()) == {"stable"} and interval["counts"]["not_counted"] == 0
    poses = [np.array(timepoint["pose"]) for timepoint in subject["truth"]["timepoints"]]
    assert not np.allclose(poses[0], poses[1], atol=1e-3)
    for lesion in subject["truth"]["lesions"]:
        first, second = (lesion["visits"][s] for s in ("01", "02"))
        assert second["volume_mm3"] == pytest.approx(first["volume_mm3"], rel=0.08, abs=3)
        back = poses[0] @ np.linalg.inv(poses[1]) @ np.array([*second["centroid_mm"], 1.0])
        assert np.linalg.norm(back[:3] - first["centroid_mm"]) < 0.5
    # Visit 2 taken back through the two poses matches visit 1 up to noise and bias.
    to_second = np.linalg.inv(followup["flair_affine"]) @ poses[1] @ np.linalg.inv(poses[0]) @ baseline["flair_affine"]
    index = np.indices(SHAPE, dtype=np.float32)
    moved = checkset_geometry.sample(followup["flair"].astype(np.float32),
                                     checkset_geometry.transform_points(to_second, index), 1)
    brain = ndimage.binary_erosion(baseline["brain"], iterations=3)
    first, second = baseline["flair"][brain].astype(float), moved[brain]
    assert np.corrcoef(first, second)[0, 1] > 0.95
    assert not np.allclose(first / first.mean(), second / second.mean(), atol=0.02)  # noise and bias differ


def test_las_and_anisotropic_outputs_have_the_right_affines(base, tmp_path):
    design = dataclasses.replace(CHANGES, anisotropic_followup=True, acquisition=checkset.Acquisition(),
                                 grid_pad_voxels=(2, 3, 4))  # the visit grids grow with the padding
    plain = checkset.make_subject(base, design, SEED)
    reversed_ = checkset.make_subject(base, dataclasses.replace(design, las=True), SEED)
    folder = checkset_render.write_subject(reversed_, tmp_path, "02")
    truth = tmp_path / "derivatives" / "truth" / "sub-02"
    for session, spacing in (("01", (1, 1, 1)), ("02", (1, 1, 1.2))):
        flair = nib.load(folder / f"ses-{session}" / "anat" / f"sub-02_ses-{session}_FLAIR.nii.gz")
        t1 = nib.load(folder / f"ses-{session}" / "anat" / f"sub-02_ses-{session}_T1w.nii.gz")
        labels = nib.load(truth / f"sub-02_ses-{session}_lesions.nii.gz")
        assert nib.aff2axcodes(flair.affine) == ("L", "A", "S") == nib.aff2axcodes(t1.affine)
        assert flair.header.get_zooms() == pytest.approx(spacing) and t1.header.get_zooms() == pytest.approx((1, 1, 1))
        assert np.allclose(labels.affine, flair.affine) and labels.shape == flair.shape
    assert plain["visits"][1]["flair"].shape == (88, 98, 77)  # (84 + 4, 92 + 6, (84 + 8) / 1.2)
    assert [timepoint["brain_margin_voxels"] >= 2 for timepoint in plain["truth"]["timepoints"]] == [True, True]
    for stored, original in zip(reversed_["visits"], plain["visits"]):
        assert np.array_equal(stored["labels"][::-1], original["labels"])
        assert np.array_equal(stored["flair"][::-1], original["flair"])
        voxel = np.array([3, 40, 20, 1])  # the same world point: reversed index, same mm
        flipped = np.array([original["labels"].shape[0] - 1 - 3, 40, 20, 1])
        assert np.allclose(stored["flair_affine"] @ flipped, original["flair_affine"] @ voxel)
    assert [lesion["visits"] for lesion in reversed_["truth"]["lesions"]] == \
        [lesion["visits"] for lesion in plain["truth"]["lesions"]]
    patient = bids.load_patient(folder, IngestParams(min_field_of_view_mm=60))  # the phantom is 84 mm
    assert [visit.session for visit in patient.visits] == ["01", "02"]


def test_generation_is_deterministic(base, changes):
    again = checkset.make_subject(base, CHANGES, SEED)
    assert json.dumps(again["truth"]) == json.dumps(changes["truth"])
    for first, second in zip(again["visits"], changes["visits"]):
        for key in ("flair", "t1", "labels", "tissue"):
            assert np.array_equal(first[key], second[key])
    other = checkset.make_subject(base, CHANGES, [7, 2])
    assert not np.array_equal(other["visits"][1]["labels"], changes["visits"][1]["labels"])


def test_a_perfect_prediction_scores_perfectly(changes, tmp_path):
    """msvol evaluate reads the written truth: the truth itself, laid out as msvol output, is found in full."""
    checkset_render.write_subject(changes, tmp_path / "data", "01")
    (interval,) = changes["truth"]["intervals"]
    out = tmp_path / "out" / "sub-01"
    followup = changes["visits"][1]
    for visit in changes["visits"]:
        (out / f"ses-{visit['session']}").mkdir(parents=True)
        nib.Nifti1Image(visit["labels"], visit["flair_affine"]).to_filename(out / f"ses-{visit['session']}" / "lesions.nii.gz")
    folder = out / "intervals" / "ses-01_to_ses-02"
    folder.mkdir(parents=True)
    for name in ("new", "enlarging"):
        ids = [int(i) for i, fate in interval["fates"].items() if fate == name]
        nib.Nifti1Image(np.where(np.isin(followup["labels"], ids), followup["labels"], 0), followup["flair_affine"]
                        ).to_filename(folder / f"{name}_lesions.nii.gz")
    (out / "report.json").write_text(json.dumps({"intervals": [
        {"from_session": "01", "to_session": "02", "pbvc_percent": interval["pbvc_percent"], "lesions": []}]}))
    overall = evaluate.evaluate(tmp_path / "out", tmp_path / "data")["overall"]
    assert overall["mean_dice"] == 1.0 and overall["false_new"] == 0 and overall["false_enlarging"] == 0
    assert overall["new_sensitivity"] == 1.0 and overall["truth_new"] == 4
    assert overall["enlarging_sensitivity"] == 1.0 and overall["truth_enlarging"] == 1


def test_another_seed_draws_another_set_of_the_same_design():
    """The calibration set (CALIBRATION_SEED) has the check set's design but other patients and lesion draws,
    so thresholds chosen on it leave the check set held out."""
    held_out, calibration = checkset.default_designs(), checkset.default_designs(checkset.CALIBRATION_SEED)
    assert held_out == checkset.default_designs(checkset.CHECKSET_SEED)
    assert [d.subject for d in held_out] == [d.subject for d in calibration]
    assert [d.rescan for d in held_out] == [d.rescan for d in calibration]
    assert [len(d.new_volumes_mm3) for d in held_out] == [len(d.new_volumes_mm3) for d in calibration]
    assert not {d.base_seed for d in held_out} & {d.base_seed for d in calibration}
    assert all(a.new_volumes_mm3 != b.new_volumes_mm3 for a, b in zip(held_out[:6], calibration[:6]))
