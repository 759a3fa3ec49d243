"""The generator is our ground truth, so its truth must agree with what it renders.

One full-size patient with two visits (~1 minute); the sample data's truth is checked too.
"""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from msvol import synth
from msvol.config import LesionParams

SAMPLE_TRUTH = Path(__file__).parents[1] / "sample_data" / "derivatives" / "truth" / "sub-01" / "sub-01_truth.json"


@pytest.fixture(scope="module")
def patient():
    return synth.generate_patient(11, synth.SynthSettings(n_visits=2))


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
    settings = synth.SynthSettings()
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
    affine = synth.scanner_affine()
    grid = np.stack(np.meshgrid(*[np.arange(40, 140, 10)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    candidates = {site: grid for site in synth.SITES}
    plans = [synth._plan(np.random.default_rng(5), synth.SynthSettings(n_baseline_lesions=(3, 3)), candidates,
                         affine) for _ in range(2)]
    assert np.array_equal(plans[0].scales, plans[1].scales)
    assert [s.centre_mm.tolist() for s in plans[0].shapes] == [s.centre_mm.tolist() for s in plans[1].shapes]


def test_written_patient_is_bids_with_truth(patient, tmp_path):
    synth.write_patient(patient, tmp_path, "09")
    anat = tmp_path / "sub-09" / "ses-01" / "anat"
    flair = nib.load(anat / "sub-09_ses-01_FLAIR.nii.gz")
    assert flair.shape == synth.GRID_SHAPE and np.allclose(flair.affine, synth.scanner_affine())
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
