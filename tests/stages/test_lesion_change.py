"""Tests for msvol.stages.lesion_change: the change model's verdicts (fusion, change-only findings, losses read
backwards) on spheres with hand-made change probabilities."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from msvol.config import LesionParams
from msvol.datatypes import Volume
from msvol.stages.lesion_change import change_only_findings, confirm_losses, fuse_change, loss_region
from msvol.stages.lesions import label_lesions, match_lesions
from tests.stages.lesion_cases import (  # noqa: F401 (affine is a fixture)
    FAR, PARAMS, SEGMENT, SHAPE, A, B, C, affine, label_at, lesion_map, match, probability, spheres, statuses)


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
         params: LesionParams = PARAMS, followup_probability=None):
    return change_only_findings(changes, change_probability, baseline.labels.data, followup.labels.data,
                                np.ones(SHAPE, bool) if brain is None else brain, params, halfway_affine=affine,
                                halfway_to_followup=np.eye(4) if to_followup is None else to_followup,
                                followup_probability=followup_probability)


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
    params = dataclasses.replace(PARAMS, min_change_only_new_probability=PARAMS.min_new_change_probability)
    found, _ = only(baseline, followup, changes, change_probability, affine, params=params)
    assert [change.status for change in found] == ([status] if status else [])


@pytest.mark.parametrize("value, status", [(0.69, "possible_new"), (0.7, "new")])  # inclusive
def test_a_new_lesion_only_the_change_model_sees_is_counted_from_its_own_threshold(affine, value, status):
    """One model's word alone: between the reporting point (0.5) and min_change_only_new_probability it is a
    possible new lesion, listed for the reader, whatever its size."""
    baseline, followup, changes = match(np.zeros(SHAPE, bool), np.zeros(SHAPE, bool), affine)
    change_probability = np.zeros(SHAPE, np.float32)
    change_probability[30, 30, 10:43] = value  # 33 voxels: of countable size
    params = dataclasses.replace(PARAMS, min_change_only_new_probability=0.7)
    found, _ = only(baseline, followup, changes, change_probability, affine, params=params)
    assert [(change.status, change.confidence) for change in found] == [(status, value)]


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


@pytest.mark.parametrize("bridge, status", [(0.0, "new"), (0.2, "enlarging")])
def test_new_tissue_joined_to_an_old_lesion_by_sub_threshold_signal_is_its_growth(ball, affine, bridge, status):
    """Issue 12 items 3-4: on held-out shifted pairs the per-visit model keeps only part of many old lesions, so their
    growth lies several voxels from anything segmented at baseline (here 4 voxels beyond A's edge). Follow-up per-visit
    probability >= growth_bridge_probability between them joins it to that lesion; without it, it is a new lesion."""
    baseline, followup, changes = match(spheres(ball, A), spheres(ball, A), affine)
    (x, y, z), radius = A
    growth = ball(SHAPE, (x + radius + 7, y, z), 2)  # 33 voxels, x 21-25; A's edge at x 16
    path = np.zeros(SHAPE, bool)
    path[x + radius + 1:x + radius + 5, y, z] = True  # x 17-20
    follow_probability = np.where(path, bridge, 0.0).astype(np.float32)
    follow_probability[ball(SHAPE, *A)] = 0.9
    found, labels = only(baseline, followup, changes, np.where(growth, 0.9, 0.0).astype(np.float32), affine,
                         followup_probability=follow_probability)
    assert statuses(found) == sorted([status] + ["stable"] * (status == "new"))
    grown = next(change for change in found if change.status == status)
    assert (labels[growth] == grown.id).all()
    if status == "enlarging":
        assert grown.confluent and grown.change_only_mm3 == growth.sum()
