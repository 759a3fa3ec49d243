"""Ingest: a BIDS dataset or one BIDS subject folder -> Patient. The only reader of raw input.

Layout read: sub-XX/ses-YY/anat/sub-XX_ses-YY[_...]_FLAIR.nii[.gz] and ..._T1w.nii[.gz];
visit dates from sub-XX/sub-XX_sessions.tsv (`acq_time`, ISO 8601); optional BIDS JSON
sidecars give scanner facts. All visits of a subject are checked before anything heavy runs,
and every problem is reported at once.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

import numpy as np

from msvol.config import IngestParams
from msvol.datatypes import Acquisition, Patient, Visit, Volume
from msvol.errors import InputError

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def find_subjects(path: Path) -> list[Path]:
    """Subject folders under a BIDS root, or [path] when path is itself a sub-* folder."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: not a folder; expected a BIDS dataset or a sub-* folder")
    if path.name.startswith("sub-"):
        return [path]
    subjects = sorted(p for p in path.glob("sub-*") if p.is_dir())
    if not subjects:
        raise InputError(f"{path}: no sub-* folders found; expected a BIDS dataset (sub-XX/ses-YY/anat/...)")
    return subjects


def load_patient(subject_dir: Path, params: IngestParams = IngestParams()) -> Patient:
    """Read and validate every visit of one subject.

    Raises
    ------
    InputError listing every problem found (missing or unreadable images, 2D/4D data, thick
    slices, images too small to be a head, missing dates), each naming its file.
    """
    subject_dir = Path(subject_dir)
    subject = subject_dir.name.removeprefix("sub-")
    sessions = sorted(p for p in subject_dir.glob("ses-*") if (p / "anat").is_dir())
    if not sessions:
        raise InputError(f"{subject_dir}: no ses-*/anat folders found")
    dates, problems = _read_dates(subject_dir, subject), []
    visits = []
    for session_dir in sessions:
        session = session_dir.name.removeprefix("ses-")
        images = {}
        for suffix, kind in (("FLAIR", "FLAIR"), ("T1w", "T1w")):
            try:
                images[kind] = _load_volume(_find_image(session_dir / "anat", suffix), kind, params)
            except InputError as exc:
                problems.append(str(exc))
        if session not in dates:
            problems.append(f"{subject_dir / f'sub-{subject}_sessions.tsv'}: no acq_time for ses-{session}; "
                            f"add a row 'ses-{session}<TAB>YYYY-MM-DD' so intervals can be annualised")
        if len(images) == 2 and session in dates:
            visits.append(Visit(session, dates[session], images["FLAIR"], images["T1w"],
                                _read_acquisition(session_dir / "anat")))
    if problems:
        raise InputError("\n".join(problems))
    visits.sort(key=lambda visit: visit.date)
    for earlier, later in zip(visits, visits[1:]):
        if earlier.date == later.date:
            raise InputError(f"{subject_dir}: ses-{earlier.session} and ses-{later.session} have the same date "
                             f"{later.date}; msvol needs one exam per day")
    return Patient(subject, tuple(visits))


def _read_dates(subject_dir: Path, subject: str) -> dict[str, dt.date]:
    table = subject_dir / f"sub-{subject}_sessions.tsv"
    if not table.is_file():
        return {}
    dates = {}
    with table.open(newline="", encoding="utf-8-sig") as handle:  # spreadsheet exports add a BOM
        for row in csv.DictReader(handle, delimiter="\t"):
            session = (row.get("session_id") or "").removeprefix("ses-")
            stamp = (row.get("acq_time") or "").strip()
            try:
                dates[session] = dt.date.fromisoformat(stamp[:10])
            except ValueError:
                continue  # reported as a missing date for that session
    return dates


def _find_image(anat: Path, suffix: str) -> Path:
    candidates = sorted(p for p in anat.iterdir() if any(p.name.endswith(f"_{suffix}{ext}") for ext in NIFTI_SUFFIXES))
    if not candidates:
        raise InputError(f"{anat}: no *_{suffix}.nii.gz found; msvol needs a 3D FLAIR and a 3D T1w per session")
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise InputError(f"{anat}: several *_{suffix} images ({names}); keep one per session")
    return candidates[0]


def _load_volume(path: Path, kind: str, params: IngestParams) -> Volume:
    import nibabel as nib

    try:
        image = nib.load(path)
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for truncated or corrupt files
        raise InputError(f"{path}: cannot read the NIfTI image ({type(exc).__name__}: {exc}); "
                         f"the file may be truncated or not NIfTI") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 4:
        raise InputError(f"{path}: 4D image with {data.shape[3]} volumes; msvol needs one 3D {kind} volume")
    validate_volume(data, image.affine, path, kind, params)
    return Volume(data, image.affine.astype(np.float64), kind, path)


def validate_volume(data: np.ndarray, affine: np.ndarray, path: Path, kind: str, params: IngestParams) -> None:
    """InputError naming `path` unless the image is one usable 3D head volume (NIfTI and DICOM alike)."""
    if data.ndim != 3 or min(data.shape) == 1:
        raise InputError(f"{path}: image of shape {data.shape} is 2D; msvol needs a 3D {kind} acquisition")
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if spacing.max() > params.max_voxel_size_mm:
        raise InputError(f"{path}: voxels are {spacing.max():.1f} mm thick (spacing {np.round(spacing, 2).tolist()}); "
                         f"a 3D acquisition of at most {params.max_voxel_size_mm} mm is needed; "
                         f"export the 3D {kind} series, not a 2D thick-slice one")
    extent = spacing * np.array(data.shape)
    if extent.min() < params.min_field_of_view_mm:
        raise InputError(f"{path}: field of view {np.round(extent).tolist()} mm is smaller than a head "
                         f"(>= {params.min_field_of_view_mm:.0f} mm per axis expected)")
    if not np.isfinite(data).all() or float(data.max()) <= float(data.min()):
        raise InputError(f"{path}: image is constant or contains NaN/Inf values")


def _read_acquisition(anat: Path) -> Acquisition:
    """Scanner facts from the FLAIR sidecar (what atrophy depends on most); empty if absent."""
    sidecars = sorted(anat.glob("*_FLAIR.json"))
    if not sidecars:
        return Acquisition()
    try:
        meta = json.loads(sidecars[0].read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{sidecars[0]}: unreadable JSON sidecar ({exc})") from exc
    strength = meta.get("MagneticFieldStrength")
    return Acquisition(manufacturer=meta.get("Manufacturer"), model=meta.get("ManufacturersModelName"),
                       field_strength_t=float(strength) if strength is not None else None,
                       software=str(meta["SoftwareVersions"]) if "SoftwareVersions" in meta else None,
                       protocol=meta.get("ProtocolName") or meta.get("SeriesDescription"))
