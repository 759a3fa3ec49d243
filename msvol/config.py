"""Every threshold and default msvol uses, each with its unit and source.

One frozen dataclass per stage, gathered in `Params`. A value msvol chose itself says so
("msvol choice: ..."), with the measurement that backs it. `protocols/*.yaml` may override
fields by name (`load_params`); the effective values and their hash go into every report.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from msvol.errors import ConfigError


def _p(default, unit: str, source: str):
    return field(default=default, metadata={"unit": unit, "source": source})


@dataclass(frozen=True)
class IngestParams:
    max_voxel_size_mm: float = _p(
        1.5, "mm",
        "MAGNIMS-CMSC-NAIMS 2021 (Wattjes et al., Lancet Neurol 2021) recommend 3D FLAIR/T1 at "
        "<= 1 mm isotropic; msvol accepts up to 1.5 mm (inclusive) and refuses thicker slices")
    warn_voxel_size_mm: float = _p(
        1.2, "mm",
        "MAGNIMS-CMSC-NAIMS 2021 recommend <= 1 mm isotropic 3D; msvol warns above 1.2 mm (the ADNI/MS PATHS "
        "1.2 mm sagittal T1 still conforms) and refuses above max_voxel_size_mm")
    min_field_of_view_mm: float = _p(
        120.0, "mm", "msvol choice: an adult head is >= 140 mm along every axis; smaller is not a head scan")
    max_slice_gap_mm: float = _p(
        0.1, "mm",
        "msvol choice: a 3D acquisition has contiguous (or overlapping) slices; a gap between slices means a 2D "
        "stack or missing slices (warned)")
    geometry_tolerance_mm: float = _p(
        0.01, "mm",
        "msvol choice (issue 4): every slice position must lie on one regular grid to within this; the affine "
        "written from DICOM matches the DICOM geometry to the same tolerance")
    expected_field_strengths_t: tuple[float, ...] = _p(
        (1.5, 3.0), "tesla",
        "MAGNIMS-CMSC-NAIMS 2021: 1.5 T or 3 T (3 T preferred); other field strengths are warned")


@dataclass(frozen=True)
class PreprocessParams:
    n4_fit_spacing_mm: float = _p(
        6.0, "mm",
        "msvol choice (issue 13): N4 fits its field on the image shrunk to about this voxel size (shrink 6 at 1 mm; "
        "ANTs' default 4 took 9 s per image, 3 s at 6). The field's B-splines are 100 mm apart. `python "
        "bench/n4_fit.py`, known spline / polynomial fields on an msvol synth visit, residual field spread (12 mm "
        "blocks, 1-99 %): T1 0.112 / 0.098 at 6 mm against 0.121 / 0.099 at 4 (uncorrected 0.213 / 0.170); FLAIR "
        "0.186 / 0.191 against 0.179 / 0.180 (uncorrected 0.215 / 0.171: N4 removes little of a FLAIR field)")
    n4_iterations: tuple[int, ...] = _p(
        (50, 50, 30), "iterations per fitting level", "msvol choice: 3 levels; ANTs default is 4 x 50 (slower)")
    n4_spline_distance_mm: float = _p(
        100.0, "mm",
        "msvol choice: B-spline spacing of the bias field (0 = ANTs default mesh). 100 mm vs the default cut PBVC "
        "errors on sample_data from +0.07/-0.27/-0.19 to +0.07/+0.02/+0.09 and on synth seed 1 from "
        "-0.12/+0.12/+0.02 to +0.06/+0.06/+0.13 percentage points, at the same run time (docs/METHODS.md)")
    brain_mask_threshold: float = _p(0.5, "probability", "deepbet default threshold (Fisch et al., 2024)")
    # Bounds on deepbet's brain mask, from MRI intracranial volumes (ICV) of healthy adults: Matsumae et al.,
    # J Neurosurg 1996;84:982-991: ICV 1469 +- 102 ml in men and 1289 +- 111 ml in women, brain 88.6 % of ICV
    # (1302 +- 112 and 1143 +- 105 ml). deepbet's mask holds a CSF margin: 1.17 x the brain volume on
    # sample_data (1975 ml for 1683 ml), 1.17-1.22 x on bench seeds 600/602 (2205-2297 ml for ~1880 ml;
    # docs/BENCHMARKS.md), so about 1.15 x brain or 1.06 x ICV; a healthy large adult head gave 2217 ml (issue 9).
    min_brain_volume_ml: float = _p(
        700.0, "ml",
        "Matsumae 1996: women's brain volume 1143 - 5 SD (105 ml) = 618 ml, x 1.15 for deepbet's margin = 711 ml; "
        "a mask below 700 ml (exclusive) cannot be a whole adult brain and is refused")
    warn_brain_volume_below_ml: float = _p(
        950.0, "ml",
        "Matsumae 1996: women's brain volume 1143 - 3 SD = 828 ml, x 1.15 = 952 ml; below 950 ml the mask is kept "
        "and flagged (unusual_brain_volume): severe atrophy, a small head, or a mask that missed brain")
    warn_brain_volume_above_ml: float = _p(
        2000.0, "ml",
        "Matsumae 1996: men's ICV 1469 + 4 SD (102 ml) = 1877 ml, x 1.06 for deepbet's margin = 1990 ml; above "
        "2000 ml the mask is kept and flagged (unusual_brain_volume): a large head, or a mask that leaked")
    max_brain_volume_ml: float = _p(
        2500.0, "ml",
        "Matsumae 1996: men's ICV 1469 + 10 SD (102 ml) = 2489 ml; a mask above 2500 ml (exclusive) cannot be an "
        "adult head and is refused")


@dataclass(frozen=True)
class RegisterParams:
    rigid_shrink_factors: tuple[int, ...] = _p(
        (4, 2), "voxels", "msvol choice: a full-resolution third level moved the T1->FLAIR map by 0.05 mm at the "
        "head's corners (sample_data ses-01) and cost 4.5 s per registration")
    rigid_smoothing_mm: tuple[float, ...] = _p((2.0, 1.0), "mm", "msvol choice, paired with the pyramid")
    template_shrink_factors: tuple[int, ...] = _p(
        (8, 4), "voxels", "msvol choice: the affine to the MNI template only gives a head-size scale; 4 mm suffices")
    template_smoothing_mm: tuple[float, ...] = _p((4.0, 2.0), "mm", "msvol choice, paired with the pyramid")
    rigid_sampling_fraction: float = _p(
        0.05, "fraction", "msvol choice: 5 % random MI samples; not tuned (bench alignment correlation 0.97-0.99)")
    min_alignment_correlation: float = _p(
        0.90, "correlation",
        "msvol choice: halfway-space FLAIR correlation inside the brain; well-aligned synthetic pairs read "
        "0.97-0.99 (make bench, sample_data); misregistered pairs have not been measured yet. Pairs below are "
        "flagged: PBVC not trustworthy")


@dataclass(frozen=True)
class SegmentParams:
    probability_threshold: float = _p(
        0.7, "probability",
        "msvol choice for the per-visit bundle 2.0.0, on a held-out synthetic patient (seed 300, 2 visits; "
        "bench/calibrate_threshold.py, log in bench/): lesion-wise F1 1.000/0.977 at 0.4-0.8, voxel Dice "
        "0.860/0.865 at 0.5, 0.876/0.879 at 0.7, 0.893/0.898 at 0.9 (volume ratio 1.28 -> 1.23 -> 1.15); "
        "0.7 chosen before this log, higher values not tried on the held-out set; kept for bundles 3.0.0, "
        "not chosen again")
    roi_size: tuple[int, int, int] = _p((96, 96, 96), "voxels", "msvol choice: sliding-window patch, 1 mm grid")
    overlap: float = _p(0.25, "fraction", "MONAI sliding_window_inference default")
    sw_batch_size: int = _p(2, "patches", "msvol choice: with it the whole pipeline peaked at 2.0 GB (make bench)")


@dataclass(frozen=True)
class LesionParams:
    connectivity: int = _p(26, "neighbours", "DOMAIN.md: 26-connectivity is usual for lesion components")
    min_lesion_volume_mm3: float = _p(
        5.0, "mm3", "msvol choice: components with volume >= this are kept; smaller ones are noise at 1 mm")
    match_tolerance_voxels: int = _p(
        1, "voxels", "msvol choice: baseline lesions dilated by this before the overlap test, so a 1-voxel "
        "registration/segmentation wobble does not make a stable lesion 'new'; not tuned")
    min_new_lesion_volume_mm3: float = _p(
        14.0, "mm3",
        "consensus minimum of ~3 mm across (a 3 mm sphere is 14.1 mm3; MAGNIMS 2021 / DOMAIN.md); "
        "new lesions with volume >= this are counted")
    small_lesion_max_volume_mm3: float = _p(
        100.0, "mm3", "msvol choice: boundary between the 'small' and 'large' enlargement thresholds")
    min_relative_change_small: float = _p(
        0.45, "fraction",
        "DOMAIN.md: manual volumetry varies ~23 % for small lesions, so a change must exceed ~45 %")
    min_relative_change_large: float = _p(
        0.24, "fraction",
        "DOMAIN.md: manual volumetry varies ~12 % for large lesions, so a change must exceed ~24 %")
    min_absolute_change_mm3: float = _p(
        10.0, "mm3", "msvol choice: below ~10 voxels at 1 mm a change is within segmentation noise")
    use_change_model: bool = _p(
        True, "switch",
        "msvol choice: fuse the two-visit change model with the per-visit masks (MSSEG-2: joint two-visit models "
        "detect new lesions best). Held-out synth seeds 601-607, 21 pairs (make bench-heldout): false new lesions "
        "per pair 0.24 fused vs 0.71 independent, new-lesion sensitivity 1.00 in both (docs/BENCHMARKS.md)")
    min_new_change_probability: float = _p(
        0.5, "probability",
        "msvol choice (the reporting operating point): a lesion absent at baseline counts as new, and new tissue as "
        "enlargement, only when the change model's mean probability over it reaches this. Calibration set (check-set "
        "design, seed 4300; bench/calibrate_operating_points.py, bundles 3.0.0, 2026-12-01): 0.3-0.7 all give new 7/39 "
        "reported, 12/39 with candidates, false new 0 per pair (every per-visit proposal reads >= 0.79); 0.5 is kept "
        "until a set separates them (a faint-mix change model, not shipped: all 46 grid points tie too)")
    # The candidate operating point: findings listed as 'possible_new' for the reader, never counted until confirmed.
    min_candidate_change_probability: float = _p(
        0.2, "probability",
        "msvol choice (the candidate operating point): a lesion absent at baseline reaching this but not "
        "min_new_change_probability, or smaller than min_new_lesion_volume_mm3, is a 'possible new lesion'; below, "
        "stable (or dropped if small). Calibration set (as above): 0.05-0.5 all give 0.71 candidates per pair (target "
        "<= 2) and the same sensitivity; the per-visit model proposes no region for most missed lesions (docs/MODEL.md)")
    min_change_only_new_probability: float = _p(
        0.5, "probability",
        "msvol choice (issue 12): a new lesion only the change model sees (no per-visit lesion at either visit) is "
        "counted from this mean change probability, a possible new lesion below. Calibrated with a faint-mix change "
        "model, not shipped (seed 4300, bench/calibrate_operating_points.py, 2026-12-02): no false new lesion at "
        "0.3-0.9, raising it only demotes true ones (27/39 reported up to 0.6, 25/39 at 0.9); the rule (lowest value "
        "with false new <= 0.3 and <= 2 candidates per pair) takes the reporting point; for 3.0.0 likewise")
    min_candidate_volume_mm3: float = _p(
        5.0, "mm3", "msvol choice: the smallest possible new lesion listed (>=): min_lesion_volume_mm3, 5 voxels at 1 mm")
    change_only_margin_voxels: int = _p(
        3, "voxels",
        "msvol choice (issue 12): new tissue that only the change model sees counts only this far inside the brain at "
        "both visits; at a mask's rim, or where it meets the end of one visit's field of view, the model compares "
        "tissue with nothing (held-out standard sub-02 gave 344 and 223 mm3 false new lesions there without it). The "
        "rule otherwise reuses min_new_change_probability and the two size limits (calibration set, seed 4300: new "
        "lesions reported or candidate 12/39 -> 32/39, false new 0.29 per pair; docs/METHODS.md)")
    # Both visits together: a lesion seen at one visit is looked for at the other below the reporting threshold.
    min_presence_probability: float = _p(
        0.3, "probability",
        "msvol choice: a lesion found at one visit only is still 'present' at the other when that visit's mean "
        "per-visit probability over its region (halfway grid) reaches this: then it is stable, not new or "
        "resolved (hysteresis across visits, as a reader compares both scans)")
    growth_bridge_probability: float = _p(
        0.05, "probability",
        "issue 12: a follow-up lesion joined to a baseline lesion through follow-up tissue of per-visit probability >= "
        "this is its growth, not new (lesion_rules.reach_labels). Calibration sets (check-set design seed 4300 and "
        "shifted seeds 700-705, 25 pairs; `python bench/calibrate_bridge.py score --choose`, 2026-12-07), rule fixed "
        "before: the lowest of 0.3/0.2/0.1/0.05 joining no finding on a truth new lesion: none joined at any level; "
        "0.05 joins 7 others (4 counted new)")
    # The subtraction image: possible new lesions no model proposes (msvol.stages.lesion_subtraction).
    use_subtraction_candidates: bool = _p(True, "switch", "msvol choice (issue 12): the models miss small faint new "
                                          "lesions (docs/MODEL.md); list them for the reader, never counted")
    min_subtraction_rise: float = _p(
        0.08, "fraction of the baseline FLAIR tissue level",
        "calibration set (check-set design, seed 4300, 7 pairs; `python bench/calibrate_subtraction.py score "
        "--choose`, 2026-12-07, bundles 3.0.0), rule fixed before: false added candidates <= 0.3 and all candidates "
        "<= 2 per pair, then the most lesions gained, then the lowest rise and volume. 0.08 / 10 mm3 / 1 mm: 0.71 "
        "added per pair, none false, 5 of 7 missed new lesions gained; 0.07: 4 gained, 0.14 false per pair; 0.06: 2.6 "
        "false")
    min_subtraction_volume_mm3: float = _p(10.0, "mm3", "with min_subtraction_rise (grid 5-20 mm3); 5 mm3 adds a "
                                           "candidate per 7 pairs and no lesion at 0.08")
    subtraction_smoothing_mm: float = _p(1.0, "mm (Gaussian sigma)", "about the radius of the smallest lesion to find "
                                         "(14 mm3: 1.5 mm); calibration grid: 1.5 mm gains at most 4 lesions, 1 mm 5")


@dataclass(frozen=True)
class AtrophyParams:
    boundary_width_voxels: int = _p(
        2, "voxels",
        "boundary shift integral region: union dilated and intersection eroded by this (Freeborough & Fox, "
        "IEEE TMI 1997). msvol choice 2: on synth seed 1 widths 1/2/3 gave PBVC errors -0.06/+0.13/+0.09, "
        "-0.12/+0.12/+0.02, -0.13/+0.11/+0.01 pp (before the N4 spline change); 2 keeps the edge inside. Issue 12 "
        "(T1 halfway space, reference matching, DBC): width 3 moved recovery by <= 1.4 % on the three pairs below")
    window_margin_fraction: float = _p(
        0.2, "fraction of the CSF-GM contrast",
        "KN-BSI window (Leung et al., NeuroImage 2010) kept this far inside the pure CSF and GM levels on each "
        "side, so that noise (sd <= 4 % of that contrast on msvol synth) rarely reaches a clip. msvol choice 0.2, "
        "issue 12: on msvol's divergence atrophy the window's place matters (tissue is lost at every partial-"
        "volume level), 0.15/0.20/0.25 gave recovery 1.01/1.04/1.07 (synth seed 500, no pose, bias 0.2, N4) and "
        "0.95/0.97/1.00 (seed 500 through prepare_visit); a uniform contraction 1.00 for all three "
        "(docs/METHODS.md; bench/pbvc_recovery.py)")
    reference_erosion_voxels: int = _p(
        2, "voxels",
        "msvol choice (issue 12): reference voxels (pure CSF / pure WM at both visits) lie this far inside "
        "their class at each visit, so that partial-volume voxels atrophy changes are not taken for scanner "
        "differences; not tuned")
    csf_level_depth_mm: float = _p(
        10.0, "mm",
        "msvol choice (issue 12, 2026-12-07), not tuned: the PBVC's CSF level C comes from the dark references this "
        "deep in the brain mask (ventricles); 10 mm is the depth a drift rule chose for reference voxels on its own "
        "calibration cases before (docs/METHODS.md). Held-out shifted median recovery 0.82 -> 0.91, standard "
        "error 0.049 -> 0.038 pp, bench/pbvc_recovery.py and the check set unchanged (bench/pbvc_sets.py)")
    bias_smoothing_mm: float = _p(
        7.0, "mm",
        "Gaussian sigma of the differential bias correction (DBC; Lewis & Fox, J Neurosci Methods 2004, used "
        "with KN-BSI by Leung et al., NeuroImage 2010): a local plane through 4 mm block means of the "
        "follow-up/baseline ratio over pure-WM voxels; 0 = none. msvol choice, issue 12 (2026-12-07), on "
        "bench/pbvc_recovery.py's cases and the folded phantom of tests/stages/test_atrophy.py: 7/10 mm gave "
        "recovery 1.05/1.06, 1.01/1.01 (contraction 21, 22), 1.00/1.00, 0.99/1.00, 0.97/0.97 (divergence 810-812); "
        "the phantom with a 9.6 % surface-to-depth residual 1.02/1.08 and 1.03/1.09 (docs/METHODS.md has the rest)")
    tissue_flat_fraction: float = _p(
        0.4, "fraction of the voxels",
        "msvol choice (issue 12), first value tried, not tuned: the PBVC's grey-matter level comes from the flattest "
        "40 % of the baseline brain's voxels (no partial-volume edges); held-out shifted sub-01..04 median recovery "
        "0.45 -> 0.86 with it, bench/pbvc_recovery.py's cases within 0.03 (docs/METHODS.md, 2026-12-02)")
    pathological_annualized_pbvc_percent: float = _p(
        -0.40, "%/year", "De Stefano et al., J Neurol Neurosurg Psychiatry 2016: SIENA cut-off, 80 % specificity")
    min_years_for_annualized: float = _p(
        0.5, "years", "msvol choice: annualising shorter intervals multiplies noise; flagged on the report")


@dataclass(frozen=True)
class GrowParams:
    """How the review grows a lesion the radiologist points at (msvol.review.grow); review-time, not in Params.

    Measured (2026-12) by growing from the centroid of each of the 36 truth lesions of sample_data sub-01
    ses-02/03 (truth brain mask, the other lesions as existing labels; FLAIRs not bias-corrected).
    """

    seed_search_radius_mm: float = _p(
        2.0, "mm",
        "msvol choice: the seed is the brightest smoothed voxel within this distance (inclusive) of the point, "
        "so a click 1-2 mm off a small lesion's centre still lands in it; not tuned")
    smoothing_sigma_mm: float = _p(
        0.5, "mm",
        "msvol choice: Gaussian sigma (0 = none) of the image the seed and the reference are read on (growing "
        "reads the unsmoothed FLAIR); halves the noise SD at 1 mm. sample_data median (mean) Dice 0.982 (0.968), "
        "0.978 (0.967) without, 0.979 (0.945) at 1 mm; spheres +20 % over WM with 5 % noise, radius 1.5-7 mm: "
        "mean Dice 0.78-0.94, 0.74-0.88 without")
    reference_radius_mm: float = _p(
        20.0, "mm",
        "msvol choice: normal-appearing brain = median of the brain voxels (not already labelled) within this "
        "distance of the point; local, so residual bias does not move the bound. sample_data median Dice 0.982, "
        "0.976 at 10 mm, 0.974 with the whole-brain median")
    min_seed_relative_intensity: float = _p(
        1.1, "ratio to reference",
        "msvol choice: the seed must be >= this times the reference (inclusive), else the point is refused as "
        "not hyperintense. In flat WM with 5 % noise the brightest smoothed voxel within 2 mm of a point is 1.05 "
        "(median) and reaches 1.1 at 0.13 % of points; a faint lesion at +20 % passes")
    boundary_fraction: float = _p(
        0.5, "fraction of seed contrast",
        "msvol choice: voxels >= reference + this x (seed - reference) are lesion (inclusive): the edge at half "
        "the contrast, where partial volume makes a voxel half lesion. sample_data median Dice 0.982 at 0.5, "
        "0.963 at 0.4, 0.966 at 0.6")
    max_radius_mm: float = _p(
        30.0, "mm",
        "msvol choice: the grown region stays within this distance (inclusive) of the seed; a confluent "
        "periventricular lesion 60 mm long still fits; not tuned")
    max_volume_mm3: float = _p(
        10000.0, "mm3",
        "msvol choice: a grown region above this raises its lower bound until it fits (<= the value); above the "
        "largest synthetic lesion (3000 mm3, x 2.3 when enlarging) and a 2 cm tumefactive lesion (4200 mm3); "
        "not tuned")


# --- batch runs (msvol run, issue 13) -----------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchSettings:
    """How a batch decides what to run and when to give up (the options of `msvol run`, ops/batch.py); run-time,
    not in Params (no report depends on it)."""

    settle_minutes: float = _p(
        5.0, "minutes", "XNAT's 5-minute quiet period before it builds a received session; between Orthanc's "
        "60 s stable age and mercure's 900 s per study (DOMAIN.md)")
    retries: int = _p(2, "tries", "msvol choice (issue 13): a crash that happens 3 times is not transient")
    lease_minutes: float = _p(
        10.0, "minutes", "msvol choice: 10 heartbeats (one a minute) may be missed before another run takes the "
        "claim over, longer than a busy NFS server or a database failover pauses")
    worker_memory: str = _p(
        "4GB", "bytes per Dask worker (`--worker-memory`)",
        "msvol choice (issue 13): Dask restarts a worker above it; one pair peaked at 2.4 GB (docs/BENCHMARKS.md)")
    retry_exams: frozenset[str] = frozenset()  # exam ("sub-XX/ses-YY") or patient ("sub-XX") ids to retry now

    def __post_init__(self):
        if self.settle_minutes < 0 or self.retries < 0 or self.lease_minutes <= 0:
            raise ConfigError(f"settle minutes {self.settle_minutes} and retries {self.retries} must be >= 0 and "
                              f"lease minutes {self.lease_minutes} > 0")

    @property
    def heartbeat_s(self) -> float:
        return min(60.0, self.lease_minutes * 6)  # a tenth of the lease


# --- cohort measures (msvol cohort, issue 13) -------------------------------------------------------------------
@dataclass(frozen=True)
class CohortParams:
    """What `msvol cohort` (msvol.ops.cohort) counts per patient; cohort-time, not in Params (no report depends on it).

    msvol sees only the MRI parts of NEDA: no gadolinium-enhancing lesions, relapses or disability, so the cohort
    reports "MRI activity-free" and "MRI activity-free and atrophy within the cut-off", never NEDA (DOMAIN.md). The
    atrophy cut-off is AtrophyParams.pathological_annualized_pbvc_percent (De Stefano 2016), not repeated here.
    """

    max_active_lesions_for_activity_free: int = _p(
        0, "new + enlarging T2 lesions, summed over a patient's consecutive intervals",
        "MRI part of NEDA-3: no new or enlarging T2 lesions (Havrdova et al., Lancet Neurol 2009;8:254-60; Giovannoni "
        "et al., Mult Scler Relat Disord 2015;4:329-33); a patient is MRI activity-free when the count is <= this "
        "(inclusive)")
    confidence_level: float = _p(
        0.95, "fraction", "msvol choice: the conventional 95 % for the intervals of cohort shares and lesion rates")


# The cohort measures' definitions and sources, printed in cohort.json and on the cohort page.
COHORT_MEASURES = {
    "mri_activity_free": (
        "No new and no enlarging T2 lesion over the follow-up: the MRI part of NEDA-3 without gadolinium-enhancing "
        "lesions (Havrdova et al., Lancet Neurol 2009;8:254-60; Giovannoni et al., Mult Scler Relat Disord "
        "2015;4:329-33)."),
    "mri_activity_free_atrophy_within_cutoff": (
        "MRI activity-free and an annualised PBVC above the pathological cut-off (a value at the cut-off counts as "
        "atrophy): the MRI parts of NEDA-4 (Kappos et al., Mult Scler 2016;22:1297-305: NEDA-3 plus annualised "
        "brain volume loss below 0.4 %); the cut-off is De Stefano et al., J Neurol Neurosurg Psychiatry "
        "2016;87:93-9 (SIENA, 80 % specificity)."),
    "new_lesions_per_patient_year": (
        "New T2 lesions per patient-year from a negative binomial model with log follow-up years as offset, as for "
        "overdispersed MRI lesion counts (Sormani et al., J Neurol Sci 1999;163:74-80, enhancing-lesion counts); the "
        "pooled rate (all new lesions / all follow-up years) beside it."),
}
# --- end of cohort measures ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Params:
    ingest: IngestParams = field(default_factory=IngestParams)
    preprocess: PreprocessParams = field(default_factory=PreprocessParams)
    register: RegisterParams = field(default_factory=RegisterParams)
    segment: SegmentParams = field(default_factory=SegmentParams)
    lesions: LesionParams = field(default_factory=LesionParams)
    atrophy: AtrophyParams = field(default_factory=AtrophyParams)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """Short content hash of the effective values, written into every report."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def field_sources(params: Params) -> dict[str, dict[str, str]]:
    """Every field as 'section.name' -> {'unit', 'source'}, for the report and for tests."""
    out = {}
    for section in dataclasses.fields(params):
        for f in dataclasses.fields(getattr(params, section.name)):
            out[f"{section.name}.{f.name}"] = dict(f.metadata)
    return out


def load_params(path: Path | None = None) -> Params:
    """Default parameters, overridden by the `params:` mapping of a protocol YAML file.

    The file holds ``params: {section: {field: value}}``; any other top-level key is ignored
    here (protocol rules belong to ingest). Unknown sections or fields raise ConfigError naming
    the file, the key and the nearest valid name.
    """
    params = Params()
    if path is None:
        return params
    import yaml

    try:
        document = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read protocol file ({exc})") from exc
    overrides = document.get("params") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{path}: 'params' must be a mapping of sections to fields")
    sections = {}
    for section_name, values in overrides.items():
        valid_sections = [f.name for f in dataclasses.fields(Params)]
        if section_name not in valid_sections:
            raise ConfigError(f"{path}: unknown section '{section_name}'{_suggest(section_name, valid_sections)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: '{section_name}' must be a mapping of field: value")
        section = getattr(params, section_name)
        valid_fields = {f.name: f for f in dataclasses.fields(section)}
        for key, value in (values or {}).items():
            if key not in valid_fields:
                raise ConfigError(
                    f"{path}: unknown key '{section_name}.{key}'{_suggest(key, list(valid_fields))}")
            values[key] = _coerce(path, f"{section_name}.{key}", getattr(section, key), value)
        sections[section_name] = dataclasses.replace(section, **values)
    return dataclasses.replace(params, **sections)


def _coerce(path, name: str, default, value):
    """`value` converted to the type of `default`, or ConfigError (bools are not numbers here)."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: '{name}' must be true or false, got {value!r}")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: '{name}' must be a list, got {value!r}")
        return tuple(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{path}: '{name}' must be a number, got {value!r}")
    if isinstance(default, int):
        if float(value) != int(value):
            raise ConfigError(f"{path}: '{name}' must be a whole number, got {value!r}")
        return int(value)
    return float(value)


def _suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    return f"; did you mean '{close[0]}'?" if close else f"; valid: {', '.join(valid)}"
