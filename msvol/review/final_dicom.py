"""The signed result back to PACS, for subjects read from DICOM: per interval a DICOM SEG of the confirmed new
and enlarging lesions and a verified TID 1500 SR (msvol.outputs.dicom_sr), built from the header-only copies
of the follow-up FLAIR series that `msvol run` kept under OUT/sub-XX/dicom/source/ses-YY/.

A confirmed lesion's mask is the reviewer's edited mask when there is one, else the automated lesion's
label in ses-YY/lesions.nii.gz (values = the report's lesion ids) with its voxels in the interval's
{new,enlarging,possible_new}_lesions.nii.gz (what only the change model saw); an added lesion gets the label after
the highest automated one. An amendment's SR names the SR it supersedes.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from msvol.outputs import dicom_source, dicom_sr
from msvol.review.findings import subject_name


def write_final_dicom(out_dir: Path, subject: str, final: dict, staging: Path, previous: Path | None) -> list[Path]:
    """Write staging/dicom/<interval>_confirmed_seg.dcm and _sr.dcm for every interval whose follow-up has
    DICOM source headers; returns the files written (none for NIfTI input). `previous` is the final/
    folder of the version this one amends, if any."""
    import nibabel as nib

    folder = Path(out_dir) / subject_name(subject)
    written = []
    for interval in final["intervals"]:
        sources = folder / "dicom" / "source" / f"ses-{interval['to_session']}"
        if not (sources / "source.json").is_file():
            continue
        source = dicom_source.load_source_headers(sources)
        pseudonym = subject if _pseudonymised(source) else None
        automated = np.asarray(nib.load(folder / f"ses-{interval['to_session']}" / "lesions.nii.gz").dataobj)
        labels, statuses, findings = _confirmed_labels(folder, interval, automated)
        name = f"ses-{interval['from_session']}_to_ses-{interval['to_session']}"
        seg = None
        if statuses:
            seg = dicom_sr.write_confirmed_segmentation(
                staging / "dicom" / f"{name}_confirmed_seg.dcm", source, labels, statuses, pseudonym=pseudonym,
                version=final["version"], reviewer=final["signed"]["reviewer"])
            written.append(seg)
        predecessor = previous / "dicom" / f"{name}_sr.dcm" if previous is not None else None
        written.append(dicom_sr.write_structured_report(
            staging / "dicom" / f"{name}_sr.dcm", source=source, segmentation=seg, findings=findings,
            interval={"from_session": interval["from_session"], "to_session": interval["to_session"],
                      "counts": interval["confirmed"]["counts"], "pbvc_percent": interval["confirmed"]["pbvc_percent"]},
            reviewer=final["signed"]["reviewer"], verified_at=dt.datetime.fromisoformat(final["signed"]["at"]),
            pseudonym=pseudonym, predecessor=predecessor if predecessor is not None and predecessor.is_file() else None))
    return written


def _confirmed_labels(folder: Path, interval: dict, automated: np.ndarray) -> tuple[np.ndarray, dict, list[dict]]:
    """One label map of the confirmed new and enlarging lesions, their statuses, and the SR's findings."""
    import nibabel as nib

    labels = np.zeros(automated.shape, np.int32)
    statuses, volumes = {}, {}
    maps_dir = folder / "intervals" / f"ses-{interval['from_session']}_to_ses-{interval['to_session']}"
    # the interval's finding maps hold what the follow-up labels lack: change-model-only lesions and growth
    finding_maps = [np.asarray(nib.load(path).dataobj) for path in
                    (maps_dir / f"{status}_lesions.nii.gz" for status in ("new", "enlarging", "possible_new"))
                    if path.is_file()]
    next_added = int(automated.max()) + 1
    for finding in interval["findings"]:
        status = finding["confirmed_status"]
        if status not in ("new", "enlarging"):
            continue
        if finding["kind"] == "added":
            lesion_id, next_added = next_added, next_added + 1
        else:
            lesion_id = int(finding["id"].rsplit(":L", 1)[1])
        if finding["mask"]:  # the reviewer's mask (edited or grown) replaces the automated one
            mask = np.asarray(nib.load(folder.parent / finding["mask"]).dataobj) > 0
        else:
            mask = automated == lesion_id
            for finding_map in finding_maps:
                mask |= finding_map == lesion_id
        labels[mask & (labels == 0)] = lesion_id
        statuses[lesion_id] = status
        volumes[lesion_id] = (finding["baseline_volume_mm3"] or 0.0, finding["followup_volume_mm3"] or 0.0)
    findings = [{"lesion_id": lesion_id, "status": statuses[lesion_id], "baseline_volume_mm3": volumes[lesion_id][0],
                 "followup_volume_mm3": volumes[lesion_id][1], "segment_number": number}
                for number, lesion_id in enumerate(sorted(statuses), 1)]
    return labels, statuses, findings


def _pseudonymised(source) -> bool:
    import pydicom

    header = pydicom.dcmread(source.files[0], stop_before_pixels=True)
    return str(header.get("PatientIdentityRemoved", "NO")).upper() == "YES"
