"""The scores of msvol.evaluate on arrays: pure functions of label maps on one grid (definitions in
msvol.evaluate's docstring). Nothing here reads files."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

SIZE_BINS_MM3 = ((0.0, 100.0), (100.0, 500.0), (500.0, math.inf))
SIZE_BIN_LABELS = ("<100", "100-500", ">500")
# new lesions: most missed ones are small (MSSEG-2), so the smallest bin is split at 30 mm3
NEW_SIZE_BINS_MM3 = ((0.0, 30.0), (30.0, 100.0), (100.0, 500.0), (500.0, math.inf))
NEW_SIZE_BIN_LABELS = ("<30", "30-100", "100-500", ">500")
LARGE_NEW_LESION_MM3 = 30.0  # msvol choice: inclusive; a 30 mm3 sphere is ~3.9 mm across
CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity


def score_scan(predicted: np.ndarray, truth: np.ndarray, voxel_mm3: float, *,
               truth_ids: np.ndarray | None = None) -> dict:
    """Lesion-wise and voxel-wise agreement of two boolean masks on one grid.

    `truth_ids`, when given, names the truth lesions (synth: one generator lesion may be in pieces).
    """
    detected, truth_voxels = components_hit(truth, predicted, truth_ids)
    true_positive, _ = components_hit(predicted, truth)
    n_truth, n_pred, n_detected, n_true_positive = (len(detected), len(true_positive), int(detected.sum()),
                                                    int(true_positive.sum()))
    overlap, predicted_total, truth_total = (int(np.count_nonzero(predicted & truth)),
                                             int(np.count_nonzero(predicted)), int(np.count_nonzero(truth)))
    sensitivity, precision = ratio(n_detected, n_truth), ratio(n_true_positive, n_pred)
    return {
        "truth_lesions": n_truth, "pred_lesions": n_pred, "detected": n_detected,
        "true_positive_pred": n_true_positive, "false_positives": n_pred - n_true_positive,
        "sensitivity": sensitivity, "precision": precision, "f1": f1(n_truth, n_pred, sensitivity, precision),
        "sensitivity_by_size": by_size(truth_voxels * voxel_mm3, detected),
        "dice": 1.0 if predicted_total + truth_total == 0 else 2 * overlap / (predicted_total + truth_total),
        "truth_volume_mm3": truth_total * voxel_mm3, "pred_volume_mm3": predicted_total * voxel_mm3,
        "volume_ratio": ratio(predicted_total, truth_total),
    }


def score_new_lesions(predicted: np.ndarray, truth: np.ndarray, voxel_mm3: float, *,
                      ignore: np.ndarray | None = None, truth_ids: np.ndarray | None = None,
                      candidates: np.ndarray | None = None) -> dict:
    """New-lesion detection for one interval from boolean masks.

    ignore : lesions that are neither required nor false (synth new_below_minimum).
    truth_ids : as in score_scan.
    candidates : integer map, one label per 'possible new lesion' candidate (None: no candidates).
    """
    detected, truth_voxels = components_hit(truth, predicted, truth_ids)
    matched, _ = components_hit(predicted, truth if ignore is None else truth | ignore)
    candidates = np.zeros(truth.shape, np.int32) if candidates is None else candidates
    found_either, _ = components_hit(truth, predicted | (candidates > 0), truth_ids)
    present = np.unique(candidates[candidates > 0])
    on_truth = np.unique(candidates[(candidates > 0) & (truth if ignore is None else truth | ignore)])
    volumes = truth_voxels * voxel_mm3
    large = volumes >= LARGE_NEW_LESION_MM3
    bins = {}
    for label, (low, high) in zip(NEW_SIZE_BIN_LABELS, NEW_SIZE_BINS_MM3):
        inside = (volumes >= low) & (volumes < high)
        bins[label] = {"truth": int(inside.sum()), "reported": int((inside & detected).sum()),
                       "reported_or_candidate": int((inside & found_either).sum())}
    return {
        "truth_new": len(detected), "detected_new": int(detected.sum()),
        "new_sensitivity": ratio(int(detected.sum()), len(detected)),
        "truth_new_ge30": int(large.sum()), "detected_new_ge30": int((detected & large).sum()),
        "new_sensitivity_ge30": ratio(int((detected & large).sum()), int(large.sum())),
        "pred_new": len(matched), "false_new": int((~matched).sum()),
        "detected_new_or_candidate": int(found_either.sum()),
        "new_sensitivity_or_candidate": ratio(int(found_either.sum()), len(detected)),
        "new_by_size": bins, "candidates": len(present), "false_candidates": len(present) - len(on_truth),
    }


def score_enlarging(predicted: np.ndarray, truth: np.ndarray, dont_count: np.ndarray, *,
                    truth_ids: np.ndarray | None = None) -> dict:
    """Enlarging lesions for one interval: `truth` the enlarging lesions that count, `dont_count` those
    that must not be reported (a merger, a growth below the measurement noise).

    A predicted enlarging lesion (26-connected component) is false when it overlaps no counting truth
    enlarging lesion; `false_enlarging_dont_count` are the false ones that overlap a don't-count lesion.
    """
    detected, _ = components_hit(truth, predicted, truth_ids)
    matched, _ = components_hit(predicted, truth)
    on_dont_count, _ = components_hit(predicted, dont_count)
    return {"truth_enlarging": len(detected), "detected_enlarging": int(detected.sum()),
            "enlarging_sensitivity": ratio(int(detected.sum()), len(detected)),
            "pred_enlarging": len(matched), "false_enlarging": int((~matched).sum()),
            "false_enlarging_dont_count": int((~matched & on_dont_count).sum())}


def score_shrinking_resolved(calls: list[tuple[str, tuple[int, ...]]], predicted_baseline: np.ndarray,
                             truth_baseline: np.ndarray, shrinking_or_resolved_ids) -> dict:
    """Shrinking and resolved calls of one interval against the truth.

    calls : (status, the call's labels in the predicted baseline label map) per call.
    A call is true when its baseline voxels overlap a truth lesion whose fate is shrinking or resolved
    (`shrinking_or_resolved_ids`); otherwise (a lesion that did not shrink, or no truth lesion) false.
    """
    wanted = np.isin(truth_baseline, list(shrinking_or_resolved_ids)) & (truth_baseline > 0)
    record = {"pred_shrinking": 0, "pred_resolved": 0, "false_shrinking": 0, "false_resolved": 0}
    for status, labels in calls:
        region = np.isin(predicted_baseline, list(labels)) & (predicted_baseline > 0)
        record[f"pred_{status}"] += 1
        record[f"false_{status}"] += int(not (region & wanted).any())
    record["false_shrinking_resolved"] = record["false_shrinking"] + record["false_resolved"]
    return record


def lesion_burden(labels: np.ndarray, voxel_mm3: float) -> tuple[int, float]:
    """(26-connected lesion count, lesion volume mm3) of one label map."""
    _, count = ndimage.label(labels > 0, structure=CONNECTIVITY)
    return int(count), float(np.count_nonzero(labels)) * voxel_mm3


def components_hit(mask: np.ndarray, other: np.ndarray,
                   ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For each lesion of `mask`: whether it overlaps `other`, and its voxel count.

    Lesions are the 26-connected components of `mask`, or, when `ids` is given, its distinct ids.
    """
    if ids is None:
        labels, count = ndimage.label(mask, structure=CONNECTIVITY)
    else:
        present = np.union1d([0], ids[mask])
        labels, count = np.searchsorted(present, np.where(mask, ids, 0)), len(present) - 1
    hit = np.bincount(labels[other], minlength=count + 1)[1:] > 0
    return hit, np.bincount(labels.ravel(), minlength=count + 1)[1:]


def by_size(volumes_mm3: np.ndarray, detected: np.ndarray) -> dict:
    bins = {}
    for label, (low, high) in zip(SIZE_BIN_LABELS, SIZE_BINS_MM3):
        inside = (volumes_mm3 >= low) & (volumes_mm3 < high)
        bins[label] = {"truth": int(inside.sum()), "detected": int((inside & detected).sum()),
                       "sensitivity": ratio(int((inside & detected).sum()), int(inside.sum()))}
    return bins


def ratio(numerator: float, denominator: float) -> float | None:
    return None if denominator == 0 else numerator / denominator


def f1(n_truth: int, n_pred: int, sensitivity: float | None, precision: float | None) -> float:
    if n_truth == 0 and n_pred == 0:
        return 1.0
    if sensitivity is None or precision is None or sensitivity + precision == 0:
        return 0.0
    return 2 * sensitivity * precision / (sensitivity + precision)


def mean(values: list) -> float | None:
    values = [value for value in values if value is not None]
    return sum(values) / len(values) if values else None


def median(values: list) -> float | None:
    values = sorted(value for value in values if value is not None)
    if not values:
        return None
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2
