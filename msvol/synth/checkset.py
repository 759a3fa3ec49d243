"""The independent check set: longitudinal cases made by a second method, not msvol's generator.

msvol's models were trained on msvol.synth.patients' label maps. This set reuses only that generator's
finished baseline images (base patients of seeds CHECKSET base seeds, never used in training, rendered
without noise, bias or head motion, their lesions kept as 'old' lesions) and then, with code written
apart from it (checkset_geometry, checkset_lesions):

- varies the anatomy per subject: anisotropic scaling with a full shear of the head, a smooth random
  displacement of a few mm, enlarged ventricles;
- puts lesions into the finished images: extra small old lesions, new lesions (10 mm3 up; blobs,
  sphere clusters, and lesions cut out of another synthetic patient's truth map) in periventricular,
  deep, juxtacortical and infratentorial white matter, some 2.5-4.5 mm from an old lesion; FLAIR
  +15 % to +80 % over local white matter, T1 isointense to dark, edges sharp to 2 mm;
- grows old lesions by a known factor (enlarging), one by less than the measurement noise
  (fate 'enlarging_below_noise') and one tiny lesion until it joins a neighbour ('enlarging_by_merger');
  neither of the last two is an enlarging finding;
- contracts the brain uniformly about its centre (the outer CSF takes the volume) by a known PBVC;
- acquires each visit with its own pose, a polynomial bias field, gain and Rician noise; one
  follow-up FLAIR on a 1 x 1 x 1.2 mm grid, one subject stored left-right reversed (LAS);
- one scan-rescan pair: the same unchanged brain twice (pose, bias, noise only).

Truth (derivatives/truth, the layout msvol.evaluate reads): label maps on each visit's FLAIR grid (the
same id for a lesion at both visits), and sub-XX_truth.json: intervals[] with fates ('new',
'new_below_minimum', 'enlarging', 'enlarging_by_merger', 'enlarging_below_noise', 'stable'), the designed
PBVC (pbvc_percent) and the one summed from the rendered tissue fractions, scan_rescan, and findings[]
(each new or grown lesion's volumes, whether it counts, contrast, edge, shape, site, neighbour).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from msvol.config import LesionParams
from msvol.synth import checkset_geometry as geometry
from msvol.synth import checkset_lesions as lesions
from msvol.synth import checkset_render as render
from msvol.synth.checkset_book import LesionBook

CHECKSET_VERSION = "1"
CHECKSET_SEED = 4100  # subject i draws from [CHECKSET_SEED, i]; base patients 4101-4107, donor 4199
DONOR_SEED = 4199
# Another seed gives another set of the same design: bench/calibrate_operating_points.py chooses the
# thresholds on CALIBRATION_SEED's set, so the check set itself stays held out.
CALIBRATION_SEED = 4300
DONT_COUNT = ("new_below_minimum", "enlarging_by_merger", "enlarging_below_noise")


@dataclass(frozen=True)
class Acquisition:
    """Per-visit acquisition draws (noise in units of white matter)."""

    max_rotation_deg: float = 5.0
    max_translation_mm: float = 6.0
    t1_motion_deg: float = 1.0  # between the FLAIR and T1 series of one visit
    t1_motion_mm: float = 1.0
    bias_amplitude: tuple[float, float] = (0.08, 0.25)
    noise_sigma: tuple[float, float] = (0.015, 0.03)
    gain: tuple[float, float] = (0.85, 1.2)
    stored_white_matter: tuple[float, float] = (380.0, 700.0)  # stored integer value of white matter


@dataclass(frozen=True)
class AnatomyVariation:
    scale_range: tuple[float, float] = (0.92, 1.08)
    max_shear: float = 0.06
    displacement_mm: float = 3.0
    displacement_lattice_voxels: int = 16
    ventricle_pull_mm: float = 2.0


@dataclass(frozen=True)
class SubjectDesign:
    """What one check-set subject holds. Volumes are designed; the truth measures what was rendered."""

    subject: str
    base_seed: int
    rescan: bool = False
    pbvc_percent: float = 0.0
    years: float = 1.0
    new_volumes_mm3: tuple[float, ...] = ()
    new_sites: tuple[str, ...] = ()  # a lesion site, or "next_to_old": 2.5-4.5 mm from an old lesion
    new_contrasts: tuple[float, ...] = ()  # FLAIR, relative to local white matter
    enlarging_factors: tuple[float, ...] = ()  # volume x
    merger: bool = False
    below_noise_factor: float | None = None  # volume x, below the measurement noise
    small_old_volumes_mm3: tuple[float, ...] = (18.0, 35.0, 60.0)
    anisotropic_followup: bool = False  # follow-up FLAIR on 1 x 1 x 1.2 mm
    las: bool = False
    # zeros around the base grid, so a scaled and moved head stays inside every visit's field of view
    grid_pad_voxels: tuple[int, int, int] = (12, 14, 14)
    acquisition: Acquisition = field(default_factory=Acquisition)
    anatomy: AnatomyVariation = field(default_factory=AnatomyVariation)


def default_designs(seed: int = CHECKSET_SEED) -> tuple[SubjectDesign, ...]:
    """Six change subjects and one scan-rescan subject, drawn once from `seed` (base patients seed+1..seed+7).

    Each change subject has 7 counted new lesions (2 of 14-30, 2 of 30-100, 2 of 100-500 and 1 of
    500-1400 mm3 designed) with FLAIR contrasts spread over 0.15-0.80; subjects 01, 03 and 05 also one
    of 10-12 mm3 (below the consensus minimum, not counted).
    """
    rng = np.random.default_rng(seed)
    cycle = ("periventricular", "deep_white_matter", "juxtacortical", "infratentorial")
    enlarging = ((2.2, 3.0), (2.5,), (2.0, 2.8), (2.4,), (3.0, 2.0), (2.6,))
    pbvc = (-1.0, -0.6, -1.4, -0.8, -2.0, -0.5)
    designs = []
    for index in range(6):
        volumes = [float(np.exp(rng.uniform(np.log(low), np.log(high))))
                   for low, high, count in ((16, 28, 2), (35, 90, 2), (120, 450, 2), (600, 1400, 1))
                   for _ in range(count)]
        sites = [cycle[(index + position) % 4] for position in range(6)]
        sites.append("periventricular" if index % 2 == 0 else "deep_white_matter")
        sites[index % 4] = "next_to_old"
        if index % 2 == 0:
            sites[4] = "next_to_old"
        sites = ["deep_white_matter" if site == "infratentorial" and volume > 300 else site
                 for site, volume in zip(sites, volumes)]
        contrasts = list(rng.permutation(np.linspace(0.15, 0.80, 7)).round(3))
        if index % 2 == 0:
            volumes.append(float(rng.uniform(10.0, 12.5)))
            sites.append("deep_white_matter")
            contrasts.append(round(float(rng.uniform(0.3, 0.8)), 3))
        designs.append(SubjectDesign(
            subject=f"{index + 1:02d}", base_seed=seed + 1 + index, pbvc_percent=pbvc[index],
            years=round(float(rng.uniform(0.8, 1.3)), 3), new_volumes_mm3=tuple(round(v, 1) for v in volumes),
            new_sites=tuple(sites), new_contrasts=tuple(float(c) for c in contrasts),
            enlarging_factors=enlarging[index], merger=index == 3,
            below_noise_factor=1.07 if index == 4 else None,
            anisotropic_followup=index == 0, las=index == 1))
    designs.append(SubjectDesign(subject="07", base_seed=seed + 7, rescan=True, years=7 / 365.25,
                                 small_old_volumes_mm3=(15.0, 20.0, 28.0, 40.0, 60.0, 90.0)))
    return tuple(designs)


@dataclass(frozen=True, eq=False)
class Base:
    """A base patient's finished, noise-free images on the 1 mm subject grid, in white-matter units."""

    flair: np.ndarray
    t1: np.ndarray  # on the FLAIR grid
    labels: np.ndarray  # old lesions (int)
    tissue: np.ndarray  # GM + WM fraction
    affine: np.ndarray
    lesion_sites: dict  # old lesion id -> site
    provenance: dict  # what made it (generator, version, seed)


def base_from_generator(seed: int, n_lesions: tuple[int, int] = (10, 16)) -> Base:
    """One visit of msvol.synth.patients without noise, bias, gain or head pose, in white-matter units."""
    from msvol.synth import patients

    settings = patients.SynthSettings(n_visits=1, n_baseline_lesions=n_lesions, noise_fraction=(0.0, 0.0),
                                      bias_amplitude=(0.0, 0.0), gain=(1.0, 1.0), max_rotation_deg=0.0,
                                      max_translation_mm=0.0)
    patient = patients.generate_patient(seed, settings)
    visit = patient["visits"][0]
    flair = visit["flair"].astype(np.float32) / settings.intensity_scale
    t1 = visit["t1"][::-1].astype(np.float32) / settings.intensity_scale  # stored LAS: back on the FLAIR grid
    return normalised_base(flair, t1, visit["labels"].astype(np.int32), visit["tissue"].astype(np.float32),
                           visit["flair_affine"], {lesion["id"]: lesion["site"] for lesion in patient["truth"]["lesions"]},
                           {"generator": "msvol.synth.patients", "version": patients.GENERATOR_VERSION, "seed": seed,
                            "settings": dataclasses.asdict(settings)})


def normalised_base(flair, t1, labels, tissue, affine, lesion_sites, provenance) -> Base:
    """A Base with FLAIR and T1 divided by their white-matter levels (T1 two-means on pure tissue)."""
    pure = (tissue > 0.99) & ~ndimage.binary_dilation(labels > 0, iterations=2)
    grey, white = lesions.white_matter_levels(t1, pure)
    flair_white = float(np.median(flair[pure & (t1 >= 0.5 * (grey + white))]))
    return Base(flair / np.float32(flair_white), t1 / np.float32(white), labels, tissue, affine,
                dict(lesion_sites), provenance)


def donors_from_generator(seed: int = DONOR_SEED) -> list[np.ndarray]:
    """Lesion shapes of another synthetic patient's truth label map."""
    return lesions.donor_shapes(base_from_generator(seed, (22, 28)).labels)


def make_subject(base: Base, design: SubjectDesign, seed, donors=()) -> dict:
    """Render one check-set subject in memory: `visits` (flair, t1, labels, brain, tissue, affines, date,
    session) and `truth` (JSON-ready). Deterministic for the same base, design, seed and donors."""
    rng = np.random.default_rng(seed)
    base = padded(base, design.grid_pad_voxels)
    subject = render.vary_anatomy(base, design.anatomy, rng)
    maps = lesions.tissue_maps(subject["flair"], subject["t1"], subject["tissue"], subject["labels"])
    book = LesionBook(subject, maps, rng, list(donors), base.lesion_sites)
    for volume in design.small_old_volumes_mm3:
        book.insert_new(volume, "any", float(rng.uniform(0.2, 0.6)), origin="inserted_old")
    if design.merger:
        book.insert_merger_pair()
    baseline = book.snapshot()
    if not design.rescan:
        if design.below_noise_factor is not None:  # first: it needs one of the few large old lesions
            book.grow(design.below_noise_factor, fate="enlarging_below_noise")
        for factor in design.enlarging_factors:
            book.grow(factor, fate="enlarging")
        if design.merger:
            book.join_merger()
        for volume, site, contrast in zip(design.new_volumes_mm3, design.new_sites, design.new_contrasts):
            book.insert_new(volume, site, contrast, origin="new")
    followup = book.snapshot()
    scale = (1 + design.pbvc_percent / 100) ** (1 / 3)
    contraction = None if design.rescan or design.pbvc_percent == 0 else (
        geometry.contraction_weights(maps.envelope, maps.intracranial, maps.centre_voxel, scale),
        maps.centre_voxel, scale)
    start = dt.date(2022, 1, 1) + dt.timedelta(days=int(rng.integers(0, 700)))
    dates = (start, start + dt.timedelta(days=round(design.years * 365.25)))
    visits = []
    for index, images in enumerate((baseline, followup)):
        anisotropic = design.anisotropic_followup and index == 1
        visits.append(render.render_visit(images, base.affine, rng, design.acquisition,
                                          contraction=contraction if index == 1 else None,
                                          flair_spacing_mm=(1.0, 1.0, 1.2) if anisotropic else (1.0, 1.0, 1.0),
                                          las=design.las, session=f"{index + 1:02d}", date=dates[index]))
    for visit in visits:
        if visit["brain_margin_voxels"] < 2:
            raise RuntimeError(f"check set sub-{design.subject} ses-{visit['session']}: the brain reaches the edge "
                               f"of the field of view; raise grid_pad_voxels")
    return {"visits": visits, "truth": _truth(design, seed, base, subject, book, visits)}


def padded(base: Base, pad_voxels) -> Base:
    """The base with `pad_voxels` of zeros on both sides of each axis; world positions unchanged."""
    if not any(pad_voxels):
        return base
    widths = [(int(n), int(n)) for n in pad_voxels]
    affine = base.affine.copy()
    affine[:3, 3] -= base.affine[:3, :3] @ np.asarray(pad_voxels, dtype=float)
    return dataclasses.replace(base, **{name: np.pad(getattr(base, name), widths)
                                        for name in ("flair", "t1", "labels", "tissue")}, affine=affine)


def _truth(design: SubjectDesign, seed, base: Base, subject: dict, book, visits: list[dict]) -> dict:
    minimum_mm3 = LesionParams().min_new_lesion_volume_mm3
    per_visit = [_measure(visit) for visit in visits]
    lesion_entries, fates, findings = [], {}, []
    for lesion_id, record in sorted(book.records.items()):
        volumes = [measured.get(lesion_id, (0.0, None)) for measured in per_visit]
        lesion_entries.append({"id": lesion_id, **{key: record[key] for key in ("origin", "site")},
                               "visits": {visit["session"]: {"volume_mm3": volume, "centroid_mm": centroid}
                                          for visit, (volume, centroid) in zip(visits, volumes)}})
        if volumes[0][0] == 0 and volumes[1][0] == 0:
            continue
        fate = record.get("fate", "stable")
        if fate == "new" and volumes[1][0] < minimum_mm3:
            fate = "new_below_minimum"
        fates[str(lesion_id)] = fate
        if fate != "stable" or record.get("role") == "merger_neighbour":
            findings.append({"id": lesion_id, "fate": fate, "counts": fate in ("new", "enlarging"),
                             "baseline_volume_mm3": volumes[0][0], "volume_mm3": volumes[1][0],
                             "added_volume_mm3": round(volumes[1][0] - volumes[0][0], 3),
                             **{key: value for key, value in record.items() if key not in ("fate",)}})
    brain_ml = [float(visit["tissue"].sum(dtype=np.float64)) * visit["voxel_mm3"] / 1000 for visit in visits]
    counts = {name: sum(1 for fate in fates.values() if fate == name)
              for name in ("new", "enlarging", "shrinking", "resolved", "stable")}
    counts["not_counted"] = sum(1 for fate in fates.values() if fate in DONT_COUNT)
    years = (visits[1]["date"] - visits[0]["date"]).days / 365.25
    interval = {"from_session": "01", "to_session": "02", "years": round(years, 4),
                "pbvc_percent": round(design.pbvc_percent, 4) if not design.rescan else 0.0,
                "pbvc_rendered_percent": round(100 * (brain_ml[1] - brain_ml[0]) / brain_ml[0], 4),
                "scan_rescan": design.rescan, "counts": counts, "fates": fates, "findings": findings}
    return {
        "generator": "msvol.synth.checkset", "checkset_version": CHECKSET_VERSION, "seed": list(np.atleast_1d(seed)
                                                                                                .tolist()),
        "base": base.provenance, "design": dataclasses.asdict(design),
        "anatomy_variation": subject["variation"],
        "timepoints": [{"session": visit["session"], "date": visit["date"].isoformat(), "brain_volume_ml": round(ml, 4),
                        "lesion_count": len(measured), "lesion_volume_ml": round(sum(v for v, _ in measured.values())
                                                                                  / 1000, 5),
                        "flair_spacing_mm": visit["flair_spacing_mm"], "orientation": visit["orientation"],
                        "flair_shape": list(visit["flair"].shape), "brain_margin_voxels": visit["brain_margin_voxels"],
                        "pose": np.round(visit["pose"], 5).tolist(), "t1_pose": np.round(visit["t1_pose"], 5).tolist()}
                       for visit, ml, measured in zip(visits, brain_ml, per_visit)],
        "lesions": lesion_entries, "intervals": [interval]}


def _measure(visit: dict) -> dict[int, tuple[float, list]]:
    """lesion id -> (volume mm3, centroid world mm) on a visit's FLAIR grid."""
    labels, affine = visit["labels"], visit["flair_affine"]
    ids = np.unique(labels[labels > 0])
    if not len(ids):
        return {}
    counts = ndimage.sum_labels(np.ones(labels.shape, np.float32), labels, ids)
    centres = ndimage.center_of_mass(np.ones(labels.shape, np.float32), labels, ids)
    return {int(i): (round(float(n * visit["voxel_mm3"]), 3),
                     np.round(affine[:3, :3] @ np.array(c) + affine[:3, 3], 2).tolist())
            for i, n, c in zip(ids, counts, centres)}


def write_checkset(root, designs: tuple[SubjectDesign, ...] | None = None, *, seed: int = CHECKSET_SEED,
                   log=lambda message: None) -> list:
    """Write the check set of `seed` as BIDS with truth in derivatives/truth; subjects already written are kept.

    `designs` default to default_designs(seed); lesion donors come from patient seed + 99.

    Returns the subject folders. Each subject takes 1-3 minutes on 2 cores (most of it the base patient).
    """
    from pathlib import Path

    root = Path(root)
    designs = default_designs(seed) if designs is None else designs
    donor_seed = DONOR_SEED - CHECKSET_SEED + seed
    donors = None
    folders = []
    for index, design in enumerate(designs, start=1):
        truth = root / "derivatives" / "truth" / f"sub-{design.subject}" / f"sub-{design.subject}_truth.json"
        if not truth.is_file():
            if donors is None:
                log(f"check set: donor lesion shapes (msvol.synth.patients seed {donor_seed})")
                donors = donors_from_generator(donor_seed)
            log(f"check set: sub-{design.subject} (base seed {design.base_seed})")
            subject = make_subject(base_from_generator(design.base_seed), design, [seed, index], donors)
            render.write_subject(subject, root, design.subject)
        folders.append(root / f"sub-{design.subject}")
    return folders
