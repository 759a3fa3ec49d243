"""Synthetic MS patients with known truth: the ground truth for tests, benchmarks and training.

Anatomy comes from the MNI ICBM152 2009a T1 and GM/WM maps shipped in nilearn's wheel.
Each patient gets its own anatomy (random affine + smooth deformation of the template),
a whole head (CSF rim, skull with marrow, scalp) built around the skull-stripped template,
MS-like lesions (periventricular, deep and juxtacortical white matter; unions of perturbed
ellipsoids), and follow-up visits with known new, enlarging, shrinking and resolved lesions,
a known global atrophy and acquisition differences (head position, bias field, noise, gain).

Coordinate chain for one visit (each image is sampled once, straight from the template):
scanner voxel -> scanner mm -> subject mm (undo head pose) -> pre-atrophy subject mm
(atrophy: a smooth displacement that shrinks tissue and widens ventricles and sulci)
-> template voxel (patient affine + smooth deformation).

Truth: the true PBVC is the change of the summed GM+WM fractions actually rendered on the
scanner grids; a lesion's fate follows from its scale at the two visits (each enlargement multiplies the
volume by ~2.3, each shrinkage by ~0.47: never near a threshold).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from msvol.config import LesionParams
from msvol.synth.anatomy import (GRID_SHAPE, Anatomy, apply_affine, atrophy_field, grid_points, make_anatomy,
                                 random_rigid, rotation_matrix, sample, scanner_affine, smooth_field)

GENERATOR_VERSION = "1"
SITES = ("periventricular", "deep_white_matter", "juxtacortical", "infratentorial")
TISSUES = ("csf", "gm", "wm", "skull", "marrow", "scalp")  # fraction maps for training, then "lesion"


@dataclass(frozen=True)
class SynthSettings:
    """What the generator draws from; defaults make a typical relapsing-remitting follow-up."""

    n_visits: int = 3
    years_between_visits: tuple[float, float] = (0.8, 1.3)
    n_baseline_lesions: tuple[int, int] = (12, 20)
    n_new_per_interval: tuple[int, int] = (2, 4)
    n_enlarging_per_interval: tuple[int, int] = (1, 2)
    n_shrinking_per_interval: tuple[int, int] = (0, 1)
    n_resolved_per_interval: tuple[int, int] = (0, 1)
    lesion_volume_mm3: tuple[float, float] = (10.0, 3000.0)
    new_lesion_volume_mm3: tuple[float, float] = (20.0, 400.0)
    annual_pbvc_percent: tuple[float, float] = (-1.2, -0.3)
    noise_fraction: tuple[float, float] = (0.012, 0.025)  # of the WM intensity
    bias_amplitude: tuple[float, float] = (0.05, 0.2)
    gain: tuple[float, float] = (0.8, 1.25)
    max_rotation_deg: float = 4.0
    max_translation_mm: float = 5.0
    contrast_jitter: float = 0.08  # relative, per tissue and patient
    contrast: str = "standard"  # tissue intensity preset (anatomy.CONTRASTS); "shifted" is for robustness tests
    site_weights: tuple[float, ...] = (0.45, 0.35, 0.2, 0.0)  # probability of each of SITES
    confluent_fraction: float = 0.0  # share of lesions placed touching an existing one (training data)
    intensity_scale: float = 1000.0  # stored integer value of intensity 1.0 (sample_data uses less: smaller files)


# ----------------------------------------------------------------------------- lesions

@dataclass(frozen=True)
class _LesionShape:
    id: int
    site: str
    centre_mm: np.ndarray
    blobs: tuple  # (offset_mm (3,), semi_axes_mm (3,), rotation (3,3))
    radius_mm: float  # bounding radius at scale 1


def _lesion_shape(rng, lesion_id, site, centre_mm, volume_mm3) -> _LesionShape:
    radius = (3 * volume_mm3 / (4 * np.pi)) ** (1 / 3)
    blobs = []
    for index in range(rng.integers(1, 4)):
        axes = radius * rng.uniform(0.6, 1.4, 3)
        if site == "periventricular":
            axes[2] *= 1.4  # ovoid, perpendicular-ish to the ventricles (Dawson's fingers)
        offset = np.zeros(3) if index == 0 else rng.normal(0, 0.5 * radius, 3)
        blobs.append((offset, axes, rotation_matrix(rng.uniform(-90, 90, 3))))
    bound = max(np.linalg.norm(o) + a.max() for o, a, _ in blobs)
    return _LesionShape(lesion_id, site, centre_mm, tuple(blobs), float(bound))


def _render_lesion(shape: _LesionShape, scale: float, points: np.ndarray, rng_noise: np.ndarray) -> np.ndarray:
    """Boolean mask of the lesion at `scale` over subject-mm `points` (3, n)."""
    inside = np.zeros(points.shape[1], dtype=bool)
    for offset, axes, rotation in shape.blobs:
        local = rotation.T @ (points - (shape.centre_mm + scale * offset)[:, None])
        level = (((local / (scale * axes)[:, None]) ** 2).sum(axis=0))
        inside |= level + 0.35 * rng_noise < 1.0
    return inside


def _candidate_centres(anatomy: Anatomy, affine: np.ndarray) -> dict[str, np.ndarray]:
    """Subject-space voxel indices suitable for each lesion site."""
    points = grid_points(GRID_SHAPE, affine)
    template_vox = anatomy.to_template_voxels(points)
    wm = sample(anatomy.images["wm"], template_vox)
    gm = sample(anatomy.images["gm"], template_vox)
    csf = sample(anatomy.images["csf"], template_vox)
    intracranial = sample(anatomy.images["intracranial"], template_vox) > 0.5
    depth = ndimage.distance_transform_edt(intracranial)
    ventricles = (csf > 0.5) & (depth > 18)
    to_ventricle = ndimage.distance_transform_edt(~ventricles)
    to_gm = ndimage.distance_transform_edt(gm < 0.5)
    white = wm > 0.9
    mni_z = apply_affine(anatomy.template_affine, template_vox)[2]
    return {
        "periventricular": np.argwhere(white & (to_ventricle > 1.5) & (to_ventricle <= 5)),
        "deep_white_matter": np.argwhere(white & (to_gm >= 6) & (to_ventricle > 8)),
        "juxtacortical": np.argwhere(white & (to_gm >= 1.5) & (to_gm <= 3)),
        "infratentorial": np.argwhere(white & (mni_z < -25)),  # brainstem and cerebellar white matter
    }, wm


@dataclass(frozen=True)
class _Plan:
    shapes: tuple[_LesionShape, ...]
    scales: np.ndarray  # (n_lesions, n_visits); 0 = absent
    annual_pbvc_percent: float
    dates: tuple[dt.date, ...]


def _plan(rng, settings: SynthSettings, candidates: dict, affine: np.ndarray) -> _Plan:
    n_visits = settings.n_visits
    shapes, scales = [], []

    def place(volume, visit_appears):
        for _attempt in range(200):
            site = rng.choice(SITES, p=settings.site_weights)
            pool = candidates[site]
            centre = affine[:3, :3] @ pool[rng.integers(len(pool))] + affine[:3, 3]
            shape = _lesion_shape(rng, len(shapes) + 1, site, centre, volume)
            anchor = None
            if settings.confluent_fraction and shapes and rng.uniform() < settings.confluent_fraction:
                # Confluent lesion: centred on an existing lesion's edge, so the two touch.
                anchor = shapes[rng.integers(len(shapes))]
                direction = rng.normal(size=3)
                centre = anchor.centre_mm + 0.8 * anchor.radius_mm * direction / np.linalg.norm(direction)
                shape = dataclasses.replace(shape, centre_mm=centre)
            # Keep every other pair apart even when both have grown, so lesions never touch by chance.
            if all(np.linalg.norm(centre - other.centre_mm) > 1.45 * (shape.radius_mm + other.radius_mm) + 4
                   for other in shapes if other is not anchor):
                shapes.append(shape)
                row = np.zeros(n_visits)
                row[visit_appears:] = 1.0
                scales.append(row)
                return
        raise RuntimeError("could not place a lesion; lower the lesion count")

    low, high = np.log(settings.lesion_volume_mm3)
    for _ in range(rng.integers(settings.n_baseline_lesions[0], settings.n_baseline_lesions[1] + 1)):
        place(float(np.exp(rng.uniform(low, high))), 0)
    low, high = np.log(settings.new_lesion_volume_mm3)
    for visit in range(1, n_visits):
        present = [i for i in range(len(shapes)) if scales[i][visit - 1] > 0]
        rng.shuffle(present)
        picks = {name: rng.integers(lo, hi + 1) for name, (lo, hi) in {
            "enlarging": settings.n_enlarging_per_interval, "shrinking": settings.n_shrinking_per_interval,
            "resolved": settings.n_resolved_per_interval}.items()}
        small = [i for i in present if shapes[i].radius_mm < 5]
        for i in small[: picks["resolved"]]:
            scales[i][visit:] = 0
        rest = [i for i in present if scales[i][visit] > 0]
        for i in rest[: picks["enlarging"]]:
            scales[i][visit:] *= 1.32  # volume x ~2.3
        for i in rest[picks["enlarging"]: picks["enlarging"] + picks["shrinking"]]:
            scales[i][visit:] *= 0.78  # volume x ~0.47
        for _ in range(rng.integers(settings.n_new_per_interval[0], settings.n_new_per_interval[1] + 1)):
            place(float(np.exp(rng.uniform(low, high))), visit)
    start = dt.date(2020, 1, 1) + dt.timedelta(days=int(rng.integers(0, 1500)))
    dates = [start]
    for _ in range(1, n_visits):
        dates.append(dates[-1] + dt.timedelta(days=int(365.25 * rng.uniform(*settings.years_between_visits))))
    return _Plan(tuple(shapes), np.array(scales), float(rng.uniform(*settings.annual_pbvc_percent)), tuple(dates))


def _render_lesion_labels(plan: _Plan, visit: int, wm: np.ndarray, affine: np.ndarray, seed: int) -> np.ndarray:
    """Subject-space lesion labels at one visit (label = lesion id), confined to white matter."""
    labels = np.zeros(GRID_SHAPE, dtype=np.int32)
    inverse = np.linalg.inv(affine)
    for shape, scale in zip(plan.shapes, plan.scales[:, visit]):
        if scale <= 0:
            continue
        reach = 1.5 * shape.radius_mm * scale + 2
        low = np.floor(inverse[:3, :3] @ (shape.centre_mm - reach) + inverse[:3, 3]).astype(int)
        high = np.ceil(inverse[:3, :3] @ (shape.centre_mm + reach) + inverse[:3, 3]).astype(int) + 1
        low, high = np.maximum(low, 0), np.minimum(high, GRID_SHAPE)
        box = tuple(slice(a, b) for a, b in zip(low, high))
        idx = np.indices(high - low).reshape(3, -1) + low[:, None]
        points = affine[:3, :3] @ idx + affine[:3, 3:4]
        # The same irregularity field at every visit (seeded by lesion), so growth keeps the shape.
        noise = smooth_field(np.random.default_rng([seed, shape.id]), tuple(high - low), 1.5).reshape(-1)
        inside = _render_lesion(shape, scale, points, noise).reshape(high - low)
        region = labels[box]
        region[inside & (wm[box] > 0.35)] = shape.id
    return labels


# ----------------------------------------------------------------------------- one visit

def _visit_points(anatomy, plan, visit, motion) -> tuple[np.ndarray, np.ndarray]:
    """Template voxel and subject voxel coordinates of every scanner voxel at `visit` under head `motion`."""
    affine = scanner_affine()
    years = (plan.dates[visit] - plan.dates[0]).days / 365.25
    loss_percent = -plan.annual_pbvc_percent * years  # intended tissue loss since baseline, %
    subject_vox = np.linalg.inv(affine)
    points = apply_affine(np.linalg.inv(motion), grid_points(GRID_SHAPE, affine))
    # Atrophy pre-image: tissue shrinks and CSF grows (the displacement field's divergence is
    # negative in tissue, positive in CSF), so ventricles and sulci widen as in real atrophy.
    displacement = np.stack([sample(component, apply_affine(subject_vox, points))
                             for component in anatomy.atrophy_field])
    points = points - loss_percent * displacement
    return anatomy.to_template_voxels(points), apply_affine(subject_vox, points)


def _render_visit(anatomy, plan, visit, lesion_labels, pose, rng, settings, t1_motion):
    """FLAIR, T1, truth lesion labels and tissue fraction on the scanner grid."""
    outputs = {}
    for name, extra in (("flair", np.eye(4)), ("t1", t1_motion)):
        template_vox, subject_idx = _visit_points(anatomy, plan, visit, pose @ extra)
        lesion = sample((lesion_labels > 0).astype(np.float32), subject_idx)
        image = sample(anatomy.images[name], template_vox)
        image = image * (1 - lesion) + anatomy.images[f"{name}_lesion"] * lesion
        if name == "flair":
            outputs["tissue"] = sample(anatomy.images["tissue"], template_vox)
            outputs["labels"] = np.where(lesion >= 0.5, sample(lesion_labels, subject_idx, order=0), 0)
            outputs["brain"] = outputs["tissue"] >= 0.5
        outputs[name] = _acquire(image, rng, settings)
    return outputs


def _acquire(image: np.ndarray, rng, settings: SynthSettings) -> np.ndarray:
    """Bias field, gain and Rician noise; int16 as a scanner would store it."""
    shape = image.shape
    coarse = rng.standard_normal((4, 4, 4))
    bias = ndimage.zoom(coarse, [s / 4 for s in shape], order=3)
    bias = np.exp(rng.uniform(*settings.bias_amplitude) * bias / (np.abs(bias).max() + 1e-8))
    signal = image * bias * rng.uniform(*settings.gain)
    sigma = rng.uniform(*settings.noise_fraction) * 0.6
    noisy = np.hypot(signal + rng.normal(0, sigma, shape).astype(np.float32),
                     rng.normal(0, sigma, shape).astype(np.float32))
    return np.clip(np.rint(noisy * settings.intensity_scale), 0, 32767).astype(np.int16)


# ----------------------------------------------------------------------------- public API

def _anatomy_and_plan(rng, settings: SynthSettings):
    anatomy = make_anatomy(rng, settings.contrast_jitter, settings.contrast)
    affine = scanner_affine()
    candidates, wm_subject = _candidate_centres(anatomy, affine)
    intracranial = sample(anatomy.images["intracranial"],
                          anatomy.to_template_voxels(grid_points(GRID_SHAPE, affine))) > 0.5
    anatomy = dataclasses.replace(anatomy, atrophy_field=atrophy_field(anatomy, affine, intracranial))
    return anatomy, _plan(rng, settings, candidates, affine), wm_subject


def generate_label_maps(seed: int, settings: SynthSettings) -> dict:
    """Tissue fraction maps of one patient's visits for domain-randomised training (no images).

    Every visit is rendered on the same subject grid without head motion, so two visits are
    already aligned (training adds its own misregistration). Returns `visits`, each with
    `fractions` (uint8, 0-255 = 0-1; channels TISSUES then lesion, summing to <= 1), `labels`
    (lesion ids) and `brain` (tissue fraction >= 0.5); and `fates` {(a, b): {lesion id: fate}}
    for each pair of visits a < b.
    """
    rng = np.random.default_rng(seed)
    anatomy, plan, wm_subject = _anatomy_and_plan(rng, settings)
    visits = []
    for visit in range(settings.n_visits):
        lesion_labels = _render_lesion_labels(plan, visit, wm_subject, scanner_affine(), seed)
        template_vox, subject_idx = _visit_points(anatomy, plan, visit, np.eye(4))
        lesion = sample((lesion_labels > 0).astype(np.float32), subject_idx)
        fractions = [sample(anatomy.images[tissue], template_vox) * (1 - lesion) for tissue in TISSUES]
        tissue = sample(anatomy.images["tissue"], template_vox)
        visits.append({
            "fractions": np.rint(np.clip(np.stack(fractions + [lesion]), 0, 1) * 255).astype(np.uint8),
            "labels": np.where(lesion >= 0.5, sample(lesion_labels, subject_idx, order=0), 0).astype(np.int16),
            "brain": tissue >= 0.5})
    fates = {(a, b): {shape.id: _fate(before, after) for shape, before, after
                      in zip(plan.shapes, plan.scales[:, a], plan.scales[:, b]) if before > 0 or after > 0}
             for a in range(settings.n_visits) for b in range(a + 1, settings.n_visits)}
    return {"visits": visits, "fates": fates}


def _fate(before_scale: float, after_scale: float) -> str:
    """A lesion's fate between two visits from its scales (volume goes with scale cubed)."""
    if before_scale == 0:
        return "new"
    if after_scale == 0:
        return "resolved"
    ratio = (after_scale / before_scale) ** 3
    return "enlarging" if ratio > 1.5 else "shrinking" if ratio < 1 / 1.5 else "stable"


def generate_patient(seed: int, settings: SynthSettings = SynthSettings()) -> dict:
    """Render one synthetic patient in memory.

    Returns a dict with `visits` (list of dicts: flair, t1, labels, brain, tissue arrays on the
    scanner grid, flair/t1 affines, date) and `truth` (JSON-ready: lesions, intervals, PBVC).
    Deterministic for a given seed and settings.
    """
    rng = np.random.default_rng(seed)
    anatomy, plan, wm_subject = _anatomy_and_plan(rng, settings)
    affine = scanner_affine()
    visits = []
    head_centre = np.zeros(3)
    for visit in range(settings.n_visits):
        pose = random_rigid(rng, settings.max_rotation_deg, settings.max_translation_mm, head_centre)
        t1_motion = random_rigid(rng, 1.0, 1.0, head_centre)
        lesion_labels = _render_lesion_labels(plan, visit, wm_subject, affine, seed)
        rendered = _render_visit(anatomy, plan, visit, lesion_labels, pose, rng, settings, t1_motion)
        flip = np.diag([-1.0, 1, 1, 1])  # store the T1 left-right flipped (LAS), as many converters do
        flip[0, 3] = GRID_SHAPE[0] - 1
        rendered["t1"] = rendered["t1"][::-1].copy()
        visits.append({**rendered, "flair_affine": affine, "t1_affine": affine @ flip, "date": plan.dates[visit],
                       "session": f"{visit + 1:02d}"})
    return {"visits": visits, "truth": _truth(seed, settings, plan, visits)}


def _truth(seed, settings, plan, visits) -> dict:
    voxel_mm3 = 1.0
    minimum_mm3 = LesionParams().min_new_lesion_volume_mm3
    lesions = []
    for shape, scales in zip(plan.shapes, plan.scales):
        per_visit = {}
        for visit, scale in zip(visits, scales):
            mask = visit["labels"] == shape.id
            volume = float(mask.sum() * voxel_mm3)
            centroid = (visit["flair_affine"][:3, :3] @ np.argwhere(mask).mean(axis=0) + visit["flair_affine"][:3, 3]
                        ).round(2).tolist() if mask.any() else None
            per_visit[visit["session"]] = {"scale": round(float(scale), 4), "volume_mm3": volume,
                                          "centroid_mm": centroid}
        lesions.append({"id": shape.id, "site": shape.site, "visits": per_visit})
    brain_ml = [float(visit["tissue"].sum() * voxel_mm3 / 1000) for visit in visits]
    pairs = [(a, a + 1) for a in range(len(visits) - 1)]
    if len(visits) > 2:
        pairs.append((0, len(visits) - 1))
    intervals = []
    for a, b in pairs:
        fates = {}
        for lesion, scales in zip(lesions, plan.scales):
            if scales[a] == 0 and scales[b] == 0:
                continue
            fates[lesion["id"]] = _fate(scales[a], scales[b])
            # A new lesion smaller than the consensus minimum (~3 mm across) is not a new lesion by
            # definition; it stays in the label maps but is not counted (see LesionParams).
            if fates[lesion["id"]] == "new" and lesion["visits"][visits[b]["session"]]["volume_mm3"] < minimum_mm3:
                fates[lesion["id"]] = "new_below_minimum"
        counts = {name: sum(1 for f in fates.values() if f == name)
                  for name in ("new", "enlarging", "shrinking", "resolved", "stable")}
        years = (plan.dates[b] - plan.dates[a]).days / 365.25
        pbvc = 100 * (brain_ml[b] - brain_ml[a]) / brain_ml[a]
        intervals.append({"from_session": visits[a]["session"], "to_session": visits[b]["session"],
                          "years": round(years, 4), "pbvc_percent": round(pbvc, 4),
                          "pbvc_annualized_percent": round(pbvc / years, 4), "counts": counts,
                          "fates": {str(k): v for k, v in fates.items()}})
    return {"generator_version": GENERATOR_VERSION, "seed": seed, "settings": dataclasses.asdict(settings),
            "annual_pbvc_percent_drawn": plan.annual_pbvc_percent,
            "timepoints": [{"session": v["session"], "date": v["date"].isoformat(), "brain_volume_ml": ml,
                            "lesion_count": int(len(np.unique(v["labels"])) - 1),
                            "lesion_volume_ml": float((v["labels"] > 0).sum() * voxel_mm3 / 1000)}
                           for v, ml in zip(visits, brain_ml)],
            "lesions": lesions, "intervals": intervals}


def write_patient(patient: dict, root: Path, subject: str) -> Path:
    """Write one generated patient as BIDS (sub-XX/ses-YY/anat) with truth in derivatives/.

    Every file is written under a temporary name and renamed when complete.
    """
    import nibabel as nib

    root = Path(root)
    subject_dir = root / f"sub-{subject}"
    truth_dir = root / "derivatives" / "truth" / f"sub-{subject}"
    write_text_atomically(root / "dataset_description.json", json.dumps(
        {"Name": "msvol synthetic MS cohort", "BIDSVersion": "1.9.0", "DatasetType": "raw",
         "GeneratedBy": [{"Name": "msvol synth", "Version": GENERATOR_VERSION}]}, indent=2))
    rows = ["session_id\tacq_time"]
    for visit in patient["visits"]:
        session = visit["session"]
        anat = subject_dir / f"ses-{session}" / "anat"
        stem = f"sub-{subject}_ses-{session}"
        for suffix, key in (("FLAIR", "flair"), ("T1w", "t1")):
            data = visit[key]
            if data.max() <= 255:  # low intensity scales fit in bytes: a third smaller files (sample_data)
                data = data.astype(np.uint8)
            image = nib.Nifti1Image(data, visit[f"{key}_affine"])
            image.header.set_xyzt_units("mm", "sec")
            write_nifti_atomically(image, anat / f"{stem}_{suffix}.nii.gz")
            write_text_atomically(anat / f"{stem}_{suffix}.json", json.dumps(
                {"Manufacturer": "msvol-synth", "ManufacturersModelName": "virtual", "MagneticFieldStrength": 3,
                 "SoftwareVersions": GENERATOR_VERSION, "MRAcquisitionType": "3D"}, indent=2))
        labels = nib.Nifti1Image(visit["labels"].astype(np.int16), visit["flair_affine"])
        write_nifti_atomically(labels, truth_dir / f"{stem}_lesions.nii.gz")
        brain = nib.Nifti1Image(visit["brain"].astype(np.uint8), visit["flair_affine"])
        write_nifti_atomically(brain, truth_dir / f"{stem}_brainmask.nii.gz")
        rows.append(f"ses-{session}\t{visit['date'].isoformat()}T09:00:00")
    write_text_atomically(subject_dir / f"sub-{subject}_sessions.tsv", "\n".join(rows) + "\n")
    write_text_atomically(truth_dir / f"sub-{subject}_truth.json", json.dumps(patient["truth"], indent=1))
    return subject_dir


def write_nifti_atomically(image, path: Path) -> None:
    """Write a NIfTI image to `path` through a temporary file beside it (synth's writers share it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial.nii.gz")
    image.to_filename(temporary)
    temporary.replace(path)


def write_text_atomically(path: Path, text: str) -> None:
    """Write text to `path` through a temporary file beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_text(text)
    temporary.replace(path)
