"""Results -> report model (a JSON-ready dict) -> JSON and CSV text. HTML lives in html.py.

The report model is the output contract other tools depend on (schema_version below):
`subject`, `timepoints` (session, date, volumes, acquisition: scanner and FLAIR series), `intervals` (from_session, to_session,
years, pbvc_percent, pbvc_annualized_percent, counts, lesions, qc_flags), `qc_flags`,
the effective parameters and their hash, and a methods paragraph with references.
Every new, enlarging or possible new lesion carries `review: {"decision": "pending"}` for the radiologist and
every lesion a `confidence` (0-1, msvol.stages.lesion_change.fuse_change; null when no model gave one).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json

from msvol import __version__
from msvol.config import Params, field_sources
from msvol.datatypes import REVIEWED_STATUSES, Acquisition, IntervalResult, QCFlag, TimepointMeasures

# 1.1: lesions carry "confidence"; 1.2: timepoints carry "acquisition"; 1.3: timepoint files name the
# bias-corrected FLAIR ("flair"), interval files the lesion thumbnails ("thumbnails": id -> PNG), and
# "provenance" the model versions and input image hashes; 1.4: lesions may be "possible_new" (a candidate below
# the reporting operating point, for the reader; counts["possible_new"], never in the other counts); 1.5: a
# possible_new lesion may have no followup_labels (seen by the change model only), and interval files name
# "possible_new_lesions", the label map of every possible new lesion; 1.6: lesions carry "change_only_volume_mm3",
# the part of followup_volume_mm3 only the change model sees (an enlargement the per-visit mask missed); 1.7: lesions
# carry "subtraction_only", a possible new lesion only the FLAIR subtraction image shows (confidence null)
SCHEMA_VERSION = "1.7"
STATUS = "automated result, awaiting radiologist confirmation"
DISCLAIMER = ("msvol is research software, not a medical device. Its lesion models were trained on synthetic "
              "data only. Every finding must be confirmed or corrected by a radiologist.")
REFERENCES = {
    "tustison2010": "Tustison NJ et al. N4ITK: improved N3 bias correction. IEEE Trans Med Imaging 2010;29:1310-20.",
    "fisch2024": "Fisch L et al. deepbet: fast brain extraction of T1-weighted MRI using CNNs. "
                 "Comput Biol Med 2024.",
    "mattes2003": "Mattes D et al. PET-CT image registration in the chest using free-form deformations. "
                  "IEEE Trans Med Imaging 2003;22:120-8.",
    "reuter2010": "Reuter M et al. Highly accurate inverse consistent registration: a robust approach. "
                  "NeuroImage 2010;53:1181-96.",
    "freeborough1997": "Freeborough PA, Fox NC. The boundary shift integral: an accurate and robust measure of "
                       "cerebral volume changes from registered repeat MRI. IEEE Trans Med Imaging 1997;16:623-9.",
    "leung2010": "Leung KK et al. Robust atrophy rate measurement in Alzheimer's disease using multi-site "
                 "serial MRI: tissue-specific intensity normalization and parameter selection. "
                 "NeuroImage 2010;50:516-23.",
    "moraal2009": "Moraal B et al. Subtraction MR images in a multiple sclerosis multicenter clinical trial setting. "
                  "Radiology 2009;250:506-14.",
    "buckner2004": "Buckner RL et al. A unified approach for morphometric and functional data analysis in young, "
                   "old, and demented adults using automated atlas-based head size normalization. "
                   "NeuroImage 2004;23:724-38.",
    "destefano2016": "De Stefano N et al. Establishing pathological cut-offs of brain atrophy rates in multiple "
                     "sclerosis. J Neurol Neurosurg Psychiatry 2016;87:93-9.",
    "billot2023": "Billot B et al. SynthSeg: segmentation of brain MRI scans of any contrast and resolution "
                  "without retraining. Medical Image Analysis 2023;86:102789.",
    "monai": "Cardoso MJ et al. MONAI: an open-source framework for deep learning in healthcare. arXiv:2211.02701.",
    "ronneberger2015": "Ronneberger O et al. U-Net: convolutional networks for biomedical image segmentation. "
                       "MICCAI 2015.",
    "wattjes2021": "Wattjes MP et al. 2021 MAGNIMS-CMSC-NAIMS consensus recommendations on the use of MRI in "
                   "patients with multiple sclerosis. Lancet Neurol 2021;20:653-70.",
}
INTERVAL_CSV_COLUMNS = ("subject", "from_session", "to_session", "years", "pbvc_percent", "pbvc_annualized_percent",
                        "alignment_correlation", "new", "enlarging", "shrinking", "resolved", "stable",
                        "possible_new", "qc_flags")


def build_report(subject: str, timepoints: list[TimepointMeasures], intervals: list[IntervalResult],
                 *, params: Params, methods: list[str], qc_flags: list[QCFlag],
                 lesion_files: dict[str, str], interval_files: dict[tuple[str, str], dict],
                 acquisitions: dict[str, Acquisition] | None = None, flair_files: dict[str, str] | None = None,
                 provenance: dict | None = None) -> dict:
    """Assemble the report model.

    Parameters
    ----------
    subject : pseudonymous subject id (no 'sub-' prefix).
    timepoints, intervals : stage results, in date order.
    params : the effective parameters (written with their hash and sources).
    methods : one sentence per stage, in pipeline order; citation keys in [brackets].
    qc_flags : subject- and visit-level flags.
    lesion_files : session -> relative path of its lesions.nii.gz.
    interval_files : (from, to) -> {"new_lesions": path, "enlarging_lesions": path,
        "thumbnails": {lesion id (str): path of its PNG}}.
    flair_files : session -> relative path of its bias-corrected FLAIR (flair.nii.gz).
    provenance : {"models": role -> {"name", "version"}, "inputs": session -> {"flair_sha256", "t1_sha256"}}:
        what the result was computed from (the findings store records it per analysis run).
    acquisitions : session -> scanner and FLAIR series facts (what a scanner change is judged on).
    """
    pathological = params.atrophy.pathological_annualized_pbvc_percent
    interval_models = []
    for interval in intervals:
        atrophy = interval.atrophy
        counts = interval.counts
        annualized = atrophy.pbvc_annualized_percent
        interval_models.append({
            "from_session": interval.from_session,
            "to_session": interval.to_session,
            "years": round(atrophy.years, 4),
            "pbvc_percent": round(atrophy.pbvc_percent, 3),
            "pbvc_annualized_percent": None if annualized is None else round(annualized, 3),
            "pbvc_beyond_pathological_cutoff": None if annualized is None else annualized <= pathological,
            "alignment_correlation": round(atrophy.alignment_correlation, 4),
            "boundary_shift_ml": round(atrophy.boundary_shift_ml, 3),
            "counts": {"new": counts.new, "enlarging": counts.enlarging, "shrinking": counts.shrinking,
                       "resolved": counts.resolved, "stable": counts.stable, "possible_new": counts.possible_new},
            "lesions": [_lesion_model(change) for change in interval.changes],
            "qc_flags": [dataclasses.asdict(flag) for flag in interval.qc_flags],
            "files": interval_files.get((interval.from_session, interval.to_session), {}),
        })
    cited = sorted({key for sentence in methods for key in REFERENCES if key in sentence})
    return {
        "schema_version": SCHEMA_VERSION,
        "software": {"name": "msvol", "version": __version__},
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "status": STATUS,
        "disclaimer": DISCLAIMER,
        "subject": subject,
        "timepoints": [_timepoint_model(measures, {"lesions": lesion_files.get(measures.session),
                                                   "flair": (flair_files or {}).get(measures.session)},
                                        (acquisitions or {}).get(measures.session, Acquisition()))
                       for measures in timepoints],
        "intervals": interval_models,
        "qc_flags": [dataclasses.asdict(flag) for flag in qc_flags],
        "provenance": provenance or {"models": {}, "inputs": {}},
        "methods": " ".join(methods),
        "references": {key: REFERENCES[key] for key in cited},
        "params": params.to_dict(),
        "params_hash": params.hash(),
        "params_sources": field_sources(params),
    }


def _timepoint_model(measures: TimepointMeasures, files: dict[str, str | None], acquisition: Acquisition) -> dict:
    return {
        "session": measures.session,
        "date": measures.date.isoformat(),
        "brain_volume_ml": round(measures.brain_volume_ml, 2),
        "normalized_brain_volume_ml": round(measures.normalized_brain_volume_ml, 2),
        "intracranial_volume_ml": round(measures.intracranial_volume_ml, 2),
        "brain_parenchymal_fraction": round(measures.brain_parenchymal_fraction, 4),
        "lesion_count": measures.lesion_count,
        "lesion_volume_ml": round(measures.lesion_volume_ml, 3),
        "acquisition": dataclasses.asdict(acquisition),
        "files": {name: path for name, path in files.items() if path},
    }


def _lesion_model(change) -> dict:
    model = {
        "id": change.id,
        "status": change.status,
        "baseline_volume_mm3": round(change.baseline_volume_mm3, 1),
        "followup_volume_mm3": round(change.followup_volume_mm3, 1),
        "change_only_volume_mm3": round(change.change_only_mm3, 1),
        "centroid_mm": [round(value, 1) for value in change.centroid_mm],
        "baseline_labels": list(change.baseline_labels),
        "followup_labels": list(change.followup_labels),
        "merged": change.merged,
        "split": change.split,
        "confluent": change.confluent,
        "confidence": change.confidence,
        "subtraction_only": change.subtraction_only,
    }
    if change.status in REVIEWED_STATUSES:
        model["review"] = {"decision": "pending"}
    return model


def render_json(report: dict) -> str:
    return json.dumps(report, indent=2) + "\n"


def render_csv(report: dict) -> str:
    """One row per interval (INTERVAL_CSV_COLUMNS)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=INTERVAL_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for interval in report["intervals"]:
        writer.writerow({
            "subject": report["subject"],
            **{key: interval[key] for key in ("from_session", "to_session", "years", "pbvc_percent",
                                              "pbvc_annualized_percent", "alignment_correlation")},
            **interval["counts"],
            "qc_flags": ";".join(flag["code"] for flag in interval["qc_flags"]),
        })
    return buffer.getvalue()
