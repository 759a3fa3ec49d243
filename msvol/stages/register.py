"""Registration: fit rigid/affine maps (SimpleITK), build halfway spaces, resample once.

Fit, then apply: `fit_rigid` (rigid, or affine on request) only estimates; `resample` is the one function
that interpolates, always from a volume's own native grid, so interpolations are never chained
(compose `Rigid` maps instead). Maps are RAS+ mm, target -> source ("pull"), see datatypes.

Halfway space (Reuter et al. 2010 style, rigid): if P maps baseline points to follow-up points,
the halfway space reaches the baseline through P^(-1/2) and the follow-up through P^(1/2), so
both visits are interpolated alike and neither is favoured.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg, ndimage

from msvol.config import RegisterParams
from msvol.datatypes import Rigid, Volume
from msvol.errors import RegistrationError, SpaceError

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # ITK works in LPS; nibabel affines are RAS
METHODS = ("T1 was registered rigidly to FLAIR within each visit, and visits were registered rigidly into a "
           "halfway space by Mattes mutual information (SimpleITK), the FLAIRs for the lesions and the T1s for "
           "brain volume change [mattes2003, reuter2010]; each image was resampled once from its native grid.")


def _to_sitk(volume: Volume, data: np.ndarray | None = None):
    import SimpleITK as sitk

    array = volume.data if data is None else data
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.astype(np.float32).transpose(2, 1, 0)))
    lps = _RAS_TO_LPS @ volume.affine
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    image.SetDirection((lps[:3, :3] / spacing).flatten().tolist())
    return image


def _centre_of_mass_mm(volume: Volume, mask: np.ndarray | None) -> np.ndarray:
    weights = mask if mask is not None else volume.data > np.percentile(volume.data, 50)
    centre = np.array(ndimage.center_of_mass(weights))
    return volume.affine[:3, :3] @ centre + volume.affine[:3, 3]


def fit_rigid(fixed: Volume, moving: Volume, params: RegisterParams, *, fixed_mask: np.ndarray | None = None,
              moving_mask: np.ndarray | None = None, affine: bool = False, seed: int = 1) -> Rigid:
    """Rigid (or, with affine=True, 12-parameter) map fixed-space mm -> moving-space mm.

    Mattes mutual information over a 3-level pyramid, initialised by matching the centres of
    mass (of the masks where given). Raises RegistrationError if the optimiser fails.
    """
    import SimpleITK as sitk

    fixed_image, moving_image = _to_sitk(fixed), _to_sitk(moving)
    shift = _RAS_TO_LPS[:3, :3] @ (_centre_of_mass_mm(moving, moving_mask) - _centre_of_mass_mm(fixed, fixed_mask))
    centre = (_RAS_TO_LPS[:3, :3] @ _centre_of_mass_mm(fixed, fixed_mask)).tolist()
    transform = sitk.AffineTransform(3) if affine else sitk.Euler3DTransform()
    transform.SetCenter(centre)
    transform.SetTranslation(shift.tolist())
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(params.rigid_sampling_fraction, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=200,
                                                    relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(params.rigid_shrink_factors))
    method.SetSmoothingSigmasPerLevel(list(params.rigid_smoothing_mm))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    for mask, setter, reference in ((fixed_mask, method.SetMetricFixedMask, fixed),
                                    (moving_mask, method.SetMetricMovingMask, moving)):
        if mask is not None:
            dilated = ndimage.binary_dilation(mask, iterations=3)
            setter(sitk.Cast(_to_sitk(reference, dilated), sitk.sitkUInt8))
    method.SetInitialTransform(transform, inPlace=True)
    try:
        method.Execute(fixed_image, moving_image)
    except RuntimeError as exc:
        raise RegistrationError(f"registration of {moving.source} to {fixed.source} failed: {exc}") from exc
    return Rigid(_RAS_TO_LPS @ _as_matrix(transform) @ _RAS_TO_LPS)


def _as_matrix(transform) -> np.ndarray:
    """4x4 of an ITK affine-family transform, from the images of the origin and unit vectors."""
    origin = np.array(transform.TransformPoint((0.0, 0.0, 0.0)))
    matrix = np.eye(4)
    for axis in range(3):
        unit = np.zeros(3)
        unit[axis] = 1.0
        matrix[:3, axis] = np.array(transform.TransformPoint(tuple(unit))) - origin
    matrix[:3, 3] = origin
    return matrix


def halfway(baseline_to_followup: Rigid) -> tuple[Rigid, Rigid]:
    """(halfway -> baseline, halfway -> follow-up) pull maps from the baseline -> follow-up map."""
    half = np.real(linalg.sqrtm(baseline_to_followup.matrix))
    half[3] = [0, 0, 0, 1]
    return Rigid(np.linalg.inv(half)), Rigid(half)


def bounding_grid(mask: Volume, margin_mm: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """(shape, affine) of the part of `mask`'s grid that holds its True voxels and `margin_mm` around them.

    Same voxels and orientation as the mask's grid, only fewer: a halfway space for one pair of visits
    that leaves out the air and the neck. Raises SpaceError for an empty mask.
    """
    if not mask.data.any():
        raise SpaceError(f"bounding grid of an empty mask ({mask.source})")
    margin = np.ceil(margin_mm / mask.spacing_mm).astype(int)
    found = np.argwhere(mask.data)
    low = np.maximum(found.min(axis=0) - margin, 0)
    high = np.minimum(found.max(axis=0) + margin + 1, mask.data.shape)
    affine = mask.affine.copy()
    affine[:3, 3] = mask.affine[:3, :3] @ low + mask.affine[:3, 3]
    return tuple(int(n) for n in high - low), affine


def resample(volume: Volume, pull: Rigid, shape: tuple[int, int, int], affine: np.ndarray, *,
             order: int = 1) -> Volume:
    """`volume` sampled on the grid (shape, affine) through `pull` (grid mm -> volume mm).

    order 0 for labels, 1 for images; a boolean mask is interpolated linearly and thresholded at
    0.5 (less jagged than nearest neighbour).
    """
    # Round off 1e-15 residues of inv(A) @ A: 'constant' mode would drop a face sample at -1e-15.
    voxel_map = np.round(np.linalg.inv(volume.affine) @ pull.matrix @ affine, 9)
    is_mask = volume.data.dtype == bool
    source = volume.data.astype(np.float32) if is_mask else volume.data
    data = ndimage.affine_transform(source, voxel_map[:3, :3], voxel_map[:3, 3], output_shape=tuple(shape),
                                    order=0 if volume.data.dtype.kind in "iu" else order, mode="constant",
                                    cval=0.0, prefilter=False)
    if is_mask:
        data = data >= 0.5
    return Volume(data, affine.copy(), volume.kind, volume.source)


def alignment_correlation(first: np.ndarray, second: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of two images on the same grid inside `mask` (QC of an alignment)."""
    if first.shape != second.shape or first.shape != mask.shape:
        raise SpaceError(f"alignment check needs one grid, got {first.shape}, {second.shape} and {mask.shape}")
    return float(np.corrcoef(first[mask], second[mask])[0, 1])
