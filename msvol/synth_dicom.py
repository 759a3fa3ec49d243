"""Synthetic PACS export: DICOM exams written from volumes, the way scanners and PACS export them.

Tests and benchmarks of DICOM ingest need exam folders whose content is known. Every file
written here is real DICOM (file meta, a standard SOP class, UIDs from `generate_uid`) that
pydicom and SimpleITK read.

Vocabulary:
- exam: one visit; its series share one StudyInstanceUID and one FrameOfReferenceUID.
- classic series: MR Image Storage, one file per slice. Enhanced series: one Enhanced MR Image
  Storage file holding every slice as a frame, with geometry and timing in functional groups.
- slice k of a volume: its pixel (row r, column c) is `volume.data[c, r, k]`, so columns run
  along voxel axis i and rows along j.

Geometry: an affine maps voxels to RAS+ mm and DICOM uses LPS, so x and y change sign.
ImageOrientationPatient holds the LPS unit directions of +i and +j, PixelSpacing is
[spacing along j, spacing along i], and slice k sits at LPS(affine @ (0, 0, k, 1)).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (EnhancedMRImageStorage, ExplicitVRLittleEndian, MRImageStorage, RLELossless,
                         generate_uid)
from pydicom.valuerep import format_number_as_ds

from msvol.datatypes import Patient, Volume

# Past the ~400-line guide; the Enhanced MR header (_enhanced_header) is the piece to move out when it grows.
STUDY_DESCRIPTION = "MRI BRAIN MS FOLLOW-UP"
_IMAGE_TYPE = ["ORIGINAL", "PRIMARY", "M", "NONE"]
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_PROTON_MHZ_PER_T = 42.577  # gyromagnetic ratio of 1H / 2 pi, for ImagingFrequency
_DWI_SPACING_MM = (2.0, 2.0, 5.0)
_ADC_MM2_PER_S = 0.8e-3  # typical white-matter ADC; makes the b > 0 images darker than b = 0


@dataclass(frozen=True)
class SequenceHeader:
    """One protocol's header values as a scanner family writes them."""

    description: str  # SeriesDescription, and ProtocolName
    repetition_time_ms: float
    echo_time_ms: float
    inversion_time_ms: float | None  # None: no inversion pulse, InversionTime absent
    scanning_sequence: str  # e.g. "SE\\IR"
    sequence_variant: str  # e.g. "SK\\SP\\MP"
    mr_acquisition_type: str = "3D"
    sequence_name: str = ""  # SequenceName (classic) / PulseSequenceName (enhanced)
    flip_angle_deg: float = 90.0
    contrast: str = "UNKNOWN"  # enhanced AcquisitionContrast: FLUID_ATTENUATED, T1, DIFFUSION...


@dataclass(frozen=True)
class Vendor:
    """One scanner family's header conventions."""

    manufacturer: str
    model: str
    software: str
    field_strength_t: float
    flair: SequenceHeader  # 3D FLAIR
    t1: SequenceHeader  # 3D T1 gradient echo
    localizer: SequenceHeader = SequenceHeader("localizer", 8.6, 4.0, None, "GR", "SP", "2D", "", 20.0)
    dwi: SequenceHeader = SequenceHeader("DWI", 5000.0, 80.0, None, "EP", "SK\\SP", "2D", "", 90.0, "DIFFUSION")
    flair_2d: SequenceHeader = SequenceHeader("AX T2 FLAIR 5mm", 9000.0, 120.0, 2500.0, "SE\\IR", "SK\\SP",
                                              "2D", "", 150.0, "FLUID_ATTENUATED")
    protocol_prefix: str = ""  # Philips writes some ProtocolNames as "WIP <description>"


VENDORS: dict[str, Vendor] = {
    "siemens": Vendor(
        "SIEMENS", "Prisma", "syngo MR E11", 3.0,
        flair=SequenceHeader("t2_spc_da-fl_sag_p2_iso", 5000.0, 386.0, 1800.0, "SE\\IR", "SK\\SP\\MP", "3D",
                             "*spcir_278ns", 120.0, "FLUID_ATTENUATED"),
        t1=SequenceHeader("t1_mprage_sag_p2_iso", 2300.0, 2.98, 900.0, "GR\\IR", "SK\\SP\\MP", "3D",
                          "*tfl3d1_16ns", 9.0, "T1"),
        localizer=SequenceHeader("AAHead_Scout", 8.6, 4.0, None, "GR", "SP", "2D", "*fl2d1", 20.0),
        dwi=SequenceHeader("ep2d_diff_tra", 5300.0, 72.0, None, "EP", "SK\\SP", "2D", "*ep_b1000t", 90.0,
                           "DIFFUSION"),
        flair_2d=SequenceHeader("t2_tirm_tra_dark-fluid_5mm", 9000.0, 81.0, 2500.0, "SE\\IR", "SK\\SP\\MP",
                                "2D", "*tir2d1_16", 150.0, "FLUID_ATTENUATED")),
    "ge": Vendor(
        "GE MEDICAL SYSTEMS", "DISCOVERY MR750", "DV26.0_R03_1831.b", 3.0,
        flair=SequenceHeader("Sag CUBE T2 FLAIR", 6000.0, 120.0, 1800.0, "SE\\IR", "SK\\MP\\OSP", "3D",
                             "3dfsecube", 90.0, "FLUID_ATTENUATED"),
        t1=SequenceHeader("Sag BRAVO", 8.2, 3.2, 450.0, "GR\\IR", "SS\\SK\\MP", "3D", "efgre3d", 12.0, "T1"),
        localizer=SequenceHeader("3Pl Loc", 4.9, 1.6, None, "GR", "SS", "2D", "fgre", 30.0),
        dwi=SequenceHeader("Ax DWI", 6000.0, 75.0, None, "EP\\SE", "SK\\SP", "2D", "epi2", 90.0, "DIFFUSION"),
        flair_2d=SequenceHeader("AX T2 FLAIR 5mm", 9000.0, 120.0, 2400.0, "SE\\IR", "SK\\SP", "2D",
                                "fsetirs", 160.0, "FLUID_ATTENUATED")),
    "philips": Vendor(
        "Philips Medical Systems", "Ingenia", "5.6.1\\5.6.1.2", 3.0,
        flair=SequenceHeader("3D_Brain_VIEW_FLAIR_SHC", 4800.0, 310.0, 1650.0, "SE\\IR", "SK", "3D", "",
                             90.0, "FLUID_ATTENUATED"),
        t1=SequenceHeader("3D T1 TFE", 8.1, 3.7, None, "GR", "SK\\SP", "3D", "", 8.0, "T1"),
        localizer=SequenceHeader("SURVEY", 11.0, 4.6, None, "GR", "SP", "2D", "", 15.0),
        dwi=SequenceHeader("DWI", 3000.0, 83.0, None, "SE\\EP", "SK", "2D", "", 90.0, "DIFFUSION"),
        flair_2d=SequenceHeader("T2W_FLAIR_TRA_5mm", 11000.0, 125.0, 2800.0, "SE\\IR", "SK", "2D", "", 90.0,
                                "FLUID_ATTENUATED"),
        protocol_prefix="WIP "),
}


@dataclass(frozen=True)
class ExamIdentity:
    """Who and when. Tests use obviously fake names; a fresh StudyInstanceUID unless one is given."""

    patient_id: str
    patient_name: str
    birth_date: str  # DICOM DA "YYYYMMDD"
    study_date: dt.date
    study_time: str = "090000"
    study_uid: str = field(default_factory=generate_uid)
    accession_number: str = ""
    station_name: str = ""


@dataclass(frozen=True)
class _Plane:
    """One slice's position in DICOM LPS mm."""

    position: np.ndarray  # ImagePositionPatient: centre of pixel (row 0, column 0)
    orientation: np.ndarray  # ImageOrientationPatient: row direction (+column index), column direction
    pixel_spacing: tuple[float, float]  # (between rows, between columns)


def _volume_planes(affine: np.ndarray, n_slices: int) -> list[_Plane]:
    """The planes of slices k = 0..n-1 of a volume on `affine` (see the module docstring)."""
    lps = _RAS_TO_LPS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    along_i, along_j = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    if abs(along_i @ along_j) > 1e-6:
        raise ValueError("affine axes i and j are not perpendicular; DICOM slices cannot hold that grid")
    orientation = np.concatenate([along_i, along_j])
    return [_Plane(lps[:3, 3] + k * lps[:3, 2], orientation, (spacing[1], spacing[0])) for k in range(n_slices)]


def _ds(value: float) -> str:
    """A decimal string (DS holds at most 16 characters); its 12+ significant digits keep 1e-4 mm."""
    return format_number_as_ds(float(value))


def _ds_list(values) -> list[str]:
    return [_ds(value) for value in values]


def _to_uint16(data: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Stored uint16 values and (slope, intercept) so that value = stored * slope + intercept.

    Integer values within 0..65535 are stored unchanged, so a reader gets the same numbers back.
    """
    data = np.asarray(data)
    low, high = float(data.min()), float(data.max())
    is_integral = data.dtype.kind in "biu" or bool(np.all(np.equal(np.mod(data, 1), 0)))
    if is_integral and low >= 0 and high <= 65535:
        return data.astype(np.uint16), 1.0, 0.0
    # Round slope and intercept to what the header will hold, so stored values decode consistently.
    slope, intercept = float(_ds((high - low) / 65535 or 1.0)), float(_ds(low))
    stored = np.clip(np.rint((data - intercept) / slope), 0, 65535)
    return stored.astype(np.uint16), slope, intercept


def _axial(volume: Volume) -> Volume:
    """The same image with its axes reordered so that k is the axis closest to superior-inferior."""
    directions = volume.affine[:3, :3] / volume.spacing_mm
    axis = int(np.argmax(np.abs(directions[2])))
    order = [a for a in range(3) if a != axis] + [axis]
    return Volume(volume.data.transpose(order), volume.affine[:, order + [3]], volume.kind, volume.source)


def thick_slices(volume: Volume, thickness_mm: float = 5.0) -> Volume:
    """A 2D-acquisition lookalike: an axial stack of slices `thickness_mm` thick.

    The axis closest to superior-inferior becomes k; every n of its slices are averaged, n being
    the whole number nearest to thickness_mm / spacing (leftover slices at the end of k are dropped).
    Each thick slice's centre is the centre of the slices it averages.
    """
    axial = _axial(volume)
    n = max(1, round(thickness_mm / axial.spacing_mm[2]))
    n_thick = axial.data.shape[2] // n
    columns, rows, _ = axial.data.shape
    data = axial.data[:, :, :n_thick * n].astype(np.float32).reshape(columns, rows, n_thick, n).mean(axis=3)
    affine = axial.affine.copy()
    affine[:3, 3] += affine[:3, 2] * (n - 1) / 2
    affine[:3, 2] *= n
    return Volume(data, affine, volume.kind, volume.source)


def _series_dataset(identity: ExamIdentity, vendor: Vendor, header: SequenceHeader, *, series_number: int,
                    series_uid: str, frame_of_reference_uid: str) -> Dataset:
    """Attributes shared by every file of a series, classic or enhanced."""
    date, time = identity.study_date.strftime("%Y%m%d"), identity.study_time
    return _item(
        SpecificCharacterSet="ISO_IR 100", Modality="MR", BodyPartExamined="BRAIN", PatientPosition="HFS",
        PatientName=identity.patient_name, PatientID=identity.patient_id, PatientBirthDate=identity.birth_date,
        PatientSex="O", StudyInstanceUID=identity.study_uid, StudyID="1", StudyDescription=STUDY_DESCRIPTION,
        AccessionNumber=identity.accession_number, ReferringPhysicianName="",
        StudyDate=date, SeriesDate=date, AcquisitionDate=date, ContentDate=date,
        StudyTime=time, SeriesTime=time, AcquisitionTime=time, ContentTime=time,
        SeriesInstanceUID=series_uid, SeriesNumber=series_number, SeriesDescription=header.description,
        ProtocolName=vendor.protocol_prefix + header.description, AcquisitionNumber=1,
        FrameOfReferenceUID=frame_of_reference_uid, PositionReferenceIndicator="",
        Manufacturer=vendor.manufacturer, ManufacturerModelName=vendor.model, SoftwareVersions=vendor.software,
        DeviceSerialNumber="SYNTH0001", StationName=identity.station_name,
        MagneticFieldStrength=_ds(vendor.field_strength_t), MRAcquisitionType=header.mr_acquisition_type,
        SamplesPerPixel=1, PhotometricInterpretation="MONOCHROME2", BitsAllocated=16, BitsStored=16, HighBit=15,
        PixelRepresentation=0)


def _classic_header(ds: Dataset, header: SequenceHeader, image_type: str | list[str], slope: float, intercept: float,
                    slice_thickness_mm: float) -> None:
    """The MR Image module: acquisition values at the top level, as classic files carry them."""
    ds.update(dict(
        SOPClassUID=MRImageStorage, ImageType=image_type, ScanningSequence=header.scanning_sequence,
        SequenceVariant=header.sequence_variant, ScanOptions="", SequenceName=header.sequence_name,
        SliceThickness=_ds(slice_thickness_mm), SpacingBetweenSlices=_ds(slice_thickness_mm),
        RepetitionTime=_ds(header.repetition_time_ms), EchoTime=_ds(header.echo_time_ms), EchoTrainLength=1,
        FlipAngle=_ds(header.flip_angle_deg), NumberOfAverages="1",
        ImagingFrequency=_ds(float(ds.MagneticFieldStrength) * _PROTON_MHZ_PER_T),
        RescaleIntercept=_ds(intercept), RescaleSlope=_ds(slope), RescaleType="US"))
    if header.inversion_time_ms is not None:
        ds.InversionTime = _ds(header.inversion_time_ms)


def _window(data: np.ndarray) -> list[str]:
    """WindowCenter and WindowWidth spanning the data's range, as decimal strings."""
    low, high = float(data.min()), float(data.max())
    return _ds_list([(low + high) / 2, max(high - low, 1.0)])


def _file_name(file_names: str, number: int, sop_uid: str) -> str:
    if file_names == "uid":
        return f"{sop_uid}.dcm"
    if file_names == "sequential":
        return f"IM{number:04d}"
    if file_names == "numbered":
        return f"{number:08d}"
    raise ValueError(f"file_names must be 'uid', 'sequential' or 'numbered', got {file_names!r}")


def _save(ds: Dataset, path: Path, compress: bool, pixels: np.ndarray) -> None:
    """Write one file under a temporary name, then rename it (no half-written file under its name)."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if compress:
        # pydicom's own RLE encoder (numpy only); keep the SOPInstanceUID the file is named after.
        ds.compress(RLELossless, pixels, generate_instance_uid=False)
    else:
        ds.PixelData = pixels.astype("<u2").tobytes()
    temporary = path.with_name(f".{path.name}.partial")
    dcmwrite(temporary, ds, enforce_file_format=True)
    temporary.replace(path)


def _write_classic(template: Dataset, images: list[np.ndarray], planes: list[_Plane], folder: Path, *,
                   file_names: str, compress: bool, name_offset: int,
                   per_image: list[dict] | None = None) -> list[Path]:
    """One file per 2D uint16 image (rows, columns); InstanceNumber 1..n in list order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (image, plane) in enumerate(zip(images, planes)):
        ds = Dataset(dict(template.items()))  # a new element dict: the template's elements stay untouched
        normal = np.cross(plane.orientation[:3], plane.orientation[3:])
        ds.update(dict(
            SOPInstanceUID=generate_uid(), InstanceNumber=index + 1, Rows=image.shape[0], Columns=image.shape[1],
            ImagePositionPatient=_ds_list(plane.position), ImageOrientationPatient=_ds_list(plane.orientation),
            PixelSpacing=_ds_list(plane.pixel_spacing), SliceLocation=_ds(plane.position @ normal),
            **(per_image[index] if per_image else {})))
        path = folder / _file_name(file_names, name_offset + index + 1, ds.SOPInstanceUID)
        _save(ds, path, compress, image)
        paths.append(path)
    return paths


def _item(**attributes) -> Dataset:
    """A dataset (or sequence item) from keyword arguments."""
    item = Dataset()
    item.update(attributes)
    return item


def _enhanced_header(ds: Dataset, header: SequenceHeader, planes: list[_Plane], slope: float, intercept: float,
                     slice_thickness_mm: float, datetime_text: str, window: list[str]) -> None:
    """The Enhanced MR Image IOD: top-level image modules plus shared and per-frame functional groups."""
    inverted = header.inversion_time_ms is not None
    gradient = "GR" in header.scanning_sequence.split("\\")
    frame_type = dict(PixelPresentation="MONOCHROME", VolumetricProperties="VOLUME",
                      VolumeBasedCalculationTechnique="NONE", ComplexImageComponent="MAGNITUDE",
                      AcquisitionContrast=header.contrast)
    organization_uid = generate_uid()
    ds.update(dict(
        SOPClassUID=EnhancedMRImageStorage, ImageType=_IMAGE_TYPE, InstanceNumber=1, NumberOfFrames=len(planes),
        AcquisitionDateTime=datetime_text, AcquisitionDuration=300.0, ContentQualification="PRODUCT",
        ResonantNucleus="1H", KSpaceFiltering="NONE", ApplicableSafetyStandardAgency="IEC",
        ImagingFrequency=_ds(float(ds.MagneticFieldStrength) * _PROTON_MHZ_PER_T), **frame_type,
        BurnedInAnnotation="NO", LossyImageCompression="00", PresentationLUTShape="IDENTITY",
        AcquisitionContextSequence=Sequence(),
        # MR Pulse Sequence module: what classic files say with ScanningSequence and SequenceVariant
        PulseSequenceName=(header.sequence_name or header.description)[:16],  # SH: at most 16 characters
        EchoPulseSequence="GRADIENT" if gradient else "SPIN", MultipleSpinEcho="NO", MultiPlanarExcitation="NO",
        PhaseContrast="NO", TimeOfFlightContrast="NO", SaturationRecovery="NO", SteadyStatePulseSequence="NO",
        EchoPlanarPulseSequence="NO", SpectrallySelectedSuppression="NONE", OversamplingPhase="NONE",
        GeometryOfKSpaceTraversal="RECTILINEAR", RectilinearPhaseEncodeReordering="LINEAR",
        SegmentedKSpaceTraversal="PARTIAL", CoverageOfKSpace="FULL", NumberOfKSpaceTrajectories=1,
        # frames are indexed by (stack, position in stack), both in the Frame Content Sequence (0020,9111)
        DimensionOrganizationType="3D",
        DimensionOrganizationSequence=[_item(DimensionOrganizationUID=organization_uid)],
        DimensionIndexSequence=[_item(DimensionOrganizationUID=organization_uid, DimensionIndexPointer=pointer,
                                      FunctionalGroupPointer=0x00209111) for pointer in (0x00209056, 0x00209057)]))
    ds.SharedFunctionalGroupsSequence = [_item(
        PixelMeasuresSequence=[_item(PixelSpacing=_ds_list(planes[0].pixel_spacing),
                                     SliceThickness=_ds(slice_thickness_mm),
                                     SpacingBetweenSlices=_ds(slice_thickness_mm))],
        PlaneOrientationSequence=[_item(ImageOrientationPatient=_ds_list(planes[0].orientation))],
        MRTimingAndRelatedParametersSequence=[_item(
            RepetitionTime=_ds(header.repetition_time_ms), FlipAngle=_ds(header.flip_angle_deg), EchoTrainLength=1,
            RFEchoTrainLength=1, GradientEchoTrainLength=int(gradient), SpecificAbsorptionRateSequence=Sequence(),
            GradientOutputType="DB_DT", OperatingModeSequence=Sequence())],
        MREchoSequence=[_item(EffectiveEchoTime=header.echo_time_ms)],
        MRModifierSequence=[_item(
            InversionRecovery="YES" if inverted else "NO", FlowCompensation="NONE", T2Preparation="NO",
            SpectrallySelectedExcitation="NONE", SpatialPresaturation="NONE", PartialFourier="NO",
            ParallelAcquisition="NO", **({"InversionTimes": [header.inversion_time_ms]} if inverted else {}))],
        MRImagingModifierSequence=[_item(MagnetizationTransfer="NONE", BloodSignalNulling="NO", Tagging="NONE",
                                         TransmitterFrequency=float(ds.ImagingFrequency), PixelBandwidth="200")],
        MRFOVGeometrySequence=[_item(InPlanePhaseEncodingDirection="ROW", PercentSampling="100",
                                     PercentPhaseFieldOfView="100")],
        MRAveragesSequence=[_item(NumberOfAverages="1")],
        MRReceiveCoilSequence=[_item(ReceiveCoilName="HEAD 32", ReceiveCoilType="MULTICOIL")],
        MRTransmitCoilSequence=[_item(TransmitCoilName="BODY", TransmitCoilType="BODY")],
        MRImageFrameTypeSequence=[_item(FrameType=_IMAGE_TYPE, **frame_type)],
        PixelValueTransformationSequence=[_item(RescaleIntercept=_ds(intercept), RescaleSlope=_ds(slope),
                                                RescaleType="US")],
        FrameVOILUTSequence=[_item(WindowCenter=window[0], WindowWidth=window[1])],
        FrameAnatomySequence=[_item(FrameLaterality="U", AnatomicRegionSequence=[_item(
            CodeValue="12738006", CodingSchemeDesignator="SCT", CodeMeaning="Brain")])])]
    ds.PerFrameFunctionalGroupsSequence = [_item(
        FrameContentSequence=[_item(
            FrameAcquisitionDateTime=datetime_text, FrameReferenceDateTime=datetime_text,
            FrameAcquisitionDuration=1000.0, StackID="1", InStackPositionNumber=index + 1,
            DimensionIndexValues=[1, index + 1])],
        PlanePositionSequence=[_item(ImagePositionPatient=_ds_list(plane.position))])
        for index, plane in enumerate(planes)]


def write_series(volume: Volume, folder: Path, identity: ExamIdentity, vendor: Vendor, header: SequenceHeader,
                 *, series_number: int, multiframe: bool = False, compress: bool = False, file_names: str = "uid",
                 series_uid: str | None = None, frame_of_reference_uid: str | None = None,
                 name_offset: int = 0) -> list[Path]:
    """Write one series from a 3D volume, its slices taken along voxel axis k.

    Parameters
    ----------
    volume, folder, identity, vendor, header
        The image, where to write (created if missing), who/when, scanner family, protocol.
    series_number, series_uid, frame_of_reference_uid
        Fresh UIDs are generated for the ones left None.
    multiframe
        False: classic MR Image Storage, one file per slice, InstanceNumber 1..n in k order.
        True: one Enhanced MR Image Storage file, frames in k order; TR/TE/TI live in its
        functional groups, not at the top level.
    compress
        RLE Lossless instead of Explicit VR Little Endian.
    file_names
        "uid" (<SOPInstanceUID>.dcm), "sequential" (IM0001...) or "numbered" (00000001...).
    name_offset
        Added to the numbers in file names, so that several series can share one folder.

    Returns
    -------
    The files written, in InstanceNumber order.

    Integer-valued data within 0..65535 are stored as they are (RescaleSlope 1); other data are
    scaled into uint16 with RescaleSlope and RescaleIntercept.
    """
    stored, slope, intercept = _to_uint16(volume.data)
    images = stored.transpose(2, 1, 0)  # (k, j, i): frame k, row r = j, column c = i
    planes = _volume_planes(volume.affine, images.shape[0])
    thickness_mm = float(volume.spacing_mm[2])
    ds = _series_dataset(identity, vendor, header, series_number=series_number,
                         series_uid=series_uid or generate_uid(),
                         frame_of_reference_uid=frame_of_reference_uid or generate_uid())
    window = _window(volume.data)
    if not multiframe:
        _classic_header(ds, header, _IMAGE_TYPE, slope, intercept, thickness_mm)
        ds.WindowCenter, ds.WindowWidth = window
        return _write_classic(ds, list(images), planes, Path(folder), file_names=file_names, compress=compress,
                              name_offset=name_offset)
    datetime_text = identity.study_date.strftime("%Y%m%d") + identity.study_time
    _enhanced_header(ds, header, planes, slope, intercept, thickness_mm, datetime_text, window)
    ds.Rows, ds.Columns = images.shape[1:]
    ds.SOPInstanceUID = generate_uid()
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / _file_name(file_names, name_offset + 1, ds.SOPInstanceUID)
    _save(ds, path, compress, np.ascontiguousarray(images))
    return [path]


def _head_outline(shape: tuple[int, int]) -> np.ndarray:
    """A bright ellipse on black: enough for a localizer image."""
    rows, columns = np.ogrid[:shape[0], :shape[1]]
    inside = ((rows - shape[0] / 2) / (0.4 * shape[0])) ** 2 + ((columns - shape[1] / 2) / (0.33 * shape[1])) ** 2
    return np.where(inside <= 1, 600, 0).astype(np.uint16)


def write_localizer(folder: Path, identity: ExamIdentity, vendor: Vendor, *, series_number: int,
                    shape: tuple[int, int] = (256, 256), frame_of_reference_uid: str | None = None,
                    file_names: str = "uid", compress: bool = False, name_offset: int = 0) -> list[Path]:
    """Three orthogonal 2D slices (sagittal, coronal, axial) through the scanner's isocentre.

    ImageType ORIGINAL\\PRIMARY\\LOCALIZER, the vendor's localizer description, 7 mm slices over a
    250 mm field of view. `shape` is (rows, columns). Returns the files in InstanceNumber order.
    """
    rows, columns = shape
    spacing_mm = 250.0 / max(shape)
    directions = (((0, 1, 0), (0, 0, -1)), ((1, 0, 0), (0, 0, -1)), ((1, 0, 0), (0, 1, 0)))  # LPS: sag, cor, ax
    planes = []
    for along_row, along_column in directions:
        along_row, along_column = np.array(along_row, float), np.array(along_column, float)
        corner = -spacing_mm * ((columns - 1) / 2 * along_row + (rows - 1) / 2 * along_column)
        planes.append(_Plane(corner, np.concatenate([along_row, along_column]), (spacing_mm, spacing_mm)))
    image = _head_outline(shape)
    ds = _series_dataset(identity, vendor, vendor.localizer, series_number=series_number, series_uid=generate_uid(),
                         frame_of_reference_uid=frame_of_reference_uid or generate_uid())
    _classic_header(ds, vendor.localizer, "ORIGINAL\\PRIMARY\\LOCALIZER", 1.0, 0.0, 7.0)
    ds.WindowCenter, ds.WindowWidth = _window(image)
    return _write_classic(ds, [image] * 3, planes, Path(folder), file_names=file_names, compress=compress,
                          name_offset=name_offset)


def write_dwi(volume: Volume, folder: Path, identity: ExamIdentity, vendor: Vendor, *, series_number: int,
              b_values: tuple[float, ...] = (0, 1000), frame_of_reference_uid: str | None = None,
              file_names: str = "uid", compress: bool = False, name_offset: int = 0) -> list[Path]:
    """An axial 2D diffusion series: one stack per b-value at the same positions.

    The volume is subsampled by whole voxels to about 2 x 2 x 5 mm (an axial stack); a b-value's
    image is the volume times exp(-b * ADC) with one white-matter ADC. Each file carries its
    DiffusionBValue; InstanceNumber runs through the stacks in `b_values` order.
    """
    axial = _axial(volume)
    steps = [max(1, round(target / spacing)) for target, spacing in zip(_DWI_SPACING_MM, axial.spacing_mm)]
    data = axial.data[::steps[0], ::steps[1], ::steps[2]].astype(np.float32)
    affine = axial.affine.copy()
    affine[:3, :3] *= steps
    stacks = np.concatenate([data * np.exp(-b * _ADC_MM2_PER_S) for b in b_values], axis=2)
    stored, slope, intercept = _to_uint16(stacks)
    n_slices = data.shape[2]
    planes = _volume_planes(affine, n_slices) * len(b_values)
    per_image = [{"DiffusionBValue": float(b), "DiffusionDirectionality": "ISOTROPIC" if b else "NONE"}
                 for b in b_values for _ in range(n_slices)]
    ds = _series_dataset(identity, vendor, vendor.dwi, series_number=series_number, series_uid=generate_uid(),
                         frame_of_reference_uid=frame_of_reference_uid or generate_uid())
    _classic_header(ds, vendor.dwi, "ORIGINAL\\PRIMARY\\DIFFUSION\\NONE", slope, intercept,
                    float(np.linalg.norm(affine[:3, 2])))
    ds.WindowCenter, ds.WindowWidth = _window(stacks)
    return _write_classic(ds, list(stored.transpose(2, 1, 0)), planes, Path(folder), file_names=file_names,
                          compress=compress, name_offset=name_offset, per_image=per_image)


SERIES_NUMBERS = {"localizer": 1, "flair_2d": 3, "t1": 4, "flair": 5, "dwi": 7}  # also the writing order


def write_exam(folder: Path, identity: ExamIdentity, vendor: Vendor, *, flair: Volume | None, t1: Volume | None,
               extras: tuple[str, ...] = ("localizer",), multiframe: bool = False, compress: bool = False,
               file_names: str = "uid", nested: bool = True,
               shuffle_seed: int | None = None) -> dict[str, list[Path]]:
    """A PACS-like exam folder: the 3D FLAIR and T1 plus `extras`, one FrameOfReferenceUID.

    Parameters
    ----------
    extras
        Any of "localizer", "dwi" (from the FLAIR, else the T1) and "flair_2d" (`thick_slices` of
        the FLAIR written as a 2D FLAIR with the vendor's `flair_2d` header).
    multiframe
        Write the FLAIR, T1 and 2D FLAIR as enhanced multi-frame files; localizer and DWI stay classic.
    compress
        RLE Lossless for every series.
    nested
        Each series in folder/STUDY/SERIESnnn (nnn = series number); otherwise every file in `folder`.
    shuffle_seed
        With "sequential" or "numbered" names, the files of each folder trade names in a random
        order, so that directory order tells nothing ("uid" names already tell nothing).

    Returns
    -------
    {series kind: files in InstanceNumber order}, kinds from SERIES_NUMBERS. Series numbers are
    localizer 1, flair_2d 3, t1 4, flair 5, dwi 7.
    """
    unknown = set(extras) - {"localizer", "dwi", "flair_2d"}
    if unknown:
        raise ValueError(f"unknown extras {sorted(unknown)}; choose from localizer, dwi, flair_2d")
    if "flair_2d" in extras and flair is None:
        raise ValueError("extras 'flair_2d' needs a FLAIR volume")
    if "dwi" in extras and flair is None and t1 is None:
        raise ValueError("extras 'dwi' needs a FLAIR or T1 volume")
    folder = Path(folder)
    frame_uid = generate_uid()
    shared = {"file_names": file_names, "compress": compress, "frame_of_reference_uid": frame_uid}
    writers = {
        "localizer": lambda target, **kw: write_localizer(target, identity, vendor, **kw),
        "flair_2d": lambda target, **kw: write_series(thick_slices(flair), target, identity, vendor, vendor.flair_2d,
                                                      multiframe=multiframe, **kw),
        "t1": lambda target, **kw: write_series(t1, target, identity, vendor, vendor.t1, multiframe=multiframe, **kw),
        "flair": lambda target, **kw: write_series(flair, target, identity, vendor, vendor.flair,
                                                   multiframe=multiframe, **kw),
        "dwi": lambda target, **kw: write_dwi(flair if flair is not None else t1, target, identity, vendor, **kw)}
    wanted = set(extras) | {kind for kind, volume in (("flair", flair), ("t1", t1)) if volume is not None}
    written: dict[str, list[Path]] = {}
    n_files = 0
    for kind, number in SERIES_NUMBERS.items():
        if kind not in wanted:
            continue
        target = folder / "STUDY" / f"SERIES{number:03d}" if nested else folder
        written[kind] = writers[kind](target, series_number=number, name_offset=0 if nested else n_files, **shared)
        n_files += len(written[kind])
    if shuffle_seed is not None and file_names != "uid":
        written = _shuffle_names(written, np.random.default_rng(shuffle_seed))
    return written


def _shuffle_names(written: dict[str, list[Path]], rng: np.random.Generator) -> dict[str, list[Path]]:
    """The files of each folder trade names in a random order (via temporary names: nothing is overwritten)."""
    files = [path for paths in written.values() for path in paths]
    renamed: dict[Path, Path] = {}
    for folder in sorted({path.parent for path in files}):
        here = [path for path in files if path.parent == folder]
        renamed.update(zip(here, [here[index] for index in rng.permutation(len(here))]))
    for path in renamed:
        path.rename(path.with_name(f".{path.name}.shuffling"))
    for path, target in renamed.items():
        path.with_name(f".{path.name}.shuffling").rename(target)
    return {kind: [renamed[path] for path in paths] for kind, paths in written.items()}


def export_patient(patient: Patient, folder: Path, identity: ExamIdentity, vendor: Vendor,
                   **exam_kwargs) -> list[Path]:
    """A PACS export of a patient (e.g. `ingest.load_patient` of a BIDS subject): one exam per visit, in
    folder/<patient id>_<YYYYMMDD>.

    Each visit's FLAIR and T1 are written with `write_exam(**exam_kwargs)`. Every exam has the same
    patient, its own StudyInstanceUID and the visit's date; an empty accession number becomes
    "ACC<YYYYMMDD>". Returns the exam folders in visit order.
    """
    exams = []
    for visit in patient.visits:
        exam_identity = dataclasses.replace(identity, study_date=visit.date, study_uid=generate_uid(),
                                            accession_number=identity.accession_number or f"ACC{visit.date:%Y%m%d}")
        exam = Path(folder) / f"{identity.patient_id}_{visit.date:%Y%m%d}"
        write_exam(exam, exam_identity, vendor, flair=visit.flair, t1=visit.t1, **exam_kwargs)
        exams.append(exam)
    return exams


def truncate(path: Path, keep_fraction: float = 0.5) -> None:
    """Cut a file short to `keep_fraction` of its size, as an interrupted transfer does."""
    if not 0 <= keep_fraction < 1:
        raise ValueError(f"keep_fraction must be in [0, 1), got {keep_fraction}")
    path = Path(path)
    path.write_bytes(path.read_bytes()[:int(path.stat().st_size * keep_fraction)])
