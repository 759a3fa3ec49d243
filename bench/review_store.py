"""Benchmark of the findings store and the review API: store size per 100 subjects, API latency per decision
and per sign-off (HTML + PDF), on synthetic review cases (msvol.synth.review_case: 6 lesion findings and a
PBVC per subject). Writes its section of docs/BENCHMARKS.md between its own markers.

    python bench/review_store.py [--subjects 100] [--out bench/work/review] [--db URL]
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import statistics
import sys
import time
from pathlib import Path

from fastapi.testclient import TestClient

from msvol.review import api, findings
from msvol.review.store import open_store
from msvol.synth.review_case import write_review_case

BEGIN, END = "<!-- review store bench: begin -->", "<!-- review store bench: end -->"
TOKEN = "bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=100)
    parser.add_argument("--signoffs", type=int, default=10, help="How many of the subjects are signed off.")
    parser.add_argument("--out", type=Path, default=Path("bench/work/review"))
    parser.add_argument("--db", help="Database URL (default SQLite in OUT).")
    parser.add_argument("--report", type=Path, default=Path("docs/BENCHMARKS.md"))
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from run_bench import _machine, replace_section

    shutil.rmtree(args.out, ignore_errors=True)
    subjects = [f"b{index:04d}" for index in range(args.subjects)]
    for subject in subjects:
        write_review_case(args.out, subject)
    store = open_store(args.out, args.db)
    started = time.perf_counter()
    findings.register_all(store)
    register_s = time.perf_counter() - started
    client = TestClient(api.create_app(store, TOKEN), base_url="http://127.0.0.1")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    decision_ms, signoff_ms = [], []
    for index, subject in enumerate(subjects):
        version = client.get(f"/api/subjects/{subject}", headers=headers).json()["version"]
        for finding, body in (("01-02:L1", {"action": "confirm"}), ("01-02:L2", {"action": "reject", "reason": "artefact"}),
                              ("01-02:L3", {"action": "reclassify", "status": "enlarging"}),
                              ("01-02:L4", {"action": "confirm"}), ("01-02:PBVC", {"action": "accept"})):
            started = time.perf_counter()
            response = client.post(f"/api/subjects/{subject}/findings/{finding}/decision", headers=headers,
                                   json={"reviewer": "Bench", "version": version, **body})
            decision_ms.append((time.perf_counter() - started) * 1000)
            version = response.json()["version"]
        if index < args.signoffs:
            started = time.perf_counter()
            response = client.post(f"/api/subjects/{subject}/signoff", headers=headers,
                                   json={"reviewer": "Bench", "version": version})
            signoff_ms.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, response.text
    size = (args.out / "msvol.db").stat().st_size if args.db is None else None
    store.dispose()
    lines = [BEGIN, "## Findings store and review API", "",
             f"`make bench` ({dt.date.today().isoformat()}), `python bench/review_store.py --subjects {args.subjects}`, "
             f"on {_machine()}; {'SQLite in OUT' if args.db is None else 'the database given by --db'}.",
             f"{args.subjects} synthetic review cases (`msvol.synth.review_case`: 6 lesion findings and a PBVC each), "
             "five decisions per subject through FastAPI's TestClient (in-process HTTP, no network), "
             f"{args.signoffs} sign-offs (final report.json, report.html and the WeasyPrint PDF).", "",
             "| measure | value |", "|---|---|",
             f"| registration of {args.subjects} reports | {register_s:.2f} s |",
             f"| decision latency, median (max) | {statistics.median(decision_ms):.1f} ms "
             f"({max(decision_ms):.1f} ms) |",
             f"| sign-off latency incl. PDF, median (max) | {statistics.median(signoff_ms):.0f} ms "
             f"({max(signoff_ms):.0f} ms) |"]
    if size is not None:
        lines.append(f"| store size per 100 subjects (with 5 decisions each) | "
                     f"{size / 1e6 * 100 / args.subjects:.2f} MB |")
    lines.append(END)
    print("\n".join(lines[7:-1]), file=sys.stderr)
    replace_section(args.report, BEGIN, END, lines)


if __name__ == "__main__":
    main()
