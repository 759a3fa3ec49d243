"""The one end-to-end test: `msvol run sample_data` through the CLI, checked against the sample truth.

Takes a few minutes on 2 cores; skip locally with MSVOL_SKIP_E2E=1 (CI always runs it).
"""

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from msvol.cli import main

SAMPLE = Path(__file__).parents[1] / "sample_data"
TRUTH = SAMPLE / "derivatives" / "truth" / "sub-01" / "sub-01_truth.json"

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(os.environ.get("MSVOL_SKIP_E2E") == "1", reason="MSVOL_SKIP_E2E=1")]


@pytest.fixture(scope="module")
def run_output(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e")
    result = CliRunner().invoke(main, ["run", str(SAMPLE), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return out, result


def test_output_contract(run_output):
    out, result = run_output
    subject = out / "sub-01"
    assert f"report: {subject / 'report.html'}" in result.output
    report = json.loads((subject / "report.json").read_text())
    assert report["schema_version"] and report["subject"] == "01"
    assert [t["session"] for t in report["timepoints"]] == ["01", "02", "03"]
    assert [(i["from_session"], i["to_session"]) for i in report["intervals"]] == [("01", "02"), ("02", "03"),
                                                                                    ("01", "03")]
    for timepoint in report["timepoints"]:
        native = nib.load(next((SAMPLE / "sub-01" / f"ses-{timepoint['session']}" / "anat").glob("*_FLAIR.nii.gz")))
        labels = nib.load(subject / f"ses-{timepoint['session']}" / "lesions.nii.gz")
        assert labels.shape == native.shape and np.allclose(labels.affine, native.affine)
    for interval in report["intervals"]:
        assert all(isinstance(v, int) for v in interval["counts"].values())
        folder = subject / "intervals" / f"ses-{interval['from_session']}_to_ses-{interval['to_session']}"
        for status in ("new", "enlarging"):
            values = set(np.unique(np.asarray(nib.load(folder / f"{status}_lesions.nii.gz").dataobj))) - {0}
            assert values == {lesion["id"] for lesion in interval["lesions"] if lesion["status"] == status}
    csv_lines = (subject / "intervals.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 1 + len(report["intervals"])
    html = (subject / "report.html").read_text()
    assert "awaiting radiologist confirmation" in html


def test_numbers_match_sample_truth(run_output):
    out, _ = run_output
    report = json.loads((out / "sub-01" / "report.json").read_text())
    truth = json.loads(TRUTH.read_text())
    for measured, expected in zip(report["intervals"], truth["intervals"]):
        assert (measured["from_session"], measured["to_session"]) == (expected["from_session"], expected["to_session"])
        assert abs(measured["counts"]["new"] - expected["counts"]["new"]) <= 1, (measured["counts"], expected["counts"])
        assert abs(measured["pbvc_percent"] - expected["pbvc_percent"]) <= 0.3, (measured["pbvc_percent"],
                                                                                 expected["pbvc_percent"])
        assert measured["alignment_correlation"] >= 0.9


def test_rerun_keeps_the_finished_result(run_output):
    out, _ = run_output
    report = out / "sub-01" / "report.json"
    before = report.read_bytes()
    result = CliRunner().invoke(main, ["run", str(SAMPLE), "--out", str(out), "--quiet"])
    assert result.exit_code == 0
    assert "skipped sub-01" in result.output
    assert report.read_bytes() == before
