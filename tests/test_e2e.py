"""The end-to-end tests: `msvol run sample_data` through the CLI, checked against the sample truth, and
the same patient as a PACS export (DICOM built from the NIfTI), which must give the same numbers.

Takes a few minutes on 2 cores; skip locally with MSVOL_SKIP_E2E=1 (CI always runs it).
"""

import datetime as dt
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from msvol.cli import main
from msvol.ingest import bids
from msvol.synth import dicom as synth_dicom

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
        flair = nib.load(subject / timepoint["files"]["flair"])  # bias-corrected, for the review's added lesions
        assert flair.shape == native.shape and np.allclose(flair.affine, native.affine)
        assert flair.get_data_dtype() == np.uint16 and np.asarray(flair.dataobj).max() > 0
    for interval in report["intervals"]:
        assert all(isinstance(v, int) for v in interval["counts"].values())
        folder = subject / "intervals" / f"ses-{interval['from_session']}_to_ses-{interval['to_session']}"
        for status in ("new", "enlarging"):
            values = set(np.unique(np.asarray(nib.load(folder / f"{status}_lesions.nii.gz").dataobj))) - {0}
            assert values == {lesion["id"] for lesion in interval["lesions"] if lesion["status"] == status}
        reviewed = {str(lesion["id"]) for lesion in interval["lesions"] if lesion["status"] in ("new", "enlarging")}
        assert set(interval["files"].get("thumbnails", {})) == reviewed
        for path in interval["files"].get("thumbnails", {}).values():
            assert (subject / path).read_bytes().startswith(b"\x89PNG")
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


# A fake identity: it must never reach a log line or a default output.
IDENTITY = synth_dicom.ExamIdentity("MRN0042", "Testperson^Erika", "19700101", dt.date(2021, 2, 11))


@pytest.fixture(scope="module")
def dicom_output(tmp_path_factory):
    """sample_data as a Siemens-like PACS export with extra series, then `msvol run` on it."""
    export = tmp_path_factory.mktemp("pacs")
    synth_dicom.export_patient(bids.load_patient(SAMPLE / "sub-01"), export, IDENTITY,
                               synth_dicom.VENDORS["siemens"], extras=("localizer", "flair_2d", "dwi"), shuffle_seed=4,
                               file_names="numbered")
    out = tmp_path_factory.mktemp("e2e-dicom")
    result = CliRunner().invoke(main, ["run", str(export), "--out", str(out)])
    assert result.exit_code == 0, result.output
    folders = [folder for folder in out.glob("sub-*")]
    assert len(folders) == 1
    return export, folders[0], result


def test_dicom_export_gives_the_nifti_numbers(run_output, dicom_output):
    nifti = json.loads((run_output[0] / "sub-01" / "report.json").read_text())
    dicom = json.loads((dicom_output[1] / "report.json").read_text())
    assert [t["session"] for t in dicom["timepoints"]] == ["20210211", "20220512", "20230407"]
    assert [t["date"] for t in dicom["timepoints"]] == [t["date"] for t in nifti["timepoints"]]
    for from_dicom, from_nifti in zip(dicom["timepoints"], nifti["timepoints"]):
        for key in ("brain_volume_ml", "lesion_count", "lesion_volume_ml"):
            assert from_dicom[key] == pytest.approx(from_nifti[key], rel=1e-3, abs=1e-3), key
    for from_dicom, from_nifti in zip(dicom["intervals"], nifti["intervals"]):
        assert from_dicom["counts"] == from_nifti["counts"]
        assert from_dicom["pbvc_percent"] == pytest.approx(from_nifti["pbvc_percent"], abs=0.01)


def test_dicom_run_keeps_identifiers_out_of_logs_and_default_outputs(dicom_output):
    _, subject, result = dicom_output
    assert subject.name != "sub-MRN0042" and "MRN0042" not in subject.name
    texts = [result.output, *(path.read_text() for path in subject.glob("*.json")),
             *(path.read_text() for path in subject.glob("*.csv"))]
    for text in texts:
        for secret in ("MRN0042", "Testperson", "Erika", "19700101"):
            assert secret not in text
    mapping = subject.parent / "private" / "pseudonyms.tsv"
    assert f"{subject.name.removeprefix('sub-')}\tMRN0042" in mapping.read_text()
    for path in (subject / "dicom").glob("*.dcm"):
        dataset = pydicom.dcmread(path)
        assert dataset.PatientID == subject.name.removeprefix("sub-") and "Testperson" not in str(dataset.PatientName)
        assert not dataset.get("PatientBirthDate")


def test_dicom_seg_references_the_followup_flair_series(dicom_output):
    export, subject, _ = dicom_output
    report = json.loads((subject / "report.json").read_text())
    interval = report["intervals"][0]
    seg = pydicom.dcmread(subject / "dicom" / f"ses-{interval['from_session']}_to_ses-{interval['to_session']}"
                                              "_lesions_seg.dcm")
    flair_series = {pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID
                    for path in export.glob(f"*_{interval['to_session']}/**/*") if path.is_file()
                    and pydicom.dcmread(path, stop_before_pixels=True).SeriesDescription == "t2_spc_da-fl_sag_p2_iso"}
    assert [item.SeriesInstanceUID for item in seg.ReferencedSeriesSequence] == list(flair_series)
    assert [item.SegmentLabel for item in seg.SegmentSequence] == ["MS lesion", "New lesion", "Enlarging lesion"]
    new = np.asarray(nib.load(subject / "intervals" / f"ses-{interval['from_session']}_to_ses-"
                                                      f"{interval['to_session']}" / "new_lesions.nii.gz").dataobj)
    frames = seg.pixel_array  # (segments x slices, rows, columns): segment 2 holds the new lesions
    slices = frames.shape[0] // 3
    assert int(frames[slices:2 * slices].sum()) == int((new > 0).sum()) > 0
