"""Tests for preprocess's brain-volume bounds: refused outside what any adult head can hold, flagged in the
plausible-but-unusual band, silent in the usual range (config.PreprocessParams, Matsumae 1996).

deepbet is replaced by a stand-in that returns a mask of a chosen number of 2 mm voxels (8 mm3 each), so
every volume below is exact.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from msvol.config import PreprocessParams
from msvol.datatypes import Volume
from msvol.errors import InputError
from msvol.stages import preprocess

SHAPE = (80, 80, 80)  # 4096 ml at 8 mm3 per voxel
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
PARAMS = PreprocessParams()


class MaskOfVolume:
    """Stands in for deepbet's BrainExtraction: `run` returns a mask of exactly `volume_ml`."""

    def __init__(self, volume_ml: float):
        self.voxels = round(volume_ml * 1000 / 8)

    def run(self, image, threshold):
        mask = np.zeros(int(np.prod(SHAPE)), np.uint8)
        mask[:self.voxels] = 1
        return None, nib.Nifti1Image(mask.reshape(SHAPE), image.affine), None


def t1() -> Volume:
    return Volume(np.ones(SHAPE, np.float32), AFFINE, "T1w", source="sub-01/ses-01/anat/sub-01_ses-01_T1w.nii.gz")


def extract(volume_ml: float) -> Volume:
    return preprocess.extract_brain(t1(), PARAMS, extractor=MaskOfVolume(volume_ml))


def test_the_bounds_are_ordered_and_cover_the_large_healthy_head_of_issue_9():
    assert PARAMS.min_brain_volume_ml < PARAMS.warn_brain_volume_below_ml < PARAMS.warn_brain_volume_above_ml \
        < PARAMS.max_brain_volume_ml
    mask = extract(2217)  # a healthy large adult head, deepbet mask with its CSF margin: refused before issue 9
    assert preprocess.mask_volume_ml(mask) == pytest.approx(2217, abs=0.01)
    assert "unusually large" in preprocess.unusual_brain_volume(mask, PARAMS)


@pytest.mark.parametrize("volume_ml", [699, 2501, 100, 3500])
def test_a_mask_that_cannot_be_an_adult_head_is_refused_naming_the_file(volume_ml):
    with pytest.raises(InputError) as caught:
        extract(volume_ml)
    message = str(caught.value)
    assert "sub-01_ses-01_T1w.nii.gz" in message and f"{volume_ml} ml" in message and "700-2500 ml" in message


@pytest.mark.parametrize("volume_ml, flagged", [
    (700, "small"), (949, "small"), (950, None), (1300, None), (2000, None), (2001, "large"), (2500, "large")])
def test_accepted_masks_are_flagged_only_outside_the_usual_band(volume_ml, flagged):
    note = preprocess.unusual_brain_volume(extract(volume_ml), PARAMS)
    if flagged is None:
        assert note is None
    else:
        assert f"unusually {flagged}" in note and f"{volume_ml} ml" in note and "950-2000 ml" in note


def test_bias_correction_reaches_dark_voxels_inside_the_head():
    """Regression (issue 12): ANTs' N4 output leaves voxels outside its mask uncorrected, and the head mask
    (10 % of the 99th percentile) left out the darkest CSF inside the head: those kept their raw scale while
    their neighbours were rescaled (by ~1.5 on msvol synth), which moved the T1 CSF level and PBVC. Every voxel
    is now divided by the same smooth field."""
    shape = (48, 48, 48)
    x = np.indices(shape, dtype=np.float32)
    head = ((x - 23.5) ** 2).sum(axis=0) < 20 ** 2
    image = np.where(head, 100.0, 0.5).astype(np.float32)
    image[31:39, 20:28, 20:28] = 5.0  # a dark void inside the head, below the mask's threshold of 10
    field = np.exp(0.3 * (x[0] - 23.5) / 23.5)
    raw = Volume((image * field).astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0]), "T1w")
    ratio = preprocess.correct_bias(raw, PARAMS).data / raw.data
    near = (slice(27, 43), slice(16, 32), slice(16, 32))
    void, around = ratio[32:38, 21:27, 21:27], ratio[near][head[near] & (image[near] > 50)]
    assert void.mean() == pytest.approx(np.median(around), rel=0.02)
    assert ratio[head].std() / ratio[head].mean() > 0.05  # a real correction happened


@pytest.mark.parametrize("spacing_mm, shrink", [((1.0, 1.0, 1.0), 6), ((1.0, 1.0, 1.2), 6), ((1.2, 1.2, 1.2), 5),
                                                ((2.0, 2.0, 2.0), 3), ((0.8, 0.8, 1.0), 8), ((8.0, 8.0, 8.0), 1)])
def test_n4_fits_its_field_near_the_configured_voxel_size(spacing_mm, shrink):
    volume = Volume(np.zeros((4, 4, 4), np.float32), np.diag([*spacing_mm, 1.0]), "T1w")
    assert preprocess.n4_shrink_factor(volume, PARAMS) == shrink
