"""Choose `growth_bridge_probability` (issue 12 items 3-4) on calibration sets, and score any set.

    python bench/calibrate_bridge.py prepare --out OUT --data DIR
    python bench/calibrate_bridge.py score --out OUT --data DIR [--out OUT2 --data DIR2 ...] [--choose]

Held-out shifted pairs reported growth of old lesions as new lesions: the per-visit model missed the old lesion, or
most of it, at both visits, so the growth lay beyond `match_tolerance_voxels` of anything segmented at baseline.
A follow-up lesion joined to an old one by tissue of sub-threshold per-visit probability is that lesion grown
(lesion_rules.reach_labels). `prepare` runs msvol (`msvol run` settings, bridging off) on DIR and saves, per
interval, what lesion_change.change_only_findings sees into OUT/inputs/sub-XX_N.npz (N: the interval's index in
the order msvol runs them, which is the truth's order). `score` replays the reach at each level of the grid and
counts the new and possible new findings (report.json) it would join to an old lesion: those on a truth new lesion
('lost') and the others ('fixed'). The rule, fixed before looking (--choose, calibration sets only): the lowest
level at which no finding on a truth new lesion is joined; none passing: off (0).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from calibrate_subtraction import run_subjects, truth_on_grid  # bench/calibrate_subtraction.py
from msvol.config import Params
from msvol.stages import lesion_change
from msvol.stages.lesion_rules import reach_labels

GRID = (0.3, 0.2, 0.1, 0.05)
NEW_STATUSES = ("new", "possible_new")


def prepare(out: Path, data: Path) -> None:
    """Run msvol with bridging off on every subject of `data`, saving each interval's inputs (module docstring)."""
    (out / "inputs").mkdir(parents=True, exist_ok=True)
    finder = lesion_change.change_only_findings
    where = {}

    def saving(changes, change_probability, baseline_halfway, followup_halfway, both_brain, params, **keywords):
        result = finder(changes, change_probability, baseline_halfway, followup_halfway, both_brain, params, **keywords)
        np.savez_compressed(out / "inputs" / f"{where['subject']}_{where['interval']}.npz",
                            change=change_probability.astype(np.float16), b=baseline_halfway.astype(np.int16),
                            f=followup_halfway.astype(np.int16), both=both_brain,
                            pf=keywords["followup_probability"].astype(np.float16), labels=result[1].astype(np.int16),
                            affine=keywords["halfway_affine"], to_f=keywords["halfway_to_followup"])
        where["interval"] += 1
        return result

    lesion_change.change_only_findings = saving  # the pipeline calls it through the module
    params = Params()
    try:
        run_subjects(data, out, dataclasses.replace(
            params, lesions=dataclasses.replace(params.lesions, growth_bridge_probability=0.0)), where)
    finally:
        lesion_change.change_only_findings = finder


def score(out: Path, data: Path, totals: dict) -> None:
    """Add one set's pairs and joined findings per level to `totals`."""
    params = Params().lesions
    for path in sorted((out / "inputs").glob("sub-*_*.npz")):
        subject, index = path.stem.rsplit("_", 1)
        saved = dict(np.load(path))
        truth_dir = data / "derivatives" / "truth" / subject
        interval = json.loads((truth_dir / f"{subject}_truth.json").read_text())["intervals"][int(index)]
        truth = truth_on_grid(truth_dir / f"{subject}_ses-{interval['to_session']}_lesions.nii.gz", saved["affine"],
                               saved["to_f"], saved["b"].shape)
        truly_new = [int(key) for key, fate in interval["fates"].items() if fate in ("new", "new_below_minimum")]
        report = json.loads((out / "fused" / subject / "report.json").read_text())
        entry = next(entry for entry in report["intervals"]
                     if (entry["from_session"], entry["to_session"]) == (interval["from_session"], interval["to_session"]))
        findings = [lesion for lesion in entry["lesions"]
                    if lesion["status"] in NEW_STATUSES and not lesion.get("subtraction_only")]
        baseline, labels = saved["b"].astype(np.int32), saved["labels"].astype(np.int32)
        follow_probability = saved["pf"].astype(np.float32)
        seen = lesion_change.change_only_tissue(saved["change"].astype(np.float32), baseline, saved["f"], saved["both"],
                                                params)  # the tissue that may carry a bridge, as in the pipeline
        for level in GRID:
            reach = reach_labels(baseline, max(params.match_tolerance_voxels, 1), follow_probability, level, extra=seen)
            total = totals.setdefault(level, {"pairs": 0, "lost": [], "fixed": [], "fixed_counted": 0})
            total["pairs"] += 1
            for lesion in findings:
                voxels = np.isin(labels, lesion["followup_labels"] or [lesion["id"]])
                if not (reach[voxels] > 0).any():
                    continue
                name = f"{out.name}/{subject}:{interval['from_session']}-{interval['to_session']}:{lesion['id']}"
                if np.isin(truth[voxels], truly_new).any():
                    total["lost"].append(name)
                else:
                    total["fixed"].append(name)
                    total["fixed_counted"] += lesion["status"] == "new"
        print(f"{subject} interval {index}: scored", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["prepare", "score"])
    parser.add_argument("--out", type=Path, action="append", required=True)
    parser.add_argument("--data", type=Path, action="append", required=True, help="a BIDS folder with synth truth")
    parser.add_argument("--choose", action="store_true", help="apply the rule (calibration sets only)")
    args = parser.parse_args()
    if len(args.out) != len(args.data):
        parser.error("give one --data per --out")
    if args.step == "prepare":
        for out, data in zip(args.out, args.data):
            prepare(out, data)
        return
    totals: dict = {}
    for out, data in zip(args.out, args.data):
        score(out, data, totals)
    print("| level | pairs | joined on a truth new lesion | joined elsewhere (of them counted new) | lost |\n|---|---|---|---|---|")
    for level, total in totals.items():
        print(f"| {level} | {total['pairs']} | {len(total['lost'])} | {len(total['fixed'])} ({total['fixed_counted']}) "
              f"| {', '.join(total['lost'])} |")
    if args.choose:
        passing = [level for level, total in totals.items() if not total["lost"]]
        print(f"chosen growth_bridge_probability: {min(passing, default=0.0)}")


if __name__ == "__main__":
    main()
