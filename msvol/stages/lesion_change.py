"""The two-visit change model's verdicts on an interval's lesion fates (issue 12).

msvol.stages.lesions matches the per-visit lesions of two visits; here the change model (msvol.stages.segment's
predict_change, a U-Net on both visits' FLAIR and T1 in halfway space) has the last word:
- `fuse_change` confirms new lesions and judges enlargement by the new tissue the model sees, and gives every
  finding a confidence for the review order. Two operating points: the reporting one (counted findings) and
  the candidate one below it ('possible_new': shown to the reader, counted only once confirmed);
- `change_only_findings` adds new tissue only the model sees: a faint new lesion, or growth of an old one;
- `confirm_losses`: the model read backwards (follow-up first, over `loss_region`) sees tissue present at
  baseline and gone at follow-up; a shrinking or resolved call stands only when it does.
A change the model reports passes the same thresholds a volume difference must pass (msvol.stages.lesion_rules).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from msvol.config import LesionParams
from msvol.datatypes import LesionChange, LesionMap
from msvol.stages.lesion_rules import change_needed_mm3, has_distant_growth, reach_labels, structure

METHODS = ("A two-visit change model (a 3D U-Net on both visits' FLAIR and T1 in halfway space) confirmed new "
           "lesions and measured the new tissue of enlarging ones; given the visits in reverse order, it confirmed "
           "shrinking and resolved ones.")
_LOSS_CONTEXT_VOXELS = 40  # around a lost lesion the backward change model sees this much of the brain (96^3 windows)


def fuse_change(changes: tuple[LesionChange, ...], change_probability: np.ndarray | None,
                followup: LesionMap, baseline_halfway: np.ndarray, followup_halfway: np.ndarray,
                params: LesionParams, *, voxel_mm3: float = 1.0) -> tuple[LesionChange, ...]:
    """Let the two-visit change model confirm or correct what the per-visit masks suggest; add confidence.

    With a change probability (halfway grid; `params.use_change_model`), over the lesion's new tissue
    (its follow-up voxels outside every baseline lesion):
    - 'new' stays new when the mean change probability reaches `min_new_change_probability` (the
      reporting operating point); from `min_candidate_change_probability` up it is 'possible_new' (the
      candidate operating point); below, 'stable' (there at baseline but missed). A 'possible_new' too
      small to count stays one from the candidate point up and is dropped below it;
    - a lesion present at both visits is 'enlarging' when the summed change probability (mm3) passes the
      same absolute and size-dependent relative thresholds as a volume difference would (confluent growth:
      the size of a new lesion) and its mean reaches the candidate point, so no enlargement is ever
      reported with a confidence near zero; shrinking and resolved are left to confirm_losses.
    Confidence: for new, possible new and enlarging, that mean change probability; otherwise (and without
    a change model) the mean per-visit lesion probability at follow-up.
    """
    by_label = {lesion.label: lesion for lesion in followup.lesions}
    use_model = change_probability is not None and params.use_change_model
    if use_model:  # per follow-up label: voxels of new tissue (outside baseline lesions) and their summed probability
        new_tissue = (followup_halfway > 0) & (baseline_halfway == 0)
        length = max([int(followup_halfway.max())] + list(by_label)) + 1  # labels lost on the halfway grid count 0
        new_voxels = np.bincount(followup_halfway[new_tissue], minlength=length)
        new_probability = np.bincount(followup_halfway[new_tissue], change_probability[new_tissue], minlength=length)
    fused = []
    for change in changes:
        if not change.followup_labels:
            fused.append(change)
            continue
        labels = list(change.followup_labels)
        confidence = float(np.average([by_label[label].mean_probability for label in labels],
                                      weights=[by_label[label].volume_mm3 for label in labels]))
        status = change.status
        voxels = int(new_voxels[labels].sum()) if use_model else 0
        # A lesion with no new tissue on the halfway grid (at its edge) keeps the per-visit verdict.
        if voxels and status != "shrinking":
            summed = float(new_probability[labels].sum())
            mean = summed / voxels
            if status in ("new", "possible_new"):
                if mean < params.min_candidate_change_probability:
                    if status == "possible_new":
                        continue  # too small to count and the change model does not see it either
                    status = "stable"
                elif mean < params.min_new_change_probability:
                    status = "possible_new"
            else:
                needed = params.min_new_lesion_volume_mm3 if change.confluent else change_needed_mm3(
                    change.baseline_volume_mm3, change.baseline_volume_mm3, params)
                status = ("enlarging" if summed * voxel_mm3 >= needed
                          and mean >= params.min_candidate_change_probability else "stable")
            if status in ("new", "possible_new", "enlarging"):
                confidence = mean
        fused.append(dataclasses.replace(change, status=status, confidence=round(confidence, 3)))
    return tuple(fused)


def change_only_findings(changes: tuple[LesionChange, ...], change_probability: np.ndarray,
                         baseline_halfway: np.ndarray, followup_halfway: np.ndarray, both_brain: np.ndarray,
                         params: LesionParams, *, halfway_affine: np.ndarray, halfway_to_followup: np.ndarray,
                         followup_probability: np.ndarray | None = None) -> tuple[tuple[LesionChange, ...], np.ndarray]:
    """New tissue that only the change model sees (faint lesions and growth the per-visit model misses; issue 12).

    A component (`connectivity`) of change probability >= `min_new_change_probability` (the reporting point)
    inside `both_brain` (the brain at both visits) by `change_only_margin_voxels`, outside every lesion of
    both visits and not touching a follow-up lesion (there it is that lesion's edge or growth, fuse_change's
    business), of at least `min_candidate_volume_mm3`, is either
    - growth of a baseline lesion it touches (within `match_tolerance_voxels`, or through follow-up tissue of
      per-visit probability >= `growth_bridge_probability`: lesion_rules.reach_labels, with `followup_probability`
      on the halfway grid): it joins that lesion's group, as a per-visit lesion touching it would (`_grow`; a new
      lesion that joined an old one is confluent growth), or
    - a new lesion: 'new' from `min_new_lesion_volume_mm3` when its mean change probability reaches
      `min_change_only_new_probability` (one model's word alone needs more), 'possible_new' otherwise; it has no
      follow-up label (the per-visit mask, and so the visit's lesion count, does not hold it); ids above every
      other. Confidence: its mean change probability; centroid in follow-up mm.
    Returns the changes and the follow-up halfway labels with these voxels under their finding's id, for the
    thumbnails, viewers and label maps.
    """
    seen = change_only_tissue(change_probability, baseline_halfway, followup_halfway, both_brain, params)
    components, count = ndimage.label(seen, structure=structure(params.connectivity))
    if not count:
        return changes, followup_halfway
    voxel_mm3 = float(abs(np.linalg.det(halfway_affine[:3, :3])))
    volumes = np.bincount(components.ravel(), minlength=count + 1) * voxel_mm3
    touching = np.unique(components[ndimage.binary_dilation(followup_halfway > 0, structure(26)) & (components > 0)])
    near_baseline = None  # the baseline lesions' reach, made when a component first needs it
    group_of = {label: index for index, change in enumerate(changes) for label in change.baseline_labels}
    labels = followup_halfway.copy()
    next_id = max([change.id for change in changes] + [int(followup_halfway.max())]) + 1
    growth: dict[int, list] = {}
    added = []
    for index, box in enumerate(ndimage.find_objects(components), 1):
        if volumes[index] < params.min_candidate_volume_mm3 or index in touching:
            continue
        inside = components[box] == index
        if near_baseline is None:
            near_baseline = reach_labels(baseline_halfway, max(params.match_tolerance_voxels, 1), followup_probability,
                                         params.growth_bridge_probability, extra=seen)
        owners = [group_of[label] for label in np.unique(near_baseline[box][inside]) if label in group_of]
        if owners:  # it joins the old lesion's group, as a per-visit lesion touching it would
            growth.setdefault(max(owners, key=lambda group: changes[group].baseline_volume_mm3), []).append(index)
            continue
        voxel = np.argwhere(inside).mean(axis=0) + [part.start for part in box]
        centroid = (halfway_to_followup @ halfway_affine @ np.append(voxel, 1))[:3]
        labels[box][inside] = next_id
        mean = float(change_probability[box][inside].mean())
        counted = volumes[index] >= params.min_new_lesion_volume_mm3 and mean >= params.min_change_only_new_probability
        added.append(LesionChange(next_id, "new" if counted else "possible_new", 0.0, float(volumes[index]),
                                  tuple(float(value) for value in centroid), (), (), confidence=round(mean, 3),
                                  change_only_mm3=float(volumes[index])))
        next_id += 1
    changes = list(changes)
    for owner, indices in growth.items():
        changes[owner] = _grow(changes[owner], np.isin(components, indices), change_probability, baseline_halfway,
                               labels, params, voxel_mm3=voxel_mm3)
    return tuple(changes) + tuple(added), labels


def change_only_tissue(change_probability: np.ndarray, baseline_halfway: np.ndarray, followup_halfway: np.ndarray,
                       both_brain: np.ndarray, params: LesionParams) -> np.ndarray:
    """Where change_only_findings looks: change probability >= the reporting point, outside every lesion of both
    visits, `change_only_margin_voxels` inside the brain at both visits."""
    seen = (change_probability >= params.min_new_change_probability) & (followup_halfway == 0) & (baseline_halfway == 0)
    return seen & ndimage.binary_erosion(both_brain, iterations=params.change_only_margin_voxels)


def _grow(change: LesionChange, growth: np.ndarray, change_probability: np.ndarray, baseline_halfway: np.ndarray,
          labels: np.ndarray, params: LesionParams, *, voxel_mm3: float) -> LesionChange:
    """A baseline lesion's growth that only the change model sees (`growth`: its voxels on the halfway grid), judged
    as fuse_change judges new tissue: 'enlarging' when the summed change probability (mm3) passes the thresholds a
    volume difference must pass (confluent growth, a piece of new-lesion size > 2 mm away: that size) and its mean
    reaches `min_candidate_change_probability`, whatever the per-visit masks said (stable, shrinking, or resolved:
    a follow-up mask that lost part or all of the lesion; as in fuse_change, the change model outranks their volume
    difference). Its voxels then join the finding (`labels`, under the change's id), `change_only_mm3` and the
    follow-up volume (of a lesion the follow-up mask lost: its baseline volume plus the growth); growth too small
    for that changes nothing."""
    summed = float(change_probability[growth].sum()) * voxel_mm3
    growth_mm3 = int(growth.sum()) * voxel_mm3
    confluent = change.confluent or has_distant_growth(np.isin(baseline_halfway, change.baseline_labels), growth,
                                                        voxel_mm3, params)
    needed = params.min_new_lesion_volume_mm3 if confluent else change_needed_mm3(
        change.baseline_volume_mm3, change.baseline_volume_mm3, params)
    mean = summed / growth_mm3
    if change.status != "enlarging" and (summed < needed or mean < params.min_candidate_change_probability):
        return change
    labels[growth] = change.id
    followup_mm3 = change.followup_volume_mm3 if change.followup_labels else change.baseline_volume_mm3
    return dataclasses.replace(change, status="enlarging", followup_volume_mm3=followup_mm3 + growth_mm3,
                               confluent=confluent, change_only_mm3=change.change_only_mm3 + growth_mm3,
                               confidence=change.confidence if change.status == "enlarging" else round(mean, 3))


def loss_region(changes: tuple[LesionChange, ...], baseline_halfway: np.ndarray) -> np.ndarray:
    """Boxes (halfway grid) around every shrinking or resolved lesion, with room for the model's context."""
    region = np.zeros(baseline_halfway.shape, bool)
    losses = [change for change in changes if change.status in ("shrinking", "resolved")]
    if losses:
        corners = ndimage.find_objects(baseline_halfway)
        for change in losses:
            for label in change.baseline_labels:
                if label <= len(corners) and corners[label - 1] is not None:
                    region[tuple(slice(max(part.start - _LOSS_CONTEXT_VOXELS, 0), part.stop + _LOSS_CONTEXT_VOXELS)
                                 for part in corners[label - 1])] = True
    return region


def confirm_losses(changes: tuple[LesionChange, ...], loss_probability: np.ndarray, baseline_halfway: np.ndarray,
                   followup_halfway: np.ndarray, params: LesionParams, *, voxel_mm3: float = 1.0
                   ) -> tuple[LesionChange, ...]:
    """Shrinking and resolved calls, checked by the change model read backwards (`loss_probability`: tissue
    there at baseline and gone at follow-up, halfway grid), over the lost tissue (baseline lesion voxels
    outside every follow-up lesion). Mirrors fuse_change: 'resolved' stands when the mean reaches
    `min_new_change_probability`; 'shrinking' when the summed probability (mm3) passes the thresholds a
    volume difference must pass and the mean reaches `min_candidate_change_probability`. Otherwise the
    lesion is 'stable' (still there, below the per-visit threshold at follow-up). Confidence: that mean.
    """
    checked = []
    for change in changes:
        if change.status not in ("shrinking", "resolved"):
            checked.append(change)
            continue
        lost = np.isin(baseline_halfway, change.baseline_labels) & (followup_halfway == 0)
        voxels = int(lost.sum())
        mean = float(loss_probability[lost].mean()) if voxels else 0.0
        if change.status == "resolved":
            stands = mean >= params.min_new_change_probability
        else:
            needed = change_needed_mm3(change.baseline_volume_mm3, change.followup_volume_mm3, params)
            stands = (float(loss_probability[lost].sum()) * voxel_mm3 >= needed
                      and mean >= params.min_candidate_change_probability)
        checked.append(dataclasses.replace(change, status=change.status if stands else "stable",
                                           confidence=round(mean, 3)))
    return tuple(checked)
