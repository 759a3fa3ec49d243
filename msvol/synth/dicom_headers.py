"""DICOM headers for the synthetic PACS export (msvol.synth.dicom): scanner families' conventions,
the attributes every file of a series shares, and the MR Image and Enhanced MR Image modules.

Geometry: an affine maps voxels to RAS+ mm and DICOM uses LPS, so x and y change sign.
ImageOrientationPatient holds the LPS unit directions of +i and +j, PixelSpacing is
[spacing along j, spacing along i], and slice k sits at LPS(affine @ (0, 0, k, 1)).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import EnhancedMRImageStorage, MRImageStorage, generate_uid
from pydicom.valuerep import format_number_as_ds

STUDY_DESCRIPTION = "MRI BRAIN MS FOLLOW-UP"
IMAGE_TYPE = ["ORIGINAL", "PRIMARY", "M", "NONE"]
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
PROTON_MHZ_PER_T = 42.577  # gyromagnetic ratio of 1H / 2 pi, for ImagingFrequency


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
class Plane:
    """One slice's position in DICOM LPS mm."""

    position: np.ndarray  # ImagePositionPatient: centre of pixel (row 0, column 0)
    orientation: np.ndarray  # ImageOrientationPatient: row direction (+column index), column direction
    pixel_spacing: tuple[float, float]  # (between rows, between columns)


def volume_planes(affine: np.ndarray, n_slices: int) -> list[Plane]:
    """The planes of slices k = 0..n-1 of a volume on `affine` (see the module docstring)."""
    lps = RAS_TO_LPS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    along_i, along_j = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    if abs(along_i @ along_j) > 1e-6:
        raise ValueError("affine axes i and j are not perpendicular; DICOM slices cannot hold that grid")
    orientation = np.concatenate([along_i, along_j])
    return [Plane(lps[:3, 3] + k * lps[:3, 2], orientation, (spacing[1], spacing[0])) for k in range(n_slices)]


def decimal_string(value: float) -> str:
    """A decimal string (DS holds at most 16 characters); its 12+ significant digits keep 1e-4 mm."""
    return format_number_as_ds(float(value))


def decimal_strings(values) -> list[str]:
    return [decimal_string(value) for value in values]


def series_dataset(identity: ExamIdentity, vendor: Vendor, header: SequenceHeader, *, series_number: int,
                    series_uid: str, frame_of_reference_uid: str) -> Dataset:
    """Attributes shared by every file of a series, classic or enhanced."""
    date, time = identity.study_date.strftime("%Y%m%d"), identity.study_time
    return dataset_item(
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
        MagneticFieldStrength=decimal_string(vendor.field_strength_t), MRAcquisitionType=header.mr_acquisition_type,
        SamplesPerPixel=1, PhotometricInterpretation="MONOCHROME2", BitsAllocated=16, BitsStored=16, HighBit=15,
        PixelRepresentation=0)


def classic_header(ds: Dataset, header: SequenceHeader, image_type: str | list[str], slope: float, intercept: float,
                    slice_thickness_mm: float) -> None:
    """The MR Image module: acquisition values at the top level, as classic files carry them."""
    ds.update(dict(
        SOPClassUID=MRImageStorage, ImageType=image_type, ScanningSequence=header.scanning_sequence,
        SequenceVariant=header.sequence_variant, ScanOptions="", SequenceName=header.sequence_name,
        SliceThickness=decimal_string(slice_thickness_mm), SpacingBetweenSlices=decimal_string(slice_thickness_mm),
        RepetitionTime=decimal_string(header.repetition_time_ms), EchoTime=decimal_string(header.echo_time_ms), EchoTrainLength=1,
        FlipAngle=decimal_string(header.flip_angle_deg), NumberOfAverages="1",
        ImagingFrequency=decimal_string(float(ds.MagneticFieldStrength) * PROTON_MHZ_PER_T),
        RescaleIntercept=decimal_string(intercept), RescaleSlope=decimal_string(slope), RescaleType="US"))
    if header.inversion_time_ms is not None:
        ds.InversionTime = decimal_string(header.inversion_time_ms)


def window_values(data: np.ndarray) -> list[str]:
    """WindowCenter and WindowWidth spanning the data's range, as decimal strings."""
    low, high = float(data.min()), float(data.max())
    return decimal_strings([(low + high) / 2, max(high - low, 1.0)])


def dataset_item(**attributes) -> Dataset:
    """A dataset (or sequence item) from keyword arguments."""
    item = Dataset()
    item.update(attributes)
    return item


def enhanced_header(ds: Dataset, header: SequenceHeader, planes: list[Plane], slope: float, intercept: float,
                     slice_thickness_mm: float, datetime_text: str, window: list[str]) -> None:
    """The Enhanced MR Image IOD: top-level image modules plus shared and per-frame functional groups."""
    inverted = header.inversion_time_ms is not None
    gradient = "GR" in header.scanning_sequence.split("\\")
    frame_type = dict(PixelPresentation="MONOCHROME", VolumetricProperties="VOLUME",
                      VolumeBasedCalculationTechnique="NONE", ComplexImageComponent="MAGNITUDE",
                      AcquisitionContrast=header.contrast)
    organization_uid = generate_uid()
    ds.update(dict(
        SOPClassUID=EnhancedMRImageStorage, ImageType=IMAGE_TYPE, InstanceNumber=1, NumberOfFrames=len(planes),
        AcquisitionDateTime=datetime_text, AcquisitionDuration=300.0, ContentQualification="PRODUCT",
        ResonantNucleus="1H", KSpaceFiltering="NONE", ApplicableSafetyStandardAgency="IEC",
        ImagingFrequency=decimal_string(float(ds.MagneticFieldStrength) * PROTON_MHZ_PER_T), **frame_type,
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
        DimensionOrganizationSequence=[dataset_item(DimensionOrganizationUID=organization_uid)],
        DimensionIndexSequence=[dataset_item(DimensionOrganizationUID=organization_uid, DimensionIndexPointer=pointer,
                                      FunctionalGroupPointer=0x00209111) for pointer in (0x00209056, 0x00209057)]))
    ds.SharedFunctionalGroupsSequence = [dataset_item(
        PixelMeasuresSequence=[dataset_item(PixelSpacing=decimal_strings(planes[0].pixel_spacing),
                                     SliceThickness=decimal_string(slice_thickness_mm),
                                     SpacingBetweenSlices=decimal_string(slice_thickness_mm))],
        PlaneOrientationSequence=[dataset_item(ImageOrientationPatient=decimal_strings(planes[0].orientation))],
        MRTimingAndRelatedParametersSequence=[dataset_item(
            RepetitionTime=decimal_string(header.repetition_time_ms), FlipAngle=decimal_string(header.flip_angle_deg), EchoTrainLength=1,
            RFEchoTrainLength=1, GradientEchoTrainLength=int(gradient), SpecificAbsorptionRateSequence=Sequence(),
            GradientOutputType="DB_DT", OperatingModeSequence=Sequence())],
        MREchoSequence=[dataset_item(EffectiveEchoTime=header.echo_time_ms)],
        MRModifierSequence=[dataset_item(
            InversionRecovery="YES" if inverted else "NO", FlowCompensation="NONE", T2Preparation="NO",
            SpectrallySelectedExcitation="NONE", SpatialPresaturation="NONE", PartialFourier="NO",
            ParallelAcquisition="NO", **({"InversionTimes": [header.inversion_time_ms]} if inverted else {}))],
        MRImagingModifierSequence=[dataset_item(MagnetizationTransfer="NONE", BloodSignalNulling="NO", Tagging="NONE",
                                         TransmitterFrequency=float(ds.ImagingFrequency), PixelBandwidth="200")],
        MRFOVGeometrySequence=[dataset_item(InPlanePhaseEncodingDirection="ROW", PercentSampling="100",
                                     PercentPhaseFieldOfView="100")],
        MRAveragesSequence=[dataset_item(NumberOfAverages="1")],
        MRReceiveCoilSequence=[dataset_item(ReceiveCoilName="HEAD 32", ReceiveCoilType="MULTICOIL")],
        MRTransmitCoilSequence=[dataset_item(TransmitCoilName="BODY", TransmitCoilType="BODY")],
        MRImageFrameTypeSequence=[dataset_item(FrameType=IMAGE_TYPE, **frame_type)],
        PixelValueTransformationSequence=[dataset_item(RescaleIntercept=decimal_string(intercept), RescaleSlope=decimal_string(slope),
                                                RescaleType="US")],
        FrameVOILUTSequence=[dataset_item(WindowCenter=window[0], WindowWidth=window[1])],
        FrameAnatomySequence=[dataset_item(FrameLaterality="U", AnatomicRegionSequence=[dataset_item(
            CodeValue="12738006", CodingSchemeDesignator="SCT", CodeMeaning="Brain")])])]
    ds.PerFrameFunctionalGroupsSequence = [dataset_item(
        FrameContentSequence=[dataset_item(
            FrameAcquisitionDateTime=datetime_text, FrameReferenceDateTime=datetime_text,
            FrameAcquisitionDuration=1000.0, StackID="1", InStackPositionNumber=index + 1,
            DimensionIndexValues=[1, index + 1])],
        PlanePositionSequence=[dataset_item(ImagePositionPatient=decimal_strings(plane.position))])
        for index, plane in enumerate(planes)]
