"""The volumes a patient's run writes besides the report: label maps per visit and per interval (back on each
input's own grid) and the review viewers' images on the halfway grid. Called by msvol.pipeline.run_patient."""

from __future__ import annotations

import functools
import json

import numpy as np

from msvol.datatypes import (CHANGE_MAP_VALUES, IntervalImages, IntervalResult, LesionMap, Patient, PreparedVisit,
                             Rigid, Volume)
from msvol.stages import lesions, preprocess, register

MAPPED_STATUSES = ("new", "enlarging", "possible_new")  # written as intervals/*/<status>_lesions.nii.gz


def finding_maps(images: IntervalImages, result: IntervalResult, followup: LesionMap) -> dict[str, Volume]:
    """Per class of MAPPED_STATUSES, the interval's findings as labels (their ids) on the follow-up FLAIR grid:
    those of the per-visit mask from the follow-up labels, what only the change model sees (change_only_mm3:
    a finding without follow-up label, a lesion's growth) pulled back from halfway space."""
    only = [change.id for change in result.changes if change.change_only_mm3]
    pulled = np.zeros(followup.labels.data.shape, np.int32)
    if only:
        halfway = Volume(np.where(np.isin(images.followup_labels, only), images.followup_labels, 0).astype(np.int32),
                         images.affine, "labels")
        pulled = register.resample(halfway, Rigid(np.linalg.inv(images.halfway_to_followup)),
                                   followup.labels.data.shape, followup.labels.affine).data
    maps = {}
    for status in MAPPED_STATUSES:
        labels = lesions.change_labels(followup.labels.data, result.changes, status)
        ids = [change.id for change in result.changes if change.status == status and change.id in only]
        labels = np.where(np.isin(pulled, ids) & (labels == 0), pulled, labels).astype(np.int32)
        maps[status] = followup.labels.with_data(labels)
    return maps


def output_files(patient: Patient, prepared: list[PreparedVisit], lesion_maps: list[LesionMap],
                 maps_by_interval: dict) -> dict:
    """Label volumes to write, keyed by session (str) or interval (from, to); each back on the input grid.
    `maps_by_interval`: (from, to) -> finding_maps() of that interval."""
    original = {visit.session: visit.flair for visit in patient.visits}
    files: dict = {}
    for ready, lesion_map in zip(prepared, lesion_maps):
        native = original[ready.session].affine
        files[ready.session] = {
            "lesions": (f"ses-{ready.session}/lesions.nii.gz", preprocess.reorient(lesion_map.labels, native)),
            "brain_mask": (f"ses-{ready.session}/brain_mask.nii.gz", preprocess.reorient(ready.brain_mask, native)),
            # the bias-corrected FLAIR the models read: the review grows added lesions on it
            "flair": (f"ses-{ready.session}/flair.nii.gz", preprocess.reorient(ready.flair, native)),
        }
    for (first, second), maps in maps_by_interval.items():
        folder = f"intervals/ses-{first}_to_ses-{second}"
        native = original[second].affine
        files[(first, second)] = {f"{status}_lesions": (f"{folder}/{status}_lesions.nii.gz",
                                                        preprocess.reorient(volume, native))
                                  for status, volume in maps.items()}
    return files


def viewer_images(images: IntervalImages, result: IntervalResult) -> tuple[dict[str, Volume], bytes]:
    """What the review's side-by-side viewers load, on the halfway grid: both FLAIRs as uint8 (each windowed
    at its 0.5-99.5th percentile inside the head), the change class of every lesion voxel (CHANGE_MAP_VALUES;
    resolved lesions from the baseline labels), and the halfway <-> follow-up mm maps as JSON."""
    def window(image: np.ndarray) -> np.ndarray:
        low, high = np.percentile(image[image > 0], (0.5, 99.5)) if (image > 0).any() else (0.0, 1.0)
        return np.clip((image - low) / max(high - low, 1e-6) * 255, 0, 255).astype(np.uint8)

    classes = np.zeros(images.followup_labels.shape, np.uint8)
    for change in result.changes:
        value = CHANGE_MAP_VALUES.get(change.status)
        if value is None:
            continue
        if change.status == "resolved":
            classes[np.isin(images.baseline_labels, change.baseline_labels) & (classes == 0)] = value
        else:
            classes[images.followup_labels == change.id] = value
    grid = functools.partial(Volume, affine=images.affine)
    volumes = {"baseline_flair": grid(window(images.baseline_flair), kind="FLAIR"),
               "followup_flair": grid(window(images.followup_flair), kind="FLAIR"),
               "changes": grid(classes, kind="labels")}
    space = {"halfway_to_followup": np.asarray(images.halfway_to_followup).tolist(),
             "followup_to_halfway": np.linalg.inv(images.halfway_to_followup).tolist()}
    return volumes, (json.dumps(space, indent=1) + "\n").encode()
