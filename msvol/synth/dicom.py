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

What goes into the headers (vendors' conventions, the MR and Enhanced MR modules, geometry in
LPS) is msvol.synth.dicom_headers; this module writes the files.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from msvol.datatypes import Patient, Volume
# VENDORS is re-exported: a caller writes an exam with this module alone
from msvol.synth.dicom_headers import (IMAGE_TYPE, VENDORS, ExamIdentity, Plane, SequenceHeader, Vendor,  # noqa: F401
                                       classic_header, decimal_string, decimal_strings, enhanced_header,
                                       series_dataset, volume_planes, window_values)

_DWI_SPACING_MM = (2.0, 2.0, 5.0)
_ADC_MM2_PER_S = 0.8e-3  # typical white-matter ADC; makes the b > 0 images darker than b = 0


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
    slope, intercept = float(decimal_string((high - low) / 65535 or 1.0)), float(decimal_string(low))
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


def _write_classic(template: Dataset, images: list[np.ndarray], planes: list[Plane], folder: Path, *,
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
            ImagePositionPatient=decimal_strings(plane.position), ImageOrientationPatient=decimal_strings(plane.orientation),
            PixelSpacing=decimal_strings(plane.pixel_spacing), SliceLocation=decimal_string(plane.position @ normal),
            **(per_image[index] if per_image else {})))
        path = folder / _file_name(file_names, name_offset + index + 1, ds.SOPInstanceUID)
        _save(ds, path, compress, image)
        paths.append(path)
    return paths


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
    planes = volume_planes(volume.affine, images.shape[0])
    thickness_mm = float(volume.spacing_mm[2])
    ds = series_dataset(identity, vendor, header, series_number=series_number,
                         series_uid=series_uid or generate_uid(),
                         frame_of_reference_uid=frame_of_reference_uid or generate_uid())
    window = window_values(volume.data)
    if not multiframe:
        classic_header(ds, header, IMAGE_TYPE, slope, intercept, thickness_mm)
        ds.WindowCenter, ds.WindowWidth = window
        return _write_classic(ds, list(images), planes, Path(folder), file_names=file_names, compress=compress,
                              name_offset=name_offset)
    datetime_text = identity.study_date.strftime("%Y%m%d") + identity.study_time
    enhanced_header(ds, header, planes, slope, intercept, thickness_mm, datetime_text, window)
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
        planes.append(Plane(corner, np.concatenate([along_row, along_column]), (spacing_mm, spacing_mm)))
    image = _head_outline(shape)
    ds = series_dataset(identity, vendor, vendor.localizer, series_number=series_number, series_uid=generate_uid(),
                         frame_of_reference_uid=frame_of_reference_uid or generate_uid())
    classic_header(ds, vendor.localizer, "ORIGINAL\\PRIMARY\\LOCALIZER", 1.0, 0.0, 7.0)
    ds.WindowCenter, ds.WindowWidth = window_values(image)
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
    planes = volume_planes(affine, n_slices) * len(b_values)
    per_image = [{"DiffusionBValue": float(b), "DiffusionDirectionality": "ISOTROPIC" if b else "NONE"}
                 for b in b_values for _ in range(n_slices)]
    ds = series_dataset(identity, vendor, vendor.dwi, series_number=series_number, series_uid=generate_uid(),
                         frame_of_reference_uid=frame_of_reference_uid or generate_uid())
    classic_header(ds, vendor.dwi, "ORIGINAL\\PRIMARY\\DIFFUSION\\NONE", slope, intercept,
                    float(np.linalg.norm(affine[:3, 2])))
    ds.WindowCenter, ds.WindowWidth = window_values(stacks)
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
    """A PACS export of a patient (e.g. `msvol.ingest.bids.load_patient` of a BIDS subject): one exam per visit, in
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
