"""Lesions: connected components with per-lesion measures, and their fate across an interval.

Vocabulary (one interval, baseline -> follow-up, compared in halfway space):
- group: baseline and follow-up lesions linked by overlap (baseline dilated by
  `match_tolerance_voxels`); groups are the connected parts of that overlap graph, so merges
  (several baseline -> one follow-up) and splits (one -> several) are one unit, never counted twice.
- new: a follow-up lesion in no group with a baseline lesion, volume >= min_new_lesion_volume_mm3.
  Smaller ones (>= min_candidate_volume_mm3) are 'possible_new': listed for the reader, never counted.
  New tissue that only the change model sees, away from every per-visit lesion, is new or possible new
  too (`change_only_findings`), without a follow-up label; touching a baseline lesion, it is that lesion's growth.
- both visits together (hysteresis): a lesion found at one visit only, whose region the other visit's
  per-visit probability still covers (mean >= min_presence_probability), is stable, not new or resolved;
  an enlargement or shrinkage must show in the probability-weighted volumes too, not only in the
  thresholded ones (a lesion at the threshold's edge changes its thresholded volume from scan to scan).
- enlarging / shrinking: a group whose total volume changed by at least the size-dependent
  relative threshold (small: < small_lesion_max_volume_mm3 at baseline) and the absolute one.
- stable: a group that changed less. resolved: a baseline lesion with no follow-up partner, volume
  >= min_new_lesion_volume_mm3 (the same countable size as a new lesion; a smaller one is no finding).
- confluent: a group that grew by >= min_new_lesion_volume_mm3 and whose growth includes a piece
  that large lying more than 2 mm from the baseline lesion: a new lesion that joined an old one. It is reported as
  enlarging with confluent=true (even when the relative growth of a large lesion stays below
  the threshold), never as new, so the new-lesion count stays conservative and the radiologist
  still sees it.
- Shrinking mirrors enlarging: baseline / follow-up - 1 must reach the relative threshold.
The reported id of a group is its smallest follow-up label (resolved: above all follow-up labels).
Fusion (`fuse_change`): the two-visit change model then confirms new lesions and judges
enlargement by the new tissue it sees, and every finding gets a confidence for the review order.
Two operating points: the reporting one (counted findings) and the candidate one below it
('possible_new': shown to the reader, counted only once confirmed).
Losses (`confirm_losses`): the change model read backwards (follow-up first) sees tissue present at
baseline and gone at follow-up; a shrinking or resolved call stands only when it does.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from msvol.config import LesionParams, SegmentParams
from msvol.datatypes import Lesion, LesionChange, LesionMap, Volume

METHODS = ("Lesions are connected components (26-connectivity) of the thresholded probability map; lesions were "
           "matched across visits by overlap in halfway space, merges and splits handled as groups, and "
           "enlargement judged against size-dependent thresholds. A two-visit change model (a 3D U-Net on both "
           "visits' FLAIR and T1 in halfway space) confirmed new lesions and measured the new tissue of "
           "enlarging ones; given the visits in reverse order, it confirmed shrinking and resolved ones.")
_CONFLUENT_DISTANCE_MM = 2.0
_LOSS_CONTEXT_VOXELS = 40  # around a lost lesion the backward change model sees this much of the brain (96^3 windows)


def _structure(connectivity: int) -> np.ndarray:
    return ndimage.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])


def label_lesions(probability: Volume, session: str, segment: SegmentParams, params: LesionParams) -> LesionMap:
    """Threshold, label components, drop those below `min_lesion_volume_mm3` (kept: >=), measure."""
    mask = probability.data >= segment.probability_threshold
    labels, count = ndimage.label(mask, structure=_structure(params.connectivity))
    voxel_mm3 = probability.voxel_volume_mm3
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = np.flatnonzero(sizes * voxel_mm3 >= params.min_lesion_volume_mm3)
    keep = keep[keep > 0]
    relabel = np.zeros(count + 1, np.int32)
    relabel[keep] = np.arange(1, len(keep) + 1)
    labels = relabel[labels]
    lesions = measure_lesions(labels, probability.data, probability.affine)
    return LesionMap(session, probability.with_data(labels, "labels"), probability, tuple(lesions))


def measure_lesions(labels: np.ndarray, probability: np.ndarray | None, affine: np.ndarray) -> list[Lesion]:
    """Volume, centroid (mm) and mean probability of every label 1..max."""
    count = int(labels.max())
    if count == 0:
        return []
    index = np.arange(1, count + 1)
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    sizes = ndimage.sum_labels(np.ones_like(labels, dtype=np.float32), labels, index)
    centroids = ndimage.center_of_mass(np.ones_like(labels, dtype=np.float32), labels, index)
    means = (ndimage.mean(probability, labels, index) if probability is not None else np.ones(count))
    lesions = []
    for label, size, centroid, mean in zip(index, sizes, centroids, means):
        centre_mm = affine[:3, :3] @ np.array(centroid) + affine[:3, 3]
        lesions.append(Lesion(int(label), float(size * voxel_mm3), tuple(float(c) for c in centre_mm), float(mean)))
    return lesions


def _groups(pairs: np.ndarray, baseline_labels, followup_labels) -> list[tuple[list[int], list[int]]]:
    """Connected parts of the bipartite overlap graph, as (baseline labels, follow-up labels)."""
    parent = {}

    def find(node):
        while parent.setdefault(node, node) != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for node in [("b", b) for b in baseline_labels] + [("f", f) for f in followup_labels]:
        find(node)
    for b, f in pairs:
        parent[find(("b", int(b)))] = find(("f", int(f)))
    members: dict = {}
    for node in list(parent):
        members.setdefault(find(node), []).append(node)
    return sorted(([n for side, n in group if side == "b"], [n for side, n in group if side == "f"])
                  for group in ([sorted(g) for g in members.values()]))


def _relative_threshold(baseline_mm3: float, params: LesionParams) -> float:
    small = baseline_mm3 < params.small_lesion_max_volume_mm3
    return params.min_relative_change_small if small else params.min_relative_change_large


def _change_needed_mm3(baseline_mm3: float, reference_mm3: float, params: LesionParams) -> float:
    """The smallest volume change that counts: the absolute floor, and the size-dependent fraction (by the
    baseline size) of `reference_mm3` (the baseline for growth, the follow-up for shrinkage)."""
    return max(params.min_absolute_change_mm3, _relative_threshold(baseline_mm3, params) * reference_mm3)


def classify_change(baseline_mm3: float, followup_mm3: float, params: LesionParams) -> str:
    """'enlarging', 'shrinking' or 'stable' for a lesion present at both visits (bounds inclusive)."""
    if followup_mm3 - baseline_mm3 >= _change_needed_mm3(baseline_mm3, baseline_mm3, params):
        return "enlarging"
    if baseline_mm3 - followup_mm3 >= _change_needed_mm3(baseline_mm3, followup_mm3, params):
        return "shrinking"
    return "stable"


def match_lesions(baseline: LesionMap, followup: LesionMap, baseline_halfway: np.ndarray,
                  followup_halfway: np.ndarray, params: LesionParams, *, voxel_mm3: float = 1.0,
                  baseline_probability: np.ndarray | None = None,
                  followup_probability: np.ndarray | None = None) -> tuple[LesionChange, ...]:
    """The fate of every lesion over one interval.

    Parameters
    ----------
    baseline, followup : each visit's lesions measured on its native grid (volumes come from there).
    baseline_halfway, followup_halfway : the same label maps resampled (nearest) onto one halfway
        grid; they decide overlap only.
    voxel_mm3 : voxel volume of the halfway grid (for the confluent-growth test).
    baseline_probability, followup_probability : each visit's per-visit lesion probability on the halfway
        grid (linear); with them, both visits are read together (the module docstring's hysteresis).
    """
    tolerance = params.match_tolerance_voxels
    grown = ndimage.grey_dilation(baseline_halfway, size=(2 * tolerance + 1,) * 3) if tolerance else baseline_halfway
    grown = np.where(baseline_halfway > 0, baseline_halfway, grown)
    both = (grown > 0) & (followup_halfway > 0)
    pairs = np.unique(np.stack([grown[both], followup_halfway[both]], axis=1), axis=0)
    base_by_label = {lesion.label: lesion for lesion in baseline.lesions}
    follow_by_label = {lesion.label: lesion for lesion in followup.lesions}
    next_resolved_id = max(follow_by_label, default=0) + 1
    # per label: the other visit's summed probability and voxel count over it (for the presence test)
    seen_before = _sums_over_labels(baseline_probability, followup_halfway, max(follow_by_label, default=0))
    seen_after = _sums_over_labels(followup_probability, baseline_halfway, max(base_by_label, default=0))
    changes = []
    for base_labels, follow_labels in _groups(pairs, list(base_by_label), list(follow_by_label)):
        base_mm3 = sum(base_by_label[b].volume_mm3 for b in base_labels)
        follow_mm3 = sum(follow_by_label[f].volume_mm3 for f in follow_labels)
        if not base_labels:
            if follow_mm3 < params.min_candidate_volume_mm3:
                continue
            if _present(seen_before, follow_labels, params):
                status = "stable"  # there at baseline too, below the reporting threshold
            else:
                status = "new" if follow_mm3 >= params.min_new_lesion_volume_mm3 else "possible_new"
        elif not follow_labels:
            if _present(seen_after, base_labels, params):
                status = "stable"
            elif base_mm3 >= params.min_new_lesion_volume_mm3:
                status = "resolved"
            else:
                continue  # as for new lesions: below the countable size a one-visit speck is no finding
        else:
            status = classify_change(base_mm3, follow_mm3, params)
            if status != "stable" and baseline_probability is not None and followup_probability is not None:
                soft = _soft_volumes_mm3(baseline_probability, followup_probability, np.isin(grown, base_labels)
                                         | np.isin(followup_halfway, follow_labels), voxel_mm3)
                if classify_change(*soft, params) != status:
                    status = "stable"  # only the thresholded volume moved
        grew_by_a_lesion = bool(base_labels) and follow_mm3 - base_mm3 >= params.min_new_lesion_volume_mm3
        confluent = bool(follow_labels) and grew_by_a_lesion and _has_distant_growth(
            np.isin(baseline_halfway, base_labels), np.isin(followup_halfway, follow_labels), voxel_mm3, params)
        if confluent:
            status = "enlarging"  # a new lesion joined this one: never hide it as 'stable
        reference = [follow_by_label[f] for f in follow_labels] or [base_by_label[b] for b in base_labels]
        weights = np.array([lesion.volume_mm3 for lesion in reference])
        centroid = tuple(float(c) for c in np.average([lesion.centroid_mm for lesion in reference], axis=0,
                                                       weights=weights))
        if follow_labels:
            lesion_id = min(follow_labels)
        else:
            lesion_id, next_resolved_id = next_resolved_id, next_resolved_id + 1
        changes.append(LesionChange(lesion_id, status, base_mm3, follow_mm3, centroid, tuple(base_labels),
                                    tuple(follow_labels), merged=len(base_labels) > 1, split=len(follow_labels) > 1,
                                    confluent=confluent))
    return tuple(sorted(changes, key=lambda change: change.id))


def _sums_over_labels(probability: np.ndarray | None, labels: np.ndarray, count: int):
    """(summed probability, voxels) per label 0..count of `labels`, or None without a probability map."""
    if probability is None:
        return None
    flat = labels.ravel()
    return (np.bincount(flat, probability.ravel(), minlength=count + 1), np.bincount(flat, minlength=count + 1))


def _present(sums, labels: list[int], params: LesionParams) -> bool:
    """Whether the other visit's mean probability over these labels' voxels reaches min_presence_probability."""
    if sums is None:
        return False
    summed, voxels = sums
    count = int(voxels[labels].sum())
    return bool(count) and float(summed[labels].sum()) / count >= params.min_presence_probability


def _soft_volumes_mm3(baseline_probability, followup_probability, region, voxel_mm3) -> tuple[float, float]:
    """Probability-weighted lesion volume of each visit over a region and its 1-voxel rim (halfway grid)."""
    corners = np.argwhere(region)
    box = tuple(slice(max(low - 2, 0), high + 3) for low, high in zip(corners.min(axis=0), corners.max(axis=0)))
    near = ndimage.binary_dilation(region[box], _structure(26))
    return (float(baseline_probability[box][near].sum() * voxel_mm3),
            float(followup_probability[box][near].sum() * voxel_mm3))


def _has_distant_growth(baseline_mask, followup_mask, voxel_mm3, params: LesionParams) -> bool:
    corners = np.argwhere(baseline_mask | followup_mask)
    box = tuple(slice(max(low - 4, 0), high + 5) for low, high in zip(corners.min(axis=0), corners.max(axis=0)))
    baseline_mask, followup_mask = baseline_mask[box], followup_mask[box]
    distance = ndimage.distance_transform_edt(~baseline_mask) * voxel_mm3 ** (1 / 3)
    far = followup_mask & (distance > _CONFLUENT_DISTANCE_MM)
    if not far.any():
        return False
    pieces, count = ndimage.label(far, structure=_structure(26))
    largest = np.bincount(pieces.ravel())[1:].max()
    return bool(largest * voxel_mm3 >= params.min_new_lesion_volume_mm3)  # a numpy bool breaks json


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
                needed = params.min_new_lesion_volume_mm3 if change.confluent else _change_needed_mm3(
                    change.baseline_volume_mm3, change.baseline_volume_mm3, params)
                status = ("enlarging" if summed * voxel_mm3 >= needed
                          and mean >= params.min_candidate_change_probability else "stable")
            if status in ("new", "possible_new", "enlarging"):
                confidence = mean
        fused.append(dataclasses.replace(change, status=status, confidence=round(confidence, 3)))
    return tuple(fused)


def change_only_findings(changes: tuple[LesionChange, ...], change_probability: np.ndarray,
                         baseline_halfway: np.ndarray, followup_halfway: np.ndarray, both_brain: np.ndarray,
                         params: LesionParams, *, halfway_affine: np.ndarray, halfway_to_followup: np.ndarray
                         ) -> tuple[tuple[LesionChange, ...], np.ndarray]:
    """New tissue that only the change model sees (faint lesions and growth the per-visit model misses; issue 12).

    A component (`connectivity`) of change probability >= `min_new_change_probability` (the reporting point)
    inside `both_brain` (the brain at both visits) by `change_only_margin_voxels`, outside every lesion of
    both visits and not touching a follow-up lesion (there it is that lesion's edge or growth, fuse_change's
    business), of at least `min_candidate_volume_mm3`, is either
    - growth of a baseline lesion it touches (within `match_tolerance_voxels`): it joins that lesion's group, as
      a per-visit lesion touching it would (`_grow`; a new lesion that joined an old one is confluent growth), or
    - a new lesion: 'new' from `min_new_lesion_volume_mm3`, 'possible_new' below, with no follow-up label (the
      per-visit mask, and so the visit's lesion count, does not hold it); ids above every other. Confidence: its
      mean change probability; centroid in follow-up mm.
    Returns the changes and the follow-up halfway labels with these voxels under their finding's id, for the
    thumbnails, viewers and label maps.
    """
    seen = (change_probability >= params.min_new_change_probability) & (followup_halfway == 0) & (baseline_halfway == 0)
    seen &= ndimage.binary_erosion(both_brain, iterations=params.change_only_margin_voxels)
    components, count = ndimage.label(seen, structure=_structure(params.connectivity))
    if not count:
        return changes, followup_halfway
    voxel_mm3 = float(abs(np.linalg.det(halfway_affine[:3, :3])))
    volumes = np.bincount(components.ravel(), minlength=count + 1) * voxel_mm3
    touching = np.unique(components[ndimage.binary_dilation(followup_halfway > 0, _structure(26)) & (components > 0)])
    reach = 2 * max(params.match_tolerance_voxels, 1) + 1
    near_baseline = ndimage.grey_dilation(baseline_halfway, size=(reach,) * 3)
    group_of = {label: index for index, change in enumerate(changes) for label in change.baseline_labels}
    labels = followup_halfway.copy()
    next_id = max([change.id for change in changes] + [int(followup_halfway.max())]) + 1
    growth: dict[int, list] = {}
    added = []
    for index, box in enumerate(ndimage.find_objects(components), 1):
        if volumes[index] < params.min_candidate_volume_mm3 or index in touching:
            continue
        inside = components[box] == index
        owners = [group_of[label] for label in np.unique(near_baseline[box][inside]) if label in group_of]
        if owners:  # it joins the old lesion's group, as a per-visit lesion touching it would
            growth.setdefault(max(owners, key=lambda group: changes[group].baseline_volume_mm3), []).append(index)
            continue
        voxel = np.argwhere(inside).mean(axis=0) + [part.start for part in box]
        centroid = (halfway_to_followup @ halfway_affine @ np.append(voxel, 1))[:3]
        labels[box][inside] = next_id
        status = "new" if volumes[index] >= params.min_new_lesion_volume_mm3 else "possible_new"
        added.append(LesionChange(next_id, status, 0.0, float(volumes[index]), tuple(float(value) for value in centroid),
                                  (), (), confidence=round(float(change_probability[box][inside].mean()), 3),
                                  change_only_mm3=float(volumes[index])))
        next_id += 1
    changes = list(changes)
    for owner, indices in growth.items():
        changes[owner] = _grow(changes[owner], np.isin(components, indices), change_probability, baseline_halfway,
                               labels, params, voxel_mm3=voxel_mm3)
    return tuple(changes) + tuple(added), labels


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
    confluent = change.confluent or _has_distant_growth(np.isin(baseline_halfway, change.baseline_labels), growth,
                                                        voxel_mm3, params)
    needed = params.min_new_lesion_volume_mm3 if confluent else _change_needed_mm3(
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
            needed = _change_needed_mm3(change.baseline_volume_mm3, change.followup_volume_mm3, params)
            stands = (float(loss_probability[lost].sum()) * voxel_mm3 >= needed
                      and mean >= params.min_candidate_change_probability)
        checked.append(dataclasses.replace(change, status=change.status if stands else "stable",
                                           confidence=round(mean, 3)))
    return tuple(checked)


def countable_lesions(lesion_map: LesionMap, seen_elsewhere: set[int], params: LesionParams) -> int:
    """The visit's lesion count: lesions of the countable size (>= min_new_lesion_volume_mm3, as a new lesion),
    and smaller ones that another visit of the patient confirms (`seen_elsewhere`: labels in a group with
    lesions of the other visit, or present there below the threshold). A speck at one visit only is in the
    label map and the lesion volume, but not a lesion to count: two scans of one brain then count alike."""
    return sum(1 for lesion in lesion_map.lesions
               if lesion.volume_mm3 >= params.min_new_lesion_volume_mm3 or lesion.label in seen_elsewhere)


def confirmed_labels(changes: tuple[LesionChange, ...]) -> tuple[set[int], set[int]]:
    """(baseline labels, follow-up labels) the other visit of this interval confirms: in a group with lesions
    of both visits, or stable by presence (hysteresis) though found at one visit only."""
    baseline, followup = set(), set()
    for change in changes:
        if (change.baseline_labels and change.followup_labels) or change.status == "stable":
            baseline.update(change.baseline_labels)
            followup.update(change.followup_labels)
    return baseline, followup


def change_labels(followup_labels: np.ndarray, changes: tuple[LesionChange, ...], status: str) -> np.ndarray:
    """Follow-up label map keeping only lesions of `status`, each relabelled to its change id."""
    lookup = np.zeros(int(followup_labels.max()) + 1, np.int32)
    for change in changes:
        if change.status == status:
            lookup[list(change.followup_labels)] = change.id
    return lookup[followup_labels]
