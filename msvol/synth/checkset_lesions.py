"""Lesions of the independent check set (msvol.synth.checkset), put into finished images.

A second, simple method, written apart from msvol.synth.patients: tissue is read back from the
finished images (white matter from T1 intensity), a lesion shape is a level function on a small
box (a thresholded random blob, a cluster of spheres, or a lesion cut out of another synthetic
patient's truth label map), fitted to a target volume inside white matter by bisection on the
level, and blended into FLAIR and T1 at a chosen contrast relative to the local white matter,
with a soft edge.

Vocabulary
----------
mask : the lesion as the truth counts it (the 50 % level of its partial-volume fraction).
fraction : 0-1 partial-volume map used to blend the images; 1 inside, a ramp of `edge_mm` across the mask
    boundary (0: sharp), so the summed fraction is the mask volume.
FLAIR contrast : lesion FLAIR = (1 + contrast) x local white matter (0.15 = faint).
T1 ratio : lesion T1 = ratio x local white matter (1 = isointense, lower = darker).
box : a tuple of slices into the subject grid; level functions and masks live on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

_FULL = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity


@dataclass(frozen=True, eq=False)
class TissueMaps:
    """What the check set reads back from a subject's finished images (subject grid)."""

    wm: np.ndarray  # white-matter fraction estimate, 0-1
    flair_wm: np.ndarray  # local white-matter FLAIR level (images are in white-matter units, so ~1)
    t1_wm: np.ndarray
    ventricles: np.ndarray  # bool
    envelope: np.ndarray  # bool: brain with sulci and ventricles, 2 voxels beyond any tissue
    intracranial: np.ndarray  # bool: envelope and the outer CSF
    sites: dict  # site name -> (n, 3) candidate centre voxels
    centre_voxel: np.ndarray  # brain centre (tissue centre of mass)


def white_matter_levels(image: np.ndarray, inside: np.ndarray) -> tuple[float, float]:
    """(dark class, bright class) medians of `image` over `inside` by two-means (GM and WM on T1),
    starting halfway between the 5th and 95th percentiles."""
    values = image[inside].astype(np.float64)
    threshold = float(np.mean(np.percentile(values, [5, 95])))
    for _ in range(20):
        threshold = 0.5 * (np.median(values[values < threshold]) + np.median(values[values >= threshold]))
    return float(np.median(values[values < threshold])), float(np.median(values[values >= threshold]))


def tissue_maps(flair: np.ndarray, t1: np.ndarray, tissue: np.ndarray, labels: np.ndarray) -> TissueMaps:
    """White matter, ventricles, lesion sites and local white-matter levels from white-matter-normalised
    images (FLAIR, T1), the tissue fraction (GM + WM) and the old lesion labels."""
    lesion_zone = ndimage.binary_dilation(labels > 0, _FULL, iterations=2)
    pure = (tissue > 0.99) & ~lesion_zone
    grey_t1, white_t1 = white_matter_levels(t1, pure)
    wm = np.clip((t1 - grey_t1) / (white_t1 - grey_t1), 0, 1) * (tissue >= 0.5)
    wm = np.where(ndimage.binary_dilation(labels > 0, _FULL), 1.0, wm).astype(np.float32)
    core = ndimage.binary_erosion(wm > 0.95, _FULL) & ~lesion_zone

    def local(image):
        weight = ndimage.gaussian_filter(core.astype(np.float32), 5.0)
        level = ndimage.gaussian_filter(np.where(core, image, 0).astype(np.float32), 5.0)
        fallback = float(np.median(image[core]))
        return np.where(weight > 0.05, level / np.maximum(weight, 1e-6), fallback).astype(np.float32)

    envelope, ventricles = envelope_and_ventricles(tissue)
    # Outer CSF: dark on FLAIR and T1, but brighter than bone on T1 (CSF ~0.15, skull ~0.05, marrow
    # and scalp ~1 of white matter), reached from the envelope without crossing bone or marrow.
    near = ndimage.distance_transform_edt(~envelope) <= 8
    fluid, _ = ndimage.label(envelope | (near & (t1 > 0.08) & (t1 < 0.35) & (flair < 0.6)))
    intracranial = np.isin(fluid, np.unique(fluid[envelope])) & (fluid > 0)

    to_ventricle = ndimage.distance_transform_edt(~ventricles)
    to_cortex = ndimage.distance_transform_edt(~((tissue >= 0.5) & (wm < 0.5)))
    white = wm >= 0.9
    z_index = np.argwhere(tissue > 0.5)[:, 2]
    low_z = z_index.min() + 0.3 * (z_index.max() - z_index.min())
    centre = np.array(ndimage.center_of_mass(tissue))
    x, _, z = np.indices(tissue.shape, sparse=True)
    sites = {
        "periventricular": white & (to_ventricle >= 1.5) & (to_ventricle <= 4),
        "deep_white_matter": white & (to_cortex >= 5) & (to_ventricle >= 8),
        "juxtacortical": (wm >= 0.5) & (to_cortex >= 1) & (to_cortex <= 2.5),
        # brainstem and medial cerebellum: the lowest 30 % of the brain, within 22 mm of the midline
        "infratentorial": (wm >= 0.7) & (z < low_z) & (np.abs(x - centre[0]) < 22),
    }
    return TissueMaps(wm, local(flair), local(t1), ventricles, envelope, intracranial,
                      {name: np.argwhere(mask) for name, mask in sites.items()}, centre)


def envelope_and_ventricles(tissue: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The brain envelope (tissue closed with a 3 mm ball, filled, grown by 2 voxels) and the
    ventricles (CSF deeper than 10 mm inside it, components of >= 100 voxels)."""
    body = tissue > 0.01
    closed = ndimage.distance_transform_edt(ndimage.distance_transform_edt(~body) <= 3) > 3  # closing, r = 3
    envelope = ndimage.distance_transform_edt(~ndimage.binary_fill_holes(closed | body)) <= 2
    ventricles = envelope & (tissue < 0.3) & (ndimage.distance_transform_edt(envelope) > 10)
    components, count = ndimage.label(ventricles)
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    return envelope, np.isin(components, np.flatnonzero(sizes >= 100)) & (components > 0)


# ----------------------------------------------------------------------------- shapes

def box_around(centre, half: int, shape) -> tuple[slice, ...]:
    return tuple(slice(max(int(c) - half, 0), min(int(c) + half + 1, n)) for c, n in zip(centre, shape))


def _offsets(box, centre) -> np.ndarray:
    """(3, *box shape) voxel offsets of the box's voxels from `centre`."""
    index = np.indices(tuple(s.stop - s.start for s in box), dtype=np.float32)
    return index + np.array([s.start - c for s, c in zip(box, centre)], dtype=np.float32).reshape(3, 1, 1, 1)


def blob_level(rng, box, centre, radius: float) -> np.ndarray:
    """A sphere roughened by a smooth random field: irregular, lobulated shapes."""
    offsets = _offsets(box, centre)
    noise = ndimage.gaussian_filter(rng.standard_normal(offsets.shape[1:]), max(1.0, radius / 2))
    noise /= noise.std() + 1e-12
    return 1 - np.sqrt((offsets ** 2).sum(axis=0)) / radius + 0.45 * noise


def cluster_level(rng, box, centre, radius: float) -> np.ndarray:
    """Two to five overlapping spheres along a random walk: elongated, confluent-looking shapes."""
    offsets = _offsets(box, centre)
    count = int(rng.integers(2, 6))
    step_direction = rng.normal(size=3)
    position, level = np.zeros(3), None
    for _ in range(count):
        sphere = radius * rng.uniform(0.55, 0.8)
        here = 1 - np.sqrt(((offsets - position.reshape(3, 1, 1, 1).astype(np.float32)) ** 2).sum(axis=0)) / sphere
        level = here if level is None else np.maximum(level, here)
        step_direction = step_direction + 0.7 * rng.normal(size=3)
        position = position + 0.9 * sphere * step_direction / np.linalg.norm(step_direction)
    return level


def donor_level(rng, box, centre, radius: float, donor: np.ndarray) -> np.ndarray:
    """A lesion of another synthetic patient (boolean crop), turned and scaled to `radius`."""
    from scipy.spatial.transform import Rotation

    offsets = _offsets(box, centre)
    donor_radius = (3 * donor.sum() / (4 * np.pi)) ** (1 / 3)
    smooth = ndimage.gaussian_filter(donor.astype(np.float32), 0.7)
    rotation = Rotation.random(random_state=int(rng.integers(2 ** 31))).as_matrix()
    donor_centre = np.array(ndimage.center_of_mass(donor))
    source = (rotation @ offsets.reshape(3, -1)) * (donor_radius / radius) + donor_centre[:, None]
    return ndimage.map_coordinates(smooth, source, order=1, mode="constant").reshape(offsets.shape[1:]) - 0.5


def donor_shapes(labels: np.ndarray, min_voxels: int = 10) -> list[np.ndarray]:
    """Boolean crops of every 26-connected lesion of a truth label map with >= min_voxels voxels."""
    components, _ = ndimage.label(labels > 0, _FULL)
    shapes = []
    for index, where in enumerate(ndimage.find_objects(components), start=1):
        crop = np.pad(components[where] == index, 2)
        if crop.sum() >= min_voxels:
            shapes.append(crop)
    return shapes


def fit_mask(level: np.ndarray, allowed: np.ndarray, volume_voxels: float) -> np.ndarray | None:
    """The connected set {level >= t} inside `allowed` (its largest piece) whose size is closest to
    `volume_voxels`, by bisection on t; None when no t comes within max(1, 5 %) of it."""
    def mask_at(threshold):
        inside = (level >= threshold) & allowed
        components, count = ndimage.label(inside, _FULL)
        if count <= 1:
            return inside
        sizes = np.bincount(components.ravel())[1:]
        return components == (np.argmax(sizes) + 1)

    low, high = float(level[allowed].min()) if allowed.any() else 0.0, float(level.max())
    best = None
    for _ in range(40):
        middle = 0.5 * (low + high)
        mask = mask_at(middle)
        size = int(mask.sum())
        if best is None or abs(size - volume_voxels) < abs(best.sum() - volume_voxels):
            best = mask
        if size > volume_voxels:
            low = middle
        elif size < volume_voxels:
            high = middle
        else:
            break
    if best is None or abs(best.sum() - volume_voxels) > max(1.0, 0.05 * volume_voxels):
        return None
    return best


def soft_fraction(mask: np.ndarray, edge_mm: float) -> np.ndarray:
    """Partial-volume fraction of a boolean mask: 0.5 - signed distance / edge_mm, clipped to 0-1
    (signed distance between voxel centres and the mask boundary, half a voxel out from the mask's
    outer voxels); edge_mm < 0.5 gives the mask itself."""
    if edge_mm < 0.5:
        return mask.astype(np.float32)
    signed = np.where(mask, 0.5 - ndimage.distance_transform_edt(mask),
                      ndimage.distance_transform_edt(~mask) - 0.5)
    return np.clip(0.5 - signed / edge_mm, 0, 1).astype(np.float32)


def blend(image: np.ndarray, box, fraction: np.ndarray, target: np.ndarray | float) -> None:
    """image[box] <- image[box] (1 - fraction) + target fraction, in place."""
    region = image[box]
    region += fraction * (target - region)


def grow_mask(rng, lesion: np.ndarray, allowed: np.ndarray, volume_voxels: float) -> np.ndarray | None:
    """`lesion` grown outward, unevenly (a smooth random speed), to `volume_voxels` inside `allowed`."""
    distance = ndimage.distance_transform_edt(~lesion)
    noise = ndimage.gaussian_filter(rng.standard_normal(lesion.shape), 1.5)
    level = -distance / np.exp(0.4 * noise / (noise.std() + 1e-12))
    grown = fit_mask(np.where(lesion, 1.0, level), allowed | lesion, volume_voxels)
    if grown is None or (grown & lesion).sum() != lesion.sum():
        return None
    return grown


def bridge_mask(first: np.ndarray, second: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """The straight segment between the closest voxels of two masks with its 6-neighbours, in
    `allowed` and outside both: a thin bridge that joins them into one 26-connected lesion."""
    to_second, nearest = ndimage.distance_transform_edt(~second, return_indices=True)
    start = np.unravel_index(np.argmin(np.where(first, to_second, np.inf)), first.shape)
    end = nearest[(slice(None), *start)]
    steps = int(np.ceil(np.linalg.norm(np.subtract(end, start)))) * 3 + 1
    line = np.zeros(first.shape, dtype=bool)
    for t in np.linspace(0, 1, steps):
        line[tuple(np.rint(np.add(start, t * np.subtract(end, start))).astype(int))] = True
    return ndimage.binary_dilation(line, ndimage.generate_binary_structure(3, 1)) & allowed & ~first & ~second
