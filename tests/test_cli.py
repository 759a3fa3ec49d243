"""Tests for the command line: version, help, usage errors, and bad input mapped to exit code 2.

Every bad input here is refused by ingest before any model is loaded, so no test runs the
pipeline (the one end-to-end run belongs to the end-to-end test).
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from msvol import __version__
from msvol.cli import EXIT_INPUT, main
from tests.builders import image_path, smooth_image, write_image, write_subject


def invoke(*args: str):
    return CliRunner().invoke(main, [str(arg) for arg in args])


def test_version_prints_the_package_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert __version__ in result.output
    assert "msvol" in result.output


def test_run_help_lists_its_options():
    result = invoke("run", "--help")
    assert result.exit_code == 0
    for option in ("--out", "--force", "--quiet", "--protocol", "--model", "--change-model"):
        assert option in result.output


@pytest.mark.parametrize("command, options", [
    ("train", ("--config", "--out", "--cache", "--task", "--steps", "--seed", "per_visit", "change")),
    ("synth", ("--contrast", "standard", "shifted", "--subjects", "--visits")),
    ("evaluate", ("--pred", "--truth", "--json")),
])
def test_other_commands_list_their_options(command, options):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    for option in options:
        assert option in result.output, option


def test_run_without_out_is_a_usage_error(tmp_path):
    write_subject(tmp_path, dates={"01": "2020-01-15"})
    result = invoke("run", tmp_path)
    assert result.exit_code == 2
    assert "--out" in result.output
    assert not (tmp_path / "out").exists()


def test_run_without_input_is_a_usage_error(tmp_path):
    result = invoke("run", "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert "INPUT" in result.output


def test_nonexistent_input_exits_2_and_names_it(tmp_path):
    missing = tmp_path / "no_such_dataset"
    result = invoke("run", missing, "--out", tmp_path / "out")
    assert result.exit_code == EXIT_INPUT == 2
    assert str(missing) in result.stderr
    assert "Traceback" not in result.output


def test_input_without_subjects_exits_2(tmp_path):
    (tmp_path / "empty").mkdir()
    result = invoke("run", tmp_path / "empty", "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert "sub-" in result.stderr


def _missing_t1w(subject_dir):
    image_path(subject_dir, "02", "T1w").unlink()
    return subject_dir / "ses-02" / "anat"


def _truncated(subject_dir):
    path = image_path(subject_dir, "01", "FLAIR")
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    return path


def _two_dimensional(subject_dir):
    return write_image(image_path(subject_dir, "01", "FLAIR"), smooth_image(3, shape=(90, 90, 1)))


def _four_dimensional(subject_dir):
    return write_image(image_path(subject_dir, "02", "T1w"),
                       np.stack([smooth_image(seed) for seed in (4, 5, 6)], axis=-1))


def _thick_slices(subject_dir):
    return write_image(image_path(subject_dir, "02", "FLAIR"), smooth_image(7, shape=(135, 135, 30)),
                       spacing_mm=(1.0, 1.0, 5.0))


def _small_field_of_view(subject_dir):
    return write_image(image_path(subject_dir, "01", "T1w"), smooth_image(8, shape=(40, 40, 40)))


def _missing_date(subject_dir):
    table = subject_dir / "sub-01_sessions.tsv"
    table.write_text("session_id\tacq_time\nses-01\t2020-01-15\n")
    return table


def _same_date(subject_dir):
    (subject_dir / "sub-01_sessions.tsv").write_text("session_id\tacq_time\nses-01\t2020-01-15\nses-02\t2020-01-15\n")
    return subject_dir


BREAKERS = {
    "missing_t1w": (_missing_t1w, "T1w"),
    "truncated": (_truncated, "cannot read"),
    "2d": (_two_dimensional, "2D"),
    "4d": (_four_dimensional, "4D"),
    "thick_slices": (_thick_slices, "5.0 mm"),
    "small_field_of_view": (_small_field_of_view, "field of view"),
    "missing_date": (_missing_date, "acq_time"),
    "same_date": (_same_date, "same date"),
}


@pytest.mark.parametrize("case", list(BREAKERS))
def test_bad_input_is_set_aside_with_exit_2_naming_the_file(tmp_path, case):
    root = tmp_path / "bids"
    subject_dir = write_subject(root)
    breaker, problem = BREAKERS[case]
    offending = breaker(subject_dir)
    out = tmp_path / "out"
    # the thick-slice case is given the subject folder itself, the others the BIDS root
    result = invoke("run", subject_dir if case == "thick_slices" else root, "--out", out, "--quiet")
    assert result.exit_code == 2, result.output
    assert "set aside sub-01" in result.stderr
    assert str(offending) in result.stderr
    assert problem in result.stderr
    assert "Traceback" not in result.output
    assert not (out / "sub-01").exists()
    assert not (out / "crashes").exists()


def test_a_subject_set_aside_is_reported_once_with_progress_shown(tmp_path):
    """Regression: the progress line and the summary both said "set aside" (the reason printed twice)."""
    root = tmp_path / "bids"
    offending = _missing_t1w(write_subject(root))
    result = invoke("run", root, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "[1/1] sub-01" in result.stderr, "progress is shown without --quiet"
    assert result.stderr.count("set aside") == 1 and result.stderr.count(str(offending)) == 1


def test_unknown_protocol_key_exits_2_naming_the_file(tmp_path):
    root = tmp_path / "bids"
    write_subject(root, dates={"01": "2020-01-15"})
    protocol = tmp_path / "site.yaml"
    protocol.write_text("params:\n  lesions:\n    min_new_lesion_volume: 20\n")
    result = invoke("run", root, "--out", tmp_path / "out", "--protocol", protocol)
    assert result.exit_code == 2
    assert str(protocol) in result.stderr
    assert "min_new_lesion_volume_mm3" in result.stderr


def test_missing_protocol_file_is_a_usage_error(tmp_path):
    root = tmp_path / "bids"
    write_subject(root, dates={"01": "2020-01-15"})
    result = invoke("run", root, "--out", tmp_path / "out", "--protocol", tmp_path / "absent.yaml")
    assert result.exit_code == 2
    assert "absent.yaml" in result.output


def test_existing_result_is_skipped_without_force(tmp_path):
    """A finished subject is skipped before ingest: no model load, exit 0, the old result untouched."""
    root = tmp_path / "bids"
    write_subject(root, dates={"01": "2020-01-15"})
    out = tmp_path / "out"
    (out / "sub-01").mkdir(parents=True)
    (out / "sub-01" / "report.json").write_text("{}")
    result = invoke("run", root, "--out", out)
    assert result.exit_code == 0, result.output
    assert "skipped sub-01" in result.stdout
    assert (out / "sub-01" / "report.json").read_text() == "{}"


def test_out_that_is_a_file_is_a_usage_error(tmp_path):
    root = tmp_path / "bids"
    write_subject(root, dates={"01": "2020-01-15"})
    out = tmp_path / "results.txt"
    out.write_text("not a folder")
    result = invoke("run", root, "--out", out)
    assert result.exit_code == 2
    assert "results.txt" in result.output


def test_model_folder_that_is_not_a_bundle_sets_the_subject_aside_naming_the_file(tmp_path, monkeypatch):
    from msvol.stages import atlas

    # the MNI template is loaded before the models; a stand-in saves a second (the check is the bundle's)
    tiny = np.ones((2, 2, 2), np.float32)
    monkeypatch.setattr(atlas, "load_mni", lambda: ({"t1": tiny, "intracranial": tiny}, np.eye(4)))
    root = tmp_path / "bids"
    write_subject(root, dates={"01": "2020-01-15"})
    not_a_bundle = tmp_path / "lesion_unet"
    not_a_bundle.mkdir()
    result = invoke("run", root, "--out", tmp_path / "out", "--model", not_a_bundle, "--quiet")
    assert result.exit_code == 2, result.output
    assert "set aside sub-01" in result.stderr
    assert str(not_a_bundle / "configs" / "metadata.json") in result.stderr
    assert "Traceback" not in result.output


# --- msvol train and synth: refused before any work ------------------------------------------------


def test_train_config_with_an_unknown_key_exits_2_naming_the_file(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("task: per_visit\nstep: 20\n")
    result = invoke("train", "--config", config, "--out", tmp_path / "run", "--cache", tmp_path / "cache")
    assert result.exit_code == 2
    assert str(config) in result.stderr and "step" in result.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("args", [("train", "--task", "segmentation"), ("synth", "--contrast", "dark")])
def test_unknown_choice_is_a_usage_error(tmp_path, args):
    command, option, value = args
    extra = ("--out", tmp_path / "run", "--cache", tmp_path / "cache") if command == "train" else (tmp_path / "data",)
    result = invoke(command, option, value, *extra)
    assert result.exit_code == 2
    assert value in result.output and option in result.output
    assert not any(tmp_path.iterdir())
