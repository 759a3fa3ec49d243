"""Tests for review.viewer (halfway space <-> follow-up images) and the reading time, through the store and API."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
from fastapi.testclient import TestClient

from msvol.datatypes import Volume
from msvol.review import api, decisions, findings, signoff, viewer
from msvol.synth.review_case import AFFINE, LESIONS, MISSED_CENTRE_MM, MISSED_CENTRE_VOXEL, MISSED_RADIUS, ball

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


def test_the_change_map_shows_the_decisions_made_so_far(store, review_out):
    """Rejected lesion 2 (and resolved lesion 6, found by its blob in the map) leave the map, lesion 5 reclassified as stable turns stable, lesion 4's edited (larger)
    mask and the added lesion's grown mask are drawn in their class; undecided lesion 1 stays as computed. The
    halfway grid is moved against the follow-up grid, so a map applied the wrong way round would miss."""
    shift = np.array([2.0, -1.0, 1.0])
    shifted_space(review_out, shift)
    viewer_folder = review_out / "sub-01" / "intervals" / "ses-01_to_ses-02" / "viewer"
    computed = np.asarray(nib.load(viewer_folder / "changes.nii.gz").dataobj)
    halfway = nib.Nifti1Image(computed, AFFINE @ translation(shift))  # halfway mm = follow-up mm + shift
    halfway.to_filename(viewer_folder / "changes.nii.gz")

    assert np.array_equal(viewer.current_changes(store, "01", "01-02").data, computed), "nothing decided yet"
    decisions.decide(store, "01", "01-02:L2", "reject", reviewer="Dr A", reason="artefact")
    decisions.decide(store, "01", "01-02:L5", "reclassify", reviewer="Dr A", status="stable")
    decisions.decide(store, "01", "01-02:L6", "reject", reviewer="Dr A", reason="not a lesion")  # resolved: no label
    grid = decisions.followup_grid(store, "01", "02")
    decisions.edit_mask(store, "01", "01-02:L4", grid.with_data(ball(LESIONS[4][1], 4), "mask"), reviewer="Dr A")
    decisions.decide(store, "01", "01-02:L4", "confirm", reviewer="Dr A")  # a later confirm keeps the edited mask
    decisions.add_lesion(store, "01", "01-02", MISSED_CENTRE_MM, "enlarging", reviewer="Dr A")

    shown = viewer.current_changes(store, "01", "01-02")
    assert np.allclose(shown.affine, halfway.affine)
    # the map's voxels are the follow-up voxels (a pure shift of whole voxels, in both origin and map)
    for lesion_id, value in ((1, 1), (2, 0), (3, 1), (5, 4), (6, 0), (7, 4)):
        centre, radius = LESIONS[lesion_id][1], max(LESIONS[lesion_id][2], 2)
        assert set(np.unique(shown.data[ball(centre, radius)])) == {value}, f"lesion {lesion_id}"
    assert np.array_equal(shown.data == 2, ball(LESIONS[4][1], 4) | ball(MISSED_CENTRE_VOXEL, MISSED_RADIUS)
                          & (shown.data == 2)), "lesion 4's edited mask, and the added lesion, as enlarging"
    assert (shown.data[ball(MISSED_CENTRE_VOXEL, MISSED_RADIUS - 1)] == 2).all()
    with store.transaction() as db:
        assert findings.find(db, "01", "01-02:L4").decision.mask_path is not None

    client = TestClient(api.create_app(store, TOKEN), base_url="http://127.0.0.1")
    response = client.get("/api/subjects/01/intervals/01-02/changes.nii.gz", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    served = nib.Nifti1Image.from_bytes(gzip.decompress(response.content))
    assert np.array_equal(np.asarray(served.dataobj), shown.data) and np.allclose(served.affine, shown.affine)
    assert client.get("/api/subjects/01/intervals/01-09/changes.nii.gz",
                      headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 400


def translation(shift) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, 3] = shift
    return matrix
