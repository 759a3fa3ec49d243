"""Tests for `msvol check` and `msvol run` on DICOM exports, through click's CliRunner.

Exports are written by synth_dicom (helpers from tests/builders.py): a conforming exam of patient A and an
exam of patient B without a 3D T1, plus a README.txt that is not DICOM. The pipeline of `msvol run` is
replaced (monkeypatch) so only the command's bookkeeping is tested; no model runs.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from msvol.cli import EXIT_INPUT, EXIT_OK, main
from msvol.synth import dicom as synth_dicom
from tests.builders import NUMBERS, PATIENT_A, PATIENT_B, SECRETS, head, identity

GE = synth_dicom.VENDORS["ge"]
SIEMENS = synth_dicom.VENDORS["siemens"]
T1_RULE_REASON = "3D T1: no series matches the 3D T1 rule of ms_standard.yaml"


def invoke(*args):
    return CliRunner().invoke(main, [str(arg) for arg in args])


def pseudonyms(out: Path) -> dict[str, str]:
    """PatientID -> pseudonym, from OUT/private/pseudonyms.tsv."""
    rows = [line.split("\t") for line in (out / "private" / "pseudonyms.tsv").read_text().splitlines()[1:]]
    return {patient_id: pseudonym for pseudonym, patient_id, _ in rows}


@pytest.fixture(scope="module")
def good_export(tmp_path_factory) -> Path:
    """One conforming GE exam of patient A (3D FLAIR, 3D T1, localizer) and a README.txt."""
    export = tmp_path_factory.mktemp("good") / "export"
    synth_dicom.write_exam(export / "EXAM1", identity(PATIENT_A, dt.date(2022, 5, 12)), GE, flair=head(1),
                           t1=head(2, "T1w"))
    (export / "README.txt").write_text("Exported from PACS. Open with any DICOM viewer.\n")
    return export


@pytest.fixture(scope="module")
def mixed_export(tmp_path_factory) -> Path:
    """Patient A's conforming exam beside patient B's exam that has no T1 at all."""
    export = tmp_path_factory.mktemp("mixed") / "export"
    synth_dicom.write_exam(export / "EXAM1", identity(PATIENT_A, dt.date(2022, 5, 12)), GE, flair=head(1),
                           t1=head(2, "T1w"))
    synth_dicom.write_exam(export / "EXAM2", identity(PATIENT_B, dt.date(2021, 3, 4)), SIEMENS, flair=head(3),
                           t1=None)
    return export


# --- msvol check -------------------------------------------------------------------------------------------

def test_check_exits_0_when_every_exam_is_usable_and_ignores_a_readme_silently(good_export):
    result = invoke("check", good_export)
    assert result.exit_code == EXIT_OK == 0, result.output
    assert "patient 1, exam 2022-05-12" in result.stdout and "USABLE (3 series)" in result.stdout
    assert f"3D FLAIR: series {NUMBERS['flair']} '{GE.flair.description}' chosen (the only candidate)" in result.stdout
    assert f"3D T1: series {NUMBERS['t1']} '{GE.t1.description}' chosen (the only candidate)" in result.stdout
    assert f"not candidates: series {NUMBERS['localizer']} '{GE.localizer.description}'" in result.stdout
    assert result.stderr == ""  # README.txt is no DICOM: no warning
    assert "README" not in result.stdout


def test_check_exits_2_when_any_exam_is_refused_and_says_why(mixed_export):
    result = invoke("check", mixed_export)
    assert result.exit_code == EXIT_INPUT == 2, result.output
    assert "patient 1, exam 2022-05-12" in result.stdout  # patients numbered in PatientID order
    assert "patient 2, exam 2021-03-04" in result.stdout and "REFUSED (2 series)" in result.stdout
    assert "3D T1: none usable: no series matches the 3D T1 rule of ms_standard.yaml" in result.stdout
    assert result.stdout.count("USABLE") == 1 and result.stdout.count("REFUSED") == 1


def test_check_json_lists_each_exam_with_roles_choices_reasons_and_checks(mixed_export, tmp_path):
    json_path = tmp_path / "reports" / "check.json"
    result = invoke("check", mixed_export, "--json", json_path)
    assert result.exit_code == 2
    written = json.loads(json_path.read_text())
    assert written["protocol"].endswith("ms_standard.yaml") and written["skipped_files"] == []
    good, refused = written["exams"]
    assert (good["patient"], good["date"], good["usable"], good["refusal"]) == ("patient 1", "2022-05-12", True, None)
    assert good["roles"]["flair"]["chosen"] == f"series {NUMBERS['flair']} '{GE.flair.description}'"
    assert good["roles"]["t1"]["chosen"] == f"series {NUMBERS['t1']} '{GE.t1.description}'"
    assert good["roles"]["flair"]["why"] == "the only candidate"
    (candidate,) = good["roles"]["flair"]["candidates"]
    assert candidate["status"] == "pass"
    checks = {check["rule"]: check for check in candidate["checks"]}
    assert all(set(check) == {"rule", "status", "measured", "limit"} for check in checks.values())
    assert checks["MR acquisition type"] == {"rule": "MR acquisition type", "status": "pass", "measured": "3D",
                                             "limit": "3D"}
    assert (checks["inversion time (ms)"]["measured"], checks["inversion time (ms)"]["limit"]) == ("1800",
                                                                                                  "1400-2900")
    assert checks["field of view (mm)"]["measured"] == "124"  # 124 slices of 1 mm: the smallest extent
    assert (refused["patient"], refused["date"], refused["usable"]) == ("patient 2", "2021-03-04", False)
    assert refused["refusal"] == T1_RULE_REASON
    assert refused["roles"]["t1"] == {"chosen": None, "why": T1_RULE_REASON.removeprefix("3D T1: "),
                                      "candidates": []}
    assert refused["roles"]["flair"]["chosen"] == f"series {NUMBERS['flair']} '{SIEMENS.flair.description}'"
    assert not list(json_path.parent.glob(".*partial"))


def test_check_warns_of_a_truncated_file_and_still_passes_the_exam(good_export, tmp_path):
    export = shutil.copytree(good_export, tmp_path / "export")
    broken = sorted((export / "EXAM1" / "STUDY" / f"SERIES{NUMBERS['localizer']:03d}").iterdir())[0]
    synth_dicom.truncate(broken)
    result = invoke("check", export)
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith(f"warning: {broken}: truncated")


def test_check_of_a_folder_without_dicom_exits_2_with_a_clear_error(tmp_path):
    folder = tmp_path / "not_an_export"
    folder.mkdir()
    (folder / "README.txt").write_text("nothing here\n")
    result = invoke("check", folder)
    assert result.exit_code == 2
    assert f"error: {folder}: no DICOM images found" in result.stderr
    assert "Traceback" not in result.output


def test_check_hides_identifiers_unless_asked_to_keep_them(mixed_export, tmp_path):
    json_path = tmp_path / "check.json"
    hidden = invoke("check", mixed_export, "--json", json_path)
    for secret in SECRETS:
        assert secret not in hidden.output and secret not in json_path.read_text(), secret
    shown = invoke("check", mixed_export, "--keep-identifiers")
    assert f"patient {PATIENT_A['patient_id']}, exam 2022-05-12" in shown.stdout
    assert f"patient {PATIENT_B['patient_id']}, exam 2021-03-04" in shown.stdout
    assert PATIENT_A["patient_name"] not in shown.output and PATIENT_A["birth_date"] not in shown.output


# --- msvol run ---------------------------------------------------------------------------------------------

def test_run_on_a_good_export_exits_0_with_a_pseudonymous_subject(good_export, tmp_path, pipeline_calls):
    out = tmp_path / "out"
    result = invoke("run", good_export, "--out", out)
    assert result.exit_code == 0, result.output
    (pseudonym,) = pseudonyms(out).values()
    assert pseudonyms(out) == {PATIENT_A["patient_id"]: pseudonym}
    assert result.stdout == f"report: {out / f'sub-{pseudonym}' / 'report.html'}\n"
    (patient,) = pipeline_calls
    assert (patient.subject, patient.pseudonymous, [visit.session for visit in patient.visits]) == (
        pseudonym, True, ["20220512"])
    for secret in SECRETS:
        assert secret not in result.output


def test_run_sets_a_refused_exam_aside_with_its_reason_and_exits_2(mixed_export, tmp_path, pipeline_calls):
    out = tmp_path / "out"
    result = invoke("run", mixed_export, "--out", out, "--quiet")
    assert result.exit_code == 2, result.output
    names = pseudonyms(out)
    good, refused = names[PATIENT_A["patient_id"]], names[PATIENT_B["patient_id"]]
    assert result.stdout == f"report: {out / f'sub-{good}' / 'report.html'}\n"
    line = next(line for line in result.stderr.splitlines() if line.startswith("set aside"))
    assert line == f"set aside sub-{refused}: no usable exam:"
    assert f"exam 2021-03-04 in {mixed_export / 'EXAM2' / 'STUDY'}: {T1_RULE_REASON}" in result.stderr
    assert [patient.subject for patient in pipeline_calls] == [good]
    assert not (out / f"sub-{refused}").exists()


def test_run_skips_an_existing_result_without_force_and_redoes_it_with_force(good_export, tmp_path, pipeline_calls):
    out = tmp_path / "out"
    assert invoke("run", good_export, "--out", out).exit_code == 0
    (pseudonym,) = pseudonyms(out).values()
    again = invoke("run", good_export, "--out", out)
    assert again.exit_code == 0, again.output
    assert f"skipped sub-{pseudonym}: result exists" in again.stdout  # the same pseudonym on a later run
    assert len(pipeline_calls) == 1
    forced = invoke("run", good_export, "--out", out, "--force")
    assert forced.exit_code == 0 and len(pipeline_calls) == 2 and pipeline_calls[1].subject == pseudonym


def test_run_keep_identifiers_names_the_subject_by_its_patient_id(good_export, tmp_path, pipeline_calls):
    out = tmp_path / "out"
    result = invoke("run", good_export, "--out", out, "--keep-identifiers")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"report: {out / 'sub-MRN40417' / 'report.html'}\n"
    assert not (out / "private").exists()
    assert [(patient.subject, patient.pseudonymous) for patient in pipeline_calls] == [("MRN40417", False)]


def test_run_on_a_folder_without_dicom_exits_2_before_any_model_loads(tmp_path, pipeline_calls):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "README.txt").write_text("nothing here\n")
    result = invoke("run", folder, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert f"error: {folder}: no DICOM images found" in result.stderr
    assert pipeline_calls == [] and "Traceback" not in result.output
