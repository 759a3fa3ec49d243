"""Grow the mask of a lesion the radiologist points at: the "add a missed lesion" step of the review.

Contract: `grow_lesion(flair, brain_mask, point_mm)` returns a boolean mask on the FLAIR's grid,
one 26-connected region holding the seed, inside the brain mask, outside every lesion already
labelled, within `max_radius_mm` of the seed and at most `max_volume_mm3`. Same input, same mask.

Vocabulary and method (thresholds in `msvol.config.GrowParams`):

- point: world RAS+ millimetres on the follow-up FLAIR, `affine @ (i, j, k, 1)` of the image, the
  convention of report.json's `centroid_mm`.
- smoothed image: the FLAIR after a Gaussian of `smoothing_sigma_mm`. The seed and the reference
  are read on it, so one bright noise voxel neither picks the seed nor inflates its intensity (which
  sets the lower bound). The region itself grows on the unsmoothed image: smoothing would move the
  half-contrast edge of a small lesion inwards (measured in GrowParams' sources).
- reference: the intensity of normal-appearing brain, the median of the brain voxels not already
  labelled within `reference_radius_mm` of the point. Local rather than whole-brain because the
  bias correction leaves slow intensity changes that would move a global bound by more than a
  faint lesion's contrast; a median, so the lesion itself (a small part of the ball) barely moves it.
- seed: the brightest smoothed voxel within `seed_search_radius_mm` of the point (inside the brain,
  not already labelled). Its intensity must reach `min_seed_relative_intensity` x reference, else
  there is no lesion at the point.
- lower bound: reference + `boundary_fraction` x (seed - reference): with 0.5 the edge lies at half
  the lesion's contrast, where partial volume makes a voxel half lesion (the truth convention of
  msvol.synth). The bound is set on the contrast over the surrounding brain, not as a fraction of
  the seed alone (half of a seed at twice white matter would be white matter itself).
- growing: the 26-connected component of {FLAIR >= bound} holding the seed, within the brain,
  outside `existing_labels` (an added lesion must not swallow one already found) and within
  `max_radius_mm`; enclosed holes (noise dips) are filled.
- volume bound: when the region exceeds `max_volume_mm3`, the lower bound is raised to the lowest
  of the region's own intensities at which it fits (bisection: the region shrinks as the bound
  rises, so the answer does not depend on a step size). If even the region's highest intensity
  leaves it too large (a flat plateau), the voxels nearest the seed are kept.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from msvol.config import GrowParams
from msvol.datatypes import Volume
from msvol.errors import InputError, SpaceError

_GRID_TOLERANCE = 1e-3  # affine entries (mm); files written from one grid agree to float32 rounding
_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


def grow_lesion(flair: Volume, brain_mask: Volume, point_mm, params: GrowParams = GrowParams(), *,
                existing_labels: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask (on flair's grid) of the hyperintense region around point_mm.

    Parameters
    ----------
    flair : Volume
        The (bias-corrected) FLAIR the lesion is grown on, float intensities.
    brain_mask : Volume
        Brain mask on the same grid as `flair` (nonzero = brain).
    point_mm : sequence of 3 floats
        The point the radiologist chose, world RAS+ mm (`flair.affine @ (i, j, k, 1)`).
    params : GrowParams
        Seed search, smoothing, reference, bounds (see msvol.config.GrowParams).
    existing_labels : np.ndarray, optional
        Integer labels of the lesions already found, on flair's grid; their voxels are never grown into.

    Returns
    -------
    np.ndarray
        Boolean array of flair's shape: one 26-connected region containing the seed, at most
        `params.max_volume_mm3` and within `params.max_radius_mm` of the seed. The inputs are not modified.

    Raises
    ------
    SpaceError
        `brain_mask` (or `existing_labels`) is not on flair's grid.
    InputError
        The point lies outside the image or the brain mask, only on lesions already labelled, or
        nothing near it is brighter than the normal-appearing brain around it.

    Examples
    --------
    >>> mask = grow_lesion(flair, brain_mask, (12.5, -30.0, 18.0), existing_labels=lesions)  # doctest: +SKIP
    >>> mask.sum() * flair.voxel_volume_mm3  # the added lesion's volume, mm3  # doctest: +SKIP
    """
    labelled = _check_grids(flair, brain_mask, existing_labels)
    point = np.asarray(point_mm, dtype=float).reshape(-1)
    if point.shape != (3,) or not np.all(np.isfinite(point)):
        raise InputError(f"point_mm must be three finite numbers (x, y, z in mm), got {point_mm!r}")
    voxel = _nearest_voxel(flair, point)
    brain = brain_mask.data != 0
    if not brain[voxel]:
        raise InputError(
            f"{_name(flair)}: the point {_mm(point)} (voxel {voxel}) lies outside the brain mask "
            f"{_name(brain_mask)}; point inside the brain, on the lesion to add")

    spacing = flair.spacing_mm
    reach_mm = max(params.max_radius_mm + params.seed_search_radius_mm, params.reference_radius_mm)
    box = _box(voxel, reach_mm + 4 * params.smoothing_sigma_mm + 2 * spacing.max(), spacing, flair.data.shape)
    # Smooth the crop, not the whole head; the margin keeps the crop's edge out of the region.
    smoothed = ndimage.gaussian_filter(flair.data[box].astype(np.float32), params.smoothing_sigma_mm / spacing,
                                       mode="nearest")
    available = brain[box] & ~labelled[box]
    origin = np.array([axis.start for axis in box])
    point_in_box = _to_voxel(flair, point) - origin

    seed = _seed(smoothed, available, point_in_box, spacing, params, flair, point, labelled[box])
    seed_value = float(smoothed[seed])
    reference = _reference(smoothed, available, point_in_box, spacing, params.reference_radius_mm)
    if not reference > 0:
        raise InputError(
            f"{_name(flair)}: the brain around {_mm(point)} has intensity {reference:.4g} (median), a FLAIR has "
            f"positive intensities there; pass the session's flair.nii.gz, loaded as float")
    if not seed_value >= params.min_seed_relative_intensity * reference:
        raise InputError(
            f"{_name(flair)}: nothing within {params.seed_search_radius_mm:g} mm of {_mm(point)} is hyperintense: "
            f"the brightest voxel is {seed_value / reference:.2f} x the surrounding normal-appearing brain "
            f"(median {reference:.4g}), a lesion needs >= {params.min_seed_relative_intensity:g} x; "
            f"point at the centre of the bright lesion")

    allowed = available & (_distance_mm(smoothed.shape, np.array(seed), spacing) <= params.max_radius_mm)
    bound = reference + params.boundary_fraction * (seed_value - reference)
    max_voxels = int(np.floor(params.max_volume_mm3 / flair.voxel_volume_mm3 + 1e-9))
    # Grow on the unsmoothed image: smoothing moves the half-contrast edge of a small lesion inwards.
    image = flair.data[box].astype(np.float32)
    region = _grow(image, allowed, seed, bound)
    if region.sum() > max_voxels:
        region = _fit_volume(image, allowed, seed, region, max_voxels, spacing)

    mask = np.zeros(flair.data.shape, dtype=bool)
    mask[box] = region
    return mask


# ----------------------------------------------------------------------------- checks and geometry

def _check_grids(flair: Volume, brain_mask: Volume, existing_labels) -> np.ndarray:
    """The boolean 'already labelled' array, after checking every input shares flair's grid."""
    if flair.data.shape != brain_mask.data.shape or not np.allclose(flair.affine, brain_mask.affine,
                                                                    atol=_GRID_TOLERANCE):
        raise SpaceError(
            f"the brain mask {_name(brain_mask)} (shape {brain_mask.data.shape}, spacing "
            f"{_spacing(brain_mask)} mm, origin {_mm(brain_mask.affine[:3, 3])}) is not on the grid of the FLAIR "
            f"{_name(flair)} (shape {flair.data.shape}, spacing {_spacing(flair)} mm, origin "
            f"{_mm(flair.affine[:3, 3])}); pass the brain_mask.nii.gz of the same session")
    if existing_labels is None:
        return np.zeros(flair.data.shape, dtype=bool)
    existing = np.asarray(existing_labels)
    if existing.shape != flair.data.shape:
        raise SpaceError(
            f"existing_labels has shape {existing.shape}, the FLAIR {_name(flair)} has {flair.data.shape}; "
            f"pass the lesions.nii.gz of the same session")
    return existing != 0


def _to_voxel(volume: Volume, point: np.ndarray) -> np.ndarray:
    return (np.linalg.inv(volume.affine) @ np.append(point, 1.0))[:3]


def _nearest_voxel(volume: Volume, point: np.ndarray) -> tuple[int, int, int]:
    index = np.rint(_to_voxel(volume, point)).astype(int)
    shape = volume.data.shape
    if np.any(index < 0) or np.any(index >= np.array(shape)):
        corners = [volume.affine @ np.array([*c, 1.0]) for c in ((0, 0, 0), tuple(n - 1 for n in shape))]
        raise InputError(
            f"{_name(volume)}: the point {_mm(point)} lies outside the image (voxel {tuple(index.tolist())}, "
            f"grid {shape}, from {_mm(corners[0][:3])} to {_mm(corners[1][:3])}); give the point in world "
            f"RAS mm on this session's FLAIR, as report.json's centroid_mm")
    return tuple(int(i) for i in index)


def _box(voxel, radius_mm: float, spacing: np.ndarray, shape) -> tuple[slice, ...]:
    half = np.ceil(radius_mm / spacing).astype(int)
    return tuple(slice(max(0, c - h), min(n, c + h + 1)) for c, h, n in zip(voxel, half, shape))


def _distance_mm(shape, centre: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distance (mm) of every voxel centre of a grid of `shape` from `centre` (voxel coordinates)."""
    axes = np.ogrid[tuple(slice(0, n) for n in shape)]
    return np.sqrt(sum(((axis - c) * s) ** 2 for axis, c, s in zip(axes, centre, spacing)))


# ----------------------------------------------------------------------------- reference, seed, growing

def _reference(smoothed, available, point, spacing, radius_mm: float) -> float:
    """Median intensity of the available (brain, unlabelled) voxels within radius_mm of the point.

    Called after the seed is found, so `available` holds at least the seed."""
    near = available & (_distance_mm(smoothed.shape, point, spacing) <= radius_mm)
    values = smoothed[near] if near.any() else smoothed[available]  # a radius below the voxel size
    return float(np.median(values))


def _seed(smoothed, available, point, spacing, params: GrowParams, flair, point_mm, labelled) -> tuple:
    """Index (in the crop) of the brightest available voxel near the point; ties go to the nearest, then lowest."""
    distance = _distance_mm(smoothed.shape, point, spacing)
    near = distance <= params.seed_search_radius_mm
    near[tuple(np.rint(point).astype(int))] = True  # the point's own voxel, even when the radius is below a voxel
    candidates = near & available
    if not candidates.any():
        raise InputError(
            f"{_name(flair)}: every brain voxel within {params.seed_search_radius_mm:g} mm of {_mm(point_mm)} "
            f"belongs to a lesion already found ({int((near & labelled).sum())} labelled voxels there); "
            f"that lesion needs no adding: confirm or correct it instead")
    indices = np.flatnonzero(candidates)
    # lexsort's last key is primary: brightest first, then nearest, then lowest index (deterministic).
    order = np.lexsort((indices, distance.ravel()[indices], -smoothed.ravel()[indices]))
    return tuple(int(i) for i in np.unravel_index(indices[order[0]], smoothed.shape))


def _grow(image, allowed, seed, bound: float) -> np.ndarray:
    """The 26-connected component of {image >= bound} & allowed holding the seed, holes filled."""
    inside = allowed & (image >= bound)
    inside[seed] = True  # the seed belongs even when noise puts its own voxel below the bound
    components, _ = ndimage.label(inside, structure=_CONNECTIVITY_26)
    region = components == components[seed]
    return ndimage.binary_fill_holes(region) & allowed


def _fit_volume(image, allowed, seed, region, max_voxels: int, spacing) -> np.ndarray:
    """The region at the lowest bound (one of its own intensities) that leaves at most max_voxels."""
    levels = np.unique(image[region])  # sorted; a higher bound never gives a larger region
    low, high = 0, len(levels) - 1  # invariant: levels[high] fits (checked below), levels[< low] do not
    best = _grow(image, allowed, seed, levels[high])
    if best.sum() > max_voxels:
        return _nearest(best, seed, max_voxels, spacing)
    while low < high:
        middle = (low + high) // 2
        candidate = _grow(image, allowed, seed, levels[middle])
        if candidate.sum() <= max_voxels:
            high, best = middle, candidate
        else:
            low = middle + 1
    return best


def _nearest(region, seed, max_voxels: int, spacing) -> np.ndarray:
    """The max_voxels voxels of region nearest the seed (ties by index), reduced to the seed's component."""
    indices = np.flatnonzero(region)
    distance = _distance_mm(region.shape, np.array(seed), spacing).ravel()[indices]
    keep = np.zeros(region.size, dtype=bool)
    keep[indices[np.lexsort((indices, distance))[:max_voxels]]] = True
    components, _ = ndimage.label(keep.reshape(region.shape), structure=_CONNECTIVITY_26)
    return components == components[seed]


# ----------------------------------------------------------------------------- messages

def _name(volume: Volume) -> str:
    return str(volume.source) if volume.source is not None else f"({volume.kind} volume)"


def _mm(values) -> str:
    return "(" + ", ".join(f"{float(v):.1f}" for v in values) + ") mm"


def _spacing(volume: Volume) -> str:
    return " x ".join(f"{s:.2f}" for s in volume.spacing_mm)
