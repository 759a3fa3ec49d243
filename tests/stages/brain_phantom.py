"""Brain phantoms with a known tissue change, for the PBVC tests and bench/pbvc_recovery.py.

Independent of msvol.synth (no template, no shared code): the anatomy is analytic, so any visit can be
rendered on any grid under any head pose. An ellipsoidal brain with a folded cortex (sulci are the
thin zero set of a smooth random field, with a grey-matter ribbon around them and under the surface),
two lateral ventricles, deep grey nuclei, an outer CSF layer, skull with marrow, and scalp.

Two kinds of known change:
- `contraction`: the whole brain (tissue, sulci and ventricles) is scaled by s about its centre and the
  outer CSF takes up the volume; the skull does not move. The tissue volume scales by s^3.
- `displacement`: every label is pulled through x -> x - u(x), for a displacement field u in anatomy
  mm (use `divergence_field` for msvol-style atrophy: div u < 0 in tissue, > 0 in CSF).
Each voxel's tissue fractions are the share of `supersample`^3 points inside it with that label, so
partial volume is real and the truth is what was rendered (`tissue_ml`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

CLASSES = ("csf", "gm", "wm", "skull", "marrow", "scalp")  # label values 1..6; 0 is air
CSF, GM, WM, SKULL, MARROW, SCALP = range(1, 7)
# Intensities per class, deliberately not msvol.synth's (T1: CSF 0.25, GM 0.62 of WM).
T1_CONTRAST = {"csf": 0.25, "gm": 0.62, "wm": 1.0, "skull": 0.05, "marrow": 0.8, "scalp": 0.85}
FLAIR_CONTRAST = {"csf": 0.1, "gm": 0.75, "wm": 0.6, "skull": 0.05, "marrow": 0.35, "scalp": 0.6}


@dataclass(frozen=True, eq=False)
class Head:
    """An analytic head in anatomy millimetres (brain centre at the origin)."""

    brain_semi_axes_mm: np.ndarray  # (3,) the brain's outer surface (an ellipsoid)
    outer_csf_mm: float  # CSF between brain and skull
    cortex_mm: float  # grey-matter ribbon thickness
    sulcus_depth_mm: float
    sulcus_half_width_mm: float  # sulci: |folds| < this, where |grad folds| is about 1
    folds: np.ndarray  # smooth random field, mm units, on a 2 mm grid
    folds_origin_mm: np.ndarray
    ventricles: tuple  # ((centre mm, semi-axes mm), ...)
    nuclei: tuple  # deep grey matter, same form


def make_head(seed: int, size: float = 1.0) -> Head:
    """A random head; `size` scales the brain (1.0: an adult brain of about 1.3 l, 0.4: test-sized)."""
    rng = np.random.default_rng(seed)
    axes = size * np.array([66.0, 82.0, 60.0]) * rng.uniform(0.95, 1.05, 3)
    reach = axes + 30 * size
    shape = tuple(int(np.ceil(2 * r / 2.0)) + 3 for r in reach)
    correlation_mm = 6.0  # sulci about 10 mm apart whatever the size
    folds = ndimage.gaussian_filter(rng.standard_normal(shape), correlation_mm / 2.0)
    gradient = np.sqrt(sum(g ** 2 for g in np.gradient(folds, 2.0)))
    folds = (folds / gradient.mean()).astype(np.float32)  # |grad| ~ 1: |folds| approximates mm to the sheet
    # a small head keeps ventricles wide enough to hold pure CSF 2 voxels from any edge
    ventricle_axes = np.maximum(np.array([5.0, 22.0, 7.0]) * size, [6.0, 12.0, 6.0])
    ventricles = tuple((np.array([side * max(11.0 * size, 8.0), -2.0 * size, 4.0 * size]), ventricle_axes)
                       for side in (-1, 1))
    nuclei = tuple((np.array([side * 18.0, 0.0, -2.0]) * size, np.array([7.0, 12.0, 8.0]) * size) for side in (-1, 1))
    cortex_mm = 3.0 * min(1.0, 0.5 + size / 2)  # thinner in a small head, so that white matter stays the bulk
    return Head(axes, 3.0, cortex_mm, 20.0 * size, 0.7, folds, -(np.array(shape) - 1) * 1.0, ventricles, nuclei)


def _depth_mm(head: Head, points: np.ndarray) -> np.ndarray:
    """Approximate depth below the brain's outer surface (negative outside)."""
    radius = np.sqrt(((points / head.brain_semi_axes_mm) ** 2).sum(-1))
    return (1.0 - radius) * head.brain_semi_axes_mm.mean()


def _inside(points: np.ndarray, centre: np.ndarray, semi_axes: np.ndarray) -> np.ndarray:
    return (((points - centre) / semi_axes) ** 2).sum(-1) < 1.0


def brain_labels(head: Head, points: np.ndarray) -> np.ndarray:
    """Labels of points (N, 3) mm inside the brain's envelope (CSF, GM or WM); 0 outside it."""
    depth = _depth_mm(head, points)
    folds = np.abs(ndimage.map_coordinates(head.folds, ((points - head.folds_origin_mm) / 2.0).T, order=1,
                                           mode="nearest"))
    labels = np.where(depth > 0, WM, 0).astype(np.int8)
    folded = depth < head.sulcus_depth_mm
    beside_sulcus = folded & (folds < head.sulcus_half_width_mm + head.cortex_mm)
    under_sulcus = (depth < head.sulcus_depth_mm + head.cortex_mm) & (folds < head.sulcus_half_width_mm)
    labels[(depth > 0) & ((depth < head.cortex_mm) | beside_sulcus | under_sulcus)] = GM
    for centre, semi_axes in head.nuclei:
        labels[_inside(points, centre, semi_axes)] = GM
    labels[(depth > 0) & folded & (folds < head.sulcus_half_width_mm)] = CSF
    for centre, semi_axes in head.ventricles:
        labels[_inside(points, centre, semi_axes)] = CSF
    return labels


def labels_at(head: Head, points: np.ndarray, contraction: float = 1.0) -> np.ndarray:
    """Labels at points (N, 3) in anatomy mm, with the brain scaled by `contraction` about its centre."""
    labels = brain_labels(head, points / contraction)
    depth = _depth_mm(head, points)  # the skull does not move
    gap = head.outer_csf_mm
    outside = labels == 0
    for label, outer_mm in ((CSF, gap), (SKULL, gap + 2.0), (MARROW, gap + 4.5), (SKULL, gap + 6.5),
                            (SCALP, gap + 11.0)):
        labels[outside & (depth > -outer_mm)] = label
        outside &= depth <= -outer_mm
    return labels


def render(head: Head, shape, affine: np.ndarray, *, pose: np.ndarray = np.eye(4), contraction: float = 1.0,
           displacement: tuple[np.ndarray, np.ndarray] | None = None, supersample: int = 2) -> dict[str, np.ndarray]:
    """Partial-volume fraction of each class on the grid (shape, affine).

    `pose` maps anatomy mm to scanner mm (the head's position at this visit). `displacement` is
    (u, u_affine): a field (3, ...) of anatomy-mm displacements on the grid u_affine (voxel -> anatomy
    mm); each anatomy point x is labelled as x - u(x).
    """
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    sub = np.stack(np.meshgrid(offsets, offsets, offsets, indexing="ij"), -1).reshape(-1, 3)
    to_anatomy = np.linalg.inv(pose) @ affine
    counts = np.zeros((len(CLASSES) + 1, *shape), np.float32)
    plane = np.stack(np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij"), -1).reshape(-1, 2)
    for i in range(shape[0]):
        voxels = np.concatenate([np.full((len(plane), 1), i), plane], 1).astype(np.float64)
        for offset in sub:
            points = (voxels + offset) @ to_anatomy[:3, :3].T + to_anatomy[:3, 3]
            if displacement is not None:
                field, field_affine = displacement
                inverse = np.linalg.inv(field_affine)
                at = (points @ inverse[:3, :3].T + inverse[:3, 3]).T
                points = points - np.stack([ndimage.map_coordinates(component, at, order=1, mode="nearest")
                                            for component in field], -1)
            labels = labels_at(head, points, contraction).reshape(shape[1:])
            for label in range(1, len(CLASSES) + 1):
                counts[label, i] += labels == label
    return {name: counts[label] / len(sub) for label, name in enumerate(CLASSES, start=1)}


def tissue_ml(fractions: dict[str, np.ndarray], affine: np.ndarray) -> float:
    """GM + WM volume rendered on a grid."""
    return float((fractions["gm"] + fractions["wm"]).sum() * abs(np.linalg.det(affine[:3, :3])) / 1000)


def divergence_field(fractions: dict[str, np.ndarray], affine: np.ndarray, loss_percent: float) -> np.ndarray:
    """msvol-style atrophy on this grid: a curl-free displacement (mm) with divergence -a in tissue and +b in
    intracranial CSF (sum zero, so the skull barely moves), a set so that the tissue loses about `loss_percent`.

    The same construction as msvol.synth.anatomy.atrophy_field (Laplace solved by FFT), written afresh for
    any grid; the truth is still what is rendered.
    """
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(0))
    tissue = (fractions["gm"] + fractions["wm"]).astype(np.float64)
    csf = fractions["csf"].astype(np.float64)
    growth = tissue.sum() / csf.sum()
    strength = loss_percent / 100 * tissue.sum() / ((tissue ** 2).sum() - growth * (tissue * csf).sum())
    source = strength * (growth * csf - tissue)
    shape = tissue.shape
    frequencies = np.meshgrid(*[2 * np.pi * np.fft.fftfreq(n, d) for n, d in zip(shape[:2], spacing[:2])],
                              2 * np.pi * np.fft.rfftfreq(shape[2], spacing[2]), indexing="ij")
    laplacian = -sum(f ** 2 for f in frequencies)
    laplacian[0, 0, 0] = 1.0
    potential = np.fft.rfftn(source) / laplacian
    potential[0, 0, 0] = 0
    # grad(phi) in mm along the grid axes: render the fractions with pose = identity on an axis-aligned grid
    return np.stack([np.fft.irfftn(1j * f * potential, shape, axes=(0, 1, 2)) for f in frequencies]).astype(np.float32)


def acquire(fractions: dict[str, np.ndarray], contrast: dict[str, float], rng: np.random.Generator, *,
            noise_sd: float, bias_amplitude: float = 0.0, gain: float = 1.0, psf_sd_voxels: float = 0.0) -> np.ndarray:
    """Image from fractions: class intensities, a Gaussian point-spread function, a smooth multiplicative bias,
    gain and Rician noise (sd relative to WM = 1 on the T1)."""
    image = sum(contrast[name] * fractions[name] for name in CLASSES)
    if psf_sd_voxels:
        image = ndimage.gaussian_filter(image, psf_sd_voxels)
    shape = image.shape
    if bias_amplitude:
        coarse = rng.standard_normal((3, 3, 3))
        field = ndimage.zoom(coarse, [s / 3 for s in shape], order=2)
        image = image * np.exp(bias_amplitude * field / (np.abs(field).max() + 1e-9))
    image = image * gain
    if noise_sd:
        image = np.hypot(image + rng.normal(0, noise_sd, shape), rng.normal(0, noise_sd, shape))
    return image.astype(np.float32)


def grid(shape, spacing_mm=(1.0, 1.0, 1.0)) -> np.ndarray:
    """An axis-aligned RAS affine centred on the origin."""
    affine = np.diag([*map(float, spacing_mm), 1.0])
    affine[:3, 3] = -(np.array(shape) - 1) / 2.0 * np.asarray(spacing_mm, float)
    return affine


def brain_mask(fractions: dict[str, np.ndarray]) -> np.ndarray:
    """A filled brain mask as a brain extractor gives one: tissue, sulci and ventricles, 1 voxel of margin."""
    tissue = (fractions["gm"] + fractions["wm"]) >= 0.5
    filled = ndimage.binary_fill_holes(ndimage.binary_closing(tissue, iterations=3, border_value=0))
    return ndimage.binary_dilation(filled)
