"""Atrophy: percent brain volume change (PBVC) per interval, and cross-sectional volumes per visit.

PBVC is a boundary shift integral (BSI; Freeborough & Fox 1997) with tissue-specific intensity
normalisation (KN-BSI; Leung et al. 2010), computed on the two T1s in their halfway space:
1. the baseline T1 is normalised so that its CSF class mean is 0 and its WM class mean is 1
   (3-class k-means inside the dilated brain mask); the follow-up is mapped linearly onto it
   using medians over voxels that are pure CSF and pure tissue at both visits;
2. the boundary region is the union of both tissue masks dilated by `boundary_width_voxels`
   minus their intersection eroded by as much: every tissue/CSF edge (cortex, sulci, ventricles);
3. intensities are clipped to a window strictly between the CSF and GM means; the summed
   clipped difference, divided by the window width, is the tissue volume lost.
Why BSI: an edge that moves by d shifts its whole intensity profile, and the integral of the
clipped difference is d times the edge area whatever the exact window, so the figure does not
depend on where a brain mask's edge sits (the weakness of Jacobian averaging over a mask), and
it needs only a rigid registration (seconds, not minutes of SyN).
PBVC = -BSI / baseline brain tissue volume x 100 (negative = loss).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.cluster.vq import kmeans2

from msvol.config import AtrophyParams
from msvol.datatypes import AtrophyResult, LesionMap, TimepointMeasures, Volume
from msvol.errors import InputError

METHODS = ("Brain volume change was measured as a boundary shift integral with tissue-specific intensity "
           "normalisation on the two T1s in halfway space [freeborough1997, leung2010]; normalised brain "
           "volume and intracranial volume use the affine scaling to the MNI ICBM152 template [buckner2004].")
_WINDOW_MARGIN = 0.2  # fraction of the CSF-GM gap kept clear of each class mean, so noise rarely clips


def tissue_means(image: np.ndarray, mask: np.ndarray, *, seed: int = 0) -> tuple[float, float, float]:
    """CSF, GM and WM class means by 3-class k-means inside the mask dilated by 3 voxels."""
    region = ndimage.binary_dilation(mask, iterations=3)
    values = image[region][::7].astype(np.float64)
    if values.size < 300:
        raise InputError("brain mask too small to estimate tissue intensities")
    start = np.percentile(values, [10, 50, 90])[:, None]
    centres, members = kmeans2(values[:, None], start, minit="matrix", seed=seed)
    order = np.argsort(centres[:, 0])
    counts = np.bincount(members, minlength=3)[order]
    if counts[2] <= counts[0]:  # in a T1 brain mask the brightest class (WM) outnumbers the darkest (CSF)
        raise InputError("T1 contrast not recognised: the darkest tissue class is the largest inside the brain; "
                         "is the T1w image really a T1?")
    csf, gm, wm = centres[order, 0]
    return float(csf), float(gm), float(wm)


def normalize_t1(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float]:
    """T1 scaled to CSF = 0, WM = 1; returns it and the normalised GM mean."""
    csf, gm, wm = tissue_means(image, mask)
    normalized = (image.astype(np.float32) - csf) / (wm - csf)
    return normalized, (gm - csf) / (wm - csf)


def tissue_volume_ml(normalized_t1: np.ndarray, mask: np.ndarray, gm_level: float, voxel_mm3: float,
                     lesion_mask: np.ndarray | None = None) -> float:
    """Brain tissue volume: partial-volume fraction (CSF 0 -> GM 1, clipped) summed over the mask.

    Lesions count as tissue (T1-dark lesions would otherwise read as part CSF).
    """
    fraction = np.clip(normalized_t1[mask] / gm_level, 0, 1)
    if lesion_mask is not None:
        fraction = np.where(lesion_mask[mask], 1.0, fraction)
    return float(fraction.sum() * voxel_mm3 / 1000)


def _match_intensities(followup: np.ndarray, baseline_normalized: np.ndarray, common_mask: np.ndarray,
                       gm_level: float) -> np.ndarray:
    """Follow-up T1 mapped linearly onto the normalised baseline, fitted on the same voxels.

    The two reference levels are medians over voxels that are pure CSF (ventricle interiors) and
    pure tissue at both visits, 2 voxels away from any edge: the same anatomy in both images, so
    atrophy and partial volume cannot bias the fit (per-image k-means means can, and a 0.5 %
    offset already moves PBVC by ~0.1 percentage point).
    """
    interior = ndimage.binary_erosion(common_mask, iterations=2)
    is_tissue = baseline_normalized > gm_level / 2
    pure_tissue = interior & ndimage.binary_erosion(is_tissue, iterations=2)
    pure_csf = interior & ndimage.binary_erosion(~is_tissue, iterations=2)
    if pure_csf.sum() < 100:  # no ventricles inside the mask (a phantom): use the CSF around the brain
        pure_csf = ndimage.binary_dilation(common_mask, iterations=4) & ndimage.binary_erosion(~is_tissue, iterations=2)
    if pure_tissue.sum() < 100 or pure_csf.sum() < 100:
        raise InputError("too few pure CSF or tissue voxels to match T1 intensities between visits")
    levels_base = [np.median(baseline_normalized[pure_csf]), np.median(baseline_normalized[pure_tissue])]
    levels_follow = [np.median(followup[pure_csf]), np.median(followup[pure_tissue])]
    scale = (levels_base[1] - levels_base[0]) / (levels_follow[1] - levels_follow[0])
    return ((followup - levels_follow[0]) * scale + levels_base[0]).astype(np.float32)


def measure_pbvc(baseline_t1: Volume, followup_t1: Volume, baseline_mask: Volume, followup_mask: Volume, *,
                 years: float, alignment_correlation: float, params: AtrophyParams) -> AtrophyResult:
    """PBVC between two T1s already on one halfway grid (see module docstring).

    Parameters
    ----------
    baseline_t1, followup_t1 : bias-corrected T1s resampled onto the same halfway grid.
    baseline_mask, followup_mask : their brain masks on that grid.
    years : interval length; annualised PBVC is None below `min_years_for_annualized`.
    alignment_correlation : the registration QC value, passed through to the result.
    """
    if baseline_t1.data.shape != followup_t1.data.shape:
        raise InputError("PBVC needs both T1s on one halfway grid")
    voxel_mm3 = baseline_t1.voxel_volume_mm3
    base, gm_level = normalize_t1(baseline_t1.data, baseline_mask.data)
    follow = _match_intensities(followup_t1.data, base, baseline_mask.data & followup_mask.data, gm_level)
    base_tissue = baseline_mask.data & (base > gm_level / 2)
    follow_tissue = followup_mask.data & (follow > gm_level / 2)
    width = params.boundary_width_voxels
    region = (ndimage.binary_dilation(base_tissue | follow_tissue, iterations=width)
              & ~ndimage.binary_erosion(base_tissue & follow_tissue, iterations=width))
    lower, upper = _WINDOW_MARGIN * gm_level, (1 - _WINDOW_MARGIN) * gm_level
    shift = np.clip(base[region], lower, upper) - np.clip(follow[region], lower, upper)
    boundary_shift_ml = float(shift.sum() / (upper - lower) * voxel_mm3 / 1000)
    baseline_ml = tissue_volume_ml(base, baseline_mask.data, gm_level, voxel_mm3)
    pbvc = -100 * boundary_shift_ml / baseline_ml
    annualized = pbvc / years if years >= params.min_years_for_annualized else None
    return AtrophyResult(pbvc, annualized, years, alignment_correlation, boundary_shift_ml)


def cross_sectional(session: str, date, t1: Volume, brain_mask: Volume, lesions: LesionMap, *,
                    template_to_subject_det: float, template_intracranial_ml: float) -> TimepointMeasures:
    """Brain volume, head-size normalised volume, estimated intracranial volume, BPF, lesion load.

    `template_to_subject_det` is the determinant of the affine map from the MNI template to this
    T1 (subject size / template size): normalised volume = brain / det, eTIV = template ICV x det.
    """
    normalized, gm_level = normalize_t1(t1.data, brain_mask.data)
    brain_ml = tissue_volume_ml(normalized, brain_mask.data, gm_level, t1.voxel_volume_mm3,
                                lesions.labels.data > 0)
    intracranial_ml = template_intracranial_ml * template_to_subject_det
    return TimepointMeasures(session, date, brain_ml, brain_ml / template_to_subject_det, intracranial_ml,
                             brain_ml / intracranial_ml, len(lesions.lesions), lesions.total_volume_mm3 / 1000)
