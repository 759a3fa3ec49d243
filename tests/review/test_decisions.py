"""Tests for review.decisions: every decision type, its audit row, optimistic locking, nothing automated changed."""

from __future__ import annotations

import threading

import nibabel as nib
import numpy as np
import pytest

from msvol.datatypes import Volume
from msvol.errors import InputError, SpaceError, StaleVersionError, UnknownIdError
from msvol.review import decisions, findings
from msvol.synth.review_case import (AFFINE, LESIONS, MISSED_CENTRE_MM, MISSED_CENTRE_VOXEL, MISSED_RADIUS, SHAPE,
                                     ball)


def current(store, key):
    return next(view for view in findings.listing(store, "01")[0]["findings"] if view["id"] == key)


def test_confirm_reject_and_reclassify_change_the_current_class_only(store, review_out):
    automated = (review_out / "sub-01" / "report.json").read_bytes()
    decisions.decide(store, "01", "01-02:L1", "confirm", reviewer="Dr A")
    decisions.decide(store, "01", "01-02:L2", "reject", reason="not-a-lesion", note="vessel", reviewer="Dr A")
    decisions.decide(store, "01", "01-02:L3", "reclassify", status="stable", reviewer="Dr A")
    assert current(store, "01-02:L1")["current_class"] == "new"
    rejected = current(store, "01-02:L2")
    assert rejected["current_class"] is None and rejected["class"] == "new"
    assert rejected["decision"] | {"at": None} == {"action": "reject", "status": None, "reason": "not a lesion",
                                                   "note": "vessel", "reviewer": "Dr A", "at": None, "mask": None}
    assert current(store, "01-02:L3")["current_class"] == "stable"
    assert (review_out / "sub-01" / "report.json").read_bytes() == automated, "report.json stays as written"


def test_a_later_decision_supersedes_without_deleting_the_earlier_one(store):
    decisions.decide(store, "01", "01-02:L1", "reject", reason="artefact", reviewer="Dr A")
    decisions.decide(store, "01", "01-02:L1", "confirm", reviewer="Dr B")
    assert current(store, "01-02:L1")["decision"]["reviewer"] == "Dr B"
    trail = [entry for entry in findings.audit_trail(store, "01") if entry["finding"] == "01-02:L1"]
    assert [(entry["actor"], entry["action"]) for entry in trail] == [("Dr A", "reject"), ("Dr B", "confirm")]
    assert trail[0]["before"] is None and trail[1]["before"]["action"] == "reject"
    assert trail[1]["after"]["action"] == "confirm" and trail[0]["reason"] == "artefact"


def test_pbvc_is_accepted_or_overruled_with_a_reason(store):
    decisions.decide(store, "01", "01-02:PBVC", "overrule", reason="motion at follow-up", reviewer="Dr A")
    assert current(store, "01-02:PBVC")["decision"]["reason"] == "motion at follow-up"
    with pytest.raises(InputError, match="needs a reason"):
        decisions.decide(store, "01", "01-02:PBVC", "overrule", reviewer="Dr A")
    with pytest.raises(InputError, match="PBVC finding"):
        decisions.decide(store, "01", "01-02:PBVC", "confirm", reviewer="Dr A")
    with pytest.raises(InputError, match="lesion finding"):
        decisions.decide(store, "01", "01-02:L1", "accept", reviewer="Dr A")


@pytest.mark.parametrize("call, error, words", [
    (dict(key="01-02:L9", action="confirm"), UnknownIdError, "no finding '01-02:L9'"),
    (dict(key="01-02:L1", action="reject", reason="looks odd"), InputError, "not one of"),
    (dict(key="01-02:L1", action="reclassify", status="resolved"), InputError, "new, enlarging, stable"),
    (dict(key="01-02:L1", action="confirm", reviewer="  "), InputError, "reviewer"),
])
def test_bad_requests_are_refused_and_write_nothing(store, call, error, words):
    version = findings.listing(store, "01")[0]["version"]
    call = dict(call)  # the parameters are shared between the two backends' runs
    with pytest.raises(error, match=words):
        decisions.decide(store, "01", call.pop("key"), call.pop("action"), **{"reviewer": "Dr A", **call})
    assert findings.listing(store, "01")[0]["version"] == version


def test_unknown_subject(store):
    with pytest.raises(UnknownIdError, match="unknown subject sub-99; subjects in this store: sub-01"):
        decisions.decide(store, "99", "01-02:L1", "confirm", reviewer="Dr A")


def test_a_write_against_a_stale_version_is_refused_and_nothing_is_lost(store):
    version = findings.listing(store, "01")[0]["version"]
    decisions.decide(store, "01", "01-02:L1", "confirm", reviewer="Dr A", expected_version=version)
    with pytest.raises(StaleVersionError, match=f"version {version}.*Dr A.*reload"):
        decisions.decide(store, "01", "01-02:L1", "reject", reason="artefact", reviewer="Dr B",
                         expected_version=version)
    assert current(store, "01-02:L1")["decision"]["reviewer"] == "Dr A"
    assert findings.listing(store, "01")[0]["version"] == version + 1


def test_two_reviewers_at_once_on_one_version_one_wins(store):
    version = findings.listing(store, "01")[0]["version"]
    outcomes = []

    def review(name):
        try:
            decisions.decide(store, "01", "01-02:L4", "confirm", reviewer=name, expected_version=version)
            outcomes.append(name)
        except StaleVersionError:
            outcomes.append("stale")

    threads = [threading.Thread(target=review, args=(name,)) for name in ("Dr A", "Dr B")]
    [thread.start() for thread in threads]
    [thread.join() for thread in threads]
    assert sorted(outcomes)[1] == "stale" and findings.listing(store, "01")[0]["version"] == version + 1


def test_an_edited_mask_is_kept_and_gives_the_volume(store, review_out):
    centre = LESIONS[4][1]
    mask = ball(centre, 4).astype(np.uint8)
    result = decisions.edit_mask(store, "01", "01-02:L4", Volume(mask, AFFINE, "labels"), reviewer="Dr A")
    assert result["current_class"] == "enlarging" and result["followup_volume_mm3"] == float(mask.sum())
    saved = nib.load(review_out / result["decision"]["mask"])
    assert np.array_equal(np.asarray(saved.dataobj) > 0, mask > 0) and np.allclose(saved.affine, AFFINE)


def test_a_mask_on_another_grid_is_refused_naming_both_grids(store):
    shifted = AFFINE.copy()
    shifted[0, 3] += 1.0
    with pytest.raises(SpaceError, match="not on the follow-up FLAIR grid"):
        decisions.edit_mask(store, "01", "01-02:L4", Volume(np.ones(SHAPE, np.uint8), shifted, "labels"),
                            reviewer="Dr A")
    with pytest.raises(InputError, match="empty"):
        decisions.edit_mask(store, "01", "01-02:L4", Volume(np.zeros(SHAPE, np.uint8), AFFINE, "labels"),
                            reviewer="Dr A")


def test_an_added_lesion_is_grown_over_the_missed_lesion(store, review_out):
    near = tuple(value + 1.0 for value in MISSED_CENTRE_MM)  # a click 1.7 mm off the centre
    result = decisions.add_lesion(store, "01", "ses-01_to_ses-02", near, "new", reviewer="Dr A", note="missed")
    assert result["id"] == "01-02:A1" and result["kind"] == "added" and result["current_class"] == "new"
    grown = np.asarray(nib.load(review_out / result["decision"]["mask"]).dataobj) > 0
    truth = ball(MISSED_CENTRE_VOXEL, MISSED_RADIUS)
    dice = 2 * (grown & truth).sum() / (grown.sum() + truth.sum())
    assert dice >= 0.9, dice
    assert np.allclose(result["centroid_mm"], MISSED_CENTRE_MM, atol=0.5)
    second = decisions.add_lesion(store, "01", "01-02", near, "enlarging", reviewer="Dr A")
    assert second["id"] == "01-02:A2", "ids count up per interval"


def test_adding_in_an_unknown_interval_names_the_known_ones(store):
    with pytest.raises(UnknownIdError, match="no interval '02-03'; intervals: 01-02"):
        decisions.add_lesion(store, "01", "02-03", MISSED_CENTRE_MM, "new", reviewer="Dr A")
