"""Possible new lesions on the FLAIR subtraction image: new hyperintensity that no model proposes (issue 12).

The two models miss small new lesions of faint FLAIR contrast (+15 % to +60 % over white matter), because their
training saw too few of them; a reader can reject a false candidate in a second but never sees a lesion that was
not proposed. Subtraction of registered visits is how readers find such lesions (Moraal et al. 2009). Here:
1. the follow-up FLAIR is put on the baseline's intensity scale by a smooth multiplicative field (the visits' bias
   fields differ): the follow-up/baseline log-ratio over tissue away from every lesion, through
   smooth_field.smooth_within (`_FIELD_SMOOTHING_MM`);
2. the rise (follow-up - baseline) / the baseline tissue level, averaged within tissue by a Gaussian of
   `subtraction_smoothing_mm` (a matched filter for a lesion of a few mm; CSF is left out, so an edge that moves
   with atrophy or registration does not take part);
3. components (`connectivity`) of rise >= `min_subtraction_rise`, at least `min_subtraction_volume_mm3`, inside the
   brain at both visits by `change_only_margin_voxels`, and apart from every lesion and finding of both visits (by
   `_APART_VOXELS`: growth and edges of known lesions are the models' business) become 'possible_new' findings:
   listed for the reader, never counted, with no confidence (no model gave one) and `subtraction_only`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from msvol.config import LesionParams
from msvol.datatypes import LesionChange
from msvol.stages.lesion_rules import structure
from msvol.stages.smooth_field import smooth_within

METHODS = ("New hyperintensity on the FLAIR subtraction image (follow-up minus baseline in halfway space, after a "
           "smooth intensity match), away from every known lesion, was listed as possible new lesions for the reader "
           "[moraal2009].")
_FIELD_SMOOTHING_MM = 10.0  # the visits' bias fields differ smoothly; a lesion (<= 10 mm) does not move this field
_APART_VOXELS = 2  # a component this close to a lesion or finding of either visit is its edge or growth
_TISSUE_FRACTION = 0.6  # of the baseline tissue level: CSF (FLAIR-dark) lies below it at both visits


def tissue_level(flair: np.ndarray, brain_mask: np.ndarray) -> float:
    """The FLAIR level of brain tissue: the median inside the mask above half the mask's median (no CSF)."""
    inside = flair[brain_mask]
    return float(np.median(inside[inside > 0.5 * np.median(inside)]))


def subtraction_rise(baseline_flair: np.ndarray, followup_flair: np.ndarray, brain_mask: np.ndarray,
                     lesion_mask: np.ndarray, *, smoothing_mm: float, spacing_mm) -> np.ndarray:
    """The follow-up's rise over the baseline, in units of the baseline tissue level, smoothed within tissue
    (0 outside it). `lesion_mask`: voxels of known lesions, left out of the intensity match."""
    corners = np.argwhere(brain_mask)
    box = tuple(slice(low, high + 1) for low, high in zip(corners.min(axis=0), corners.max(axis=0)))
    whole = np.zeros(brain_mask.shape, np.float32)  # computed over the brain's bounding box only: a third of the grid
    baseline, followup = baseline_flair[box].astype(np.float32), followup_flair[box].astype(np.float32)
    brain_mask, lesion_mask = brain_mask[box], lesion_mask[box]
    level = tissue_level(baseline, brain_mask)
    followup_level = tissue_level(followup, brain_mask)
    tissue = brain_mask & (baseline > _TISSUE_FRACTION * level) & (followup > _TISSUE_FRACTION * followup_level)
    core = ndimage.binary_erosion(tissue)
    reference = core & ~lesion_mask
    log_ratio = np.log(np.maximum(followup, 1e-6) / np.maximum(baseline, 1e-6))
    middle = float(np.median(log_ratio[reference]))
    field = smooth_within(log_ratio - middle, reference, sigma_mm=_FIELD_SMOOTHING_MM, spacing_mm=spacing_mm) + middle
    rise = np.where(core, (followup / np.exp(field) - baseline) / level, 0).astype(np.float32)
    sigma = [smoothing_mm / s for s in spacing_mm]
    weight = ndimage.gaussian_filter(core.astype(np.float32), sigma)
    smoothed = ndimage.gaussian_filter(rise, sigma) / np.maximum(weight, 1e-6)
    whole[box] = np.where(core & (weight > 0.5), smoothed, 0)
    return whole


def known_lesions(baseline_halfway: np.ndarray, followup_halfway: np.ndarray) -> np.ndarray:
    """Every lesion and finding of either visit, grown by `_APART_VOXELS`: where a candidate may not be."""
    return ndimage.binary_dilation((baseline_halfway > 0) | (followup_halfway > 0), structure(26),
                                   iterations=_APART_VOXELS)


def subtraction_candidates(changes: tuple[LesionChange, ...], baseline_flair: np.ndarray, followup_flair: np.ndarray,
                           baseline_halfway: np.ndarray, followup_halfway: np.ndarray, both_brain: np.ndarray,
                           params: LesionParams, *, halfway_affine: np.ndarray, halfway_to_followup: np.ndarray,
                           rise: np.ndarray | None = None) -> tuple[tuple[LesionChange, ...], np.ndarray]:
    """Add a 'possible_new' finding for every component of new hyperintensity that nothing else proposes (module
    docstring). `followup_halfway`: the follow-up labels on the halfway grid with every finding so far (those of
    lesion_change.change_only_findings included). `rise`: subtraction_rise of these inputs when already computed (a
    threshold sweep). Returns the changes and those labels with each candidate's voxels under its id (ids above
    every other); centroids in follow-up mm."""
    spacing = np.sqrt((halfway_affine[:3, :3] ** 2).sum(axis=0))
    known = known_lesions(baseline_halfway, followup_halfway)
    if rise is None:
        rise = subtraction_rise(baseline_flair, followup_flair, both_brain, known,
                                smoothing_mm=params.subtraction_smoothing_mm, spacing_mm=spacing)
    seen = (rise >= params.min_subtraction_rise) & ndimage.binary_erosion(
        both_brain, iterations=params.change_only_margin_voxels)
    components, count = ndimage.label(seen, structure=structure(params.connectivity))
    if not count:
        return changes, followup_halfway
    voxel_mm3 = float(np.prod(spacing))
    volumes = np.bincount(components.ravel(), minlength=count + 1) * voxel_mm3
    touching = set(np.unique(components[known & (components > 0)]))
    labels = followup_halfway.copy()
    next_id = max([change.id for change in changes] + [int(followup_halfway.max())]) + 1
    added = []
    for index, box in enumerate(ndimage.find_objects(components), 1):
        if volumes[index] < params.min_subtraction_volume_mm3 or index in touching:
            continue
        inside = components[box] == index
        labels[box][inside] = next_id
        voxel = np.argwhere(inside).mean(axis=0) + [part.start for part in box]
        centroid = (halfway_to_followup @ halfway_affine @ np.append(voxel, 1))[:3]
        added.append(LesionChange(next_id, "possible_new", 0.0, float(volumes[index]),
                                  tuple(float(value) for value in centroid), (), (),
                                  change_only_mm3=float(volumes[index]), subtraction_only=True))
        next_id += 1
    return changes + tuple(added), labels
