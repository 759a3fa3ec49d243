"""`make bench-heldout`: the lesion models on held-out synthetic patients, scored with `msvol evaluate`.

For each contrast preset (standard: inside the training ranges; shifted: outside them), generates
--subjects patients with three visits (seeds never used in training), runs the full pipeline
twice on the same preprocessed visits (fused with the change model, and independent per-visit
comparison), segments every visit once more without its T1 (the FLAIR-only fallback), and
scores all three with msvol.evaluate. Prints tables and writes OUT/<preset>/summary.json
with model inference times and peak memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from msvol import evaluate, pipeline
from msvol.config import Params
from msvol.errors import InputError
from msvol.ingest import bids
from msvol.stages import lesions, preprocess, segment
from msvol.synth import patients


def generate(data_dir: Path, subjects: int, first_seed: int, contrast: str) -> None:
    settings = patients.SynthSettings(n_visits=3, contrast=contrast)
    for index in range(subjects):
        subject = f"{index + 1:02d}"
        if not (data_dir / "derivatives" / "truth" / f"sub-{subject}" / f"sub-{subject}_truth.json").exists():
            patients.write_patient(patients.generate_patient(first_seed + index, settings), data_dir, subject)


def _timed_models(times: dict):
    """Wrap the two model calls so their wall time is recorded (inference only)."""
    def wrap(function, key):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            result = function(*args, **kwargs)
            times.setdefault(key, []).append(time.perf_counter() - started)
            return result
        return timed
    segment.segment_visit = wrap(segment.segment_visit, "per-visit model")
    segment.predict_change = wrap(segment.predict_change, "change model")


def _write_flair_only(prepared, patient, params: Params, resources, out: Path) -> None:
    native = {visit.session: visit.flair.affine for visit in patient.visits}
    for ready in prepared:
        flair_only = dataclasses.replace(ready, t1_on_flair=None)
        probability, _ = segment.segment_visit(flair_only, params.segment, resources.segmenter)
        lesion_map = lesions.label_lesions(probability, ready.session, params.segment, params.lesions)
        labels = preprocess.reorient(lesion_map.labels, native[ready.session])
        target = out / f"sub-{patient.subject}" / f"ses-{ready.session}" / "lesions.nii.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        nib.Nifti1Image(labels.data.astype(np.int32), labels.affine).to_filename(target)


def run_preset(out: Path, subjects: int, first_seed: int, contrast: str) -> dict:
    data = out / "data"
    generate(data, subjects, first_seed, contrast)
    fused_params = Params()
    independent_params = dataclasses.replace(
        fused_params, lesions=dataclasses.replace(fused_params.lesions, use_change_model=False))
    resources = pipeline.Resources.load()
    cache: dict = {}
    original_prepare = pipeline.prepare_visit

    def prepare_once(visit, params, resources):  # both runs share the preprocessing of a visit
        if visit.session not in cache:
            cache[visit.session] = original_prepare(visit, params, resources)
        return cache[visit.session]

    pipeline.prepare_visit = prepare_once
    scales: dict = {}
    original_scale = pipeline._template_scale

    def scale_once(visit, params, resources):
        if visit.session not in scales:
            scales[visit.session] = original_scale(visit, params, resources)
        return scales[visit.session]

    pipeline._template_scale = scale_once
    times: dict = {}
    _timed_models(times)
    set_aside = {}
    for subject_dir in bids.find_subjects(data):
        cache.clear()
        scales.clear()
        patient = bids.load_patient(subject_dir, fused_params.ingest)
        try:
            for name, params in (("fused", fused_params), ("independent", independent_params)):
                print(f"{contrast} {subject_dir.name} {name}", file=sys.stderr, flush=True)
                pipeline.run_patient(patient, out / name, params, resources, force=True)
        except InputError as exc:  # refused by the pipeline, as `msvol run` would set it aside
            set_aside[subject_dir.name] = str(exc)
            print(f"set aside {subject_dir.name}: {exc}", file=sys.stderr, flush=True)
            continue
        _write_flair_only(list(cache.values()), patient, fused_params, resources, out / "flair_only")
    results = {name: evaluate.evaluate(out / name, data) for name in ("fused", "independent", "flair_only")}
    for name, result in results.items():
        (out / f"{name}.json").write_text(json.dumps(result, indent=2))
        print(f"\n== {contrast}: {name}\n{evaluate.render_table(result)}")
    per_visit, change = (float(np.mean(times[key])) for key in ("per-visit model", "change model"))
    summary = {
        "contrast": contrast, "subjects": subjects, "first_seed": first_seed, "set_aside": set_aside,
        "per_visit_model_seconds_mean": per_visit, "change_model_seconds_mean": change,
        "both_models_seconds_per_pair": 2 * per_visit + change,
        "peak_memory_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "overall": {name: result["overall"] for name, result in results.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _figure(value, digits=3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(root: Path) -> str:
    """Tables of both presets' results (after both runs) for docs/BENCHMARKS.md."""
    lines = ["| contrast | method | scans | pairs | Dice | lesion F1 | sensitivity <100 / 100-500 / >500 mm3 | "
             "FP per scan | volume ratio | new sens. (>=30 mm3) | false new per pair | enlarging sens. | "
             "PBVC mean abs error |", "|" + "---|" * 13]
    for contrast in ("standard", "shifted"):
        for name in ("fused", "independent", "flair_only"):
            path = root / contrast / f"{name}.json"
            if not path.exists():
                continue
            o = json.loads(path.read_text())["overall"]
            bins = " / ".join(_figure(o["sensitivity_by_size"][b]["sensitivity"], 2) for b in evaluate.SIZE_BIN_LABELS)
            new = (f"{_figure(o['new_sensitivity'])} ({_figure(o['new_sensitivity_ge30'])}; "
                   f"{o['detected_new_ge30']}/{o['truth_new_ge30']})") if name != "flair_only" else "-"
            lines.append(
                f"| {contrast} | {name.replace('_', '-')} | {o['scans']} | {o['pairs'] if name != 'flair_only' else '-'} | "
                f"{_figure(o['mean_dice'])} | {_figure(o['f1'])} | {bins} | {_figure(o['mean_false_positives_per_scan'], 2)} | "
                f"{_figure(o['mean_volume_ratio'], 2)} | {new} | "
                f"{_figure(o['mean_false_new_per_pair'], 2) if name != 'flair_only' else '-'} | "
                f"{_figure(o['enlarging_sensitivity']) if name != 'flair_only' else '-'} | "
                f"{_figure(o['mean_abs_pbvc_error_percent']) if name != 'flair_only' else '-'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--markdown", action="store_true", help="Print the tables of finished runs and stop.")
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("bench/work/heldout"))
    parser.add_argument("--contrast", choices=["standard", "shifted"], default="standard")
    parser.add_argument("--first-seed", type=int, default=600)
    args = parser.parse_args()
    if args.markdown:
        print(markdown(args.out))
        return
    summary = run_preset(args.out / args.contrast, args.subjects, args.first_seed, args.contrast)
    print(json.dumps({key: value for key, value in summary.items() if key != "overall"}, indent=2))


if __name__ == "__main__":
    main()
