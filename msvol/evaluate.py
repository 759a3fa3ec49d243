"""Evaluate msvol results against annotated truth: lesion detection and overlap per scan,
new-lesion detection and PBVC error per interval, pooled over a cohort.

Inputs
------
pred_root : an msvol output folder (pipeline.py): sub-XX/ses-YY/lesions.nii.gz,
    sub-XX/intervals/ses-AA_to_ses-BB/{new,enlarging}_lesions.nii.gz (ses-BB grid), sub-XX/report.json.
truth_root : one of two layouts, detected automatically:
    "synth"   an msvol synth BIDS dataset or its derivatives/truth folder:
              sub-XX/sub-XX_ses-YY_lesions.nii.gz (value = lesion id, the same id across visits) and
              sub-XX/sub-XX_truth.json (intervals[]: from_session, to_session, pbvc_percent, fates).
    "generic" the prediction layout: sub-XX/ses-YY/lesions.nii.gz; optional
              sub-XX/intervals/ses-AA_to_ses-BB/new_lesions.nii.gz (and enlarging_lesions.nii.gz);
              optional sub-XX/pbvc.json = {"ses-AA_to_ses-BB": pbvc_percent, ...}.
Every subject, session and interval present on both sides is evaluated; what one side lacks is
listed under "skipped" with the reason. A prediction and its truth must share a grid (same shape,
affines equal within 1e-3): nothing is resampled here.

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
      new_sensitivity_ge30: the same over truth new lesions of volume >= 30 mm3 (inclusive).
  false_new = predicted new lesions (components of new_lesions.nii.gz > 0) overlapping no truth new
      lesion (and, synth, no new_below_minimum lesion).
  enlarging_sensitivity = truth enlarging lesions (synth fate "enlarging"; generic: optional truth
      enlarging_lesions.nii.gz) overlapped by predicted enlarging_lesions.nii.gz / truth enlarging lesions.
  pbvc_error_percent = measured - true PBVC in percentage points (negative: more loss measured than true).
Overall : counts are summed before dividing (pooled sensitivity, precision, per size bin, new and
  enlarging sensitivity; f1 from the pooled P and R); dice and volume_ratio are means over the scans
  where defined; false positives per scan and false new per pair are means; PBVC error: signed mean,
  mean absolute and maximum absolute over the pairs with both values.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from msvol.errors import InputError

SIZE_BINS_MM3 = ((0.0, 100.0), (100.0, 500.0), (500.0, math.inf))
SIZE_BIN_LABELS = ("<100", "100-500", ">500")
LARGE_NEW_LESION_MM3 = 30.0  # msvol choice: inclusive; a 30 mm3 sphere is ~3.9 mm across
GRID_TOLERANCE = 1e-3  # largest accepted affine difference (mm) between a prediction and its truth
_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity
_INTERVAL_NAME = re.compile(r"^ses-(.+)_to_ses-(.+)$")
_PAIR_KEYS = ("truth_new", "detected_new", "new_sensitivity", "truth_new_ge30", "detected_new_ge30",
              "new_sensitivity_ge30", "pred_new", "false_new", "truth_enlarging", "detected_enlarging",
              "enlarging_sensitivity", "pbvc_measured_percent", "pbvc_true_percent", "pbvc_error_percent")


@dataclass
class _Subject:
    """What one side holds for one subject: session -> label map, (from, to) -> interval sources."""

    sessions: dict[str, Path] = field(default_factory=dict)
    # keys: "new", "enlarging" (Path | None), "pbvc" (float | None), "fates" (dict | None; synth truth)
    intervals: dict[tuple[str, str], dict] = field(default_factory=dict)


# ----------------------------------------------------------------------------- metrics (pure)

def score_scan(predicted: np.ndarray, truth: np.ndarray, voxel_mm3: float, *,
               truth_ids: np.ndarray | None = None) -> dict:
    """Lesion-wise and voxel-wise agreement of two boolean masks on one grid (module docstring).

    `truth_ids`, when given, names the truth lesions (synth: one generator lesion may be in pieces).
    """
    detected, truth_voxels = _components_hit(truth, predicted, truth_ids)
    true_positive, _ = _components_hit(predicted, truth)
    n_truth, n_pred, n_detected, n_true_positive = (len(detected), len(true_positive), int(detected.sum()),
                                                    int(true_positive.sum()))
    overlap, predicted_total, truth_total = (int(np.count_nonzero(predicted & truth)),
                                             int(np.count_nonzero(predicted)), int(np.count_nonzero(truth)))
    sensitivity, precision = _ratio(n_detected, n_truth), _ratio(n_true_positive, n_pred)
    return {
        "truth_lesions": n_truth, "pred_lesions": n_pred, "detected": n_detected,
        "true_positive_pred": n_true_positive, "false_positives": n_pred - n_true_positive,
        "sensitivity": sensitivity, "precision": precision, "f1": _f1(n_truth, n_pred, sensitivity, precision),
        "sensitivity_by_size": _by_size(truth_voxels * voxel_mm3, detected),
        "dice": 1.0 if predicted_total + truth_total == 0 else 2 * overlap / (predicted_total + truth_total),
        "truth_volume_mm3": truth_total * voxel_mm3, "pred_volume_mm3": predicted_total * voxel_mm3,
        "volume_ratio": _ratio(predicted_total, truth_total),
    }


def score_new_lesions(predicted: np.ndarray, truth: np.ndarray, voxel_mm3: float, *,
                      ignore: np.ndarray | None = None, truth_ids: np.ndarray | None = None) -> dict:
    """New-lesion detection for one interval from boolean masks; `ignore` marks lesions that are
    neither required nor false (synth new_below_minimum); `truth_ids` as in score_scan."""
    detected, truth_voxels = _components_hit(truth, predicted, truth_ids)
    matched, _ = _components_hit(predicted, truth if ignore is None else truth | ignore)
    large = truth_voxels * voxel_mm3 >= LARGE_NEW_LESION_MM3
    return {
        "truth_new": len(detected), "detected_new": int(detected.sum()),
        "new_sensitivity": _ratio(int(detected.sum()), len(detected)),
        "truth_new_ge30": int(large.sum()), "detected_new_ge30": int((detected & large).sum()),
        "new_sensitivity_ge30": _ratio(int((detected & large).sum()), int(large.sum())),
        "pred_new": len(matched), "false_new": int((~matched).sum()),
    }


def _components_hit(mask: np.ndarray, other: np.ndarray,
                    ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For each lesion of `mask`: whether it overlaps `other`, and its voxel count.

    Lesions are the 26-connected components of `mask`, or, when `ids` is given, its distinct ids.
    """
    if ids is None:
        labels, count = ndimage.label(mask, structure=_CONNECTIVITY)
    else:
        present = np.union1d([0], ids[mask])
        labels, count = np.searchsorted(present, np.where(mask, ids, 0)), len(present) - 1
    hit = np.bincount(labels[other], minlength=count + 1)[1:] > 0
    return hit, np.bincount(labels.ravel(), minlength=count + 1)[1:]


def _by_size(volumes_mm3: np.ndarray, detected: np.ndarray) -> dict:
    bins = {}
    for label, (low, high) in zip(SIZE_BIN_LABELS, SIZE_BINS_MM3):
        inside = (volumes_mm3 >= low) & (volumes_mm3 < high)
        bins[label] = {"truth": int(inside.sum()), "detected": int((inside & detected).sum()),
                       "sensitivity": _ratio(int((inside & detected).sum()), int(inside.sum()))}
    return bins


def _ratio(numerator: float, denominator: float) -> float | None:
    return None if denominator == 0 else numerator / denominator


def _f1(n_truth: int, n_pred: int, sensitivity: float | None, precision: float | None) -> float:
    if n_truth == 0 and n_pred == 0:
        return 1.0
    if sensitivity is None or precision is None or sensitivity + precision == 0:
        return 0.0
    return 2 * sensitivity * precision / (sensitivity + precision)


def _mean(values: list) -> float | None:
    values = [value for value in values if value is not None]
    return sum(values) / len(values) if values else None


# ----------------------------------------------------------------------------- evaluation

def evaluate(pred_root: Path, truth_root: Path) -> dict:
    """Compare an msvol output folder with a truth folder (layouts and metrics: module docstring).

    Returns
    -------
    dict, JSON-ready: truth_layout, size_bins_mm3, overall, scans (one per subject/session),
    pairs (one per subject/interval), skipped (subject, session or interval, reason).

    Raises
    ------
    InputError : a folder is missing, no subject is in common or nothing can be evaluated, a file
        is unreadable, or a prediction and its truth are on different grids.
    """
    pred_root, truth_root = Path(pred_root), Path(truth_root)
    for root, role in ((pred_root, "prediction"), (truth_root, "truth")):
        if not root.is_dir():
            raise InputError(f"{root}: {role} folder not found; give an existing folder")
    layout, truth_dir = _detect_layout(truth_root)
    predictions = _read_tree(pred_root, pbvc_from_report=True)
    truths = _read_synth(truth_dir) if layout == "synth" else _read_tree(truth_dir, pbvc_from_report=False)
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
            predicted, truth_labels, voxel_mm3 = _load_pair(pred.sessions[session], truth.sessions[session])
            scans.append({"subject": subject, "session": session, **score_scan(
                predicted > 0, truth_labels > 0, voxel_mm3, truth_ids=truth_labels if layout == "synth" else None)})
        skipped += _one_sided(subject, pred.intervals, truth.intervals)
        for key in sorted(pred.intervals.keys() & truth.intervals.keys()):
            record, reasons = _score_pair(pred.intervals[key], truth.intervals[key], truth.sessions.get(key[1]))
            where = {"subject": subject, "from_session": key[0], "to_session": key[1]}
            pairs.append({**where, **record})
            skipped += [{**where, "reason": reason} for reason in reasons]
    if not scans and not pairs:
        raise InputError(f"{pred_root} and {truth_dir}: subjects {', '.join(common)} are on both sides but no "
                         f"session or interval is; check the session names")
    return {"truth_layout": layout, "pred_root": str(pred_root), "truth_root": str(truth_dir),
            "size_bins_mm3": {label: [low, None if math.isinf(high) else high]
                              for label, (low, high) in zip(SIZE_BIN_LABELS, SIZE_BINS_MM3)},
            "large_new_lesion_mm3": LARGE_NEW_LESION_MM3,
            "overall": _overall(scans, pairs), "scans": scans, "pairs": pairs, "skipped": skipped}


def _score_pair(pred: dict, truth: dict, truth_followup: Path | None) -> tuple[dict, list[str]]:
    """Metrics of one interval present on both sides, and the reasons for any metric left out."""
    record, reasons = dict.fromkeys(_PAIR_KEYS), []
    fates = truth.get("fates")
    synth = fates is not None
    truth_new = truth_followup if synth else truth.get("new")
    if pred.get("new") is None:
        reasons.append("no predicted new_lesions.nii.gz: new-lesion metrics not computed")
    elif truth_new is None:
        reasons.append("no truth new lesions (generic: new_lesions.nii.gz; synth: follow-up labels and fates): "
                       "new-lesion metrics not computed")
    else:
        predicted, labels, voxel_mm3 = _load_pair(pred["new"], truth_new)
        if synth:
            record.update(score_new_lesions(predicted > 0, np.isin(labels, _ids(fates, "new", truth_followup)),
                                            voxel_mm3, ignore=np.isin(labels, _ids(fates, "new_below_minimum",
                                                                                   truth_followup)),
                                            truth_ids=labels))
        else:
            record.update(score_new_lesions(predicted > 0, labels > 0, voxel_mm3))
    truth_enlarging = truth_followup if synth else truth.get("enlarging")
    if pred.get("enlarging") is not None and truth_enlarging is not None:
        predicted, labels, _ = _load_pair(pred["enlarging"], truth_enlarging)
        enlarging = np.isin(labels, _ids(fates, "enlarging", truth_followup)) if synth else labels > 0
        detected, _ = _components_hit(enlarging, predicted > 0, labels if synth else None)
        record.update(truth_enlarging=len(detected), detected_enlarging=int(detected.sum()),
                      enlarging_sensitivity=_ratio(int(detected.sum()), len(detected)))
    measured, true = pred.get("pbvc"), truth.get("pbvc")
    record.update(pbvc_measured_percent=measured, pbvc_true_percent=true,
                  pbvc_error_percent=None if measured is None or true is None else round(measured - true, 9))
    return record, reasons


def _ids(fates: dict, fate: str, source: Path | None) -> list[int]:
    try:
        return [int(lesion_id) for lesion_id, value in fates.items() if value == fate]
    except ValueError as error:
        raise InputError(f"truth fates for {source}: lesion ids must be integers ({error})") from error


def _overall(scans: list[dict], pairs: list[dict]) -> dict:
    def total(rows, key):
        return sum(row[key] for row in rows if row[key] is not None)

    sensitivity = _ratio(total(scans, "detected"), total(scans, "truth_lesions"))
    precision = _ratio(total(scans, "true_positive_pred"), total(scans, "pred_lesions"))
    by_size = {label: {"truth": sum(scan["sensitivity_by_size"][label]["truth"] for scan in scans),
                       "detected": sum(scan["sensitivity_by_size"][label]["detected"] for scan in scans)}
               for label in SIZE_BIN_LABELS}
    for counts in by_size.values():
        counts["sensitivity"] = _ratio(counts["detected"], counts["truth"])
    scored_new = [pair for pair in pairs if pair["truth_new"] is not None]
    scored_enlarging = [pair for pair in pairs if pair["truth_enlarging"] is not None]
    errors = [pair["pbvc_error_percent"] for pair in pairs if pair["pbvc_error_percent"] is not None]
    return {
        "scans": len(scans), **{key: total(scans, key) for key in (
            "truth_lesions", "detected", "pred_lesions", "true_positive_pred", "false_positives")},
        "sensitivity": sensitivity, "precision": precision,
        "f1": _f1(total(scans, "truth_lesions"), total(scans, "pred_lesions"), sensitivity, precision)
        if scans else None,
        "sensitivity_by_size": by_size,
        "mean_false_positives_per_scan": _mean([scan["false_positives"] for scan in scans]),
        "mean_dice": _mean([scan["dice"] for scan in scans]),
        "mean_volume_ratio": _mean([scan["volume_ratio"] for scan in scans]),
        "pairs": len(pairs), "pairs_with_new_lesion_truth": len(scored_new),
        **{key: total(scored_new, key) for key in (
            "truth_new", "detected_new", "truth_new_ge30", "detected_new_ge30", "pred_new", "false_new")},
        "new_sensitivity": _ratio(total(scored_new, "detected_new"), total(scored_new, "truth_new")),
        "new_sensitivity_ge30": _ratio(total(scored_new, "detected_new_ge30"), total(scored_new, "truth_new_ge30")),
        "mean_false_new_per_pair": _mean([pair["false_new"] for pair in scored_new]),
        "pairs_with_enlarging_truth": len(scored_enlarging),
        "truth_enlarging": total(scored_enlarging, "truth_enlarging"),
        "detected_enlarging": total(scored_enlarging, "detected_enlarging"),
        "enlarging_sensitivity": _ratio(total(scored_enlarging, "detected_enlarging"),
                                        total(scored_enlarging, "truth_enlarging")),
        "pairs_with_pbvc": len(errors), "mean_pbvc_error_percent": _mean(errors),
        "mean_abs_pbvc_error_percent": _mean([abs(error) for error in errors]),
        "max_abs_pbvc_error_percent": max((abs(error) for error in errors), default=None),
    }


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


# ----------------------------------------------------------------------------- reading

def _detect_layout(root: Path) -> tuple[str, Path]:
    if (root / "derivatives" / "truth").is_dir():
        return "synth", root / "derivatives" / "truth"
    if any(root.glob("sub-*/sub-*_truth.json")) or any(root.glob("sub-*/sub-*_ses-*_lesions.nii.gz")):
        return "synth", root
    if any(root.glob("sub-*/ses-*/lesions.nii.gz")):
        return "generic", root
    raise InputError(f"{root}: no truth label maps found; expected derivatives/truth/sub-XX/sub-XX_ses-YY_lesions"
                     f".nii.gz (msvol synth) or sub-XX/ses-YY/lesions.nii.gz (generic layout)")


def _read_tree(root: Path, *, pbvc_from_report: bool) -> dict[str, _Subject]:
    """The msvol output layout (predictions) or the generic truth layout that mirrors it."""
    subjects = {}
    for folder in sorted(path for path in root.glob("sub-*") if path.is_dir()):
        subject = _Subject({path.parent.name[len("ses-"):]: path for path in folder.glob("ses-*/lesions.nii.gz")})
        for path in folder.glob("intervals/ses-*_to_ses-*"):
            if match := _INTERVAL_NAME.match(path.name):
                subject.intervals[match.groups()] = {
                    name: path / f"{name}_lesions.nii.gz" if (path / f"{name}_lesions.nii.gz").is_file() else None
                    for name in ("new", "enlarging")}
        if pbvc_from_report and (folder / "report.json").is_file():
            measured = {key: pbvc for key, pbvc, _ in _intervals_of(folder / "report.json")}
        elif not pbvc_from_report and (folder / "pbvc.json").is_file():
            measured = _read_pbvc_json(folder / "pbvc.json")
        else:
            measured = {}
        for key, pbvc in measured.items():
            subject.intervals.setdefault(key, {"new": None, "enlarging": None})["pbvc"] = pbvc
        subjects[folder.name[len("sub-"):]] = subject
    return subjects


def _read_synth(root: Path) -> dict[str, _Subject]:
    """The synth truth layout: per-session label maps and sub-XX_truth.json (fates, PBVC)."""
    subjects = {}
    for folder in sorted(path for path in root.glob("sub-*") if path.is_dir()):
        name = folder.name
        pattern = re.compile(rf"^{re.escape(name)}_ses-(.+)_lesions\.nii\.gz$")
        subject = _Subject({match.group(1): path for path in folder.glob(f"{name}_ses-*_lesions.nii.gz")
                            if (match := pattern.match(path.name))})
        if (folder / f"{name}_truth.json").is_file():
            for key, pbvc, entry in _intervals_of(folder / f"{name}_truth.json"):
                subject.intervals[key] = {"pbvc": pbvc, "fates": entry.get("fates")}
        subjects[name[len("sub-"):]] = subject
    return subjects


def _intervals_of(path: Path) -> list[tuple[tuple[str, str], float | None, dict]]:
    """((from, to), pbvc_percent, entry) for each entry of intervals[] in a report.json or truth.json."""
    try:
        entries = _read_json(path)["intervals"]
        return [((str(entry["from_session"]), str(entry["to_session"])),
                 None if entry.get("pbvc_percent") is None else float(entry["pbvc_percent"]), entry)
                for entry in entries]
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"{path}: expected intervals[] with from_session, to_session and pbvc_percent "
                         f"({type(error).__name__}: {error})") from error


def _read_pbvc_json(path: Path) -> dict[tuple[str, str], float]:
    values = _read_json(path)
    if not isinstance(values, dict):
        raise InputError(f"{path}: expected {{\"ses-AA_to_ses-BB\": pbvc_percent, ...}}, found {type(values).__name__}")
    parsed = {}
    for name, pbvc in values.items():
        match = _INTERVAL_NAME.match(name)
        if not match or isinstance(pbvc, bool) or not isinstance(pbvc, (int, float)):
            raise InputError(f"{path}: expected {{\"ses-AA_to_ses-BB\": pbvc_percent, ...}}, found "
                             f"{name!r}: {pbvc!r}")
        parsed[match.groups()] = float(pbvc)
    return parsed


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: cannot be read as JSON ({error})") from error


def _load_labels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Integer label array and affine of a 3D NIfTI."""
    import nibabel as nib

    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel raises many types (ImageFileError, EOFError, zlib.error, OSError)
        raise InputError(f"{path}: cannot be read as NIfTI ({type(error).__name__}: {error})") from error
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3D label map, found shape {data.shape}")
    if not np.issubdtype(data.dtype, np.integer):
        data = np.rint(data).astype(np.int64)
    return data, image.affine


def _load_pair(pred_path: Path, truth_path: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """Prediction and truth labels on one grid, and the voxel volume in mm3; InputError if grids differ."""
    predicted, pred_affine = _load_labels(pred_path)
    truth, truth_affine = _load_labels(truth_path)
    if predicted.shape != truth.shape or not np.allclose(pred_affine, truth_affine, rtol=0, atol=GRID_TOLERANCE):
        raise InputError(
            f"{pred_path}: grid differs from its truth {truth_path} (shape {predicted.shape} vs {truth.shape}, "
            f"affine {np.round(pred_affine, 3).tolist()} vs {np.round(truth_affine, 3).tolist()}); the "
            f"prediction must be on the truth grid: resample it (nearest neighbour) or check the pairing")
    # det() of diag(2, 2, 2) is 7.999999999999998: round so that volumes print as the counts they are
    return predicted, truth, round(float(abs(np.linalg.det(truth_affine[:3, :3]))), 9)


# ----------------------------------------------------------------------------- table

def render_table(result: dict) -> str:
    """A plain-text summary: pooled figures, then one line per scan and per pair, then what was skipped."""
    overall = result["overall"]
    lines = [f"msvol evaluation: {overall['scans']} scans, {overall['pairs']} pairs "
             f"(truth layout: {result['truth_layout']})", "",
             "Lesions per scan (26-connected components; detected = any overlap)",
             f"{'scan':<24}{'truth':>6}{'pred':>6}{'det':>6}{'FP':>5}{'sens':>7}{'prec':>7}{'F1':>7}{'Dice':>7}"
             f"{'vol ratio':>10}"]
    rows = [("all (pooled; mean Dice)", {**overall, "dice": overall["mean_dice"],
                                          "volume_ratio": overall["mean_volume_ratio"]})]
    rows += [(f"sub-{scan['subject']} ses-{scan['session']}", scan) for scan in result["scans"]]
    for name, row in rows:
        lines.append(f"{name:<24}{row['truth_lesions']:>6}{row['pred_lesions']:>6}{row['detected']:>6}"
                     f"{row['false_positives']:>5}{_cell(row['sensitivity']):>7}{_cell(row['precision']):>7}"
                     f"{_cell(row['f1']):>7}{_cell(row['dice']):>7}{_cell(row['volume_ratio']):>10}")
    lines.append("Sensitivity by truth lesion volume (mm3, pooled): " + "; ".join(
        f"{label} {counts['detected']}/{counts['truth']} = {_cell(counts['sensitivity'])}"
        for label, counts in overall["sensitivity_by_size"].items()))
    lines += ["", "New lesions and PBVC per pair (PBVC error = measured - true, percentage points)",
              f"{'pair':<32}{'new':>5}{'det':>5}{'sens':>7}{'>=30':>6}{'sens':>7}{'false':>7}{'enl sens':>9}"
              f"{'PBVC err':>10}"]
    rows = [("all (pooled)", {**overall, "pbvc_error_percent": overall["mean_pbvc_error_percent"]})]
    rows += [(f"sub-{pair['subject']} ses-{pair['from_session']}->ses-{pair['to_session']}", pair)
             for pair in result["pairs"]]
    for name, row in rows:
        lines.append(f"{name:<32}{_cell(row['truth_new'], 0):>5}{_cell(row['detected_new'], 0):>5}"
                     f"{_cell(row['new_sensitivity']):>7}{_cell(row['truth_new_ge30'], 0):>6}"
                     f"{_cell(row['new_sensitivity_ge30']):>7}{_cell(row['false_new'], 0):>7}"
                     f"{_cell(row['enlarging_sensitivity']):>9}{_cell(row['pbvc_error_percent'], 3, '+'):>10}")
    lines.append(f"Mean false new lesions per pair: {_cell(overall['mean_false_new_per_pair'], 2)}; "
                 f"PBVC |error| mean {_cell(overall['mean_abs_pbvc_error_percent'])}, "
                 f"max {_cell(overall['max_abs_pbvc_error_percent'])} over {overall['pairs_with_pbvc']} pairs")
    if result["skipped"]:
        lines += ["", "Skipped"]
        for entry in result["skipped"]:
            where = (f" ses-{entry['session']}" if "session" in entry else
                     f" ses-{entry['from_session']}->ses-{entry['to_session']}" if "from_session" in entry else "")
            lines.append(f"  sub-{entry['subject']}{where}: {entry['reason']}")
    return "\n".join(lines) + "\n"


def _cell(value, digits: int = 3, sign: str = "") -> str:
    if value is None:
        return "-"
    return str(value) if digits == 0 else f"{value:{sign}.{digits}f}"
