"""Header-only copies of a source series, so DICOM objects can be built after the PACS export is gone.

A radiologist may sign off days after `msvol run`, when the export folder has been cleaned up. A SEG
or SR needs only the geometry and UIDs of the follow-up FLAIR series, never its pixels, so the
pipeline keeps, per follow-up session, one header-only file per source instance plus a manifest:

    dicom/source/ses-YY/instance-0001.dcm ...   each source instance's header, PixelData removed
    dicom/source/ses-YY/source.json              {"files": [...], "frame_numbers": [...]}: which copy
                                                 and frame each volume slice k came from

`load_source_headers` turns such a folder back into the `SourceSeries` that `write_segmentation`,
`write_confirmed_segmentation` and `write_structured_report` take. Pseudonymised copies hold only
the keep-list of msvol.outputs.dicom (geometry, UIDs, dates) and the pseudonym as the patient; with
`pseudonym=None` the whole header is kept (identity included), as the SEG then copies it. A
pseudonymised copy yields the same pseudonymised objects as the original files; do not pass it
with `pseudonym=None` (the objects would carry the pseudonym without being marked as such).

The copies are not images (no pixels): they are for msvol's own use, never for sending to PACS.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from msvol.errors import InputError
from msvol.outputs.dicom import (SourceSeries, _check_pseudonym, _mark_pseudonymised, _read_header, _reduced_header,
                                 _save_atomically)

SOURCE_MANIFEST = "source.json"
_FORMAT = 1  # manifest layout version, for a future reader that must tell layouts apart


def write_source_headers(folder: Path, source: SourceSeries, *, pseudonym: str | None) -> Path:
    """Write header-only copies of the source series' files and a manifest into `folder`.

    Parameters
    ----------
    folder : the folder to write (created when missing); e.g. OUT/sub-XX/dicom/source/ses-YY.
    source : the follow-up FLAIR series, as passed to `write_segmentation`.
    pseudonym : None to keep each header whole (for --keep-identifiers); otherwise each header is
        reduced to the keep-list with the pseudonym as PatientName and PatientID.

    Returns
    -------
    Path : `folder`.

    Raises
    ------
    InputError : an unreadable source file or an invalid pseudonym.
    """
    folder = Path(folder)
    _check_pseudonym(pseudonym)
    names = {}
    for number, file in enumerate(dict.fromkeys(source.files), start=1):
        header = _read_header(file)  # stops before PixelData, which is dropped with whatever follows it
        if pseudonym is None:
            _drop_pixels(header)
        else:
            header = _reduced_header(header, pseudonym)
            _mark_pseudonymised(header, pseudonym)
        # no pixels left to be encoded: the transfer syntax of a compressed source no longer applies
        header.file_meta = FileMetaDataset()
        header.file_meta.MediaStorageSOPClassUID = header.SOPClassUID
        header.file_meta.MediaStorageSOPInstanceUID = header.SOPInstanceUID
        header.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        names[file] = f"instance-{number:04d}.dcm"
        _save_atomically(header, folder / names[file])
    manifest = {"format": _FORMAT, "files": [names[file] for file in source.files],
                "frame_numbers": list(source.frame_numbers)}
    # the manifest is written last: a folder without one is incomplete and load_source_headers refuses it
    _write_text_atomically(folder / SOURCE_MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return folder


def load_source_headers(folder: Path) -> SourceSeries:
    """The `SourceSeries` of a folder written by `write_source_headers`.

    Raises
    ------
    InputError : the manifest is missing or malformed, or names a file that is not in the folder.
    """
    folder = Path(folder)
    manifest_path = folder / SOURCE_MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        names, frame_numbers = manifest["files"], manifest["frame_numbers"]
    except FileNotFoundError as error:
        raise InputError(f"{folder}: no {SOURCE_MANIFEST}; this is not a complete folder of source header "
                         "copies (msvol run writes them under dicom/source/ses-YY)") from error
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"{manifest_path}: unreadable manifest ({type(error).__name__}); rerun msvol run "
                         "to write the source header copies again") from error
    files = []
    for name in names:
        # names only, never paths: the manifest cannot point outside its folder
        if not isinstance(name, str) or Path(name).name != name or not (folder / name).is_file():
            raise InputError(f"{manifest_path}: lists {name!r}, which is not a file in {folder}")
        files.append(folder / name)
    return SourceSeries(tuple(files), tuple(frame_numbers))


def _drop_pixels(header: Dataset) -> None:
    """Remove pixel-bearing elements a header read may still hold: float pixel data, overlays, icons."""
    for element in list(header):
        group = element.tag.group
        if group == 0x7FE0 or (0x6000 <= group <= 0x60FF and element.tag.element == 0x3000):
            del header[element.tag]
    if "IconImageSequence" in header:
        del header.IconImageSequence


def _write_text_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "x") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
