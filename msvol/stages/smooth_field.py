"""A smooth field through scattered samples, out to the edge of the brain: a leaf inside stages (no other stage).

Used by atrophy (the differential bias correction of the T1s) and lesion_subtraction (the FLAIR visits' intensity
ratio): in both, the samples are dense in deep white matter and sparse near the surface, where the field matters.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_FIELD_BLOCK_MM = 4.0  # the field is computed on blocks of about this size: it is smooth on >= 7 mm


def _block_sum(values: np.ndarray, block: tuple[int, ...]) -> np.ndarray:
    padded = np.pad(values, [(0, (-n) % k) for n, k in zip(values.shape, block)])
    shape = [size for n, k in zip(padded.shape, block) for size in (n // k, k)]
    return padded.reshape(shape).sum(axis=(1, 3, 5))


def _gaussian_moment(data: np.ndarray, orders, sigma) -> np.ndarray:
    """Sum over neighbours q of data(q) g(q - p) prod (q - p)_axis ** order_axis, at every p (g: Gaussian of sigma)."""
    for axis, (order, width) in enumerate(zip(orders, sigma)):
        offset = np.arange(-np.ceil(4 * width), np.ceil(4 * width) + 1)
        kernel = offset ** order * np.exp(-0.5 * (offset / width) ** 2)
        data = ndimage.correlate1d(data, kernel, axis=axis, mode="constant")
    return data


def _local_linear(means: np.ndarray, votes: np.ndarray, offsets: list[np.ndarray], sigma) -> np.ndarray:
    """At every block p, the value at p of the plane a + b . (x - p) fitted by Gaussian-weighted least squares to
    the block means placed at their samples' centroid (block centre + offset): first-order normalised convolution
    (Knutsson & Westin 1993). Falls to 0 where no sampled block lies within a few sigma."""
    unit = np.eye(3, dtype=int)
    size = means.shape + (4, 4)
    normal, weighted = np.empty(size), [votes * offset for offset in offsets]
    normal[..., 0, 0] = _gaussian_moment(votes, (0, 0, 0), sigma)
    for i in range(3):  # (d + offset_i)(d + offset_k) with d the kernel offset, term by term
        normal[..., 0, i + 1] = normal[..., i + 1, 0] = (_gaussian_moment(votes, unit[i], sigma)
                                                         + _gaussian_moment(weighted[i], (0, 0, 0), sigma))
        for k in range(i, 3):
            normal[..., i + 1, k + 1] = normal[..., k + 1, i + 1] = (
                _gaussian_moment(votes, unit[i] + unit[k], sigma) + _gaussian_moment(weighted[k], unit[i], sigma)
                + _gaussian_moment(weighted[i], unit[k], sigma)
                + _gaussian_moment(weighted[i] * offsets[k], (0, 0, 0), sigma))
    values = votes * means
    right = np.stack([_gaussian_moment(values, (0, 0, 0), sigma)]
                     + [_gaussian_moment(values, unit[i], sigma) + _gaussian_moment(values * offsets[i], (0, 0, 0), sigma)
                        for i in range(3)], axis=-1)
    total = normal[..., 0, 0].copy()
    for i in range(3):  # a faint ridge on the slopes keeps a fit from samples on one plane or line solvable
        normal[..., i + 1, i + 1] += 1e-3 * total * sigma[i] ** 2 + 1e-12
    normal[..., 0, 0] += 1e-12
    fitted = np.linalg.solve(normal, right[..., None])[..., 0, 0]
    return fitted * total / (total + 1e-3 * total.max())


def smooth_within(values: np.ndarray, weight: np.ndarray, *, sigma_mm: float, spacing_mm) -> np.ndarray:
    """A smooth field through `values` at the voxels where `weight`, on the whole grid: the samples are averaged
    in blocks of about 4 mm, every sampled block is one vote (so dense deep white matter does not outvote the few
    blocks near the cortex), and a plane is fitted locally (`_local_linear`, Gaussian of `sigma_mm`), so the
    field follows a gradient out to the brain's surface instead of flattening towards the samples' mean there.
    Interpolated back to the voxels; 0 (no correction) far from all samples.
    """
    spacing = np.asarray(spacing_mm, float)
    block = tuple(max(1, int(round(_FIELD_BLOCK_MM / s))) for s in spacing)
    weight = weight.astype(np.float64)
    counts = _block_sum(weight, block)
    votes = (counts > 0).astype(np.float64)
    means = _block_sum(np.where(weight > 0, values, 0.0) * weight, block) / np.maximum(counts, 1e-12)
    offsets = []  # the samples' centroid in each block, from its centre, in blocks
    for axis, k in enumerate(block):
        within = ((np.arange(values.shape[axis]) % k) - (k - 1) / 2) / k
        offsets.append(_block_sum(weight * within.reshape([-1 if a == axis else 1 for a in range(3)]), block)
                       / np.maximum(counts, 1e-12))
    field = _local_linear(means, votes, offsets, [sigma_mm / (s * k) for s, k in zip(spacing, block)])
    for axis, (size, k) in enumerate(zip(values.shape, block)):  # linear interpolation, one axis at a time
        position = np.clip((np.arange(size) - (k - 1) / 2) / k, 0, field.shape[axis] - 1)  # fine -> block coords
        below = np.minimum(np.floor(position).astype(int), max(field.shape[axis] - 2, 0))
        above = np.minimum(below + 1, field.shape[axis] - 1)
        weight_above = (position - below).reshape([-1 if a == axis else 1 for a in range(3)])
        field = np.take(field, below, axis) * (1 - weight_above) + np.take(field, above, axis) * weight_above
    return field.astype(np.float32)
