"""DICOM export: msvol's results back to PACS, as a Segmentation and a Secondary Capture.

Contract. The pipeline hands over, per follow-up interval, lesion label arrays on the NATIVE grid of
the follow-up FLAIR series and a `SourceSeries` saying which DICOM frame each slice came from. This
module writes

- a BINARY Segmentation (SEG) with three segments, declared even when empty:
  1 "MS lesion" (every lesion voxel at follow-up), 2 "New lesion", 3 "Enlarging lesion";
- a Secondary Capture (SC): an RGB page rendering the report summary.

Vocabulary. *Source*: the follow-up FLAIR series the SEG references (classic: one file per slice;
enhanced: one multi-frame file). *Pseudonymised*: the patient module carries the pseudonym instead
of the real identity; StudyInstanceUID, the referenced series/instance UIDs and dates are kept so
the objects still line up with the images. Identity attributes are never copied and then deleted:
the source headers are reduced to a keep-list (geometry, UIDs, dates) before highdicom sees them.

UIDs are derived from the content (uuid5 under a 2.25 root), so writing the same result twice gives
the same SOP Instance UID and a PACS sees a duplicate rather than a second series; changed content
gets new UIDs. Files are written atomically (temp file in the same folder, then rename).
"""

from __future__ import annotations

import copy
import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from msvol import __version__
from msvol.errors import InputError, SpaceError

SEG_SERIES_DESCRIPTION = "msvol lesions (research)"
SUMMARY_SERIES_DESCRIPTION = "msvol report (research)"
SUMMARY_TITLE = "msvol report -- research software, not for diagnosis"
MANUFACTURER = "msvol"
DEVICE_SERIAL_NUMBER = "msvol-0001"  # software has no serial; a constant keeps the Equipment module stable
DEIDENTIFICATION_METHOD = "msvol pseudonym; UIDs and dates retained"  # LO: at most 64 characters
# (number, label, description, display colour RGB); label maps are turned into masks with `> 0`
SEGMENTS = (
    (1, "MS lesion", "All lesion voxels at follow-up", (255, 215, 0)),
    (2, "New lesion", "Lesions absent at baseline", (230, 25, 25)),
    (3, "Enlarging lesion", "Lesions grown since baseline", (255, 140, 0)),
)
_UID_NAMESPACE = uuid.UUID("5d1b4a52-6f0e-4c47-9d0a-7c1e6a3b2f10")  # msvol's fixed namespace for uuid5 UIDs
# Source attributes a pseudonymised object may inherit: identifiers that tie it to the images,
# geometry highdicom reads to place the frames, and the scanner make. Anything else (names,
# institution, accession number, physicians, descriptions) never reaches the output.
_KEEP_WHEN_PSEUDONYMISED = (
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
    "FrameOfReferenceUID", "PositionReferenceIndicator", "Modality", "StudyDate", "StudyTime",
    "SeriesNumber", "InstanceNumber", "ImageType", "Manufacturer", "ManufacturerModelName",
    "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "SliceThickness",
    "SpacingBetweenSlices", "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "NumberOfFrames",
    "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence", "DimensionOrganizationSequence",
    "DimensionIndexSequence", "DimensionOrganizationType", "BodyPartExamined", "Laterality",
)
# Of the functional groups, only the macros highdicom reads to place frames: the Unassigned ... Converted
# Attributes sequences of a legacy-converted image may hold any source attribute, identity included.
_KEEP_IN_FUNCTIONAL_GROUPS = ("PixelMeasuresSequence", "PlanePositionSequence", "PlaneOrientationSequence",
                              "FrameContentSequence")

_TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
                        "ReferringPhysicianName", "StudyID", "StudyDate", "StudyTime")


@dataclass(frozen=True)
class SourceSeries:
    """Where each slice of a converted volume came from: slice k of the volume (data[:, :, k]) is frame
    frame_numbers[k] (1-based) of files[k]. Classic series: one file per slice, frame 1. Enhanced multi-frame:
    the same file repeated, frame numbers 1..n in the volume's k order. Pixel (row r, column c) of that frame is
    data[c, r, k]."""

    files: tuple[Path, ...]
    frame_numbers: tuple[int, ...]

    def __post_init__(self):
        object.__setattr__(self, "files", tuple(Path(file) for file in self.files))
        object.__setattr__(self, "frame_numbers", tuple(int(number) for number in self.frame_numbers))
        if not self.files:
            raise InputError("SourceSeries: no files; pass the DICOM files of the follow-up FLAIR series")
        if len(self.files) != len(self.frame_numbers):
            raise InputError(f"SourceSeries: {len(self.files)} files but {len(self.frame_numbers)} frame numbers; "
                             "give one (file, frame) pair per slice")
        if min(self.frame_numbers) < 1:
            raise InputError("SourceSeries: frame numbers are 1-based; found a number below 1")


def write_segmentation(path: Path, source: SourceSeries, lesions: np.ndarray, new: np.ndarray,
                       enlarging: np.ndarray, *, pseudonym: str | None, series_number: int = 901) -> Path:
    """Write the lesion masks as a BINARY DICOM Segmentation referencing the follow-up FLAIR series.

    Every segment has one frame per source frame, empty ones included (omit_empty_frames=False), so
    "no new lesion" is an explicit all-zero segment that every reader can load, and the SEG has the
    geometry of the FLAIR. Size: 3 x frames x rows x columns / 8 bytes (512 x 512 x 190: 19 MB).

    Parameters
    ----------
    path : the .dcm file to write (its folder is created when missing).
    source : the follow-up FLAIR's files and frames, in the volume's slice order.
    lesions, new, enlarging : integer label maps (0 = background) of shape (columns, rows, slices)
        in the `SourceSeries` convention; segments 1, 2 and 3 are their voxels > 0.
    pseudonym : None to copy the source's patient and study modules unchanged (for PACS); otherwise
        PatientName and PatientID become the pseudonym, birth date and sex are empty, and no other
        identifying source attribute is carried.
    series_number : SeriesNumber of the SEG series.

    Returns
    -------
    Path : `path`.

    Raises
    ------
    InputError : unreadable source files, an unsupported source layout, or an invalid pseudonym.
    SpaceError : the arrays do not match the source's rows, columns and slice count.
    """
    import highdicom as hd  # deferred: 0.3 s to import, and `msvol --help` should stay instant

    path = Path(path)
    _check_pseudonym(pseudonym)
    masks = [np.asarray(labels) > 0 for labels in (lesions, new, enlarging)]
    headers, frame_index = _read_source(source, [mask.shape for mask in masks])
    n_frames = int(headers[0].get("NumberOfFrames", 1) or 1) if len(headers) == 1 else len(headers)
    rows, columns = masks[0].shape[1], masks[0].shape[0]
    # (frames, rows, columns, segments): the "stacked segments" layout; segments may overlap in BINARY
    stacked = np.zeros((n_frames, rows, columns, len(SEGMENTS)), dtype=np.uint8)
    for slice_index, frame in enumerate(frame_index):
        for segment, mask in enumerate(masks):
            stacked[frame, :, :, segment] = mask[:, :, slice_index].T
    if pseudonym is None:
        for header in headers:  # our own reads: filling them changes nothing of the caller's
            _fill_type2(header)
        sources = headers
    else:
        sources = [_reduced_header(header, pseudonym) for header in headers]
    digest = _digest(np.packbits(stacked).tobytes(), str(stacked.shape))
    series_uid = _derived_uid("seg-series", str(headers[0].SeriesInstanceUID), __version__, str(series_number),
                              pseudonym or "", digest)
    algorithm = hd.AlgorithmIdentificationSequence(name="msvol", family=codes.DCM.ArtificialIntelligence,
                                                   version=__version__)
    descriptions = []
    for number, label, text, colour in SEGMENTS:
        description = hd.seg.SegmentDescription(
            segment_number=number, segment_label=label,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, anatomic_regions=[codes.SCT.Brain],
            display_color=hd.color.CIELabColor.from_rgb(*colour))
        description.SegmentDescription = text
        descriptions.append(description)
    segmentation = hd.seg.Segmentation(
        source_images=sources, pixel_array=stacked, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=series_uid, series_number=series_number,
        sop_instance_uid=_derived_uid("instance", series_uid), instance_number=1, manufacturer=MANUFACTURER,
        manufacturer_model_name="msvol", software_versions=__version__, device_serial_number=DEVICE_SERIAL_NUMBER,
        content_label="MSVOL_LESIONS", content_description=SEG_SERIES_DESCRIPTION,
        transfer_syntax_uid=ExplicitVRLittleEndian, omit_empty_frames=False)
    segmentation.SeriesDescription = SEG_SERIES_DESCRIPTION
    if pseudonym is None:
        _copy_patient_group(segmentation, headers[0])
    else:
        _mark_pseudonymised(segmentation, pseudonym)
    return _save_atomically(segmentation, path)


def write_summary(path: Path, report: dict, source: SourceSeries, *, pseudonym: str | None,
                  series_number: int = 902) -> Path:
    """Write the report summary as an RGB Secondary Capture in the follow-up FLAIR's study.

    Parameters
    ----------
    path : the .dcm file to write (its folder is created when missing).
    report : the report model (msvol.outputs.report.build_report).
    source : the follow-up FLAIR series; its first file gives the patient and study.
    pseudonym : None to copy the patient and study modules from the source; otherwise as in
        `write_segmentation`, and the page names the pseudonym instead of report["subject"].
    series_number : SeriesNumber of the SC series.

    Returns
    -------
    Path : `path`.

    Raises
    ------
    InputError : an unreadable source file or an invalid pseudonym.
    """
    import highdicom as hd  # deferred, as in write_segmentation

    path = Path(path)
    _check_pseudonym(pseudonym)
    reference = _read_header(source.files[0])
    subject = pseudonym if pseudonym is not None else str(report.get("subject", ""))
    pixels = _render_summary(_summary_lines(report, subject))
    series_uid = _derived_uid("sc-series", str(reference.SeriesInstanceUID), __version__, str(series_number),
                              pseudonym or "", _digest(pixels.tobytes(), str(pixels.shape)))
    ref_dataset = reference if pseudonym is None else _reduced_header(reference, pseudonym)
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref_dataset, pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8,
        # a page of text has no patient orientation; highdicom insists on one, emptied below (Type 2)
        coordinate_system="PATIENT", patient_orientation=("L", "P"), series_instance_uid=series_uid,
        series_number=series_number, sop_instance_uid=_derived_uid("instance", series_uid), instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name="msvol", software_versions=__version__,
        device_serial_number=DEVICE_SERIAL_NUMBER, series_description=SUMMARY_SERIES_DESCRIPTION,
        transfer_syntax_uid=ExplicitVRLittleEndian)
    image.PatientOrientation = ""
    # General Series Laterality is Type 2C, needed for a paired body part; a brain is unpaired
    image.BodyPartExamined = "BRAIN"
    if pseudonym is None:
        image.copy_patient_and_study_information(reference)  # the full modules, as the SEG gets them
        _copy_patient_group(image, reference)
        # the page names the pipeline's subject id, which a site may have derived from its records
        image.BurnedInAnnotation = "YES"
    else:
        _mark_pseudonymised(image, pseudonym)
        image.BurnedInAnnotation = "NO"  # the page carries only the pseudonym and visit dates
    return _save_atomically(image, path)


def _check_pseudonym(pseudonym: str | None) -> None:
    if pseudonym is None:
        return
    if not pseudonym or len(pseudonym) > 64 or not pseudonym.isascii() or any(ch in pseudonym for ch in "\\^=\r\n"):
        raise InputError("pseudonym must be 1-64 ASCII characters without '\\', '^', '=' or line breaks "
                         "(it becomes PatientName and PatientID)")


def _read_header(file: Path) -> Dataset:
    try:
        # highdicom needs only the metadata of the source images, never their pixels
        return pydicom.dcmread(file, stop_before_pixels=True)
    except (OSError, pydicom.errors.InvalidDicomError) as error:
        raise InputError(f"{file}: cannot read as DICOM ({type(error).__name__}); "
                         "pass the files of the follow-up FLAIR series") from error


def _read_source(source: SourceSeries, shapes: list[tuple[int, ...]]) -> tuple[list[Dataset], list[int]]:
    """The source headers highdicom takes, and for each slice k the 0-based index of its SEG frame."""
    shape = shapes[0]
    if len(shape) != 3 or any(other != shape for other in shapes):
        raise SpaceError(f"lesions, new and enlarging must be 3D arrays of one shape; got {shapes}")
    if shape[2] != len(source.files):
        raise SpaceError(f"{source.files[0].parent}: the arrays have {shape[2]} slices but the source series "
                         f"lists {len(source.files)}; pass arrays on the follow-up FLAIR's native grid")
    unique = list(dict.fromkeys(source.files))
    if len(unique) == 1 and len(source.files) > 1:  # enhanced multi-frame: one file, one frame per slice
        header = _read_header(unique[0])
        n_frames = int(header.get("NumberOfFrames", 1) or 1)
        if max(source.frame_numbers) > n_frames or len(set(source.frame_numbers)) != len(source.frame_numbers):
            raise InputError(f"{unique[0]}: has {n_frames} frames; the source series needs distinct frame "
                             f"numbers within 1..{n_frames}")
        headers, frame_index = [header], [number - 1 for number in source.frame_numbers]
    elif len(unique) == len(source.files) and set(source.frame_numbers) == {1}:  # classic: one file per slice
        headers, frame_index = [_read_header(file) for file in source.files], list(range(len(source.files)))
        for file, header in zip(source.files, headers):
            if int(header.get("NumberOfFrames", 1) or 1) != 1:
                raise InputError(f"{file}: a multi-frame file in a series of single-frame files; msvol exports "
                                 "against either one enhanced file or one file per slice")
        if len({str(header.SeriesInstanceUID) for header in headers}) != 1:
            raise InputError(f"{source.files[0].parent}: the source files belong to more than one series; "
                             "pass the files of the follow-up FLAIR series only")
    else:
        raise InputError(f"{source.files[0].parent}: unsupported source layout ({len(unique)} files for "
                         f"{len(source.files)} slices); expected one file per slice or one multi-frame file")
    for file, header in zip(unique, headers):
        if (int(header.Rows), int(header.Columns)) != (shape[1], shape[0]):
            raise SpaceError(f"{file}: frames are {header.Rows} rows x {header.Columns} columns but the arrays "
                             f"are {shape[0]} x {shape[1]} (columns x rows); pass arrays on the native FLAIR grid")
    return headers, frame_index


def _reduced_header(header: Dataset, pseudonym: str) -> Dataset:
    """A copy of `header` holding only the keep-list, with the pseudonym as the patient."""
    reduced = Dataset()
    for keyword in _KEEP_WHEN_PSEUDONYMISED:
        if keyword in header:
            reduced[keyword] = header[keyword]
    for keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        if keyword in reduced:
            setattr(reduced, keyword, [Dataset({item[name].tag: item[name] for name in _KEEP_IN_FUNCTIONAL_GROUPS
                                                if name in item}) for item in reduced[keyword].value])
    if hasattr(header, "file_meta"):
        reduced.file_meta = header.file_meta
    reduced.PatientName = _person_name(pseudonym)
    reduced.PatientID = pseudonym
    reduced.PatientBirthDate = ""
    reduced.PatientSex = ""
    for keyword in ("AccessionNumber", "ReferringPhysicianName", "StudyID"):
        setattr(reduced, keyword, "")
    _fill_type2(reduced)
    return copy.deepcopy(reduced)  # the nested sequences must not be shared with the caller's dataset


def _fill_type2(header: Dataset) -> None:
    """Add the Type 2 patient and study attributes a source lacks, empty: highdicom's Segmentation
    reads them unconditionally and fails on an anonymised series that dropped them."""
    for keyword in _TYPE2_PATIENT_STUDY:
        if keyword not in header:
            setattr(header, keyword, "")


def _copy_patient_group(dataset: Dataset, header: Dataset) -> None:
    """Copy every patient attribute (group 0010) of the source, retired ones included (OtherPatientIDs),
    which highdicom's module tables leave out."""
    for element in header.group_dataset(0x0010):
        dataset[element.tag] = copy.deepcopy(element)


def _mark_pseudonymised(dataset: Dataset, pseudonym: str) -> None:
    """Enforce the pseudonymised patient module on a finished object (belt and braces)."""
    dataset.PatientName = _person_name(pseudonym)
    dataset.PatientID = pseudonym
    dataset.PatientBirthDate = ""
    dataset.PatientSex = ""
    for keyword in ("IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence", "OtherPatientIDs",
                    "OtherPatientIDsSequence", "OtherPatientNames", "PatientBirthTime", "PatientAge",
                    "PatientSize", "PatientWeight", "PatientAddress", "PatientComments", "EthnicGroup",
                    "ReferencedPatientSequence", "InstitutionName"):
        if keyword in dataset:
            del dataset[keyword]
    for keyword in ("AccessionNumber", "ReferringPhysicianName", "StudyID"):  # Type 2: present, empty
        setattr(dataset, keyword, "")
    dataset.PatientIdentityRemoved = "YES"
    dataset.DeidentificationMethod = DEIDENTIFICATION_METHOD
    dataset.LongitudinalTemporalInformationModified = "UNMODIFIED"


def _person_name(pseudonym: str) -> str:
    """The pseudonym as a PN family name; the trailing caret marks a one-component name (PS3.5 6.2.1)."""
    return f"{pseudonym}^"


def _summary_lines(report: dict, subject: str) -> list[tuple[str, int, str]]:
    """(style, indent level, text) lines of the summary page; style is "title", "heading" or "body"."""
    version = report.get("software", {}).get("version", __version__)
    lines = [("title", 0, SUMMARY_TITLE),
             ("body", 0, f"Subject {subject}    msvol {version}    report schema {report.get('schema_version', '?')}"),
             ("body", 0, ""), ("heading", 0, "Timepoints")]
    for timepoint in report.get("timepoints", []):
        lines.append(("body", 1, f"{timepoint['session']}    {timepoint['date']}    "
                                 f"brain volume {timepoint['brain_volume_ml']:.1f} ml    "
                                 f"lesions {timepoint['lesion_count']} ({timepoint['lesion_volume_ml']:.2f} ml)"))
    lines += [("body", 0, ""), ("heading", 0, "Intervals")]
    for interval in report.get("intervals", []):
        counts = interval["counts"]
        annualised = interval.get("pbvc_annualized_percent")
        annualised_text = "n/a" if annualised is None else f"{annualised:+.2f} %/year"
        lines.append(("body", 1, f"{interval['from_session']} -> {interval['to_session']} "
                                 f"({interval['years']:.2f} years)    new {counts['new']}    "
                                 f"enlarging {counts['enlarging']}    PBVC {interval['pbvc_percent']:+.2f} % "
                                 f"(annualised {annualised_text})"))
        flags = interval.get("qc_flags", [])
        lines.append(("body", 2, "QC flags: none" if not flags else "QC flags:"))
        lines += [("body", 3, f"{flag['code']}: {flag['message']}") for flag in flags]
    subject_flags = report.get("qc_flags", [])
    if subject_flags:
        lines += [("body", 0, ""), ("heading", 0, "Subject and visit QC flags")]
        lines += [("body", 1, f"[{flag['scope']}] {flag['code']}: {flag['message']}") for flag in subject_flags]
    lines += [("body", 0, ""), ("heading", 0, "Findings await radiologist confirmation."),
              ("body", 0, str(report.get("disclaimer", "")))]
    return lines


def _render_summary(lines: list[tuple[str, int, str]], width: int = 1024) -> np.ndarray:
    """Draw the lines on a white RGB page; long lines wrap. Returns (rows, columns, 3) uint8."""
    from PIL import Image, ImageDraw

    fonts = {style: _font(size) for style, size in (("title", 28), ("heading", 21), ("body", 19))}
    colours = {"title": (140, 0, 0), "heading": (0, 0, 0), "body": (30, 30, 30)}
    margin, indent_px = 32, 28
    laid_out = []  # (style, x, text, line height)
    for style, level, text in lines:
        font = fonts[style]
        x = margin + level * indent_px
        height = int(font.getbbox("Ag")[3] * 1.35) + 2
        for number, piece in enumerate(_wrap(text, font, width - margin - x - indent_px)):
            laid_out.append((style, x + (indent_px if number else 0), piece, height))
    page = Image.new("RGB", (width, 2 * margin + sum(height for *_, height in laid_out)), (255, 255, 255))
    draw = ImageDraw.Draw(page)
    y = margin
    for style, x, piece, height in laid_out:
        draw.text((x, y), piece, font=fonts[style], fill=colours[style])
        y += height
    return np.asarray(page, dtype=np.uint8)


def _wrap(text: str, font, width_px: float) -> list[str]:
    """Greedy word wrap measured in pixels (the default font is proportional)."""
    pieces: list[str] = []
    for word in text.split(" "):
        if pieces and font.getlength(f"{pieces[-1]} {word}") <= width_px:
            pieces[-1] = f"{pieces[-1]} {word}"
        else:
            pieces.append(word)
    return pieces or [""]


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()  # older Pillow or no FreeType: the small bitmap font


def _digest(*parts: bytes | str) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part.encode() if isinstance(part, str) else part)
    return hasher.hexdigest()


def _derived_uid(*parts: str) -> str:
    """A UID under the 2.25 (UUID) root, derived from `parts`: same parts, same UID."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, chr(31).join(parts)).int}"


def _save_atomically(dataset: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # a unique name opened with "xb" (not mkstemp, whose 0600 mode os.replace would keep): umask applies
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "xb") as stream:
            dataset.save_as(stream, enforce_file_format=True)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
