"""Sign-off export: the radiologist's confirmed findings back to PACS, as a SEG and a TID 1500 SR.

Contract. At sign-off the review hands over, per interval, the follow-up lesion labels on the NATIVE
grid of the follow-up FLAIR series (voxel (i, j, k) is pixel column i, row j of frame k, as in
msvol.outputs.dicom), which lesion ids the reviewer confirmed as new or enlarging, their volumes,
and who signed when. This module writes

- a BINARY Segmentation of the confirmed lesions only, one segment per lesion ("New lesion 7",
  "Enlarging lesion 3"), each with a TrackingID ("lesion 7") and a TrackingUID;
- a Comprehensive 3D SR holding a TID 1500 Measurement Report: observer context (device msvol,
  person = reviewer), procedure reported (MRI of brain), one TID 1411 measurement group per
  confirmed lesion referencing its segment in that SEG, and one TID 1501 group for the interval
  (counts of new and enlarging lesions, PBVC). VerificationFlag VERIFIED, CompletionFlag COMPLETE,
  PreliminaryFlag FINAL, the reviewer in VerifyingObserverSequence.

Vocabulary. *Confirmed*: a lesion the reviewer accepted (or corrected) as new or enlarging; the
automated SEG of `msvol run` is never changed. *Amendment*: a correction after sign-off; it is a new
SEG (higher `version`) and a new SR naming the earlier SR as its predecessor, never an overwrite.
*Tracking UID*: derived from the follow-up series and the lesion id, so the SEG segment, the SR
measurement group and every amendment name the same lesion with the same UID.

UIDs of the objects are derived from their content as in msvol.outputs.dicom: the same content gives
the same SOP Instance UID, a higher version or a different content new ones. Sources may be the
header-only copies of msvol.outputs.dicom_source. Pseudonymised like the automated SEG unless
`pseudonym` is None.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, SegmentationStorage
from pydicom.valuerep import DT

from msvol import __version__
from msvol.errors import InputError, SpaceError
from msvol.outputs.dicom import (DEVICE_SERIAL_NUMBER, MANUFACTURER, SEGMENTS, SourceSeries, _check_pseudonym,
                                 _copy_patient_group, _derived_uid, _digest, _fill_type2, _mark_pseudonymised,
                                 _read_header, _read_source, _reduced_header, _save_atomically)

CONFIRMED_SERIES_DESCRIPTION = "msvol confirmed lesions v{version} (research)"
SR_SERIES_DESCRIPTION = "msvol confirmed findings (research)"
STATUSES = ("new", "enlarging")
_COLOURS = {"new": SEGMENTS[1][3], "enlarging": SEGMENTS[2][3]}  # as in the automated SEG
# Private codes (scheme "99MSVOL", declared in the SR's CodingSchemeIdentificationSequence) where
# pydicom's codes have none: "MRI of brain" is in no CID pydicom ships (CID 100 has only "MRI
# unspecified body region"); SCT "Number of lesions" cannot say new vs enlarging, since TID 300 has
# no modifier for it; there is no code for PBVC or for a lesion's volume at an earlier time point.
PRIVATE_SCHEME = "99MSVOL"
MRI_OF_BRAIN = Code("MSV001", PRIVATE_SCHEME, "MRI of brain")
CHANGE_SINCE_BASELINE = Code("MSV002", PRIVATE_SCHEME, "Lesion change since baseline")
VOLUME_AT_BASELINE = Code("MSV003", PRIVATE_SCHEME, "Lesion volume at baseline")
NEW_LESION_COUNT = Code("MSV004", PRIVATE_SCHEME, "Number of new lesions")
ENLARGING_LESION_COUNT = Code("MSV005", PRIVATE_SCHEME, "Number of enlarging lesions")
PBVC = Code("MSV006", PRIVATE_SCHEME, "Percentage brain volume change")
_CHANGE_VALUES = {"new": codes.SCT.NewFinding, "enlarging": codes.SCT.IncreaseInSize}  # SCT 129721008, 15454001


def write_confirmed_segmentation(path: Path, source: SourceSeries, labels: np.ndarray, statuses: Mapping[int, str],
                                 *, pseudonym: str | None, version: int, reviewer: str | None = None,
                                 series_number: int = 903) -> Path:
    """Write the confirmed new and enlarging lesions as a BINARY SEG, one segment per lesion.

    Segments are numbered 1..n in ascending lesion id. Unlike the automated SEG, frames without any
    voxel of a segment are left out (a confirmed lesion spans a few slices; one segment per lesion
    with every frame would be 6 MB per lesion at 512 x 512 x 190).

    Parameters
    ----------
    path : the .dcm file to write (its folder is created when missing).
    source : the follow-up FLAIR series (the original files or `load_source_headers` of their copies).
    labels : integer label map of shape (columns, rows, slices) in the `SourceSeries` convention, whose
        values are lesion ids (e.g. the follow-up lesions, or the interval's new and enlarging labels).
        A label map, not one mask per lesion: lesions are disjoint, and one array keeps memory flat.
    statuses : {lesion id: "new" | "enlarging"} for the confirmed lesions only; other ids are ignored.
    pseudonym : as in `write_segmentation`.
    version : 1 for the first sign-off, higher for each amendment; part of the UIDs.
    reviewer : the signing radiologist as a DICOM person name ("Family^Given"), recorded as
        ContentCreatorName; None leaves it empty.
    series_number : SeriesNumber of the SEG series.

    Returns
    -------
    Path : `path`.

    Raises
    ------
    InputError : no confirmed lesion, an unknown status, a confirmed lesion without voxels, a version
        below 1, an invalid pseudonym or reviewer, or unreadable sources.
    SpaceError : `labels` does not match the source's rows, columns and slice count.
    """
    import highdicom as hd  # deferred: 0.3 s to import

    path = Path(path)
    _check_pseudonym(pseudonym)
    lesion_ids = _check_statuses(statuses)
    if not isinstance(version, int) or version < 1:
        raise InputError(f"version must be an integer >= 1 (1 = first sign-off); got {version!r}")
    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.dtype.kind not in "iu":
        raise SpaceError(f"labels must be a 3D integer label map; got {labels.ndim}D {labels.dtype}")
    headers, frame_index = _read_source(source, [labels.shape])
    n_frames = int(headers[0].get("NumberOfFrames", 1) or 1) if len(headers) == 1 else len(headers)
    columns, rows = labels.shape[0], labels.shape[1]
    # label-map style (frames, rows, columns) of segment numbers: lesions never overlap
    segment_map = np.zeros((n_frames, rows, columns), np.uint8 if len(lesion_ids) < 256 else np.uint16)
    lookup = np.zeros(int(max(labels.max(), max(lesion_ids))) + 1, segment_map.dtype)
    lookup[list(lesion_ids)] = np.arange(1, len(lesion_ids) + 1)
    for slice_index, frame in enumerate(frame_index):
        segment_map[frame] = lookup[np.clip(labels[:, :, slice_index], 0, None)].T
    counts = np.bincount(segment_map.ravel(), minlength=len(lesion_ids) + 1)
    empty = [lesion_id for number, lesion_id in enumerate(lesion_ids, start=1) if counts[number] == 0]
    if empty:
        raise InputError(f"lesions {empty} are confirmed but have no voxel in the labels; pass the label map "
                         "whose values are the confirmed lesion ids")
    sources = [_reduced_header(header, pseudonym) for header in headers] if pseudonym is not None else headers
    for header in sources:
        _fill_type2(header)
    series_uid_source = str(headers[0].SeriesInstanceUID)
    digest = _digest(segment_map.tobytes(), str(segment_map.shape),
                     json.dumps([[lesion_id, statuses[lesion_id]] for lesion_id in lesion_ids]), reviewer or "")
    series_uid = _derived_uid("confirmed-seg-series", series_uid_source, __version__, str(series_number),
                              str(version), pseudonym or "", digest)
    algorithm = hd.AlgorithmIdentificationSequence(name="msvol", family=codes.DCM.ArtificialIntelligence,
                                                   version=__version__)
    descriptions = []
    for number, lesion_id in enumerate(lesion_ids, start=1):
        status = statuses[lesion_id]
        description = hd.seg.SegmentDescription(
            segment_number=number, segment_label=f"{status.capitalize()} lesion {lesion_id}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            # proposed by msvol, accepted or corrected by the reviewer
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC, algorithm_identification=algorithm,
            tracking_id=f"lesion {lesion_id}", tracking_uid=tracking_uid(series_uid_source, lesion_id),
            anatomic_regions=[codes.SCT.Brain], display_color=hd.color.CIELabColor.from_rgb(*_COLOURS[status]))
        description.SegmentDescription = f"Confirmed {status} lesion"
        descriptions.append(description)
    series_description = CONFIRMED_SERIES_DESCRIPTION.format(version=version)
    segmentation = hd.seg.Segmentation(
        source_images=sources, pixel_array=segment_map, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=series_uid, series_number=series_number,
        sop_instance_uid=_derived_uid("instance", series_uid), instance_number=version, manufacturer=MANUFACTURER,
        manufacturer_model_name="msvol", software_versions=__version__, device_serial_number=DEVICE_SERIAL_NUMBER,
        content_label="MSVOL_CONFIRMED", content_description=series_description,
        content_creator_name=None if reviewer is None else _reviewer_name(reviewer),
        transfer_syntax_uid=ExplicitVRLittleEndian, omit_empty_frames=True)
    segmentation.SeriesDescription = series_description
    if pseudonym is None:
        _copy_patient_group(segmentation, headers[0])
    else:
        _mark_pseudonymised(segmentation, pseudonym)
    return _save_atomically(segmentation, path)


def write_structured_report(path: Path, *, source: SourceSeries, segmentation: Path | None, findings: list[dict],
                            interval: dict, reviewer: str, verified_at: dt.datetime,
                            organization: str = "msvol research", pseudonym: str | None,
                            predecessor: Path | None = None, series_number: int = 904) -> Path:
    """Write the confirmed findings of one interval as a verified TID 1500 Comprehensive 3D SR.

    Parameters
    ----------
    path : the .dcm file to write (its folder is created when missing).
    source : the follow-up FLAIR series the SEG was written on (original files or header copies).
    segmentation : the SEG of `write_confirmed_segmentation`; None only when `findings` is empty.
    findings : one dict per confirmed lesion: {"lesion_id": int, "status": "new" | "enlarging",
        "followup_volume_mm3": float, "baseline_volume_mm3": float (read for enlarging lesions only),
        "segment_number": int (its segment in `segmentation`)}.
    interval : {"from_session": str, "to_session": str, "counts": {"new": int, "enlarging": int},
        "pbvc_percent": float | None}; the counts must equal the findings'.
    reviewer : the verifying radiologist as a DICOM person name ("Family^Given"; a name without "^" is
        taken as the family name).
    verified_at : when the reviewer signed (VerificationDateTime; also the SR's content date and time).
    organization : VerifyingOrganization.
    pseudonym : as in `write_segmentation`; it must be the pseudonym the SEG was written with.
    predecessor : the SR this one amends (PredecessorDocumentsSequence), or None for a first sign-off.
    series_number : SeriesNumber of the SR series.

    Returns
    -------
    Path : `path`.

    Raises
    ------
    InputError : malformed findings or interval, counts that disagree with the findings, a finding whose
        segment is not its lesion's in the SEG, a SEG on another series or patient, an unreadable
        predecessor, an invalid pseudonym or reviewer, or unreadable sources.
    """
    import highdicom as hd  # deferred, as in write_confirmed_segmentation
    from highdicom.coding_schemes import CodingSchemeIdentificationItem  # not re-exported by highdicom

    path = Path(path)
    _check_pseudonym(pseudonym)
    findings = [_check_finding(finding) for finding in findings]
    _check_interval(interval, findings)
    reviewer_name = _reviewer_name(reviewer)
    if not isinstance(verified_at, dt.datetime):
        raise InputError(f"verified_at must be a datetime (when the reviewer signed); got {verified_at!r}")
    headers = [_read_header(file) for file in dict.fromkeys(source.files)]
    series_uid_source = str(headers[0].SeriesInstanceUID)
    seg = None if segmentation is None else _read_segmentation(Path(segmentation), series_uid_source, pseudonym)
    if findings and seg is None:
        raise InputError("findings reference segments, but no confirmed segmentation was given")
    for finding in findings:
        _check_segment(seg, finding, tracking_uid(series_uid_source, finding["lesion_id"]), segmentation)
    previous = None if predecessor is None else _read_predecessor(Path(predecessor), headers[0])

    time_point = f"ses-{interval['to_session']}"
    groups = [_lesion_group(finding, seg, series_uid_source, time_point) for finding in findings]
    groups.append(_interval_group(interval, series_uid_source, time_point))
    report = hd.sr.MeasurementReport(observation_context=_observation_context(reviewer_name, organization),
                                     procedure_reported=MRI_OF_BRAIN, imaging_measurements=groups,
                                     title=codes.cid7021.ImagingMeasurementReport)

    # the first evidence item gives the SR its patient, study and acquisition equipment, as for the SEG
    patient_source = headers[0] if pseudonym is None else _reduced_header(headers[0], pseudonym)
    _fill_type2(patient_source)
    # the SR lists its evidence by UID only; nothing else of the source headers needs to reach highdicom
    evidence = [patient_source, *([seg] if seg is not None else []), *map(_uids_only, headers)]
    digest = _digest(json.dumps([findings, interval], sort_keys=True, default=str), reviewer_name, organization,
                     verified_at.isoformat(), "" if seg is None else str(seg.SOPInstanceUID),
                     "" if previous is None else str(previous.SOPInstanceUID))
    series_uid = _derived_uid("sr-series", series_uid_source, __version__, str(series_number), pseudonym or "",
                              digest)
    document = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report, series_instance_uid=series_uid,
        series_number=series_number, sop_instance_uid=_derived_uid("instance", series_uid), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, is_final=True, is_verified=True,
        verifying_observer_name=reviewer_name, verifying_organization=organization,
        performed_procedure_codes=[MRI_OF_BRAIN], previous_versions=None if previous is None else [previous],
        coding_schemes=[CodingSchemeIdentificationItem(
            designator=PRIVATE_SCHEME, name="msvol private codes", responsible_organization="msvol")],
        series_description=SR_SERIES_DESCRIPTION, content_date=verified_at.date(), content_time=verified_at.time(),
        manufacturer_model_name="msvol", software_versions=__version__, device_serial_number=DEVICE_SERIAL_NUMBER)
    # highdicom stamps the time of writing; the signature's time is when the reviewer signed
    document.VerifyingObserverSequence[0].VerificationDateTime = DT(verified_at)
    if pseudonym is None:
        _copy_patient_group(document, patient_source)
    else:
        _mark_pseudonymised(document, pseudonym)
    return _save_atomically(document, path)


def tracking_uid(series_instance_uid: str, lesion_id: int) -> str:
    """The TrackingUID of a lesion of the follow-up series: the same in the SEG, the SR and amendments."""
    return _derived_uid("lesion", str(series_instance_uid), str(int(lesion_id)))


def _lesion_group(finding: dict, seg: pydicom.Dataset, series_uid: str, time_point: str):
    """TID 1411: one confirmed lesion, its segment, its volumes and its change since baseline."""
    import highdicom as hd

    algorithm = hd.sr.AlgorithmIdentification(name="msvol", version=__version__)
    lesion_id, status = finding["lesion_id"], finding["status"]
    measurements = [hd.sr.Measurement(name=codes.SCT.Volume, value=finding["followup_volume_mm3"],
                                      unit=codes.UCUM.CubicMillimeter, algorithm_id=algorithm)]
    if status == "enlarging":
        measurements.append(hd.sr.Measurement(name=VOLUME_AT_BASELINE, value=finding["baseline_volume_mm3"],
                                              unit=codes.UCUM.CubicMillimeter, algorithm_id=algorithm))
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid(series_uid, lesion_id),
                                                     identifier=f"lesion {lesion_id}"),
        # the SEG's own frame references say which source images hold the segment
        referenced_segment=hd.sr.ReferencedSegment.from_segmentation(seg, finding["segment_number"]),
        time_point_context=hd.sr.TimePointContext(time_point=time_point), finding_type=codes.SCT.Lesion,
        finding_category=codes.SCT.MorphologicallyAbnormalStructure,
        finding_sites=[hd.sr.FindingSite(codes.SCT.Brain)], measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(CHANGE_SINCE_BASELINE, _CHANGE_VALUES[status])])


def _interval_group(interval: dict, series_uid: str, time_point: str):
    """TID 1501: the interval's counts of confirmed lesions and its PBVC (when measured)."""
    import highdicom as hd

    name = f"ses-{interval['from_session']} to ses-{interval['to_session']}"
    measurements = [
        hd.sr.Measurement(name=NEW_LESION_COUNT, value=int(interval["counts"]["new"]), unit=codes.UCUM.NoUnits),
        hd.sr.Measurement(name=ENLARGING_LESION_COUNT, value=int(interval["counts"]["enlarging"]),
                          unit=codes.UCUM.NoUnits)]
    if interval.get("pbvc_percent") is not None:
        measurements.append(hd.sr.Measurement(
            name=PBVC, value=float(interval["pbvc_percent"]), unit=codes.UCUM.Percent,
            algorithm_id=hd.sr.AlgorithmIdentification(name="msvol", version=__version__)))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=_derived_uid("interval", series_uid, name), identifier=name),
        time_point_context=hd.sr.TimePointContext(time_point=time_point),
        finding_sites=[hd.sr.FindingSite(codes.SCT.Brain)], measurements=measurements)


def _observation_context(reviewer_name: str, organization: str):
    """TID 1001: the reviewer (person) and msvol (device) as observers."""
    import highdicom as hd

    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=_derived_uid("device", MANUFACTURER, DEVICE_SERIAL_NUMBER), name="msvol", manufacturer_name=MANUFACTURER,
        model_name="msvol", serial_number=DEVICE_SERIAL_NUMBER)
    person = hd.sr.PersonObserverIdentifyingAttributes(name=reviewer_name, organization_name=organization)
    return hd.sr.ObservationContext(
        observer_person_context=hd.sr.ObserverContext(observer_type=codes.DCM.Person,
                                                      observer_identifying_attributes=person),
        observer_device_context=hd.sr.ObserverContext(observer_type=codes.DCM.Device,
                                                      observer_identifying_attributes=device))


def _uids_only(header) -> pydicom.Dataset:
    item = pydicom.Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        setattr(item, keyword, header[keyword].value)
    return item


def _check_statuses(statuses: Mapping[int, str]) -> list[int]:
    if not statuses:
        raise InputError("no confirmed new or enlarging lesion: there is nothing to write as a segmentation; "
                         "write the structured report with segmentation=None instead")
    bad = {lesion_id: status for lesion_id, status in statuses.items()
           if status not in STATUSES or not isinstance(lesion_id, (int, np.integer)) or lesion_id < 1}
    if bad:
        raise InputError(f"statuses must map positive lesion ids to 'new' or 'enlarging'; got {bad}")
    return sorted(int(lesion_id) for lesion_id in statuses)


def _check_finding(finding: dict) -> dict:
    try:
        checked = {"lesion_id": int(finding["lesion_id"]), "status": str(finding["status"]),
                   "followup_volume_mm3": float(finding["followup_volume_mm3"]),
                   "segment_number": int(finding["segment_number"])}
        if checked["status"] == "enlarging":
            checked["baseline_volume_mm3"] = float(finding["baseline_volume_mm3"])
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"finding {finding!r}: needs lesion_id, status, followup_volume_mm3, segment_number "
                         f"and, when enlarging, baseline_volume_mm3 ({type(error).__name__}: {error})") from error
    if checked["status"] not in STATUSES:
        raise InputError(f"finding for lesion {checked['lesion_id']}: status {checked['status']!r} is not "
                         "'new' or 'enlarging'; only confirmed new and enlarging lesions are reported")
    volumes = [value for key, value in checked.items() if key.endswith("_mm3")]
    if not all(np.isfinite(volumes)) or min(volumes) < 0:
        raise InputError(f"finding for lesion {checked['lesion_id']}: volumes must be finite and >= 0 mm3")
    return checked


def _check_interval(interval: dict, findings: list[dict]) -> None:
    try:
        counts = {status: int(interval["counts"][status]) for status in STATUSES}
        sessions = [interval["from_session"], interval["to_session"]]
    except (KeyError, TypeError, ValueError) as error:
        raise InputError("interval needs from_session, to_session and counts {'new', 'enlarging'} "
                         f"({type(error).__name__}: {error})") from error
    if not all(isinstance(session, str) and session for session in sessions):
        raise InputError(f"interval sessions must be non-empty strings; got {sessions}")
    found = {status: sum(finding["status"] == status for finding in findings) for status in STATUSES}
    if counts != found:
        raise InputError(f"interval counts {counts} disagree with the confirmed findings {found}; the report "
                         "must count exactly the confirmed lesions")
    lesion_ids = [finding["lesion_id"] for finding in findings]
    if len(set(lesion_ids)) != len(lesion_ids):
        raise InputError(f"a lesion id is reported twice in the findings: {sorted(lesion_ids)}")


def _read_segmentation(path: Path, series_uid: str, pseudonym: str | None):
    seg = _read_header(path)
    if seg.get("SOPClassUID") != SegmentationStorage:
        raise InputError(f"{path}: not a DICOM Segmentation; pass the confirmed SEG msvol wrote")
    referenced = {str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])}
    if referenced != {series_uid}:
        raise InputError(f"{path}: references series {sorted(referenced)}, not the source series {series_uid}; "
                         "pass the SEG written on this follow-up FLAIR series")
    if pseudonym is not None and seg.get("PatientID") != pseudonym:
        raise InputError(f"{path}: was written for another patient or pseudonym; pass the same pseudonym as "
                         "for write_confirmed_segmentation")
    return seg


def _check_segment(seg, finding: dict, expected_uid: str, path) -> None:
    number = finding["segment_number"]
    segments = {int(item.SegmentNumber): item for item in seg.SegmentSequence}
    if number not in segments or segments[number].get("TrackingUID") != expected_uid:
        label = segments[number].SegmentLabel if number in segments else "no such segment"
        raise InputError(f"{path}: finding for lesion {finding['lesion_id']} names segment {number} "
                         f"({label}), which is not that lesion's segment")


def _read_predecessor(path: Path, source_header):
    previous = _read_header(path)
    if "ContentSequence" not in previous or previous.get("Modality") != "SR":
        raise InputError(f"{path}: not a DICOM SR; pass the earlier SR this report amends")
    if previous.StudyInstanceUID != source_header.StudyInstanceUID:
        raise InputError(f"{path}: belongs to another study; an amendment supersedes an SR of the same study")
    return previous


def _reviewer_name(name: str) -> str:
    """A DICOM PN: "Family^Given" as given; a name without "^" becomes a family name (PS3.5 6.2.1)."""
    if not isinstance(name, str) or not name.strip() or "\\" in name or any(ch in name for ch in "\r\n"):
        raise InputError(f"reviewer {name!r}: must be a non-empty person name without '\\' or line breaks")
    if any(len(component) > 64 for component in name.split("^")):
        raise InputError(f"reviewer {name!r}: each name component may hold at most 64 characters")
    return name if "^" in name else f"{name}^"

