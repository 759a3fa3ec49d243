"""Preprocess one visit's images: canonical orientation, N4 bias correction, brain extraction.

Brain extraction is deepbet (Fisch et al. 2024), a CNN whose weights ship inside its PyPI
wheel, run on the whole-head T1; the mask includes the ventricles (voids are filled).
Intensity normalisation belongs to the consumer (segment's input contract; atrophy's
tissue-specific normalisation), so it is not done here.
"""

from __future__ import annotations

import numpy as np

from msvol.config import PreprocessParams
from msvol.datatypes import Volume
from msvol.errors import InputError

METHODS = ("Images were reoriented to RAS, bias-corrected with N4 [tustison2010], and the brain was extracted "
           "from the T1 with deepbet [fisch2024].")


def reorient(volume: Volume, like_affine: np.ndarray | None = None) -> Volume:
    """Permute/flip voxel axes so the grid's orientation matches `like_affine` (default RAS).

    No interpolation: the same voxels on an equivalent grid, so world positions are unchanged.
    """
    import nibabel.orientations as orientations

    target = orientations.io_orientation(np.eye(4) if like_affine is None else like_affine)
    transform = orientations.ornt_transform(orientations.io_orientation(volume.affine), target)
    data = orientations.apply_orientation(volume.data, transform)
    affine = volume.affine @ orientations.inv_ornt_aff(transform, volume.data.shape)
    return Volume(np.ascontiguousarray(data), affine, volume.kind, volume.source)


def head_mask(volume: Volume) -> np.ndarray:
    """Voxels clearly above the background noise (N4 fits its field there, not in air)."""
    data = volume.data
    return data > 0.1 * np.percentile(data, 99)


def correct_bias(volume: Volume, params: PreprocessParams) -> Volume:
    """N4 bias field correction (ANTs), fitted inside the head and applied to every voxel."""
    import ants

    data = volume.data.astype(np.float32)
    image = ants.from_numpy(data, spacing=tuple(float(s) for s in volume.spacing_mm))
    mask = ants.from_numpy(head_mask(volume).astype(np.float32), spacing=image.spacing)
    # ANTs' corrected image leaves voxels outside the mask uncorrected: the darkest CSF inside the head
    # (below the mask's threshold) kept its raw scale while its neighbours were rescaled by ~1.5, and
    # differently at each visit (issue 12: it moved the T1 CSF level, hence PBVC). The field is smooth
    # everywhere, so divide the whole image by it.
    field = ants.n4_bias_field_correction(image, mask=mask, shrink_factor=n4_shrink_factor(volume, params),
                                          convergence={"iters": list(params.n4_iterations), "tol": 1e-7},
                                          spline_param=params.n4_spline_distance_mm or None, return_bias_field=True)
    return volume.with_data((data / np.maximum(field.numpy(), 1e-6)).astype(np.float32))


def n4_shrink_factor(volume: Volume, params: PreprocessParams) -> int:
    """The whole-voxel shrink that brings the finest axis near `n4_fit_spacing_mm` (the field is smooth)."""
    return max(1, round(params.n4_fit_spacing_mm / float(min(volume.spacing_mm))))


def load_brain_extractor():
    """The deepbet network (weights from its wheel; nothing is downloaded). Reuse it across visits."""
    from deepbet.bet import BrainExtraction

    return BrainExtraction(no_gpu=True)


def extract_brain(t1: Volume, params: PreprocessParams, *, extractor=None) -> Volume:
    """Brain mask on the T1's grid.

    Raises
    ------
    InputError when the mask's volume cannot be that of an adult brain (the image is not a head,
    or not a T1); see `unusual_brain_volume` for the band that is kept and flagged.
    """
    import nibabel as nib

    extractor = extractor or load_brain_extractor()
    _, mask_image, _ = extractor.run(nib.Nifti1Image(t1.data, t1.affine), threshold=params.brain_mask_threshold)
    mask = t1.with_data(np.asarray(mask_image.dataobj) > 0, "mask")
    volume_ml = mask_volume_ml(mask)
    if not params.min_brain_volume_ml <= volume_ml <= params.max_brain_volume_ml:
        raise InputError(f"{t1.source}: brain extraction found {volume_ml:.0f} ml of brain, outside "
                         f"{params.min_brain_volume_ml:.0f}-{params.max_brain_volume_ml:.0f} ml, the range of any "
                         f"adult head; is this a whole-head 3D T1 of an adult?")
    return mask


def mask_volume_ml(mask: Volume) -> float:
    """The mask's volume, rounded to 1 mm3 (a determinant's rounding must not move a volume across a bound)."""
    return round(float(mask.data.sum() * mask.voxel_volume_mm3 / 1000), 3)


def unusual_brain_volume(mask: Volume, params: PreprocessParams) -> str | None:
    """A sentence for the report when a brain mask accepted by `extract_brain` lies outside the usual adult
    range (`warn_brain_volume_below_ml`-`warn_brain_volume_above_ml`, inclusive), else None."""
    volume_ml = mask_volume_ml(mask)
    if params.warn_brain_volume_below_ml <= volume_ml <= params.warn_brain_volume_above_ml:
        return None
    side = "small" if volume_ml < params.warn_brain_volume_below_ml else "large"
    return (f"The brain mask holds {volume_ml:.0f} ml, unusually {side} for an adult (usual "
            f"{params.warn_brain_volume_below_ml:.0f}-{params.warn_brain_volume_above_ml:.0f} ml): check the brain "
            f"extraction in the report images before trusting the volumes.")
