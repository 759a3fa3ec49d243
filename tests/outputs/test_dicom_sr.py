"""Sign-off export: the confirmed SEG holds exactly the confirmed lesions, the SR is verified and points at them.

Sources are vendor-like series from msvol.synth.dicom (classic and Enhanced MR), of which header-only
copies are written and read back, as sign-off does once the PACS export is gone. Known truth: three
balls of radius 3 voxels (123 voxels each, 1 x 1 x 1.5 mm); lesion 1 is confirmed new, lesion 3
confirmed enlarging, lesion 2 not confirmed.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest

from msvol.datatypes import Volume
from msvol.errors import InputError
from msvol.outputs.dicom import SourceSeries
from msvol.outputs.dicom_source import load_source_headers, write_source_headers
from msvol.outputs.dicom_sr import tracking_uid, write_confirmed_segmentation, write_structured_report
from msvol.synth import dicom as synth_dicom

COLUMNS, ROWS, SLICES = 32, 40, 24
SECRETS = (b"Doe", b"MRN12345", b"19791231", b"ACC777", b"Doe Hospital")
REVIEWER, SIGNED = "Radiologist^Rita", dt.datetime(2025, 1, 2, 3, 4, 5)
STATUSES = {1: "new", 3: "enlarging"}
INTERVAL = {"from_session": "01", "to_session": "02", "counts": {"new": 1, "enlarging": 1}, "pbvc_percent": -0.42}


def _labels() -> np.ndarray:
    """(columns, rows, slices) int32: balls labelled 1, 2, 3."""
    axes = np.ogrid[0:COLUMNS, 0:ROWS, 0:SLICES]
    labels = np.zeros((COLUMNS, ROWS, SLICES), np.int32)
    for label, centre in enumerate([(8, 10, 6), (22, 28, 15), (12, 30, 19)], start=1):
        labels[sum((axis - c) ** 2 for axis, c in zip(axes, centre)) <= 9] = label
    return labels


LABELS = _labels()


def _findings(labels=LABELS) -> list[dict]:
    voxel_mm3 = 1.5
    return [{"lesion_id": 1, "status": "new", "followup_volume_mm3": float((labels == 1).sum() * voxel_mm3),
             "baseline_volume_mm3": 0.0, "segment_number": 1},
            {"lesion_id": 3, "status": "enlarging", "followup_volume_mm3": float((labels == 3).sum() * voxel_mm3),
             "baseline_volume_mm3": 60.0, "segment_number": 2}]


@pytest.fixture(scope="module", params=["classic", "enhanced"])
def export(request, tmp_path_factory):
    """The PACS export's FLAIR series (with a fake identity) as a SourceSeries."""
    folder = tmp_path_factory.mktemp(f"flair-{request.param}")
    volume = Volume(np.random.default_rng(1).random((COLUMNS, ROWS, SLICES)).astype(np.float32) * 500,
                    np.diag([1.0, 1.0, 1.5, 1.0]), "FLAIR")
    identity = synth_dicom.ExamIdentity("MRN12345", "Doe^Jane", "19791231", dt.date(2024, 3, 1),
                                        accession_number="ACC777", station_name="Doe Hospital")
    vendor = synth_dicom.VENDORS["siemens"]
    multiframe = request.param == "enhanced"
    files = synth_dicom.write_series(volume, folder, identity, vendor, vendor.flair, series_number=3,
                                     multiframe=multiframe)
    if multiframe:
        return SourceSeries((files[0],) * SLICES, tuple(range(1, SLICES + 1)))
    return SourceSeries(tuple(files), (1,) * SLICES)


@pytest.fixture(scope="module", params=["P-0042", None], ids=["pseudonym", "identified"])
def signed(request, export, tmp_path_factory):
    """Header copies, the confirmed SEG (version 1) and its SR, all from the copies alone."""
    pseudonym = request.param
    folder = tmp_path_factory.mktemp("signoff")
    copies = load_source_headers(write_source_headers(folder / "source", export, pseudonym=pseudonym))
    seg = write_confirmed_segmentation(folder / "confirmed_seg.dcm", copies, LABELS, STATUSES, pseudonym=pseudonym,
                                       version=1, reviewer=REVIEWER)
    sr = write_structured_report(folder / "confirmed_sr.dcm", source=copies, segmentation=seg, findings=_findings(),
                                 interval=INTERVAL, reviewer=REVIEWER, verified_at=SIGNED, pseudonym=pseudonym)
    return {"pseudonym": pseudonym, "export": export, "copies": copies, "seg": seg, "sr": sr, "folder": folder}


def _dciodvfy(path) -> list[str]:
    run = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, check=False)
    return (run.stdout + run.stderr).splitlines()


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_dciodvfy_reports_no_errors(signed, tmp_path):
    empty = write_structured_report(  # an interval where the reviewer confirmed nothing: no SEG
        tmp_path / "empty_sr.dcm", source=signed["copies"], segmentation=None, findings=[],
        interval={**INTERVAL, "counts": {"new": 0, "enlarging": 0}, "pbvc_percent": None}, reviewer=REVIEWER,
        verified_at=SIGNED, pseudonym=signed["pseudonym"])
    for path in (signed["seg"], signed["sr"], empty):
        lines = _dciodvfy(path)
        assert not [line for line in lines if line.startswith("Error")], f"{path.name}:\n" + "\n".join(lines)


def test_confirmed_seg_holds_exactly_the_confirmed_lesions(signed):
    seg = hd.seg.segread(signed["seg"])
    assert [item.SegmentLabel for item in seg.SegmentSequence] == ["New lesion 1", "Enlarging lesion 3"]
    assert [item.TrackingID for item in seg.SegmentSequence] == ["lesion 1", "lesion 3"]
    assert "confirmed" in seg.SeriesDescription and str(seg.ContentCreatorName) == REVIEWER
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), ROWS, COLUMNS)
    numbers = [int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
               for item in seg.PerFrameFunctionalGroupsSequence]
    for number, lesion_id in ((1, 1), (2, 3)):
        assert int(frames[np.array(numbers) == number].sum()) == int((LABELS == lesion_id).sum()) == 123
    # and each voxel lands where it was: frame of slice k is labels[:, :, k].T
    export = signed["export"]
    headers = [pydicom.dcmread(file, stop_before_pixels=True) for file in dict.fromkeys(export.files)]
    # frames without lesion voxels are omitted from this SEG: highdicom must be told they are empty
    if len(headers) == 1:
        decoded = seg.get_pixels_by_source_frame(headers[0].SOPInstanceUID, list(export.frame_numbers),
                                                 segment_numbers=[1, 2], assert_missing_frames_are_empty=True)
    else:
        decoded = seg.get_pixels_by_source_instance([h.SOPInstanceUID for h in headers], segment_numbers=[1, 2],
                                                    assert_missing_frames_are_empty=True)
    expected = np.stack([np.transpose(LABELS == lesion_id, (2, 1, 0)) for lesion_id in (1, 3)], axis=-1)
    np.testing.assert_array_equal(decoded.astype(bool), expected)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == headers[0].SeriesInstanceUID


def test_sr_is_verified_complete_and_measures_each_finding(signed):
    sr = hd.sr.srread(signed["sr"])
    assert (sr.VerificationFlag, sr.CompletionFlag, sr.PreliminaryFlag) == ("VERIFIED", "COMPLETE", "FINAL")
    observer = sr.VerifyingObserverSequence[0]
    assert str(observer.VerifyingObserverName) == REVIEWER and observer.VerifyingOrganization == "msvol research"
    assert observer.VerificationDateTime == "20250102030405"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    seg = pydicom.dcmread(signed["seg"], stop_before_pixels=True)
    assert sr.StudyInstanceUID == seg.StudyInstanceUID
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 2
    for group, finding in zip(groups, _findings()):
        reference = group.referenced_segment[0].ReferencedSOPSequence[0]
        assert reference.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert int(reference.ReferencedSegmentNumber) == finding["segment_number"]
        assert group.tracking_uid == seg.SegmentSequence[finding["segment_number"] - 1].TrackingUID
        assert group.tracking_uid == tracking_uid(seg.ReferencedSeriesSequence[0].SeriesInstanceUID,
                                                  finding["lesion_id"])
        measured = {m.name.meaning: (float(m.value), m.unit.value) for m in group.get_measurements()}
        assert measured["Volume"] == (finding["followup_volume_mm3"], "mm3")
        change = {q.name.meaning: q.value.value for q in group.get_qualitative_evaluations()}
        assert change["Lesion change since baseline"] == {"new": "129721008", "enlarging": "15454001"}[
            finding["status"]]
        if finding["status"] == "enlarging":
            assert measured["Lesion volume at baseline"] == (60.0, "mm3")
        else:
            assert "Lesion volume at baseline" not in measured
    (interval,) = sr.content.get_image_measurement_groups()
    measured = {m.name.meaning: float(m.value) for m in interval.get_measurements()}
    assert measured == {"Number of new lesions": 1, "Number of enlarging lesions": 1,
                        "Percentage brain volume change": -0.42}
    observers = sr.content.get_observer_contexts()
    assert {str(item.value) for context in observers for item in context
            if item.name.value in ("121008", "121013")} == {REVIEWER, "msvol"}  # person and device names


def test_same_content_gives_the_same_uids_and_an_amendment_new_ones(signed, tmp_path):
    pseudonym, copies = signed["pseudonym"], signed["copies"]
    first_seg, first_sr = (pydicom.dcmread(signed[key], stop_before_pixels=True) for key in ("seg", "sr"))
    again = write_confirmed_segmentation(tmp_path / "again.dcm", copies, LABELS, STATUSES, pseudonym=pseudonym,
                                         version=1, reviewer=REVIEWER)
    assert pydicom.dcmread(again).SOPInstanceUID == first_seg.SOPInstanceUID
    again_sr = write_structured_report(tmp_path / "again_sr.dcm", source=copies, segmentation=again,
                                       findings=_findings(), interval=INTERVAL, reviewer=REVIEWER, verified_at=SIGNED,
                                       pseudonym=pseudonym)
    assert pydicom.dcmread(again_sr).SOPInstanceUID == first_sr.SOPInstanceUID
    # the amendment: lesion 3 drawn one voxel larger, signed a day later, superseding the first SR
    corrected = LABELS.copy()
    corrected[12, 30, 23] = 3
    amended = write_confirmed_segmentation(tmp_path / "v2.dcm", copies, corrected, STATUSES, pseudonym=pseudonym,
                                           version=2, reviewer=REVIEWER)
    amended_seg = pydicom.dcmread(amended)
    assert amended_seg.SOPInstanceUID != first_seg.SOPInstanceUID
    assert amended_seg.SeriesInstanceUID != first_seg.SeriesInstanceUID
    assert "v2" in amended_seg.SeriesDescription
    assert amended_seg.SegmentSequence[1].TrackingUID == first_seg.SegmentSequence[1].TrackingUID  # same lesion
    same_labels_v2 = write_confirmed_segmentation(tmp_path / "v2b.dcm", copies, LABELS, STATUSES,
                                                  pseudonym=pseudonym, version=2, reviewer=REVIEWER)
    assert pydicom.dcmread(same_labels_v2).SOPInstanceUID != first_seg.SOPInstanceUID  # the version alone counts
    amended_sr = pydicom.dcmread(write_structured_report(
        tmp_path / "v2_sr.dcm", source=copies, segmentation=amended, findings=_findings(corrected),
        interval=INTERVAL, reviewer=REVIEWER, verified_at=SIGNED + dt.timedelta(days=1), pseudonym=pseudonym,
        predecessor=signed["sr"]))
    assert amended_sr.SOPInstanceUID != first_sr.SOPInstanceUID
    assert amended_sr.SeriesInstanceUID != first_sr.SeriesInstanceUID
    (series,) = amended_sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence
    assert series.SeriesInstanceUID == first_sr.SeriesInstanceUID
    assert [item.ReferencedSOPInstanceUID for item in series.ReferencedSOPSequence] == [first_sr.SOPInstanceUID]
    assert amended_sr.PredecessorDocumentsSequence[0].StudyInstanceUID == first_sr.StudyInstanceUID
    if shutil.which("dciodvfy"):
        lines = _dciodvfy(tmp_path / "v2_sr.dcm")
        assert not [line for line in lines if line.startswith("Error")], "\n".join(lines)


def test_pseudonymised_outputs_carry_no_identity(signed):
    if signed["pseudonym"] is None:
        for key in ("seg", "sr"):
            dataset = pydicom.dcmread(signed[key], stop_before_pixels=True)
            assert (str(dataset.PatientName), dataset.PatientID) == ("Doe^Jane", "MRN12345")
            assert "PatientIdentityRemoved" not in dataset
        return
    paths = [signed["seg"], signed["sr"], *sorted((signed["folder"] / "source").iterdir())]
    assert len(paths) > 3
    for path in paths:
        content = path.read_bytes()
        assert not [secret for secret in SECRETS if secret in content], path.name
    for key in ("seg", "sr"):
        dataset = pydicom.dcmread(signed[key], stop_before_pixels=True)
        assert (dataset.PatientName.family_name, dataset.PatientID) == ("P-0042", "P-0042")
        assert dataset.PatientIdentityRemoved == "YES" and dataset.PatientBirthDate == ""


def test_inconsistent_findings_are_refused(signed, tmp_path):
    common = {"source": signed["copies"], "segmentation": signed["seg"], "reviewer": REVIEWER,
              "verified_at": SIGNED, "pseudonym": signed["pseudonym"]}
    with pytest.raises(InputError, match="disagree"):
        write_structured_report(tmp_path / "a.dcm", findings=_findings(),
                                interval={**INTERVAL, "counts": {"new": 2, "enlarging": 1}}, **common)
    swapped = _findings()
    swapped[0]["segment_number"], swapped[1]["segment_number"] = 2, 1
    with pytest.raises(InputError, match="not that lesion's segment"):
        write_structured_report(tmp_path / "b.dcm", findings=swapped, interval=INTERVAL, **common)
    with pytest.raises(InputError, match="no confirmed segmentation"):
        write_structured_report(tmp_path / "c.dcm", findings=_findings(), interval=INTERVAL,
                                **{**common, "segmentation": None})
    with pytest.raises(InputError, match="another patient or pseudonym"):
        write_structured_report(tmp_path / "d.dcm", findings=_findings(), interval=INTERVAL,
                                **{**common, "pseudonym": "P-9"})
    with pytest.raises(InputError, match="not a DICOM SR"):
        write_structured_report(tmp_path / "e.dcm", findings=_findings(), interval=INTERVAL,
                                predecessor=signed["seg"], **common)
    assert not list(tmp_path.iterdir())


def test_confirmed_seg_refuses_what_it_cannot_write(signed, tmp_path):
    copies, pseudonym = signed["copies"], signed["pseudonym"]
    with pytest.raises(InputError, match="nothing to write"):
        write_confirmed_segmentation(tmp_path / "a.dcm", copies, LABELS, {}, pseudonym=pseudonym, version=1)
    with pytest.raises(InputError, match=r"lesions \[7\]"):
        write_confirmed_segmentation(tmp_path / "b.dcm", copies, LABELS, {1: "new", 7: "new"}, pseudonym=pseudonym,
                                     version=1)
    with pytest.raises(InputError, match="'new' or 'enlarging'"):
        write_confirmed_segmentation(tmp_path / "c.dcm", copies, LABELS, {1: "stable"}, pseudonym=pseudonym,
                                     version=1)
    with pytest.raises(InputError, match="version"):
        write_confirmed_segmentation(tmp_path / "d.dcm", copies, LABELS, STATUSES, pseudonym=pseudonym, version=0)
    assert not list(tmp_path.iterdir())
