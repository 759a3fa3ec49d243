"""Synthetic anatomy for msvol.synth.patients: template-derived heads, geometry helpers, the atrophy field.

A patient's anatomy is the MNI ICBM152 2009a template (nilearn's wheel) with a whole head built
around it (CSF rim, skull with marrow, scalp), a random affine and a smooth deformation. All
sampling goes through `Anatomy.to_template_voxels`, so every image is interpolated once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from msvol.stages.atlas import load_mni

GRID_SHAPE = (184, 220, 188)  # 1 mm isotropic, whole head with margin
# Tissue intensities (arbitrary units, WM-ish ~0.4-0.8), jittered per patient.
FLAIR_CONTRAST = {"csf": 0.07, "gm": 0.56, "wm": 0.42, "lesion": 0.95, "skull": 0.04, "marrow": 0.3,
                  "scalp": 0.55}
T1_CONTRAST = {"csf": 0.12, "gm": 0.48, "wm": 0.80, "lesion": 0.36, "skull": 0.04, "marrow": 0.75,
               "scalp": 0.9}
# Presets: (FLAIR, T1). "shifted" lies outside the training ranges of msvol.training.train (docs/MODEL.md):
# brighter CSF on FLAIR (incomplete fluid suppression), lesions only 1.3x WM on FLAIR, flatter T1 GM/WM.
CONTRASTS = {
    "standard": (FLAIR_CONTRAST, T1_CONTRAST),
    "shifted": ({"csf": 0.22, "gm": 0.50, "wm": 0.42, "lesion": 0.546, "skull": 0.04, "marrow": 0.3, "scalp": 0.55},
                {"csf": 0.38, "gm": 0.70, "wm": 0.80, "lesion": 0.60, "skull": 0.04, "marrow": 0.75, "scalp": 0.9}),
}

# ----------------------------------------------------------------------------- template

def smooth_field(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    """Unit-variance Gaussian random field, smooth on the scale `sigma` voxels."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field / (field.std() + 1e-8)


def head_layers(maps: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Add an extra CSF rim, skull (with marrow) and scalp around the intracranial mask."""
    pad = 22
    padded = {k: np.pad(v, pad) for k, v in maps.items()}
    outside = ndimage.distance_transform_edt(padded["intracranial"] < 0.5).astype(np.float32)
    wobble = 1.2 * smooth_field(rng, outside.shape, 8)  # uneven layer thickness, mm

    def ramp(distance):  # partial-volume edge one voxel wide
        return np.clip(outside - distance - wobble + 0.5, 0, 1)

    skull_in, marrow_in, marrow_out, skull_out, scalp_out = (ramp(d) for d in (2.5, 4.5, 6.5, 8.5, 14))
    padded["csf"] = padded["csf"] + (1 - padded["intracranial"]) * (1 - skull_in) * (outside > 0)
    padded["skull"] = (skull_in - marrow_in) + (marrow_out - skull_out)
    padded["marrow"] = marrow_in - marrow_out
    padded["scalp"] = skull_out - scalp_out
    return padded


# ----------------------------------------------------------------------------- geometry

def rotation_matrix(angles_deg) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_rigid(rng, max_rotation_deg, max_translation_mm, centre) -> np.ndarray:
    """4x4 rigid map rotating about `centre`."""
    rotation = rotation_matrix(rng.uniform(-max_rotation_deg, max_rotation_deg, 3))
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = centre - rotation @ centre + rng.uniform(-max_translation_mm, max_translation_mm, 3)
    return matrix


def scanner_affine(shape=GRID_SHAPE) -> np.ndarray:
    """The scanner grid: 1 mm RAS, centred on the origin."""
    affine = np.eye(4)
    affine[:3, 3] = -(np.array(shape) - 1) / 2.0
    return affine


def grid_points(shape, affine) -> np.ndarray:
    """World mm coordinates of every voxel, shape (3, *shape), float32."""
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    points = affine[:3, :3].astype(np.float32) @ idx + affine[:3, 3:4].astype(np.float32)
    return points.reshape(3, *shape)


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    flat = points.reshape(3, -1)
    out = matrix[:3, :3].astype(np.float32) @ flat + matrix[:3, 3:4].astype(np.float32)
    return out.reshape(points.shape)


def sample(volume: np.ndarray, voxel_coords: np.ndarray, order: int = 1) -> np.ndarray:
    return ndimage.map_coordinates(volume, voxel_coords, order=order, mode="constant", cval=0.0,
                                   prefilter=False)


@dataclass(frozen=True, eq=False)
class Anatomy:
    """A patient's anatomy: template arrays and the map from subject mm to template voxels."""

    images: dict  # template-space FLAIR/T1 (pre-lesion), tissue fraction, intracranial
    template_affine: np.ndarray
    subject_to_template: np.ndarray  # 4x4, subject mm -> template voxel (before deformation)
    deformation: np.ndarray  # (3, *coarse) in template voxels, on a 4 mm subject grid
    deformation_affine: np.ndarray  # coarse grid voxel -> subject mm
    atrophy_field: np.ndarray | None = None  # (3, *GRID_SHAPE) mm, displacement per 1 % tissue loss

    def to_template_voxels(self, subject_points: np.ndarray) -> np.ndarray:
        coarse = apply_affine(np.linalg.inv(self.deformation_affine), subject_points)
        template = apply_affine(self.subject_to_template, subject_points)
        for axis in range(3):
            template[axis] += sample(self.deformation[axis], coarse, order=1)
        return template


def make_anatomy(rng: np.random.Generator, contrast_jitter: float, contrast: str = "standard") -> Anatomy:
    maps, template_affine = load_mni()
    layers = head_layers(maps, rng)
    pad_shift = np.eye(4)
    pad_shift[:3, 3] = -22  # padded voxel i is original voxel i - 22
    template_affine = template_affine @ pad_shift

    flair_base, t1_base = CONTRASTS[contrast]
    flair_c = {k: v * (1 + rng.uniform(-1, 1) * contrast_jitter) for k, v in flair_base.items()}
    t1_c = {k: v * (1 + rng.uniform(-1, 1) * contrast_jitter) for k, v in t1_base.items()}
    texture = 1 + 0.03 * smooth_field(rng, layers["gm"].shape, 1.2) + 0.04 * smooth_field(rng, layers["gm"].shape, 6)
    tissues = ("csf", "gm", "wm", "skull", "marrow", "scalp")
    flair = sum(flair_c[t] * layers[t] for t in tissues) * texture
    t1 = sum(t1_c[t] * layers[t] for t in tissues) * texture
    images = {"flair": flair.astype(np.float32), "t1": t1.astype(np.float32),
              "tissue": np.clip(layers["gm"] + layers["wm"], 0, 1).astype(np.float32),
              **{name: layers[name] for name in tissues},
              "intracranial": layers["intracranial"],
              "flair_lesion": np.float32(flair_c["lesion"]), "t1_lesion": np.float32(t1_c["lesion"])}

    # Patient affine: subject mm -> template mm (random size and small shear), template brain
    # centred on the subject origin.
    scale = np.diag(rng.uniform(0.94, 1.05, 3))
    shear = np.eye(3) + np.triu(rng.uniform(-0.03, 0.03, (3, 3)), 1)
    linear = np.linalg.inv(scale @ shear)
    brain_centre_vox = np.array(ndimage.center_of_mass(layers["intracranial"]))
    brain_centre_mm = template_affine[:3, :3] @ brain_centre_vox + template_affine[:3, 3]
    subject_to_template_mm = np.eye(4)
    subject_to_template_mm[:3, :3] = linear
    subject_to_template_mm[:3, 3] = brain_centre_mm + np.array([0, 0, 10.0])
    subject_to_template = np.linalg.inv(template_affine) @ subject_to_template_mm

    coarse_shape = tuple(int(np.ceil(s / 4)) + 2 for s in GRID_SHAPE)
    deformation_affine = np.diag([4.0, 4.0, 4.0, 1.0])
    deformation_affine[:3, 3] = scanner_affine()[:3, 3] - 4
    deformation = np.stack([2.5 * smooth_field(rng, coarse_shape, 4) for _ in range(3)]).astype(np.float32)
    return Anatomy(images, template_affine, subject_to_template, deformation, deformation_affine)


def atrophy_field(anatomy: Anatomy, affine: np.ndarray, intracranial: np.ndarray) -> np.ndarray:
    """Displacement (mm) whose divergence is -1 % in tissue and balancing growth in intracranial CSF.

    Solves Laplace(phi) = g by FFT and returns grad(phi): a curl-free field with div u = g, so the
    local volume change is g (first order). Sum(g) = 0, so the skull barely moves. The truth PBVC
    is measured on what is rendered, not taken from g.
    """
    tissue = sample(anatomy.images["tissue"], anatomy.to_template_voxels(grid_points(GRID_SHAPE, affine)))
    csf = np.clip(intracranial - tissue, 0, 1).astype(np.float64)
    tissue = tissue.astype(np.float64)
    # g = -a*tissue + b*csf with sum(g) = 0; `a` chosen so that sum(tissue * g) = -1 % of the tissue,
    # since partial-volume voxels (tissue and CSF) would otherwise cancel much of the loss.
    growth = tissue.sum() / csf.sum()
    strength = 0.01 * tissue.sum() / ((tissue ** 2).sum() - growth * (tissue * csf).sum())
    source = strength * (growth * csf - tissue)
    frequencies = np.meshgrid(*[2 * np.pi * np.fft.fftfreq(n) for n in GRID_SHAPE[:2]],
                              2 * np.pi * np.fft.rfftfreq(GRID_SHAPE[2]), indexing="ij")
    laplacian = -sum(f ** 2 for f in frequencies)
    laplacian[0, 0, 0] = 1.0
    potential = np.fft.rfftn(source) / laplacian
    potential[0, 0, 0] = 0
    return np.stack([np.fft.irfftn(1j * f * potential, GRID_SHAPE, axes=(0, 1, 2))
                     for f in frequencies]).astype(np.float32)
