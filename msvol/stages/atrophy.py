"""Atrophy: percent brain volume change (PBVC) per interval, and cross-sectional volumes per visit.

PBVC is a boundary shift integral (BSI; Freeborough & Fox 1997) with tissue-specific intensity
normalisation (KN-BSI; Leung et al. 2010) on the two T1s in their own halfway space (T1-driven, so
nothing here depends on the FLAIR). Vocabulary:
- *reference voxels*: voxels that are pure CSF ("dark": ventricle interiors) or pure white matter
  ("bright") at both visits, `reference_erosion_voxels` away from any edge of either. Atrophy moves
  edges; it does not change these voxels, so they alone may tell the scanners' intensity scales apart.
- *intensity matching*: the follow-up is mapped onto the baseline by the line through the two pairs of
  reference means, and by a smooth multiplicative field (differential bias correction, DBC: the
  follow-up/baseline ratio over the bright reference voxels, fitted by a local plane over 4 mm blocks with a
  Gaussian of `bias_smoothing_mm`: `smooth_field.smooth_within`). N4 leaves a residual field that differs between visits
  and runs from the brain's surface to its depth (issue 12: -6 % to +3.5 % on a held-out pair); a local mean
  of deep-WM samples cannot reach the surface, where BSI measures.
- *levels*: C, the baseline's mean over the dark reference voxels `csf_level_depth_mm` deep in the brain (ventricular
  CSF: outer CSF shares voxels with skull and dura); G, its grey-matter level: the
  lower k-means class of its flattest (lowest-gradient) tissue voxels, so no partial-volume edge takes the
  class (`tissue_flat_fraction`). k-means' CSF centre is not used: partial volume pulls it to ~20 % tissue.
- *window*: intensities are clipped to C + m (G - C) .. C + (1 - m)(G - C), m = `window_margin_fraction`.
- *boundary region*: both tissue masks (intensity above (C + G) / 2 inside each brain mask), their
  union dilated by `boundary_width_voxels` minus their intersection eroded by as much.
BSI = summed clipped difference / window width x voxel volume; PBVC = -BSI / baseline tissue volume x 100,
where the tissue volume is the partial-volume fraction (C -> 0, G -> 1, clipped) summed over the baseline mask.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.cluster.vq import kmeans2

from msvol.config import AtrophyParams
from msvol.datatypes import AtrophyResult, LesionMap, TimepointMeasures, Volume
from msvol.errors import InputError
from msvol.stages.smooth_field import smooth_within

METHODS = ("Brain volume change was measured as a boundary shift integral with tissue-specific intensity "
           "normalisation and differential bias correction on the two T1s, rigidly registered into their own "
           "halfway space [freeborough1997, leung2010]; normalised brain volume and intracranial volume use the "
           "affine scaling to the MNI ICBM152 template [buckner2004].")
_MIN_REFERENCE_VOXELS = 200  # fewer pure voxels than this cannot fix a mean to 0.1 % of the CSF-WM contrast
# Pure GM lies well above this share of the CSF-WM range on a T1 (msvol synth 0.53, the test phantom 0.49, issue 12's
# shifted contrast 0.76); below it are CSF and dark non-brain voxels
_TISSUE_FLOOR = 0.3


def tissue_means(image: np.ndarray, mask: np.ndarray, *, flat_fraction: float = 1.0,
                 seed: int = 0) -> tuple[float, float, float]:
    """CSF, GM and WM class means by 3-class k-means inside the mask dilated by 3 voxels.

    flat_fraction < 1: the GM level comes instead from `_flat_grey_level` (pure tissue, no partial-volume edges).
    """
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
    if flat_fraction < 1:
        gm = _flat_grey_level(image, mask, csf, wm, flat_fraction, seed=seed)
    return float(csf), float(gm), float(wm)


def _flat_grey_level(image: np.ndarray, mask: np.ndarray, csf: float, wm: float, flat_fraction: float, *,
                     seed: int) -> float:
    """The GM level from pure tissue: the lower of two k-means classes over the `flat_fraction` of the mask's voxels
    with the lowest gradient magnitude (Gaussian, 1 voxel), above csf + _TISSUE_FLOOR (wm - csf).

    Partial-volume voxels lie on edges, so the flat ones are pure CSF, GM or WM, and the floor leaves out CSF and
    dark non-brain voxels. Where GM and WM are close (issue 12's shifted T1 contrast) the 3-class k-means
    otherwise puts its middle class on the CSF-tissue partial-volume continuum.
    """
    corners = np.argwhere(mask)
    box = tuple(slice(low, high + 1) for low, high in zip(corners.min(axis=0), corners.max(axis=0)))
    inside = mask[box]
    values = image[box].astype(np.float32)
    gradient = ndimage.gaussian_gradient_magnitude(values, 1.0)[inside]
    values = values[inside]
    tissue = values[(gradient <= np.quantile(gradient, flat_fraction)) & (values > csf + _TISSUE_FLOOR * (wm - csf))]
    tissue = tissue[::3].astype(np.float64)
    if tissue.size < 300:
        raise InputError("too few voxels of pure tissue in the brain mask to estimate the grey-matter level")
    centres, _ = kmeans2(tissue[:, None], np.percentile(tissue, [10, 90])[:, None], minit="matrix", seed=seed)
    return float(centres[:, 0].min())


def normalize_t1(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float]:
    """T1 scaled to CSF = 0, WM = 1 (k-means class means); returns it and the normalised GM mean."""
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


def reference_voxels(baseline: np.ndarray, followup: np.ndarray, common_mask: np.ndarray,
                     levels: tuple[float, float, float], erosion_voxels: int) -> tuple[np.ndarray, np.ndarray]:
    """(dark, bright): pure CSF and pure WM at both visits, `erosion_voxels` inside each class at each visit.

    `followup` must already be on the baseline's intensity scale (roughly); `levels` are its CSF, GM, WM.
    Dark voxels come from inside the common mask (ventricles); where there are too few (a brain without
    ventricles), from a 4-voxel shell around it. Raises InputError when either set stays too small.
    """
    csf, gm, wm = levels
    dark_cut, bright_cut = csf + 0.5 * (gm - csf), gm + 0.5 * (wm - gm)
    inner = ndimage.binary_erosion(common_mask)
    dark_both = ndimage.binary_erosion((baseline < dark_cut) & (followup < dark_cut), iterations=erosion_voxels)
    dark = dark_both & inner
    if dark.sum() < _MIN_REFERENCE_VOXELS:
        shell = ndimage.binary_dilation(common_mask, iterations=4) & ~ndimage.binary_erosion(common_mask, iterations=2)
        dark = dark_both & shell
    bright = ndimage.binary_erosion((baseline > bright_cut) & (followup > bright_cut), iterations=erosion_voxels)
    bright &= inner
    if dark.sum() < _MIN_REFERENCE_VOXELS or bright.sum() < _MIN_REFERENCE_VOXELS:
        raise InputError(f"too few voxels of pure CSF ({dark.sum()}) or pure white matter ({bright.sum()}) at both "
                         f"visits to match the T1 intensities (at least {_MIN_REFERENCE_VOXELS} each are needed)")
    return dark, bright


def _line_through(baseline: np.ndarray, followup: np.ndarray, dark: np.ndarray, bright: np.ndarray):
    """(scale, offset, baseline CSF mean, baseline WM mean) mapping follow-up onto baseline intensities.

    Means, not medians: the voxels are the same anatomy at both visits, so noise of any level averages
    out, while a median of a skewed (textured) population moves when the noise level changes.
    """
    base = (float(baseline[dark].mean()), float(baseline[bright].mean()))
    follow = (float(followup[dark].mean()), float(followup[bright].mean()))
    scale = (base[1] - base[0]) / (follow[1] - follow[0])
    return scale, base[0] - scale * follow[0], base[0], base[1]


def csf_level(baseline: np.ndarray, dark: np.ndarray, common_mask: np.ndarray, spacing_mm, depth_mm: float) -> float:
    """C: the baseline's mean over the dark references at least `depth_mm` inside the common mask (ventricles).

    Dark voxels near the brain's rim are outer CSF, thin enough to share voxels with skull and dura: darker than
    CSF, and where CSF is bright (issue 12's shifted T1 contrast) they pulled C down by 0.15-0.2 of G - C, which
    widened the window and the tissue scale (recovery 0.59-0.83 with the exact intensity map). Without enough deep
    ones (a brain without ventricles), all dark references.
    """
    deep = dark & (ndimage.distance_transform_edt(common_mask, sampling=spacing_mm) >= depth_mm)
    return float(baseline[deep if deep.sum() >= _MIN_REFERENCE_VOXELS else dark].mean())


def match_followup(baseline: Volume, followup: Volume, baseline_mask: Volume, followup_mask: Volume,
                   params: AtrophyParams) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The follow-up T1 on the baseline's intensity scale, and the baseline levels (C, G, W).

    Starts from each visit's k-means classes, then twice: reference voxels -> line through their means ->
    DBC field over the bright ones; a last line fixes the scale after the field. C is then the baseline's level over
    the last dark references deep in the brain (`csf_level`). See the module docstring.
    """
    csf_b, gm_b, wm_b = tissue_means(baseline.data, baseline_mask.data, flat_fraction=params.tissue_flat_fraction)
    csf_f, _, wm_f = tissue_means(followup.data, followup_mask.data)
    base = baseline.data.astype(np.float32)
    follow = ((followup.data.astype(np.float32) - csf_f) * ((wm_b - csf_b) / (wm_f - csf_f)) + csf_b)
    common = baseline_mask.data & followup_mask.data
    levels = (csf_b, gm_b, wm_b)
    for step in range(3):
        dark, bright = reference_voxels(base, follow, common, levels, params.reference_erosion_voxels)
        scale, offset, csf, wm = _line_through(base, follow, dark, bright)
        follow = follow * np.float32(scale) + np.float32(offset)
        levels = (csf, gm_b, wm)
        if step == 2 or not params.bias_smoothing_mm:
            continue
        # pure WM at both visits only: grey voxels lie near edges that atrophy moves, and a local fit follows them
        log_ratio = np.log(np.maximum(follow, 1e-6) / np.maximum(base, 1e-6))
        middle = float(np.median(log_ratio[bright]))
        field = smooth_within(log_ratio - middle, bright, sigma_mm=params.bias_smoothing_mm,
                              spacing_mm=baseline.spacing_mm) + middle
        follow = follow / np.exp(field)
    levels = (csf_level(base, dark, common, baseline.spacing_mm, params.csf_level_depth_mm), gm_b, levels[2])
    if not levels[0] < levels[1] < levels[2]:
        raise InputError(f"T1 levels not in CSF < GM < WM order after matching ({levels}); is the T1w a T1?")
    return follow.astype(np.float32), levels


def measure_pbvc(baseline_t1: Volume, followup_t1: Volume, baseline_mask: Volume, followup_mask: Volume, *,
                 years: float, alignment_correlation: float, params: AtrophyParams) -> AtrophyResult:
    """PBVC between two T1s already on one halfway grid (see module docstring).

    Parameters
    ----------
    baseline_t1, followup_t1 : bias-corrected T1s resampled onto the same halfway grid.
    baseline_mask, followup_mask : their brain masks on that grid (ventricles included).
    years : interval length; annualised PBVC is None below `min_years_for_annualized`.
    alignment_correlation : the registration QC value, passed through to the result.

    Raises
    ------
    InputError when the grids differ, the contrast is not a T1's, or pure CSF/WM references are missing.
    """
    if baseline_t1.data.shape != followup_t1.data.shape or not np.allclose(baseline_t1.affine, followup_t1.affine):
        raise InputError("PBVC needs both T1s on one halfway grid")
    base = baseline_t1.data.astype(np.float32)
    follow, (csf, gm, _) = match_followup(baseline_t1, followup_t1, baseline_mask, followup_mask, params)
    threshold = 0.5 * (csf + gm)
    base_tissue = baseline_mask.data & (base > threshold)
    follow_tissue = followup_mask.data & (follow > threshold)
    width = params.boundary_width_voxels
    region = (ndimage.binary_dilation(base_tissue | follow_tissue, iterations=width)
              & ~ndimage.binary_erosion(base_tissue & follow_tissue, iterations=width))
    margin = params.window_margin_fraction
    lower, upper = csf + margin * (gm - csf), csf + (1 - margin) * (gm - csf)
    shift = np.clip(base[region], lower, upper) - np.clip(follow[region], lower, upper)
    voxel_mm3 = baseline_t1.voxel_volume_mm3
    boundary_shift_ml = float(shift.sum(dtype=np.float64) / (upper - lower) * voxel_mm3 / 1000)
    fraction = np.clip((base[baseline_mask.data] - csf) / (gm - csf), 0, 1)
    baseline_ml = float(fraction.sum(dtype=np.float64) * voxel_mm3 / 1000)
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
