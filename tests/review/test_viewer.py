"""Tests for review.viewer (halfway space <-> follow-up images) and the reading time, through the store and API."""

from __future__ import annotations

import json

import numpy as np
from fastapi.testclient import TestClient

from msvol.datatypes import Volume
from msvol.review import api, decisions, findings, signoff, viewer
from msvol.synth.review_case import AFFINE, LESIONS, MISSED_CENTRE_MM, ball

TOKEN = "viewer-token"


def shifted_space(review_out, shift_mm) -> dict:
    """Rewrite the case's space.json: halfway mm = follow-up mm + shift (a pure translation)."""
    to_halfway = np.eye(4)
    to_halfway[:3, 3] = shift_mm
    space = {"halfway_to_followup": np.linalg.inv(to_halfway).tolist(), "followup_to_halfway": to_halfway.tolist()}
    (review_out / "sub-01" / "intervals" / "ses-01_to_ses-02" / "viewer" / "space.json").write_text(json.dumps(space))
    return space


def test_intervals_list_the_viewer_images_and_maps(store):
    [entry] = viewer.intervals(store, "01")
    assert entry["interval"] == "01-02" and entry["to_session"] == "02"
    assert entry["viewer"] == {name: f"intervals/ses-01_to_ses-02/viewer/{name}.nii.gz"
                               for name in ("baseline_flair", "followup_flair", "changes")}
    assert np.allclose(entry["halfway_to_followup"], np.eye(4))


def test_a_mask_drawn_in_halfway_space_lands_on_the_follow_up_grid(store, review_out):
    space = shifted_space(review_out, (3.0, -2.0, 1.0))
    grid = decisions.followup_grid(store, "01", "02")
    centre = np.array(LESIONS[4][1])
    halfway_affine = AFFINE.copy()  # the halfway grid: same spacing, its own origin
    halfway_affine[:3, 3] += 5.0
    # where the follow-up voxel `centre` lies on the halfway grid
    halfway_voxel = np.linalg.inv(halfway_affine) @ np.asarray(space["followup_to_halfway"]) @ AFFINE @ (*centre, 1)
    drawn = Volume(ball(halfway_voxel[:3], 3).astype(np.uint8), halfway_affine, "labels")
    moved = viewer.halfway_mask_to_followup(drawn, grid, space)
    assert np.array_equal(moved.data > 0, ball(centre, 3)) and np.allclose(moved.affine, AFFINE)


def test_a_click_in_halfway_space_adds_the_lesion_at_follow_up_mm(store, review_out):
    shift = np.array([2.0, 1.0, -1.0])
    shifted_space(review_out, shift)
    client = TestClient(api.create_app(store, TOKEN), base_url="http://127.0.0.1")
    response = client.post("/api/subjects/01/lesions", headers={"Authorization": f"Bearer {TOKEN}"},
                           json={"interval": "01-02", "point_mm": list(np.array(MISSED_CENTRE_MM) + shift),
                                 "point_space": "halfway", "class": "new", "reviewer": "Dr A"})
    assert response.status_code == 200, response.text
    assert np.allclose(response.json()["centroid_mm"], MISSED_CENTRE_MM, atol=0.5)


def test_the_reading_time_runs_from_opening_to_sign_off(store):
    assert findings.listing(store, "01")[0]["signed"] is None
    started = signoff.start_reading(store, "01")["reading_started_at"]
    assert signoff.start_reading(store, "01")["reading_started_at"] == started, "a reading keeps its start"
    for finding in ("01-02:L1", "01-02:L2", "01-02:L3", "01-02:L4"):
        decisions.decide(store, "01", finding, "confirm", reviewer="Dr A")
    signoff.sign_off(store, "01", reviewer="Dr A")
    signed = findings.listing(store, "01")[0]["signed"]
    assert signed["version"] == 1 and 0 <= signed["reading_seconds"] < 60
    assert findings.listing(store, "01")[0]["sessions"] == [{"session": "01", "date": "2020-01-15"},
                                                            {"session": "02", "date": "2021-01-20"}]


def test_the_api_serves_intervals_and_reading(store):
    client = TestClient(api.create_app(store, TOKEN), base_url="http://127.0.0.1")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/api/subjects/01/intervals", headers=headers).json()[0]["interval"] == "01-02"
    assert client.post("/api/subjects/01/reading", headers=headers).status_code == 200
    assert client.post("/api/subjects/99/reading", headers=headers).status_code == 404
