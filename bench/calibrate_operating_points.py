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
C = the lowest C with at most 2 candidates per pair at that R.
4. At (R, C), findings only the change model saw (no follow-up label: lesion_change.change_only_findings) are
   reported from a threshold R_co >= R of the grid instead (`min_change_only_new_probability`): R_co = the
   lowest with false new <= 0.3 and at most 2 candidates per pair. Prints the tables and writes OUT/grid.json.
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

REPORTING = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
CANDIDATE = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
NEW_STATUSES = ("new", "possible_new")


def relabel(run_subject: Path, target: Path, reporting: float, candidate: float, min_new_mm3: float,
            change_only_reporting: float | None = None) -> None:
    """A copy of one subject's result with its new / possible-new findings re-labelled at (reporting, candidate);
    a finding only the change model saw (no follow-up label) is reported from `change_only_reporting` (default:
    `reporting`). The interval's new and possible-new maps hold findings by id, so both are rewritten from them."""
    shutil.copytree(run_subject, target, ignore=shutil.ignore_patterns("viewer", "thumbnails", "*.html", "*.png"))
    report = json.loads((target / "report.json").read_text())
    for interval in report["intervals"]:
        maps = {status: target / interval["files"][f"{status}_lesions"] for status in NEW_STATUSES}
        images = {status: nib.load(path) for status, path in maps.items()}
        by_id = sum(np.asarray(image.dataobj).astype(np.int32) for image in images.values())
        kept, ids = [], {status: [] for status in NEW_STATUSES}
        for lesion in interval["lesions"]:
            if lesion["status"] in NEW_STATUSES:
                confidence, volume = lesion["confidence"], lesion.get("followup_volume_mm3") or 0.0
                if confidence < candidate:
                    continue  # below both thresholds: not listed (a stable call would not be scored either)
                only_change_model = not lesion["followup_labels"] and change_only_reporting is not None
                needed = change_only_reporting if only_change_model else reporting
                lesion["status"] = "new" if confidence >= needed and volume >= min_new_mm3 else "possible_new"
                ids[lesion["status"]].append(lesion["id"])
            kept.append(lesion)
        interval["lesions"] = kept
        for status, path in maps.items():
            image = images[status]
            labels = np.where(np.isin(by_id, ids[status]), by_id, 0).astype(np.int32)
            nib.Nifti1Image(labels, image.affine, image.header).to_filename(path)
    (target / "report.json").write_text(json.dumps(report))


SCORED = ("new_sensitivity", "new_sensitivity_or_candidate", "new_sensitivity_below_100",
          "new_sensitivity_or_candidate_below_100", "mean_false_new_per_pair", "mean_candidates_per_pair")


def score_point(out: Path, data: Path, min_new_mm3: float, reporting: float, candidate: float,
                change_only: float | None = None) -> dict:
    """The run of OUT/fused re-labelled at one point of the grid, scored."""
    name = f"{reporting}-{candidate}" + (f"-{change_only}" if change_only is not None else "")
    grid = out / ("grid" if change_only is None else "grid-change-only") / name
    shutil.rmtree(grid, ignore_errors=True)
    for subject in sorted((out / "fused").glob("sub-*")):
        relabel(subject, grid / subject.name, reporting, candidate, min_new_mm3, change_only_reporting=change_only)
    overall = evaluate.evaluate(grid, data)["overall"]
    row = {"reporting": reporting, "candidate": candidate, **({} if change_only is None else {
        "change_only_reporting": change_only}), **{key: overall[key] for key in SCORED}}
    print(json.dumps(row), flush=True)
    return row


def _score_all(out: Path, data: Path, params: Params, points: list[tuple]) -> list[dict]:
    """score_point over `points`, two processes at a time (each point is independent)."""
    from concurrent.futures import ProcessPoolExecutor

    minimum = params.lesions.min_new_lesion_volume_mm3
    with ProcessPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(score_point, out, data, minimum, *point) for point in points]
        return [future.result() for future in futures]


def sweep(out: Path, data: Path, params: Params) -> list[dict]:
    points = [(reporting, candidate) for reporting in REPORTING for candidate in CANDIDATE if candidate <= reporting]
    return _score_all(out, data, params, points)


def sweep_change_only(out: Path, data: Path, params: Params, reporting: float, candidate: float) -> list[dict]:
    """At the chosen (reporting, candidate): findings only the change model saw reported from a higher threshold."""
    return _score_all(out, data, params, [(reporting, candidate, value) for value in REPORTING if value >= reporting])


def choose_change_only(rows: list[dict]) -> float | None:
    """The lowest change-only reporting threshold with false new <= 0.3 and <= 2 candidates per pair."""
    meeting = sorted(row["change_only_reporting"] for row in rows
                     if row["mean_false_new_per_pair"] <= 0.3 and row["mean_candidates_per_pair"] <= 2)
    return meeting[0] if meeting else None


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
    change_only_rows = sweep_change_only(args.out, args.out / "data", defaults, *chosen) if chosen else []
    change_only = choose_change_only(change_only_rows)
    (args.out / "grid.json").write_text(json.dumps({"seed": args.seed, "floor": args.floor, "rows": rows,
                                                    "chosen": chosen, "change_only_rows": change_only_rows,
                                                    "chosen_change_only": change_only}, indent=2))
    print(f"chosen (reporting, candidate): {chosen}; change-only reporting: {change_only}")


if __name__ == "__main__":
    main()
