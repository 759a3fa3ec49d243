"""Lesions: connected components with per-lesion measures, and their fate across an interval.

Vocabulary (one interval, baseline -> follow-up, compared in halfway space):
- group: baseline and follow-up lesions linked by overlap (baseline dilated by
  `match_tolerance_voxels`, and along follow-up tissue of per-visit probability >= growth_bridge_probability
  connected to it: a lesion that grew beyond the threshold's reach is still one lesion); groups are the connected
  parts of that overlap graph, so merges (several baseline -> one follow-up) and splits (one -> several) are one
  unit, never counted twice.
- new: a follow-up lesion in no group with a baseline lesion, volume >= min_new_lesion_volume_mm3.
  Smaller ones (>= min_candidate_volume_mm3) are 'possible_new': listed for the reader, never counted.
  New tissue that only the change model sees, away from every per-visit lesion, is new or possible new
  too (`lesion_change.change_only_findings`), without a follow-up label; touching a baseline lesion, it is
  that lesion's growth.
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
The two-visit change model then confirms or corrects these fates (msvol.stages.lesion_change); the thresholds
and the confluent-growth test both stages apply are in msvol.stages.lesion_rules.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from msvol.config import LesionParams, SegmentParams
from msvol.datatypes import Lesion, LesionChange, LesionMap, Volume
from msvol.stages.lesion_rules import classify_change, grown_labels, has_distant_growth, reach_labels, structure

METHODS = ("Lesions are connected components (26-connectivity) of the thresholded probability map; lesions were "
           "matched across visits by overlap in halfway space, merges and splits handled as groups, and "
           "enlargement judged against size-dependent thresholds.")


def label_lesions(probability: Volume, session: str, segment: SegmentParams, params: LesionParams) -> LesionMap:
    """Threshold, label components, drop those below `min_lesion_volume_mm3` (kept: >=), measure."""
    mask = probability.data >= segment.probability_threshold
    labels, count = ndimage.label(mask, structure=structure(params.connectivity))
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
    grown = grown_labels(baseline_halfway, params.match_tolerance_voxels)
    reach = reach_labels(baseline_halfway, params.match_tolerance_voxels, followup_probability,
                         params.growth_bridge_probability)
    both = (reach > 0) & (followup_halfway > 0)
    pairs = np.unique(np.stack([reach[both], followup_halfway[both]], axis=1), axis=0)
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
        confluent = bool(follow_labels) and grew_by_a_lesion and has_distant_growth(
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
    near = ndimage.binary_dilation(region[box], structure(26))
    return (float(baseline_probability[box][near].sum() * voxel_mm3),
            float(followup_probability[box][near].sum() * voxel_mm3))


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
