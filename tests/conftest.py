"""Shared fixtures: tiny volumes on a known affine, and spheres at known centres.

The fixtures return factories (session scope, so hypothesis tests may use them too).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from msvol.datatypes import Volume


def _affine(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Axis-aligned RAS+ affine: voxel (i, j, k) -> origin + spacing * (i, j, k) mm."""
    affine = np.diag([*map(float, spacing), 1.0])
    affine[:3, 3] = origin
    return affine


def _ball(shape, centre, radius) -> np.ndarray:
    """Boolean mask of the voxels whose centre lies within `radius` voxels of `centre` (inclusive)."""
    axes = np.ogrid[tuple(slice(0, n) for n in shape)]
    distance2 = sum((axis - float(c)) ** 2 for axis, c in zip(axes, centre))
    return distance2 <= float(radius) ** 2


def _volume(data, affine=None, kind="probability") -> Volume:
    return Volume(np.asarray(data), _affine() if affine is None else np.asarray(affine, float), kind)


@pytest.fixture(autouse=True, scope="session")
def settled_inputs():
    """Test data is written a moment before `msvol run` reads it: without this, the default quiet period
    (--settle-minutes 5, docs/OPERATIONS.md) would leave every exam "settling". Tests of settling pass
    --settle-minutes (or BatchSettings) explicitly, which wins over the environment. Session scope: the
    module-scoped runs of the end-to-end test are set up before any function-scoped fixture."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MSVOL_SETTLE_MINUTES", "0")
        yield


@pytest.fixture(scope="session")
def make_affine():
    return _affine


@pytest.fixture(scope="session")
def ball():
    return _ball


@pytest.fixture(scope="session")
def make_volume():
    return _volume


@pytest.fixture
def pipeline_calls(monkeypatch) -> list:
    """Replace Resources.load and run_patient: each patient reaching the pipeline is recorded, and its folder
    gets a report.json listing its sessions (what batch reads to tell a finished result)."""
    from msvol import pipeline

    record = []

    def run_patient(patient, out_dir, params, resources, **options):
        record.append(patient)
        folder = Path(out_dir) / f"sub-{patient.subject}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "report.json").write_text(json.dumps(  # what batch reads, and what the findings store registers
            {"subject": patient.subject, "software": {"version": "test"}, "intervals": [],
             "timepoints": [{"session": visit.session, "date": visit.date.isoformat()} for visit in patient.visits]}))
        return folder

    monkeypatch.setattr(pipeline.Resources, "load", staticmethod(lambda model_dir=None, change_model_dir=None: None))
    monkeypatch.setattr(pipeline, "run_patient", run_patient)
    return record
