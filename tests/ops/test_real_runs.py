"""The real pipeline in separate `msvol run` processes: two runs started together on the same input and OUT
analyse each patient once, a run killed with SIGKILL mid-patient, then rerun, writes bit-identical label
maps and the same report (apart from its timestamp) as the uninterrupted runs, and `--workers 2` (two Dask
worker processes, each loading the models) writes what the serial run writes.

Small real data: the first two visits of sample_data as two one-visit patients, resampled to 1.5 mm (the
coarsest grid ingest accepts) to keep the four runs near a minute on 2 cores. ITK and torch run one
thread each: ITK's multi-threaded affine fit to the template otherwise varies in the last digit of
normalized_brain_volume_ml between runs (the label maps do not). Skipped with MSVOL_SKIP_E2E=1, like the
end-to-end test; CI runs it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from tests.ops.test_runs import age

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "sample_data" / "sub-01"

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(os.environ.get("MSVOL_SKIP_E2E") == "1", reason="MSVOL_SKIP_E2E=1")]


def small_patient(root: Path, subject: str, session: str) -> None:
    """sample_data's visit `session` as sub-`subject` with one visit, at 1.5 mm."""
    anat = root / f"sub-{subject}" / "ses-01" / "anat"
    anat.mkdir(parents=True)
    for contrast in ("FLAIR", "T1w"):
        image = nib.load(SAMPLE / f"ses-{session}" / "anat" / f"sub-01_ses-{session}_{contrast}.nii.gz")
        data = ndimage.zoom(np.asarray(image.dataobj, np.float32), 1 / 1.5, order=1)
        affine = image.affine.copy()
        affine[:3, :3] *= 1.5
        nib.Nifti1Image(np.clip(data, 0, 255).astype(np.uint8), affine).to_filename(
            anat / f"sub-{subject}_ses-01_{contrast}.nii.gz")
    (root / f"sub-{subject}" / f"sub-{subject}_sessions.tsv").write_text(
        f"session_id\tacq_time\nses-01\t202{session[-1]}-02-11T09:00:00\n")


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, Path]:
    """(two patients, the first of them alone)."""
    both, alone = tmp_path_factory.mktemp("both") / "bids", tmp_path_factory.mktemp("alone") / "bids"
    small_patient(both, "01", "01")
    small_patient(both, "02", "02")
    small_patient(alone, "01", "01")
    age(both)
    age(alone)
    return both, alone


def msvol_run(input_path: Path, out: Path, log: Path, *options: str) -> subprocess.Popen:
    environment = dict(os.environ, MSVOL_SETTLE_MINUTES="0", ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="1",
                       OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "msvol", "run", str(input_path), "--out", str(out), "--quiet",
                             "--log-json", str(log), *options], cwd=REPO, env=environment, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def states_in(log: Path, state: str) -> list[str]:
    if not log.exists():
        return []
    return [event["exam"] for event in map(json.loads, log.read_text().splitlines()) if event["state"] == state]


def same_outputs(expected: Path, got: Path, *, exact: bool = True) -> None:
    """The same files; label maps byte for byte; reports equal apart from `generated` (and, unless `exact`,
    float rounding: a Dask worker gets cores // workers ITK threads, which can move the last digit of the
    template-normalised volume)."""
    names = sorted(path.relative_to(expected).as_posix() for path in expected.rglob("*") if path.is_file())
    assert names == sorted(path.relative_to(got).as_posix() for path in got.rglob("*") if path.is_file())
    for name in (name for name in names if name.endswith(".nii.gz")):
        assert (expected / name).read_bytes() == (got / name).read_bytes(), name
    reports = [json.loads((folder / "report.json").read_text()) for folder in (expected, got)]
    for report in reports:
        report.pop("generated")
    if not exact:
        reports = [_rounded(report) for report in reports]
    assert reports[0] == reports[1]


def _rounded(value):
    if isinstance(value, float):
        return float(f"{value:.5g}")
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    return value


def test_two_real_runs_share_the_work_and_a_killed_run_reruns_to_the_same_outputs(small, tmp_path):
    both, alone = small
    together = tmp_path / "together"
    logs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    runs = [msvol_run(both, together, log) for log in logs]
    for process in runs:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode in (0, 75), stderr
    analysed = sorted(exam for log in logs for exam in states_in(log, "running"))
    assert analysed == ["sub-01/ses-01", "sub-02/ses-01"], "each patient analysed by one of the two runs"
    assert sorted(exam for log in logs for exam in states_in(log, "done")) == analysed

    interrupted, log = tmp_path / "interrupted", tmp_path / "killed.jsonl"
    victim = msvol_run(alone, interrupted, log)
    deadline = time.monotonic() + 300
    while not states_in(log, "running") and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(4.0)  # well inside preprocessing
    assert victim.poll() is None, "the run ended before it could be killed"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert list(interrupted.glob(".sub-01.partial-*")) or not (interrupted / "sub-01").exists()
    rerun = msvol_run(alone, interrupted, tmp_path / "rerun.jsonl")
    _, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr
    assert states_in(tmp_path / "rerun.jsonl", "taken_over") == [None], "the dead run's claim was taken over"
    assert not list(interrupted.glob(".sub-*")), "its staging folder was swept"

    same_outputs(together / "sub-01", interrupted / "sub-01")

    on_dask, dask_log = tmp_path / "dask", tmp_path / "dask.jsonl"
    workers = msvol_run(both, on_dask, dask_log, "--workers", "2")
    _, stderr = workers.communicate(timeout=600)
    assert workers.returncode == 0, stderr
    assert sorted(states_in(dask_log, "done")) == analysed
    for subject in ("sub-01", "sub-02"):
        same_outputs(together / subject, on_dask / subject, exact=False)
