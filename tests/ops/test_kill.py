"""Whole processes: `kill -9` of a run at each critical moment, then a rerun, gives the outputs of a run that was
never interrupted; two runs started together on the same input and OUT analyse each patient once.

The runs use the quick stand-in pipeline (tests/ops/quick_pipeline.py), which writes through the real
atomic writer: label maps computed from the input (bit-identical when the input is) and a report.json
whose "generated" timestamp is the one thing allowed to differ. The same with the real pipeline is
tests/ops/test_real_runs.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from msvol.cli import main
from msvol.ops.states import ExamState
from msvol.review.store import AnalysisRun, open_store
from tests.builders import write_subject
from tests.ops import quick_pipeline
from tests.ops.test_runs import age

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    """(base, grown): three patients copied an hour ago; the same with a new exam of sub-02."""
    base = tmp_path_factory.mktemp("base") / "bids"
    write_subject(base, "01")
    write_subject(base, "02", dates={"01": "2020-03-01"})
    write_subject(base, "03", dates={"01": "2020-04-01"})
    age(base)
    grown = tmp_path_factory.mktemp("grown") / "bids"
    shutil.copytree(base, grown)  # copies keep their mtimes: the same exams for the state store
    write_subject(grown, "02", dates={"01": "2020-03-01", "02": "2021-03-01"})
    age(grown / "sub-02")
    return base, grown


def run_here(input_path: Path, out: Path) -> None:
    with pytest.MonkeyPatch.context() as patch:
        quick_pipeline.install(patch)
        patch.setenv("MSVOL_SETTLE_MINUTES", "0")
        result = CliRunner().invoke(main, ["run", str(input_path), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output


def run_process(input_path: Path, out: Path, *options: str, kill: str | None = None, pause_s: float = 0.01):
    environment = dict(os.environ, MSVOL_SETTLE_MINUTES="0", MSVOL_TEST_STAGE_S=str(pause_s))
    environment.pop("MSVOL_TEST_KILL", None)
    if kill:
        environment["MSVOL_TEST_KILL"] = kill
    return subprocess.Popen([sys.executable, "-m", "tests.ops.quick_pipeline", str(input_path), "--out", str(out),
                             *options], cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory) -> tuple[Path, Path]:
    """OUT of uninterrupted runs: on base; and on base, then on grown."""
    base, grown = inputs
    first, second = tmp_path_factory.mktemp("reference-first"), tmp_path_factory.mktemp("reference-second")
    run_here(base, first)
    run_here(base, second)
    run_here(grown, second)
    return first, second


def snapshot(out: Path) -> dict[str, object]:
    """Everything a run leaves in OUT that must not depend on whether it was interrupted: every file (a report
    without its timestamp; an earlier result under previous/ without the time in its name), the exam states,
    and how many analysis runs of each subject the findings store registered."""
    files = {}
    for path in sorted(out.rglob("*")):
        relative = path.relative_to(out)
        if not path.is_file() or relative.parts[0] in ("msvol.db", "crashes") or relative.name.startswith("msvol.db"):
            continue
        name = re.sub(r"^previous/(sub-[^/]+)-\d{8}T\d{6}", r"previous/\1", relative.as_posix())
        if path.name == "report.json":
            report = json.loads(path.read_text())
            report.pop("generated")
            files[name] = report
        else:
            files[name] = path.read_bytes()
    opened = open_store(out)
    with opened.transaction() as db:
        files["states"] = sorted(db.execute(select(ExamState.exam, ExamState.state)).all())
        files["registered"] = sorted(db.execute(select(AnalysisRun.subject_id, func.count())
                                                .group_by(AnalysisRun.subject_id)).all())
    opened.dispose()
    return files


FIRST_RUN = ["stage", "staged", "written", "register"]  # killed while analysing a new patient, sub-02
NEW_EXAM = ["stage", "staged", "mid_swap", "after_swap"]  # killed while replacing sub-02's result


@pytest.mark.parametrize("phase, point", [("first", point) for point in FIRST_RUN]
                         + [("new_exam", point) for point in NEW_EXAM])
def test_kill_9_then_a_rerun_gives_the_outputs_of_an_uninterrupted_run(inputs, reference, tmp_path, phase, point):
    base, grown = inputs
    out = tmp_path / "out"
    if phase == "new_exam":
        run_here(base, out)
    killed = run_process(grown if phase == "new_exam" else base, out, kill=f"{point}:sub-02")
    _, stderr = killed.communicate(timeout=120)
    assert killed.returncode == -9, f"the run was not killed at {point}: {stderr}"
    if point == "mid_swap":
        assert not (out / "sub-02").exists() and list(out.glob(".sub-02.replaced-*")), "killed inside the swap"
    run_here(grown if phase == "new_exam" else base, out)
    assert not list(out.glob(".sub-*")), "the rerun swept the dead run's staging folders"
    expected = snapshot(reference[1] if phase == "new_exam" else reference[0])
    got = snapshot(out)
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert got[name] == expected[name], name


def test_two_runs_started_together_analyse_each_patient_once(inputs, reference, tmp_path):
    base, _ = inputs
    out = tmp_path / "out"
    logs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    runs = [run_process(base, out, "--log-json", str(log), pause_s=0.1) for log in logs]
    for process in runs:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode in (0, 75), stderr
    analysed = [json.loads(line)["exam"] for log in logs for line in log.read_text().splitlines()
                if json.loads(line)["state"] == "running"]
    assert sorted(analysed) == ["sub-01/ses-01", "sub-01/ses-02", "sub-02/ses-01", "sub-03/ses-01"], \
        "every exam analysed, none twice"
    assert snapshot(out) == snapshot(reference[0])
