"""Evaluate msvol results against annotated truth: lesion detection and overlap per scan,
new and enlarging lesions, shrinking/resolved calls and PBVC per interval, pooled over a cohort.

Split by responsibility: this module composes; msvol.evaluate_lesions holds the array scores,
msvol.evaluate_io the reading, msvol.evaluate_table the text table.

Inputs
------
pred_root : an msvol output folder (pipeline.py): sub-XX/ses-YY/lesions.nii.gz,
    sub-XX/intervals/ses-AA_to_ses-BB/{new,enlarging}_lesions.nii.gz (ses-BB grid), sub-XX/report.json.
truth_root : one of two layouts, detected automatically:
    "synth"   an msvol synth BIDS dataset (msvol.synth.patients or the check set msvol.synth.checkset) or
              its derivatives/truth folder: sub-XX/sub-XX_ses-YY_lesions.nii.gz (value = lesion id, the same
              id across visits) and sub-XX/sub-XX_truth.json (intervals[]: from_session, to_session,
              pbvc_percent, fates, optional scan_rescan).
    "generic" the prediction layout: sub-XX/ses-YY/lesions.nii.gz; optional
              sub-XX/intervals/ses-AA_to_ses-BB/new_lesions.nii.gz (and enlarging_lesions.nii.gz);
              optional sub-XX/pbvc.json = {"ses-AA_to_ses-BB": pbvc_percent, ...}.
Every subject, session and interval present on both sides is evaluated; what one side lacks is
listed under "skipped" with the reason. A prediction and its truth must share a grid (same shape,
affines equal within 1e-3): nothing is resampled here.

Candidates ('possible new lesions', below the reporting threshold) are read, per interval, from the
first that exists of: a label map named in report.json intervals[].files["possible_new_lesions"] or
["candidate_lesions"] (path relative to sub-XX/); intervals/ses-AA_to_ses-BB/possible_new_lesions.nii.gz
or candidate_lesions.nii.gz (each 26-connected component one candidate); otherwise the entries of
report.json intervals[].candidates (a missing list counts as none) and intervals[].lesions[] with
status "possible_new", each located by its followup_labels (labels in ses-BB/lesions.nii.gz) or, without
them, by centroid_mm (follow-up world mm; a 2 mm ball). Shrinking and resolved calls are the
intervals[].lesions[] of status "shrinking" / "resolved", located by baseline_labels in ses-AA/lesions.nii.gz.

Definitions
-----------
lesion : a 26-connected component of (label > 0), on either side; label values are not trusted to
    delimit lesions, except in synth truth, where a lesion is one generator lesion id: the generator
    confines lesions to white matter, so one lesion can be rendered in several pieces, and counting
    the pieces would score a found lesion as several partly missed ones.
    Its volume is its voxel count times |det(affine[:3, :3])| in mm3.
Per scan (one session):
  detected : a truth lesion with at least one voxel predicted as lesion (any overlap).
  true-positive prediction : a predicted lesion overlapping at least one truth lesion voxel; otherwise
      it is a false positive. One truth lesion split into two predicted lesions counts once as
      detected and gives two true positives; two truth lesions inside one prediction are both detected.
  sensitivity = detected / truth lesions (None when there is no truth lesion).
  precision = true-positive predictions / predicted lesions (None when nothing is predicted).
  f1 = 2 P R / (P + R); 1.0 when there is neither truth nor prediction; 0.0 when exactly one side is
      empty (then P or R is 0, and a harmonic mean with 0 is 0) or when P = R = 0.
  sensitivity_by_size : sensitivity within truth-volume bins SIZE_BINS_MM3, lower bound inclusive,
      upper exclusive: "<100" [0, 100), "100-500" [100, 500), ">500" [500, inf) mm3.
  dice = 2 |P & T| / (|P| + |T|) over voxels; 1.0 when both are empty.
  volume_ratio = predicted / truth lesion volume (None when the truth volume is 0).
Per pair (interval ses-AA -> ses-BB; maps on the ses-BB grid):
  truth new lesions : synth: components of the ses-BB labels whose fate is "new"; generic: components
      of the truth new_lesions.nii.gz. Synth "new_below_minimum" lesions (below the consensus minimum
      volume) are neither required nor false: a prediction touching one is not a false new lesion.
  new_sensitivity = truth new lesions overlapped by predicted new lesions / truth new lesions;
      new_sensitivity_ge30: the same over truth new lesions of volume >= 30 mm3 (inclusive);
      new_sensitivity_or_candidate: overlapped by a predicted new lesion or a candidate.
  new_by_size : truth new lesions per NEW_SIZE_BINS_MM3 ("<30", "30-100", "100-500", ">500"; lower bound
      inclusive), with how many were reported and how many reported or candidates.
  false_new = predicted new lesions (components of new_lesions.nii.gz > 0) overlapping no truth new
      lesion (and, synth, no new_below_minimum lesion). candidates: their number; false_candidates:
      those overlapping no truth new (or new_below_minimum) lesion.
  enlarging_sensitivity = truth enlarging lesions (synth fate "enlarging"; generic: optional truth
      enlarging_lesions.nii.gz) overlapped by predicted enlarging_lesions.nii.gz / truth enlarging lesions.
      Synth fates "enlarging_by_merger" (a tiny lesion that joined a neighbour) and "enlarging_below_noise"
      are not enlarging: never required, and a predicted enlarging lesion on one is false.
  false_enlarging = predicted enlarging lesions overlapping no truth enlarging lesion
      (false_enlarging_dont_count: of those, the ones on a merger or below-noise lesion).
  false_shrinking / false_resolved (synth) : report.json calls whose baseline voxels overlap no truth
      lesion of fate shrinking or resolved.
  pbvc_error_percent = measured - true PBVC in percentage points (negative: more loss measured than true);
      pbvc_recovery = measured / true, where |true| >= 0.2 % and the pair is no scan-rescan pair.
  scan-rescan pairs (synth truth scan_rescan: true): per-visit lesion count (26-connected components of
      ses-YY/lesions.nii.gz) and volume, their differences (follow-up - baseline; volume in % of
      baseline), the same from report.json timepoints (lesion_count, lesion_volume_ml) when present,
      and |PBVC| measured.
Overall : counts are summed before dividing (pooled sensitivity, precision, per size bin, new and
  enlarging sensitivity; f1 from the pooled P and R); dice and volume_ratio are means over the scans
  where defined; false positives per scan, false new, candidates, false enlarging and false
  shrinking/resolved per pair are means over the pairs where scored; PBVC error: signed mean, mean absolute
  and maximum absolute over the pairs with both values; PBVC recovery: median, minimum, maximum.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from msvol.errors import InputError
from msvol.evaluate_io import (
    Subject,
    detect_layout,
    load_labels,
    load_pair,
    read_candidates,
    read_synth,
    read_tree,
    shrinking_resolved_calls,
    voxel_volume_mm3,
)
from msvol.evaluate_lesions import (
    LARGE_NEW_LESION_MM3,
    NEW_SIZE_BIN_LABELS,
    NEW_SIZE_BINS_MM3,
    SIZE_BIN_LABELS,
    SIZE_BINS_MM3,
    f1,
    lesion_burden,
    mean,
    median,
    ratio,
    score_enlarging,
    score_new_lesions,
    score_scan,
    score_shrinking_resolved,
)
from msvol.evaluate_table import render_table

__all__ = [
    "DONT_COUNT_ENLARGING",
    "LARGE_NEW_LESION_MM3",
    "NEW_SIZE_BINS_MM3",
    "NEW_SIZE_BIN_LABELS",
    "SIZE_BINS_MM3",
    "SIZE_BIN_LABELS",
    "evaluate",
    "render_table",
    "score_enlarging",
    "score_new_lesions",
    "score_scan",
]

# Synth fates that look like growth but are no enlarging finding (msvol.synth.checkset writes them).
DONT_COUNT_ENLARGING = ("enlarging_by_merger", "enlarging_below_noise")
MIN_TRUE_PBVC_FOR_RECOVERY = 0.2  # percent: below it a ratio measured / true is noise, not recovery
_PAIR_KEYS = ("truth_new", "detected_new", "new_sensitivity", "truth_new_ge30", "detected_new_ge30",
              "new_sensitivity_ge30", "pred_new", "false_new", "detected_new_or_candidate",
              "new_sensitivity_or_candidate", "new_by_size", "candidates", "false_candidates", "truth_enlarging",
              "detected_enlarging", "enlarging_sensitivity", "pred_enlarging", "false_enlarging",
              "false_enlarging_dont_count", "pred_shrinking", "pred_resolved", "false_shrinking", "false_resolved",
              "false_shrinking_resolved", "pbvc_measured_percent", "pbvc_true_percent", "pbvc_error_percent",
              "pbvc_recovery", "scan_rescan", "rescan")


def evaluate(pred_root: Path, truth_root: Path) -> dict:
    """Compare an msvol output folder with a truth folder (layouts and metrics: module docstring).

    Returns
    -------
    dict, JSON-ready: truth_layout, size_bins_mm3, new_size_bins_mm3, overall, scans (one per
    subject/session), pairs (one per subject/interval), skipped (subject, session or interval, reason).

    Raises
    ------
    InputError : a folder is missing, no subject is in common or nothing can be evaluated, a file
        is unreadable, or a prediction and its truth are on different grids.
    """
    pred_root, truth_root = Path(pred_root), Path(truth_root)
    for root, role in ((pred_root, "prediction"), (truth_root, "truth")):
        if not root.is_dir():
            raise InputError(f"{root}: {role} folder not found; give an existing folder")
    layout, truth_dir = detect_layout(truth_root)
    predictions = read_tree(pred_root, pbvc_from_report=True)
    truths = read_synth(truth_dir) if layout == "synth" else read_tree(truth_dir, pbvc_from_report=False)
    common = sorted(predictions.keys() & truths.keys())
    if not common:
        raise InputError(f"{pred_root} and {truth_dir}: no subject in common (prediction: "
                         f"{_listing(predictions)}; truth: {_listing(truths)}); check that the folders match")
    skipped = [{"subject": subject, "reason": f"in {side} only"}
               for side, mine, other in (("prediction", predictions, truths), ("truth", truths, predictions))
               for subject in sorted(mine.keys() - other.keys())]
    scans, pairs = [], []
    for subject in common:
        pred, truth = predictions[subject], truths[subject]
        skipped += _one_sided(subject, pred.sessions, truth.sessions)
        for session in sorted(pred.sessions.keys() & truth.sessions.keys()):
            predicted, truth_labels, voxel_mm3 = load_pair(pred.sessions[session], truth.sessions[session])
            scans.append({"subject": subject, "session": session, **score_scan(
                predicted > 0, truth_labels > 0, voxel_mm3, truth_ids=truth_labels if layout == "synth" else None)})
        skipped += _one_sided(subject, pred.intervals, truth.intervals)
        for key in sorted(pred.intervals.keys() & truth.intervals.keys()):
            record, reasons = _score_pair(pred, truth, key)
            where = {"subject": subject, "from_session": key[0], "to_session": key[1]}
            pairs.append({**where, **record})
            skipped += [{**where, "reason": reason} for reason in reasons]
    if not scans and not pairs:
        raise InputError(f"{pred_root} and {truth_dir}: subjects {', '.join(common)} are on both sides but no "
                         f"session or interval is; check the session names")
    return {"truth_layout": layout, "pred_root": str(pred_root), "truth_root": str(truth_dir),
            "size_bins_mm3": _bins(SIZE_BIN_LABELS, SIZE_BINS_MM3),
            "new_size_bins_mm3": _bins(NEW_SIZE_BIN_LABELS, NEW_SIZE_BINS_MM3),
            "large_new_lesion_mm3": LARGE_NEW_LESION_MM3,
            "overall": _overall(scans, pairs), "scans": scans, "pairs": pairs, "skipped": skipped}


def _bins(labels, bins) -> dict:
    return {label: [low, None if math.isinf(high) else high] for label, (low, high) in zip(labels, bins)}


def _score_pair(pred_subject: Subject, truth_subject: Subject, key: tuple[str, str]) -> tuple[dict, list[str]]:
    """Metrics of one interval present on both sides, and the reasons for any metric left out."""
    pred, truth = pred_subject.intervals[key], truth_subject.intervals[key]
    truth_baseline, truth_followup = (truth_subject.sessions.get(session) for session in key)
    record, reasons = dict.fromkeys(_PAIR_KEYS), []
    fates = truth.get("fates")
    synth = fates is not None
    record["scan_rescan"] = bool(truth.get("scan_rescan", False))
    truth_new = truth_followup if synth else truth.get("new")
    if pred.get("new") is None:
        reasons.append("no predicted new_lesions.nii.gz: new-lesion metrics not computed")
    elif truth_new is None:
        reasons.append("no truth new lesions (generic: new_lesions.nii.gz; synth: follow-up labels and fates): "
                       "new-lesion metrics not computed")
    else:
        predicted, labels, voxel_mm3 = load_pair(pred["new"], truth_new)
        candidates = read_candidates(pred, pred_subject, key[1], truth_new)
        if synth:
            record.update(score_new_lesions(predicted > 0, np.isin(labels, _ids(fates, ("new",), truth_followup)),
                                            voxel_mm3, ignore=np.isin(labels, _ids(fates, ("new_below_minimum",),
                                                                                   truth_followup)),
                                            truth_ids=labels, candidates=candidates))
        else:
            record.update(score_new_lesions(predicted > 0, labels > 0, voxel_mm3, candidates=candidates))
    truth_enlarging = truth_followup if synth else truth.get("enlarging")
    if pred.get("enlarging") is not None and truth_enlarging is not None:
        predicted, labels, _ = load_pair(pred["enlarging"], truth_enlarging)
        if synth:
            record.update(score_enlarging(predicted > 0, np.isin(labels, _ids(fates, ("enlarging",), truth_followup)),
                                          np.isin(labels, _ids(fates, DONT_COUNT_ENLARGING, truth_followup)),
                                          truth_ids=labels))
        else:
            record.update(score_enlarging(predicted > 0, labels > 0, np.zeros(labels.shape, bool)))
    calls = shrinking_resolved_calls(pred)
    if synth and calls is not None and truth_baseline is not None and key[0] in pred_subject.sessions:
        predicted, labels, _ = load_pair(pred_subject.sessions[key[0]], truth_baseline)
        record.update(score_shrinking_resolved(calls, predicted, labels,
                                               _ids(fates, ("shrinking", "resolved"), truth_baseline)))
    measured, true = pred.get("pbvc"), truth.get("pbvc")
    record.update(pbvc_measured_percent=measured, pbvc_true_percent=true,
                  pbvc_error_percent=None if measured is None or true is None else round(measured - true, 9))
    if measured is not None and true is not None and abs(true) >= MIN_TRUE_PBVC_FOR_RECOVERY \
            and not record["scan_rescan"]:
        record["pbvc_recovery"] = measured / true
    if record["scan_rescan"]:
        record["rescan"] = _rescan(pred_subject, key, measured)
    return record, reasons


def _rescan(pred_subject: Subject, key: tuple[str, str], measured_pbvc: float | None) -> dict:
    """Per-visit lesion burden of an unchanged brain scanned twice, from the label maps and the report."""
    rescan = {"abs_pbvc_percent": None if measured_pbvc is None else abs(measured_pbvc)}
    burden = []
    for session in key:
        if session not in pred_subject.sessions:
            return rescan
        labels, affine = load_labels(pred_subject.sessions[session])
        burden.append(lesion_burden(labels, voxel_volume_mm3(affine)))
    (count_a, volume_a), (count_b, volume_b) = burden
    rescan.update(counts=[count_a, count_b], count_difference=count_b - count_a,
                  volumes_mm3=[volume_a, volume_b],
                  volume_difference_percent=None if volume_a == 0 else 100 * (volume_b - volume_a) / volume_a)
    reported = [pred_subject.timepoints.get(session) or {} for session in key]
    if all(entry.get("lesion_count") is not None for entry in reported):
        rescan["report_count_difference"] = int(reported[1]["lesion_count"]) - int(reported[0]["lesion_count"])
    if all(entry.get("lesion_volume_ml") for entry in reported):
        rescan["report_volume_difference_percent"] = 100 * (float(reported[1]["lesion_volume_ml"]) /
                                                            float(reported[0]["lesion_volume_ml"]) - 1)
    return rescan


def _ids(fates: dict, wanted: tuple[str, ...], source: Path | None) -> list[int]:
    try:
        return [int(lesion_id) for lesion_id, value in fates.items() if value in wanted]
    except ValueError as error:
        raise InputError(f"truth fates for {source}: lesion ids must be integers ({error})") from error


def _overall(scans: list[dict], pairs: list[dict]) -> dict:
    def total(rows, key):
        return sum(row[key] for row in rows if row[key] is not None)

    sensitivity = ratio(total(scans, "detected"), total(scans, "truth_lesions"))
    precision = ratio(total(scans, "true_positive_pred"), total(scans, "pred_lesions"))
    by_size = {label: {"truth": sum(scan["sensitivity_by_size"][label]["truth"] for scan in scans),
                       "detected": sum(scan["sensitivity_by_size"][label]["detected"] for scan in scans)}
               for label in SIZE_BIN_LABELS}
    for counts in by_size.values():
        counts["sensitivity"] = ratio(counts["detected"], counts["truth"])
    scored_new = [pair for pair in pairs if pair["truth_new"] is not None]
    new_by_size = {label: {name: sum(pair["new_by_size"][label][name] for pair in scored_new)
                           for name in ("truth", "reported", "reported_or_candidate")} for label in NEW_SIZE_BIN_LABELS}
    for counts in new_by_size.values():
        counts["sensitivity_reported"] = ratio(counts["reported"], counts["truth"])
        counts["sensitivity_reported_or_candidate"] = ratio(counts["reported_or_candidate"], counts["truth"])
    scored_enlarging = [pair for pair in pairs if pair["truth_enlarging"] is not None]
    scored_calls = [pair for pair in pairs if pair["false_shrinking_resolved"] is not None]
    errors = [pair["pbvc_error_percent"] for pair in pairs if pair["pbvc_error_percent"] is not None]
    recoveries = [pair["pbvc_recovery"] for pair in pairs if pair["pbvc_recovery"] is not None]
    rescans = [pair["rescan"] for pair in pairs if pair["rescan"]]
    below_100 = [new_by_size[label] for label in ("<30", "30-100")]
    return {
        "scans": len(scans), **{key: total(scans, key) for key in (
            "truth_lesions", "detected", "pred_lesions", "true_positive_pred", "false_positives")},
        "sensitivity": sensitivity, "precision": precision,
        "f1": _pooled_f1(scans, sensitivity, precision) if scans else None,
        "sensitivity_by_size": by_size,
        "mean_false_positives_per_scan": mean([scan["false_positives"] for scan in scans]),
        "mean_dice": mean([scan["dice"] for scan in scans]),
        "min_dice": min((scan["dice"] for scan in scans), default=None),
        "max_dice": max((scan["dice"] for scan in scans), default=None),
        "mean_volume_ratio": mean([scan["volume_ratio"] for scan in scans]),
        "pairs": len(pairs), "pairs_with_new_lesion_truth": len(scored_new),
        **{key: total(scored_new, key) for key in (
            "truth_new", "detected_new", "truth_new_ge30", "detected_new_ge30", "pred_new", "false_new",
            "detected_new_or_candidate", "candidates", "false_candidates")},
        "new_sensitivity": ratio(total(scored_new, "detected_new"), total(scored_new, "truth_new")),
        "new_sensitivity_ge30": ratio(total(scored_new, "detected_new_ge30"), total(scored_new, "truth_new_ge30")),
        "new_sensitivity_or_candidate": ratio(total(scored_new, "detected_new_or_candidate"),
                                              total(scored_new, "truth_new")),
        "new_by_size": new_by_size,
        "new_sensitivity_below_100": ratio(sum(b["reported"] for b in below_100), sum(b["truth"] for b in below_100)),
        "new_sensitivity_or_candidate_below_100": ratio(sum(b["reported_or_candidate"] for b in below_100),
                                                        sum(b["truth"] for b in below_100)),
        "mean_false_new_per_pair": mean([pair["false_new"] for pair in scored_new]),
        "mean_candidates_per_pair": mean([pair["candidates"] for pair in scored_new]),
        "pairs_with_enlarging_truth": len(scored_enlarging),
        **{key: total(scored_enlarging, key) for key in (
            "truth_enlarging", "detected_enlarging", "pred_enlarging", "false_enlarging", "false_enlarging_dont_count")},
        "enlarging_sensitivity": ratio(total(scored_enlarging, "detected_enlarging"),
                                       total(scored_enlarging, "truth_enlarging")),
        "mean_false_enlarging_per_pair": mean([pair["false_enlarging"] for pair in scored_enlarging]),
        "pairs_with_calls": len(scored_calls),
        **{key: total(scored_calls, key) for key in ("false_shrinking", "false_resolved", "false_shrinking_resolved")},
        "mean_false_shrinking_resolved_per_pair": mean([pair["false_shrinking_resolved"] for pair in scored_calls]),
        "pairs_with_pbvc": len(errors), "mean_pbvc_error_percent": mean(errors),
        "mean_abs_pbvc_error_percent": mean([abs(error) for error in errors]),
        "max_abs_pbvc_error_percent": max((abs(error) for error in errors), default=None),
        "pairs_with_pbvc_recovery": len(recoveries), "median_pbvc_recovery": median(recoveries),
        "min_pbvc_recovery": min(recoveries, default=None), "max_pbvc_recovery": max(recoveries, default=None),
        "scan_rescan_pairs": len(rescans),
        "scan_rescan_max_abs_count_difference": max((abs(r["count_difference"]) for r in rescans
                                                     if r.get("count_difference") is not None), default=None),
        "scan_rescan_max_abs_volume_difference_percent": max(
            (abs(r["volume_difference_percent"]) for r in rescans if r.get("volume_difference_percent") is not None),
            default=None),
        "scan_rescan_mean_abs_pbvc_percent": mean([r["abs_pbvc_percent"] for r in rescans]),
    }


def _pooled_f1(scans: list[dict], sensitivity, precision) -> float:
    return f1(sum(scan["truth_lesions"] for scan in scans), sum(scan["pred_lesions"] for scan in scans),
              sensitivity, precision)


def _one_sided(subject: str, pred: dict, truth: dict) -> list[dict]:
    """Skipped entries for the sessions (str keys) or intervals (tuple keys) only one side has."""
    entries = []
    for side, mine, other in (("prediction", pred, truth), ("truth", truth, pred)):
        for key in sorted(mine.keys() - other.keys()):
            where = {"from_session": key[0], "to_session": key[1]} if isinstance(key, tuple) else {"session": key}
            entries.append({"subject": subject, **where, "reason": f"in {side} only"})
    return entries


def _listing(subjects: dict) -> str:
    return ", ".join(f"sub-{subject}" for subject in sorted(subjects)) or "none"
