"""The end-to-end tests: `msvol run sample_data` through the CLI, checked against the sample truth, and
the same patient as a PACS export (DICOM built from the NIfTI), which must give the same numbers.

Takes a few minutes on 2 cores; skip locally with MSVOL_SKIP_E2E=1 (CI always runs it).
"""

import datetime as dt
import json
import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from scipy import ndimage

from msvol.cli import main
from msvol.datatypes import CHANGE_MAP_VALUES, REVIEWED_STATUSES
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
        for status in ("new", "enlarging", "possible_new"):
            values = set(np.unique(np.asarray(nib.load(folder / f"{status}_lesions.nii.gz").dataobj))) - {0}
            assert values == {lesion["id"] for lesion in interval["lesions"] if lesion["status"] == status}
        assert interval["files"]["possible_new_lesions"] == str(folder.relative_to(subject) /
                                                                "possible_new_lesions.nii.gz")
        viewer = interval["files"]["viewer"]  # the review's side-by-side images, on one halfway grid
        images = {name: nib.load(subject / viewer[name]) for name in ("baseline_flair", "followup_flair", "changes")}
        assert all(image.get_data_dtype() == np.uint8 for image in images.values())
        assert len({image.shape for image in images.values()}) == 1
        classes = set(np.unique(np.asarray(images["changes"].dataobj))) - {0}
        expected = {code for status, code in CHANGE_MAP_VALUES.items() if interval["counts"][status]}
        assert classes == expected
        space = json.loads((subject / viewer["space"]).read_text())
        assert np.allclose(np.array(space["halfway_to_followup"]) @ np.array(space["followup_to_halfway"]), np.eye(4))
        reviewed = {str(lesion["id"]) for lesion in interval["lesions"] if lesion["status"] in REVIEWED_STATUSES}
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


def test_the_reader_confirms_corrects_and_signs_the_sample_subject(run_output, tmp_path):
    """The review commands on sample_data's output: the run registered its findings; decide every new and
    enlarging one (confirm, reject, reclassify, edit a mask), sign off, and read the signed PDF back."""
    out, _ = run_output
    listing = json.loads(CliRunner().invoke(main, ["findings", str(out), "--json"]).stdout)
    assert (out / "msvol.db").is_file() and listing[0]["subject"] == "01"
    to_decide = [finding for finding in listing[0]["findings"] if finding["class"] in ("new", "enlarging")]
    actions = [["--confirm"], ["--reject", "artefact"], ["--reclassify", "stable"]]
    rejected = to_decide[1]
    for index, finding in enumerate(to_decide):
        args = ["decide", str(out), "--subject", "sub-01", "--finding", finding["id"], "--reviewer", "Dr E2E"]
        result = CliRunner().invoke(main, args + (actions[index] if index < 3 else ["--confirm"]))
        assert result.exit_code == 0, result.output
    edited = to_decide[0]  # its mask, grown by one voxel, as a reviewer's pen would
    interval = f"intervals/ses-{edited['interval'].split('-')[0]}_to_ses-{edited['interval'].split('-')[1]}"
    status_file = out / "sub-01" / interval / f"{edited['class']}_lesions.nii.gz"
    labels = nib.load(status_file)
    mask = ndimage.binary_dilation(np.asarray(labels.dataobj) == int(edited["id"].split(":L")[1]))
    nib.Nifti1Image(mask.astype(np.uint8), labels.affine).to_filename(tmp_path / "mask.nii.gz")
    result = CliRunner().invoke(main, ["decide", str(out), "--subject", "sub-01", "--finding", edited["id"],
                                       "--mask", str(tmp_path / "mask.nii.gz"), "--reviewer", "Dr E2E"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["signoff", str(out), "--subject", "sub-01", "--reviewer", "Dr E2E"])
    assert result.exit_code == 0, result.output
    final = json.loads((out / "sub-01" / "final" / "report.json").read_text())
    automated = json.loads((out / "sub-01" / "report.json").read_text())
    first = rejected["interval"]
    confirmed = next(item for item in final["intervals"]
                     if f"{item['from_session']}-{item['to_session']}" == first)["confirmed"]["counts"]
    expected = next(item for item in automated["intervals"]
                    if f"{item['from_session']}-{item['to_session']}" == first)["counts"]
    assert confirmed[rejected["class"]] < expected[rejected["class"]]
    text = subprocess.run(["pdftotext", str(out / "sub-01" / "final" / "report.pdf"), "-"], capture_output=True,
                          text=True).stdout if shutil.which("pdftotext") else final["signed"]["statement"]
    assert "confirmed by Dr E2E on" in text


def test_the_store_of_a_dicom_run_holds_no_identifier(dicom_output):
    """Everything in the findings store of the DICOM run, every table and row, is free of the identity."""
    import sqlalchemy as sa

    _, subject, _ = dicom_output
    engine = sa.create_engine(f"sqlite:///{subject.parent / 'msvol.db'}")
    with engine.connect() as connection:
        tables = sa.inspect(engine).get_table_names()
        dump = " ".join(str(row) for table in tables for row in connection.execute(sa.text(f"SELECT * FROM {table}")))
    engine.dispose()
    assert subject.name.removeprefix("sub-") in dump, "the run was registered under its pseudonym"
    for secret in ("MRN0042", "Testperson", "Erika", "19700101"):
        assert secret not in dump


def test_signing_a_dicom_subject_sends_a_confirmed_seg_and_a_verified_sr(dicom_output):
    """Sign-off of the DICOM run: per interval a SEG of the confirmed lesions and a TID 1500 SR, built from the
    header-only source copies, pseudonymised, VERIFIED/COMPLETE, passing dciodvfy."""
    _, subject, _ = dicom_output
    out, name = subject.parent, subject.name
    listing = json.loads(CliRunner().invoke(main, ["findings", str(out), "--json"]).stdout)[0]
    rejected = None
    for finding in listing["findings"]:
        if finding["class"] in ("new", "enlarging"):
            decision = ["--confirm"] if rejected else ["--reject", "artefact"]
            rejected = rejected or finding
            result = CliRunner().invoke(main, ["decide", str(out), "--subject", name, "--finding", finding["id"],
                                               "--reviewer", "Dr Dicom", *decision])
            assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["signoff", str(out), "--subject", name, "--reviewer", "Dr Dicom"])
    assert result.exit_code == 0, result.output
    final = json.loads((subject / "final" / "report.json").read_text())
    for interval in final["intervals"]:
        stem = subject / "final" / "dicom" / f"ses-{interval['from_session']}_to_ses-{interval['to_session']}"
        sr = pydicom.dcmread(f"{stem}_sr.dcm")
        assert (sr.VerificationFlag, sr.CompletionFlag) == ("VERIFIED", "COMPLETE")
        assert "Dr Dicom" in str(sr.VerifyingObserverSequence[0].VerifyingObserverName)
        assert sr.PatientID == name.removeprefix("sub-")
        confirmed = interval["confirmed"]["counts"]["new"] + interval["confirmed"]["counts"]["enlarging"]
        seg_path = Path(f"{stem}_confirmed_seg.dcm")
        assert seg_path.is_file() == (confirmed > 0)
        if confirmed:
            assert len(pydicom.dcmread(seg_path).SegmentSequence) == confirmed
        for path in (seg_path, Path(f"{stem}_sr.dcm")):
            if path.is_file() and shutil.which("dciodvfy"):
                check = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True)
                lines = (check.stdout + check.stderr).splitlines()
                assert not [line for line in lines if line.startswith("Error")], "\n".join(lines)
            if path.is_file():
                for secret in ("MRN0042", "Testperson", "Erika", "19700101"):
                    assert secret.encode() not in path.read_bytes()
