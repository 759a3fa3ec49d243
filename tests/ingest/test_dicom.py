"""Tests for ingest_dicom and DICOM batches: PACS-like exports written by synth_dicom, read back against the truth.

Known answers: the volumes written (integer intensities, so they round-trip exactly), their affines,
the vendors' header values, the exam dates and the series numbers of synth_dicom.SERIES_NUMBERS.
Exams are head-sized (130 x 150 x 124 voxels of 1 mm: the protocol needs >= 120 mm along every axis)
and written once per module; a test that damages files works on its own copy.
The pipeline is replaced (monkeypatch) in the batch tests, so no model runs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from msvol.config import IngestParams, Params
from msvol.datatypes import Volume
from msvol.errors import InputError
from msvol.ingest import dicom as ingest_dicom, protocol
from msvol.config import BatchSettings
from msvol.ops.batch import run_batch
from msvol.synth import dicom as synth_dicom
from tests.builders import FLAIR_AFFINE, NUMBERS, PATIENT_A, PATIENT_B, SECRETS, T1_AFFINE, head, identity, rotation

RULES = protocol.load_protocol()
LIMITS = IngestParams()

SETTLED = BatchSettings(settle_minutes=0)  # the exports were written a moment ago


def canonical(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    image = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(volume.data, np.float32), volume.affine))
    return np.asarray(image.dataobj), image.affine


def assert_same_image(loaded: Volume, written: Volume) -> None:
    """Same voxels in world space: equal arrays after reorientation to RAS+, affines within 0.01 mm."""
    (got, got_affine), (expected, expected_affine) = canonical(loaded), canonical(written)
    assert got.shape == expected.shape
    assert np.array_equal(got, expected)
    assert np.abs(got_affine - expected_affine).max() <= 0.01


def copy_export(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def role_numbers(exam: ingest_dicom.Exam) -> dict[str, int | None]:
    return {role: decision.chosen.series.number if decision.chosen else None
            for role, decision in exam.decisions.items()}


def write_2d_flair_exam(folder: Path, who: synth_dicom.ExamIdentity, vendor: synth_dicom.Vendor, flair: Volume,
                        t1: Volume) -> None:
    """An exam with a 3D T1 and only a 2D thick-slice FLAIR (write_exam cannot: its flair_2d needs a 3D FLAIR)."""
    synth_dicom.write_exam(folder, who, vendor, flair=None, t1=t1, extras=())
    synth_dicom.write_series(synth_dicom.thick_slices(flair), folder / "STUDY" / f"SERIES{NUMBERS['flair_2d']:03d}",
                             who, vendor, vendor.flair_2d, series_number=NUMBERS["flair_2d"])


@pytest.fixture(scope="module")
def vendor_export(tmp_path_factory):
    """vendor name -> export folder holding one exam of PATIENT_A with every extra series, written on first use.

    Nested series folders under two levels of export folders; sequential file names shuffled.
    FLAIR is head(1), T1 head(2, "T1w").
    """
    written = {}

    def export(vendor_name: str) -> Path:
        if vendor_name not in written:
            root = tmp_path_factory.mktemp(f"export_{vendor_name}")
            synth_dicom.write_exam(root / "PACS" / "EXPORT_0001", identity(PATIENT_A, dt.date(2022, 5, 12)),
                                   synth_dicom.VENDORS[vendor_name], flair=head(1), t1=head(2, "T1w"),
                                   extras=("localizer", "dwi", "flair_2d"), file_names="sequential", shuffle_seed=11)
            written[vendor_name] = root
        return written[vendor_name]

    return export


GE_15T = dataclasses.replace(synth_dicom.VENDORS["ge"], field_strength_t=1.5)
# Patient A: three exams, written in neither date nor folder order; patient B: one exam in A's flat folder.
HISTORY = {  # name: (patient, date, vendor, folder below the export, FLAIR seed, T1 seed, FLAIR 3D?)
    "a_2023": (PATIENT_A, dt.date(2023, 2, 1), GE_15T, "a", 31, 32, True),
    "a_2021": (PATIENT_A, dt.date(2021, 6, 15), synth_dicom.VENDORS["siemens"], "DUMP", 11, 12, True),
    "a_2022": (PATIENT_A, dt.date(2022, 1, 10), synth_dicom.VENDORS["siemens"], "b/c", 21, 22, False),
    "b_2022": (PATIENT_B, dt.date(2022, 5, 20), synth_dicom.VENDORS["philips"], "DUMP", 41, 42, True),
}


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> Path:
    """Two patients in one export (see HISTORY); the exams of DUMP are flat files with UID names."""
    export = tmp_path_factory.mktemp("history") / "export"
    for patient, date, vendor, folder, flair_seed, t1_seed, three_d in HISTORY.values():
        who = identity(patient, date)
        flair, t1 = head(flair_seed), head(t1_seed, "T1w")
        if three_d:
            synth_dicom.write_exam(export / folder, who, vendor, flair=flair, t1=t1, nested=folder != "DUMP")
        else:
            write_2d_flair_exam(export / folder, who, vendor, flair, t1)
    return export


@pytest.fixture(scope="module")
def history_inventory(history) -> ingest_dicom.Inventory:
    return ingest_dicom.scan([history], RULES, LIMITS)


# --- one exam, three vendors ---------------------------------------------------------------------------------

VENDOR_NAMES = sorted(synth_dicom.VENDORS)


@pytest.mark.parametrize("vendor_name", VENDOR_NAMES)
def test_exam_with_extras_gives_one_patient_one_exam_and_the_3d_series_chosen(vendor_export, vendor_name):
    inventory = ingest_dicom.scan([vendor_export(vendor_name)], RULES, LIMITS)
    assert list(inventory.patients) == [PATIENT_A["patient_id"]] and inventory.skipped == ()
    (exam,) = inventory.patients[PATIENT_A["patient_id"]]
    assert exam.date == dt.date(2022, 5, 12) and exam.notes == ()
    assert sorted(series.number for series in exam.series) == sorted(NUMBERS.values())
    assert exam.refusal is None
    assert role_numbers(exam) == {"flair": NUMBERS["flair"], "t1": NUMBERS["t1"]}
    # the 2D FLAIR was a candidate and lost because it fails a required check
    assert [candidate.series.number for candidate in exam.decisions["flair"].candidates] == [
        NUMBERS["flair"], NUMBERS["flair_2d"]]
    assert "it passes every required check" in exam.decisions["flair"].why


@pytest.mark.parametrize("vendor_name", VENDOR_NAMES)
def test_exam_loads_the_written_volumes_in_world_space(vendor_export, vendor_name):
    (exam,) = ingest_dicom.scan([vendor_export(vendor_name)], RULES, LIMITS).patients[PATIENT_A["patient_id"]]
    patient = ingest_dicom.load_patient((exam,), "x1", LIMITS)
    (visit,) = patient.visits
    assert (patient.subject, visit.session, visit.date) == ("x1", "20220512", dt.date(2022, 5, 12))
    assert (visit.flair.kind, visit.t1.kind) == ("FLAIR", "T1w")
    assert_same_image(visit.flair, head(1))
    assert_same_image(visit.t1, head(2, "T1w"))
    # the FLAIR's k ran against the slice normal: it comes back reversed, on a matching affine
    assert np.array_equal(visit.flair.data, head(1).data[:, :, ::-1])
    assert np.allclose(visit.flair.affine[:3, 2], -FLAIR_AFFINE[:3, 2], atol=1e-6)
    assert np.array_equal(visit.t1.data, head(2, "T1w").data)
    assert np.abs(visit.t1.affine - T1_AFFINE).max() <= 0.01
    assert visit.flair_series.number == NUMBERS["flair"]
    assert patient.ingest_flags == ()  # the 2D FLAIR was never usable: no choice worth a flag


@pytest.mark.parametrize("vendor_name", VENDOR_NAMES)
def test_acquisition_names_the_scanner_and_the_flair_protocol(vendor_export, vendor_name):
    vendor = synth_dicom.VENDORS[vendor_name]
    (exam,) = ingest_dicom.scan([vendor_export(vendor_name)], RULES, LIMITS).patients[PATIENT_A["patient_id"]]
    flair = exam.decisions["flair"].chosen.series
    assert (flair.acquisition.manufacturer, flair.acquisition.model, flair.acquisition.field_strength_t,
            flair.acquisition.protocol) == (vendor.manufacturer, vendor.model, vendor.field_strength_t,
                                            vendor.flair.description)
    assert (flair.repetition_time_ms, flair.echo_time_ms, flair.inversion_time_ms) == (
        vendor.flair.repetition_time_ms, vendor.flair.echo_time_ms, vendor.flair.inversion_time_ms)


@pytest.mark.parametrize("vendor_name", VENDOR_NAMES)
def test_software_versions_are_read_as_written(vendor_export, vendor_name):
    """Philips writes two values ('5.6.1\\5.6.1.2'); Siemens and GE one."""
    (exam,) = ingest_dicom.scan([vendor_export(vendor_name)], RULES, LIMITS).patients[PATIENT_A["patient_id"]]
    assert exam.decisions["flair"].chosen.series.acquisition.software == synth_dicom.VENDORS[vendor_name].software


def test_enhanced_multiframe_exam_is_read_like_a_classic_one(tmp_path):
    vendor = synth_dicom.VENDORS["siemens"]
    synth_dicom.write_exam(tmp_path / "exam", identity(PATIENT_A, dt.date(2022, 5, 12)), vendor, flair=head(1),
                           t1=head(2, "T1w"), multiframe=True)
    (exam,) = ingest_dicom.scan([tmp_path], RULES, LIMITS).patients[PATIENT_A["patient_id"]]
    assert role_numbers(exam) == {"flair": NUMBERS["flair"], "t1": NUMBERS["t1"]}
    assert exam.decisions["flair"].chosen.series.inversion_time_ms == vendor.flair.inversion_time_ms
    (visit,) = ingest_dicom.load_patient((exam,), "x1", LIMITS).visits
    assert_same_image(visit.flair, head(1))
    assert_same_image(visit.t1, head(2, "T1w"))


# --- geometry ----------------------------------------------------------------------------------------------------

def oblique_volume(reversed_slices: bool) -> Volume:
    """40 x 48 x 36 voxels of 0.9 x 1.0 x 1.2 mm, about 10 degrees off axis about two axes, random integers."""
    affine = np.eye(4)
    affine[:3, :3] = rotation(10, 2) @ rotation(8, 0) @ np.diag([0.9, 1.0, -1.2 if reversed_slices else 1.2])
    affine[:3, 3] = [-17.3, 24.1, 30.7]
    data = np.random.default_rng(5).integers(0, 4000, (40, 48, 36)).astype(np.float32)
    return Volume(data, affine, "T1w")


def voxel_centres(affine: np.ndarray, shape) -> np.ndarray:
    indices = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), axis=-1)
    return indices @ affine[:3, :3].T + affine[:3, 3]


@pytest.mark.parametrize("reversed_slices", [False, True], ids=["k-along-normal", "k-against-normal"])
@pytest.mark.parametrize("multiframe, compress", [(False, False), (False, True), (True, False), (True, True)],
                         ids=["classic", "classic-rle", "enhanced", "enhanced-rle"])
def test_oblique_geometry_round_trips_to_a_hundredth_of_a_millimetre(tmp_path, multiframe, compress,
                                                                     reversed_slices):
    """read_volume puts every voxel where the source put it; a k against the slice normal comes back reversed."""
    source = oblique_volume(reversed_slices)
    vendor = synth_dicom.VENDORS["philips"]
    synth_dicom.write_series(source, tmp_path, identity(PATIENT_A, dt.date(2022, 5, 12)), vendor, vendor.t1,
                             series_number=4, multiframe=multiframe, compress=compress)
    small = dataclasses.replace(LIMITS, min_field_of_view_mm=10.0)
    (exam,) = ingest_dicom.scan([tmp_path], RULES, small).patients[PATIENT_A["patient_id"]]
    (series,) = exam.series
    assert series.problems == () and series.geometry_error_mm <= 0.01
    volume = ingest_dicom.read_volume(series, "T1w", small)
    expected = source.data[:, :, ::-1] if reversed_slices else source.data
    assert np.array_equal(volume.data, expected)
    source_centres = voxel_centres(source.affine, source.data.shape)
    if reversed_slices:
        source_centres = source_centres[:, :, ::-1]
    assert np.abs(voxel_centres(volume.affine, volume.data.shape) - source_centres).max() <= 0.01


def test_jpeg_ls_compressed_series_decodes_to_the_same_voxels(tmp_path):
    """Another compressed syntax PACS use: JPEG-LS lossless (encoded by pydicom + pyjpegls, decoded by GDCM)."""
    source = oblique_volume(False)
    vendor = synth_dicom.VENDORS["ge"]
    for path in synth_dicom.write_series(source, tmp_path, identity(PATIENT_A, dt.date(2022, 5, 12)), vendor,
                                         vendor.t1, series_number=4):
        dataset = pydicom.dcmread(path)
        dataset.compress(pydicom.uid.JPEGLSLossless)
        dataset.save_as(path)
    small = dataclasses.replace(LIMITS, min_field_of_view_mm=10.0)
    (exam,) = ingest_dicom.scan([tmp_path], RULES, small).patients[PATIENT_A["patient_id"]]
    (series,) = exam.series
    assert pydicom.dcmread(series.files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == \
        pydicom.uid.JPEGLSLossless
    volume = ingest_dicom.read_volume(series, "T1w", small)
    assert np.array_equal(volume.data, source.data)
    assert np.abs(volume.affine - source.affine).max() <= 0.01


# --- several patients and exams ------------------------------------------------------------------------------------

def test_two_patients_in_one_export_are_two_patients_with_their_own_exams(history_inventory):
    expected = {}
    for patient, date, *_ in HISTORY.values():
        expected.setdefault(patient["patient_id"], []).append(date)
    assert {patient_id: [exam.date for exam in exams] for patient_id, exams in history_inventory.patients.items()} \
        == {patient_id: sorted(dates) for patient_id, dates in expected.items()}
    assert history_inventory.skipped == ()
    for exams in history_inventory.patients.values():
        for exam in exams:
            assert len(exam.study_uids) == 1


def test_exams_are_ordered_by_date_whatever_the_folder_or_writing_order(history_inventory):
    exams = history_inventory.patients[PATIENT_A["patient_id"]]
    assert [exam.date for exam in exams] == [dt.date(2021, 6, 15), dt.date(2022, 1, 10), dt.date(2023, 2, 1)]
    patient = ingest_dicom.load_patient(exams, "p1", LIMITS)
    assert [visit.session for visit in patient.visits] == ["20210615", "20230201"]  # 2022 is refused (2D FLAIR)
    assert_same_image(patient.visits[0].flair, head(HISTORY["a_2021"][4]))
    assert_same_image(patient.visits[1].flair, head(HISTORY["a_2023"][4]))
    assert_same_image(patient.visits[1].t1, head(HISTORY["a_2023"][5], "T1w"))


def test_scanner_change_between_exams_shows_in_the_visit_acquisitions(history_inventory):
    patient = ingest_dicom.load_patient(history_inventory.patients[PATIENT_A["patient_id"]], "p1", LIMITS)
    before, after = (visit.acquisition for visit in patient.visits)
    siemens = synth_dicom.VENDORS["siemens"]
    assert (before.manufacturer, before.model, before.field_strength_t) == (
        siemens.manufacturer, siemens.model, siemens.field_strength_t)
    assert (after.manufacturer, after.model, after.field_strength_t) == (GE_15T.manufacturer, GE_15T.model, 1.5)
    assert before.protocol == siemens.flair.description and after.protocol == GE_15T.flair.description


def test_2d_only_flair_is_refused_naming_the_series_and_the_acquisition_type(history_inventory):
    exam = history_inventory.patients[PATIENT_A["patient_id"]][1]
    assert exam.date == dt.date(2022, 1, 10)
    description = synth_dicom.VENDORS["siemens"].flair_2d.description
    assert exam.decisions["flair"].chosen is None and exam.decisions["t1"].chosen is not None
    assert exam.refusal.startswith("3D FLAIR: ")
    assert f"series {NUMBERS['flair_2d']} '{description}' is not usable" in exam.refusal
    assert "MR acquisition type 2D (needs 3D)" in exam.refusal


def test_patient_whose_only_exam_is_refused_raises_input_error_with_the_reason(history_inventory):
    exam = history_inventory.patients[PATIENT_A["patient_id"]][1]
    with pytest.raises(InputError) as caught:
        ingest_dicom.load_patient((exam,), "p1", LIMITS)
    message = str(caught.value)
    assert "no usable exam" in message and "exam 2022-01-10" in message
    assert "MR acquisition type 2D (needs 3D)" in message


def test_refused_exam_beside_good_ones_becomes_an_exam_refused_flag(history_inventory):
    patient = ingest_dicom.load_patient(history_inventory.patients[PATIENT_A["patient_id"]], "p1", LIMITS)
    assert [visit.date for visit in patient.visits] == [dt.date(2021, 6, 15), dt.date(2023, 2, 1)]
    refused = [flag for flag in patient.ingest_flags if flag.code == "exam_refused"]
    assert len(refused) == 1 and refused[0].scope == "exam 2022-01-10"
    assert "MR acquisition type 2D (needs 3D)" in refused[0].message
    assert "/" not in refused[0].message.split(":", 1)[0]  # no folder path in the report


def test_run_batch_gives_each_dicom_patient_its_own_pseudonym(history, tmp_path, pipeline_calls):
    out = tmp_path / "out"
    summary = run_batch(history, out, Params(), settings=SETTLED)
    table = out / "private" / "pseudonyms.tsv"
    rows = [line.split("\t") for line in table.read_text().splitlines()]
    assert rows[0] == ["pseudonym", "patient_id", "created"]
    by_patient = {patient_id: pseudonym for pseudonym, patient_id, _ in rows[1:]}
    assert set(by_patient) == {PATIENT_A["patient_id"], PATIENT_B["patient_id"]}
    assert len(set(by_patient.values())) == 2
    assert sorted(summary.done) == sorted(out / f"sub-{pseudonym}" for pseudonym in by_patient.values())
    assert summary.set_aside == [] and summary.crashed == [] and summary.warnings == []
    # each pseudonym went with its own patient's images
    by_subject = {patient.subject: patient for patient in pipeline_calls}
    alice, boris = by_subject[by_patient[PATIENT_A["patient_id"]]], by_subject[by_patient[PATIENT_B["patient_id"]]]
    assert [visit.session for visit in alice.visits] == ["20210615", "20230201"]
    assert [visit.session for visit in boris.visits] == ["20220520"]
    assert_same_image(boris.visits[0].flair, head(HISTORY["b_2022"][4]))
    assert alice.pseudonymous and boris.pseudonymous
    assert [flag.code for flag in alice.ingest_flags] == ["exam_refused"]
    for folder in summary.done:
        assert not any(secret in folder.name for secret in SECRETS)
    assert stat.S_IMODE(table.stat().st_mode) == 0o600
    assert stat.S_IMODE(table.parent.stat().st_mode) == 0o700


def test_keep_identifiers_names_folders_by_sanitised_patient_id_and_writes_no_link_file(history, tmp_path, pipeline_calls):
    out = tmp_path / "out"
    summary = run_batch(history, out, Params(), settings=SETTLED, keep_identifiers=True)
    assert sorted(summary.done) == [out / "sub-MRN40417", out / "sub-MRN77120"]
    assert {patient.subject for patient in pipeline_calls} == {"MRN40417", "MRN77120"}
    assert not any(patient.pseudonymous for patient in pipeline_calls)
    assert not (out / "private").exists()


def test_two_patient_ids_that_sanitise_alike_never_share_an_output_folder(tmp_path, pipeline_calls):
    export = tmp_path / "export"
    for patient_id, seed in (("MRN-0001", 51), ("MRN0001", 61)):
        who = synth_dicom.ExamIdentity(patient_id, "LEAKTEST^TWIN", "19700101", dt.date(2022, 3, 3))
        synth_dicom.write_exam(export / patient_id, who, synth_dicom.VENDORS["siemens"], flair=head(seed),
                               t1=head(seed + 1, "T1w"), extras=())
    summary = run_batch(export, tmp_path / "out", Params(), settings=SETTLED, keep_identifiers=True)
    assert summary.skipped == []
    handled = [folder.name for folder in summary.done] + [name for name, _ in summary.set_aside]
    assert len(handled) == 2 and len(set(summary.done)) == len(summary.done)


# --- damaged or incomplete exams ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["dwi", "localizer"])
def test_truncated_extra_file_is_skipped_with_a_warning_and_the_exam_stays_usable(vendor_export, tmp_path, pipeline_calls,
                                                                                   kind):
    export = copy_export(vendor_export("siemens"), tmp_path / "export")
    files = sorted((export / "PACS" / "EXPORT_0001" / "STUDY" / f"SERIES{NUMBERS[kind]:03d}").iterdir())
    broken = files[1]
    synth_dicom.truncate(broken)
    inventory = ingest_dicom.scan([export], RULES, LIMITS)
    assert len(inventory.skipped) == 1
    assert inventory.skipped[0].startswith(f"{broken}: truncated") and "file skipped" in inventory.skipped[0]
    (exam,) = inventory.patients[PATIENT_A["patient_id"]]
    assert exam.refusal is None and role_numbers(exam) == {"flair": NUMBERS["flair"], "t1": NUMBERS["t1"]}
    summary = run_batch(export, tmp_path / "out", Params(), settings=SETTLED)
    assert summary.warnings == list(inventory.skipped)
    assert len(summary.done) == 1 and summary.set_aside == [] and len(pipeline_calls) == 1


def _flair_files_in_slice_order(export: Path) -> list[Path]:
    folder = export / "PACS" / "EXPORT_0001" / "STUDY" / f"SERIES{NUMBERS['flair']:03d}"
    return sorted(folder.iterdir(), key=lambda path: int(pydicom.dcmread(path, stop_before_pixels=True).InstanceNumber))


def test_truncated_flair_slice_in_the_middle_refuses_the_flair(vendor_export, tmp_path):
    export = copy_export(vendor_export("siemens"), tmp_path / "export")
    broken = _flair_files_in_slice_order(export)[60]
    synth_dicom.truncate(broken)
    inventory = ingest_dicom.scan([export], RULES, LIMITS)
    assert [warning.split(": ")[0] for warning in inventory.skipped] == [str(broken)]
    (exam,) = inventory.patients[PATIENT_A["patient_id"]]
    assert exam.decisions["flair"].chosen is None and exam.decisions["t1"].chosen is not None
    description = synth_dicom.VENDORS["siemens"].flair.description
    assert f"series {NUMBERS['flair']} '{description}' is not usable" in exam.refusal
    assert "slice positions on one grid" in exam.refusal


@pytest.mark.parametrize("position", [0, -1], ids=["first", "last"])
def test_truncated_end_slice_of_the_flair_refuses_the_flair(vendor_export, tmp_path, position):
    export = copy_export(vendor_export("siemens"), tmp_path / "export")
    synth_dicom.truncate(_flair_files_in_slice_order(export)[position])
    (exam,) = ingest_dicom.scan([export], RULES, LIMITS).patients[PATIENT_A["patient_id"]]
    assert exam.decisions["flair"].chosen is None


def test_file_cut_inside_its_header_is_reported_as_skipped(vendor_export, tmp_path):
    export = copy_export(vendor_export("siemens"), tmp_path / "export")
    broken = sorted((export / "PACS" / "EXPORT_0001" / "STUDY" / f"SERIES{NUMBERS['dwi']:03d}").iterdir())[0]
    assert pydicom.dcmread(broken).file_meta.MediaStorageSOPClassUID == pydicom.uid.MRImageStorage
    synth_dicom.truncate(broken, 700 / broken.stat().st_size)  # past the file meta, before Rows and the UIDs
    inventory = ingest_dicom.scan([export], RULES, LIMITS)
    assert [warning.split(": ")[0] for warning in inventory.skipped] == [str(broken)]


def test_missing_t1_refuses_the_exam_saying_no_series_matches_the_rule(tmp_path):
    synth_dicom.write_exam(tmp_path / "exam", identity(PATIENT_A, dt.date(2022, 5, 12)),
                           synth_dicom.VENDORS["ge"], flair=head(1), t1=None, extras=("localizer",))
    (exam,) = ingest_dicom.scan([tmp_path], RULES, LIMITS).patients[PATIENT_A["patient_id"]]
    assert exam.decisions["flair"].chosen.series.number == NUMBERS["flair"]
    assert exam.decisions["t1"].candidates == () and exam.decisions["t1"].chosen is None
    assert exam.refusal == f"3D T1: no series matches the 3D T1 rule of {RULES.source.name}"
    with pytest.raises(InputError, match="no series matches the 3D T1 rule"):
        ingest_dicom.load_patient((exam,), "x1", LIMITS)


def _rewrite(files, **changes) -> None:
    """Set (value) or delete (None) top-level attributes of every file."""
    for path in files:
        dataset = pydicom.dcmread(path)
        for name, value in changes.items():
            if value is None:
                delattr(dataset, name)
            else:
                setattr(dataset, name, value)
        dataset.save_as(path)


def test_study_date_absent_takes_the_series_date_with_a_note(tmp_path):
    written = synth_dicom.write_exam(tmp_path / "exam", identity(PATIENT_A, dt.date(2022, 5, 12)),
                                     synth_dicom.VENDORS["siemens"], flair=head(1), t1=head(2, "T1w"), extras=())
    # a SeriesDate one day later than the AcquisitionDate shows which of the two was taken
    _rewrite([path for files in written.values() for path in files], StudyDate=None, SeriesDate="20220513")
    (exam,) = ingest_dicom.scan([tmp_path], RULES, LIMITS).patients[PATIENT_A["patient_id"]]
    assert exam.date == dt.date(2022, 5, 13) and exam.refusal is None
    assert exam.notes == ("StudyDate absent; the exam date is the SeriesDate",)
    assert "note: StudyDate absent; the exam date is the SeriesDate" in ingest_dicom.render_exam(exam, "patient 1")
    patient = ingest_dicom.load_patient((exam,), "x1", LIMITS)
    assert patient.visits[0].session == "20220513"
    assert [(flag.code, flag.message) for flag in patient.ingest_flags] == [
        ("exam_date", "StudyDate absent; the exam date is the SeriesDate")]


def test_exam_without_any_date_is_refused(tmp_path):
    small = oblique_volume(False)
    written = synth_dicom.write_exam(tmp_path / "exam", identity(PATIENT_A, dt.date(2022, 5, 12)),
                                     synth_dicom.VENDORS["siemens"], flair=small, t1=small, extras=(),
                                     multiframe=False)
    _rewrite([path for files in written.values() for path in files], StudyDate=None, SeriesDate=None,
             AcquisitionDate=None)
    (exam,) = ingest_dicom.scan([tmp_path], RULES, LIMITS).patients[PATIENT_A["patient_id"]]
    assert exam.refusal is not None and "no StudyDate, SeriesDate or AcquisitionDate" in exam.refusal
    assert "(no date)" in ingest_dicom.render_exam(exam, "patient 1")
    assert ingest_dicom.exam_record(exam, "patient 1")["date"] is None


def test_exams_without_patient_id_are_refused_not_merged_into_one_patient(tmp_path):
    """Anonymised exports often blank PatientID: such exams cannot be matched over time."""
    small = oblique_volume(False)
    written = synth_dicom.write_exam(tmp_path / "exam", identity(PATIENT_A, dt.date(2022, 5, 12)),
                                     synth_dicom.VENDORS["siemens"], flair=small, t1=small, extras=())
    _rewrite([path for files in written.values() for path in files], PatientID="")
    (exam,) = ingest_dicom.scan([tmp_path], RULES, LIMITS).patients[""]
    assert exam.refusal == "the exam has no PatientID; msvol cannot tell which exams belong to one patient"


def test_a_repeated_3d_flair_is_chosen_as_the_later_series_and_flagged(tmp_path):
    """Two usable FLAIRs (a repeat after motion): the later one is used and the report says so."""
    vendor = synth_dicom.VENDORS["siemens"]
    who = identity(PATIENT_A, dt.date(2022, 5, 12))
    written = synth_dicom.write_exam(tmp_path / "exam", who, vendor, flair=head(1), t1=head(2, "T1w"), extras=())
    frame_of_reference = pydicom.dcmread(written["flair"][0], stop_before_pixels=True).FrameOfReferenceUID
    synth_dicom.write_series(head(3), tmp_path / "exam" / "repeat", who, vendor, vendor.flair, series_number=8,
                             frame_of_reference_uid=frame_of_reference)
    (exam,) = ingest_dicom.scan([tmp_path], RULES, LIMITS).patients[PATIENT_A["patient_id"]]
    assert exam.decisions["flair"].chosen.series.number == 8
    patient = ingest_dicom.load_patient((exam,), "x", LIMITS)
    (flag,) = patient.ingest_flags
    assert flag.code == "series_choice" and "series 8" in flag.message and "acquired later" in flag.message
    assert all(secret not in flag.message for secret in SECRETS)
    assert_same_image(patient.visits[0].flair, head(3))


# --- identifiers ---------------------------------------------------------------------------------------------------

def test_no_identifier_reaches_check_text_json_records_or_qc_flags(history_inventory, vendor_export):
    inventories = [history_inventory, ingest_dicom.scan([vendor_export("ge")], RULES, LIMITS)]
    texts = []
    for inventory in inventories:
        for number, (patient_id, exams) in enumerate(sorted(inventory.patients.items()), 1):
            for exam in exams:
                texts.append(ingest_dicom.render_exam(exam, f"patient {number}"))
                texts.append(json.dumps(ingest_dicom.exam_record(exam, f"patient {number}")))
            patient = ingest_dicom.load_patient(exams, f"p{number}", LIMITS)
            texts += [f"{flag.code} {flag.message} {flag.scope}" for flag in patient.ingest_flags]
    # the flags that quote the most header text are among those searched
    assert any(text.startswith("exam_refused") for text in texts)
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, (secret, text[:200])


def test_header_reader_never_reads_patient_name_or_birth_date(vendor_export, monkeypatch):
    assert not {"PatientName", "PatientBirthDate"} & set(ingest_dicom.HEADER_TAGS)
    read = pydicom.dcmread
    datasets = []

    def recording(path, *args, **kwargs):
        dataset = read(path, *args, **kwargs)
        datasets.append(dataset)
        return dataset

    monkeypatch.setattr(pydicom, "dcmread", recording)
    inventory = ingest_dicom.scan([vendor_export("philips")], RULES, LIMITS)
    assert inventory.patients and len(datasets) == sum(len(series.files) for exams in inventory.patients.values()
                                                       for exam in exams for series in exam.series)
    assert not any("PatientName" in dataset or "PatientBirthDate" in dataset for dataset in datasets)
    assert str(read(datasets[0].filename).PatientName) == PATIENT_A["patient_name"]  # the files do hold them
