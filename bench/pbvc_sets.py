"""PBVC alone on every pair of the held-out sets, the check set and the PBVC bench cases (issue 12 item 6), fast
enough to compare methods.

    python bench/pbvc_sets.py prepare SET [--subjects N] [--out bench/work/pbvc_sets]
    python bench/pbvc_sets.py measure [SET ...] [--out bench/work/pbvc_sets]

SET is standard or shifted (msvol synth, three visits, seeds 600 on, as `make bench-heldout`), checkset
(msvol.synth.checkset, two visits) or recovery (bench/pbvc_recovery.py's divergence, contraction and scan-rescan
cases, 1 mm FLAIR; its case files are cached in OUT/recovery/data). `prepare` writes the set (kept when there), runs
each visit's T1 through the pipeline's preparation (N4, deepbet) and each interval through
`pipeline.measure_interval_pbvc` up to BSI, and saves the two halfway T1s and masks with the truth
(OUT/SET/pairs/*.npz, about 45 MB a pair; minutes a subject).
`measure` runs `atrophy.measure_pbvc` of this checkout on the saved pairs (seconds a pair) and prints recovery
(measured / true, |true| >= 0.2 %) per pair and per set. `make bench-heldout` measures the same through the whole
pipeline; this bench only skips the lesion stages, which PBVC does not read.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import numpy as np

from msvol import evaluate_io, pipeline
from msvol.config import Params
from msvol.datatypes import Volume
from msvol.ingest import bids
from msvol.stages import atrophy, preprocess
from msvol.synth import checkset

import heldout  # noqa: I001 (bench/, beside this script: on sys.path when run as `python bench/pbvc_sets.py`)
import pbvc_recovery  # noqa: I001

SETS = ("standard", "shifted", "checkset", "recovery")
FIRST_SEED = 600  # bench/heldout.py's default: never used in training


def _write_set(name: str, data: Path, subjects: int) -> None:
    if name == "checkset":
        checkset.write_checkset(data, checkset.default_designs()[:subjects],
                                log=lambda message: print(message, file=sys.stderr, flush=True))
    else:
        heldout.generate(data, subjects, FIRST_SEED, name)


class _Halfway:
    """While in use, keeps the halfway T1s and masks that measure_interval_pbvc hands to BSI."""

    def __enter__(self):
        self.volumes, self._measure_pbvc = None, atrophy.measure_pbvc

        def keep(*volumes, **kwargs):
            self.volumes = volumes
            return self._measure_pbvc(*volumes, **kwargs)

        atrophy.measure_pbvc = keep
        return self

    def __exit__(self, *exc):
        atrophy.measure_pbvc = self._measure_pbvc

    def save(self, path: Path, truth: float, rescan: bool) -> None:
        base, follow, base_mask, follow_mask = self.volumes
        np.savez_compressed(path, base=base.data, follow=follow.data, base_mask=base_mask.data,
                            follow_mask=follow_mask.data, affine=base.affine, truth=truth, rescan=rescan)
        print(f"{path.parent.parent.name} {path.stem}: saved", file=sys.stderr, flush=True)


def _prepare_recovery(data: Path, pairs: Path, params: Params, halfway: _Halfway) -> None:
    """bench/pbvc_recovery.py's cases (its 1 mm FLAIR runs; PBVC does not read the FLAIR), through the same code."""
    resources = types.SimpleNamespace(extractor=preprocess.load_brain_extractor())
    for name, kind, path, make in pbvc_recovery.cases(data):
        case = pbvc_recovery.cached(path, make)
        prepared = [pipeline.prepare_visit(pbvc_recovery.visit(case, index), params, resources) for index in range(2)]
        pbvc_recovery.measure(prepared, params)
        halfway.save(pairs / f"{path.stem}.npz", case["truth"], kind == "scan-rescan")


def _prepare_subjects(name: str, data: Path, pairs: Path, subjects: int, params: Params, halfway: _Halfway) -> None:
    """A held-out set or the check set: each visit's T1 prepared as the pipeline does, every interval to BSI."""
    _write_set(name, data, subjects)
    truths, extractor = evaluate_io.read_synth(data / "derivatives" / "truth"), preprocess.load_brain_extractor()
    for subject_dir in bids.find_subjects(data):
        patient, subject = bids.load_patient(subject_dir, params.ingest), subject_dir.name[len("sub-"):]
        visits = []
        for visit in patient.visits:  # only what measure_interval_pbvc reads
            t1 = preprocess.correct_bias(preprocess.reorient(visit.t1), params.preprocess)
            mask = preprocess.extract_brain(t1, params.preprocess, extractor=extractor)
            visits.append(types.SimpleNamespace(t1=t1, t1_brain_mask=mask, session=visit.session))
        for first, second in pipeline.interval_pairs(len(visits)):
            baseline, followup = visits[first], visits[second]
            pipeline.measure_interval_pbvc(baseline, followup, years=1.0, flair_correlation=1.0, params=params)
            truth = truths[subject].intervals[(baseline.session, followup.session)]
            halfway.save(pairs / f"sub-{subject}_{baseline.session}_{followup.session}.npz", truth["pbvc"],
                         truth["scan_rescan"])


def prepare(name: str, out: Path, subjects: int) -> None:
    data, pairs = out / name / "data", out / name / "pairs"
    pairs.mkdir(parents=True, exist_ok=True)
    with _Halfway() as halfway:
        if name == "recovery":
            _prepare_recovery(data, pairs, Params(), halfway)
        else:
            _prepare_subjects(name, data, pairs, subjects, Params(), halfway)


def measure(names: list[str], out: Path) -> None:
    params = Params().atrophy
    print("| set | pair | true PBVC % | measured % | recovery |\n|---|---|---|---|---|")
    summary = []
    for name in names:
        recoveries, errors, rescans = [], [], []
        for path in sorted((out / name / "pairs").glob("*.npz")):
            saved = np.load(path)
            volumes = [Volume(saved[key], saved["affine"], key) for key in ("base", "follow", "base_mask", "follow_mask")]
            measured = atrophy.measure_pbvc(*volumes, years=1.0, alignment_correlation=1.0, params=params).pbvc_percent
            truth = float(saved["truth"])
            recovery = measured / truth if abs(truth) >= 0.2 and not saved["rescan"] else None
            print(f"| {name} | {path.stem} | {truth:+.3f} | {measured:+.3f} | "
                  f"{'-' if recovery is None else f'{recovery:.2f}'} |", flush=True)
            (rescans if saved["rescan"] else errors).append(abs(measured - truth))
            if recovery is not None:
                recoveries.append(recovery)
        if recoveries:
            summary.append(f"- {name}: recovery median {np.median(recoveries):.2f} (range {min(recoveries):.2f}-"
                           f"{max(recoveries):.2f}), within 1.00 +- 0.05: {sum(abs(r - 1) <= 0.05 for r in recoveries)}"
                           f"/{len(recoveries)}; mean |error| {np.mean(errors):.3f} pp"
                           + (f"; scan-rescan |PBVC| {', '.join(f'{r:.3f}' for r in rescans)} %" if rescans else ""))
    print("\n" + "\n".join(summary))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("prepare", "measure"))
    parser.add_argument("sets", nargs="*", metavar="SET", help=f"one of {', '.join(SETS)}; measure: all saved")
    parser.add_argument("--subjects", type=int, default=8, help="prepare: subjects (held-out 8, check set 7; recovery: all cases)")
    parser.add_argument("--out", type=Path, default=Path("bench/work/pbvc_sets"))
    args = parser.parse_args(argv)
    if unknown := sorted(set(args.sets) - set(SETS)):
        parser.error(f"unknown set {', '.join(unknown)}: choose from {', '.join(SETS)}")
    if args.step == "prepare":
        for name in args.sets:
            prepare(name, args.out, args.subjects)
    else:
        measure(args.sets or [name for name in SETS if (args.out / name / "pairs").is_dir()], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
