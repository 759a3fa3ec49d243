"""`make bench-heldout` (last step): msvol on the independent check set, and the issue-12 figures of
every held-out set in one table, written into docs/BENCHMARKS.md.

Generates the check set (msvol.synth.checkset: 6 change subjects and one scan-rescan subject, two
visits each; kept when already there), runs the default pipeline (`msvol run` settings: fused with the
change model) on it, scores it with msvol.evaluate and prints the table. With --report FILE, also
replaces the section between the check-set markers of FILE with: the command, the machine, and one row
per set: the check set, and the held-out sets of bench/heldout.py found under --heldout (their
fused.json / independent.json).
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

from msvol import evaluate, pipeline
from msvol.config import Params
from msvol.errors import InputError
from msvol.ingest import bids
from msvol.synth import checkset

BEGIN, END = "<!-- check set bench: begin -->", "<!-- check set bench: end -->"
ROOT = Path(__file__).resolve().parents[1]


def run(out: Path, subjects: int | None, *, seed: int = checkset.CHECKSET_SEED, params: Params | None = None) -> dict:
    """Write the check set of `seed` (kept when there) into OUT/data, run msvol with `params` (default: `msvol
    run`'s) into OUT/fused, score it into OUT/fused.json; returns the summary (also OUT/summary.json)."""
    designs = checkset.default_designs(seed)[:subjects] if subjects else checkset.default_designs(seed)
    data = out / "data"
    started = time.perf_counter()
    checkset.write_checkset(data, designs, seed=seed, log=lambda message: print(message, file=sys.stderr, flush=True))
    generation_seconds = time.perf_counter() - started
    params, resources = params or Params(), pipeline.Resources.load()
    seconds, set_aside = {}, {}
    for design in designs:
        subject_dir = data / f"sub-{design.subject}"
        print(f"check set: msvol on {subject_dir.name}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            pipeline.run_patient(bids.load_patient(subject_dir, params.ingest), out / "fused", params, resources,
                                 force=True)
        except InputError as exc:  # refused, as `msvol run` would set it aside
            set_aside[subject_dir.name] = str(exc)
            print(f"set aside {subject_dir.name}: {exc}", file=sys.stderr, flush=True)
            continue
        seconds[subject_dir.name] = round(time.perf_counter() - started, 1)
    result = evaluate.evaluate(out / "fused", data)
    (out / "fused.json").write_text(json.dumps(result, indent=2))
    print(evaluate.render_table(result))
    summary = {"subjects": [design.subject for design in designs], "set_aside": set_aside,
               "generation_seconds": round(generation_seconds, 1), "pipeline_seconds_per_subject": seconds,
               "peak_memory_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _cell(value, digits=2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def row(name: str, method: str, overall: dict) -> str:
    """One table row of an msvol.evaluate overall block."""
    bins = overall["new_by_size"]
    by_size = " / ".join(f"{b['reported']}/{b['truth']} ({b['reported_or_candidate']})" for b in bins.values())
    rescan = "-"
    if overall["scan_rescan_pairs"]:
        rescan = (f"{overall['scan_rescan_max_abs_count_difference']} / "
                  f"{_cell(overall['scan_rescan_max_abs_volume_difference_percent'], 1)} % / "
                  f"{_cell(overall['scan_rescan_mean_abs_pbvc_percent'])} %")
    return (f"| {name} | {method} | {overall['scans']} | {overall['pairs']} | {_cell(overall['mean_dice'])} "
            f"({_cell(overall['min_dice'])}-{_cell(overall['max_dice'])}) | {by_size} | "
            f"{_cell(overall['new_sensitivity'])} ({_cell(overall['new_sensitivity_or_candidate'])}) | "
            f"{_cell(overall['new_sensitivity_below_100'])} ({_cell(overall['new_sensitivity_or_candidate_below_100'])}) | "
            f"{_cell(overall['mean_false_new_per_pair'])} | {_cell(overall['mean_candidates_per_pair'])} | "
            f"{overall['detected_enlarging']}/{overall['truth_enlarging']} | "
            f"{_cell(overall['mean_false_enlarging_per_pair'])} ({overall['false_enlarging_dont_count']}) | "
            f"{_cell(overall['mean_false_shrinking_resolved_per_pair'])} | "
            f"{_cell(overall['median_pbvc_recovery'])} ({_cell(overall['min_pbvc_recovery'])}-"
            f"{_cell(overall['max_pbvc_recovery'])}) | {rescan} |")


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return f"{cpu}, nproc {os.cpu_count()}, {memory_gb:.0f} GB RAM, {platform.system()} {platform.release()}, CPU only"


def markdown(out: Path, heldout: Path, command: str, code: str | None = None) -> str:
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, check=False,
                            text=True).stdout.strip() or "unknown"
    code = code or f"commit {commit}"
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    lines = [BEGIN, "## Independent check set and held-out sets: issue-12 figures (`make bench-heldout`)", "",
             f"Measured {dt.date.today().isoformat()} with `{command}` (check set) after `bench/heldout.py` "
             f"(held-out sets), code: {code}. Machine: {machine()}.", "",
             "All data synthetic (docs/MODEL.md, \"What each evaluation set is evidence of\"). New lesions per "
             "truth-volume bin <30 / 30-100 / 100-500 / >500 mm3: reported/truth (reported or candidate). "
             "Candidates are 'possible new lesion' findings (report.json lesions of status possible_new, or "
             "intervals[].candidates); with none, reported-or-candidate equals reported. False enlarging in "
             "brackets: of them, on a merger or a growth below the measurement noise. PBVC recovery = measured / "
             "true, pairs with |true| >= 0.2 %. Scan-rescan: max |lesion count difference| / max |lesion "
             "volume difference| / mean |PBVC|.", "",
             "| set | method | scans | pairs | Dice mean (range) | new by size: rep/truth (rep. or cand.) | "
             "new sens. (or cand.) | new sens. <100 mm3 (or cand.) | false new per pair | candidates per pair | "
             "enlarging found | false enlarging per pair | false shrinking/resolved per pair | PBVC recovery "
             "median (range) | scan-rescan count / volume / abs PBVC |", "|" + "---|" * 15]
    rows = [("check set", "fused", out / "fused.json")]
    for preset in ("standard", "shifted"):
        run_summary = heldout / preset / "summary.json"
        name = f"held-out {preset}"
        if run_summary.is_file():
            facts = json.loads(run_summary.read_text())
            name += f", seeds {facts['first_seed']}-{facts['first_seed'] + facts['subjects'] - 1}"
        rows += [(name, method, heldout / preset / f"{method}.json") for method in ("fused", "independent")]
    for name, method, path in rows:
        overall = json.loads(path.read_text())["overall"] if path.is_file() else {}
        if "new_by_size" in overall:  # scored by this msvol.evaluate (older results lack the figures)
            lines.append(row(name, method, overall))
    if summary:
        per_subject = summary["pipeline_seconds_per_subject"]
        generation = (f"{summary['generation_seconds']:.0f} s" if summary["generation_seconds"] >= 1
                      else "reused from an earlier run")
        lines += ["", f"Check set: subjects {', '.join(summary['subjects'])}; generation "
                  f"{generation}; pipeline per subject (one pair) "
                  f"{', '.join(f'{name} {seconds:.0f} s' for name, seconds in per_subject.items())}; "
                  f"set aside: {summary['set_aside'] or 'none'}."]
    return "\n".join(lines + [END]) + "\n"


def write_report(path: Path, section: str) -> None:
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + section + text[text.index(END) + len(END) + 1:]
    else:
        marker = "<!-- dicom ingest bench: begin -->"
        text = text.replace(marker, section + "\n" + marker) if marker in text else text + "\n" + section
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_text(text)
    temporary.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/work/checkset"))
    parser.add_argument("--heldout", type=Path, default=Path("bench/work/heldout"),
                        help="bench/heldout.py's output folder, for the held-out rows of the table")
    parser.add_argument("--subjects", type=int, help="only the first N check-set subjects (a quick try)")
    parser.add_argument("--report", type=Path, help="write the section into this markdown file")
    parser.add_argument("--markdown", action="store_true", help="only print (and --report) the finished results")
    parser.add_argument("--code", help="what code was measured, for the report (default: the git commit)")
    args = parser.parse_args()
    if not args.markdown:
        print(json.dumps(run(args.out, args.subjects), indent=2))
    command = "python bench/checkset.py" + (f" --subjects {args.subjects}" if args.subjects else "")
    section = markdown(args.out, args.heldout, command, args.code)
    print(section)
    if args.report:
        write_report(args.report, section)


if __name__ == "__main__":
    main()
