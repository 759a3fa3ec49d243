"""Frozen dataclasses shared by all stages. Arrays carry their geometry with them.

Conventions: an `affine` maps voxel indices (i, j, k) to RAS+ millimetres. A `Rigid`
matrix maps points of its *target* space to its *source* space (the "pull" direction a
resampler needs): to bring a source image onto a target grid, sample the source at
`matrix @ target_point`. Patient names and birth dates never enter these objects.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

VolumeKind = Literal["FLAIR", "T1w", "mask", "labels", "probability"]


@dataclass(frozen=True, eq=False)
class Volume:
    """One 3D image on its own grid."""

    data: np.ndarray  # 3D: float32 images, bool masks, int32 labels
    affine: np.ndarray  # (4, 4) voxel -> RAS+ mm
    kind: VolumeKind
    source: Path | None = None  # the file it came from, for error messages

    def __post_init__(self):
        if self.data.ndim != 3:
            raise ValueError(f"Volume must be 3D, got shape {self.data.shape} ({self.source})")
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")

    @property
    def spacing_mm(self) -> np.ndarray:
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    def with_data(self, data: np.ndarray, kind: VolumeKind | None = None) -> "Volume":
        """Same grid, new content."""
        return Volume(data, self.affine, kind or self.kind, self.source)


@dataclass(frozen=True)
class Acquisition:
    """Scanner and protocol facts from a BIDS sidecar (or DICOM); None where unknown."""

    manufacturer: str | None = None
    model: str | None = None
    field_strength_t: float | None = None
    software: str | None = None
    protocol: str | None = None


@dataclass(frozen=True)
class SeriesInfo:
    """Header facts of one DICOM series, with its slices in spatial order (what a protocol is checked on).

    Slice k of the converted volume (data[:, :, k]) is frame `frame_numbers[k]` (1-based) of `files[k]`;
    pixel (row r, column c) of that frame is data[c, r, k].
    """

    series_uid: str
    study_uid: str
    number: int | None
    description: str
    modality: str
    image_type: tuple[str, ...]
    mr_acquisition_type: str | None
    repetition_time_ms: float | None
    echo_time_ms: float | None
    inversion_time_ms: float | None
    acquisition: Acquisition
    shape: tuple[int, int, int]  # (columns, rows, slices)
    pixel_spacing_mm: tuple[float, float] | None  # (between columns, between rows)
    slice_thickness_mm: float | None
    slice_spacing_mm: float | None  # measured from the slice positions
    geometry_error_mm: float | None  # largest distance of a slice position from one regular grid
    contrast_agent: str | None
    files: tuple[Path, ...]
    frame_numbers: tuple[int, ...]
    affine: np.ndarray | None = field(default=None, compare=False)  # voxel -> RAS+ mm when the geometry is regular
    problems: tuple[str, ...] = ()  # what makes the series unreadable as one 3D volume

    @property
    def voxel_size_mm(self) -> float | None:
        """The largest voxel edge (in-plane spacing or slice spacing)."""
        if self.pixel_spacing_mm is None or self.slice_spacing_mm is None:
            return None
        return max(*self.pixel_spacing_mm, self.slice_spacing_mm)

    @property
    def label(self) -> str:
        return f"series {self.number if self.number is not None else '?'} '{self.description}'"


@dataclass(frozen=True, eq=False)
class Visit:
    """One timepoint: a 3D FLAIR and a 3D T1 acquired on the same day."""

    session: str
    date: dt.date
    flair: Volume
    t1: Volume
    acquisition: Acquisition = field(default_factory=Acquisition)
    flair_series: SeriesInfo | None = None  # the DICOM FLAIR series, when the visit came from DICOM


@dataclass(frozen=True, eq=False)
class Patient:
    """A pseudonymous subject and its visits, ordered by date."""

    subject: str
    visits: tuple[Visit, ...]
    ingest_flags: tuple["QCFlag", ...] = ()  # e.g. an exam refused by the protocol check, for the report
    pseudonymous: bool = True  # False when the subject id is the real PatientID (--keep-identifiers)

    def __post_init__(self):
        dates = [visit.date for visit in self.visits]
        if dates != sorted(dates):
            raise ValueError(f"sub-{self.subject}: visits must be ordered by date")


@dataclass(frozen=True, eq=False)
class Rigid:
    """A rigid (or affine) map between two physical spaces, target -> source (pull)."""

    matrix: np.ndarray  # (4, 4) in RAS+ mm

    def compose(self, inner: "Rigid") -> "Rigid":
        """The map `self(inner(x))`."""
        return Rigid(self.matrix @ inner.matrix)

    def inverse(self) -> "Rigid":
        return Rigid(np.linalg.inv(self.matrix))


@dataclass(frozen=True, eq=False)
class PreparedVisit:
    """A visit after bias correction, brain extraction and within-visit registration."""

    session: str
    date: dt.date
    flair: Volume  # bias-corrected, native FLAIR grid (the visit's reference grid)
    t1: Volume  # bias-corrected, native T1 grid
    t1_brain_mask: Volume  # on the T1 grid
    t1_to_flair: Rigid  # pull map: FLAIR-space point -> T1-space point
    t1_on_flair: Volume  # T1 resampled once onto the FLAIR grid
    brain_mask: Volume  # on the FLAIR grid
    acquisition: Acquisition


@dataclass(frozen=True)
class Lesion:
    """One connected component of a lesion mask."""

    label: int
    volume_mm3: float
    centroid_mm: tuple[float, float, float]
    mean_probability: float


@dataclass(frozen=True, eq=False)
class LesionMap:
    """A visit's lesion labels on its FLAIR grid and the measures of each component."""

    session: str
    labels: Volume  # int32, 0 = background, 1..n = lesion label
    probability: Volume  # float32 model output on the same grid
    lesions: tuple[Lesion, ...]

    @property
    def total_volume_mm3(self) -> float:
        return float(sum(lesion.volume_mm3 for lesion in self.lesions))


# possible_new: a candidate below the reporting operating point, listed for the reader and never counted
ChangeStatus = Literal["new", "enlarging", "shrinking", "resolved", "stable", "possible_new"]
# The value of each class in the review viewers' change maps (intervals/*/viewer/changes.nii.gz; 0: no lesion).
# review/static/viewers.js colours the same values.
# The lesion findings a reader decides one by one (each with a thumbnail); possible_new ones are counted only once
# confirmed.
REVIEWED_STATUSES = ("new", "enlarging", "possible_new")
CHANGE_MAP_VALUES = {"new": 1, "enlarging": 2, "shrinking": 3, "resolved": 3, "stable": 4, "possible_new": 5}


@dataclass(frozen=True)
class LesionChange:
    """The fate of one lesion over an interval.

    `id` is the follow-up label (so it matches new_lesions.nii.gz and enlarging_lesions.nii.gz);
    a resolved lesion, absent at follow-up, gets an id above every follow-up label.
    """

    id: int
    status: ChangeStatus
    baseline_volume_mm3: float
    followup_volume_mm3: float
    centroid_mm: tuple[float, float, float]  # follow-up FLAIR space (baseline space if resolved)
    baseline_labels: tuple[int, ...]
    followup_labels: tuple[int, ...]
    merged: bool = False  # several baseline lesions became one
    split: bool = False  # one baseline lesion became several
    confluent: bool = False  # grew by touching/joining: reported as enlarging, never as new
    confidence: float | None = None  # 0-1, how sure the models are of `status` (see lesion_change.fuse_change)
    change_only_mm3: float = 0.0  # of followup_volume_mm3, new tissue no per-visit mask holds (halfway grid)
    subtraction_only: bool = False  # a possible new lesion only the FLAIR subtraction image shows


@dataclass(frozen=True)
class QCFlag:
    """Something a radiologist must see (scanner change, poor alignment, short interval)."""

    code: str  # stable machine-readable name, e.g. "poor_alignment"
    message: str  # one sentence for the report
    scope: str  # "subject", a session ("ses-02") or an interval ("ses-01_to_ses-02")


@dataclass(frozen=True, eq=False)
class IntervalImages:
    """Both visits of an interval on one halfway grid, for the report's thumbnails and the review's viewers."""

    baseline_flair: np.ndarray
    followup_flair: np.ndarray
    baseline_labels: np.ndarray  # int32 baseline lesion labels
    followup_labels: np.ndarray  # int32, values = follow-up lesion labels = LesionChange.id
    affine: np.ndarray  # halfway grid voxel -> mm
    halfway_to_followup: np.ndarray = field(default_factory=lambda: np.eye(4))  # halfway mm -> follow-up mm


@dataclass(frozen=True)
class Counts:
    new: int
    enlarging: int
    shrinking: int
    resolved: int
    stable: int
    possible_new: int = 0  # candidates for the reader: not part of any count above


@dataclass(frozen=True)
class AtrophyResult:
    """Brain volume change over one interval."""

    pbvc_percent: float  # negative = loss
    pbvc_annualized_percent: float | None  # None where the interval is too short to annualise
    years: float
    alignment_correlation: float
    boundary_shift_ml: float


@dataclass(frozen=True)
class TimepointMeasures:
    """Cross-sectional measures of one visit."""

    session: str
    date: dt.date
    brain_volume_ml: float
    normalized_brain_volume_ml: float
    intracranial_volume_ml: float
    brain_parenchymal_fraction: float
    lesion_count: int
    lesion_volume_ml: float


@dataclass(frozen=True)
class IntervalResult:
    from_session: str
    to_session: str
    atrophy: AtrophyResult
    changes: tuple[LesionChange, ...]
    qc_flags: tuple[QCFlag, ...]

    @property
    def counts(self) -> Counts:
        statuses = [change.status for change in self.changes]
        return Counts(*(statuses.count(name) for name in ("new", "enlarging", "shrinking", "resolved", "stable",
                                                           "possible_new")))
