"""Tests for ingest: BIDS layout -> Patient, and every bad input reported as an InputError naming its file.

The datasets are built in tmp_path: per session a FLAIR and a T1w of 90^3 voxels at 1.5 mm
(135 mm field of view, above the 120 mm minimum), smooth random intensities, and a
sub-XX_sessions.tsv with the visit dates. Each bad-input test breaks exactly one thing.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from msvol.config import IngestParams
from msvol.errors import InputError, MsvolError
from msvol.ingest.bids import find_subjects, load_patient
from tests.builders import SHAPE, SPACING_MM, affine_for, image_path, smooth_image, write_image, write_subject

def load_error(subject_dir: Path) -> str:
    with pytest.raises(InputError) as caught:
        load_patient(subject_dir)
    return str(caught.value)


# --- valid input ------------------------------------------------------------------------------

def test_valid_subject_loads_both_visits_with_their_images(tmp_path):
    subject_dir = write_subject(tmp_path)
    patient = load_patient(subject_dir)
    assert patient.subject == "01"
    assert [visit.session for visit in patient.visits] == ["01", "02"]
    assert [visit.date for visit in patient.visits] == [dt.date(2020, 1, 15), dt.date(2021, 1, 20)]
    first = patient.visits[0]
    assert first.flair.kind == "FLAIR" and first.t1.kind == "T1w"
    assert first.flair.source == image_path(subject_dir, "01", "FLAIR")
    assert first.flair.data.shape == SHAPE and first.flair.data.dtype == np.float32
    np.testing.assert_allclose(first.flair.data, smooth_image(0), rtol=1e-6)
    np.testing.assert_allclose(first.t1.data, smooth_image(1), rtol=1e-6)
    np.testing.assert_allclose(first.flair.affine, affine_for())
    np.testing.assert_allclose(first.flair.spacing_mm, [SPACING_MM] * 3)


def test_visits_are_ordered_by_date_not_by_session_name(tmp_path):
    # ses-01 was acquired after ses-02 (e.g. sessions numbered by upload order)
    subject_dir = write_subject(tmp_path, dates={"01": "2022-06-01", "02": "2019-03-10", "03": "2020-11-30"})
    patient = load_patient(subject_dir)
    assert [visit.session for visit in patient.visits] == ["02", "03", "01"]
    assert [visit.date for visit in patient.visits] == sorted(visit.date for visit in patient.visits)
    # each visit keeps its own images: ses-02 (index 1 when written) holds smooth_image(10)
    np.testing.assert_allclose(patient.visits[0].flair.data, smooth_image(10), rtol=1e-6)


def test_flair_sidecar_gives_the_acquisition(tmp_path):
    subject_dir = write_subject(tmp_path, dates={"01": "2020-01-15"})
    sidecar = image_path(subject_dir, "01", "FLAIR").with_name("sub-01_ses-01_FLAIR.json")
    sidecar.write_text(json.dumps({"Manufacturer": "Siemens", "MagneticFieldStrength": 3,
                                   "ProtocolName": "3D FLAIR"}))
    acquisition = load_patient(subject_dir).visits[0].acquisition
    assert acquisition.manufacturer == "Siemens"
    assert acquisition.field_strength_t == 3.0
    assert acquisition.protocol == "3D FLAIR"
    assert acquisition.model is None


def test_find_subjects_on_a_bids_root_lists_sub_folders_sorted(tmp_path):
    for subject in ("02", "01", "10"):
        (tmp_path / f"sub-{subject}").mkdir()
    (tmp_path / "participants.tsv").write_text("participant_id\n")
    (tmp_path / "derivatives").mkdir()
    assert find_subjects(tmp_path) == [tmp_path / "sub-01", tmp_path / "sub-02", tmp_path / "sub-10"]


def test_find_subjects_on_a_subject_folder_returns_it(tmp_path):
    subject_dir = write_subject(tmp_path, dates={"01": "2020-01-15"})
    assert find_subjects(subject_dir) == [subject_dir]


def test_find_subjects_on_a_folder_without_subjects_raises(tmp_path):
    with pytest.raises(InputError, match="no sub-"):
        find_subjects(tmp_path)


def test_find_subjects_on_a_missing_path_names_it(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(InputError) as caught:
        find_subjects(missing)
    assert str(missing) in str(caught.value)


def test_input_error_is_a_value_error_and_an_msvol_error():
    assert issubclass(InputError, ValueError) and issubclass(InputError, MsvolError)


# --- bad input: each names its file and the problem ------------------------------------------

def test_missing_t1w_names_the_anat_folder(tmp_path):
    subject_dir = write_subject(tmp_path)
    image_path(subject_dir, "02", "T1w").unlink()
    message = load_error(subject_dir)
    assert str(subject_dir / "ses-02" / "anat") in message
    assert "T1w" in message
    assert "ses-01" not in message  # the complete session is not blamed


def test_truncated_nifti_names_the_file(tmp_path):
    subject_dir = write_subject(tmp_path)
    flair = image_path(subject_dir, "01", "FLAIR")
    content = flair.read_bytes()
    flair.write_bytes(content[: len(content) // 2])
    with pytest.raises(EOFError):  # the file is really broken
        gzip.decompress(flair.read_bytes())
    message = load_error(subject_dir)
    assert str(flair) in message
    assert "truncated" in message or "cannot read" in message


def test_2d_image_names_the_file(tmp_path):
    subject_dir = write_subject(tmp_path)
    flair = image_path(subject_dir, "01", "FLAIR")
    write_image(flair, smooth_image(3, shape=(90, 90, 1)))
    message = load_error(subject_dir)
    assert str(flair) in message
    assert "2D" in message


def test_4d_image_with_three_volumes_names_the_file(tmp_path):
    subject_dir = write_subject(tmp_path)
    t1 = image_path(subject_dir, "02", "T1w")
    write_image(t1, np.stack([smooth_image(seed) for seed in (4, 5, 6)], axis=-1))
    message = load_error(subject_dir)
    assert str(t1) in message
    assert "4D" in message and "3 volumes" in message


def test_4d_image_with_one_volume_is_accepted_as_3d(tmp_path):
    subject_dir = write_subject(tmp_path, dates={"01": "2020-01-15"})
    flair = image_path(subject_dir, "01", "FLAIR")
    write_image(flair, smooth_image(0)[..., None])
    assert load_patient(subject_dir).visits[0].flair.data.shape == SHAPE


def test_thick_slice_flair_names_the_file_and_thickness(tmp_path):
    subject_dir = write_subject(tmp_path)
    flair = image_path(subject_dir, "02", "FLAIR")
    # 1 x 1 x 5 mm, 135 x 135 x 150 mm: only the slice thickness is wrong
    write_image(flair, smooth_image(7, shape=(135, 135, 30)), spacing_mm=(1.0, 1.0, 5.0))
    message = load_error(subject_dir)
    assert str(flair) in message
    assert "5.0 mm" in message
    assert "FLAIR" in message


def test_voxel_size_limit_is_inclusive(tmp_path):
    """max_voxel_size_mm = 1.5 accepts 1.5 mm exactly (the fixtures use it) and refuses 1.6 mm."""
    subject_dir = write_subject(tmp_path, dates={"01": "2020-01-15"})
    assert IngestParams().max_voxel_size_mm == SPACING_MM
    load_patient(subject_dir)
    write_image(image_path(subject_dir, "01", "T1w"), smooth_image(1), spacing_mm=(1.0, 1.0, 1.6))
    assert "1.6 mm" in load_error(subject_dir)


def test_too_small_field_of_view_names_the_file(tmp_path):
    subject_dir = write_subject(tmp_path)
    t1 = image_path(subject_dir, "01", "T1w")
    write_image(t1, smooth_image(8, shape=(40, 40, 40)))  # 60 mm per axis at 1.5 mm
    message = load_error(subject_dir)
    assert str(t1) in message
    assert "field of view" in message


def test_constant_image_names_the_file(tmp_path):
    subject_dir = write_subject(tmp_path)
    t1 = image_path(subject_dir, "01", "T1w")
    write_image(t1, np.zeros(SHAPE, np.float32))
    message = load_error(subject_dir)
    assert str(t1) in message
    assert "constant" in message


def test_missing_date_row_names_the_sessions_file_and_session(tmp_path):
    subject_dir = write_subject(tmp_path)
    table = subject_dir / "sub-01_sessions.tsv"
    table.write_text("session_id\tacq_time\nses-01\t2020-01-15T09:30:00\n")
    message = load_error(subject_dir)
    assert str(table) in message
    assert "ses-02" in message and "acq_time" in message
    assert "ses-01" not in message  # only the undated session is reported


def test_missing_sessions_file_reports_every_session(tmp_path):
    subject_dir = write_subject(tmp_path)
    (subject_dir / "sub-01_sessions.tsv").unlink()
    message = load_error(subject_dir)
    assert "no acq_time for ses-01" in message and "no acq_time for ses-02" in message


def test_unparseable_date_is_reported_as_missing(tmp_path):
    subject_dir = write_subject(tmp_path)
    (subject_dir / "sub-01_sessions.tsv").write_text(
        "session_id\tacq_time\nses-01\t2020-01-15\nses-02\tn/a\n")
    assert "no acq_time for ses-02" in load_error(subject_dir)


def test_several_problems_in_one_subject_are_all_reported_at_once(tmp_path):
    subject_dir = write_subject(tmp_path, dates={"01": "2020-01-15", "02": "2021-01-20", "03": "2022-01-20"})
    image_path(subject_dir, "01", "T1w").unlink()
    thick = write_image(image_path(subject_dir, "02", "FLAIR"), smooth_image(7, shape=(135, 135, 30)),
                        spacing_mm=(1.0, 1.0, 5.0))
    (subject_dir / "sub-01_sessions.tsv").write_text(
        "session_id\tacq_time\nses-01\t2020-01-15\nses-02\t2021-01-20\n")
    message = load_error(subject_dir)
    assert str(subject_dir / "ses-01" / "anat") in message and "T1w" in message
    assert str(thick) in message and "5.0 mm" in message
    assert "no acq_time for ses-03" in message
    assert len(message.splitlines()) == 3


def test_two_sessions_with_the_same_date_are_refused(tmp_path):
    subject_dir = write_subject(tmp_path, dates={"01": "2020-01-15", "02": "2020-01-15"})
    message = load_error(subject_dir)
    assert str(subject_dir) in message
    assert "ses-01" in message and "ses-02" in message
    assert "2020-01-15" in message


def test_several_flair_images_in_one_session_are_refused(tmp_path):
    subject_dir = write_subject(tmp_path, dates={"01": "2020-01-15"})
    extra = image_path(subject_dir, "01", "FLAIR").with_name("sub-01_ses-01_acq-2D_FLAIR.nii.gz")
    write_image(extra, smooth_image(9))
    message = load_error(subject_dir)
    assert extra.name in message and "several" in message


def test_subject_without_sessions_is_refused(tmp_path):
    subject_dir = tmp_path / "sub-01"
    subject_dir.mkdir()
    message = load_error(subject_dir)
    assert str(subject_dir) in message and "ses-" in message


def test_uncompressed_nifti_is_read(tmp_path):
    subject_dir = write_subject(tmp_path, dates={"01": "2020-01-15"})
    flair = image_path(subject_dir, "01", "FLAIR")
    flair.unlink()
    plain = write_image(flair.with_name("sub-01_ses-01_FLAIR.nii"), smooth_image(0))
    assert load_patient(subject_dir).visits[0].flair.source == plain


def test_sessions_file_with_windows_line_endings_is_read(tmp_path):
    subject_dir = write_subject(tmp_path, dates={"01": "2020-01-15"})
    (subject_dir / "sub-01_sessions.tsv").write_bytes(b"session_id\tacq_time\r\nses-01\t2020-01-15\r\n")
    assert load_patient(subject_dir).visits[0].date == dt.date(2020, 1, 15)


def test_sessions_file_with_a_byte_order_mark_is_read(tmp_path):
    subject_dir = write_subject(tmp_path, dates={"01": "2020-01-15"})
    table = subject_dir / "sub-01_sessions.tsv"
    table.write_bytes(b"\xef\xbb\xbf" + table.read_bytes())
    assert load_patient(subject_dir).visits[0].date == dt.date(2020, 1, 15)
