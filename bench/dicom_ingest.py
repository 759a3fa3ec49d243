"""`make bench`, DICOM part: how long ingest takes for one PACS exam of about 1000 files (target < 10 s).

Builds an exam with msvol.synth.dicom from a synthetic patient (200 slices per 3D series at
1 mm): 3D FLAIR, 3D T1, a post-contrast 3D T1, a 3D T2, a localiser, a 2D FLAIR and a DWI with
four b-values. Times `ingest_dicom.scan` (every header, grouping, protocol checks) and
`ingest_dicom.load_patient` (decoding the chosen FLAIR and T1 with SimpleITK), best of three,
for classic single-frame files, the same exam as enhanced multi-frame files, and the 3D series
RLE-compressed. Writes its section of docs/BENCHMARKS.md between its own markers.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pydicom

from msvol.config import IngestParams
from msvol.datatypes import Volume
from msvol.ingest import dicom as ingest_dicom, protocol
from msvol.synth import dicom as synth_dicom, patients

BEGIN, END = "<!-- dicom ingest bench: begin -->", "<!-- dicom ingest bench: end -->"
IDENTITY = synth_dicom.ExamIdentity("BENCH0001", "Bench^Patient", "19700101", dt.date(2024, 1, 15))


def _volumes(seed: int) -> tuple[Volume, Volume]:
    """A synthetic patient's first visit cropped or padded to 200 x 200 x 200 at 1 mm, integer-valued."""
    visit = patients.generate_patient(seed, patients.SynthSettings(n_visits=1))["visits"][0]

    def cube(image: np.ndarray, affine: np.ndarray, kind: str) -> Volume:
        data = np.zeros((200, 200, 200), np.float32)
        size = [min(200, n) for n in image.shape]
        data[:size[0], :size[1], :size[2]] = np.round(1000 * image[:size[0], :size[1], :size[2]])
        return Volume(data, affine, kind)

    return cube(visit["flair"], visit["flair_affine"], "FLAIR"), cube(visit["t1"], visit["t1_affine"], "T1w")


def _write_exam(folder: Path, flair: Volume, t1: Volume, *, multiframe: bool, compress: bool) -> int:
    vendor = synth_dicom.VENDORS["siemens"]
    written = synth_dicom.write_exam(folder, IDENTITY, vendor, flair=flair, t1=t1,
                                     extras=("localizer", "flair_2d"), multiframe=multiframe, compress=compress)
    frame_of_reference = pydicom.dcmread(written["flair"][0], stop_before_pixels=True).FrameOfReferenceUID
    study = folder / "STUDY"
    post = dataclasses.replace(vendor.t1, description="t1_mprage_sag_p2_iso_post_gd")
    t2 = dataclasses.replace(vendor.flair, description="t2_spc_sag_p2_iso", inversion_time_ms=None)
    extra = [synth_dicom.write_series(t1, study / "SERIES009", IDENTITY, vendor, post, series_number=9,
                                      multiframe=multiframe, compress=compress,
                                      frame_of_reference_uid=frame_of_reference),
             synth_dicom.write_series(flair, study / "SERIES006", IDENTITY, vendor, t2, series_number=6,
                                      multiframe=multiframe, compress=compress,
                                      frame_of_reference_uid=frame_of_reference),
             synth_dicom.write_dwi(flair, study / "SERIES007", IDENTITY, vendor, series_number=7,
                                   b_values=(0, 500, 1000, 2000), frame_of_reference_uid=frame_of_reference)]
    return sum(len(files) for files in written.values()) + sum(len(files) for files in extra)


def _time_ingest(folder: Path, repeats: int = 3) -> tuple[float, float]:
    rules, limits = protocol.load_protocol(), IngestParams()
    scans, loads = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        inventory = ingest_dicom.scan([folder], rules, limits)
        scans.append(time.perf_counter() - started)
        (exams,) = inventory.patients.values()
        assert exams[0].refusal is None, exams[0].refusal
        started = time.perf_counter()
        ingest_dicom.load_patient(exams, "bench", limits)
        loads.append(time.perf_counter() - started)
    return min(scans), min(loads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/work/dicom"))
    parser.add_argument("--report", type=Path, default=Path("docs/BENCHMARKS.md"))
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from run_bench import _machine, replace_section

    flair, t1 = _volumes(seed=510)
    rows = []
    for name, multiframe, compress in (("classic single-frame, uncompressed", False, False),
                                       ("enhanced multi-frame, uncompressed", True, False),
                                       ("classic single-frame, RLE lossless", False, True)):
        folder = args.out / name.replace(" ", "_").replace(",", "")
        shutil.rmtree(folder, ignore_errors=True)
        started = time.perf_counter()
        files = _write_exam(folder, flair, t1, multiframe=multiframe, compress=compress)
        written = time.perf_counter() - started
        scan, load = _time_ingest(folder)
        rows.append((name, files, scan, load))
        print(f"{name}: {files} files (written in {written:.1f} s); scan {scan:.2f} s, load {load:.2f} s",
              file=sys.stderr)
    lines = [BEGIN, "## DICOM ingest (one exam)", "",
             f"`make bench` ({dt.date.today().isoformat()}), `python bench/dicom_ingest.py`, on {_machine()}.",
             "One synthetic exam with 200 slices of 200 x 200 per 3D series (FLAIR, T1, post-contrast T1, T2), a "
             "localiser, a 2D FLAIR and a 4-b-value DWI. Best of three runs. *Scan* reads every header, groups "
             "series and applies the protocol checks (what `msvol check` does); *load* decodes the chosen FLAIR and "
             "T1 with SimpleITK. The files were just written, so they are read from the OS file cache; a cold read "
             "from a network share adds the transfer time. Target: under 10 s per exam on 2 cores.", "",
             "| exam files | files | scan (s) | load (s) | total (s) |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {files} | {scan:.2f} | {load:.2f} | {scan + load:.2f} |" for name, files, scan, load in rows]
    lines.append(END)
    replace_section(args.report, BEGIN, END, lines)


if __name__ == "__main__":
    main()
