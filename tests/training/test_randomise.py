"""Tests for randomise: the rendered contrasts are the documented linear mix of tissue fractions,
normalised by the brain median, in the documented channel order; thick slices blur one axis only;
the training pipelines give patches of the documented shapes.

Fraction maps here are tiny and hand-made: each voxel holds one pure tissue (or a known mix), so the
rendered value of a voxel is its tissue's drawn intensity divided by the brain median.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("monai")

from msvol.training.randomise import (FLAIR_RANGES, FRACTION_CHANNELS, T1_RANGES, RandSliceThicknessd,  # noqa: E402
                             RandTissueContrastd, training_transforms)

WM = FRACTION_CHANNELS.index("wm")
GM = FRACTION_CHANNELS.index("gm")
LESION = FRACTION_CHANNELS.index("lesion")
MIX = 7  # x index of the voxels holding 128/255 white matter and 127/255 lesion


def pure_tissue_fractions(shape=(8, 4, 4)) -> np.ndarray:
    """(7, 8, 4, 4) uint8: the plane x = t holds pure tissue t (t = 0..6); the plane x = 7 a WM/lesion mix."""
    fractions = np.zeros((7, *shape), np.uint8)
    for tissue in range(7):
        fractions[tissue, tissue] = 255
    fractions[WM, MIX], fractions[LESION, MIX] = 128, 127
    return fractions


def brain_sample(*tissues: int) -> np.ndarray:
    """(7, N) uint8 fractions of N brain voxels, each pure `tissues[i]`."""
    sample = np.zeros((7, len(tissues)), np.uint8)
    sample[list(tissues), range(len(tissues))] = 255
    return sample


def render(transform, seed: int, visits: int = 1, fractions=None, sample=None) -> np.ndarray:
    fractions = pure_tissue_fractions() if fractions is None else fractions
    sample = brain_sample(WM, WM, WM) if sample is None else sample
    data = {}
    for index in range(visits):
        data[f"fractions_{index}"], data[f"brain_{index}"] = fractions, sample
    transform.set_random_state(seed=seed)
    return transform(data)["image"]


def contrast(visits: int = 1, **options) -> RandTissueContrastd:
    return RandTissueContrastd([f"fractions_{index}" for index in range(visits)],
                               [f"brain_{index}" for index in range(visits)], **options)


# --- RandTissueContrastd --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_contrast_is_the_drawn_intensity_of_each_tissue_relative_to_white_matter(seed):
    """Brain = white matter only, no visit jitter: the median is WM's intensity, fixed at 1."""
    image = render(contrast(visit_jitter=0.0), seed)
    assert image.shape == (2, 8, 4, 4) and image.dtype == np.float32
    for channel, ranges in ((0, FLAIR_RANGES), (1, T1_RANGES)):
        for tissue, name in enumerate(FRACTION_CHANNELS):
            plane = image[channel, tissue]
            assert np.all(plane == plane.flat[0]), "a pure tissue renders as one value"
            low, high = ranges[name]
            assert low - 1e-6 <= plane.flat[0] <= high + 1e-6, (channel, name)
        assert image[channel, WM].flat[0] == pytest.approx(1.0)
        # the image is linear in the fractions: a mixed voxel is the weighted sum of its tissues
        expected = (128 * image[channel, WM, 0, 0] + 127 * image[channel, LESION, 0, 0]) / 255
        np.testing.assert_allclose(image[channel, MIX], expected, rtol=1e-6)


def test_a_fine_tuning_lesion_range_replaces_only_the_flair_lesion_brightness():
    draws = [render(contrast(visit_jitter=0.0, flair_lesion_range=(1.15, 1.2)), seed) for seed in range(10)]
    defaults = [render(contrast(visit_jitter=0.0), seed) for seed in range(10)]
    for image, default in zip(draws, defaults):
        assert 1.15 - 1e-6 <= image[0, LESION].flat[0] <= 1.2 + 1e-6
        np.testing.assert_array_equal(image[1], default[1])  # T1 and the other FLAIR tissues as before
        np.testing.assert_array_equal(image[0, :LESION], default[0, :LESION])


def test_a_t1_lesion_range_replaces_only_the_t1_lesion_intensity():
    """Near-isointense T1 lesions (issue 12): T1 lesion 0.9-1.0 x WM, everything else drawn as before."""
    draws = [render(contrast(visit_jitter=0.0, t1_lesion_range=(0.9, 1.0)), seed) for seed in range(10)]
    defaults = [render(contrast(visit_jitter=0.0), seed) for seed in range(10)]
    for image, default in zip(draws, defaults):
        assert 0.9 - 1e-6 <= image[1, LESION].flat[0] <= 1.0 + 1e-6
        np.testing.assert_array_equal(image[0], default[0])
        np.testing.assert_array_equal(image[1, :LESION], default[1, :LESION])


def test_tissue_ranges_replace_only_the_tissues_they_name():
    """Brighter FLAIR CSF (incomplete fluid suppression) and flatter T1 grey matter: those tissues come from the
    ranges given, every other tissue of both contrasts from its default range; an unknown tissue or a reversed
    range is refused by name."""
    CSF = FRACTION_CHANNELS.index("csf")
    transform = contrast(visit_jitter=0.0, flair_tissue_ranges={"csf": (0.6, 0.7)},
                         t1_tissue_ranges={"gm": [0.9, 0.95]})
    for seed in range(10):
        image = render(transform, seed)
        assert 0.6 - 1e-6 <= image[0, CSF].flat[0] <= 0.7 + 1e-6
        assert 0.9 - 1e-6 <= image[1, GM].flat[0] <= 0.95 + 1e-6
        for channel, ranges, changed in ((0, FLAIR_RANGES, "csf"), (1, T1_RANGES, "gm")):
            for tissue, name in enumerate(FRACTION_CHANNELS):
                low, high = ranges[name]
                if name != changed:
                    assert low - 1e-6 <= image[channel, tissue].flat[0] <= high + 1e-6, (channel, name)
    with pytest.raises(ValueError, match="unknown tissues \\['fat'\\]"):
        contrast(flair_tissue_ranges={"fat": (0.1, 0.2)})
    with pytest.raises(ValueError, match="'csf'"):
        contrast(t1_tissue_ranges={"csf": (0.5, 0.2)})


def test_a_faint_mix_draws_that_share_of_flair_lesions_from_the_faint_range():
    """faint_fraction 0.5 with a faint range 1.15-1.2: about half the draws fall in it, the rest in the normal
    1.5-3.0; the other tissues keep their ranges."""
    transform = contrast(visit_jitter=0.0, faint_fraction=0.5, faint_flair_lesion_range=(1.15, 1.2))
    lesions = np.array([render(transform, seed)[0, LESION].flat[0] for seed in range(200)])
    faint = (lesions >= 1.15 - 1e-6) & (lesions <= 1.2 + 1e-6)
    normal = (lesions >= FLAIR_RANGES["lesion"][0] - 1e-6) & (lesions <= FLAIR_RANGES["lesion"][1] + 1e-6)
    assert np.all(faint | normal) and 0.4 <= faint.mean() <= 0.6
    with pytest.raises(ValueError, match="faint_flair_lesion_range"):
        contrast(faint_fraction=0.5)


def test_contrast_is_divided_by_the_median_of_the_brain_sample():
    """Brain of 3 GM and 2 WM voxels: the median is GM's intensity, so GM renders as 1 and WM as 1 / GM."""
    reference = render(contrast(visit_jitter=0.0), 5)  # WM-only brain: values relative to WM
    image = render(contrast(visit_jitter=0.0), 5, sample=brain_sample(GM, WM, GM, WM, GM))
    for channel in (0, 1):
        gm = reference[channel, GM, 0, 0]
        np.testing.assert_allclose(image[channel], reference[channel] / gm, rtol=1e-6)
        assert image[channel, GM, 0, 0] == pytest.approx(1.0)


def test_contrast_is_reproducible_for_a_set_random_state_and_new_otherwise():
    first, again, other = (render(contrast(), seed) for seed in (3, 3, 4))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


@pytest.mark.parametrize("seed", range(20))
def test_lesion_is_flair_bright_and_t1_dark_for_every_draw(seed):
    """The ranges guarantee it: FLAIR lesion >= 1.5 x WM, T1 lesion <= 0.85 x WM, visit jitter only +-3 %."""
    image = render(contrast(visits=2), seed, visits=2)
    assert image.shape == (4, 8, 4, 4)
    for flair in (0, 1):
        assert image[flair, LESION].min() > image[flair, WM].max()
    for t1 in (2, 3):
        assert image[t1, LESION].max() < image[t1, WM].min()


def test_two_visits_give_four_channels_flair_first_with_one_contrast():
    """[FLAIR a, FLAIR b, T1 a, T1 b]; both visits share the sample's contrast (no jitter: identical)."""
    image = render(contrast(visits=2, visit_jitter=0.0), 6, visits=2)
    assert image.shape == (4, 8, 4, 4)
    np.testing.assert_array_equal(image[0], image[1])
    np.testing.assert_array_equal(image[2], image[3])
    assert not np.allclose(image[0], image[2])
    single = render(contrast(visits=1, visit_jitter=0.0), 6)
    assert single.shape == (2, 8, 4, 4)
    jittered = render(contrast(visits=2, visit_jitter=0.03), 6, visits=2)
    # each visit is jittered and divided by its own median: a tissue's ratio is within (1.03 / 0.97)^2
    bright = jittered[1] > 1e-3
    ratio = jittered[0][bright] / jittered[1][bright]
    assert not np.allclose(ratio, 1.0) and np.all(np.abs(ratio - 1) <= (1.03 / 0.97) ** 2 - 1 + 1e-6)


def test_two_visits_render_their_own_fractions():
    baseline = pure_tissue_fractions()
    followup = baseline.copy()
    followup[:, LESION] = 0
    followup[WM, LESION] = 255  # the lesion plane is white matter at follow-up
    transform = contrast(visits=2, visit_jitter=0.0)
    transform.set_random_state(seed=1)
    image = transform({"fractions_0": baseline, "fractions_1": followup,
                       "brain_0": brain_sample(WM), "brain_1": brain_sample(WM)})["image"]
    assert image[0, LESION].min() > 1.4 and image[2, LESION].max() < 0.9
    np.testing.assert_allclose(image[1, LESION], 1.0)
    np.testing.assert_allclose(image[3, LESION], 1.0)


@pytest.mark.parametrize("visits", [1, 2])
def test_t1_dropout_zeroes_every_t1_channel(visits):
    image = render(contrast(visits=visits, t1_dropout=1.0), 0, visits=visits)
    assert image.shape[0] == 2 * visits
    assert not image[visits:].any()
    assert image[:visits].min() >= 0 and image[:visits, WM].min() > 0
    kept = render(contrast(visits=visits, t1_dropout=0.0), 0, visits=visits)
    assert kept[visits:, WM].min() > 0


def test_contrast_keeps_the_other_keys_and_does_not_modify_its_inputs():
    fractions, sample = pure_tissue_fractions(), brain_sample(WM)
    data = {"fractions_0": fractions, "brain_0": sample, "label": np.ones((1, 8, 4, 4), np.uint8)}
    transform = contrast()
    transform.set_random_state(seed=0)
    out = transform(data)
    assert set(out) == set(data) | {"image"} and "image" not in data
    np.testing.assert_array_equal(fractions, pure_tissue_fractions())
    assert out["label"] is data["label"]


def test_ranges_contain_the_standard_synth_contrast_and_not_the_shifted_one():
    """As documented: every tissue of the 'standard' preset, relative to WM and under the worst per-patient
    jitter, lies inside the training ranges; the 'shifted' preset has tissues outside them."""
    from msvol.synth.anatomy import CONTRASTS
    from msvol.synth.patients import SynthSettings

    jitter = SynthSettings().contrast_jitter
    for preset, ranges in zip(CONTRASTS["standard"], (FLAIR_RANGES, T1_RANGES)):
        assert set(ranges) == set(FRACTION_CHANNELS) == set(preset)
        for tissue, value in preset.items():
            low = value * (1 - jitter) / (preset["wm"] * (1 + jitter)) if tissue != "wm" else 1.0
            high = value * (1 + jitter) / (preset["wm"] * (1 - jitter)) if tissue != "wm" else 1.0
            assert ranges[tissue][0] <= low and high <= ranges[tissue][1], tissue
    outside = [(modality, tissue) for modality, preset, ranges in zip(("FLAIR", "T1"), CONTRASTS["shifted"],
                                                                      (FLAIR_RANGES, T1_RANGES))
               for tissue, value in preset.items()
               if not ranges[tissue][0] <= value / preset["wm"] <= ranges[tissue][1]]
    assert ("FLAIR", "lesion") in outside and ("FLAIR", "csf") in outside


# --- RandSliceThicknessd ----------------------------------------------------------------------------


def separable_image(shape=(24, 20, 16)) -> np.ndarray:
    """(1, X, Y, Z) = f(x) + g(y) + h(z), three different non-constant profiles."""
    rng = np.random.default_rng(0)
    profiles = [rng.uniform(0, 1, size) for size in shape]
    image = profiles[0][:, None, None] + profiles[1][None, :, None] + profiles[2][None, None, :]
    return image[None].astype(np.float32)


def test_slice_thickness_blurs_exactly_one_axis_and_keeps_the_shape():
    """The change to f(x) + g(y) + h(z) depends on one axis only: the profiles along the others are untouched."""
    image = separable_image()
    blurred_axes = set()
    for seed in range(12):
        transform = RandSliceThicknessd("image", prob=1.0)
        transform.set_random_state(seed=seed)
        out = np.asarray(transform({"image": image})["image"])
        assert out.shape == image.shape and out.dtype == np.float32
        difference = (out - image)[0]
        assert np.abs(difference).max() > 1e-3, "a thicker slice changes the image"
        varying = [axis for axis in range(3)
                   if np.abs(difference - np.take(difference, [0], axis=axis)).max() > 1e-5]
        assert len(varying) == 1, f"seed {seed}: the change varies along axes {varying}"
        blurred_axes.add(varying[0])
    assert blurred_axes == {0, 1, 2}, "the slice axis is drawn at random"


def test_slice_thickness_leaves_a_constant_image_and_other_keys_unchanged():
    constant = np.full((1, 20, 20, 20), 3.0, np.float32)
    label = np.zeros((1, 20, 20, 20), np.uint8)
    for seed in range(3):
        transform = RandSliceThicknessd("image", prob=1.0)
        transform.set_random_state(seed=seed)
        out = transform({"image": constant, "label": label})
        np.testing.assert_allclose(out["image"], 3.0, rtol=1e-6)
        assert out["label"] is label


def test_slice_thickness_with_probability_zero_is_the_identity():
    image = separable_image()
    transform = RandSliceThicknessd("image", prob=0.0)
    transform.set_random_state(seed=0)
    np.testing.assert_array_equal(transform({"image": image})["image"], image)


# --- training_transforms ----------------------------------------------------------------------------


def tiny_case(task: str, size: int = 32) -> dict:
    """One item in msvol.training.train.load_cases' format: white matter with a 6^3 lesion cube."""
    from msvol.training.train import _class_indices

    fractions = np.zeros((7, size, size, size), np.uint8)
    fractions[WM] = 255
    cube = (slice(12, 18),) * 3
    fractions[(WM, *cube)], fractions[(LESION, *cube)] = 0, 255
    lesion = (fractions[LESION] > 0).astype(np.uint8)
    sample = fractions.reshape(7, -1)[:, ::37]
    head = np.ones(lesion.shape, bool)
    if task == "per_visit":
        return {"fractions": fractions, "brain_sample": sample, "label": lesion[None], "label_classes": lesion[None],
                "class_indices": _class_indices(lesion, np.random.default_rng(0), head)}
    classes = (2 * lesion).astype(np.uint8)
    return {"fractions_a": fractions, "fractions_b": fractions, "brain_sample_a": sample, "brain_sample_b": sample,
            "label": lesion[None], "label_classes": classes[None],
            "class_indices": _class_indices(classes, np.random.default_rng(0), head)}


@pytest.mark.parametrize("task, channels", [("per_visit", 2), ("change", 4)])
def test_training_transforms_give_patches_of_the_documented_shape(task, channels):
    transform = training_transforms(task, (16, 16, 16), num_samples=2)
    transform.set_random_state(seed=0)
    patches = transform(tiny_case(task))
    assert len(patches) == 2
    for patch in patches:
        assert set(patch) == {"image", "label"}, "the fraction maps and sampling indices are dropped"
        assert tuple(patch["image"].shape) == (channels, 16, 16, 16)
        assert tuple(patch["label"].shape) == (1, 16, 16, 16)
        assert np.isfinite(np.asarray(patch["image"])).all()
        assert set(np.unique(np.asarray(patch["label"]))) <= {0, 1}, "labels are resampled nearest"

