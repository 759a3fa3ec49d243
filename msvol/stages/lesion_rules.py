"""The rules both lesion stages apply: connectivity, the size-dependent change thresholds, confluent growth.

Shared by msvol.stages.lesions (per-visit lesions matched across an interval) and msvol.stages.lesion_change
(the change model's verdicts), so a volume difference and the change model's new tissue are judged alike.
Like atlas, a leaf inside stages: it imports no other stage.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from msvol.config import LesionParams

CONFLUENT_DISTANCE_MM = 2.0  # growth farther than this from the baseline lesion is a new lesion joining it


def structure(connectivity: int) -> np.ndarray:
    return ndimage.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])


def _relative_threshold(baseline_mm3: float, params: LesionParams) -> float:
    small = baseline_mm3 < params.small_lesion_max_volume_mm3
    return params.min_relative_change_small if small else params.min_relative_change_large


def change_needed_mm3(baseline_mm3: float, reference_mm3: float, params: LesionParams) -> float:
    """The smallest volume change that counts: the absolute floor, and the size-dependent fraction (by the
    baseline size) of `reference_mm3` (the baseline for growth, the follow-up for shrinkage)."""
    return max(params.min_absolute_change_mm3, _relative_threshold(baseline_mm3, params) * reference_mm3)


def classify_change(baseline_mm3: float, followup_mm3: float, params: LesionParams) -> str:
    """'enlarging', 'shrinking' or 'stable' for a lesion present at both visits (bounds inclusive)."""
    if followup_mm3 - baseline_mm3 >= change_needed_mm3(baseline_mm3, baseline_mm3, params):
        return "enlarging"
    if baseline_mm3 - followup_mm3 >= change_needed_mm3(baseline_mm3, followup_mm3, params):
        return "shrinking"
    return "stable"


def grown_labels(labels: np.ndarray, tolerance_voxels: int) -> np.ndarray:
    """`labels` grown by `tolerance_voxels` (a cube; where two meet the higher label wins), each lesion's own
    voxels kept: what a lesion of the other visit must touch to belong to it."""
    if not tolerance_voxels:
        return labels
    grown = ndimage.grey_dilation(labels, size=(2 * tolerance_voxels + 1,) * 3)
    return np.where(labels > 0, labels, grown)


def reach_labels(baseline_halfway: np.ndarray, tolerance_voxels: int, followup_probability: np.ndarray | None = None,
                 bridge_probability: float = 0.0, extra: np.ndarray | None = None) -> np.ndarray:
    """What a follow-up lesion must touch to belong to a baseline lesion: each baseline lesion grown by
    `tolerance_voxels` (grown_labels) and, given the follow-up's per-visit probability, along the tissue that holds
    at least `bridge_probability` there and connects (26-connected) to it (hysteresis: a lesion joined to an old one by
    sub-threshold lesion signal is the old one grown, not a new one). `extra`: more voxels that may carry the
    connection (new tissue only the change model sees). A bridged voxel takes the label of the nearest baseline
    voxel of its connected part."""
    grown = grown_labels(baseline_halfway, tolerance_voxels)
    if followup_probability is None or not bridge_probability:
        return grown
    region = (followup_probability >= bridge_probability) | (baseline_halfway > 0)
    if extra is not None:
        region |= extra
    parts, _ = ndimage.label(region, structure=structure(26))
    reach = grown.copy()
    boxes = ndimage.find_objects(parts)
    for part in np.unique(parts[baseline_halfway > 0]):  # the parts that hold an old lesion
        box = boxes[part - 1]
        inside = parts[box] == part
        open_voxels = inside & (reach[box] == 0)
        if not open_voxels.any():
            continue
        old = np.where(inside, baseline_halfway[box], 0)
        _, nearest = ndimage.distance_transform_edt(old == 0, return_indices=True)
        reach[box][open_voxels] = old[tuple(nearest)][open_voxels]
    return reach


def has_distant_growth(baseline_mask, followup_mask, voxel_mm3, params: LesionParams) -> bool:
    """Whether the follow-up holds a piece of new-lesion size (min_new_lesion_volume_mm3) farther than
    CONFLUENT_DISTANCE_MM from the baseline lesion: a new lesion that joined it."""
    corners = np.argwhere(baseline_mask | followup_mask)
    box = tuple(slice(max(low - 4, 0), high + 5) for low, high in zip(corners.min(axis=0), corners.max(axis=0)))
    baseline_mask, followup_mask = baseline_mask[box], followup_mask[box]
    distance = ndimage.distance_transform_edt(~baseline_mask) * voxel_mm3 ** (1 / 3)
    far = followup_mask & (distance > CONFLUENT_DISTANCE_MM)
    if not far.any():
        return False
    pieces, count = ndimage.label(far, structure=structure(26))
    largest = np.bincount(pieces.ravel())[1:].max()
    return bool(largest * voxel_mm3 >= params.min_new_lesion_volume_mm3)  # a numpy bool breaks json
