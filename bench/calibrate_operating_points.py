"""Choose the two new-lesion operating points (issue 12 item 3) on a calibration set, not on the check set.

    python bench/calibrate_operating_points.py [--out bench/work/calibration] [--seed 4300]

1. Writes the check-set design drawn from --seed (msvol.synth.checkset.CALIBRATION_SEED: other base patients,
   donors, lesion draws; the check set of `make bench-heldout` is seed 4100 and stays held out) into OUT/data.
2. Runs msvol with the candidate threshold lowered to --floor, so every lesion absent at baseline whose
   change-model mean probability reaches the floor is listed with that probability (its confidence).
3. For each reporting threshold R and candidate threshold C <= R of the grid, re-labels those findings as
   the pipeline would (lesion_change.fuse_change: new at >= R when at least min_new_lesion_volume_mm3, otherwise a
   'possible new lesion' at >= C) into OUT/grid/R-C, and scores it with msvol.evaluate.
The rule, fixed before looking (the issue's targets): R = the lowest R with false new per pair <= 0.3; then
C = the lowest C with at most 2 candidates per pair at that R. Prints the table and writes OUT/grid.json.
Enlarging calls are left as the run made them (they use the candidate threshold too, so they are not
judged here). A new lesion the change model did not see (no new tissue on the halfway grid) keeps its
per-visit confidence; the re-labelling treats it like the others.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

import checkset as checkset_bench  # bench/checkset.py
from msvol import evaluate
from msvol.config import Params
from msvol.synth import checkset

REPORTING = (0.3, 0.4, 0.5, 0.6, 0.7)
CANDIDATE = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
NEW_STATUSES = ("new", "possible_new")


def relabel(run_subject: Path, target: Path, reporting: float, candidate: float, min_new_mm3: float) -> None:
    """A copy of one subject's result with its new / possible-new findings re-labelled at (reporting, candidate)."""
    shutil.copytree(run_subject, target, ignore=shutil.ignore_patterns("viewer", "thumbnails", "*.html", "*.png"))
    report = json.loads((target / "report.json").read_text())
    for interval in report["intervals"]:
        followup = nib.load(target / f"ses-{interval['to_session']}" / "lesions.nii.gz")
        labels = np.asarray(followup.dataobj)
        kept, reported = [], []
        for lesion in interval["lesions"]:
            if lesion["status"] in NEW_STATUSES:
                confidence, volume = lesion["confidence"], lesion.get("followup_volume_mm3") or 0.0
                if confidence < candidate:
                    continue  # below both thresholds: not listed (a stable call would not be scored either)
                lesion["status"] = "new" if confidence >= reporting and volume >= min_new_mm3 else "possible_new"
                if lesion["status"] == "new":
                    reported += lesion["followup_labels"]
            kept.append(lesion)
        interval["lesions"] = kept
        new_map = target / interval["files"]["new_lesions"]
        image = nib.load(new_map)
        nib.Nifti1Image(np.isin(labels, reported).astype(np.uint8), image.affine, image.header).to_filename(new_map)
    (target / "report.json").write_text(json.dumps(report))


def sweep(out: Path, data: Path, params: Params) -> list[dict]:
    rows = []
    run = out / "fused"
    for reporting in REPORTING:
        for candidate in (c for c in CANDIDATE if c <= reporting):
            grid = out / "grid" / f"{reporting}-{candidate}"
            shutil.rmtree(grid, ignore_errors=True)
            for subject in sorted(run.glob("sub-*")):
                relabel(subject, grid / subject.name, reporting, candidate, params.lesions.min_new_lesion_volume_mm3)
            overall = evaluate.evaluate(grid, data)["overall"]
            rows.append({"reporting": reporting, "candidate": candidate, **{key: overall[key] for key in (
                "new_sensitivity", "new_sensitivity_or_candidate", "new_sensitivity_below_100",
                "new_sensitivity_or_candidate_below_100", "mean_false_new_per_pair", "mean_candidates_per_pair")}})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def choose(rows: list[dict]) -> tuple[float, float] | None:
    """The pre-set rule (module docstring); None when no reporting threshold meets false new <= 0.3 per pair."""
    meeting = sorted({row["reporting"] for row in rows if row["mean_false_new_per_pair"] <= 0.3})
    if not meeting:
        return None
    reporting = meeting[0]
    fitting = sorted(row["candidate"] for row in rows
                     if row["reporting"] == reporting and row["mean_candidates_per_pair"] <= 2)
    return reporting, (fitting[0] if fitting else reporting)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/work/calibration"))
    parser.add_argument("--seed", type=int, default=checkset.CALIBRATION_SEED)
    parser.add_argument("--floor", type=float, default=min(CANDIDATE))
    parser.add_argument("--sweep-only", action="store_true", help="score the grid of an earlier run")
    args = parser.parse_args()
    if args.seed == checkset.CHECKSET_SEED:
        sys.exit(f"--seed {args.seed} is the held-out check set; calibrate on another seed")
    defaults = Params()
    params = dataclasses.replace(defaults, lesions=dataclasses.replace(
        defaults.lesions, min_candidate_change_probability=args.floor))
    if not args.sweep_only:
        checkset_bench.run(args.out, None, seed=args.seed, params=params)
    rows = sweep(args.out, args.out / "data", defaults)
    chosen = choose(rows)
    (args.out / "grid.json").write_text(json.dumps({"seed": args.seed, "floor": args.floor, "rows": rows,
                                                    "chosen": chosen}, indent=2))
    print(f"chosen (reporting, candidate): {chosen}")


if __name__ == "__main__":
    main()
