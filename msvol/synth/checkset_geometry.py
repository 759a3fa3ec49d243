"""Geometry and acquisition of the independent check set (msvol.synth.checkset).

Written apart from msvol.synth.anatomy on purpose: the check set must not share the training
generator's deformation, atrophy or acquisition code. Every map here is a pull-back: for each
voxel of the grid being rendered, the point of the source image it shows.

Vocabulary
----------
subject grid : the 1 mm grid of the base patient's finished images (RAS, centred on the origin).
anatomy variation : global scaling and shear of the head, a smooth random displacement and an
    enlargement of the ventricles, applied once per subject (both visits share it).
contraction : atrophy as a uniform scaling of everything inside the brain envelope about the
    brain's centre; the outer CSF between the envelope and the inner skull takes up the volume,
    the skull does not move. The brain volume changes by scale**3 exactly.
pose : the rigid head position in the scanner (scanner mm = pose @ subject mm).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def centred_affine(shape, spacing_mm=(1.0, 1.0, 1.0)) -> np.ndarray:
    """RAS+ affine of a grid of `shape` voxels of `spacing_mm`, centred on the world origin."""
    spacing = np.asarray(spacing_mm, dtype=float)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2.0 * spacing
    return affine


def grid_points_mm(shape, affine) -> np.ndarray:
    """World mm of every voxel centre, (3, *shape), float32."""
    index = np.indices(shape, dtype=np.float32).reshape(3, -1)
    return (affine[:3, :3].astype(np.float32) @ index + affine[:3, 3:4].astype(np.float32)).reshape(3, *shape)


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 matrix to points of shape (3, ...)."""
    flat = points.reshape(3, -1)
    return (matrix[:3, :3].astype(np.float32) @ flat + matrix[:3, 3:4].astype(np.float32)).reshape(points.shape)


def sample(volume: np.ndarray, voxel_coords: np.ndarray, order: int = 1, *, coefficients: bool = False) -> np.ndarray:
    """`volume` at voxel coordinates (3, ...); edge values continue outside the grid.

    order 3 needs spline coefficients (`spline_coefficients`); pass them with coefficients=True so a
    volume sampled at several visits is filtered once.
    """
    if order > 1 and not coefficients:
        volume = spline_coefficients(volume)
    out = ndimage.map_coordinates(volume, voxel_coords.reshape(3, -1), order=order, mode="nearest",
                                  prefilter=False)
    return out.reshape(voxel_coords.shape[1:])


def spline_coefficients(volume: np.ndarray) -> np.ndarray:
    return ndimage.spline_filter(volume.astype(np.float32), order=3, mode="nearest", output=np.float32)


def rigid(angles_deg, translation_mm, centre_mm) -> np.ndarray:
    """4x4 rotation by x-y-z Euler angles about `centre_mm`, then a translation."""
    from scipy.spatial.transform import Rotation

    rotation = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
    centre = np.asarray(centre_mm, dtype=float)
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = centre - rotation @ centre + np.asarray(translation_mm, dtype=float)
    return matrix


def random_pose(rng: np.random.Generator, max_rotation_deg: float, max_translation_mm: float, centre_mm) -> np.ndarray:
    return rigid(rng.uniform(-max_rotation_deg, max_rotation_deg, 3),
                 rng.uniform(-max_translation_mm, max_translation_mm, 3), centre_mm)


# ----------------------------------------------------------------------------- anatomy variation

def head_scaling(rng: np.random.Generator, scale_range: tuple[float, float], max_shear: float) -> np.ndarray:
    """3x3 matrix: per-axis scaling times a full (upper and lower) shear; the head's new shape."""
    shear = np.eye(3) + (1 - np.eye(3)) * rng.uniform(-max_shear, max_shear, (3, 3))
    return np.diag(rng.uniform(*scale_range, 3)) @ shear


def smooth_displacement(rng: np.random.Generator, shape, lattice_voxels: int, max_mm: float) -> np.ndarray:
    """(3, *shape) mm: random values on a coarse lattice, smoothed and cubic-interpolated, scaled so
    the largest displacement is `max_mm`."""
    coarse_shape = tuple(int(np.ceil(n / lattice_voxels)) + 3 for n in shape)
    index = np.indices(shape, dtype=np.float32).reshape(3, -1) / lattice_voxels + 1
    field = np.stack([ndimage.map_coordinates(ndimage.gaussian_filter(rng.standard_normal(coarse_shape), 0.8),
                                              index, order=3, mode="nearest").reshape(shape).astype(np.float32)
                      for _ in range(3)])
    return field * np.float32(max_mm / (np.sqrt((field ** 2).sum(axis=0)).max() + 1e-12))


def ventricle_pull(ventricles: np.ndarray, max_mm: float, sigma_voxels: float = 5.0,
                   max_strain: float = 0.35) -> np.ndarray:
    """(3, *shape) mm pull-back that enlarges the ventricles: each point samples from closer to them.

    The gradient of the blurred ventricle mask points towards the ventricles, so x -> x + pull(x)
    shows ventricle CSF a little further out than it was. Scaled to `max_mm` at most, and so that no
    row of the pull's derivative sums (in absolute value) above `max_strain`: every eigenvalue of the
    map's Jacobian stays within 1 +- max_strain, so it never folds.
    """
    potential = ndimage.gaussian_filter(ventricles.astype(np.float32), sigma_voxels)
    gradient = np.stack(np.gradient(potential))
    coarse = gradient[:, ::2, ::2, ::2]
    row_sums = sum(np.abs(np.stack(np.gradient(coarse[axis], 2.0))) for axis in range(3))
    strength = min(max_mm / (np.sqrt((gradient ** 2).sum(axis=0)).max() + 1e-12),
                   max_strain / (row_sums.max() + 1e-12))
    return gradient * np.float32(strength)


def anatomy_coords(shape, affine, centre_mm, linear: np.ndarray, displacement_mm: np.ndarray,
                   pull_mm: np.ndarray) -> np.ndarray:
    """Base-grid voxel coordinates shown by every subject-grid voxel after the anatomy variation.

    y (subject mm) -> centre + inverse(linear) (y - centre) + displacement(y) -> x; then x + pull(x)
    (the ventricle enlargement, defined on the base grid).
    """
    centre = np.asarray(centre_mm, dtype=np.float32)[:, None]
    inverse = np.linalg.inv(linear).astype(np.float32)
    points = grid_points_mm(shape, affine).reshape(3, -1)
    moved = centre + inverse @ (points - centre) + displacement_mm.reshape(3, -1)
    to_voxels = np.linalg.inv(affine)
    voxels = transform_points(to_voxels, moved)
    pull_voxels = np.stack([sample(pull_mm[axis], voxels, 1) for axis in range(3)]) / np.float32(
        np.diag(affine)[:3, None])
    return (voxels + pull_voxels).reshape(3, *shape)


def jacobian_determinant(coords: np.ndarray) -> np.ndarray:
    """Local volume ratio of a pull-back map given as voxel coordinates (3, *shape)."""
    gradient = np.stack([np.stack(np.gradient(coords[axis])) for axis in range(3)])  # [i, j] = d x_i / d y_j
    return np.linalg.det(np.moveaxis(gradient, (0, 1), (-2, -1)))


# ----------------------------------------------------------------------------- contraction

def contraction_weights(envelope: np.ndarray, intracranial: np.ndarray, centre_voxel, scale: float) -> np.ndarray:
    """Weight of the contraction at each subject voxel (1 inside the contracted envelope, falling
    linearly across the outer CSF to 0 at the inner skull, 0 beyond).

    envelope : boolean, everything that contracts (the brain with its sulci and ventricles and a
        margin of at least 2 voxels beyond any tissue, so no tissue lies where the weight is < 1).
    intracranial : boolean, the envelope and the outer CSF around it.
    """
    centre = np.asarray(centre_voxel, dtype=np.float32).reshape(3, *([1] * envelope.ndim))
    index = np.indices(envelope.shape, dtype=np.float32)
    contracted = sample(envelope.astype(np.float32), centre + (index - centre) / np.float32(scale), 0) > 0.5
    inside = intracranial | contracted
    to_envelope = ndimage.distance_transform_edt(~contracted)
    to_skull = ndimage.distance_transform_edt(inside)
    weights = np.where(inside, to_skull / np.maximum(to_envelope + to_skull, 1e-6), 0.0)
    return np.where(contracted, 1.0, weights).astype(np.float32)


def contract_coords(voxel_coords: np.ndarray, weights: np.ndarray, centre_voxel, scale: float) -> np.ndarray:
    """Where a contracted subject shows each point: y + w(y) (c + (y - c) / scale - y), on the 1 mm
    subject grid (voxel units = mm)."""
    centre = np.asarray(centre_voxel, dtype=np.float32).reshape(3, *([1] * (voxel_coords.ndim - 1)))
    weight = sample(weights, voxel_coords, 1)
    return voxel_coords + weight * np.float32(1 / scale - 1) * (voxel_coords - centre)


# ----------------------------------------------------------------------------- acquisition

def bias_field(rng: np.random.Generator, points_mm: np.ndarray, amplitude: float) -> np.ndarray:
    """Multiplicative field exp(amplitude * p / max|p|), p a random quadratic polynomial of position
    (the generator uses a cubic-spline random field instead)."""
    x, y, z = (points_mm[axis] / np.float32(90.0) for axis in range(3))
    terms = (x, y, z, x * x, y * y, z * z, x * y, x * z, y * z)
    polynomial = sum(np.float32(coefficient) * term for coefficient, term in zip(rng.normal(size=len(terms)), terms))
    return np.exp(np.float32(amplitude) * polynomial / (np.abs(polynomial).max() + 1e-12))


def acquire(image: np.ndarray, rng: np.random.Generator, *, bias: np.ndarray, gain: float, noise_sigma: float,
            scale: float) -> np.ndarray:
    """Bias, gain and Rician noise (sigma in units of white matter), stored as int16 (value = scale x)."""
    signal = np.maximum(image, 0) * bias * np.float32(gain)
    if noise_sigma > 0:
        signal = np.hypot(signal + rng.normal(0, noise_sigma, image.shape).astype(np.float32),
                          rng.normal(0, noise_sigma, image.shape).astype(np.float32))
    return np.clip(np.rint(signal * scale), 0, 32767).astype(np.int16)


def to_las(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same image stored left-right reversed (LAS): every voxel keeps its world position."""
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = data.shape[0] - 1
    return np.ascontiguousarray(data[::-1]), affine @ flip
