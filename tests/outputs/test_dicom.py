"""DICOM export: the SEG references the FLAIR and decodes to the input masks; pseudonyms hide identity.

Sources are built here: a classic MR series (one file per slice, written with pydicom) and an
enhanced multi-frame MR converted from it with highdicom's legacy converter.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from msvol import __version__
from msvol.errors import InputError, SpaceError
from msvol.outputs.dicom import SourceSeries, _summary_lines, write_segmentation, write_summary
from msvol.outputs.dicom_source import load_source_headers, write_source_headers

COLUMNS, ROWS, SLICES = 32, 40, 24
IDENTITY = {"PatientName": "Doe^Jane", "PatientID": "MRN12345", "PatientBirthDate": "19791231", "PatientSex": "F",
            "OtherPatientIDs": "MRN12345-OLD", "IssuerOfPatientID": "HOSPITAL", "AccessionNumber": "ACC777",
            "ReferringPhysicianName": "Doe^John", "InstitutionName": "Doe Hospital"}
SECRETS = (b"Doe", b"MRN12345", b"19791231")


def _classic_series(folder, study_uid, frame_uid, drop=()) -> list:
    """24 axial MR Image Storage files, 40 rows x 32 columns, 1 x 1 x 1.5 mm, written in k order.
    `drop`: keywords to leave out, as some anonymisers do."""
    series_uid = generate_uid()
    files = []
    rng = np.random.default_rng(7)
    for k in range(SLICES):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        for keyword, value in IDENTITY.items():
            setattr(ds, keyword, value)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.PositionReferenceIndicator = ""
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20240301", "101500", "S1"
        ds.SeriesDate, ds.SeriesTime, ds.ContentDate, ds.ContentTime = "20240301", "102000", "20240301", "102000"
        ds.AcquisitionDate, ds.AcquisitionTime = "20240301", "102000"
        ds.Modality, ds.Manufacturer, ds.ManufacturerModelName = "MR", "ACME", "Scanner 3T"
        ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = 7, k + 1, "3D FLAIR"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE\\IR", "SK", "", "3D"
        ds.SliceThickness, ds.SpacingBetweenSlices = 1.5, 1.5
        ds.RepetitionTime, ds.EchoTime, ds.InversionTime, ds.EchoTrainLength = 5000.0, 390.0, 1800.0, 200
        ds.MagneticFieldStrength = 3.0
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-16.0, -20.0, -18.0 + 1.5 * k]
        ds.PixelSpacing = [1.0, 1.0]
        ds.Rows, ds.Columns = ROWS, COLUMNS
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = rng.integers(0, 1000, (ROWS, COLUMNS), dtype=np.uint16).tobytes()
        for keyword in drop:
            delattr(ds, keyword)
        file = folder / f"slice{k:03d}.dcm"
        ds.save_as(file, enforce_file_format=True)
        files.append(file)
    return files


@pytest.fixture(scope="module")
def classic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flair")
    files = _classic_series(folder, generate_uid(), generate_uid())
    return SourceSeries(tuple(files), (1,) * len(files))


@pytest.fixture(scope="module")
def enhanced(tmp_path_factory, classic):
    """One Legacy Converted Enhanced MR file; frame_numbers map the volume's slices to its frames."""
    legacy = [pydicom.dcmread(file) for file in classic.files]
    image = hd.legacy.LegacyConvertedEnhancedMRImage(legacy, series_instance_uid=generate_uid(), series_number=8,
                                                     sop_instance_uid=generate_uid(), instance_number=1)
    file = tmp_path_factory.mktemp("enhanced") / "flair.dcm"
    image.save_as(file, enforce_file_format=True)
    z_of_frame = [float(item.PlanePositionSequence[0].ImagePositionPatient[2])
                  for item in image.PerFrameFunctionalGroupsSequence]
    frame_numbers = tuple(z_of_frame.index(-18.0 + 1.5 * k) + 1 for k in range(SLICES))
    return SourceSeries((file,) * SLICES, frame_numbers)


def _labels(ball_centres, radius=3.0) -> np.ndarray:
    """An int32 label map of shape (columns, rows, slices) with one ball per centre, labelled 1, 2, ..."""
    axes = np.ogrid[0:COLUMNS, 0:ROWS, 0:SLICES]
    labels = np.zeros((COLUMNS, ROWS, SLICES), np.int32)
    for label, centre in enumerate(ball_centres, start=1):
        labels[sum((axis - c) ** 2 for axis, c in zip(axes, centre)) <= radius**2] = label
    return labels


@pytest.fixture(scope="module")
def masks():
    lesions = _labels([(8, 10, 6), (22, 28, 15), (12, 30, 19)])
    new = np.where(lesions == 2, 5, 0).astype(np.int32)  # label values need not be 1
    enlarging = np.zeros_like(lesions)  # the common case: an empty segment
    return lesions, new, enlarging


def _report() -> dict:
    """The report-model fields the summary renders (msvol.outputs.report.build_report, schema 1.1)."""
    return {
        "schema_version": "1.1", "software": {"name": "msvol", "version": __version__}, "subject": "03",
        "disclaimer": "msvol is research software, not a medical device.",
        "timepoints": [
            {"session": "01", "date": "2023-03-01", "brain_volume_ml": 1201.37, "lesion_count": 2,
             "lesion_volume_ml": 1.234},
            {"session": "02", "date": "2024-03-01", "brain_volume_ml": 1195.02, "lesion_count": 3,
             "lesion_volume_ml": 1.567}],
        "intervals": [
            {"from_session": "01", "to_session": "02", "years": 1.0014, "pbvc_percent": -0.512,
             "pbvc_annualized_percent": -0.511, "counts": {"new": 1, "enlarging": 0, "shrinking": 0, "resolved": 0,
                                                           "stable": 2},
             "qc_flags": [{"code": "scanner_change", "message": "The scanner changed between visits.",
                           "scope": "01_to_02"}]}],
        "qc_flags": [{"code": "short_followup", "scope": "subject",
                      "message": "A long message that must wrap onto a second line of the page because it is "
                                 "longer than one line of the rendered summary, so the page grows to hold it."}],
    }


def _expected_frames(masks_, source_count) -> np.ndarray:
    """(slices, rows, columns, segments) booleans: the frame of slice k is data[:, :, k].T."""
    return np.stack([np.transpose(array > 0, (2, 1, 0)) for array in masks_], axis=-1)[:source_count]


def test_classic_seg_references_the_series_and_decodes_to_the_masks(tmp_path, classic, masks):
    path = write_segmentation(tmp_path / "seg.dcm", classic, *masks, pseudonym=None)
    seg = hd.seg.segread(path)
    assert [seg.get_segment_description(n).SegmentLabel for n in (1, 2, 3)] == [
        "MS lesion", "New lesion", "Enlarging lesion"]
    description = seg.get_segment_description(2)
    assert description.segmented_property_category.value == "49755003"  # Morphologically abnormal structure
    assert description.segmented_property_type.value == "52988006"  # Lesion
    assert description.anatomic_regions[0].value == "12738006"  # Brain
    assert description.SegmentAlgorithmType == "AUTOMATIC"
    algorithm = description.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("msvol", __version__)
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    assert seg.SeriesDescription == "msvol lesions (research)" and seg.Manufacturer == "msvol"
    assert seg.SeriesNumber == 901
    sources = [pydicom.dcmread(file, stop_before_pixels=True) for file in classic.files]
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    decoded = seg.get_pixels_by_source_instance([s.SOPInstanceUID for s in sources], segment_numbers=[1, 2, 3])
    np.testing.assert_array_equal(decoded.astype(bool), _expected_frames(masks, SLICES))


def test_an_empty_segment_is_declared_and_decodes_to_zeros(tmp_path, classic, masks):
    lesions, _, _ = masks
    empty = np.zeros_like(lesions)
    seg = hd.seg.segread(write_segmentation(tmp_path / "seg.dcm", classic, lesions, empty, empty, pseudonym=None))
    assert seg.number_of_segments == 3
    numbers = {int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
               for item in seg.PerFrameFunctionalGroupsSequence}
    assert numbers == {1, 2, 3}  # every segment has frames, all-zero ones included
    uids = [pydicom.dcmread(file, stop_before_pixels=True).SOPInstanceUID for file in classic.files]
    decoded = seg.get_pixels_by_source_instance(uids, segment_numbers=[2, 3])
    assert not decoded.any()


def test_enhanced_multiframe_source(tmp_path, enhanced, masks):
    seg = hd.seg.segread(write_segmentation(tmp_path / "seg.dcm", enhanced, *masks, pseudonym=None))
    source = pydicom.dcmread(enhanced.files[0], stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    decoded = seg.get_pixels_by_source_frame(source.SOPInstanceUID, list(enhanced.frame_numbers),
                                             segment_numbers=[1, 2, 3])
    np.testing.assert_array_equal(decoded.astype(bool), _expected_frames(masks, SLICES))


def test_enhanced_source_with_shuffled_frames_places_each_slice_on_its_frame(tmp_path, enhanced, masks):
    """The volume's slice order need not be the file's frame order."""
    order = np.random.default_rng(3).permutation(SLICES)
    shuffled = SourceSeries(enhanced.files, tuple(enhanced.frame_numbers[k] for k in order))
    arrays = [array[:, :, order] for array in masks]
    seg = hd.seg.segread(write_segmentation(tmp_path / "seg.dcm", shuffled, *arrays, pseudonym=None))
    source = pydicom.dcmread(enhanced.files[0], stop_before_pixels=True)
    decoded = seg.get_pixels_by_source_frame(source.SOPInstanceUID, list(enhanced.frame_numbers),
                                             segment_numbers=[1, 2, 3])
    np.testing.assert_array_equal(decoded.astype(bool), _expected_frames(masks, SLICES))


@pytest.mark.parametrize("multiframe, compress", [(False, True), (True, False), (True, True)])
def test_series_from_synth_dicom(tmp_path, masks, multiframe, compress):
    """Vendor-like sources from msvol.synth.dicom: RLE-compressed classic, Enhanced MR (plain and RLE)."""
    synth_dicom = pytest.importorskip("msvol.synth.dicom")
    from msvol.datatypes import Volume

    affine = np.diag([1.0, 1.0, 1.5, 1.0])
    volume = Volume(np.random.default_rng(1).random((COLUMNS, ROWS, SLICES)).astype(np.float32) * 500, affine, "FLAIR")
    identity = synth_dicom.ExamIdentity("MRN12345", "Doe^Jane", "19791231", dt.date(2024, 3, 1))
    vendor = synth_dicom.VENDORS["siemens"]
    files = synth_dicom.write_series(volume, tmp_path / "flair", identity, vendor, vendor.flair, series_number=3,
                                     multiframe=multiframe, compress=compress)
    source = (SourceSeries((files[0],) * SLICES, tuple(range(1, SLICES + 1))) if multiframe
              else SourceSeries(tuple(files), (1,) * SLICES))
    path = write_segmentation(tmp_path / "seg.dcm", source, *masks, pseudonym="P-5")
    assert not [secret for secret in SECRETS if secret in path.read_bytes()]
    seg = hd.seg.segread(path)
    headers = [pydicom.dcmread(file, stop_before_pixels=True) for file in files]
    if multiframe:
        decoded = seg.get_pixels_by_source_frame(headers[0].SOPInstanceUID, list(range(1, SLICES + 1)),
                                                 segment_numbers=[1, 2, 3])
    else:
        decoded = seg.get_pixels_by_source_instance([h.SOPInstanceUID for h in headers], segment_numbers=[1, 2, 3])
    np.testing.assert_array_equal(decoded.astype(bool), _expected_frames(masks, SLICES))
    summary = pydicom.dcmread(write_summary(tmp_path / "sc.dcm", _report(), source, pseudonym=None))
    assert summary.PatientID == "MRN12345" and summary.StudyInstanceUID == headers[0].StudyInstanceUID


@pytest.mark.parametrize("kind", ["seg", "seg-enhanced", "summary"])
def test_pseudonymised_output_carries_no_identity(tmp_path, classic, enhanced, masks, kind):
    if kind.startswith("seg"):
        source = enhanced if kind == "seg-enhanced" else classic
        path = write_segmentation(tmp_path / "out.dcm", source, *masks, pseudonym="P-0042")
    else:
        path = write_summary(tmp_path / "out.dcm", _report(), classic, pseudonym="P-0042")
    content = path.read_bytes()
    assert not [secret for secret in SECRETS if secret in content]
    dataset = pydicom.dcmread(path)
    assert (dataset.PatientName.family_name, dataset.PatientID) == ("P-0042", "P-0042")
    assert (dataset.PatientBirthDate, dataset.PatientSex) == ("", "")
    assert "OtherPatientIDs" not in dataset and "IssuerOfPatientID" not in dataset
    assert dataset.PatientIdentityRemoved == "YES"
    assert dataset.StudyInstanceUID == pydicom.dcmread(classic.files[0], stop_before_pixels=True).StudyInstanceUID


@pytest.mark.parametrize("kind", ["seg", "summary"])
def test_without_pseudonym_the_source_identity_is_kept(tmp_path, classic, masks, kind):
    if kind == "seg":
        path = write_segmentation(tmp_path / "out.dcm", classic, *masks, pseudonym=None)
    else:
        path = write_summary(tmp_path / "out.dcm", _report(), classic, pseudonym=None)
    dataset = pydicom.dcmread(path)
    assert (str(dataset.PatientName), dataset.PatientID) == ("Doe^Jane", "MRN12345")
    assert (dataset.PatientBirthDate, dataset.PatientSex) == ("19791231", "F")
    assert dataset.OtherPatientIDs == "MRN12345-OLD" and dataset.AccessionNumber == "ACC777"
    assert "PatientIdentityRemoved" not in dataset


def test_summary_is_an_rgb_secondary_capture_in_the_source_study(tmp_path, classic):
    path = write_summary(tmp_path / "summary.dcm", _report(), classic, pseudonym=None)
    image = pydicom.dcmread(path)
    assert image.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
    assert image.SeriesDescription == "msvol report (research)" and image.SeriesNumber == 902
    assert image.PhotometricInterpretation == "RGB" and image.SamplesPerPixel == 3
    pixels = image.pixel_array
    assert pixels.shape[2] == 3 and pixels.shape[1] == 1024
    assert (pixels < 128).any() and (pixels == 255).mean() > 0.5  # dark text on a white page
    assert image.StudyInstanceUID == pydicom.dcmread(classic.files[0], stop_before_pixels=True).StudyInstanceUID


def test_summary_lines_hold_every_timepoint_and_interval():
    text = "\n".join(line for *_, line in _summary_lines(_report(), "03"))
    assert "msvol report -- research software, not for diagnosis" in text
    assert "Subject 03" in text
    assert "2023-03-01" in text and "2024-03-01" in text
    assert "brain volume 1201.4 ml" in text and "lesions 3 (1.57 ml)" in text
    assert "01 -> 02" in text and "new 1" in text and "enlarging 0" in text
    assert "PBVC -0.51 %" in text and "annualised -0.51 %/year" in text
    assert "scanner_change" in text and "short_followup" in text
    assert "Findings await radiologist confirmation" in text


def test_unannualised_interval_reads_n_a():
    report = _report()
    report["intervals"][0]["pbvc_annualized_percent"] = None
    text = "\n".join(line for *_, line in _summary_lines(report, "03"))
    assert "annualised n/a" in text


@pytest.mark.parametrize("pseudonym", [None, "P-7"])
def test_a_source_without_type2_study_attributes_still_exports(tmp_path, masks, pseudonym):
    """Regression: highdicom's Segmentation read AccessionNumber etc. unconditionally and raised AttributeError."""
    dropped = ("AccessionNumber", "ReferringPhysicianName", "StudyID", "StudyDate", "StudyTime", "PatientBirthDate",
               "PatientSex")
    files = _classic_series(tmp_path, generate_uid(), generate_uid(), drop=dropped)
    source = SourceSeries(tuple(files), (1,) * SLICES)
    seg = pydicom.dcmread(write_segmentation(tmp_path / "seg.dcm", source, *masks, pseudonym=pseudonym))
    assert seg.AccessionNumber == "" and seg.PatientBirthDate == ""
    assert pydicom.dcmread(write_summary(tmp_path / "sc.dcm", _report(), source, pseudonym=pseudonym)).StudyID == ""


def test_same_input_gives_the_same_uids_and_changed_input_new_ones(tmp_path, classic, masks):
    first = pydicom.dcmread(write_segmentation(tmp_path / "a.dcm", classic, *masks, pseudonym=None))
    second = pydicom.dcmread(write_segmentation(tmp_path / "b.dcm", classic, *masks, pseudonym=None))
    assert first.SOPInstanceUID == second.SOPInstanceUID and first.SeriesInstanceUID == second.SeriesInstanceUID
    lesions, new, enlarging = masks
    changed = pydicom.dcmread(write_segmentation(tmp_path / "c.dcm", classic, lesions, new, new, pseudonym=None))
    assert changed.SOPInstanceUID != first.SOPInstanceUID
    assert len(changed.SOPInstanceUID) <= 64


def test_writes_atomically_and_leaves_no_temporary_file(tmp_path, classic, masks):
    path = tmp_path / "out" / "seg.dcm"
    write_segmentation(path, classic, *masks, pseudonym=None)
    write_segmentation(path, classic, *masks, pseudonym="P-1")  # replaces the file
    assert sorted(p.name for p in path.parent.iterdir()) == ["seg.dcm"]
    assert pydicom.dcmread(path).PatientID == "P-1"


def test_arrays_off_the_source_grid_are_refused(tmp_path, classic, masks):
    lesions, new, enlarging = masks
    with pytest.raises(SpaceError, match="rows"):
        write_segmentation(tmp_path / "seg.dcm", classic, *(a.transpose(1, 0, 2) for a in masks), pseudonym=None)
    with pytest.raises(SpaceError, match="slices"):
        write_segmentation(tmp_path / "seg.dcm", classic, *(a[:, :, :-1] for a in masks), pseudonym=None)
    with pytest.raises(SpaceError):
        write_segmentation(tmp_path / "seg.dcm", classic, lesions, new[:, :, :-1], enlarging, pseudonym=None)
    assert not (tmp_path / "seg.dcm").exists()


def test_bad_pseudonym_and_bad_source_are_input_errors(tmp_path, classic, masks):
    with pytest.raises(InputError, match="pseudonym"):
        write_segmentation(tmp_path / "seg.dcm", classic, *masks, pseudonym="Doe^Jane")
    not_dicom = tmp_path / "notes.txt"
    not_dicom.write_text("hello")
    with pytest.raises(InputError, match="cannot read"):
        write_summary(tmp_path / "sc.dcm", _report(), SourceSeries((not_dicom,), (1,)), pseudonym=None)
    with pytest.raises(InputError):
        SourceSeries(classic.files, classic.frame_numbers[:-1])


def _dciodvfy(path) -> list[str]:
    run = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True)
    return (run.stdout + run.stderr).splitlines()


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
@pytest.mark.parametrize("kind", ["seg", "seg-enhanced", "summary", "seg-pseudonym", "seg-enhanced-pseudonym",
                                  "summary-pseudonym"])
def test_dciodvfy_reports_no_errors(tmp_path, classic, enhanced, masks, kind):
    pseudonym = "P-0042" if kind.endswith("pseudonym") else None
    if kind.startswith("seg"):
        source = enhanced if kind.startswith("seg-enhanced") else classic
        path = write_segmentation(tmp_path / "seg.dcm", source, *masks, pseudonym=pseudonym)
    else:
        path = write_summary(tmp_path / "sc.dcm", _report(), classic, pseudonym=pseudonym)
    lines = _dciodvfy(path)
    errors = [line for line in lines if line.startswith("Error")]
    assert not errors, "\n".join(lines)


def _stable(dataset: Dataset) -> dict:
    """A dataset's elements without those highdicom fills afresh on every write (times, random UIDs)."""
    volatile = {"InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime", "SeriesDate",
                "SeriesTime", "TimeOfSecondaryCapture", "ContributingEquipmentSequence"}
    for keyword in ("DimensionOrganizationSequence", "DimensionIndexSequence"):  # a random DimensionOrganizationUID
        for item in dataset.get(keyword, []):
            item.DimensionOrganizationUID = ""
    return {key: value for key, value in dataset.to_json_dict().items()
            if pydicom.datadict.keyword_for_tag(int(key, 16)) not in volatile}


@pytest.mark.parametrize("pseudonym", ["P-0042", None])
@pytest.mark.parametrize("kind", ["classic", "enhanced"])
def test_header_copies_hold_no_pixels_and_pseudonymised_no_identity(tmp_path, classic, enhanced, kind, pseudonym):
    """Regression: a legacy-converted Enhanced MR keeps OtherPatientIDs in UnassignedSharedConvertedAttributesSequence,
    which the keep-list let through inside SharedFunctionalGroupsSequence."""
    source = classic if kind == "classic" else enhanced
    folder = write_source_headers(tmp_path / "source", source, pseudonym=pseudonym)
    copies = sorted(folder.glob("*.dcm"))
    assert len(copies) == len(set(source.files))  # one header per source instance
    for path in copies:
        dataset = pydicom.dcmread(path)
        assert "PixelData" not in dataset and not [e for e in dataset if e.tag.group == 0x7FE0]
        original = pydicom.dcmread(source.files[0], stop_before_pixels=True)
        assert (dataset.StudyInstanceUID, dataset.SeriesInstanceUID) == (original.StudyInstanceUID,
                                                                         original.SeriesInstanceUID)
        if pseudonym is None:
            assert (str(dataset.PatientName), dataset.PatientID) == ("Doe^Jane", "MRN12345")
            assert dataset.AccessionNumber == "ACC777"
        else:
            assert not [secret for secret in SECRETS if secret in path.read_bytes()]
            assert (dataset.PatientID, dataset.PatientIdentityRemoved) == ("P-0042", "YES")
    loaded = load_source_headers(folder)
    assert loaded.frame_numbers == source.frame_numbers and len(loaded.files) == len(source.files)
    assert [pydicom.dcmread(file).SOPInstanceUID for file in loaded.files] == [
        pydicom.dcmread(file, stop_before_pixels=True).SOPInstanceUID for file in source.files]


@pytest.mark.parametrize("pseudonym", ["P-0042", None])
@pytest.mark.parametrize("kind", ["classic", "enhanced"])
def test_seg_and_summary_from_header_copies_equal_those_from_the_export(tmp_path, classic, enhanced, masks, kind,
                                                                        pseudonym):
    """highdicom needs geometry and UIDs, not pixels: header-only copies give the same objects."""
    source = classic if kind == "classic" else enhanced
    copies = load_source_headers(write_source_headers(tmp_path / "source", source, pseudonym=pseudonym))
    from_export = pydicom.dcmread(write_segmentation(tmp_path / "a.dcm", source, *masks, pseudonym=pseudonym))
    from_copies = pydicom.dcmread(write_segmentation(tmp_path / "b.dcm", copies, *masks, pseudonym=pseudonym))
    assert from_copies.SOPInstanceUID == from_export.SOPInstanceUID
    assert _stable(from_copies) == _stable(from_export)
    summaries = [pydicom.dcmread(write_summary(tmp_path / f"{name}.dcm", _report(), series, pseudonym=pseudonym))
                 for name, series in (("sa", source), ("sb", copies))]
    assert _stable(summaries[0]) == _stable(summaries[1])


def test_incomplete_header_copies_are_refused(tmp_path, classic):
    folder = write_source_headers(tmp_path / "source", classic, pseudonym="P-1")
    manifest = folder / "source.json"
    text = manifest.read_text()
    manifest.write_text(text.replace("instance-0001.dcm", "../instance-0001.dcm"))
    with pytest.raises(InputError, match="not a file"):
        load_source_headers(folder)
    manifest.write_text(text[:20])
    with pytest.raises(InputError, match="unreadable manifest"):
        load_source_headers(folder)
    manifest.unlink()
    with pytest.raises(InputError, match="no source.json"):
        load_source_headers(folder)


def test_pipeline_writes_header_copies_once_per_followup_session(tmp_path, classic, masks):
    """pipeline._dicom_writers (tested here, beside the writers it wires): intervals 01->02, 02->03, 01->03."""
    from types import SimpleNamespace

    from msvol import pipeline
    from msvol.datatypes import Volume

    series = SimpleNamespace(files=classic.files, frame_numbers=classic.frame_numbers)
    patient = SimpleNamespace(subject="P-7", pseudonymous=True,
                              visits=[SimpleNamespace(session=s, flair_series=series) for s in ("01", "02", "03")])
    labels = Volume(masks[0], np.eye(4), "labels")
    files = {session: {"lesions": ("x", labels)} for session in ("01", "02", "03")}
    for pair in (("01", "02"), ("02", "03"), ("01", "03")):
        files[pair] = {"new_lesions": ("x", labels), "enlarging_lesions": ("x", labels)}
    writers = pipeline._dicom_writers(patient, _report(), files)
    assert sorted(name for name in writers if name.startswith("dicom/source/")) == [
        "dicom/source/ses-02", "dicom/source/ses-03"]
    folder = writers["dicom/source/ses-03"](tmp_path / "dicom" / "source" / "ses-03")
    copies = load_source_headers(folder)
    assert len(copies.files) == SLICES
    assert all(pydicom.dcmread(file).PatientID == "P-7" for file in copies.files)
