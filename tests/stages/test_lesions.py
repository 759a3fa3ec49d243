"""Known-answer and property tests for msvol.stages.lesions (labelling, matching, change classes); the change
model's verdicts are tested in test_lesion_change.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msvol.datatypes import LesionMap, Volume
from msvol.stages import lesions as lesions_module
from msvol.stages.lesion_rules import classify_change
from msvol.stages.lesions import change_labels, label_lesions, match_lesions, measure_lesions
from tests.stages.lesion_cases import (  # noqa: F401 (affine is a fixture)
    FAR, PARAMS, SEGMENT, SHAPE, A, B, C, affine, label_at, lesion_map, match, probability, spheres, statuses)


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
    """Label each visit at the reporting threshold and match with both probability maps (one 1 mm grid). Their
    background must lie below growth_bridge_probability, as a per-visit map's does far from lesions."""
    baseline = label_lesions(Volume(base_probability, affine, "probability"), "ses-01", SEGMENT, PARAMS)
    followup = label_lesions(Volume(follow_probability, affine, "probability"), "ses-02", SEGMENT, PARAMS)
    return match_lesions(baseline, followup, baseline.labels.data, followup.labels.data, PARAMS,
                         baseline_probability=base_probability, followup_probability=follow_probability)


@pytest.mark.parametrize("faint, status", [(0.29, "new"), (0.3, "stable"), (0.6, "stable")])  # inclusive
def test_a_lesion_faint_at_baseline_is_stable_not_new(ball, affine, faint, status):
    """Found only at follow-up, but baseline's probability over it (below the 0.7 threshold) says it was there."""
    assert PARAMS.min_presence_probability == 0.3 and SEGMENT.probability_threshold == 0.7
    lesion = ball(SHAPE, *FAR)
    base = np.where(spheres(ball, A), 0.9, np.where(lesion, faint, 0.01)).astype(np.float32)
    follow = np.where(spheres(ball, A) | lesion, 0.9, 0.01).astype(np.float32)
    assert statuses(match_with_probabilities(base, follow, affine)) == sorted([status, "stable"])


@pytest.mark.parametrize("faint, status", [(0.29, "resolved"), (0.3, "stable")])
def test_a_lesion_faint_at_follow_up_is_stable_not_resolved(ball, affine, faint, status):
    lesion = ball(SHAPE, *FAR)
    base = np.where(spheres(ball, A) | lesion, 0.9, 0.01).astype(np.float32)
    follow = np.where(spheres(ball, A), 0.9, np.where(lesion, faint, 0.01)).astype(np.float32)
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


@pytest.mark.parametrize("bridge, status", [(0.04, "new"), (0.05, "enlarging"), (0.3, "enlarging")])  # inclusive
def test_a_lesion_joined_to_an_old_one_by_sub_threshold_signal_is_its_growth(ball, affine, bridge, status):
    """Issue 12 item 4: where the per-visit model keeps only part of an old lesion, its growth lies beyond the match
    tolerance; follow-up tissue of probability >= growth_bridge_probability (0.05) joining them makes it one lesion
    (confluent growth), not a new one. A weaker bridge leaves a new lesion."""
    assert PARAMS.growth_bridge_probability == 0.05
    (x, y, z), radius = A
    piece = ball(SHAPE, (x + radius + 6, y, z), 2)  # 33 voxels, x 20-24; A's edge at x 16
    path = np.zeros(SHAPE, bool)
    path[x + radius + 1:x + radius + 4, y, z] = True  # x 17-19: joins A and the piece
    base = np.where(spheres(ball, A), 0.9, 0.01).astype(np.float32)
    follow = np.where(spheres(ball, A) | piece, 0.9, np.where(path, bridge, 0.01)).astype(np.float32)
    changes = match_with_probabilities(base, follow, affine)
    assert statuses(changes) == (["enlarging"] if status == "enlarging" else ["new", "stable"])
    if status == "enlarging":
        (grown,) = changes
        assert grown.confluent and len(grown.followup_labels) == 2
