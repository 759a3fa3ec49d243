"""Known-answer tests for msvol.stages.atrophy: PBVC of a rendered phantom with a known tissue loss."""

from __future__ import annotations

import numpy as np
import pytest

from msvol.config import AtrophyParams
from msvol.datatypes import Volume
from msvol.errors import InputError
from msvol.stages.atrophy import measure_pbvc, tissue_means, tissue_volume_ml

SHAPE = (64, 64, 64)
CENTRE = np.array([31.3, 32.1, 31.7])  # off the voxel lattice, so edges cut voxels at every phase
CSF, GM, WM = 0.12, 0.48, 0.80
RADIUS, WM_RADIUS, VENTRICLE_RADIUS = 26.0, 21.0, 0.0  # WM about half the tissue, as in a brain
RAMP_MM = 1.5  # partial-volume edge: tissue fraction falls linearly from 1 to 0 over 1.5 mm
PARAMS = AtrophyParams()


def fraction_inside(distance: np.ndarray, radius: float) -> np.ndarray:
    """Partial-volume fraction of a ball of `radius`: a linear ramp of the signed distance."""
    return np.clip((radius - distance) / RAMP_MM + 0.5, 0.0, 1.0)


def phantom(scale: float = 1.0, ventricle: float = VENTRICLE_RADIUS, noise: float = 0.0, seed: int = 0):
    """(T1 Volume, brain mask Volume, tissue volume in mm3) of a 3-tissue ball brain.

    WM core, GM shell, CSF around (and optionally a CSF ventricle in the middle of the WM);
    atrophy is a scale of every tissue radius. The returned tissue volume (GM + WM fraction
    summed over the grid, 1 mm3 voxels) is the truth PBVC is checked against.
    """
    axes = np.ogrid[tuple(slice(0, n) for n in SHAPE)]
    distance = np.sqrt(sum((axis - c) ** 2 for axis, c in zip(axes, CENTRE)))
    brain = fraction_inside(distance, RADIUS * scale)
    white = fraction_inside(distance, WM_RADIUS * scale)
    hole = fraction_inside(distance, ventricle) if ventricle else np.zeros_like(brain)
    tissue = brain - hole  # non-CSF fraction
    image = CSF + (brain - hole) * (GM - CSF) + (white - hole) * (WM - GM)
    if noise:
        image = image + np.random.default_rng(seed).normal(0.0, noise, SHAPE)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (-32.0, -30.0, -28.0)
    mask = distance <= RADIUS * scale + RAMP_MM / 2  # filled brain: tissue, its whole edge, ventricle
    return (Volume(image.astype(np.float32), affine, "T1w"), Volume(mask, affine, "mask"), float(tissue.sum()))


def pbvc(baseline, followup):
    (t1_b, mask_b, _), (t1_f, mask_f, _) = baseline, followup
    return measure_pbvc(t1_b, t1_f, mask_b, mask_f, years=1.0, alignment_correlation=0.99, params=PARAMS)


def true_pbvc(baseline, followup) -> float:
    return 100.0 * (followup[2] - baseline[2]) / baseline[2]


TWO_PERCENT = (1 - 0.02) ** (1 / 3)  # the radius scale of a 2 % volume loss


def test_tissue_means_are_ordered_and_close_to_rendered():
    t1, mask, _ = phantom()
    csf, gm, wm = tissue_means(t1.data, mask.data)
    assert csf < gm < wm
    assert (csf, gm, wm) == pytest.approx((CSF, GM, WM), abs=0.03)


def test_tissue_volume_reads_the_rendered_tissue():
    t1, mask, truth_mm3 = phantom()
    normalized = (t1.data - CSF) / (WM - CSF)
    gm_level = (GM - CSF) / (WM - CSF)
    assert tissue_volume_ml(normalized, mask.data, gm_level, 1.0) == pytest.approx(truth_mm3 / 1000, rel=1e-4)


def test_pbvc_recovers_a_known_two_percent_loss():
    baseline, followup = phantom(), phantom(TWO_PERCENT)
    truth = true_pbvc(baseline, followup)
    assert truth == pytest.approx(-2.0, abs=0.1)  # the phantom is what we think it is
    result = pbvc(baseline, followup)
    assert result.pbvc_percent == pytest.approx(truth, rel=0.05)
    assert result.boundary_shift_ml == pytest.approx((baseline[2] - followup[2]) / 1000, rel=0.05)
    assert result.pbvc_annualized_percent == pytest.approx(result.pbvc_percent)
    assert result.years == 1.0 and result.alignment_correlation == 0.99


def test_pbvc_sign_growth_is_positive():
    baseline, followup = phantom(TWO_PERCENT), phantom()
    truth = true_pbvc(baseline, followup)
    assert truth > 1.9
    assert pbvc(baseline, followup).pbvc_percent == pytest.approx(truth, rel=0.05)


def test_pbvc_no_change_is_zero():
    baseline = phantom()
    assert abs(pbvc(baseline, baseline).pbvc_percent) < 1e-4  # float32 round-off only


def test_pbvc_no_change_with_noise_is_small():
    # independent noise (sd 0.02, ~3 % of the CSF-WM contrast) on each scan of one unchanged brain
    result = pbvc(phantom(noise=0.02, seed=1), phantom(noise=0.02, seed=2))
    assert abs(result.pbvc_percent) < 0.1


def test_pbvc_with_noise_recovers_a_known_loss():
    baseline, followup = phantom(noise=0.02, seed=1), phantom(TWO_PERCENT, noise=0.02, seed=2)
    truth = true_pbvc(phantom(), phantom(TWO_PERCENT))
    assert pbvc(baseline, followup).pbvc_percent == pytest.approx(truth, rel=0.05)


def test_pbvc_ignores_a_global_intensity_change_between_visits():
    """A scanner gain/offset change between visits is not atrophy."""
    baseline, (t1, mask, tissue) = phantom(), phantom(TWO_PERCENT)
    brighter = (t1.with_data((1.3 * t1.data + 0.05).astype(np.float32)), mask, tissue)
    assert pbvc(baseline, brighter).pbvc_percent == pytest.approx(true_pbvc(baseline, brighter), rel=0.05)


def test_pbvc_counts_ventricular_enlargement():
    """Tissue lost at an inner CSF edge (ventricles widening) reads as loss, like loss at the surface.

    Tolerance 15 %: on a WM-CSF edge the CSF-GM window sits on the CSF side of the ramp, so BSI
    tracks a surface ~0.35 mm inside the half-volume one; on a 5-7 mm sphere that under-reads the
    swept volume by ~11 % (2 x 0.35 / 6). A flat edge would have no such bias.
    """
    baseline, followup = phantom(ventricle=5.0), phantom(ventricle=7.0)
    truth = true_pbvc(baseline, followup)
    assert truth < -1.0
    assert pbvc(baseline, followup).pbvc_percent == pytest.approx(truth, rel=0.15)


def test_annualised_pbvc_needs_half_a_year():
    (t1, mask, _), (t1_f, mask_f, _) = phantom(), phantom(TWO_PERCENT)
    short = measure_pbvc(t1, t1_f, mask, mask_f, years=0.49, alignment_correlation=1.0, params=PARAMS)
    assert short.pbvc_annualized_percent is None
    long = measure_pbvc(t1, t1_f, mask, mask_f, years=0.5, alignment_correlation=1.0, params=PARAMS)  # inclusive
    assert long.pbvc_annualized_percent == pytest.approx(long.pbvc_percent / 0.5)


def test_pbvc_refuses_two_grids():
    t1, mask, _ = phantom()
    small = Volume(t1.data[:-1], t1.affine, "T1w")
    with pytest.raises(InputError):
        measure_pbvc(t1, small, mask, Volume(mask.data[:-1], mask.affine, "mask"), years=1.0,
                     alignment_correlation=1.0, params=PARAMS)


def test_pbvc_refuses_inverted_contrast():
    """Regression: the CSF < GM < WM check was dead code (the k-means centres came back sorted), so a
    non-T1 contrast (CSF brightest) was normalised as if it were a T1 instead of raising InputError."""
    t1, mask, _ = phantom()
    inverted = t1.with_data(1.0 - t1.data)  # a T2-like contrast: CSF brightest
    with pytest.raises(InputError):
        measure_pbvc(inverted, inverted, mask, mask, years=1.0, alignment_correlation=1.0, params=PARAMS)
