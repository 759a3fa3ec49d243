"""Composition root: run every stage for one patient and write its outputs atomically.

Output contract (per subject XX, under OUT/sub-XX/):
  report.json, report.html, intervals.csv
  ses-YY/lesions.nii.gz            integer lesion labels on that session's FLAIR grid
  ses-YY/brain_mask.nii.gz         the brain mask used, same grid
  ses-YY/flair.nii.gz              the bias-corrected FLAIR (uint16, scaled), same grid
  intervals/ses-AA_to_ses-BB/new_lesions.nii.gz, enlarging_lesions.nii.gz, possible_new_lesions.nii.gz
                                   labels on the ses-BB FLAIR grid, values = lesion ids in report.json
  thumbnails/ses-AA_to_ses-BB/lesion-N.png  each new, enlarging and possible new lesion at both visits
  dicom/ses-AA_to_ses-BB_lesions_seg.dcm, dicom/report_summary.dcm, dicom/source/ses-BB/
                                   only for DICOM input: a SEG on the ses-BB FLAIR series, a summary page,
                                   header-only copies of the ses-BB FLAIR series (for the signed SEG and SR)
A reviewed result (final/, review/ inside it) is never deleted: a forced rerun moves it to OUT/previous/.
Everything is written into a hidden temporary folder beside the result and renamed into place
only when complete, so a killed run leaves no half report; an existing result is kept unless
`force` is given.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np

from msvol import run_files
from msvol.config import Params
from msvol.datatypes import (REVIEWED_STATUSES, AtrophyResult, IntervalImages, IntervalResult, LesionMap, Patient,
                             PreparedVisit, QCFlag, Rigid, Visit, Volume)
from msvol.errors import OutputExistsError
from msvol.models import bundle
from msvol.outputs import dicom as dicom_export, dicom_source, html, report
from msvol.stages import atlas, atrophy, lesion_change, lesion_subtraction, lesions, preprocess, register, segment

Progress = Callable[[str], None]
# Hidden folders beside OUT/sub-XX while it is written: f".sub-XX{STAGING}{pid}" (the new result being
# written) and f".sub-XX{RETIRED}{pid}" (the old one during the swap). ops.batch sweeps those of a dead run.
STAGING, RETIRED = ".partial-", ".replaced-"


@dataclasses.dataclass(frozen=True, eq=False)
class Resources:
    """Heavy, reusable handles: load once per process, pass to every patient."""

    segmenter: bundle.Bundle  # per-visit lesion model
    change_model: bundle.Bundle  # two-visit new/enlarging model
    extractor: object
    template: Volume  # MNI T1, brain only
    template_intracranial_ml: float

    @classmethod
    def load(cls, model_dir: Path | None = None, change_model_dir: Path | None = None) -> "Resources":
        """Shipped models unless folders of other bundles are given."""
        maps, affine = atlas.load_mni()
        template = Volume(maps["t1"], affine, "T1w")
        icv_ml = float(maps["intracranial"].sum() * abs(np.linalg.det(affine[:3, :3])) / 1000)
        return cls(bundle.load_bundle(model_dir, "per_visit"), bundle.load_bundle(change_model_dir, "change"),
                   preprocess.load_brain_extractor(), template, icv_ml)


@contextlib.contextmanager
def _timed(timings: dict | None, stage: str):
    """Add the block's wall time to timings[stage] (for `make bench`)."""
    started = time.perf_counter()
    yield
    if timings is not None:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - started


def prepare_visit(visit: Visit, params: Params, resources: Resources) -> PreparedVisit:
    """Reorient, bias-correct, brain-extract, register T1 to FLAIR, resample the T1 once."""
    flair = preprocess.correct_bias(preprocess.reorient(visit.flair), params.preprocess)
    t1 = preprocess.correct_bias(preprocess.reorient(visit.t1), params.preprocess)
    t1_mask = preprocess.extract_brain(t1, params.preprocess, extractor=resources.extractor)
    t1_to_flair = register.fit_rigid(flair, t1, params.register, moving_mask=t1_mask.data)
    grid = (flair.data.shape, flair.affine)
    return PreparedVisit(visit.session, visit.date, flair, t1, t1_mask, t1_to_flair,
                         register.resample(t1, t1_to_flair, *grid), register.resample(t1_mask, t1_to_flair, *grid),
                         visit.acquisition)


def _template_scale(visit: PreparedVisit, params: Params, resources: Resources) -> float:
    """Determinant of the affine template -> subject map (subject head size / template size)."""
    brain = visit.t1.with_data(visit.t1.data * visit.t1_brain_mask.data)
    coarse = dataclasses.replace(params.register, rigid_shrink_factors=params.register.template_shrink_factors,
                                 rigid_smoothing_mm=params.register.template_smoothing_mm)
    pull = register.fit_rigid(resources.template, brain, coarse, moving_mask=visit.t1_brain_mask.data, affine=True)
    return float(abs(np.linalg.det(pull.matrix[:3, :3])))


def analyse_interval(baseline: PreparedVisit, followup: PreparedVisit, baseline_lesions: LesionMap,
                     followup_lesions: LesionMap, params: Params,
                     change_model: bundle.Bundle | None) -> tuple[IntervalResult, IntervalImages]:
    """Register two visits into halfway space, match lesions (fused with the change model), measure PBVC."""
    baseline_to_followup = register.fit_rigid(baseline.flair, followup.flair, params.register,
                                              fixed_mask=baseline.brain_mask.data,
                                              moving_mask=followup.brain_mask.data)
    to_baseline, to_followup = register.halfway(baseline_to_followup)
    grid = (baseline.flair.data.shape, baseline.flair.affine)

    def on_grid(volume: Volume, pull: Rigid) -> Volume:
        return register.resample(volume, pull, *grid)

    pulls = ((baseline, to_baseline), (followup, to_followup))
    flairs = [on_grid(visit.flair, pull) for visit, pull in pulls]
    t1s = [on_grid(visit.t1, visit.t1_to_flair.compose(pull)) for visit, pull in pulls]
    masks = [on_grid(visit.t1_brain_mask, visit.t1_to_flair.compose(pull)) for visit, pull in pulls]
    labels = [on_grid(lesion_map.labels, pull)
              for lesion_map, (_, pull) in zip((baseline_lesions, followup_lesions), pulls)]
    both_brain = masks[0].data & masks[1].data
    correlation = register.alignment_correlation(flairs[0].data, flairs[1].data, both_brain)
    years = (followup.date - baseline.date).days / 365.25
    result = measure_interval_pbvc(baseline, followup, years=years, flair_correlation=correlation, params=params)
    probabilities = [on_grid(lesion_map.probability, pull).data
                     for lesion_map, (_, pull) in zip((baseline_lesions, followup_lesions), pulls)]
    changes = lesions.match_lesions(baseline_lesions, followup_lesions, labels[0].data, labels[1].data,
                                    params.lesions, voxel_mm3=flairs[0].voxel_volume_mm3,
                                    baseline_probability=probabilities[0], followup_probability=probabilities[1])
    change_probability = None
    if change_model is not None and params.lesions.use_change_model:
        change_probability = segment.predict_change((flairs[0].data, flairs[1].data), (t1s[0].data, t1s[1].data),
                                                    both_brain, params.segment, change_model)
    changes = lesion_change.fuse_change(changes, change_probability, followup_lesions, labels[0].data,
                                        labels[1].data, params.lesions, voxel_mm3=flairs[0].voxel_volume_mm3)
    followup_labels = labels[1].data
    if change_probability is not None:
        changes, followup_labels = lesion_change.change_only_findings(
            changes, change_probability, labels[0].data, labels[1].data, both_brain, params.lesions,
            halfway_affine=grid[1], halfway_to_followup=to_followup.matrix, followup_probability=probabilities[1])
    if params.lesions.use_subtraction_candidates:
        changes, followup_labels = lesion_subtraction.subtraction_candidates(
            changes, flairs[0].data, flairs[1].data, labels[0].data, followup_labels, both_brain, params.lesions,
            halfway_affine=grid[1], halfway_to_followup=to_followup.matrix)
    losses = lesion_change.loss_region(changes, labels[0].data) if change_probability is not None else None
    if losses is not None and losses.any():  # the change model read backwards: what was there and is gone
        loss_probability = segment.predict_change((flairs[1].data, flairs[0].data), (t1s[1].data, t1s[0].data),
                                                  both_brain, params.segment, change_model, region=losses)
        changes = lesion_change.confirm_losses(changes, loss_probability, labels[0].data, labels[1].data,
                                               params.lesions, voxel_mm3=flairs[0].voxel_volume_mm3)
    flags = _interval_flags(baseline, followup, result.alignment_correlation, years, params)
    images = IntervalImages(flairs[0].data, flairs[1].data, labels[0].data, followup_labels, grid[1],
                            halfway_to_followup=to_followup.matrix)
    return IntervalResult(baseline.session, followup.session, result, changes, flags), images


PBVC_GRID_MARGIN_MM = 15.0  # around the baseline brain mask: half the head motion between visits and more


def measure_interval_pbvc(baseline: PreparedVisit, followup: PreparedVisit, *, years: float,
                          flair_correlation: float, params: Params) -> AtrophyResult:
    """PBVC from the T1s alone: their own rigid registration and halfway space on the baseline T1 grid
    (cropped to the brain), masks from each visit's T1, so neither the FLAIRs nor their grids enter it
    (issue 12). The result's alignment correlation is the lower of the FLAIR and T1 halfway correlations."""
    baseline_to_followup = register.fit_rigid(baseline.t1, followup.t1, params.register,
                                              fixed_mask=baseline.t1_brain_mask.data,
                                              moving_mask=followup.t1_brain_mask.data)
    grid = register.bounding_grid(baseline.t1_brain_mask, PBVC_GRID_MARGIN_MM)
    pulls = zip((baseline, followup), register.halfway(baseline_to_followup))
    t1s, masks = zip(*[(register.resample(visit.t1, pull, *grid), register.resample(visit.t1_brain_mask, pull, *grid))
                       for visit, pull in pulls])
    t1_correlation = register.alignment_correlation(t1s[0].data, t1s[1].data, masks[0].data & masks[1].data)
    return atrophy.measure_pbvc(t1s[0], t1s[1], masks[0], masks[1], years=years,
                                alignment_correlation=min(flair_correlation, t1_correlation), params=params.atrophy)


def _interval_flags(baseline: PreparedVisit, followup: PreparedVisit, correlation: float, years: float,
                    params: Params) -> tuple[QCFlag, ...]:
    scope = f"ses-{baseline.session}_to_ses-{followup.session}"
    flags = []
    if correlation < params.register.min_alignment_correlation:
        flags.append(QCFlag("poor_alignment", f"Alignment correlation {correlation:.3f} is below "
                            f"{params.register.min_alignment_correlation}: the PBVC and lesion changes of this "
                            f"interval cannot be trusted; check the registration.", scope))
    if years < params.atrophy.min_years_for_annualized:
        flags.append(QCFlag("short_interval", f"Interval of {years:.2f} years: PBVC is not annualised.", scope))
    before, after = baseline.acquisition, followup.acquisition
    changed = [name for name in ("manufacturer", "model", "field_strength_t", "software", "protocol")
               if getattr(before, name) is not None and getattr(after, name) is not None
               and getattr(before, name) != getattr(after, name)]
    if changed:
        flags.append(QCFlag("scanner_change", f"Scanner or protocol changed between visits ({', '.join(changed)}): "
                            f"brain volume change may be biased.", scope))
    for kind in ("flair", "t1"):
        first, second = getattr(baseline, kind), getattr(followup, kind)
        if first.data.shape != second.data.shape or not np.allclose(first.spacing_mm, second.spacing_mm, atol=0.05):
            flags.append(QCFlag("protocol_change", f"{kind.upper()} grid changed between visits "
                                f"({np.round(first.spacing_mm, 2).tolist()} mm, {first.data.shape} -> "
                                f"{np.round(second.spacing_mm, 2).tolist()} mm, {second.data.shape}).", scope))
    return tuple(flags)


def interval_pairs(count: int) -> list[tuple[int, int]]:
    """Each consecutive pair, and baseline to latest when there are three visits or more."""
    pairs = [(index, index + 1) for index in range(count - 1)]
    return pairs + [(0, count - 1)] if count > 2 else pairs


def run_patient(patient: Patient, out_dir: Path, params: Params, resources: Resources, *, force: bool = False,
                progress: Progress = lambda message: None, timings: dict | None = None,
                keep_previous: Path | None = None) -> Path:
    """Analyse one patient and write OUT/sub-XX atomically; returns that folder.

    `timings`, when given, receives the wall seconds spent per stage. Raises OutputExistsError
    when OUT/sub-XX exists and `force` is False. With `force` and `keep_previous`, the replaced
    result is moved to `keep_previous` instead of being deleted.
    """
    final = Path(out_dir) / f"sub-{patient.subject}"
    if final.exists() and not force:
        raise OutputExistsError(f"{final}: a result is already there; use --force to redo it")
    prepared, lesion_maps, measures, methods = [], [], [], [preprocess.METHODS, register.METHODS]
    for visit in patient.visits:
        started = time.time()
        progress(f"sub-{patient.subject} ses-{visit.session}: preprocessing")
        with _timed(timings, "preprocess and within-visit registration"):
            ready = prepare_visit(visit, params, resources)
        progress(f"sub-{patient.subject} ses-{visit.session}: segmenting lesions")
        with _timed(timings, "segment"):
            probability, segment_methods = segment.segment_visit(ready, params.segment, resources.segmenter)
            lesion_map = lesions.label_lesions(probability, visit.session, params.segment, params.lesions)
        with _timed(timings, "cross-sectional volumes"):
            measures.append(atrophy.cross_sectional(
                visit.session, visit.date, ready.t1_on_flair, ready.brain_mask, lesion_map,
                template_to_subject_det=_template_scale(ready, params, resources),
                template_intracranial_ml=resources.template_intracranial_ml))
        prepared.append(ready)
        lesion_maps.append(lesion_map)
        progress(f"sub-{patient.subject} ses-{visit.session}: done in {time.time() - started:.0f} s")
    uses_change_model = resources.change_model is not None and params.lesions.use_change_model
    methods += ([segment_methods, lesions.METHODS] + [lesion_change.METHODS] * uses_change_model
                + [lesion_subtraction.METHODS] * params.lesions.use_subtraction_candidates + [atrophy.METHODS])

    intervals, thumbnails, viewers, finding_maps = [], {}, {}, {}
    for first, second in interval_pairs(len(prepared)):
        progress(f"sub-{patient.subject}: interval ses-{prepared[first].session} -> ses-{prepared[second].session}")
        with _timed(timings, "interval: halfway registration, lesion matching, PBVC"):
            result, images = analyse_interval(prepared[first], prepared[second], lesion_maps[first],
                                              lesion_maps[second], params, resources.change_model)
        intervals.append(result)
        reviewed = [change.id for change in result.changes if change.status in REVIEWED_STATUSES]
        with _timed(timings, "report"):
            thumbnails[(result.from_session, result.to_session)] = html.lesion_thumbnails(images, reviewed)
            viewers[(result.from_session, result.to_session)] = run_files.viewer_images(images, result)
            finding_maps[(result.from_session, result.to_session)] = run_files.finding_maps(
                images, result, lesion_maps[second])

    # per-visit lesion counts read all visits together (lesions.countable_lesions)
    seen_elsewhere = [set() for _ in prepared]
    for (first, second), result in zip(interval_pairs(len(prepared)), intervals):
        confirmed = lesions.confirmed_labels(result.changes)
        seen_elsewhere[first] |= confirmed[0]
        seen_elsewhere[second] |= confirmed[1]
    measures = [dataclasses.replace(measure, lesion_count=lesions.countable_lesions(lesion_map, seen, params.lesions))
                for measure, lesion_map, seen in zip(measures, lesion_maps, seen_elsewhere)]

    subject_flags = list(patient.ingest_flags)
    for visit in prepared:
        note = preprocess.unusual_brain_volume(visit.t1_brain_mask, params.preprocess)
        if note:
            subject_flags.append(QCFlag("unusual_brain_volume", note, f"ses-{visit.session}"))
    if len(prepared) == 1:
        subject_flags.append(QCFlag("single_visit", "Only one visit: cross-sectional measures, no change "
                                    "analysis.", "subject"))
    files = run_files.output_files(patient, prepared, lesion_maps, finding_maps)
    pictures = {(pair, lesion_id): (f"thumbnails/ses-{pair[0]}_to_ses-{pair[1]}/lesion-{lesion_id}.png", picture)
                for pair, by_lesion in thumbnails.items() for lesion_id, picture in by_lesion.items()}
    interval_files = {key: {name: path for name, (path, _) in value.items()} for key, value in files.items()
                      if isinstance(key, tuple)}
    for (pair, lesion_id), (path, _) in pictures.items():
        interval_files[pair].setdefault("thumbnails", {})[str(lesion_id)] = path
    for pair, (volumes, _) in viewers.items():
        folder = f"intervals/ses-{pair[0]}_to_ses-{pair[1]}/viewer"
        files[pair].update({f"viewer_{name}": (f"{folder}/{name}.nii.gz", volume) for name, volume in volumes.items()})
        interval_files[pair]["viewer"] = {name: f"{folder}/{name}.nii.gz" for name in volumes} | {
            "space": f"{folder}/space.json"}
    model = report.build_report(
        patient.subject, measures, intervals, params=params, methods=methods, qc_flags=subject_flags,
        lesion_files={v.session: files[v.session]["lesions"][0] for v in prepared},
        flair_files={v.session: files[v.session]["flair"][0] for v in prepared},
        interval_files=interval_files, acquisitions={visit.session: visit.acquisition for visit in patient.visits},
        provenance=_provenance(patient, resources))
    with _timed(timings, "report"):
        texts = {"report.json": report.render_json(model), "report.html": html.render_html(model, thumbnails),
                 "intervals.csv": report.render_csv(model)}
        blobs = {path: base64.b64decode(picture) for path, picture in pictures.values()}
        blobs.update({f"intervals/ses-{pair[0]}_to_ses-{pair[1]}/viewer/space.json": space
                      for pair, (_, space) in viewers.items()})
        _write_atomically(final, texts, files, force=force, writers=_dicom_writers(patient, model, files),
                          keep_previous=keep_previous, blobs=blobs)
    return final


def _provenance(patient: Patient, resources: Resources) -> dict:
    """Model names and versions, and a SHA-256 of each input image as read (voxels and affine), so an
    analysis run can be told apart from one on other inputs whatever the file format was."""
    def digest(volume: Volume) -> str:
        return hashlib.sha256(np.ascontiguousarray(volume.data).tobytes() + volume.affine.tobytes()).hexdigest()

    models = {role: {"name": model.name, "version": model.metadata.get("version")}
              for role, model in (("per_visit", resources.segmenter), ("change", resources.change_model))
              if model is not None}
    return {"models": models,
            "inputs": {visit.session: {"flair_sha256": digest(visit.flair), "t1_sha256": digest(visit.t1)}
                       for visit in patient.visits}}


def _dicom_writers(patient: Patient, model: dict, files: dict) -> dict[str, Callable[[Path], Path]]:
    """For visits read from DICOM: a SEG per interval on the follow-up FLAIR series, header-only copies of
    that series under dicom/source/ses-YY/ (what sign-off builds the confirmed SEG and SR from once the PACS
    export is gone), and a summary page on the latest FLAIR series, as relative path -> writer(target path).
    Pseudonymised unless the subject id is the PatientID."""
    series = {visit.session: visit.flair_series for visit in patient.visits if visit.flair_series is not None}
    pseudonym = patient.subject if patient.pseudonymous else None

    def source(session: str) -> dicom_export.SourceSeries:
        return dicom_export.SourceSeries(series[session].files, series[session].frame_numbers)

    writers = {}
    for key, group in files.items():
        if isinstance(key, tuple) and key[1] in series:
            writers[f"dicom/ses-{key[0]}_to_ses-{key[1]}_lesions_seg.dcm"] = functools.partial(
                dicom_export.write_segmentation, source=source(key[1]), lesions=files[key[1]]["lesions"][1].data,
                new=group["new_lesions"][1].data, enlarging=group["enlarging_lesions"][1].data, pseudonym=pseudonym)
            # once per follow-up session, however many intervals end there
            writers[f"dicom/source/ses-{key[1]}"] = functools.partial(
                dicom_source.write_source_headers, source=source(key[1]), pseudonym=pseudonym)
    latest = patient.visits[-1].session
    if latest in series:
        writers["dicom/report_summary.dcm"] = functools.partial(dicom_export.write_summary, report=model,
                                                                source=source(latest), pseudonym=pseudonym)
    return writers


def _write_atomically(final: Path, texts: dict[str, str], files: dict, *, force: bool,
                      writers: dict[str, Callable[[Path], Path]] | None = None,
                      keep_previous: Path | None = None, blobs: dict[str, bytes] | None = None) -> None:
    """Write everything (texts, binary blobs, volumes, then each writer(staging / its relative path)) into
    a hidden staging folder, then rename it to `final` in one step."""
    staging = final.with_name(f".{final.name}{STAGING}{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _write_files(staging, texts, files)
        for relative, blob in (blobs or {}).items():
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            (staging / relative).write_bytes(blob)
        for relative, write in (writers or {}).items():
            write(staging / relative)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if final.exists():
        if not force:
            shutil.rmtree(staging)
            raise OutputExistsError(f"{final}: a result appeared while this run worked; use --force to redo it")
        if keep_previous is None and any((final / name).exists() for name in ("final", "review")):
            # a reviewer's decisions and signed reports are never deleted, --force or not
            keep_previous = final.parent / "previous" / f"{final.name}-{time.strftime('%Y%m%dT%H%M%S')}"
        retired = final.with_name(f".{final.name}{RETIRED}{os.getpid()}")
        final.rename(retired)
        staging.rename(final)
        if keep_previous is None:
            shutil.rmtree(retired)
        else:
            keep_previous.parent.mkdir(parents=True, exist_ok=True)
            retired.rename(keep_previous)
    else:
        staging.rename(final)


def _write_files(staging: Path, texts: dict[str, str], files: dict) -> None:
    import nibabel as nib

    for name, text in texts.items():
        (staging / name).write_text(text)
    for group in files.values():
        for relative, volume in group.values():
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if volume.data.dtype == np.uint8:  # already compact (the viewers' images)
                image = nib.Nifti1Image(volume.data, volume.affine)
            elif volume.kind in ("FLAIR", "T1w"):  # an image: 16 bits with a scale factor are ample (1/65535)
                image = nib.Nifti1Image(volume.data.astype(np.float32), volume.affine)
                image.set_data_dtype(np.uint16)
            else:
                image = nib.Nifti1Image(volume.data.astype(np.uint8 if volume.data.dtype == bool else np.int32),
                                        volume.affine)
            image.to_filename(target)
