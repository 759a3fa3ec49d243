"""Tests for review.final_dicom's confirmed label map: where each confirmed lesion's voxels come from."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from msvol.review.final_dicom import _confirmed_labels

INTERVAL_FOLDER = "intervals/ses-01_to_ses-02"


def finding(lesion_id: int, status: str, mask: str | None = None) -> dict:
    return {"id": f"01-02:L{lesion_id}", "kind": "automated", "confirmed_status": status, "mask": mask,
            "baseline_volume_mm3": 0.0, "followup_volume_mm3": 8.0}


def test_a_confirmed_lesion_only_the_change_model_saw_takes_its_voxels_from_the_possible_new_map(tmp_path):
    """Issue 12: a possible new lesion without a follow-up label (lesion id above every label) that the reader
    confirms goes into the confirmed SEG with the voxels of possible_new_lesions.nii.gz."""
    folder = tmp_path / "sub-01"
    (folder / INTERVAL_FOLDER).mkdir(parents=True)
    automated = np.zeros((12, 12, 12), np.int32)
    automated[2:4, 2:4, 2:4] = 1  # a per-visit lesion, confirmed new
    candidates = np.zeros_like(automated)
    candidates[8:10, 8:10, 8:10] = 5  # seen by the change model only
    nib.save(nib.Nifti1Image(candidates, np.eye(4)), folder / INTERVAL_FOLDER / "possible_new_lesions.nii.gz")
    interval = {"from_session": "01", "to_session": "02", "findings": [finding(1, "new"), finding(5, "new")]}
    labels, statuses, findings = _confirmed_labels(folder, interval, automated)
    assert statuses == {1: "new", 5: "new"}
    assert np.array_equal(labels == 1, automated == 1) and np.array_equal(labels == 5, candidates == 5)
    assert [item["lesion_id"] for item in findings] == [1, 5]


def test_a_confirmed_enlargement_keeps_the_growth_only_the_change_model_saw(tmp_path):
    """Issue 12: growth the per-visit mask missed is in enlarging_lesions.nii.gz under the lesion's id; the
    confirmed SEG holds the follow-up lesion and that growth."""
    folder = tmp_path / "sub-01"
    (folder / INTERVAL_FOLDER).mkdir(parents=True)
    automated = np.zeros((12, 12, 12), np.int32)
    automated[2:5, 2:5, 2:5] = 3
    enlarging = automated.copy()
    enlarging[5:7, 2:5, 2:5] = 3  # the growth
    nib.save(nib.Nifti1Image(enlarging, np.eye(4)), folder / INTERVAL_FOLDER / "enlarging_lesions.nii.gz")
    interval = {"from_session": "01", "to_session": "02", "findings": [finding(3, "enlarging")]}
    labels, statuses, _ = _confirmed_labels(folder, interval, automated)
    assert statuses == {3: "enlarging"} and np.array_equal(labels == 3, enlarging == 3)
