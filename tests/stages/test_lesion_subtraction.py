"""Possible new lesions on the FLAIR subtraction image (msvol.stages.lesion_subtraction, issue 12).

Truth: the analytic brain phantom (tests/stages/brain_phantom.py) rendered as a FLAIR, with lesions of known place,
size and contrast painted into its white matter, and each visit acquired with its own smooth bias field, gain and
Rician noise. The images are already on one grid (the halfway grid of the pipeline).
"""

from __future__ import annotations

import numpy as np
import pytest

from msvol.config import LesionParams
from msvol.datatypes import LesionChange
from msvol.stages.lesion_subtraction import subtraction_candidates
from tests.stages import brain_phantom

SHAPE = (84, 96, 80)
AFFINE = brain_phantom.grid(SHAPE)
PARAMS = LesionParams()
NEW_CENTRE = np.array([41, 49, 55])  # voxel indices in deep white matter of head 3 at size 0.4 (checked below)
OLD_CENTRE = np.array([30, 36, 34])
FAINT_RISE = 0.25  # +25 % over white matter: the check set's faint new lesions that the models miss


@pytest.fixture(scope="module")
def fractions():
    return brain_phantom.render(brain_phantom.make_head(3, 0.4), SHAPE, AFFINE)


def ball(centre, radius_mm: float) -> np.ndarray:
    """Partial-volume fraction of a ball on the grid (4^3 supersampling)."""
    offsets = (np.arange(4) + 0.5) / 4 - 0.5
    index = np.indices(SHAPE, dtype=np.float32)
    inside = np.zeros(SHAPE, np.float32)
    for dx in offsets:
        for dy in offsets:
            for dz in offsets:
                distance = np.sqrt((index[0] + dx - centre[0]) ** 2 + (index[1] + dy - centre[1]) ** 2
                                   + (index[2] + dz - centre[2]) ** 2)
                inside += distance <= radius_mm
    return inside / offsets.size ** 3


def flair(fractions, lesions: list[tuple[np.ndarray, float, float]], seed: int) -> np.ndarray:
    """A FLAIR visit: class intensities, each lesion (centre, radius mm, rise over WM) in the white matter, a smooth
    bias field of +-6 % across the head, a gain and Rician noise (2 % of white matter), all drawn from `seed`."""
    rng = np.random.default_rng(seed)
    image = sum(brain_phantom.FLAIR_CONTRAST[name] * fractions[name] for name in brain_phantom.CLASSES)
    white = brain_phantom.FLAIR_CONTRAST["wm"]
    for centre, radius_mm, rise in lesions:
        image = image + rise * white * fractions["wm"] * ball(centre, radius_mm)
    direction = rng.normal(size=3)
    centred = np.indices(SHAPE) - (np.array(SHAPE) / 2).reshape(3, 1, 1, 1)
    position = np.tensordot(direction / np.linalg.norm(direction), centred, 1)  # along a random direction
    image = image * np.exp(0.06 * position / np.abs(position).max()) * rng.uniform(0.9, 1.1)
    noise = 0.02 * white
    return np.hypot(image + rng.normal(0, noise, SHAPE), rng.normal(0, noise, SHAPE)).astype(np.float32)


def candidates(fractions, baseline_lesions, followup_lesions, *, known=(), seed=0, params=PARAMS,
               followup_fractions=None):
    """Run the detector on two visits; `known`: (centre, radius) of lesions both visits' label maps hold;
    `followup_fractions`: the follow-up's anatomy when it differs (atrophy)."""
    labels = np.zeros(SHAPE, np.int16)
    changes = []
    for number, (centre, radius_mm) in enumerate(known, start=1):
        labels[ball(centre, radius_mm) >= 0.5] = number
        changes.append(LesionChange(number, "stable", 100.0, 100.0, (0.0, 0.0, 0.0), (number,), (number,)))
    followup_fractions = fractions if followup_fractions is None else followup_fractions
    brain = brain_phantom.brain_mask(fractions) & brain_phantom.brain_mask(followup_fractions)
    found, found_labels = subtraction_candidates(
        tuple(changes), flair(fractions, baseline_lesions, seed), flair(followup_fractions, followup_lesions, seed + 1),
        labels, labels, brain, params, halfway_affine=AFFINE, halfway_to_followup=np.eye(4))
    return found[len(changes):], found_labels


def test_the_phantom_places_the_lesions_in_white_matter(fractions):
    for centre in (NEW_CENTRE, OLD_CENTRE):
        assert fractions["wm"][tuple(centre)] == 1.0
        assert (fractions["wm"] * ball(centre, 4.0)).sum() > 0.95 * ball(centre, 4.0).sum()


def test_a_small_faint_new_lesion_only_the_subtraction_shows_is_a_possible_new_lesion(fractions):
    # 1.8 mm radius: 24 mm3, the size of the check-set lesions both models miss
    added, labels = candidates(fractions, [], [(NEW_CENTRE, 1.8, FAINT_RISE)])
    assert len(added) == 1
    finding = added[0]
    assert finding.status == "possible_new" and finding.subtraction_only and finding.confidence is None
    assert finding.followup_labels == () and finding.baseline_volume_mm3 == 0.0
    centre_mm = (AFFINE @ np.append(NEW_CENTRE, 1))[:3]
    assert np.linalg.norm(np.array(finding.centroid_mm) - centre_mm) <= 1.5
    assert finding.change_only_mm3 == finding.followup_volume_mm3 == (labels == finding.id).sum()
    assert PARAMS.min_subtraction_volume_mm3 <= finding.followup_volume_mm3 <= 60


def test_two_scans_of_an_unchanged_brain_give_no_candidate(fractions):
    lesions = [(NEW_CENTRE, 3.0, 0.6), (OLD_CENTRE, 2.5, FAINT_RISE)]
    for seed in (0, 10, 20):  # other bias fields, gains and noise at each visit
        added, _ = candidates(fractions, lesions, lesions, seed=seed)
        assert added == ()


def test_a_brain_that_lost_volume_gives_no_candidate(fractions):
    # 1.5 % of the brain lost (a uniform contraction, the outer CSF taking the volume): every edge moves
    contracted = brain_phantom.render(brain_phantom.make_head(3, 0.4), SHAPE, AFFINE, contraction=0.985 ** (1 / 3))
    lesions = [(NEW_CENTRE, 3.0, 0.6)]
    assert candidates(fractions, lesions, lesions, followup_fractions=contracted)[0] == ()


def test_hyperintensity_at_a_known_lesion_is_left_to_the_models(fractions):
    # the old lesion (radius 2.5 mm in both label maps) grows to 4 mm: its growth is the change model's business
    added, _ = candidates(fractions, [(OLD_CENTRE, 2.5, 0.6)], [(OLD_CENTRE, 4.0, 0.6)], known=[(OLD_CENTRE, 2.5)])
    assert added == ()


def test_below_the_rise_threshold_nothing_is_listed(fractions):
    # the same lesion at a third of the threshold's rise, and the threshold raised above the faint lesion's rise
    faint, _ = candidates(fractions, [], [(NEW_CENTRE, 1.8, PARAMS.min_subtraction_rise / 3)])
    assert faint == ()
    strict = LesionParams(min_subtraction_rise=FAINT_RISE * 1.2)
    assert candidates(fractions, [], [(NEW_CENTRE, 3.0, FAINT_RISE)], params=strict)[0] == ()
