"""A quick, deterministic stand-in for pipeline.run_patient, for the batch tests that need whole processes.

`run_patient` reads the visits ingest loaded, sends the real pipeline's stage messages (pausing
STAGE_S seconds each, so a test can kill the process mid-patient), and writes through the real
pipeline._write_atomically (staging folder, then the swap): label maps computed from the FLAIR
(bit-identical whenever the input is), and a report.json with a "generated" timestamp (the one field
allowed to differ between two runs).

`worker_plugin()` installs it in the worker processes of a Dask cluster (tests/ops/test_dask.py, bench/throughput.py).
Run as a module, it is `msvol run` with this stand-in, for a subprocess:
    python -m tests.ops.quick_pipeline INPUT --out OUT [msvol run options]
MSVOL_TEST_STAGE_S sets the pause; MSVOL_TEST_KILL="<point>:<subject>" makes the process kill itself
with SIGKILL at that point of that subject's work (KILL_POINTS), as `kill -9` from outside would.
MSVOL_TEST_CRASH="<subject>" makes run_patient raise for that subject (an internal error).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from msvol import pipeline
from msvol.datatypes import Volume
from msvol.errors import OutputExistsError

# where MSVOL_TEST_KILL may strike: during a stage; with the staging folder written, before the swap; between
# the two renames of the swap; after the swap, before the old result is deleted or kept; after the result is in
# place, before the batch records it; while the batch registers the reports in the findings store
KILL_POINTS = ("stage", "staged", "mid_swap", "after_swap", "written", "register")


def _kill_here(point: str, subject: str) -> None:
    if os.environ.get("MSVOL_TEST_KILL") == f"{point}:{subject}":
        os.kill(os.getpid(), signal.SIGKILL)


def run_patient(patient, out_dir, params, resources, *, force=False, progress=lambda message: None,
                timings=None, keep_previous=None):
    name = f"sub-{patient.subject}"
    if os.environ.get("MSVOL_TEST_CRASH") == name:
        raise RuntimeError(f"simulated internal error in {name}")
    final = Path(out_dir) / name
    if final.exists() and not force:
        raise OutputExistsError(f"{final}: a result is already there")
    pause = float(os.environ.get("MSVOL_TEST_STAGE_S", "0.05"))
    files, timepoints = {}, []
    for visit in patient.visits:
        for stage in ("preprocessing", "segmenting lesions", "done"):
            progress(f"{name} ses-{visit.session}: {stage}")
            time.sleep(pause)
            _kill_here("stage", name)
        flair = np.asarray(visit.flair.data)
        labels = (flair > np.median(flair)).astype(np.int32)
        files[visit.session] = {"lesions": (f"ses-{visit.session}/lesions.nii.gz",
                                            Volume(labels, visit.flair.affine, "labels"))}
        timepoints.append({"session": visit.session, "date": visit.date.isoformat(),
                           "lesion_voxels": int(labels.sum())})
    for first, second in pipeline.interval_pairs(len(patient.visits)):
        progress(f"{name}: interval ses-{patient.visits[first].session} -> ses-{patient.visits[second].session}")
    report = {"subject": patient.subject, "generated": dt.datetime.now(dt.timezone.utc).isoformat(),
              "software": {"version": "test"}, "intervals": [], "timepoints": timepoints,
              "qc_flags": [{"code": flag.code, "scope": flag.scope, "message": flag.message}
                           for flag in patient.ingest_flags]}
    pipeline._write_atomically(final, {"report.json": json.dumps(report, indent=1)}, files, force=force,
                               keep_previous=keep_previous)
    _kill_here("written", name)
    return final


def _install_kill_hooks() -> None:
    """Kill points inside the real atomic writer and the batch: wrap Path.rename, shutil.rmtree, registration."""
    import shutil

    from msvol.review import findings

    if not os.environ.get("MSVOL_TEST_KILL"):
        return
    subject = os.environ["MSVOL_TEST_KILL"].split(":", 1)[1]
    rename, rmtree, register = Path.rename, shutil.rmtree, findings.register_report
    swapping = []  # _write_atomically: final -> retired, staging -> final, then the retired one goes

    def checked_rename(self, destination):
        source = Path(self).name
        if source == subject and pipeline.RETIRED in Path(destination).name:
            _kill_here("staged", subject)
            swapping.append(True)
        elif source.startswith(f".{subject}{pipeline.STAGING}"):
            _kill_here("mid_swap" if swapping else "staged", subject)
        elif source.startswith(f".{subject}{pipeline.RETIRED}"):
            _kill_here("after_swap", subject)
        return rename(self, destination)

    def checked_rmtree(path, *args, **kwargs):
        if Path(path).name.startswith(f".{subject}{pipeline.RETIRED}"):
            _kill_here("after_swap", subject)
        return rmtree(path, *args, **kwargs)

    def checked_register(store, report_path):
        if Path(report_path).parent.name == subject:
            _kill_here("register", subject)
        return register(store, report_path)

    Path.rename, shutil.rmtree, findings.register_report = checked_rename, checked_rmtree, checked_register


def install(monkeypatch=None) -> None:
    """Replace Resources.load and run_patient (through `monkeypatch` in a test, for good in a subprocess)."""
    def load(model_dir=None, change_model_dir=None):
        return None

    if monkeypatch is None:
        pipeline.Resources.load, pipeline.run_patient = staticmethod(load), run_patient
    else:
        monkeypatch.setattr(pipeline.Resources, "load", staticmethod(load))
        monkeypatch.setattr(pipeline, "run_patient", run_patient)


def worker_plugin():
    """A dask.distributed worker plugin that installs the stand-in in each worker process (for --scheduler)."""
    from distributed import WorkerPlugin

    class QuickPipeline(WorkerPlugin):
        name = "quick-pipeline"

        def setup(self, worker=None):
            install()

    return QuickPipeline()


if __name__ == "__main__":
    install()
    _install_kill_hooks()
    from msvol.cli import main

    main(["run", *sys.argv[1:]], prog_name="msvol")
