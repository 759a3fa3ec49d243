"""Benchmark of `msvol cohort`: N report.json files (copies of a real one with perturbed figures), some signed
off, aggregated by the command; wall time of the whole command (process start included). Writes its section
of docs/BENCHMARKS.md between its own markers.

    python bench/cohort.py [--reports 1000] [--signed 100] [--out bench/work/cohort] [--base REPORT]

The base report is out/demo/sub-01/report.json (`make demo`) with its final/report.json when present;
otherwise the synthetic review case (msvol.synth.review_case), and then no subject is signed off.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BEGIN, END = "<!-- cohort bench: begin -->", "<!-- cohort bench: end -->"
DEMO = Path("out/demo/sub-01/report.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=1000)
    parser.add_argument("--signed", type=int, default=100, help="How many subjects get a final/report.json.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--base", type=Path, default=DEMO, help="The report.json to copy and perturb.")
    parser.add_argument("--out", type=Path, default=Path("bench/work/cohort"))
    parser.add_argument("--report", type=Path, default=Path("docs/BENCHMARKS.md"))
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from run_bench import _machine, replace_section

    base, final, origin = _base(args.base)
    out = args.out / "out"
    shutil.rmtree(args.out, ignore_errors=True)
    rng = np.random.default_rng(args.seed)
    signed = min(args.signed, args.reports) if final is not None else 0
    size = 0
    for index in range(args.reports):
        subject = f"b{index:04d}"
        report = _perturbed(base, subject, rng)
        folder = out / f"sub-{subject}"
        folder.mkdir(parents=True)
        data = (json.dumps(report, indent=2) + "\n").encode()
        (folder / "report.json").write_bytes(data)
        size += len(data)
        if index < signed:
            (folder / "final").mkdir()
            (folder / "final" / "report.json").write_text(json.dumps(_final(final, report, data), indent=2))
    load = os.getloadavg()[0]  # other work on the machine slows the timed runs; say how much there was
    command = [sys.executable, "-m", "msvol", "cohort", str(out), "--out", str(args.out / "cohort"), "--quiet"]
    seconds = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        seconds.append(time.perf_counter() - started)
    record = json.loads((args.out / "cohort" / "cohort.json").read_text())
    rows = {table: entry["rows"] for table, entry in record["tables"].items()}
    summary = record["summary"]
    assert summary["patients"] == args.reports and summary["confirmed"] == signed, summary
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [BEGIN, "## Cohort tables (`msvol cohort`)", "",
             (f"`make bench` ({dt.date.today().isoformat()}), `python bench/cohort.py --reports {args.reports} "
             f"--signed {signed}`, on {_machine()} (`nproc` {nproc}; load average {load:.1f} at the start)."),
             (f"{args.reports} report.json files ({size / 1e6:.0f} MB) copied from {origin} with perturbed PBVC, "
             f"dates, lesion volumes and new/enlarging lesions; {signed} of them with a final/report.json "
             "(confirmed figures). Timed: "
             f"`msvol cohort OUT --out DIR --quiet` as a new process, {args.repeats} runs: reading and checking "
             "every report, the four tables as TSV + JSON + Parquet, the three plots and the page."), "",
             "| measure | value |", "|---|---|",
             (f"| wall time, median (min, max) | {statistics.median(seconds):.1f} s ({min(seconds):.1f} s, "
             f"{max(seconds):.1f} s) |"),
             (f"| rows: visits / intervals / lesion findings / patients | {rows['visits']} / {rows['intervals']} / "
             f"{rows['lesions']} / {rows['patients']} |"),
             END]
    replace_section(args.report, BEGIN, END, lines)
    print("\n".join(lines[1:-1]))


def _base(path: Path) -> tuple[dict, dict | None, str]:
    """The report to copy, the final report beside it (or None) and where they came from."""
    if path.is_file():
        final_path = path.parent / "final" / "report.json"
        final = json.loads(final_path.read_text()) if final_path.is_file() else None
        return json.loads(path.read_text()), final, f"`{path}`"
    from msvol.synth.review_case import write_review_case

    with tempfile.TemporaryDirectory() as folder:
        return write_review_case(Path(folder)), None, "the synthetic review case (no `make demo` output found)"


def _perturbed(base: dict, subject: str, rng: np.random.Generator) -> dict:
    """A copy of `base` for `subject`: visits shifted by up to two years, PBVC scaled by 0-2, volumes by +-20 %,
    and all, 30 % or none of the new and enlarging lesions kept (counts follow), so shares are neither 0 nor 1."""
    report = copy.deepcopy(base)
    report["subject"] = subject
    shift = dt.timedelta(days=int(rng.integers(0, 730)))
    for timepoint in report["timepoints"]:
        timepoint["date"] = (dt.date.fromisoformat(timepoint["date"]) + shift).isoformat()
        timepoint["brain_volume_ml"] = round(timepoint["brain_volume_ml"] * rng.uniform(0.9, 1.1), 2)
    keep = rng.choice([0.0, 0.3, 1.0], p=[0.4, 0.3, 0.3])  # share of new/enlarging lesions this patient keeps
    for interval in report["intervals"]:
        scale = rng.uniform(0.0, 2.0)
        interval["pbvc_percent"] = round(interval["pbvc_percent"] * scale, 3)
        if interval["pbvc_annualized_percent"] is not None:
            interval["pbvc_annualized_percent"] = round(interval["pbvc_percent"] / interval["years"], 3)
        lesions = [lesion for lesion in interval["lesions"]
                   if lesion["status"] not in ("new", "enlarging") or rng.random() < keep]
        for status in ("new", "enlarging"):
            interval["counts"][status] = sum(lesion["status"] == status for lesion in lesions)
        for lesion in lesions:
            lesion["followup_volume_mm3"] = round(lesion["followup_volume_mm3"] * rng.uniform(0.8, 1.2), 1)
        interval["lesions"] = lesions
    return report


def _final(final: dict, report: dict, data: bytes) -> dict:
    """The base final report made to sign `report` (whose bytes are `data`)."""
    signed = copy.deepcopy(final)
    signed["subject"] = report["subject"]
    signed["automated_report"]["sha256"] = hashlib.sha256(data).hexdigest()
    signed["automated_report"]["path"] = f"sub-{report['subject']}/report.json"
    return signed


if __name__ == "__main__":
    main()
