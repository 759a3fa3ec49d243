"""PBVC recovery (measured / true) through the pipeline's PBVC path on real-sized cases with a known change.

    python bench/pbvc_recovery.py [--out bench/work/pbvc] [--report docs/BENCHMARKS.md]

Cases, each a pair of visits (FLAIR + T1 at 1 mm, head pose, bias field, gain and noise drawn per visit):
- "divergence": msvol synth (msvol.synth.patients), its own atrophy: a smooth displacement whose divergence
  shrinks tissue in place and widens ventricles and sulci. Lesions present but unchanged (no new, enlarging,
  shrinking or resolved: a T1-dark new lesion would read as partial loss, a known confound).
- "contraction": tests/stages/brain_phantom.py (no msvol.synth code): the whole brain scaled about its centre,
  the outer CSF taking up the volume. Truth on both: the change of the GM + WM fractions rendered.
- "scan-rescan": one of each with no change at all (truth 0).
- "FLAIR 1x1x1.2", "FLAIR 1.2 iso": a divergence and a contraction pair again, the follow-up FLAIR replaced by
  a lower-resolution one (blurred to the new voxel, resampled); PBVC must not move (target within 0.1 pp).
Each visit runs `pipeline.prepare_visit` (N4, deepbet, T1 -> FLAIR), the interval `pipeline.measure_interval_pbvc`.
With an msvol older than issue 12 on PYTHONPATH (no measure_interval_pbvc), the interval runs as analyse_interval
did then (T1s on the FLAIR halfway grid), so the same cases give the figures before the fix:
    PYTHONPATH=<checkout of the old msvol> python bench/pbvc_recovery.py --label before --no-report
Generated cases are cached in --out, so both runs read the same images. Writes its section of the report.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import sys
import time
import types
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.append(str(Path(__file__).resolve().parents[1]))  # the phantom lives with the tests; msvol stays first
from msvol import pipeline  # noqa: E402
from msvol.config import Params  # noqa: E402
from msvol.datatypes import Visit, Volume  # noqa: E402
from msvol.stages import preprocess  # noqa: E402
from tests.stages import brain_phantom  # noqa: E402

BEGIN, END = "<!-- pbvc_recovery begin -->", "<!-- pbvc_recovery end -->"
DIVERGENCE_SEEDS = (810, 811, 812)  # msvol synth; never used in training (those are 1000+)
CONTRACTION_SEEDS = (21, 22)
RESCAN_DIVERGENCE_SEED, RESCAN_CONTRACTION_SEED = 813, 23
PHANTOM_SHAPE = (176, 208, 168)  # 1 mm, head with scalp


def _unchanged_lesions(rate: tuple[float, float]):
    from msvol.synth import patients

    return patients.SynthSettings(n_visits=2, n_new_per_interval=(0, 0), n_enlarging_per_interval=(0, 0),
                                  n_shrinking_per_interval=(0, 0), n_resolved_per_interval=(0, 0),
                                  annual_pbvc_percent=rate)


def divergence_case(seed: int, rate=(-1.2, -0.8)) -> dict:
    """A msvol synth patient (two visits), its truth PBVC."""
    from msvol.synth import patients

    patient = patients.generate_patient(seed, _unchanged_lesions(rate))
    visits = [{"flair": v["flair"].astype(np.float32), "flair_affine": v["flair_affine"],
               "t1": v["t1"].astype(np.float32), "t1_affine": v["t1_affine"], "date": v["date"].isoformat()}
              for v in patient["visits"]]
    return {"visits": visits, "truth": patient["truth"]["intervals"][0]["pbvc_percent"]}


def _pose(rng, degrees=4.0, mm=5.0) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_euler("xyz", rng.uniform(-degrees, degrees, 3), degrees=True).as_matrix()
    pose[:3, 3] = rng.uniform(-mm, mm, 3)
    return pose


def contraction_case(seed: int, loss_percent: float = 1.0) -> dict:
    """The analytic phantom: baseline, then the brain contracted by `loss_percent` of its volume."""
    rng = np.random.default_rng(seed)
    head = brain_phantom.make_head(seed)
    affine = brain_phantom.grid(PHANTOM_SHAPE)
    contraction = (1 - loss_percent / 100) ** (1 / 3)
    visits, tissue = [], []
    for index, scale in enumerate((1.0, contraction)):
        pose = _pose(rng)
        t1_pose = _pose(rng, 1.0, 1.0) @ pose  # the head moves a little between FLAIR and T1
        images = {}
        for name, contrast, visit_pose in (("flair", brain_phantom.FLAIR_CONTRAST, pose),
                                           ("t1", brain_phantom.T1_CONTRAST, t1_pose)):
            fractions = brain_phantom.render(head, PHANTOM_SHAPE, affine, pose=visit_pose, contraction=scale)
            images[name] = brain_phantom.acquire(fractions, contrast, rng, noise_sd=rng.uniform(0.012, 0.025),
                                                 bias_amplitude=rng.uniform(0.05, 0.2), gain=rng.uniform(0.8, 1.25))
            if name == "t1":
                tissue.append(brain_phantom.tissue_ml(fractions, affine))
        visits.append({"flair": images["flair"], "flair_affine": affine, "t1": images["t1"], "t1_affine": affine,
                       "date": (dt.date(2021, 3, 1) + dt.timedelta(days=366 * index)).isoformat()})
    return {"visits": visits, "truth": 100 * (tissue[1] / tissue[0] - 1)}


def lower_resolution(volume: Volume, spacing_mm) -> Volume:
    """The same field of view at a coarser voxel: blurred to the new voxel size, sampled on the new grid."""
    spacing = np.asarray(spacing_mm, float) / volume.spacing_mm
    blurred = ndimage.gaussian_filter(volume.data, np.maximum(spacing - 1, 0) * 0.6)
    shape = tuple(int(np.floor((n - 1) / s)) + 1 for n, s in zip(volume.data.shape, spacing))
    points = np.indices(shape, dtype=np.float32).reshape(3, -1) * spacing[:, None].astype(np.float32)
    data = ndimage.map_coordinates(blurred, points, order=1).reshape(shape).astype(np.float32)
    return Volume(data, volume.affine @ np.diag([*spacing, 1.0]), volume.kind)


def cached(path: Path, make) -> dict:
    if path.exists():
        with np.load(path, allow_pickle=False) as stored:
            meta = json.loads(str(stored["meta"]))
            visits = [{key: stored[f"{i}_{key}"] for key in ("flair", "flair_affine", "t1", "t1_affine")}
                      | {"date": meta["dates"][i]} for i in range(2)]
            return {"visits": visits, "truth": meta["truth"]}
    case = make()
    arrays = {f"{i}_{key}": visit[key] for i, visit in enumerate(case["visits"])
              for key in ("flair", "flair_affine", "t1", "t1_affine")}
    meta = {"truth": case["truth"], "dates": [visit["date"] for visit in case["visits"]]}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.partial.npz")
    np.savez_compressed(temporary, meta=json.dumps(meta), **arrays)
    temporary.replace(path)
    return case


def visit(case: dict, index: int, flair_spacing_mm=None) -> Visit:
    stored = case["visits"][index]
    flair = Volume(np.asarray(stored["flair"], np.float32), np.asarray(stored["flair_affine"], float), "FLAIR")
    if flair_spacing_mm is not None:
        flair = lower_resolution(flair, flair_spacing_mm)
    return Visit(f"{index + 1:02d}", dt.date.fromisoformat(stored["date"]), flair,
                 Volume(np.asarray(stored["t1"], np.float32), np.asarray(stored["t1_affine"], float), "T1w"))


def _pbvc_as_before_issue_12(baseline, followup, params: Params):
    """analyse_interval's PBVC before issue 12: FLAIR -> FLAIR halfway registration, T1s on the baseline FLAIR grid."""
    from msvol.stages import atrophy, register

    baseline_to_followup = register.fit_rigid(baseline.flair, followup.flair, params.register,
                                              fixed_mask=baseline.brain_mask.data,
                                              moving_mask=followup.brain_mask.data)
    grid = (baseline.flair.data.shape, baseline.flair.affine)
    pulls = zip((baseline, followup), register.halfway(baseline_to_followup))
    t1s, masks = zip(*[(register.resample(v.t1, v.t1_to_flair.compose(pull), *grid),
                        register.resample(v.t1_brain_mask, v.t1_to_flair.compose(pull), *grid)) for v, pull in pulls])
    return atrophy.measure_pbvc(t1s[0], t1s[1], masks[0], masks[1], years=1.0, alignment_correlation=1.0,
                                params=params.atrophy)


def measure(prepared, params: Params) -> tuple[float, float | None, float]:
    """(PBVC %, T1 alignment correlation (None before issue 12: not measured), seconds) of one prepared pair."""
    started = time.perf_counter()
    years = (prepared[1].date - prepared[0].date).days / 365.25
    if hasattr(pipeline, "measure_interval_pbvc"):
        result = pipeline.measure_interval_pbvc(prepared[0], prepared[1], years=years, flair_correlation=1.0,
                                                params=params)
    else:
        result = dataclasses.replace(_pbvc_as_before_issue_12(prepared[0], prepared[1], params),
                                     alignment_correlation=None)
    return result.pbvc_percent, result.alignment_correlation, time.perf_counter() - started


def cases(out: Path) -> list[tuple]:
    """(name, kind, cache file in `out`, function making the case) of every case with a 1 mm FLAIR."""
    found = [(f"divergence {seed}", "divergence", out / f"divergence-{seed}.npz",
              lambda seed=seed: divergence_case(seed)) for seed in DIVERGENCE_SEEDS]
    found += [(f"contraction {seed}", "contraction", out / f"contraction-{seed}.npz",
               lambda seed=seed: contraction_case(seed)) for seed in CONTRACTION_SEEDS]
    return found + [(f"scan-rescan divergence {RESCAN_DIVERGENCE_SEED}", "scan-rescan",
                     out / f"rescan-divergence-{RESCAN_DIVERGENCE_SEED}.npz",
                     lambda: divergence_case(RESCAN_DIVERGENCE_SEED, (0.0, 0.0))),
                    (f"scan-rescan contraction {RESCAN_CONTRACTION_SEED}", "scan-rescan",
                     out / f"rescan-contraction-{RESCAN_CONTRACTION_SEED}.npz",
                     lambda: contraction_case(RESCAN_CONTRACTION_SEED, 0.0))]


def run(out: Path) -> list[dict]:
    params = Params()
    resources = types.SimpleNamespace(extractor=preprocess.load_brain_extractor())  # prepare_visit reads only this
    rows = []
    for name, kind, path, make in cases(out):
        case = cached(path, make)
        prepared = [pipeline.prepare_visit(visit(case, index), params, resources) for index in range(2)]
        pbvc, correlation, seconds = measure(prepared, params)
        rows.append({"case": name, "kind": kind, "flair": "1 mm", "truth": case["truth"], "pbvc": pbvc,
                     "correlation": correlation, "seconds": seconds})
        print(json.dumps(rows[-1]), flush=True)
        if name in (f"divergence {DIVERGENCE_SEEDS[0]}", f"contraction {CONTRACTION_SEEDS[0]}"):
            for label, spacing in (("1 x 1 x 1.2 mm", (1.0, 1.0, 1.2)), ("1.2 mm iso", (1.2, 1.2, 1.2))):
                followup = pipeline.prepare_visit(visit(case, 1, spacing), params, resources)
                pbvc_low, correlation, seconds = measure([prepared[0], followup], params)
                rows.append({"case": name, "kind": "FLAIR " + label, "flair": label, "truth": case["truth"],
                             "pbvc": pbvc_low, "correlation": correlation, "seconds": seconds,
                             "pbvc_1mm_flair": pbvc})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def report_lines(rows: list[dict], label: str, command: str) -> list[str]:
    from run_bench import _machine

    lines = [f"### {label}", "", f"`{command}`", "",
             "| case | change | follow-up FLAIR | true PBVC % | measured % | recovery | T1 alignment r | PBVC s |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        recovery = f"{row['pbvc'] / row['truth']:.3f}" if abs(row["truth"]) > 0.05 else "-"
        correlation = "-" if row["correlation"] is None else f"{row['correlation']:.3f}"
        lines.append(f"| {row['case']} | {row['kind']} | {row['flair']} | {row['truth']:+.3f} | {row['pbvc']:+.3f} "
                     f"| {recovery} | {correlation} | {row['seconds']:.0f} |")
    changed = [row["pbvc"] / row["truth"] for row in rows if row["kind"] in ("divergence", "contraction")]
    rescans = [abs(row["pbvc"]) for row in rows if row["kind"] == "scan-rescan"]
    moves = [abs(row["pbvc"] - row["pbvc_1mm_flair"]) for row in rows if "pbvc_1mm_flair" in row]
    lines += ["", f"- recovery on known contractions: {min(changed):.3f}-{max(changed):.3f} "
              f"(median {np.median(changed):.3f}; target 1.00 +- 0.05)",
              f"- scan-rescan |PBVC|: max {max(rescans):.3f} % (target <= 0.1 %)",
              f"- PBVC moved by a lower-resolution follow-up FLAIR: max {max(moves):.3f} pp (target <= 0.1 pp)",
              "- PBVC s: the interval's PBVC step alone (registration, resampling, BSI); each visit's preparation "
              "(N4, deepbet) is not in it",
              f"- machine: {_machine()}, `nproc` {os.cpu_count()}; {dt.date.today().isoformat()}"]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/work/pbvc"))
    parser.add_argument("--report", type=Path, default=Path("docs/BENCHMARKS.md"))
    parser.add_argument("--label", default="after issue 12 (msvol of this checkout)")
    parser.add_argument("--no-report", action="store_true", help="print the table, leave the report alone")
    parser.add_argument("--before", type=Path, help="rows-*.json of an earlier run (--out), shown above this one")
    parser.add_argument("--rows", type=Path, help="report the rows-*.json of an earlier run instead of running")
    args = parser.parse_args(argv)
    if args.rows is not None:
        earlier = json.loads(args.rows.read_text())
        rows, args.label, command = earlier["rows"], earlier["label"], earlier["command"]
    else:
        rows = run(args.out)
        command = "python bench/pbvc_recovery.py " + " ".join(argv if argv is not None else sys.argv[1:])
        (args.out / f"rows-{args.label.split()[0]}.json").write_text(
            json.dumps({"label": args.label, "command": command.strip(), "rows": rows}, indent=1))
    lines = report_lines(rows, args.label, command.strip())
    print("\n".join(lines))
    if args.no_report:
        return 0
    sections = [BEGIN, "## PBVC recovery on known contractions (`python bench/pbvc_recovery.py`, issue 12)", "",
                *__doc__.split("\n\n")[2].splitlines(), ""]
    if args.before is not None:
        before = json.loads(args.before.read_text())
        sections += report_lines(before["rows"], before["label"], before["command"]) + [""]
    from run_bench import replace_section

    replace_section(args.report, BEGIN, END, sections + lines + [END])
    return 0


if __name__ == "__main__":
    sys.exit(main())
