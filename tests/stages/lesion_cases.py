"""Shared cases of the lesion-stage tests (test_lesions.py, test_lesion_change.py): spheres on a 1 mm grid
that is also the 'halfway' grid, labelled and matched as the pipeline would."""

from __future__ import annotations

import numpy as np
import pytest

from msvol.config import LesionParams, SegmentParams
from msvol.datatypes import LesionMap, Volume
from msvol.stages.lesions import label_lesions, match_lesions

SEGMENT = SegmentParams()
PARAMS = LesionParams()
SHAPE = (48, 48, 40)
# Baseline lesions of the matching tests: (centre in voxels, radius in voxels), far apart.
A = ((12, 12, 12), 4)  # 257 voxels: a "large" lesion (>= 100 mm3)
B = ((34, 14, 20), 3)  # 123 voxels
C = ((20, 34, 28), 3)
FAR = ((36, 36, 10), 3)  # a place at least 10 voxels from every baseline lesion


def probability(mask: np.ndarray, affine: np.ndarray, inside: float = 0.9) -> Volume:
    return Volume(np.where(mask, inside, 0.05).astype(np.float32), affine, "probability")


def lesion_map(mask: np.ndarray, session: str, affine: np.ndarray, params: LesionParams = PARAMS) -> LesionMap:
    return label_lesions(probability(mask, affine), session, SEGMENT, params)


def match(base_mask, follow_mask, affine, params: LesionParams = PARAMS):
    """Label both visits on one 1 mm grid, which is also the 'halfway' grid."""
    baseline = lesion_map(base_mask, "ses-01", affine, params)
    followup = lesion_map(follow_mask, "ses-02", affine, params)
    changes = match_lesions(baseline, followup, baseline.labels.data, followup.labels.data, params)
    return baseline, followup, changes


def statuses(changes) -> list[str]:
    return sorted(change.status for change in changes)


def label_at(lesion_map_: LesionMap, voxel) -> int:
    return int(lesion_map_.labels.data[tuple(voxel)])


def spheres(ball, *items, shape=SHAPE) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for centre, radius in items:
        mask |= ball(shape, centre, radius)
    return mask


@pytest.fixture
def affine(make_affine):
    return make_affine(origin=(-24.0, 10.5, -7.0))  # 1 mm, translated origin
