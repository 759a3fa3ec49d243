"""DICOM ingest: exam folders exported from PACS -> patients, exams, checked series -> Patient.

Steps: `scan` reads the headers of every file below the given folders (pydicom, a fixed list of
tags: patient names and birth dates are never read), groups files into series, series into
exams (one patient, one StudyDate; studies of the same day are one exam) and applies the
protocol (`msvol.ingest.protocol`). `load_patient` converts the chosen 3D FLAIR and 3D T1 of each usable
exam with SimpleITK/GDCM (any transfer syntax GDCM decodes) on the geometry computed from the
headers, and orders the exams by date.

Files that are not DICOM are ignored; DICOM files that are truncated or unreadable are skipped
with a warning naming the file, and everything else is still processed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from msvol.config import IngestParams
from msvol.datatypes import Acquisition, Patient, QCFlag, SeriesInfo, Visit, Volume
from msvol.errors import InputError
from msvol.ingest import bids, protocol

# Everything msvol reads from a header. Patient name and birth date are deliberately absent.
HEADER_TAGS = (
    "SOPClassUID", "SOPInstanceUID", "PatientID", "IssuerOfPatientID", "StudyInstanceUID", "StudyDate", "StudyTime",
    "SeriesDate", "AcquisitionDate", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "ProtocolName",
    "Modality", "ImageType", "MRAcquisitionType", "RepetitionTime", "EchoTime", "InversionTime", "Manufacturer",
    "ManufacturerModelName", "SoftwareVersions", "MagneticFieldStrength", "ImagePositionPatient",
    "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "Rows", "Columns", "NumberOfFrames",
    "InstanceNumber", "ContrastBolusAgent", "BitsAllocated", "SamplesPerPixel", "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
)
# MR, enhanced MR, CT, enhanced CT, PET, secondary capture: images that must have Rows and UIDs
IMAGE_STORAGE_CLASSES = {"1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.2",
                         "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.128", "1.2.840.10008.5.1.4.1.1.7"}
UNCOMPRESSED_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
NOT_IMAGES = {"DICOMDIR"}


@dataclass(frozen=True, eq=False)
class Exam:
    """The series of one patient on one day, with the protocol's decision for each role."""

    patient_id: str  # the real PatientID: kept in memory, never logged or written by default
    date: dt.date
    study_uids: tuple[str, ...]
    folder: Path  # the deepest folder holding all its files, for messages
    series: tuple[SeriesInfo, ...]
    decisions: dict[str, protocol.RoleDecision]
    notes: tuple[str, ...] = ()  # e.g. a date taken from SeriesDate because StudyDate was absent

    @property
    def refusal(self) -> str | None:
        """Why the exam cannot be analysed, or None when it can."""
        refused = [(role, decision.why) for role, decision in self.decisions.items() if decision.chosen is None]
        if len(refused) > 1 and len({why for _, why in refused}) == 1:
            return refused[0][1]  # the whole exam (no date, no PatientID): say it once
        return "; ".join(f"{protocol.ROLE_NAMES[role]}: {why}" for role, why in refused) or None

    @property
    def warnings(self) -> list[str]:
        """Protocol deviations (warn) of the chosen series."""
        return [f"{protocol.ROLE_NAMES[role]} {check.rule}: {check.measured} (expected {check.limit})"
                for role, decision in self.decisions.items() if decision.chosen is not None
                for check in decision.chosen.checks if check.status == "warn"]


@dataclass(frozen=True)
class Inventory:
    """Everything found below the scanned folders."""

    patients: dict[str, tuple[Exam, ...]]  # PatientID -> exams ordered by date
    skipped: tuple[str, ...]  # one warning per DICOM file that could not be used


def looks_like_dicom(path: Path) -> bool:
    """True when `path` is a folder with no BIDS layout: the caller treats it as a DICOM export."""
    return Path(path).is_dir() and not Path(path).name.startswith("sub-") and not any(Path(path).glob("sub-*"))


def scan(folders: list[Path], rules: protocol.Protocol, limits: IngestParams) -> Inventory:
    """Read every header below `folders` and group the files into patients and exams.

    Raises InputError when a folder does not exist or holds no DICOM image at all.
    """
    headers, skipped, broken = [], [], defaultdict(int)
    for folder in folders:
        folder = Path(folder)
        if not folder.exists():
            raise InputError(f"{folder}: no such file or folder")
        for path in _files_below(folder):
            header, problem = _read_header(path)
            if problem:
                skipped.append(f"{path}: {problem}; file skipped")
                if header is not None:
                    broken[_series_key(header)] += 1
            elif header is not None:
                headers.append((path, header))
    if not headers:
        raise InputError(f"{', '.join(map(str, folders))}: no DICOM images found ({len(skipped)} unreadable DICOM "
                         f"files) and no BIDS sub-* folders; expected DICOM exam folders or a BIDS dataset")
    by_series = defaultdict(list)
    for path, header in headers:
        by_series[_series_key(header)].append((path, header))
    by_day = defaultdict(list)
    for key, files in by_series.items():
        info = _series_info(files)
        if broken[key]:  # its truncated files are missing slices, wherever they were in the stack
            info = dataclasses.replace(info, problems=info.problems + (f"{broken[key]} of its files are truncated",))
        patient_id = key[0]
        date, note = _exam_date(files[0][1])
        by_day[(patient_id, date)].append((info, note))
    patients = defaultdict(list)
    for (patient_id, date), entries in by_day.items():
        series = tuple(sorted((info for info, _ in entries), key=lambda s: (s.number or 0, s.series_uid)))
        notes = tuple(sorted({note for _, note in entries if note}))
        folder = Path(os.path.commonpath([str(path.parent) for info in series for path in info.files]))
        missing = ("the exam has no PatientID; msvol cannot tell which exams belong to one patient"
                   if not patient_id.strip() else "the exam has no StudyDate, SeriesDate or AcquisitionDate; "
                   "msvol needs the exam date" if date is None else None)
        if missing:
            decisions = {role: protocol.RoleDecision(role, (), None, missing) for role in protocol.ROLES}
        else:
            decisions = protocol.exam_decisions(list(series), rules, limits)
        patients[patient_id].append(Exam(patient_id, date or dt.date.min, tuple(sorted({s.study_uid for s in series})),
                                         folder, series, decisions, notes))
    return Inventory({key: tuple(sorted(exams, key=lambda exam: exam.date)) for key, exams in patients.items()},
                     tuple(skipped))


def _series_key(header) -> tuple[str, str, str]:
    return str(header.get("PatientID", "")), str(header.StudyInstanceUID), str(header.SeriesInstanceUID)


def _files_below(folder: Path):
    if folder.is_file():
        yield folder
        return
    for root, _, names in os.walk(folder):
        for name in sorted(names):
            if name not in NOT_IMAGES and not name.startswith("."):
                yield Path(root) / name


def _read_header(path: Path):
    """(header, None) for a usable image file, (header or None, problem) for a broken one, (None, None) for a
    file that is not a DICOM image. A truncated file's header is returned with the problem so that its
    series knows a slice is missing."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(HEADER_TAGS))
    except InvalidDicomError:
        return None, None  # not DICOM (a readme, a viewer program): not our business
    except Exception as exc:  # pydicom raises many types on a cut or corrupt file
        return None, f"unreadable DICOM header ({type(exc).__name__})"
    if "SeriesInstanceUID" not in header or "StudyInstanceUID" not in header or "Rows" not in header:
        storage = str(getattr(getattr(header, "file_meta", None), "MediaStorageSOPClassUID", ""))
        if storage in IMAGE_STORAGE_CLASSES:  # an image whose header stops early: cut in transfer
            return None, "incomplete header (truncated file?)"
        return None, None  # not an image (a structured report, a presentation state)
    syntax = str(getattr(header.file_meta, "TransferSyntaxUID", "")) if hasattr(header, "file_meta") else ""
    if syntax in UNCOMPRESSED_SYNTAXES:
        expected = (int(header.Rows) * int(header.Columns) * int(header.get("BitsAllocated", 16)) // 8
                    * int(header.get("SamplesPerPixel", 1)) * int(header.get("NumberOfFrames", 1) or 1))
        if path.stat().st_size < expected:
            return header, f"truncated (file of {path.stat().st_size} bytes, pixel data alone needs {expected})"
    return header, None


def _number(value) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _one(value):
    """The first of a multi-valued element, or the value itself (pydicom returns one value unwrapped)."""
    from pydicom.multival import MultiValue

    return (value[0] if len(value) else None) if isinstance(value, (MultiValue, list, tuple)) else value


def _text(value) -> str | None:
    """A possibly multi-valued string element as DICOM writes it (values joined by a backslash)."""
    from pydicom.multival import MultiValue

    if value in (None, ""):
        return None
    return "\\".join(map(str, value)) if isinstance(value, (MultiValue, list, tuple)) else str(value)


def _first(header, *path: str):
    """A value nested in functional-group sequences, e.g. _first(group, 'MRTimingAndRelatedParametersSequence',
    'RepetitionTime'); None when any step is absent."""
    node = header
    for name in path:
        node = getattr(node, name, None) if node is not None else None
        if node is None:
            return None
        if hasattr(node, "__len__") and not isinstance(node, (str, bytes)) and name.endswith("Sequence"):
            node = node[0] if len(node) else None
    return node


def _series_info(files: list) -> SeriesInfo:
    """Header facts and slice order of one series (classic: one file per slice; enhanced: one multi-frame file)."""
    header = files[0][1]
    enhanced = int(header.get("NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in header
    shared = header.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in header else None
    slices, problems = _slices(files, enhanced, shared)
    acquisition = Acquisition(
        manufacturer=header.get("Manufacturer") or None, model=header.get("ManufacturerModelName") or None,
        field_strength_t=_number(header.get("MagneticFieldStrength")),
        software=_text(header.get("SoftwareVersions")),
        protocol=str(header.get("SeriesDescription") or header.get("ProtocolName") or "") or None)
    if enhanced:  # timing lives in the functional groups
        repetition = _number(_first(shared, "MRTimingAndRelatedParametersSequence", "RepetitionTime"))
        echo = _number(_first(shared, "MREchoSequence", "EffectiveEchoTime"))
        inversion = _number(_one(_first(shared, "MRModifierSequence", "InversionTimes")))
    else:
        repetition, echo, inversion = (_number(header.get(name)) for name in
                                       ("RepetitionTime", "EchoTime", "InversionTime"))
    geometry = _geometry(slices, problems)
    number = header.get("SeriesNumber")
    image_type = tuple(str(value).upper() for value in (header.get("ImageType") or ()))
    return SeriesInfo(
        series_uid=str(header.SeriesInstanceUID), study_uid=str(header.StudyInstanceUID),
        number=int(number) if number not in (None, "") else None,
        description=str(header.get("SeriesDescription") or header.get("ProtocolName") or ""),
        modality=str(header.get("Modality", "")), image_type=image_type,
        mr_acquisition_type=str(header.get("MRAcquisitionType") or "").upper() or None,
        repetition_time_ms=repetition, echo_time_ms=echo, inversion_time_ms=inversion, acquisition=acquisition,
        shape=(int(header.Columns), int(header.Rows), len(slices)), contrast_agent=header.get("ContrastBolusAgent") or None,
        files=tuple(path for path, _, _ in slices), frame_numbers=tuple(frame for _, frame, _ in slices),
        problems=tuple(problems), **geometry)


def _slices(files: list, enhanced: bool, shared) -> tuple[list, list[str]]:
    """(path, frame number, plane) per slice, where plane = (position, row direction, column direction, spacing,
    thickness); sorted along the slice normal. Problems that make one 3D volume impossible are listed."""
    problems, slices = [], []
    if enhanced:
        if len(files) > 1:
            problems.append(f"{len(files)} multi-frame files in one series")
        path, header = files[0]
        for index, frame in enumerate(header.get("PerFrameFunctionalGroupsSequence") or (), start=1):
            orientation = _first(frame, "PlaneOrientationSequence", "ImageOrientationPatient") or \
                _first(shared, "PlaneOrientationSequence", "ImageOrientationPatient")
            measures = _first(frame, "PixelMeasuresSequence") or _first(shared, "PixelMeasuresSequence")
            slices.append((path, index, _plane(_first(frame, "PlanePositionSequence", "ImagePositionPatient"),
                                               orientation, getattr(measures, "PixelSpacing", None),
                                               getattr(measures, "SliceThickness", None))))
    else:
        for path, header in files:
            slices.append((path, 1, _plane(header.get("ImagePositionPatient"), header.get("ImageOrientationPatient"),
                                           header.get("PixelSpacing"), header.get("SliceThickness"))))
        sizes = {(int(header.Rows), int(header.Columns)) for _, header in files}
        if len(sizes) > 1:
            problems.append(f"images of different sizes {sorted(sizes)}")
    if any(plane is None for _, _, plane in slices):
        problems.append("image position, orientation or pixel spacing missing")
        return slices, problems
    orientations = {tuple(np.round(np.concatenate(plane[1:3]), 4)) for _, _, plane in slices}
    if len(orientations) > 1:
        problems.append(f"{len(orientations)} different slice orientations (a localiser or several stacks)")
        return slices, problems
    normal = np.cross(slices[0][2][1], slices[0][2][2])
    slices.sort(key=lambda entry: float(np.dot(entry[2][0], normal)))
    heights = np.array([np.dot(plane[0], normal) for _, _, plane in slices])
    repeats = len(heights) - len(np.unique(np.round(heights, 3)))
    if repeats:
        problems.append(f"{repeats} images repeat a slice position (several volumes in one series, "
                        f"e.g. b-values or echoes)")
    return slices, problems


def _plane(position, orientation, spacing, thickness):
    if position is None or orientation is None or spacing is None or len(orientation) != 6:
        return None
    orientation = np.array(orientation, float)
    return (np.array(position, float), orientation[:3], orientation[3:], (float(spacing[0]), float(spacing[1])),
            _number(thickness))


def _geometry(slices: list, problems: list[str]) -> dict:
    """Spacing, thickness, grid error and the RAS+ affine of a slice stack (affine None when irregular)."""
    planes = [plane for _, _, plane in slices if plane is not None]
    if not planes:
        return dict(pixel_spacing_mm=None, slice_thickness_mm=None, slice_spacing_mm=None, geometry_error_mm=None)
    position, row_direction, column_direction, (row_spacing, column_spacing), thickness = planes[0]
    facts = dict(pixel_spacing_mm=(column_spacing, row_spacing), slice_thickness_mm=thickness,
                 slice_spacing_mm=None, geometry_error_mm=None)
    if problems or len(planes) < 2:
        return facts
    positions = np.array([plane[0] for plane in planes])
    step = (positions[-1] - positions[0]) / (len(positions) - 1)
    expected = positions[0] + np.outer(np.arange(len(positions)), step)
    facts["geometry_error_mm"] = float(np.abs(positions - expected).max())
    facts["slice_spacing_mm"] = float(np.linalg.norm(step))
    lps = np.eye(4)
    lps[:3, 0] = row_direction * column_spacing  # +column index moves along the row direction
    lps[:3, 1] = column_direction * row_spacing
    lps[:3, 2] = step
    lps[:3, 3] = position
    facts["affine"] = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM LPS -> RAS+
    return facts


def read_volume(series: SeriesInfo, kind: str, params: IngestParams) -> Volume:
    """Pixel data of a checked series via SimpleITK/GDCM, on the header geometry, as float32 [column, row, slice]."""
    import SimpleITK as sitk

    if series.affine is None:
        raise InputError(f"{series.files[0].parent}: {series.label} has no regular 3D geometry")
    try:
        if len(set(series.files)) == 1:  # enhanced multi-frame: one file, frames reordered into slice order
            frames = sitk.GetArrayFromImage(sitk.ReadImage(str(series.files[0])))
            frames = frames[np.asarray(series.frame_numbers) - 1]
        else:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames([str(path) for path in series.files])
            frames = sitk.GetArrayFromImage(reader.Execute())
    except RuntimeError as exc:
        raise InputError(f"{series.files[0].parent}: cannot decode the pixel data of {series.label} "
                         f"({str(exc).strip().splitlines()[-1][:200]})") from exc
    if frames.shape != (series.shape[2], series.shape[1], series.shape[0]):
        raise InputError(f"{series.files[0].parent}: {series.label} decoded to shape {frames.shape}, "
                         f"headers say {series.shape[::-1]}")
    data = np.ascontiguousarray(frames.transpose(2, 1, 0), dtype=np.float32)
    source = series.files[0].parent
    bids.validate_volume(data, series.affine, source, kind, params)
    return Volume(data, series.affine, kind, source)


def load_patient(exams: tuple[Exam, ...], subject: str, params: IngestParams, *,
                 pseudonymous: bool = True) -> Patient:
    """The usable exams of one patient as a Patient; refused exams become report flags.

    Raises InputError when no exam is usable, giving the reason for each.
    """
    visits, flags, refusals = [], [], []
    for exam in exams:
        scope = f"exam {exam.date.isoformat()}"
        reason = exam.refusal
        if reason is None:
            flair, t1 = (exam.decisions[role].chosen.series for role in protocol.ROLES)
            try:
                visits.append(Visit(session_name(exam), exam.date, read_volume(flair, "FLAIR", params),
                                    read_volume(t1, "T1w", params), flair.acquisition, flair_series=flair))
            except InputError as exc:  # its message is "<series folder>: <problem>"
                reason = str(exc).split(": ", 1)[-1]
        if reason is not None:
            refusals.append(f"{scope} in {exam.folder}: {reason}")
            flags.append(QCFlag("exam_refused", f"The exam of {exam.date.isoformat()} was not analysed: {reason}",
                                scope))  # no paths in the report: export folders may be named after the patient
            continue
        flags += [QCFlag("protocol_deviation", warning, scope) for warning in exam.warnings]
        flags += [QCFlag("series_choice", f"{protocol.ROLE_NAMES[role]}: "
                         f"{decision.chosen.series.label} chosen {decision.why}", scope)
                  for role, decision in exam.decisions.items()  # only a real ambiguity: 2+ usable series
                  if sum(candidate.status != "fail" for candidate in decision.candidates) > 1]
        flags += [QCFlag("exam_date", note, scope) for note in exam.notes]
    if not visits:
        raise InputError("no usable exam:\n" + "\n".join(refusals))
    return Patient(subject, tuple(visits), tuple(flags), pseudonymous)


def session_name(exam: Exam) -> str:
    """A DICOM exam's session label: its date, YYYYMMDD."""
    return exam.date.strftime("%Y%m%d")


def _exam_date(header) -> tuple[dt.date | None, str | None]:
    for name in ("StudyDate", "SeriesDate", "AcquisitionDate"):
        text = str(header.get(name) or "").strip()
        try:
            date = dt.datetime.strptime(text[:8], "%Y%m%d").date()
        except ValueError:
            continue
        return date, None if name == "StudyDate" else f"StudyDate absent; the exam date is the {name}"
    return None, None


def render_exam(exam: Exam, label: str) -> str:
    """The `msvol check` text of one exam: each role's decision and every rule's result."""
    verdict = "REFUSED" if exam.refusal else "USABLE"
    lines = [f"{label}, exam {exam.date.isoformat() if exam.date != dt.date.min else '(no date)'} in {exam.folder}: "
             f"{verdict} ({len(exam.series)} series)"]
    lines += [f"  note: {note}" for note in exam.notes]
    used = set()
    for role, decision in exam.decisions.items():
        chosen = decision.chosen
        head = (f"{chosen.series.label} chosen ({decision.why})" if chosen else f"none usable: {decision.why}")
        lines.append(f"  {protocol.ROLE_NAMES[role]}: {head}")
        for candidate in decision.candidates:
            used.add(candidate.series.series_uid)
            marker = "*" if candidate is chosen else " "
            lines.append(f"   {marker}{candidate.series.label}: {candidate.status}")
            lines += [f"      {check.status:<4}  {check.rule:<34} {check.measured:<28} limit {check.limit}"
                      for check in candidate.checks]
    others = [series.label for series in exam.series if series.series_uid not in used]
    if others:
        lines.append(f"  not candidates: {', '.join(others)}")
    return "\n".join(lines)


def exam_record(exam: Exam, label: str) -> dict:
    """The `msvol check --json` entry of one exam (no identifiers beyond `label`)."""
    return {"patient": label, "date": exam.date.isoformat() if exam.date != dt.date.min else None,
            "folder": str(exam.folder), "usable": exam.refusal is None, "refusal": exam.refusal,
            "notes": list(exam.notes),
            "roles": {role: {"chosen": decision.chosen.series.label if decision.chosen else None, "why": decision.why,
                             "candidates": [{"series": candidate.series.label, "status": candidate.status,
                                             "checks": [dataclasses.asdict(check) for check in candidate.checks]}
                                            for candidate in decision.candidates]}
                      for role, decision in exam.decisions.items()},
            "series": [series.label for series in exam.series]}


def sanitise(identifier: str) -> str:
    """A PatientID made safe as a BIDS-like label (letters and digits only), for --keep-identifiers."""
    cleaned = "".join(character for character in identifier if character.isalnum())
    if not cleaned:
        raise InputError("a PatientID has no letters or digits; it cannot name an output folder")
    return cleaned

