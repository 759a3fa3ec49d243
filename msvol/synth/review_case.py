"""A synthetic output folder with known findings, for the review's tests and benchmarks.

OUT/sub-<id> as `msvol run` writes it (report.json schema 1.3, per-session flair.nii.gz,
brain_mask.nii.gz and lesions.nii.gz, a thumbnail, the interval's viewer images with halfway space
equal to the follow-up grid), for two visits (ses-01, ses-02) on a 48 x 48 x 40
grid of 1 mm: a brain ball at FLAIR 100 and lesion balls at 180. Interval 01-02 lists new lesions
1-3, enlarging lesion 4, shrinking 5, resolved 6 and stable 7; MISSED_CENTRE_MM is a bright ball
at follow-up that the report does not list (the lesion a reviewer adds, radius MISSED_RADIUS).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (48, 48, 40)
AFFINE = np.array([[1.0, 0, 0, -24], [0, 1, 0, -30], [0, 0, 1, -10], [0, 0, 0, 1]])
# lesion id -> (status, centre voxel, radius in voxels at follow-up, baseline volume mm3)
LESIONS = {1: ("new", (14, 14, 12), 2, 0.0), 2: ("new", (34, 14, 12), 3, 0.0), 3: ("new", (14, 34, 12), 2, 0.0),
           4: ("enlarging", (34, 34, 12), 3, 40.0), 5: ("shrinking", (24, 14, 28), 2, 120.0),
           6: ("resolved", (24, 34, 28), 0, 60.0), 7: ("stable", (14, 24, 28), 2, 33.0)}
MISSED_CENTRE_VOXEL = (34, 24, 28)
MISSED_RADIUS = 3
MISSED_CENTRE_MM = tuple(float(value) for value in (AFFINE @ (*MISSED_CENTRE_VOXEL, 1))[:3])
COUNTS = {"new": 3, "enlarging": 1, "shrinking": 1, "resolved": 1, "stable": 1}


def ball(centre, radius) -> np.ndarray:
    grid = np.indices(SHAPE)
    return sum((axis - c) ** 2 for axis, c in zip(grid, centre)) <= radius ** 2


def _save(path, data, dtype) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(data.astype(np.float32 if dtype == np.uint16 else dtype), AFFINE)
    if dtype == np.uint16:
        image.set_data_dtype(np.uint16)
    image.to_filename(path)


def _thumbnail() -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (32, 1))).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def write_review_case(out: Path, subject: str = "01") -> dict:
    """Write OUT/sub-<subject> (see the module docstring); returns its report model."""
    rng = np.random.default_rng(3)
    brain = ball((24, 24, 20), 19)
    labels = np.zeros(SHAPE, np.int32)
    for lesion_id, (status, centre, radius, _) in LESIONS.items():
        if radius:
            labels[ball(centre, radius)] = lesion_id
    flair = np.where(brain, 100.0, 5.0) + rng.normal(0, 2, SHAPE)
    flair[labels > 0] = 180.0
    flair[ball(MISSED_CENTRE_VOXEL, MISSED_RADIUS)] = 175.0
    folder = Path(out) / f"sub-{subject}"
    for session in ("01", "02"):
        _save(folder / f"ses-{session}" / "flair.nii.gz", flair, np.uint16)
        _save(folder / f"ses-{session}" / "brain_mask.nii.gz", brain, np.uint8)
        _save(folder / f"ses-{session}" / "lesions.nii.gz", labels, np.int32)
    viewer = folder / "intervals" / "ses-01_to_ses-02" / "viewer"  # halfway space = the follow-up grid here
    _save(viewer / "baseline_flair.nii.gz", np.clip(flair * 1.2, 0, 255), np.uint8)
    _save(viewer / "followup_flair.nii.gz", np.clip(flair * 1.2, 0, 255), np.uint8)
    classes = np.zeros(SHAPE, np.uint8)
    for lesion_id, (status, centre, radius, _) in LESIONS.items():
        classes[ball(centre, max(radius, 2))] = {"new": 1, "enlarging": 2, "shrinking": 3, "resolved": 3,
                                                 "stable": 4}[status]
    _save(viewer / "changes.nii.gz", classes, np.uint8)
    (viewer / "space.json").write_text(json.dumps({"halfway_to_followup": np.eye(4).tolist(),
                                                   "followup_to_halfway": np.eye(4).tolist()}))
    thumbnail = folder / "thumbnails" / "ses-01_to_ses-02" / "lesion-1.png"
    thumbnail.parent.mkdir(parents=True, exist_ok=True)
    thumbnail.write_bytes(base64.b64decode(_thumbnail()))
    lesions = [{"id": lesion_id, "status": status, "baseline_volume_mm3": baseline,
                "followup_volume_mm3": float(ball(centre, radius).sum()) if radius else 0.0,
                "centroid_mm": [float(v) for v in (AFFINE @ (*centre, 1))[:3]], "baseline_labels": [lesion_id],
                "followup_labels": [lesion_id] if radius else [], "merged": False, "split": False,
                "confluent": False, "confidence": round(0.5 + 0.06 * lesion_id, 2)}
               for lesion_id, (status, centre, radius, baseline) in LESIONS.items()]
    timepoint = {"brain_volume_ml": 1500.0, "normalized_brain_volume_ml": 1480.0, "intracranial_volume_ml": 1700.0,
                 "brain_parenchymal_fraction": 0.88, "lesion_count": 6, "lesion_volume_ml": 0.4,
                 "acquisition": {"manufacturer": "", "model": "", "field_strength_t": None, "software": "",
                                 "flair_series": ""}}
    report = {
        "schema_version": "1.3", "software": {"name": "msvol", "version": "0.1.0"},
        "generated": "2026-11-30T10:00:00+00:00", "status": "automated result, awaiting radiologist confirmation",
        "disclaimer": "msvol is research software, not a medical device.", "subject": subject,
        "timepoints": [{"session": session, "date": date, **timepoint,
                        "files": {"lesions": f"ses-{session}/lesions.nii.gz", "flair": f"ses-{session}/flair.nii.gz"}}
                       for session, date in (("01", "2020-01-15"), ("02", "2021-01-20"))],
        "intervals": [{"from_session": "01", "to_session": "02", "years": 1.0144, "pbvc_percent": -0.61,
                       "pbvc_annualized_percent": -0.601, "pbvc_beyond_pathological_cutoff": True,
                       "alignment_correlation": 0.98, "boundary_shift_ml": -9.1, "counts": dict(COUNTS),
                       "lesions": lesions, "qc_flags": [],
                       "files": {"thumbnails": {"1": "thumbnails/ses-01_to_ses-02/lesion-1.png"},
                                 "viewer": {name: f"intervals/ses-01_to_ses-02/viewer/{name}{suffix}"
                                            for name, suffix in (("baseline_flair", ".nii.gz"),
                                                                 ("followup_flair", ".nii.gz"),
                                                                 ("changes", ".nii.gz"), ("space", ".json"))}}}],
        "qc_flags": [], "provenance": {"models": {"per_visit": {"name": "msvol lesion segmenter", "version": "2.0.0"}},
                                       "inputs": {"01": {"flair_sha256": "ab" * 32, "t1_sha256": "cd" * 32}}},
        "methods": "", "references": {}, "params": {}, "params_hash": "ef" * 32, "params_sources": {},
    }
    (folder / "report.json").write_text(json.dumps(report, indent=2))
    return report
