"""The generator is our ground truth, so its truth must agree with what it renders.

One full-size patient with two visits (~1 minute, the `patient` fixture); the sample data's truth is
checked too. Lesion plans, fates and settings are checked without rendering anything.
"""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from msvol.config import LesionParams
from msvol.synth import patients

SAMPLE_TRUTH = Path(__file__).parents[2] / "sample_data" / "derivatives" / "truth" / "sub-01" / "sub-01_truth.json"


@pytest.fixture(scope="module")
def patient():
    return patients.generate_patient(11, patients.SynthSettings(n_visits=2))


def test_truth_pbvc_is_what_was_rendered_and_close_to_the_drawn_rate(patient):
    truth = patient["truth"]
    baseline, followup = (visit["tissue"].sum() / 1000 for visit in patient["visits"])
    (interval,) = truth["intervals"]
    assert interval["pbvc_percent"] == pytest.approx(100 * (followup - baseline) / baseline, abs=1e-3)
    intended = truth["annual_pbvc_percent_drawn"] * interval["years"]
    assert interval["pbvc_percent"] == pytest.approx(intended, rel=0.1)


def test_lesion_fates_follow_the_rendered_labels(patient):
    truth = patient["truth"]
    (interval,) = truth["intervals"]
    before, after = (set(np.unique(visit["labels"])) - {0} for visit in patient["visits"])
    fates = {int(k): v for k, v in interval["fates"].items()}
    assert {i for i, f in fates.items() if f in ("new", "new_below_minimum")} == after - before
    minimum = LesionParams().min_new_lesion_volume_mm3
    volumes_after = {lesion["id"]: lesion["visits"]["02"]["volume_mm3"] for lesion in truth["lesions"]}
    assert all((volumes_after[i] >= minimum) == (f == "new") for i, f in fates.items() if f.startswith("new"))
    assert {i for i, f in fates.items() if f == "resolved"} == before - after
    settings = patients.SynthSettings()
    assert interval["counts"]["new"] <= settings.n_new_per_interval[1]
    for lesion in truth["lesions"]:
        volumes = [v["volume_mm3"] for v in lesion["visits"].values()]
        if fates.get(lesion["id"]) == "enlarging":
            assert volumes[1] >= 1.5 * volumes[0]
        if fates.get(lesion["id"]) == "stable":
            assert volumes[1] == pytest.approx(volumes[0], rel=0.2)


def test_lesions_are_flair_bright_and_t1_dark(patient):
    visit = patient["visits"][0]
    lesion = visit["labels"] > 0
    white_matter = visit["brain"] & ~lesion
    t1_on_flair_grid = visit["t1"][::-1]  # stored left-right flipped; motion of <= 1 mm is ignored here
    assert np.median(visit["flair"][lesion]) > 1.5 * np.median(visit["flair"][white_matter])
    assert np.median(t1_on_flair_grid[lesion]) < np.median(t1_on_flair_grid[white_matter])


def test_same_seed_same_plan():
    """Determinism where it is cheap to check: the same seed draws the same lesion plan."""
    affine = patients.scanner_affine()
    candidates = grid_candidates()
    plans = [patients._plan(np.random.default_rng(5), patients.SynthSettings(n_baseline_lesions=(3, 3)), candidates,
                         affine) for _ in range(2)]
    assert np.array_equal(plans[0].scales, plans[1].scales)
    assert [s.centre_mm.tolist() for s in plans[0].shapes] == [s.centre_mm.tolist() for s in plans[1].shapes]


def grid_candidates() -> dict:
    """Every site's candidate centres: the same coarse grid of voxel indices (no anatomy needed)."""
    grid = np.stack(np.meshgrid(*[np.arange(40, 140, 10)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    return {site: grid for site in patients.SITES}


@pytest.mark.parametrize("before, after, fate", [
    (0.0, 1.0, "new"),
    (0.0, 0.5, "new"),
    (1.0, 0.0, "resolved"),
    (1.32, 0.0, "resolved"),
    (1.0, 1.0, "stable"),
    (1.0, 1.32, "enlarging"),  # volume x 2.30
    (1.0, 1.144, "stable"),  # volume x 1.497
    (1.0, 1.146, "enlarging"),  # volume x 1.505
    (1.32, 1.32, "stable"),
    (1.0, 0.78, "shrinking"),  # volume x 0.47
    (1.0, 0.875, "stable"),  # volume x 0.67 (> 1 / 1.5)
    (1.0, 0.872, "shrinking"),  # volume x 0.663
])
def test_fate_follows_the_volume_ratio_of_the_scales(before, after, fate):
    assert patients._fate(before, after) == fate


def test_default_settings_are_those_of_the_committed_sample_data():
    """sample_data was generated with these; training-only features are off by default."""
    settings = patients.SynthSettings()
    assert patients.SITES == ("periventricular", "deep_white_matter", "juxtacortical", "infratentorial")
    assert settings.site_weights == (0.45, 0.35, 0.2, 0.0)
    assert len(settings.site_weights) == len(patients.SITES)
    assert settings.confluent_fraction == 0.0
    assert settings.contrast == "standard"


def test_default_plan_draws_what_the_three_site_generator_drew(monkeypatch):
    """A zero-weight fourth site and no confluent draw leave the random stream untouched, so the same
    seed places the same lesions as before issue 3 (three sites, weights 0.45/0.35/0.2)."""
    affine = patients.scanner_affine()
    candidates = grid_candidates()
    now = patients._plan(np.random.default_rng(5), patients.SynthSettings(n_baseline_lesions=(6, 6)), candidates, affine)
    monkeypatch.setattr(patients, "SITES", patients.SITES[:3])
    before = patients._plan(np.random.default_rng(5), patients.SynthSettings(n_baseline_lesions=(6, 6),
                                                                             site_weights=(0.45, 0.35, 0.2)),
                            candidates, affine)
    assert np.array_equal(now.scales, before.scales) and now.dates == before.dates
    assert [(s.site, s.centre_mm.tolist(), s.radius_mm) for s in now.shapes] == \
        [(s.site, s.centre_mm.tolist(), s.radius_mm) for s in before.shapes]
    assert "infratentorial" not in {shape.site for shape in now.shapes}


def test_site_weights_choose_the_sites():
    settings = patients.SynthSettings(n_baseline_lesions=(4, 4), site_weights=(0.0, 0.0, 0.0, 1.0))
    plan = patients._plan(np.random.default_rng(1), settings, grid_candidates(), patients.scanner_affine())
    assert {shape.site for shape in plan.shapes} == {"infratentorial"}


def test_confluent_lesions_touch_an_earlier_lesion_and_others_stay_apart():
    affine = patients.scanner_affine()
    apart = patients._plan(np.random.default_rng(2), patients.SynthSettings(n_baseline_lesions=(5, 5)), grid_candidates(),
                        affine).shapes
    for index, shape in enumerate(apart):
        for other in apart[:index]:
            assert np.linalg.norm(shape.centre_mm - other.centre_mm) > 1.45 * (shape.radius_mm + other.radius_mm) + 4
    # Every lesion confluent: the second is centred on the first one's edge, 0.8 of its bounding radius
    # from its centre. (A confluent lesion must stay apart from all but its anchor, so at most two fit.)
    settings = patients.SynthSettings(n_visits=1, n_baseline_lesions=(2, 2), confluent_fraction=1.0)
    first, second = patients._plan(np.random.default_rng(2), settings, grid_candidates(), affine).shapes
    assert np.linalg.norm(second.centre_mm - first.centre_mm) == pytest.approx(0.8 * first.radius_mm)


def test_contrast_presets_share_tissues_and_shifted_moves_flair_lesions_closer_to_white_matter():
    from msvol.synth.anatomy import CONTRASTS

    assert set(CONTRASTS) == {"standard", "shifted"}
    (flair, t1), (shifted_flair, shifted_t1) = CONTRASTS["standard"], CONTRASTS["shifted"]
    assert set(flair) == set(shifted_flair) and set(t1) == set(shifted_t1)
    assert shifted_flair["lesion"] / shifted_flair["wm"] == pytest.approx(1.3)
    assert shifted_flair["lesion"] / shifted_flair["wm"] < flair["lesion"] / flair["wm"]
    assert shifted_flair["csf"] > flair["csf"], "incomplete fluid suppression"


def test_written_patient_is_bids_with_truth(patient, tmp_path):
    patients.write_patient(patient, tmp_path, "09")
    anat = tmp_path / "sub-09" / "ses-01" / "anat"
    flair = nib.load(anat / "sub-09_ses-01_FLAIR.nii.gz")
    assert flair.shape == patients.GRID_SHAPE and np.allclose(flair.affine, patients.scanner_affine())
    assert (tmp_path / "sub-09" / "sub-09_sessions.tsv").read_text().startswith("session_id\tacq_time")
    truth = json.loads((tmp_path / "derivatives" / "truth" / "sub-09" / "sub-09_truth.json").read_text())
    assert truth["seed"] == 11
    labels = nib.load(tmp_path / "derivatives" / "truth" / "sub-09" / "sub-09_ses-02_lesions.nii.gz")
    assert np.array_equal(np.asarray(labels.dataobj), patient["visits"][1]["labels"])


def test_sample_truth_is_consistent():
    truth = json.loads(SAMPLE_TRUTH.read_text())
    assert truth["seed"] == 7 and len(truth["timepoints"]) == 3
    for interval in truth["intervals"]:
        counted = [fate for fate in interval["fates"].values() if fate != "new_below_minimum"]
        assert sum(interval["counts"].values()) == len(counted)
