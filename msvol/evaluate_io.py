"""What msvol.evaluate reads: the prediction tree (msvol output), the two truth layouts, label maps
and, from report.json, the candidates and the shrinking/resolved calls (layouts: msvol.evaluate)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from msvol.errors import InputError

GRID_TOLERANCE = 1e-3  # largest accepted affine difference (mm) between a prediction and its truth
INTERVAL_NAME = re.compile(r"^ses-(.+)_to_ses-(.+)$")
CANDIDATE_MAPS = ("possible_new_lesions", "candidate_lesions")  # report files keys and interval file stems
CANDIDATE_STATUS = "possible_new"
CANDIDATE_RADIUS_MM = 2.0  # a candidate given by its centroid only covers this ball


@dataclass
class Subject:
    """What one side holds for one subject: session -> label map, (from, to) -> interval sources."""

    sessions: dict[str, Path] = field(default_factory=dict)
    # keys: "new", "enlarging" (Path | None), "pbvc" (float | None), "folder" (Path), "report" (its
    # intervals[] entry in report.json); synth truth: "fates" (dict | None), "scan_rescan" (bool)
    intervals: dict[tuple[str, str], dict] = field(default_factory=dict)
    timepoints: dict[str, dict] = field(default_factory=dict)  # session -> report.json timepoints[] entry
    folder: Path | None = None


def detect_layout(root: Path) -> tuple[str, Path]:
    if (root / "derivatives" / "truth").is_dir():
        return "synth", root / "derivatives" / "truth"
    if any(root.glob("sub-*/sub-*_truth.json")) or any(root.glob("sub-*/sub-*_ses-*_lesions.nii.gz")):
        return "synth", root
    if any(root.glob("sub-*/ses-*/lesions.nii.gz")):
        return "generic", root
    raise InputError(f"{root}: no truth label maps found; expected derivatives/truth/sub-XX/sub-XX_ses-YY_lesions"
                     f".nii.gz (msvol synth) or sub-XX/ses-YY/lesions.nii.gz (generic layout)")


def read_tree(root: Path, *, pbvc_from_report: bool) -> dict[str, Subject]:
    """The msvol output layout (predictions) or the generic truth layout that mirrors it."""
    subjects = {}
    for folder in sorted(path for path in root.glob("sub-*") if path.is_dir()):
        subject = Subject({path.parent.name[len("ses-"):]: path for path in folder.glob("ses-*/lesions.nii.gz")},
                          folder=folder)
        for path in folder.glob("intervals/ses-*_to_ses-*"):
            if match := INTERVAL_NAME.match(path.name):
                subject.intervals[match.groups()] = {
                    "folder": path, **{name: path / f"{name}_lesions.nii.gz"
                                       if (path / f"{name}_lesions.nii.gz").is_file() else None
                                       for name in ("new", "enlarging")}}
        if pbvc_from_report and (folder / "report.json").is_file():
            report = read_json(folder / "report.json")
            timepoints = report.get("timepoints") if isinstance(report, dict) else None
            subject.timepoints = {str(entry.get("session")): entry for entry in timepoints or []
                                  if isinstance(entry, dict)}
            for key, pbvc, entry in intervals_of(folder / "report.json"):
                subject.intervals.setdefault(key, {"new": None, "enlarging": None}).update(pbvc=pbvc, report=entry)
        elif not pbvc_from_report and (folder / "pbvc.json").is_file():
            for key, pbvc in read_pbvc_json(folder / "pbvc.json").items():
                subject.intervals.setdefault(key, {"new": None, "enlarging": None})["pbvc"] = pbvc
        subjects[folder.name[len("sub-"):]] = subject
    return subjects


def read_synth(root: Path) -> dict[str, Subject]:
    """The synth truth layout: per-session label maps and sub-XX_truth.json (fates, PBVC, scan_rescan)."""
    subjects = {}
    for folder in sorted(path for path in root.glob("sub-*") if path.is_dir()):
        name = folder.name
        pattern = re.compile(rf"^{re.escape(name)}_ses-(.+)_lesions\.nii\.gz$")
        subject = Subject({match.group(1): path for path in folder.glob(f"{name}_ses-*_lesions.nii.gz")
                           if (match := pattern.match(path.name))}, folder=folder)
        if (folder / f"{name}_truth.json").is_file():
            for key, pbvc, entry in intervals_of(folder / f"{name}_truth.json"):
                subject.intervals[key] = {"pbvc": pbvc, "fates": entry.get("fates"),
                                          "scan_rescan": bool(entry.get("scan_rescan", False))}
        subjects[name[len("sub-"):]] = subject
    return subjects


def intervals_of(path: Path) -> list[tuple[tuple[str, str], float | None, dict]]:
    """((from, to), pbvc_percent, entry) for each entry of intervals[] in a report.json or truth.json."""
    try:
        entries = read_json(path)["intervals"]
        return [((str(entry["from_session"]), str(entry["to_session"])),
                 None if entry.get("pbvc_percent") is None else float(entry["pbvc_percent"]), entry)
                for entry in entries]
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"{path}: expected intervals[] with from_session, to_session and pbvc_percent "
                         f"({type(error).__name__}: {error})") from error


def read_pbvc_json(path: Path) -> dict[tuple[str, str], float]:
    values = read_json(path)
    if not isinstance(values, dict):
        raise InputError(f"{path}: expected {{\"ses-AA_to_ses-BB\": pbvc_percent, ...}}, found {type(values).__name__}")
    parsed = {}
    for name, pbvc in values.items():
        match = INTERVAL_NAME.match(name)
        if not match or isinstance(pbvc, bool) or not isinstance(pbvc, (int, float)):
            raise InputError(f"{path}: expected {{\"ses-AA_to_ses-BB\": pbvc_percent, ...}}, found "
                             f"{name!r}: {pbvc!r}")
        parsed[match.groups()] = float(pbvc)
    return parsed


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: cannot be read as JSON ({error})") from error


def load_labels(path: Path) -> tuple[np.ndarray, np.ndarray]:
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


def load_pair(pred_path: Path, truth_path: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """Prediction and truth labels on one grid, and the voxel volume in mm3; InputError if grids differ."""
    predicted, pred_affine = load_labels(pred_path)
    truth, truth_affine = load_labels(truth_path)
    if predicted.shape != truth.shape or not np.allclose(pred_affine, truth_affine, rtol=0, atol=GRID_TOLERANCE):
        raise InputError(
            f"{pred_path}: grid differs from its truth {truth_path} (shape {predicted.shape} vs {truth.shape}, "
            f"affine {np.round(pred_affine, 3).tolist()} vs {np.round(truth_affine, 3).tolist()}); the "
            f"prediction must be on the truth grid: resample it (nearest neighbour) or check the pairing")
    return predicted, truth, voxel_volume_mm3(truth_affine)


def voxel_volume_mm3(affine: np.ndarray) -> float:
    # det() of diag(2, 2, 2) is 7.999999999999998: round so that volumes print as the counts they are
    return round(float(abs(np.linalg.det(affine[:3, :3]))), 9)


def read_candidates(interval: dict, subject: Subject, followup_session: str, truth_path: Path) -> np.ndarray:
    """One label per 'possible new lesion' candidate of an interval, on the follow-up grid (module
    docstring of msvol.evaluate: where they are read from); all zeros when there are none."""
    entry = interval.get("report") or {}
    files = entry.get("files") if isinstance(entry.get("files"), dict) else {}
    maps = [subject.folder / files[key] for key in CANDIDATE_MAPS if isinstance(files.get(key), str)]
    maps += [interval["folder"] / f"{stem}.nii.gz" for stem in CANDIDATE_MAPS if interval.get("folder")]
    for path in maps:
        if path.is_file():
            labels, _, _ = load_pair(path, truth_path)
            return ndimage.label(labels > 0, structure=np.ones((3, 3, 3), bool))[0].astype(np.int32)
    listed = [item for item in (entry.get("candidates") or []) if isinstance(item, dict)]
    seen = {item.get("id") for item in listed if item.get("id") is not None}
    listed += [lesion for lesion in (entry.get("lesions") or []) if isinstance(lesion, dict)
               and lesion.get("status") == CANDIDATE_STATUS and (lesion.get("id") is None or lesion["id"] not in seen)]
    truth, affine = load_labels(truth_path)
    candidates = np.zeros(truth.shape, np.int32)
    if not listed:
        return candidates
    followup = world = None
    for number, item in enumerate(listed, start=1):
        labels = [int(label) for label in item.get("followup_labels") or []]
        if labels and followup_session in subject.sessions:
            if followup is None:
                followup, _, _ = load_pair(subject.sessions[followup_session], truth_path)
            candidates[np.isin(followup, labels) & (candidates == 0)] = number
        elif item.get("centroid_mm") is not None:
            if world is None:
                world = (affine[:3, :3] @ np.indices(truth.shape, dtype=np.float32).reshape(3, -1)
                         + affine[:3, 3:4]).reshape(3, *truth.shape)
            offset = world - np.asarray(item["centroid_mm"], dtype=float).reshape(3, 1, 1, 1)
            candidates[((offset ** 2).sum(axis=0) <= CANDIDATE_RADIUS_MM ** 2) & (candidates == 0)] = number
    return candidates


def shrinking_resolved_calls(interval: dict) -> list[tuple[str, tuple[int, ...]]] | None:
    """(status, baseline labels) of each shrinking or resolved lesion in the interval's report.json
    entry; None when the entry has no lesions list (not scored)."""
    entry = interval.get("report") or {}
    if not isinstance(entry.get("lesions"), list):
        return None
    return [(lesion["status"], tuple(int(label) for label in lesion.get("baseline_labels") or []))
            for lesion in entry["lesions"] if isinstance(lesion, dict) and lesion.get("status") in ("shrinking", "resolved")]
