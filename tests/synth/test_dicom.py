"""The synthetic PACS export must write DICOM that pydicom and SimpleITK read back exactly.

Known answers: pixel values equal the volume's (stored as they are when integral), and every
voxel's position computed from the DICOM headers equals the affine's within 1e-4 mm, for classic
and enhanced series, compressed or not, on an oblique grid of 0.9 x 1.0 x 1.2 mm.
"""

import datetime as dt
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import EnhancedMRImageStorage, ExplicitVRLittleEndian, MRImageStorage, RLELossless

from msvol.datatypes import Volume
from msvol.ingest import bids
from msvol.synth import dicom as synth_dicom, dicom_headers
from tests.builders import rotation

pytestmark = pytest.mark.filterwarnings("error::UserWarning")  # pydicom warns of values invalid for their VR

SAMPLE_SUBJECT = Path(__file__).parents[2] / "sample_data" / "sub-01"
SHAPE = (40, 48, 36)
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
SIEMENS = synth_dicom.VENDORS["siemens"]


def _oblique_affine(reversed_slices: bool = False) -> np.ndarray:
    """About 10 degrees off axis on two axes, 0.9 x 1.0 x 1.2 mm; optionally k running against i x j."""
    affine = np.eye(4)
    affine[:3, :3] = rotation(10, 2) @ rotation(8, 0) @ np.diag([0.9, 1.0, -1.2 if reversed_slices else 1.2])
    affine[:3, 3] = [-17.3, 24.1, 30.7 if reversed_slices else -12.9]
    return affine


def _volume(reversed_slices: bool = False, integral: bool = True) -> Volume:
    rng = np.random.default_rng(7)
    data = rng.integers(0, 4000, SHAPE) if integral else rng.normal(50.0, 30.0, SHAPE)
    return Volume(data.astype(np.float32), _oblique_affine(reversed_slices), "FLAIR")


@pytest.fixture
def identity():
    return synth_dicom.ExamIdentity("FAKE001", "TEST^NOT A PATIENT", "19700101", dt.date(2022, 5, 12),
                                    accession_number="ACC1", station_name="SYNTHMR1")


def _text(value) -> str:
    """A string attribute as the header spells it: several values joined by backslashes."""
    return "\\".join(value) if isinstance(value, pydicom.multival.MultiValue) else str(value)


def _by_instance(files: list[Path]) -> list[pydicom.Dataset]:
    return sorted((pydicom.dcmread(path) for path in files), key=lambda ds: int(ds.InstanceNumber))


def _voxel_positions_from_headers(datasets: list[pydicom.Dataset]) -> np.ndarray:
    """LPS mm of every voxel, indexed [c, r, k] like the volume, from IPP/IOP/PixelSpacing alone."""
    if len(datasets) == 1 and datasets[0].SOPClassUID == EnhancedMRImageStorage:
        shared = datasets[0].SharedFunctionalGroupsSequence[0]
        orientation = shared.PlaneOrientationSequence[0].ImageOrientationPatient
        spacing = shared.PixelMeasuresSequence[0].PixelSpacing
        positions = [frame.PlanePositionSequence[0].ImagePositionPatient
                     for frame in datasets[0].PerFrameFunctionalGroupsSequence]
        rows, columns = datasets[0].Rows, datasets[0].Columns
    else:
        orientation, spacing = datasets[0].ImageOrientationPatient, datasets[0].PixelSpacing
        positions = [ds.ImagePositionPatient for ds in datasets]
        rows, columns = datasets[0].Rows, datasets[0].Columns
    along_row, along_column = np.array(orientation[:3], float), np.array(orientation[3:], float)
    column_index, row_index = np.meshgrid(np.arange(columns), np.arange(rows), indexing="ij")
    in_plane = (column_index[..., None] * float(spacing[1]) * along_row
                + row_index[..., None] * float(spacing[0]) * along_column)
    return np.stack([np.array(position, float) + in_plane for position in positions], axis=2)


def _voxel_positions_from_affine(affine: np.ndarray, shape) -> np.ndarray:
    indices = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), axis=-1)
    return indices @ (LPS @ affine)[:3, :3].T + (LPS @ affine)[:3, 3]


def _read_with_simpleitk(files: list[Path]) -> sitk.Image:
    if len(files) == 1:
        return sitk.ReadImage(str(files[0]))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(path) for path in sorted(files, key=lambda p: pydicom.dcmread(p).InstanceNumber)])
    return reader.Execute()


SERIES_KINDS = [pytest.param(multiframe, compress, id=f"{'enhanced' if multiframe else 'classic'}"
                             f"-{'rle' if compress else 'raw'}")
                for multiframe in (False, True) for compress in (False, True)]


@pytest.mark.parametrize("multiframe, compress", SERIES_KINDS)
def test_every_file_is_valid_dicom_with_the_right_sop_class_and_syntax(tmp_path, identity, multiframe, compress):
    files = synth_dicom.write_series(_volume(), tmp_path, identity, SIEMENS, SIEMENS.flair, series_number=5,
                                     multiframe=multiframe, compress=compress)
    assert len(files) == (1 if multiframe else SHAPE[2])
    assert sorted(tmp_path.iterdir()) == sorted(files)  # no temporary files left behind
    for ds in map(pydicom.dcmread, files):
        assert ds.SOPClassUID == (EnhancedMRImageStorage if multiframe else MRImageStorage)
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.TransferSyntaxUID == (RLELossless if compress else ExplicitVRLittleEndian)
        for uid in (ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID):
            assert uid.is_valid
        assert ds.pixel_array.shape == ((SHAPE[2], SHAPE[1], SHAPE[0]) if multiframe else (SHAPE[1], SHAPE[0]))
    names = {path.name for path in files}
    assert names == {f"{pydicom.dcmread(path).SOPInstanceUID}.dcm" for path in files}


@pytest.mark.parametrize("reversed_slices", [False, True], ids=["k-along-normal", "k-against-normal"])
@pytest.mark.parametrize("multiframe, compress", SERIES_KINDS)
def test_voxel_positions_from_headers_match_the_affine(tmp_path, identity, multiframe, compress, reversed_slices):
    volume = _volume(reversed_slices)
    files = synth_dicom.write_series(volume, tmp_path, identity, SIEMENS, SIEMENS.flair, series_number=5,
                                     multiframe=multiframe, compress=compress)
    datasets = _by_instance(files)
    from_headers = _voxel_positions_from_headers(datasets)
    assert np.abs(from_headers - _voxel_positions_from_affine(volume.affine, SHAPE)).max() < 1e-4
    pixels = np.stack([ds.pixel_array for ds in datasets], axis=0) if not multiframe else datasets[0].pixel_array
    assert np.array_equal(pixels, volume.data.transpose(2, 1, 0))  # integral data are stored unchanged
    if not multiframe:
        assert [int(ds.InstanceNumber) for ds in datasets] == list(range(1, SHAPE[2] + 1))
        assert float(datasets[0].SliceThickness) == pytest.approx(1.2)
        assert float(datasets[0].SpacingBetweenSlices) == pytest.approx(1.2)
        assert float(datasets[0].RescaleSlope) == 1 and float(datasets[0].RescaleIntercept) == 0


@pytest.mark.parametrize("reversed_slices", [False, True], ids=["k-along-normal", "k-against-normal"])
@pytest.mark.parametrize("multiframe, compress", SERIES_KINDS)
def test_simpleitk_reads_the_same_pixels_on_the_same_grid(tmp_path, identity, multiframe, compress, reversed_slices):
    volume = _volume(reversed_slices)
    files = synth_dicom.write_series(volume, tmp_path, identity, SIEMENS, SIEMENS.t1, series_number=4,
                                     multiframe=multiframe, compress=compress)
    image = _read_with_simpleitk(files)
    assert image.GetSize() == SHAPE  # the enhanced file too: 3D with one slice per frame
    assert np.array_equal(sitk.GetArrayFromImage(image), volume.data.transpose(2, 1, 0))
    first = _by_instance(files)[0]
    if multiframe:
        position = first.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient
        orientation = first.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    else:
        position, orientation = first.ImagePositionPatient, first.ImageOrientationPatient
    direction = np.array(image.GetDirection()).reshape(3, 3)
    assert np.allclose(image.GetOrigin(), np.array(position, float), atol=1e-4)
    assert np.allclose(direction[:, :2].T.ravel(), np.array(orientation, float), atol=1e-6)
    assert np.allclose(image.GetSpacing(), volume.spacing_mm, atol=1e-4)
    expected = _voxel_positions_from_affine(volume.affine, SHAPE)
    for corner in [(0, 0, 0), (SHAPE[0] - 1, 0, 0), (0, SHAPE[1] - 1, 0), (0, 0, SHAPE[2] - 1),
                   tuple(n - 1 for n in SHAPE)]:
        assert np.allclose(image.TransformIndexToPhysicalPoint(corner), expected[corner], atol=1e-4)


@pytest.mark.parametrize("multiframe", [False, True], ids=["classic", "enhanced"])
def test_non_integral_data_are_scaled_and_simpleitk_applies_the_rescale(tmp_path, identity, multiframe):
    volume = _volume(integral=False)
    files = synth_dicom.write_series(volume, tmp_path, identity, SIEMENS, SIEMENS.flair, series_number=5,
                                     multiframe=multiframe)
    first = pydicom.dcmread(files[0])
    rescale = (first.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0] if multiframe
               else first)
    slope = float(rescale.RescaleSlope)
    assert slope != 1 and float(rescale.RescaleIntercept) == pytest.approx(volume.data.min(), abs=1e-3)
    values = sitk.GetArrayFromImage(_read_with_simpleitk(files))
    assert np.abs(values - volume.data.transpose(2, 1, 0)).max() <= slope / 2 + 1e-4


@pytest.mark.parametrize("vendor_name", sorted(synth_dicom.VENDORS))
@pytest.mark.parametrize("multiframe", [False, True], ids=["classic", "enhanced"])
def test_vendor_and_identity_headers_are_written(tmp_path, identity, vendor_name, multiframe):
    vendor = synth_dicom.VENDORS[vendor_name]
    files = synth_dicom.write_series(_volume(), tmp_path, identity, vendor, vendor.t1, series_number=4,
                                     multiframe=multiframe)
    ds = pydicom.dcmread(files[0])
    assert (ds.Manufacturer, ds.ManufacturerModelName) == (vendor.manufacturer, vendor.model)
    assert _text(ds.SoftwareVersions) == vendor.software
    assert float(ds.MagneticFieldStrength) == vendor.field_strength_t
    assert ds.SeriesDescription == vendor.t1.description
    assert ds.ProtocolName == vendor.protocol_prefix + vendor.t1.description
    assert ds.MRAcquisitionType == "3D" and ds.Modality == "MR" and ds.SeriesNumber == 4
    assert (ds.PatientID, str(ds.PatientName), ds.PatientBirthDate, ds.PatientSex) == (
        "FAKE001", "TEST^NOT A PATIENT", "19700101", "O")
    assert (ds.StudyDate, ds.SeriesDate, ds.AcquisitionDate, ds.StudyTime) == ("20220512",) * 3 + ("090000",)
    assert (ds.StudyInstanceUID, ds.AccessionNumber, ds.StationName) == (identity.study_uid, "ACC1", "SYNTHMR1")
    assert ds.StudyDescription == dicom_headers.STUDY_DESCRIPTION
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "M", "NONE"]
    if multiframe:  # enhanced files keep TR/TE/TI in functional groups, as scanners write them
        shared = ds.SharedFunctionalGroupsSequence[0]
        repetition = shared.MRTimingAndRelatedParametersSequence[0].RepetitionTime
        echo = shared.MREchoSequence[0].EffectiveEchoTime
        inversion = shared.MRModifierSequence[0].get("InversionTimes")
        assert ds.ContentQualification == "PRODUCT" and ds.VolumetricProperties == "VOLUME"
        assert shared.MRImageFrameTypeSequence[0].FrameType == ds.ImageType
    else:
        repetition, echo, inversion = ds.RepetitionTime, ds.EchoTime, ds.get("InversionTime")
        assert (_text(ds.ScanningSequence), _text(ds.SequenceVariant)) == (
            vendor.t1.scanning_sequence, vendor.t1.sequence_variant)
    assert float(repetition) == vendor.t1.repetition_time_ms and float(echo) == vendor.t1.echo_time_ms
    if vendor.t1.inversion_time_ms is None:
        assert inversion is None
    else:
        assert float(np.ravel(inversion)[0]) == vendor.t1.inversion_time_ms


def test_thick_slices_make_an_axial_stack_5_mm_apart():
    """A coronal volume (j runs inferior-superior) becomes an axial stack of 5-slice averages."""
    coronal = np.array([[1.0, 0, 0, -40], [0, 0, 1, 20], [0, 1, 0, -30], [0, 0, 0, 1]])
    data = np.random.default_rng(3).random((32, 27, 24)).astype(np.float32)
    thick = synth_dicom.thick_slices(Volume(data, coronal, "FLAIR"), 5.0)
    assert thick.data.shape == (32, 24, 5)  # 27 slices -> 5 thick ones; the last 2 are dropped
    assert np.allclose(thick.spacing_mm, [1, 1, 5])
    assert np.allclose(thick.affine[:3, 2], [0, 0, 5])  # k runs inferior -> superior
    assert np.allclose(thick.data[:, :, 1], data[:, 5:10, :].mean(axis=1))
    centre_of_first = coronal @ [0, 2, 0, 1]  # slices 0..4 average around slice 2
    assert np.allclose(thick.affine[:, 3], centre_of_first)


def test_thick_slices_of_an_oblique_grid_use_the_nearest_whole_number_of_slices():
    thick = synth_dicom.thick_slices(_volume(), 5.0)
    assert thick.spacing_mm[2] == pytest.approx(4 * 1.2)  # 5 mm / 1.2 mm rounds to 4 slices
    assert np.argmax(np.abs(thick.affine[2, :3])) == 2


def test_exam_writes_each_series_with_its_acquisition_type_in_nested_folders(tmp_path, identity):
    volume = _volume()
    vendor = synth_dicom.VENDORS["ge"]
    written = synth_dicom.write_exam(tmp_path, identity, vendor, flair=volume, t1=volume,
                                     extras=("localizer", "dwi", "flair_2d"))
    assert set(written) == {"localizer", "flair_2d", "t1", "flair", "dwi"}
    expected = {"localizer": ("2D", "LOCALIZER", vendor.localizer.description),
                "flair_2d": ("2D", "M", vendor.flair_2d.description), "t1": ("3D", "M", vendor.t1.description),
                "flair": ("3D", "M", vendor.flair.description), "dwi": ("2D", "DIFFUSION", vendor.dwi.description)}
    frames, studies = set(), set()
    for kind, files in written.items():
        datasets = [pydicom.dcmread(path) for path in files]
        first = datasets[0]
        number = synth_dicom.SERIES_NUMBERS[kind]
        assert all(path.parent == tmp_path / "STUDY" / f"SERIES{number:03d}" for path in files)
        assert first.SeriesNumber == number
        assert (first.MRAcquisitionType, first.ImageType[2], first.SeriesDescription) == expected[kind]
        assert [int(ds.InstanceNumber) for ds in datasets] == list(range(1, len(files) + 1))
        frames |= {ds.FrameOfReferenceUID for ds in datasets}
        studies |= {ds.StudyInstanceUID for ds in datasets}
    assert len(frames) == 1 and studies == {identity.study_uid}
    localizer = [pydicom.dcmread(path) for path in written["localizer"]]
    orientations = [np.array(ds.ImageOrientationPatient, float) for ds in localizer]
    normals = [np.cross(orientation[:3], orientation[3:]) for orientation in orientations]
    assert np.allclose(np.abs(normals), np.eye(3)) and float(localizer[0].SliceThickness) == 7
    assert float(pydicom.dcmread(written["flair_2d"][0]).SliceThickness) == pytest.approx(4.8)
    dwi = [pydicom.dcmread(path) for path in written["dwi"]]
    half = len(dwi) // 2
    assert [float(ds.DiffusionBValue) for ds in dwi] == [0.0] * half + [1000.0] * half
    assert [ds.ImagePositionPatient for ds in dwi[:half]] == [ds.ImagePositionPatient for ds in dwi[half:]]
    assert float(dwi[0].SliceThickness) == pytest.approx(4.8)


@pytest.mark.parametrize("file_names, pattern", [("sequential", r"IM\d{4}"), ("numbered", r"\d{8}")])
def test_shuffled_flat_exam_names_are_unique_and_tell_nothing_of_instance_order(tmp_path, identity, file_names,
                                                                               pattern):
    volume = _volume()
    written = synth_dicom.write_exam(tmp_path, identity, SIEMENS, flair=volume, t1=volume, multiframe=False,
                                     file_names=file_names, nested=False, shuffle_seed=4)
    files = [path for paths in written.values() for path in paths]
    assert sorted(tmp_path.iterdir()) == sorted(files)
    assert len(files) == 3 + 2 * SHAPE[2]
    assert all(re.fullmatch(pattern, path.name) for path in files)
    flair = written["flair"]
    assert [int(pydicom.dcmread(path).InstanceNumber) for path in flair] == list(range(1, SHAPE[2] + 1))
    assert [path.name for path in flair] != sorted(path.name for path in flair)


def test_enhanced_exam_has_one_file_per_volume_series(tmp_path, identity):
    volume = _volume()
    written = synth_dicom.write_exam(tmp_path, identity, SIEMENS, flair=volume, t1=None, multiframe=True,
                                     compress=True, extras=("flair_2d",))
    assert {kind: len(files) for kind, files in written.items()} == {"flair_2d": 1, "flair": 1}
    assert sitk.ReadImage(str(written["flair_2d"][0])).GetSize() == (40, 48, 9)  # 36 slices of 1.2 mm, 4 per slice


def test_export_of_the_bids_sample_gives_one_dated_exam_per_session(tmp_path, identity):
    import nibabel as nib

    exams = synth_dicom.export_patient(bids.load_patient(SAMPLE_SUBJECT), tmp_path, identity,
                                       synth_dicom.VENDORS["philips"], extras=(), multiframe=True)
    assert [exam.name for exam in exams] == ["FAKE001_20210211", "FAKE001_20220512", "FAKE001_20230407"]
    headers = [[pydicom.dcmread(path, stop_before_pixels=True) for path in sorted(exam.rglob("*.dcm"))]
               for exam in exams]
    assert [{ds.StudyDate for ds in exam} for exam in headers] == [{"20210211"}, {"20220512"}, {"20230407"}]
    assert len({ds.StudyInstanceUID for exam in headers for ds in exam}) == 3
    assert {ds.PatientID for exam in headers for ds in exam} == {"FAKE001"}
    assert all(len(exam) == 2 for exam in headers)
    flair = next(path for path in exams[0].rglob("*.dcm") if pydicom.dcmread(path).SeriesNumber == 5)
    nifti = nib.load(SAMPLE_SUBJECT / "ses-01" / "anat" / "sub-01_ses-01_FLAIR.nii.gz")
    assert np.array_equal(pydicom.dcmread(flair).pixel_array, np.asarray(nifti.dataobj).transpose(2, 1, 0))


def test_truncate_cuts_the_file_so_that_its_pixels_cannot_be_read(tmp_path, identity):
    (path, *_) = synth_dicom.write_series(_volume(), tmp_path, identity, SIEMENS, SIEMENS.flair, series_number=5)
    size = path.stat().st_size
    synth_dicom.truncate(path, 0.5)
    assert path.stat().st_size == size // 2
    with pytest.raises(ValueError, match="pixel data"):
        pydicom.dcmread(path).pixel_array
