"""Known-answer and property tests for msvol.stages.lesions (labelling, matching, change classes)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from msvol.config import LesionParams, SegmentParams
from msvol.datatypes import LesionMap, Volume
from msvol.stages import lesions as lesions_module
from msvol.stages.lesion_change import change_only_findings, confirm_losses, fuse_change, loss_region
from msvol.stages.lesion_rules import classify_change
from msvol.stages.lesions import change_labels, label_lesions, match_lesions, measure_lesions

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


# --- label_lesions -------------------------------------------------------------------------------


def test_label_lesions_counts_measures_and_locates_spheres(ball, make_affine):
    affine = make_affine(spacing=(1.0, 1.0, 1.5), origin=(-24.0, 10.5, -7.0))
    truth = [((10, 10, 8), 2, 0.7), ((30, 12, 20), 3, 0.8), ((20, 34, 30), 4, 0.95)]
    data = np.full(SHAPE, 0.1, np.float32)
    masks = []
    for centre, radius, p in truth:
        mask = ball(SHAPE, centre, radius)
        data[mask] = p
        masks.append(mask)
    result = label_lesions(Volume(data, affine, "probability"), "ses-01", SEGMENT, PARAMS)

    assert len(result.lesions) == 3
    assert [lesion.label for lesion in result.lesions] == [1, 2, 3]
    assert result.labels.data.dtype == np.int32
    np.testing.assert_array_equal(result.labels.affine, affine)
    for (centre, radius, p), mask in zip(truth, masks):
        label = label_at(result, centre)
        lesion = result.lesions[label - 1]
        assert lesion.label == label
        np.testing.assert_array_equal(result.labels.data == label, mask)
        assert lesion.volume_mm3 == pytest.approx(mask.sum() * 1.5)
        # the voxelised ball is within ~10 % of the continuous sphere (sphere in voxel units x 1.5 mm3)
        assert lesion.volume_mm3 == pytest.approx(4 / 3 * np.pi * radius**3 * 1.5, rel=0.1)
        expected_mm = affine[:3, :3] @ np.array(centre, float) + affine[:3, 3]
        np.testing.assert_allclose(lesion.centroid_mm, expected_mm, atol=1e-9)
        assert lesion.mean_probability == pytest.approx(p, abs=1e-6)
    assert result.total_volume_mm3 == pytest.approx(sum(m.sum() for m in masks) * 1.5)


def test_label_lesions_threshold_is_inclusive(make_affine):
    threshold = np.float32(SEGMENT.probability_threshold)
    data = np.zeros((16, 16, 16), np.float32)
    data[2, 2, 2:10] = threshold  # at the threshold: kept
    data[8, 8, 2:10] = np.nextafter(threshold, np.float32(0))  # just below: background
    result = label_lesions(Volume(data, make_affine(), "probability"), "s", SEGMENT, PARAMS)
    assert len(result.lesions) == 1
    assert result.lesions[0].centroid_mm == pytest.approx((2.0, 2.0, 5.5))


@pytest.mark.parametrize("spacing, voxels_kept, voxels_dropped, minimum", [
    ((1.0, 1.0, 1.0), 5, 4, 5.0),  # 5 mm3 kept (inclusive), 4 mm3 dropped
    ((1.0, 1.0, 1.5), 4, 3, 6.0),  # 6 mm3 kept (inclusive), 4.5 mm3 dropped
])
def test_label_lesions_min_volume_is_inclusive(make_affine, spacing, voxels_kept, voxels_dropped, minimum):
    params = dataclasses.replace(PARAMS, min_lesion_volume_mm3=minimum)
    data = np.zeros((20, 20, 20), np.float32)
    data[3, 3, 2:2 + voxels_dropped] = 0.9  # first in raster order, so labels must be renumbered
    data[10, 10, 2:2 + voxels_kept] = 0.9
    data[15, 5, 2:2 + voxels_dropped] = 0.9
    result = label_lesions(Volume(data, make_affine(spacing), "probability"), "s", SEGMENT, params)
    assert len(result.lesions) == 1
    assert result.lesions[0].label == 1
    assert result.lesions[0].volume_mm3 == pytest.approx(minimum)
    assert set(np.unique(result.labels.data)) == {0, 1}
    assert result.labels.data[10, 10, 2] == 1 and result.labels.data[3, 3, 2] == 0


def test_label_lesions_connectivity(make_affine):
    data = np.zeros((12, 12, 12), np.float32)
    data[2:5, 2:5, 2:5] = 0.9  # two 27-voxel cubes touching only at one corner
    data[5:8, 5:8, 5:8] = 0.9
    volume = Volume(data, make_affine(), "probability")
    assert len(label_lesions(volume, "s", SEGMENT, PARAMS).lesions) == 1
    six = dataclasses.replace(PARAMS, connectivity=6)
    assert len(label_lesions(volume, "s", SEGMENT, six).lesions) == 2


def test_label_lesions_empty(make_affine):
    result = label_lesions(Volume(np.zeros((8, 8, 8), np.float32), make_affine(), "probability"), "s", SEGMENT,
                           PARAMS)
    assert result.lesions == () and result.total_volume_mm3 == 0.0 and not result.labels.data.any()


# --- classify_change ------------------------------------------------------------------------------

# Dyadic fractions so that every product at a bound is exact in floating point.
EXACT = dataclasses.replace(PARAMS, small_lesion_max_volume_mm3=100.0, min_relative_change_small=0.5,
                            min_relative_change_large=0.25, min_absolute_change_mm3=10.0)


@pytest.mark.parametrize("baseline, followup, expected", [
    # small lesion (< 100 mm3): +50 % and +10 mm3, both inclusive
    (40.0, 60.0, "enlarging"),
    (40.0, 59.5, "stable"),
    (8.0, 18.0, "enlarging"),  # +125 %: the absolute bound decides
    (8.0, 17.5, "stable"),
    # 100 mm3 is "large" (small means < 100): +25 %
    (100.0, 125.0, "enlarging"),
    (100.0, 124.5, "stable"),
    (99.5, 130.0, "stable"),  # +30 % is not enough for a small lesion
    (99.5, 149.25, "enlarging"),
    # shrinking mirrors enlarging: the baseline must be >= (1 + threshold) x the follow-up
    (150.0, 120.0, "shrinking"),  # large: 30 lost = 0.25 x 120
    (150.0, 120.5, "stable"),
    (99.0, 66.0, "shrinking"),  # small: 33 lost = 0.5 x 66
    (99.0, 66.5, "stable"),
    (18.0, 8.0, "shrinking"),  # absolute bound: exactly 10 mm3 lost
    (18.0, 8.5, "stable"),
    (50.0, 50.0, "stable"),
])
def test_classify_change_bounds_are_inclusive(baseline, followup, expected):
    assert classify_change(baseline, followup, EXACT) == expected


def test_classify_change_default_thresholds():
    eps = 1e-6
    assert classify_change(40.0, 40.0 * 1.45 + eps, PARAMS) == "enlarging"
    assert classify_change(40.0, 40.0 * 1.45 - eps, PARAMS) == "stable"
    assert classify_change(200.0, 200.0 * 1.24 + eps, PARAMS) == "enlarging"
    assert classify_change(200.0, 200.0 * 1.24 - eps, PARAMS) == "stable"
    assert classify_change(10.0, 19.9, PARAMS) == "stable"  # +99 % but only 9.9 mm3
    assert classify_change(200.0, 200.0 / 1.24 - eps, PARAMS) == "shrinking"
    assert classify_change(200.0, 200.0 / 1.24 + eps, PARAMS) == "stable"


# --- match_lesions: scenarios ---------------------------------------------------------------------


def test_self_match_is_all_stable(ball, affine):
    mask = spheres(ball, A, B, C)
    baseline, followup, changes = match(mask, mask, affine)
    assert statuses(changes) == ["stable"] * 3
    assert [c.id for c in changes] == [1, 2, 3]
    for change in changes:
        assert change.baseline_volume_mm3 == change.followup_volume_mm3
        assert change.baseline_labels == change.followup_labels == (change.id,)
        assert not (change.merged or change.split or change.confluent)
        assert change.centroid_mm == pytest.approx(followup.lesions[change.id - 1].centroid_mm)


def test_one_blob_added_far_away_is_one_new(ball, affine):
    new_mask = ball(SHAPE, *FAR)
    baseline, followup, changes = match(spheres(ball, A, B, C), spheres(ball, A, B, C) | new_mask, affine)
    assert statuses(changes) == ["new", "stable", "stable", "stable"]
    (new,) = [c for c in changes if c.status == "new"]
    assert new.id == label_at(followup, FAR[0])
    assert new.baseline_labels == () and new.followup_labels == (new.id,)
    assert new.baseline_volume_mm3 == 0.0
    assert new.followup_volume_mm3 == pytest.approx(new_mask.sum())
    np.testing.assert_allclose(new.centroid_mm, affine[:3, :3] @ np.array(FAR[0]) + affine[:3, 3], atol=1e-9)


@pytest.mark.parametrize("voxels, counted", [(13, False), (14, True)])  # min_new_lesion_volume_mm3 = 14, inclusive
def test_new_lesion_minimum_volume(ball, affine, voxels, counted):
    """Below the minimum a new lesion is a candidate for the reader ('possible_new'), not a counted one."""
    assert PARAMS.min_new_lesion_volume_mm3 == 14.0
    follow = spheres(ball, A, B)
    blob = np.zeros(SHAPE, bool)
    blob[36, 36:43, 10:12] = True  # 7 x 2 = 14 voxels, far from A and B
    blob[36, 42, 11] = voxels == 14
    follow |= blob
    baseline, followup, changes = match(spheres(ball, A, B), follow, affine)
    assert len(followup.lesions) == 3  # kept as a lesion (>= 5 mm3) in any case
    assert statuses(changes) == ["new" if counted else "possible_new", "stable", "stable"]


@pytest.mark.parametrize("x, tolerance, matched", [
    (19, 1, True),  # adjacent (no empty voxel between): within the 1-voxel match tolerance
    (20, 1, False),  # one empty voxel between: too far
    (19, 0, False),  # without tolerance only overlap matches
])
def test_match_tolerance(ball, affine, x, tolerance, matched):
    """A lesion displaced next to its baseline position (a registration wobble) is not 'new'."""
    params = dataclasses.replace(PARAMS, match_tolerance_voxels=tolerance)
    base, follow = ball(SHAPE, (12, 12, 12), 3), ball(SHAPE, (x, 12, 12), 3)  # x: 9..15, then x - 3..x + 3
    assert not (base & follow).any()
    _, _, changes = match(base, follow, affine, params)
    assert statuses(changes) == (["stable"] if matched else ["new", "resolved"])


def test_halfway_labels_decide_overlap_and_keep_their_own_voxels(make_affine):
    """Resampled labels may touch in halfway space; dilation must not relabel a lesion's own voxels."""
    affine = make_affine()
    native_base = np.zeros((32, 32, 32), bool)
    native_base[10:15, 10:15, 10:15] = native_base[17:22, 10:15, 10:15] = True  # labels 1 and 2, apart
    native_follow = np.zeros_like(native_base)
    native_follow[10:15, 10:15, 10:15] = True
    baseline, followup = lesion_map(native_base, "b", affine), lesion_map(native_follow, "f", affine)
    base_half = np.zeros((32, 32, 32), np.int32)
    base_half[10:15, 10:15, 10:15], base_half[15:20, 10:15, 10:15] = 1, 2  # touching on this grid
    follow_half = np.where(base_half == 1, 1, 0).astype(np.int32)
    changes = match_lesions(baseline, followup, base_half, follow_half, PARAMS)
    assert [(c.status, c.baseline_labels, c.followup_labels) for c in changes] == [
        ("stable", (1,), (1,)), ("resolved", (2,), ())]
    assert not changes[0].merged


def test_radius_increase_is_enlarging_and_a_small_one_stable(ball, affine):
    base = spheres(ball, A, B)
    _, _, grown = match(base, spheres(ball, (A[0], 5), B), affine)  # 257 -> 515 voxels
    (change,) = [c for c in grown if c.baseline_labels == (1,)]
    assert change.status == "enlarging" and not change.confluent
    assert (change.baseline_volume_mm3, change.followup_volume_mm3) == (257.0, 515.0)
    assert statuses(grown) == ["enlarging", "stable"]
    _, _, slightly = match(base, spheres(ball, (A[0], 4.2), B), affine)  # 257 -> 305: +19 % < 24 %
    assert statuses(slightly) == ["stable", "stable"]


def test_radius_decrease_is_shrinking(ball, affine):
    _, _, changes = match(spheres(ball, (A[0], 5), B), spheres(ball, A, B), affine)
    assert statuses(changes) == ["shrinking", "stable"]


def test_resolved_gets_ids_above_every_followup_label(ball, affine):
    baseline, followup, changes = match(spheres(ball, A, B, C), spheres(ball, A), affine)
    assert statuses(changes) == ["resolved", "resolved", "stable"]
    resolved = [c for c in changes if c.status == "resolved"]
    top = max(lesion.label for lesion in followup.lesions)
    assert sorted(c.id for c in resolved) == [top + 1, top + 2]
    for change in resolved:
        assert change.followup_labels == () and change.followup_volume_mm3 == 0.0
        (label,) = change.baseline_labels
        lesion = baseline.lesions[label - 1]
        assert change.baseline_volume_mm3 == lesion.volume_mm3
        assert change.centroid_mm == pytest.approx(lesion.centroid_mm)
    assert {change.baseline_labels[0] for change in resolved} == {label_at(baseline, B[0]), label_at(baseline, C[0])}


def test_merge_is_one_change(ball, affine):
    left, right = ((12, 30, 12), 3), ((12, 40, 12), 3)  # 3 empty voxels between them
    bridge = np.zeros(SHAPE, bool)
    bridge[11:14, 30:41, 11:14] = True
    base = spheres(ball, left, right, B)
    baseline, followup, changes = match(base, base | bridge, affine)
    assert len(baseline.lesions) == 3 and len(followup.lesions) == 2
    assert len(changes) == 2
    (merged,) = [c for c in changes if c.merged]
    assert sorted(merged.baseline_labels) == sorted([label_at(baseline, left[0]), label_at(baseline, right[0])])
    assert merged.followup_labels == (label_at(followup, left[0]),)
    assert not merged.split
    assert merged.baseline_volume_mm3 == 246.0
    assert merged.followup_volume_mm3 == pytest.approx((base | bridge).sum() - ball(SHAPE, *B).sum())


def test_split_is_one_change(ball, affine):
    left, right = ((12, 30, 12), 3), ((12, 40, 12), 3)
    bridge = np.zeros(SHAPE, bool)
    bridge[11:14, 30:41, 11:14] = True
    follow = spheres(ball, left, right, B)
    baseline, followup, changes = match(follow | bridge, follow, affine)
    assert len(baseline.lesions) == 2 and len(followup.lesions) == 3
    assert len(changes) == 2
    (split,) = [c for c in changes if c.split]
    parts = sorted([label_at(followup, left[0]), label_at(followup, right[0])])
    assert sorted(split.followup_labels) == parts
    assert split.id == parts[0]
    assert split.baseline_labels == (label_at(baseline, left[0]),) and not split.merged
    assert split.followup_volume_mm3 == 246.0


def test_new_blob_touching_an_old_one_is_confluent_enlarging(ball, affine):
    touching = ((12, 19, 12), 3)  # A reaches y = 16, the new blob spans y = 16..22
    follow = spheres(ball, A, touching, B)
    baseline, followup, changes = match(spheres(ball, A, B), follow, affine)
    assert len(followup.lesions) == 2  # the blobs are one component at follow-up
    assert statuses(changes) == ["enlarging", "stable"]
    (grown,) = [c for c in changes if c.status == "enlarging"]
    assert grown.confluent and not grown.merged and not grown.split
    assert type(grown.confluent) is bool  # regression: a numpy bool made report.json unserialisable
    assert grown.followup_volume_mm3 == pytest.approx(spheres(ball, A, touching).sum())


def test_small_new_lesion_joining_a_large_one_is_not_hidden_as_stable(ball, affine):
    """Regression: a new lesion fused to a large old one grew it by < 24 %, so it was reported 'stable'."""
    old = ball(SHAPE, (24, 24, 20), 9)
    joined = old | ball(SHAPE, (24, 35, 20), 3)  # touches the old lesion's edge; ~100 voxels of new tissue
    _, _, changes = match(old, joined, affine)
    (change,) = changes
    assert change.followup_volume_mm3 - change.baseline_volume_mm3 < 0.24 * change.baseline_volume_mm3
    assert change.status == "enlarging" and change.confluent


def test_change_labels_keeps_one_status_with_change_ids(ball, affine):
    touching = ((12, 19, 12), 3)
    follow = spheres(ball, A, touching, B, FAR)
    baseline, followup, changes = match(spheres(ball, A, B, C), follow, affine)
    assert statuses(changes) == ["enlarging", "new", "resolved", "stable"]
    labels = followup.labels.data
    for status in ("new", "enlarging", "stable"):
        (change,) = [c for c in changes if c.status == status]
        out = change_labels(labels, changes, status)
        assert out.shape == labels.shape
        np.testing.assert_array_equal(out > 0, np.isin(labels, change.followup_labels))
        assert set(np.unique(out)) == {0, change.id}
    np.testing.assert_array_equal(change_labels(labels, changes, "new") > 0, ball(SHAPE, *FAR))
    assert not change_labels(labels, changes, "resolved").any()
    assert not change_labels(labels, changes, "shrinking").any()


def test_change_labels_split_group_takes_one_id(ball, affine):
    left, right = ((12, 30, 12), 3), ((12, 40, 12), 3)
    bridge = np.zeros(SHAPE, bool)
    bridge[11:14, 30:41, 11:14] = True
    small_left, small_right = ((12, 30, 12), 2), ((12, 40, 12), 2)  # split and shrunk
    baseline, followup, changes = match(spheres(ball, left, right) | bridge, spheres(ball, small_left, small_right),
                                        affine)
    (change,) = changes
    assert change.status == "shrinking" and change.split
    out = change_labels(followup.labels.data, changes, "shrinking")
    assert set(np.unique(out)) == {0, change.id}
    np.testing.assert_array_equal(out > 0, followup.labels.data > 0)


# --- fuse_change: the change model confirms or corrects, and every finding gets a confidence ------


def fuse(baseline, followup, changes, change_probability, params: LesionParams = PARAMS):
    """Fuse on the 1 mm grid the labels live on (it is also the 'halfway' grid here)."""
    return fuse_change(changes, change_probability, followup, baseline.labels.data, followup.labels.data, params)


def by_id(changes) -> dict:
    return {change.id: change for change in changes}


def test_fuse_keeps_a_new_lesion_the_change_model_confirms(ball, affine):
    base = spheres(ball, A, B)
    baseline, followup, changes = match(base, base | ball(SHAPE, *FAR), affine)
    new_id = label_at(followup, FAR[0])
    change_probability = np.zeros(SHAPE, np.float32)
    inside = ball(SHAPE, *FAR)
    change_probability[inside] = np.random.default_rng(0).uniform(0.55, 1.0, inside.sum())
    fused = by_id(fuse(baseline, followup, changes, change_probability))
    assert fused[new_id].status == "new"
    assert fused[new_id].confidence == pytest.approx(change_probability[inside].mean(), abs=5e-4)
    others = [change for change in fused.values() if change.id != new_id]
    assert [change.status for change in others] == ["stable", "stable"]
    assert all(change.confidence == pytest.approx(0.9) for change in others), "per-visit probability"


@pytest.mark.parametrize("mean, status", [(0.19, "stable"), (0.2, "possible_new"), (0.49, "possible_new"),
                                          (0.5, "new")])  # both operating points inclusive
def test_fuse_makes_a_new_lesion_the_change_model_does_not_see_stable(ball, affine, mean, status):
    """Absent from the baseline mask but not new to the change model: a lesion missed at baseline; between the
    candidate and the reporting operating points, a possible new lesion for the reader."""
    assert (PARAMS.min_candidate_change_probability, PARAMS.min_new_change_probability) == (0.2, 0.5)
    base = spheres(ball, A)
    baseline, followup, changes = match(base, base | ball(SHAPE, *FAR), affine)
    new_id = label_at(followup, FAR[0])
    change_probability = np.where(ball(SHAPE, *FAR), mean, 0.0).astype(np.float32)
    fused = by_id(fuse(baseline, followup, changes, change_probability))
    assert fused[new_id].status == status
    expected = 0.9 if status == "stable" else mean  # the change model's mean, else the per-visit probability
    assert fused[new_id].confidence == pytest.approx(expected)
    assert fused[new_id].baseline_volume_mm3 == 0.0, "volumes are not touched"
    assert fused[new_id].followup_volume_mm3 == ball(SHAPE, *FAR).sum()


def test_fuse_makes_a_lesion_with_enough_new_tissue_enlarging(ball, affine):
    """Same volume at both visits (stable by volume), but 2 voxels displaced: the change model's new
    tissue (probability summed over follow-up voxels outside the baseline lesion) decides."""
    base, follow = spheres(ball, A, B), spheres(ball, ((14, 12, 12), 4), B)
    baseline, followup, changes = match(base, follow, affine)
    assert statuses(changes) == ["stable", "stable"]
    grown = follow & ~base
    needed = max(PARAMS.min_absolute_change_mm3, PARAMS.min_relative_change_large * 257.0)  # A is 257 mm3, large
    assert grown.sum() > needed
    a_id = label_at(followup, (14, 12, 12))
    for probability, status, confidence in ((1.0, "enlarging", 1.0), (0.95 * needed / grown.sum(), "stable", 0.9),
                                            (1.0001 * needed / grown.sum(), "enlarging", None)):
        change_probability = np.where(grown, probability, 0.0).astype(np.float32)
        fused = by_id(fuse(baseline, followup, changes, change_probability))
        assert fused[a_id].status == status, probability
        assert fused[a_id].confidence == pytest.approx(probability if confidence is None else confidence, abs=5e-4)
        (other,) = [change for change in fused.values() if change.id != a_id]
        assert other.status == "stable"


def test_fuse_makes_an_enlargement_the_change_model_does_not_see_stable(ball, affine):
    base = spheres(ball, A, B)
    baseline, followup, changes = match(base, spheres(ball, (A[0], 5), B), affine)  # 257 -> 515 voxels
    assert statuses(changes) == ["enlarging", "stable"]
    a_id = label_at(followup, A[0])
    fused = by_id(fuse(baseline, followup, changes, np.zeros(SHAPE, np.float32)))
    assert fused[a_id].status == "stable" and fused[a_id].confidence == pytest.approx(0.9)
    grown = ball(SHAPE, A[0], 5) & ~ball(SHAPE, *A)
    confirmed = by_id(fuse(baseline, followup, changes, np.where(grown, 0.8, 0.0).astype(np.float32)))
    assert confirmed[a_id].status == "enlarging" and confirmed[a_id].confidence == pytest.approx(0.8)


def test_fuse_keeps_confluent_growth_enlarging_when_the_change_model_sees_it(ball, affine):
    """A new lesion that joined an old one is enlarging (even below the large lesion's relative threshold) when
    the change model sees its new tissue; never with a confidence near zero."""
    touching = ((12, 19, 12), 3)
    baseline, followup, changes = match(spheres(ball, A, B), spheres(ball, A, touching, B), affine)
    (grown,) = [change for change in changes if change.status == "enlarging"]
    assert grown.confluent
    new_tissue = spheres(ball, A, touching) & ~ball(SHAPE, *A)
    for probability, status in ((0.0, "stable"), (0.19, "stable"), (0.2, "enlarging"), (0.3, "enlarging")):
        change_probability = np.where(new_tissue, probability, 0.0).astype(np.float32)
        fused = by_id(fuse(baseline, followup, changes, change_probability))
        assert fused[grown.id].status == status and fused[grown.id].confluent
        if status == "enlarging":
            assert fused[grown.id].confidence == pytest.approx(probability)


def test_fuse_leaves_shrinking_and_resolved_to_the_volumes(ball, affine):
    baseline, followup, changes = match(spheres(ball, (A[0], 5), B, C), spheres(ball, A, B), affine)
    assert statuses(changes) == ["resolved", "shrinking", "stable"]
    everywhere_new = np.ones(SHAPE, np.float32)
    fused = fuse(baseline, followup, changes, everywhere_new)
    assert statuses(fused) == ["resolved", "shrinking", "stable"]
    (resolved,) = [change for change in fused if change.status == "resolved"]
    assert resolved == [change for change in changes if change.status == "resolved"][0]
    assert resolved.confidence is None, "no follow-up lesion, no per-visit probability"
    (shrinking,) = [change for change in fused if change.status == "shrinking"]
    assert shrinking.confidence == pytest.approx(0.9)


def test_fuse_without_the_change_model_changes_no_status_and_weights_confidence_by_volume(ball, affine):
    """A split lesion (follow-up parts of 123 and 33 mm3, per-visit probability 0.8 and 0.9) and a new one."""
    left, right = ((12, 30, 12), 3), ((12, 40, 12), 2)
    bridge = np.zeros(SHAPE, bool)
    bridge[11:14, 30:41, 11:14] = True
    base = spheres(ball, left, right) | bridge
    follow_parts = {0.8: ball(SHAPE, *left), 0.9: ball(SHAPE, *right), 0.75: ball(SHAPE, *FAR)}
    data = np.full(SHAPE, 0.05, np.float32)
    for value, mask in follow_parts.items():
        data[mask] = value
    baseline = lesion_map(base, "ses-01", affine)
    followup = label_lesions(Volume(data, affine, "probability"), "ses-02", SEGMENT, PARAMS)
    changes = match_lesions(baseline, followup, baseline.labels.data, followup.labels.data, PARAMS)
    (split,) = [change for change in changes if change.split]
    (new,) = [change for change in changes if change.status == "new"]
    expected = (0.8 * ball(SHAPE, *left).sum() + 0.9 * ball(SHAPE, *right).sum()) / \
        (ball(SHAPE, *left).sum() + ball(SHAPE, *right).sum())
    nothing_new = np.zeros(SHAPE, np.float32)  # would demote the new lesion if it were used
    off = dataclasses.replace(PARAMS, use_change_model=False)
    for change_probability, params in ((None, PARAMS), (nothing_new, off)):
        fused = by_id(fuse(baseline, followup, changes, change_probability, params))
        assert [change.status for change in fused.values()] == [change.status for change in changes]
        assert fused[split.id].confidence == pytest.approx(expected, abs=5e-4)
        assert fused[new.id].confidence == pytest.approx(0.75)
        assert all(dataclasses.replace(fused[change.id], confidence=None) == change for change in changes)


def test_fuse_does_not_modify_its_inputs(ball, affine):
    base = spheres(ball, A)
    baseline, followup, changes = match(base, base | ball(SHAPE, *FAR), affine)
    change_probability = np.where(ball(SHAPE, *FAR), 0.7, 0.0).astype(np.float32)
    before = (changes, change_probability.copy(), baseline.labels.data.copy(), followup.labels.data.copy())
    fuse(baseline, followup, changes, change_probability)
    assert changes == before[0] and all(change.confidence is None for change in changes)
    np.testing.assert_array_equal(change_probability, before[1])
    np.testing.assert_array_equal(baseline.labels.data, before[2])
    np.testing.assert_array_equal(followup.labels.data, before[3])


def test_fuse_keeps_a_new_lesion_the_change_model_never_saw(ball, affine):
    """A small lesion can vanish when its labels are resampled (nearest) to the halfway grid."""
    import warnings

    base = spheres(ball, A)
    baseline, followup, changes = match(base, base | ball(SHAPE, *FAR), affine)
    new_id = label_at(followup, FAR[0])
    followup_halfway = np.where(followup.labels.data == new_id, 0, followup.labels.data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fused = fuse_change(changes, np.zeros(SHAPE, np.float32), followup, baseline.labels.data, followup_halfway,
                            PARAMS)
    assert by_id(fused)[new_id].status == "new"


# --- confirm_losses: the change model read backwards checks shrinking and resolved calls ----------


def lost(baseline, followup, changes, loss_probability, params: LesionParams = PARAMS):
    return by_id(confirm_losses(changes, loss_probability, baseline.labels.data, followup.labels.data, params))


@pytest.mark.parametrize("mean, status", [(0.49, "stable"), (0.5, "resolved")])  # the reporting point, inclusive
def test_a_resolved_call_stands_only_when_the_backward_change_model_sees_the_tissue_gone(ball, affine, mean, status):
    """Issue 12 item 5: a lesion the per-visit model misses at follow-up is not 'resolved' unless the change
    model, given the follow-up first, sees its tissue as there at baseline and absent now."""
    baseline, followup, changes = match(spheres(ball, A, B), spheres(ball, A), affine)
    (gone,) = [change for change in changes if change.status == "resolved"]
    loss_probability = np.zeros(SHAPE, np.float32)
    loss_probability[ball(SHAPE, *B)] = mean
    checked = lost(baseline, followup, changes, loss_probability)
    assert checked[gone.id].status == status and checked[gone.id].confidence == pytest.approx(mean, abs=1e-3)
    assert [c.status for i, c in checked.items() if i != gone.id] == ["stable"]  # others untouched


def test_a_shrinking_call_needs_the_lost_volume_in_the_backward_change_probability(ball, affine):
    """A lesion whose rim the follow-up misses (radius 4 -> 2: 257 -> 33 voxels) shrinks only if the backward
    model gives the rim's voxels, summed, the volume a thresholded difference would need."""
    baseline, followup, changes = match(spheres(ball, A), spheres(ball, (A[0], 2)), affine)
    (shrunk,) = changes
    assert shrunk.status == "shrinking"
    rim = ball(SHAPE, *A) & ~ball(SHAPE, A[0], 2)
    for value, status in ((0.9, "shrinking"), (0.1, "stable")):
        loss_probability = np.where(rim, value, 0.0).astype(np.float32)
        assert lost(baseline, followup, changes, loss_probability)[shrunk.id].status == status


def test_the_loss_region_boxes_only_shrinking_and_resolved_lesions_with_context(ball, affine):
    baseline, followup, changes = match(spheres(ball, A, B), spheres(ball, A), affine)
    wide = np.zeros((140, 48, 40), np.int32)  # B's labels on a grid wider than its box
    wide[:48] = baseline.labels.data
    region = loss_region(changes, wide)
    b_label = label_at(baseline, B[0])
    x_stop = np.argwhere(wide == b_label)[:, 0].max() + 1
    assert region[:48][ball(SHAPE, *B)].all()  # the resolved lesion, with its surroundings
    assert region[x_stop + 39].any() and not region[x_stop + 40:].any()  # 40 voxels of context
    assert not loss_region(match(spheres(ball, A), spheres(ball, A), affine)[2], baseline.labels.data).any()


# --- change_only_findings: new tissue only the change model sees ----------------------------------


def only(baseline, followup, changes, change_probability, affine, to_followup=None, brain=None,
         params: LesionParams = PARAMS):
    return change_only_findings(changes, change_probability, baseline.labels.data, followup.labels.data,
                                np.ones(SHAPE, bool) if brain is None else brain, params, halfway_affine=affine,
                                halfway_to_followup=np.eye(4) if to_followup is None else to_followup)


def test_a_region_only_the_change_model_sees_is_a_new_lesion_with_its_own_id(ball, affine):
    """Issue 12 item 3: faint new lesions the per-visit model misses are found by the change model."""
    baseline, followup, changes = match(spheres(ball, A, B), spheres(ball, A, B), affine)
    change_probability = np.zeros(SHAPE, np.float32)
    change_probability[ball(SHAPE, *FAR)] = 0.8
    shift = np.eye(4)
    shift[:3, 3] = (2.0, -1.0, 0.5)  # halfway mm -> follow-up mm
    found, labels = only(baseline, followup, changes, change_probability, affine, shift)
    (added,) = found[len(changes):]
    assert found[:len(changes)] == changes
    assert added.status == "new" and added.followup_labels == () and added.baseline_labels == ()
    assert added.id > max(change.id for change in changes) and added.confidence == pytest.approx(0.8)
    assert added.followup_volume_mm3 == ball(SHAPE, *FAR).sum()
    centre_mm = (affine @ np.append(FAR[0], 1))[:3] + shift[:3, 3]
    assert np.allclose(added.centroid_mm, centre_mm, atol=1e-6)
    assert (labels[ball(SHAPE, *FAR)] == added.id).all()
    assert np.array_equal(labels[~ball(SHAPE, *FAR)], followup.labels.data[~ball(SHAPE, *FAR)])


@pytest.mark.parametrize("value, voxels, status", [(0.49, 33, None), (0.5, 33, "new"), (0.9, 14, "new"),
                                                   (0.9, 13, "possible_new"), (0.9, 5, "possible_new"),
                                                   (0.9, 4, None)])  # thresholds inclusive
def test_change_only_findings_take_the_reporting_probability_and_the_size_thresholds(affine, value, voxels, status):
    baseline, followup, changes = match(np.zeros(SHAPE, bool), np.zeros(SHAPE, bool), affine)
    change_probability = np.zeros(SHAPE, np.float32)
    change_probability[30, 30, 10:10 + voxels] = value  # a line of voxels: one component of that volume
    found, _ = only(baseline, followup, changes, change_probability, affine)
    assert [change.status for change in found] == ([status] if status else [])


def test_change_at_the_rim_of_either_visits_brain_is_no_finding(ball, affine):
    """Where one visit's brain (or field of view) ends, the change model compares tissue with nothing."""
    baseline, followup, changes = match(np.zeros(SHAPE, bool), np.zeros(SHAPE, bool), affine)
    brain = np.zeros(SHAPE, bool)
    brain[4:44, 4:44, 4:36] = True
    change_probability = np.zeros(SHAPE, np.float32)
    change_probability[20:24, 20:24, 4:7] = 0.9  # 48 voxels, within 3 voxels of the brain's edge
    assert only(baseline, followup, changes, change_probability, affine, brain=brain)[0] == ()
    change_probability[20:24, 20:24, 7:10] = 0.9  # the same blob reaching 3 voxels deeper
    (found,) = only(baseline, followup, changes, change_probability, affine, brain=brain)[0]
    assert found.status == "new" and found.followup_volume_mm3 == 48


def test_change_seen_at_or_around_a_per_visit_lesion_is_left_to_the_lesion(ball, affine):
    """Inside a lesion of either visit, or touching a follow-up lesion (its rim, its growth), the change model's
    new tissue belongs to that lesion: fuse_change judges it, no extra candidate."""
    baseline, followup, changes = match(spheres(ball, A), spheres(ball, A, B), affine)
    rim = ball(SHAPE, B[0], B[1] + 2) & ~ball(SHAPE, *B)
    change_probability = np.where(rim | ball(SHAPE, *A), 0.9, 0.0).astype(np.float32)
    found, labels = only(baseline, followup, changes, change_probability, affine)
    assert found == changes and np.array_equal(labels, followup.labels.data)


def shell(ball, lesion, width, *, side=None):
    """The voxels within `width` of a ball lesion, outside it; `side` > 0 keeps those at x > the centre's."""
    (centre, radius) = lesion
    ring = ball(SHAPE, centre, radius + width) & ~ball(SHAPE, centre, radius)
    if side:
        ring[:centre[0] + 1] = False
    return ring


def test_growth_only_the_change_model_sees_makes_its_lesion_enlarging(ball, affine):
    """Issue 12 items 3-4: an old lesion grew where the follow-up mask misses it (on shifted-contrast images the
    per-visit model keeps only part of the lesion): that growth is the lesion's enlargement, not a new lesion."""
    half = ball(SHAPE, *A)
    half[A[0][0]:] = False  # the follow-up mask keeps the lesion's x < centre half
    baseline, followup, changes = match(spheres(ball, A, B), half | spheres(ball, B), affine)
    growth = shell(ball, A, 2, side=1)  # new tissue beyond the baseline edge, >= 4 voxels from the follow-up mask
    change_probability = np.where(growth, 0.8, 0.0).astype(np.float32)
    found, labels = only(baseline, followup, changes, change_probability, affine)
    grown = next(change for change in found if change.baseline_labels == (label_at(baseline, A[0]),))
    assert len(found) == len(changes) and grown.status == "enlarging" and grown.confidence == pytest.approx(0.8)
    assert grown.change_only_mm3 == growth.sum() and grown.id == min(grown.followup_labels)
    before = next(change for change in changes if change.id == grown.id)
    assert grown.followup_volume_mm3 == pytest.approx(before.followup_volume_mm3 + growth.sum())
    assert (labels[growth] == grown.id).all()


def test_growth_of_a_lesion_the_follow_up_mask_lost_makes_it_enlarging(ball, affine):
    baseline, followup, changes = match(spheres(ball, A, B), spheres(ball, B), affine)
    assert "resolved" in statuses(changes)
    growth = shell(ball, A, 2)
    found, labels = only(baseline, followup, changes, np.where(growth, 0.9, 0.0).astype(np.float32), affine)
    grown = next(change for change in found if change.baseline_labels == (label_at(baseline, A[0]),))
    assert grown.status == "enlarging" and grown.followup_labels == () and grown.change_only_mm3 == growth.sum()
    assert grown.followup_volume_mm3 == pytest.approx(grown.baseline_volume_mm3 + growth.sum())
    assert (labels[growth] == grown.id).all() and grown.id > int(followup.labels.data.max())


def test_growth_below_the_enlargement_thresholds_is_no_finding(ball, affine):
    """A's 257 mm3 need 0.24 x 257 = 62 mm3 of growth; 20 voxels at 0.9 give 18 mm3: no finding, no new lesion."""
    baseline, followup, changes = match(spheres(ball, A), np.zeros(SHAPE, bool), affine)
    growth = np.zeros(SHAPE, bool)
    growth[17, 10:14, 10:15] = True  # a 1-voxel layer against A's +x edge (x = 16): not confluent
    assert not (growth & ball(SHAPE, *A)).any() and (ndimage.binary_dilation(growth) & ball(SHAPE, *A)).any()
    found, labels = only(baseline, followup, changes, np.where(growth, 0.9, 0.0).astype(np.float32), affine)
    assert found == changes and np.array_equal(labels, followup.labels.data)


def test_a_new_lesion_joining_an_old_one_is_its_confluent_growth(ball, affine):
    """As for per-visit lesions (match_lesions' confluent groups): new tissue touching an old lesion is reported as
    that lesion's enlargement with confluent=true, never as a new lesion; a piece of new-lesion size > 2 mm away
    is what makes it confluent, and then that size is enough to count."""
    half = ball(SHAPE, *A)
    half[A[0][0]:] = False
    baseline, followup, changes = match(spheres(ball, A), half, affine)
    (x, y, z), radius = A
    beside = ball(SHAPE, (x + radius + 5, y, z), 3)  # x 18-24, A's edge at x 16
    beside[x + radius + 1:x + radius + 2, y, z] = True  # a bridge voxel against A
    found, labels = only(baseline, followup, changes, np.where(beside, 0.9, 0.0).astype(np.float32), affine)
    (grown,) = found
    assert grown.status == "enlarging" and grown.confluent and grown.change_only_mm3 == beside.sum()
    assert (labels[beside] == grown.id).all()


# --- match_lesions: properties --------------------------------------------------------------------

GRID = (40, 32, 32)
FAR_CORNER = ((33, 16, 16), 3)  # random spheres stay at x <= 25: 4 empty voxels between
# Spheres sit on 8 slots (x in {8, 21}, y and z in {8, 23}, y and z jittered by 1): any two kept
# spheres of radius <= 4 have >= 4 empty voxels between them, and stay >= 1 voxel from every face after a roll by 2.
RADII = st.tuples(st.sampled_from([0, 2, 3, 4]), st.sampled_from([0, 2, 3, 4])).filter(any)  # 0: absent
SPHERE = st.tuples(st.integers(0, 7), st.integers(-1, 1), st.integers(-1, 1), RADII)
SPHERES = st.lists(SPHERE, min_size=1, max_size=4, unique_by=lambda sphere: sphere[0])


def apart(draws) -> list[tuple[tuple[int, int, int], int, int]]:
    """(centre, baseline radius, follow-up radius) of each drawn sphere; radius 0 = absent at that visit."""
    kept = []
    for slot, dy, dz, (r_base, r_follow) in draws:
        centre = ((8, 21)[slot & 1], (8, 23)[slot >> 1 & 1] + dy, (8, 23)[slot >> 2 & 1] + dz)
        kept.append((centre, r_base, r_follow))
    return kept


def visits(ball, kept, shape=GRID):
    base, follow = np.zeros(shape, bool), np.zeros(shape, bool)
    for centre, r_base, r_follow in kept:
        if r_base:
            base |= ball(shape, centre, r_base)
        if r_follow:
            follow |= ball(shape, centre, r_follow)
    return base, follow


def summary(changes):
    return sorted((c.status, c.baseline_volume_mm3, c.followup_volume_mm3, c.merged, c.split, c.confluent)
                  for c in changes)


def permuted(lesion_map_: LesionMap, order: list[int]) -> LesionMap:
    """The same lesions with label values permuted (label i -> order[i - 1])."""
    lookup = np.array([0, *order], np.int32)
    labels = lookup[lesion_map_.labels.data]
    lesions = measure_lesions(labels, lesion_map_.probability.data, lesion_map_.labels.affine)
    return LesionMap(lesion_map_.session, lesion_map_.labels.with_data(labels), lesion_map_.probability,
                     tuple(lesions))


PROPERTY = settings(max_examples=25, deadline=None, derandomize=True)


@PROPERTY
@given(draws=SPHERES)
def test_property_self_match_all_stable(ball, make_affine, draws):
    kept = apart(draws)
    base, _ = visits(ball, kept)
    baseline, _, changes = match(base, base, make_affine())
    assert len(baseline.lesions) == sum(1 for _, r_base, _ in kept if r_base)
    assert statuses(changes) == ["stable"] * len(baseline.lesions)
    assert all(c.baseline_labels == c.followup_labels == (c.id,) for c in changes)


@PROPERTY
@given(draws=SPHERES, data=st.data())
def test_property_relabelling_changes_no_class(ball, make_affine, draws, data):
    base, follow = visits(ball, apart(draws))
    baseline, followup, changes = match(base, follow, make_affine())
    order_b = data.draw(st.permutations(range(1, len(baseline.lesions) + 1)))
    order_f = data.draw(st.permutations(range(1, len(followup.lesions) + 1)))
    baseline2, followup2 = permuted(baseline, order_b), permuted(followup, order_f)
    changes2 = match_lesions(baseline2, followup2, baseline2.labels.data, followup2.labels.data, PARAMS)
    assert summary(changes2) == summary(changes)


@PROPERTY
@given(draws=SPHERES,
       shift=st.tuples(st.integers(-2, 2), st.integers(-2, 2), st.integers(-2, 2)))
def test_property_shifting_both_visits_changes_nothing(ball, make_affine, draws, shift):
    base, follow = visits(ball, apart(draws))
    affine = make_affine()
    _, _, changes = match(base, follow, affine)
    moved = [np.roll(mask, shift, axis=(0, 1, 2)) for mask in (base, follow)]
    assert moved[0].sum() == base.sum() and moved[1].sum() == follow.sum()
    _, _, changes2 = match(*moved, affine)
    assert summary(changes2) == summary(changes)
    before = sorted(np.add(c.centroid_mm, shift).round(9).tolist() for c in changes)
    after = sorted(np.round(c.centroid_mm, 9).tolist() for c in changes2)
    np.testing.assert_allclose(after, before, atol=1e-6)


@PROPERTY
@given(draws=SPHERES)
def test_property_volumes_add_up(ball, make_affine, draws):
    base, follow = visits(ball, apart(draws))
    affine = make_affine(spacing=(1.0, 1.0, 1.5))
    baseline, followup, changes = match(base, follow, affine)
    # per-lesion volumes sum to the mask volume (every sphere here is >= 33 voxels, none dropped)
    assert sum(lesion.volume_mm3 for lesion in baseline.lesions) == pytest.approx(base.sum() * 1.5)
    assert baseline.total_volume_mm3 == pytest.approx(base.sum() * 1.5)
    assert followup.total_volume_mm3 == pytest.approx(follow.sum() * 1.5)
    # every baseline lesion is in exactly one change; every counted follow-up lesion in exactly one
    base_seen = [label for c in changes for label in c.baseline_labels]
    assert sorted(base_seen) == [lesion.label for lesion in baseline.lesions]
    follow_seen = [label for c in changes for label in c.followup_labels]
    assert len(follow_seen) == len(set(follow_seen))
    assert sum(c.baseline_volume_mm3 for c in changes) == pytest.approx(baseline.total_volume_mm3)
    uncounted = [lesion for lesion in followup.lesions if lesion.label not in follow_seen]
    assert all(lesion.volume_mm3 < PARAMS.min_new_lesion_volume_mm3 for lesion in uncounted)


@PROPERTY
@given(draws=SPHERES)
def test_property_far_blob_adds_exactly_one_new(ball, make_affine, draws):
    base, follow = visits(ball, apart(draws))
    affine = make_affine()
    _, _, changes = match(base, follow, affine)
    _, followup2, changes2 = match(base, follow | ball(GRID, *FAR_CORNER), affine)
    assert len(changes2) == len(changes) + 1
    assert [c.status for c in changes2].count("new") == [c.status for c in changes].count("new") + 1
    new_id = label_at(followup2, FAR_CORNER[0])
    (added,) = [c for c in changes2 if new_id in c.followup_labels]
    assert added.status == "new"


# --- match_lesions: both visits read together (hysteresis across visits) ---------------------------


def match_with_probabilities(base_probability: np.ndarray, follow_probability: np.ndarray, affine):
    """Label each visit at the reporting threshold and match with both probability maps (one 1 mm grid)."""
    baseline = label_lesions(Volume(base_probability, affine, "probability"), "ses-01", SEGMENT, PARAMS)
    followup = label_lesions(Volume(follow_probability, affine, "probability"), "ses-02", SEGMENT, PARAMS)
    return match_lesions(baseline, followup, baseline.labels.data, followup.labels.data, PARAMS,
                         baseline_probability=base_probability, followup_probability=follow_probability)


@pytest.mark.parametrize("faint, status", [(0.29, "new"), (0.3, "stable"), (0.6, "stable")])  # inclusive
def test_a_lesion_faint_at_baseline_is_stable_not_new(ball, affine, faint, status):
    """Found only at follow-up, but baseline's probability over it (below the 0.7 threshold) says it was there."""
    assert PARAMS.min_presence_probability == 0.3 and SEGMENT.probability_threshold == 0.7
    lesion = ball(SHAPE, *FAR)
    base = np.where(spheres(ball, A), 0.9, np.where(lesion, faint, 0.05)).astype(np.float32)
    follow = np.where(spheres(ball, A) | lesion, 0.9, 0.05).astype(np.float32)
    assert statuses(match_with_probabilities(base, follow, affine)) == sorted([status, "stable"])


@pytest.mark.parametrize("faint, status", [(0.29, "resolved"), (0.3, "stable")])
def test_a_lesion_faint_at_follow_up_is_stable_not_resolved(ball, affine, faint, status):
    lesion = ball(SHAPE, *FAR)
    base = np.where(spheres(ball, A) | lesion, 0.9, 0.05).astype(np.float32)
    follow = np.where(spheres(ball, A), 0.9, np.where(lesion, faint, 0.05)).astype(np.float32)
    assert statuses(match_with_probabilities(base, follow, affine)) == sorted([status, "stable"])


@pytest.mark.parametrize("shell, status", [(0.65, "stable"), (0.05, "shrinking")])
def test_shrinkage_must_show_in_the_probability_weighted_volume_too(ball, affine, shell, status):
    """The thresholded volume halves (257 -> 123 voxels) either way; only a rim that really went (0.05) is shrinkage;
    a rim just under the threshold (0.65) is the same lesion scanned again."""
    outer, inner = ball(SHAPE, A[0], 4), ball(SHAPE, A[0], 3)
    base = np.where(outer, 0.9, 0.05).astype(np.float32)
    follow = np.where(inner, 0.9, np.where(outer, shell, 0.05)).astype(np.float32)
    (change,) = match_with_probabilities(base, follow, affine)
    assert (change.baseline_volume_mm3, change.followup_volume_mm3) == (outer.sum(), inner.sum())
    assert change.status == status


def test_a_speck_seen_at_one_visit_only_is_not_counted_and_one_seen_at_both_is(ball, affine):
    """Per-visit counts read both visits: a 7-voxel speck at one visit only is in the label map but not counted;
    the same speck at both visits counts at each; countable lesions (>= 14 mm3) always count."""
    speck = np.zeros(SHAPE, bool)
    speck[36, 36, 10:17] = True  # 7 voxels, far from A and B
    base_mask, follow_mask = spheres(ball, A, B), spheres(ball, A, B) | speck
    for base, follow, counted in ((base_mask, follow_mask, (2, 2)), (follow_mask, follow_mask, (3, 3))):
        baseline, followup, changes = match(base, follow, affine)
        assert len(followup.lesions) == 3, "the speck is a lesion of the follow-up label map"
        confirmed = lesions_module.confirmed_labels(changes)
        assert (lesions_module.countable_lesions(baseline, confirmed[0], PARAMS),
                lesions_module.countable_lesions(followup, confirmed[1], PARAMS)) == counted
