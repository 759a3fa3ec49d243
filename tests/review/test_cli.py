"""Tests for the reader's commands (msvol/cli_review.py) through click's CliRunner, on the review fixture's OUT."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from msvol.cli import EXIT_INPUT, main
from msvol.synth.review_case import AFFINE, LESIONS, MISSED_CENTRE_MM, ball


def invoke(*args):
    return CliRunner().invoke(main, [str(arg) for arg in args])


def test_findings_lists_ids_class_confidence_and_decision(review_out):
    result = invoke("findings", review_out, "--json")
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout)
    assert listing[0]["subject"] == "01" and listing[0]["status"] == "pending"
    assert [finding["id"] for finding in listing[0]["findings"]][:2] == ["01-02:L1", "01-02:L2"]
    text = invoke("findings", review_out, "--subject", "sub-01")
    assert "sub-01  version 0  pending" in text.stdout and "01-02:L1" in text.stdout and "pending" in text.stdout
    assert (review_out / "msvol.db").is_file(), "the store is created on first use"


def test_a_subtraction_only_candidate_says_where_it_comes_from(review_out):
    """It has no model confidence; the listing says it is the subtraction image's, not blank like a reader's own."""
    path = review_out / "sub-01" / "report.json"
    report = json.loads(path.read_text())
    lesions = report["intervals"][0]["lesions"]
    lesions.append(dict(lesions[0], id=90, status="possible_new", baseline_volume_mm3=0.0, followup_volume_mm3=12.0,
                        baseline_labels=[], followup_labels=[], confidence=None, subtraction_only=True))
    path.write_text(json.dumps(report))
    listing = json.loads(invoke("findings", review_out, "--json").stdout)
    candidate = next(finding for finding in listing[0]["findings"] if finding["id"] == "01-02:L90")
    assert candidate["details"]["subtraction_only"] is True and candidate["confidence"] is None
    line = next(line for line in invoke("findings", review_out).stdout.splitlines() if "01-02:L90" in line)
    assert "possible_new" in line and "subtraction only" in line


def test_decide_add_signoff_and_audit(review_out, tmp_path):
    common = ("--subject", "sub-01", "--reviewer", "Dr A. Reader")
    for finding, action in (("01-02:L1", ("--confirm",)), ("01-02:L2", ("--reject", "not-a-lesion")),
                            ("01-02:L3", ("--reclassify", "enlarging")), ("01-02:PBVC", ("--accept",))):
        result = invoke("decide", review_out, *common, "--finding", finding, *action, "--note", "checked")
        assert result.exit_code == 0, result.output
    mask = tmp_path / "mask.nii.gz"
    nib.Nifti1Image(ball(LESIONS[4][1], 4).astype(np.uint8), AFFINE).to_filename(mask)
    result = invoke("decide", review_out, *common, "--finding", "01-02:L4", "--mask", mask)
    assert result.exit_code == 0 and "edit_mask" in result.stdout
    result = invoke("add-lesion", review_out, *common, "--interval", "ses-01_to_ses-02", "--at", *MISSED_CENTRE_MM)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("01-02:A1: added as new, 123 mm3")
    result = invoke("signoff", review_out, *common)
    assert result.exit_code == 0, result.output
    assert "version 1: confirmed by Dr A. Reader on" in result.stdout
    final = json.loads((review_out / "sub-01" / "final" / "report.json").read_text())
    assert final["intervals"][0]["confirmed"]["counts"]["new"] == 3 - 2 + 1
    trail = invoke("audit", review_out, "--subject", "sub-01")
    actors = [line.split("  ")[1] for line in trail.stdout.splitlines()]
    assert trail.exit_code == 0 and actors == ["msvol"] + ["Dr A. Reader"] * 7
    assert "not a lesion" in trail.stdout and "signoff" in trail.stdout


@pytest.mark.parametrize("args, words", [
    (("findings", "--subject", "sub-77"), "unknown subject sub-77"),
    (("decide", "--subject", "01", "--finding", "01-02:L42", "--confirm", "--reviewer", "A"), "no finding '01-02:L42'"),
    (("decide", "--subject", "01", "--finding", "01-02:L1", "--reject", "boring", "--reviewer", "A"), "not one of"),
    (("signoff", "--subject", "01", "--reviewer", "A"), "decide each with `msvol decide` first"),
    (("decide", "--subject", "01", "--finding", "01-02:L1", "--confirm", "--reviewer", "A", "--expect-version", "5"),
     "version 5"),
])
def test_requests_that_cannot_be_carried_out_exit_2_saying_what_to_do(review_out, args, words):
    result = invoke(args[0], review_out, *args[1:])
    assert result.exit_code == EXIT_INPUT, result.output
    assert words in result.stderr and "Traceback" not in result.output


def test_decide_needs_exactly_one_decision(review_out):
    result = invoke("decide", review_out, "--subject", "01", "--finding", "01-02:L1", "--confirm", "--accept",
                    "--reviewer", "A")
    assert result.exit_code == 2 and "exactly one of" in result.output


def test_a_second_signoff_exits_2(review_out):
    common = ("--subject", "01", "--reviewer", "Dr A")
    for finding in ("01-02:L1", "01-02:L2", "01-02:L3", "01-02:L4"):
        assert invoke("decide", review_out, *common, "--finding", finding, "--confirm").exit_code == 0
    assert invoke("signoff", review_out, *common).exit_code == 0
    again = invoke("signoff", review_out, *common)
    assert again.exit_code == EXIT_INPUT and "already signed off" in again.stderr
