"""Builders of test data shared by several test modules (fixtures live in conftest.py).

BIDS subjects of smooth random images (90^3 voxels at 1.5 mm), head-sized DICOM test volumes,
the fake patient identifiers that must never leak into outputs, and tiny randomly initialised
lesion networks and bundles (torch is imported only by those).
"""

from __future__ import annotations

import datetime as dt
import functools
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from msvol.datatypes import Volume
from msvol.synth import dicom as synth_dicom

REPO = Path(__file__).resolve().parents[1]

# --- BIDS -------------------------------------------------------------------------------------
SHAPE = (90, 90, 90)
SPACING_MM = 1.5


@functools.lru_cache(maxsize=32)
def smooth_image(seed: int, shape=SHAPE) -> np.ndarray:
    """Smooth positive random intensities: a coarse random grid upsampled linearly (cached: do not modify)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(50.0, 150.0, size=tuple(max(2, size // 15) for size in shape))
    zoom = [size / small for size, small in zip(shape, coarse.shape)]
    image = ndimage.zoom(coarse, zoom, order=1).astype(np.float32)
    image.setflags(write=False)
    return image


def affine_for(spacing_mm=(SPACING_MM,) * 3) -> np.ndarray:
    affine = np.diag([*spacing_mm, 1.0])
    affine[:3, 3] = [-60.0, -70.0, -50.0]
    return affine


def write_image(path: Path, data: np.ndarray, spacing_mm=(SPACING_MM,) * 3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(data, affine_for(spacing_mm)).to_filename(path)
    return path


def image_path(subject_dir: Path, session: str, suffix: str) -> Path:
    subject = subject_dir.name
    return subject_dir / f"ses-{session}" / "anat" / f"{subject}_ses-{session}_{suffix}.nii.gz"


def write_subject(root: Path, subject: str = "01", dates: dict[str, str] | None = None,
                  contrasts=("FLAIR", "T1w")) -> Path:
    """A valid BIDS subject: FLAIR + T1w per session and a sessions.tsv; returns sub-XX."""
    dates = {"01": "2020-01-15", "02": "2021-01-20"} if dates is None else dates
    subject_dir = root / f"sub-{subject}"
    for index, session in enumerate(dates):
        for offset, suffix in enumerate(contrasts):
            write_image(image_path(subject_dir, session, suffix), smooth_image(10 * index + offset))
    rows = ["session_id\tacq_time"] + [f"ses-{session}\t{date}T09:30:00" for session, date in dates.items()]
    (subject_dir / f"sub-{subject}_sessions.tsv").write_text("\n".join(rows) + "\n")
    return subject_dir


# --- DICOM ------------------------------------------------------------------------------------
HEAD_SHAPE = (130, 150, 124)
NUMBERS = synth_dicom.SERIES_NUMBERS
# Sagittal FLAIR whose k runs against the slice normal (det < 0): ingest returns it with k reversed.
FLAIR_AFFINE = np.array([[0.0, 0, -1, 64], [-1, 0, 0, 80], [0, -1, 0, 70], [0, 0, 0, 1]])
# Coronal T1 whose k runs along the slice normal (det > 0): ingest returns it as written.
T1_AFFINE = np.array([[-1.0, 0, 0, 64], [0, 0, 1, -75], [0, 1, 0, -60], [0, 0, 0, 1]])

# Fake identifiers that must never leak; each string is distinctive enough to search output for.
PATIENT_A = dict(patient_id="MRN-40417", patient_name="LEAKTEST^ALICE", birth_date="19610923")
PATIENT_B = dict(patient_id="MRN-77120", patient_name="LEAKTEST^BORIS", birth_date="19480229")
SECRETS = ("MRN-40417", "MRN40417", "MRN-77120", "MRN77120", "LEAKTEST", "ALICE", "BORIS",
           "19610923", "1961-09-23", "19480229", "1948-02-29")


@functools.lru_cache(maxsize=16)
def head(seed: int, kind: str = "FLAIR") -> Volume:
    """An ellipsoid 'head' with random integer texture on a dim background (cached: do not modify)."""
    rng = np.random.default_rng(seed)
    axes = np.ogrid[tuple(slice(0, n) for n in HEAD_SHAPE)]
    inside = sum(((axis - (n - 1) / 2) / (0.42 * n)) ** 2 for axis, n in zip(axes, HEAD_SHAPE)) <= 1
    texture = rng.integers(0, 300, HEAD_SHAPE)
    data = np.where(inside, 500 + texture, texture // 30).astype(np.float32)
    data.setflags(write=False)
    return Volume(data, FLAIR_AFFINE if kind == "FLAIR" else T1_AFFINE, kind)


def identity(patient: dict, date: dt.date) -> synth_dicom.ExamIdentity:
    return synth_dicom.ExamIdentity(study_date=date, **patient)


def rotation(degrees: float, axis: int) -> np.ndarray:
    angle = np.deg2rad(degrees)
    plane = [a for a in range(3) if a != axis]
    rotation = np.eye(3)
    rotation[np.ix_(plane, plane)] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    return rotation


# --- tiny lesion networks and bundles -----------------------------------------------------------
TINY_CHANNELS = (4, 8)


def tiny_network(task: str = "per_visit", seed: int = 0):
    import torch

    from msvol.models import bundle

    torch.manual_seed(seed)
    return bundle.build_network(bundle.architecture(task, TINY_CHANNELS)).eval()


def save_bundle(folder: Path, network, task: str = "per_visit") -> Path:
    from msvol.models import bundle
    from msvol.training.train import TrainSettings

    return bundle.write_bundle(folder, network, TrainSettings(task=task, channels=TINY_CHANNELS))


def tiny_bundle(tmp_path: Path, task: str = "per_visit", seed: int = 0):
    from msvol.models import bundle

    return bundle.load_bundle(save_bundle(tmp_path / task, tiny_network(task, seed), task), task)
