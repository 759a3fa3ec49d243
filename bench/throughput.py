"""`make bench`: batch throughput of `msvol run` (issue 13): pairs per hour and peak memory per worker, and the
scheduling overhead per exam.

1. Real pairs: --patients synthetic patients (msvol synth, two visits each, seeds 520+, never training seeds)
   through the real pipeline, as `msvol run` processes: one after the other (the default), then
   `--workers 1` and `--workers 2` (Dask LocalCluster; cluster start-up included). The resident memory of
   every process of the run is sampled every 0.2 s: the peak of the largest one is the peak per worker.
2. Dry run: --dry-patients small BIDS patients (tests/builders.py, two sessions each) through the stand-in
   pipeline of tests/ops/quick_pipeline.py (no analysis; the real discovery, exam states, claims, atomic
   writes and findings store): what the batch machinery costs per exam, serially and on a 2-worker Dask
   cluster (`--scheduler`), and for a second run that finds nothing new (the cron case).

    python bench/throughput.py [--patients 4] [--dry-patients 100] [--out bench/work/throughput]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.builders and tests.ops.quick_pipeline
FIRST_SEED = 520
BEGIN, END = "<!-- throughput bench: begin -->", "<!-- throughput bench: end -->"


class PeakMemory:
    """Peak resident memory of each process of a run (the command and all its descendants), sampled."""

    def __init__(self, process: subprocess.Popen, interval_s: float = 0.2):
        self.peaks: dict[int, int] = {}
        self._process, self._interval = psutil.Process(process.pid), interval_s
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while True:
            try:
                processes = [self._process, *self._process.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for process in processes:
                try:
                    rss = process.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
                self.peaks[process.pid] = max(rss, self.peaks.get(process.pid, 0))
            time.sleep(self._interval)

    def stop(self) -> None:
        self._thread.join(timeout=2)


def timed_run(command: list[str], environment: dict | None = None) -> tuple[float, dict[int, int]]:
    """Run `command`, return (wall seconds, peak RSS per process); a failure stops the bench."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env={**os.environ, **(environment or {})}, cwd=ROOT)
    memory = PeakMemory(process)
    code = process.wait()
    seconds = time.perf_counter() - started
    memory.stop()
    if code != 0:
        raise SystemExit(f"{' '.join(command)} exited with {code}")
    return seconds, memory.peaks


def msvol_run(data: Path, out: Path, *options: str, stand_in: bool = False) -> list[str]:
    """`msvol run` as a new process; with `stand_in`, tests/ops/quick_pipeline.py's (which adds "run" itself)."""
    command = ["tests.ops.quick_pipeline"] if stand_in else ["msvol", "run"]
    return [sys.executable, "-m", *command, str(data), "--out", str(out), "--settle-minutes", "0",
            "--quiet", *options]


PAIR_MODES = {"serial": ("one after the other (default)", ()), "workers-1": ("--workers 1", ("--workers", "1")),
              "workers-2": ("--workers 2", ("--workers", "2"))}


def real_pairs(args) -> list[dict]:
    """Measure the --modes, keep every mode's row in OUT/pairs.json (a mode not measured now keeps its row)."""
    data = args.out / "data"
    if not data.exists():
        subprocess.run([sys.executable, "-m", "msvol", "synth", str(data), "--subjects", str(args.patients),
                        "--visits", "2", "--seed", str(FIRST_SEED), "--quiet"], check=True, cwd=ROOT)
    stored = args.out / "pairs.json"
    rows = json.loads(stored.read_text()) if stored.exists() else {}
    for mode in args.modes:
        label, options = PAIR_MODES[mode]
        out = args.out / "runs" / mode
        shutil.rmtree(out, ignore_errors=True)
        seconds, peaks = timed_run(msvol_run(data, out, *options))
        done = len(list(out.glob("sub-*/report.json")))
        if done != args.patients:
            raise SystemExit(f"{label}: {done} of {args.patients} reports written")
        rows[mode] = {"mode": label, "pairs": done, "seconds": seconds, "pairs_per_hour": 3600 * done / seconds,
                      "peak_gb": max(peaks.values()) / 1e9, "processes": len(peaks),
                      "load": os.getloadavg()[0], "date": dt.date.today().isoformat()}
        print(rows[mode], flush=True)
        stored.write_text(json.dumps(rows, indent=1))
    return [rows[mode] for mode in PAIR_MODES if mode in rows]


def dry_runs(args) -> list[dict]:
    from dask.distributed import Client, LocalCluster

    from tests.builders import write_subject
    from tests.ops import quick_pipeline

    data = args.out / f"dry-{args.dry_patients}"
    if not data.exists():
        for index in range(1, args.dry_patients + 1):
            write_subject(data, f"{index:03d}")
    exams = 2 * args.dry_patients
    stand_in = {"MSVOL_TEST_STAGE_S": "0"}
    rows = []

    def measure(label: str, out: Path, *options: str) -> None:
        seconds, _ = timed_run(msvol_run(data, out, *options, stand_in=True), stand_in)
        rows.append({"mode": label, "exams": exams, "seconds": seconds, "ms_per_exam": 1000 * seconds / exams})
        print(rows[-1], flush=True)

    shutil.rmtree(args.out / "dry-out", ignore_errors=True)  # a first run must find nothing done
    serial = args.out / "dry-out" / "serial"
    measure("one after the other: first run", serial)
    measure("one after the other: second run, nothing new", serial)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.register_plugin(quick_pipeline.worker_plugin())
        on_dask = args.out / "dry-out" / "dask"
        measure("Dask, 2 workers (--scheduler): first run", on_dask, "--scheduler", cluster.scheduler_address)
        measure("Dask, 2 workers: second run, nothing new", on_dask, "--scheduler", cluster.scheduler_address)
    return rows


def report(args, pairs: list[dict], dry: list[dict]) -> None:
    from run_bench import _machine, replace_section

    lines = [BEGIN, "## Batch throughput (`msvol run`, issue 13)", "",
             f"`make bench` ({dt.date.today().isoformat()}), `python bench/throughput.py --patients {args.patients} "
             f"--dry-patients {args.dry_patients}`, on {_machine()} (`nproc` {os.cpu_count()}; load average "
             f"{os.getloadavg()[0]:.1f} at the end).", "",
             f"Real pairs: {args.patients} msvol synth patients (seeds {FIRST_SEED}-{FIRST_SEED + args.patients - 1}, "
             "184 x 220 x 188 at 1 mm, FLAIR + T1, two visits), the whole pipeline and report per patient, "
             "`msvol run DATA --out OUT --settle-minutes 0` into an empty OUT, as a new process (model loading and, for "
             "--workers, the cluster's start-up included). Peak memory: the largest resident set of any process "
             "of the run (the Dask worker's for --workers), sampled every 0.2 s. Targets: one pair <= 60 s on 2 "
             "cores, <= 4 GB per worker.", "",
             "| mode | pairs | wall s | s per pair | pairs per hour | peak GB per process |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['mode']} | {r['pairs']} | {r['seconds']:.0f} | {r['seconds'] / r['pairs']:.1f} | "
              f"{r['pairs_per_hour']:.0f} | {r['peak_gb']:.2f} |" for r in pairs]
    lines += ["", f"Dry run: {args.dry_patients} small BIDS patients (two sessions each, {2 * args.dry_patients} "
              "exams) through tests/ops/quick_pipeline.py's stand-in (no analysis; real discovery, states, claims, "
              "atomic writes, findings store on SQLite), as a new process; the Dask rows on a 2-worker "
              "LocalCluster started beforehand (`--scheduler`).", "",
              "| mode | exams | wall s | ms per exam |", "|---|---|---|---|"]
    lines += [f"| {r['mode']} | {r['exams']} | {r['seconds']:.1f} | {r['ms_per_exam']:.0f} |" for r in dry]
    lines.append(END)
    replace_section(args.report, BEGIN, END, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=4)
    parser.add_argument("--dry-patients", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("bench/work/throughput"))
    parser.add_argument("--report", type=Path, default=Path("docs/BENCHMARKS.md"))
    parser.add_argument("--modes", nargs="*", choices=list(PAIR_MODES), default=list(PAIR_MODES),
                        help="real-pair modes to measure (others keep their row from an earlier run); none: dry run only")
    args = parser.parse_args()
    args.out = args.out.resolve()
    dry = dry_runs(args)
    pairs = real_pairs(args)
    report(args, pairs, dry)


if __name__ == "__main__":
    main()
