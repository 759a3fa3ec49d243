"""Rendering of the check set (msvol.synth.checkset): the anatomy variation of a base patient, each
visit's acquisition from the edited subject-grid images, and the BIDS writer.

Each visit image is sampled once from the subject grid (cubic spline for FLAIR and T1, linear for the
tissue fraction, lesion masks at the 0.5 level of their linear interpolation), through the visit's
pose and, at a follow-up with atrophy, the contraction.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from msvol.synth import checkset_geometry as geometry
from msvol.synth import checkset_lesions as lesions
from msvol.synth.patients import write_nifti_atomically, write_text_atomically


def resample_labels(labels: np.ndarray, voxel_coords: np.ndarray) -> np.ndarray:
    """Labels at voxel coordinates: a lesion where the linearly interpolated signed distance to the
    lesion boundary is <= 0 (keeps small lesions' volumes, which thresholding an interpolated binary
    mask would erode), with the id of the nearest voxel (of the nearest lesion voxel where that is
    background)."""
    mask = labels > 0
    signed = np.where(mask, 0.5 - ndimage.distance_transform_edt(mask),
                      ndimage.distance_transform_edt(~mask) - 0.5).astype(np.float32)
    inside = geometry.sample(signed, voxel_coords, 1) <= 0
    del signed
    ids = geometry.sample(labels.astype(np.int32), voxel_coords, 0)
    missing = inside & (ids == 0)
    if missing.any():
        ids[missing] = ndimage.map_coordinates(ndimage.grey_dilation(labels.astype(np.int32), size=3),
                                               voxel_coords[:, missing], order=0, mode="nearest")
    return np.where(inside, ids, 0).astype(np.int32)


def vary_anatomy(base, variation, rng) -> dict:
    """The base images under a head scaling/shear, a smooth displacement and enlarged ventricles."""
    shape, affine = base.flair.shape, base.affine
    centre_mm = affine[:3, :3] @ np.array(ndimage.center_of_mass(base.tissue)) + affine[:3, 3]
    linear = geometry.head_scaling(rng, variation.scale_range, variation.max_shear)
    displacement = geometry.smooth_displacement(rng, shape, variation.displacement_lattice_voxels,
                                                variation.displacement_mm)
    _, ventricles = lesions.envelope_and_ventricles(base.tissue)
    pull = geometry.ventricle_pull(ventricles, variation.ventricle_pull_mm)
    coords = geometry.anatomy_coords(shape, affine, centre_mm, linear, displacement, pull)
    del displacement, pull
    tissue = np.clip(geometry.sample(base.tissue, coords, 1), 0, 1).astype(np.float32)
    _, ventricles_after = lesions.envelope_and_ventricles(tissue)
    jacobian = geometry.jacobian_determinant(coords[:, ::2, ::2, ::2]) / 8  # gradients over 2 voxels
    return {"flair": np.maximum(geometry.sample(base.flair, coords, 3), 0).astype(np.float32),
            "t1": np.maximum(geometry.sample(base.t1, coords, 3), 0).astype(np.float32),
            "tissue": tissue, "labels": resample_labels(base.labels, coords),
            "variation": {"linear": np.round(linear, 5).tolist(), "displacement_max_mm": variation.displacement_mm,
                          "ventricle_pull_max_mm": variation.ventricle_pull_mm,
                          "ventricle_volume_ml": [round(float(ventricles.sum()) / 1000, 3),
                                                  round(float(ventricles_after.sum()) / 1000, 3)],
                          "jacobian_range": [round(float(jacobian.min()), 4), round(float(jacobian.max()), 4)]}}




def render_visit(images: dict, subject_affine: np.ndarray, rng, acquisition, *, contraction, flair_spacing_mm,
                 las: bool, session: str, date) -> dict:
    """One visit: FLAIR (on a grid of `flair_spacing_mm`), T1 (1 mm), truth labels, tissue and brain mask
    on the FLAIR grid. `contraction` is None or (weights, centre voxel, scale)."""
    shape = images["flair"].shape
    pose = geometry.random_pose(rng, acquisition.max_rotation_deg, acquisition.max_translation_mm, (0, 0, 0))
    t1_pose = pose @ geometry.random_pose(rng, acquisition.t1_motion_deg, acquisition.t1_motion_mm, (0, 0, 0))
    spacing = np.asarray(flair_spacing_mm, dtype=float)
    flair_shape = tuple(round(n / step) for n, step in zip(shape, spacing))
    flair_affine = geometry.centred_affine(flair_shape, spacing)
    flair_source = images["flair"]
    if spacing.max() > 1.0:  # the slice profile of the thicker slices (Gaussian, FWHM = slice thickness)
        flair_source = ndimage.gaussian_filter1d(flair_source, np.sqrt(spacing[2] ** 2 - 1) / 2.355, axis=2)

    def coords(grid_shape, grid_affine, head_pose):
        points = geometry.grid_points_mm(grid_shape, grid_affine)
        voxels = geometry.transform_points(np.linalg.inv(subject_affine) @ np.linalg.inv(head_pose), points)
        return voxels if contraction is None else geometry.contract_coords(voxels, *contraction)

    where = coords(flair_shape, flair_affine, pose)
    flair = np.maximum(geometry.sample(flair_source, where, 3), 0)
    tissue = np.clip(geometry.sample(images["tissue"], where, 1), 0, 1).astype(np.float32)
    labels = resample_labels(images["labels"], where)
    del where
    t1 = np.maximum(geometry.sample(images["t1"], coords(shape, subject_affine, t1_pose), 3), 0)
    stored = {}
    for name, image, affine in (("flair", flair, flair_affine), ("t1", t1, subject_affine)):
        bias = geometry.bias_field(rng, geometry.grid_points_mm(image.shape, affine),
                                   float(rng.uniform(*acquisition.bias_amplitude)))
        stored[name] = geometry.acquire(image, rng, bias=bias, gain=float(rng.uniform(*acquisition.gain)),
                                        noise_sigma=float(rng.uniform(*acquisition.noise_sigma)),
                                        scale=float(rng.uniform(*acquisition.stored_white_matter)))
    visit = {"flair": stored["flair"], "t1": stored["t1"], "labels": labels, "tissue": tissue,
             "flair_affine": flair_affine, "t1_affine": subject_affine.copy()}
    if las:
        for name in ("flair", "labels", "tissue"):
            visit[name], visit["flair_affine"] = geometry.to_las(visit[name], flair_affine)
        visit["t1"], visit["t1_affine"] = geometry.to_las(visit["t1"], subject_affine)
    visit["brain"] = visit["tissue"] >= 0.5
    where = np.argwhere(visit["brain"])
    margin = int(min(where.min(), (np.array(visit["brain"].shape) - 1 - where.max(axis=0)).min())) if len(where) else 0
    return {**visit, "date": date, "session": session, "voxel_mm3": float(np.prod(spacing)),
            "flair_spacing_mm": spacing.tolist(), "orientation": "LAS" if las else "RAS", "pose": pose,
            "t1_pose": t1_pose, "brain_margin_voxels": margin}


def write_subject(subject: dict, root, name: str) -> Path:
    """BIDS (sub-XX/ses-YY/anat FLAIR and T1w with sidecars, sessions.tsv) and truth in
    derivatives/truth/sub-XX (per-session lesions and brainmask on the FLAIR grid, sub-XX_truth.json),
    the layout of msvol.synth.patients.write_patient; every file written under a temporary name first."""
    import nibabel as nib

    root = Path(root)
    folder, truth = root / f"sub-{name}", root / "derivatives" / "truth" / f"sub-{name}"
    write_text_atomically(root / "dataset_description.json", json.dumps(
        {"Name": "msvol independent check set", "BIDSVersion": "1.9.0", "DatasetType": "raw",
         "GeneratedBy": [{"Name": "msvol.synth.checkset", "Version": subject["truth"]["checkset_version"]}]},
        indent=2))
    rows = ["session_id\tacq_time"]
    for visit in subject["visits"]:
        stem = f"sub-{name}_ses-{visit['session']}"
        anat = folder / f"ses-{visit['session']}" / "anat"
        for suffix, key in (("FLAIR", "flair"), ("T1w", "t1")):
            _nifti(nib.Nifti1Image(visit[key], visit[f"{key}_affine"]), anat / f"{stem}_{suffix}.nii.gz")
            spacing = visit["flair_spacing_mm"] if key == "flair" else [1.0, 1.0, 1.0]
            write_text_atomically(anat / f"{stem}_{suffix}.json", json.dumps(
                {"Manufacturer": "msvol-checkset", "ManufacturersModelName": "virtual", "MagneticFieldStrength": 3,
                 "SoftwareVersions": subject["truth"]["checkset_version"], "MRAcquisitionType": "3D",
                 "SliceThickness": spacing[2]}, indent=2))
        _nifti(nib.Nifti1Image(visit["labels"].astype(np.int16), visit["flair_affine"]), truth / f"{stem}_lesions.nii.gz")
        _nifti(nib.Nifti1Image(visit["brain"].astype(np.uint8), visit["flair_affine"]), truth / f"{stem}_brainmask.nii.gz")
        rows.append(f"ses-{visit['session']}\t{visit['date'].isoformat()}T09:00:00")
    write_text_atomically(folder / f"sub-{name}_sessions.tsv", "\n".join(rows) + "\n")
    write_text_atomically(truth / f"sub-{name}_truth.json", json.dumps(subject["truth"], indent=1))
    return folder


def _nifti(image, path: Path) -> None:
    image.header.set_xyzt_units("mm", "sec")
    write_nifti_atomically(image, path)
