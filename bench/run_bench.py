"""`make bench`: speed, memory and accuracy of msvol on synthetic patients with known truth.

Generates --subjects synthetic patients (two visits each, seeds 500+; never training seeds),
runs the pipeline on each pair with per-stage timing, and compares against the generator's
truth: new-lesion sensitivity, false new lesions per pair, per-visit lesion Dice and lesion-wise
detection, PBVC error. Writes a Markdown table with the command and the machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from msvol import pipeline
from msvol.config import Params
from msvol.ingest import bids

FIRST_SEED = 500
MARKER = "<!-- make bench writes below this line -->"


def replace_section(report: Path, begin: str, end: str, lines: list[str]) -> None:
    """Put `lines` (which start with `begin` and end with `end`) into the report: over the earlier section
    between those markers, else above run_bench's part (which it rewrites from MARKER on), else at the end."""
    text = report.read_text() if report.exists() else ""
    section = "\n".join(lines)
    if begin in text and end in text:
        text = text[:text.index(begin)] + section + text[text.index(end) + len(end):]
    elif MARKER in text:
        text = text.replace(MARKER, f"{section}\n\n{MARKER}")
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    report.write_text(text)


def _machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    return f"{model}, {os.cpu_count()} cores, {memory_gb:.0f} GB RAM, {platform.system()} {platform.release()}"


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def _evaluate(subject_out: Path, truth_dir: Path, subject: str) -> dict:
    truth = json.loads((truth_dir / f"sub-{subject}_truth.json").read_text())
    interval = truth["intervals"][0]
    before, after = interval["from_session"], interval["to_session"]
    truth_after = _load(truth_dir / f"sub-{subject}_ses-{after}_lesions.nii.gz")
    predicted_new = _load(subject_out / "intervals" / f"ses-{before}_to_ses-{after}" / "new_lesions.nii.gz")
    truth_new_ids = [int(k) for k, fate in interval["fates"].items() if fate == "new"]
    hits = {lesion_id: bool((predicted_new[truth_after == lesion_id] > 0).any()) for lesion_id in truth_new_ids}
    volumes = {lesion_id: int((truth_after == lesion_id).sum()) for lesion_id in truth_new_ids}  # 1 mm voxels
    detected = sum(hits.values())
    truth_new_mask = np.isin(truth_after, truth_new_ids)
    false_new = sum(not truth_new_mask[predicted_new == label].any() for label in np.unique(predicted_new)[1:])
    report = json.loads((subject_out / "report.json").read_text())
    dice, found, total = [], 0, 0
    for timepoint in truth["timepoints"]:
        session = timepoint["session"]
        truth_labels = _load(truth_dir / f"sub-{subject}_ses-{session}_lesions.nii.gz")
        predicted = _load(subject_out / f"ses-{session}" / "lesions.nii.gz") > 0
        dice.append(2 * (predicted & (truth_labels > 0)).sum() / (predicted.sum() + (truth_labels > 0).sum()))
        for lesion_id in np.unique(truth_labels)[1:]:
            total += 1
            found += bool(predicted[truth_labels == lesion_id].any())
    measured = report["intervals"][0]
    return {"subject": subject, "truth_new": len(truth_new_ids), "detected_new": detected, "false_new": false_new,
            "truth_new_30": sum(v >= 30 for v in volumes.values()),
            "detected_new_30": sum(hits[i] for i, v in volumes.items() if v >= 30),
            "missed_new_mm3": sorted(volumes[i] for i, hit in hits.items() if not hit),
            "reported_new": measured["counts"]["new"], "pbvc_true": interval["pbvc_percent"],
            "pbvc_measured": measured["pbvc_percent"], "alignment": measured["alignment_correlation"],
            "dice": float(np.mean(dice)), "lesions_found": found, "lesions_total": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subjects", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/work"))
    parser.add_argument("--report", type=Path, default=Path("docs/BENCHMARKS.md"))
    args = parser.parse_args()
    data, results = args.out / "data", args.out / "results"
    if not data.exists():
        subprocess.run([sys.executable, "-m", "msvol", "synth", str(data), "--subjects", str(args.subjects),
                        "--visits", "2", "--seed", str(FIRST_SEED), "--quiet"], check=True)
    params = Params()
    started = time.perf_counter()
    resources = pipeline.Resources.load()
    load_seconds = time.perf_counter() - started
    rows, stage_totals = [], {}
    for subject_dir in bids.find_subjects(data):
        subject = subject_dir.name.removeprefix("sub-")
        timings: dict = {}
        began = time.perf_counter()
        patient = bids.load_patient(subject_dir, params.ingest)
        timings["ingest"] = time.perf_counter() - began
        pipeline.run_patient(patient, results, params, resources, force=True, timings=timings)
        row = _evaluate(results / f"sub-{subject}", data / "derivatives" / "truth" / f"sub-{subject}", subject)
        row["seconds"] = time.perf_counter() - began
        rows.append(row)
        for stage, seconds in timings.items():
            stage_totals[stage] = stage_totals.get(stage, 0.0) + seconds
        print(json.dumps(row), flush=True)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    _write(args, rows, stage_totals, load_seconds, peak_gb)


def _write(args, rows, stage_totals, load_seconds, peak_gb) -> None:
    count = len(rows)
    truth_new = sum(r["truth_new"] for r in rows)
    errors = np.array([r["pbvc_measured"] - r["pbvc_true"] for r in rows])
    lines = [
        MARKER, "## Pipeline speed, PBVC and lesion figures (`make bench`)", "",
        f"Measured {dt.date.today().isoformat()} with `make bench` "
        f"(`python bench/run_bench.py --subjects {args.subjects}`), msvol synth seeds "
        f"{FIRST_SEED}-{FIRST_SEED + count - 1} (default SynthSettings, two visits each; never used in training).",
        f"Machine: {_machine()}. CPU only.", "",
        "All figures are on synthetic data; they say nothing about patient scans.", "",
        "## Per pair of visits", "",
        "| subject | seconds | truth new | detected new | false new | PBVC true % | PBVC measured % | "
        "alignment r | lesion Dice | lesions found |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['subject']} | {r['seconds']:.0f} | {r['truth_new']} | {r['detected_new']} | {r['false_new']} "
                     f"| {r['pbvc_true']:.3f} | {r['pbvc_measured']:.3f} | {r['alignment']:.3f} | {r['dice']:.3f} "
                     f"| {r['lesions_found']}/{r['lesions_total']} |")
    lines += [
        "", "## Summary", "",
        f"- Wall time per pair (2 visits, all stages, report included): mean "
        f"{np.mean([r['seconds'] for r in rows]):.0f} s (target < 90 s); model and brain-extractor loading "
        f"{load_seconds:.1f} s once per process.",
        f"- Peak resident memory of the process: {peak_gb:.2f} GB (target < 6 GB).",
        f"- New-lesion sensitivity: {sum(r['detected_new'] for r in rows)}/{truth_new} = "
        f"{sum(r['detected_new'] for r in rows) / max(truth_new, 1):.2f}; false new lesions per pair: "
        f"{sum(r['false_new'] for r in rows) / count:.2f}. For new lesions of 30 mm3 and larger: "
        f"{sum(r['detected_new_30'] for r in rows)}/{sum(r['truth_new_30'] for r in rows)}. Missed new lesions "
        f"measured {sorted(v for r in rows for v in r['missed_new_mm3'])} mm3.",
        f"- PBVC error (measured - true), percentage points: mean {errors.mean():+.3f}, mean absolute "
        f"{np.abs(errors).mean():.3f}, max absolute {np.abs(errors).max():.3f} (target < 0.2).",
        f"- Per-visit lesion Dice: mean {np.mean([r['dice'] for r in rows]):.3f}; lesion-wise detection "
        f"{sum(r['lesions_found'] for r in rows)}/{sum(r['lesions_total'] for r in rows)}.",
        "", "## Time per stage (sum over all pairs, seconds)", "", "| stage | seconds | per pair |", "|---|---|---|",
    ]
    for stage, seconds in stage_totals.items():
        lines.append(f"| {stage} | {seconds:.1f} | {seconds / count:.1f} |")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    # Keep what precedes the marker (the held-out model section, written by hand from bench/heldout.py).
    previous = args.report.read_text() if args.report.exists() else "# Benchmarks\n\n"
    head = previous.split(MARKER)[0]
    args.report.write_text(head + "\n".join(lines) + "\n")
    print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
