"""Tests for the review API through FastAPI's TestClient: the token, every operation, the error statuses."""

from __future__ import annotations

import gzip
import io

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient

from msvol.review import api
from msvol.synth.review_case import AFFINE, LESIONS, MISSED_CENTRE_MM, ball

TOKEN = "test-token-0123456789"


@pytest.fixture
def client(store):
    return TestClient(api.create_app(store, TOKEN), base_url="http://127.0.0.1")


def auth(**extra):
    return {"headers": {"Authorization": f"Bearer {TOKEN}"}, **extra}


@pytest.mark.parametrize("path", ["/api/subjects", "/openapi.json", "/docs", "/api/subjects/01/audit"])
def test_every_request_without_the_token_gets_401(client, path):
    assert client.get(path).status_code == 401
    assert client.get(path, params={"token": "wrong"}).status_code == 401
    assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_the_token_in_the_url_also_sets_a_cookie_for_the_page(client):
    response = client.get("/openapi.json", params={"token": TOKEN})
    assert response.status_code == 200 and response.json()["info"]["title"] == "msvol review"
    assert client.get("/api/subjects").status_code == 200, "the cookie carries the token from now on"
    assert "httponly" in response.headers["set-cookie"].lower()


def test_the_openapi_schema_lists_the_operations(client):
    paths = client.get("/openapi.json", **auth()).json()["paths"]
    assert {"/api/subjects", "/api/subjects/{subject}", "/api/subjects/{subject}/findings/{finding}/decision",
            "/api/subjects/{subject}/findings/{finding}/mask", "/api/subjects/{subject}/lesions",
            "/api/subjects/{subject}/signoff", "/api/subjects/{subject}/audit"} <= set(paths)


def test_a_reviewer_decides_edits_adds_and_signs_through_the_api(client, review_out):
    subject = client.get("/api/subjects/sub-01", **auth()).json()
    version = subject["version"]
    assert subject["status"] == "pending" and len(subject["findings"]) == 7

    def decide(finding, **body):
        nonlocal version
        response = client.post(f"/api/subjects/01/findings/{finding}/decision",
                               json={"reviewer": "Dr A", "version": version, **body}, **auth())
        assert response.status_code == 200, response.text
        version = response.json()["version"]
        return response.json()

    assert decide("01-02:L1", action="confirm")["current_class"] == "new"
    assert decide("01-02:L2", action="reject", reason="artefact")["current_class"] is None
    assert decide("01-02:L3", action="reclassify", status="stable")["current_class"] == "stable"
    assert decide("01-02:PBVC", action="accept")["decision"]["action"] == "accept"
    mask = nib.Nifti1Image(ball(LESIONS[4][1], 4).astype(np.uint8), AFFINE)
    body = gzip.compress(mask.to_bytes())
    edited = client.put("/api/subjects/01/findings/01-02:L4/mask", content=body,
                        params={"reviewer": "Dr A", "version": version}, **auth())
    assert edited.status_code == 200, edited.text
    assert edited.json()["followup_volume_mm3"] == float(ball(LESIONS[4][1], 4).sum())
    version = edited.json()["version"]
    added = client.post("/api/subjects/01/lesions", json={"interval": "01-02", "point_mm": list(MISSED_CENTRE_MM),
                                                          "class": "new", "reviewer": "Dr A", "version": version},
                        **auth())
    assert added.status_code == 200, added.text
    version = added.json()["version"]
    signed = client.post("/api/subjects/01/signoff", json={"reviewer": "Dr A", "version": version}, **auth())
    assert signed.status_code == 200, signed.text
    assert signed.json()["intervals"][0]["confirmed"]["counts"]["new"] == 3 - 2 + 1
    assert (review_out / "sub-01" / "final" / "report.pdf").is_file()
    actions = [entry["action"] for entry in client.get("/api/subjects/01/audit", **auth()).json()]
    assert actions == ["register", "confirm", "reject", "reclassify", "accept", "edit_mask", "add", "signoff"]


def test_a_stale_write_gets_409_and_changes_nothing(client):
    version = client.get("/api/subjects/01", **auth()).json()["version"]
    first = client.post("/api/subjects/01/findings/01-02:L1/decision",
                        json={"action": "confirm", "reviewer": "Dr A", "version": version}, **auth())
    second = client.post("/api/subjects/01/findings/01-02:L1/decision",
                         json={"action": "reject", "reason": "artefact", "reviewer": "Dr B", "version": version},
                         **auth())
    assert first.status_code == 200 and second.status_code == 409
    assert "changed since you loaded it" in second.json()["detail"]
    finding = next(item for item in client.get("/api/subjects/01", **auth()).json()["findings"]
                   if item["id"] == "01-02:L1")
    assert finding["decision"]["reviewer"] == "Dr A"


@pytest.mark.parametrize("method, path, body, status, words", [
    ("get", "/api/subjects/sub-99", None, 404, "unknown subject"),
    ("post", "/api/subjects/01/findings/01-02:L99/decision", {"action": "confirm", "reviewer": "Dr A"}, 404,
     "no finding"),
    ("post", "/api/subjects/01/findings/01-02:L1/decision", {"action": "reject", "reason": "hmm", "reviewer": "A"},
     400, "not one of"),
    ("post", "/api/subjects/01/signoff", {"reviewer": "Dr A"}, 400, "have no decision"),
])
def test_errors_say_what_to_do(client, method, path, body, status, words):
    response = getattr(client, method)(path, **auth(**({"json": body} if body else {})))
    assert response.status_code == status and words in response.json()["detail"]


def test_a_mask_upload_that_is_not_nifti_is_a_400(client):
    response = client.put("/api/subjects/01/findings/01-02:L4/mask", content=io.BytesIO(b"not nifti").read(),
                          params={"reviewer": "Dr A"}, **auth())
    assert response.status_code == 400 and "cannot read it as NIfTI" in response.json()["detail"]


def test_a_server_for_one_reader_records_that_name_and_refuses_others(store):
    client = TestClient(api.create_app(store, TOKEN, reviewer="  Dr  Solo "), base_url="http://127.0.0.1")
    decided = client.post("/api/subjects/01/findings/01-02:L1/decision", json={"action": "confirm"}, **auth())
    assert decided.status_code == 200 and decided.json()["decision"]["reviewer"] == "Dr Solo"
    named = client.post("/api/subjects/01/findings/01-02:L2/decision",
                        json={"action": "confirm", "reviewer": "Dr Solo"}, **auth())
    assert named.status_code == 200
    other = client.post("/api/subjects/01/findings/01-02:L3/decision",
                        json={"action": "confirm", "reviewer": "Dr Else"}, **auth())
    assert other.status_code == 403 and "Dr Solo" in other.json()["detail"]
    mask = client.put("/api/subjects/01/findings/01-02:L4/mask", content=b"\x00" * 10,
                      params={"reviewer": "Dr Else"}, **auth())
    assert mask.status_code == 403
    actors = [entry["actor"] for entry in client.get("/api/subjects/01/audit", **auth()).json()]
    assert actors == ["msvol", "Dr Solo", "Dr Solo"], "the registration, then the two accepted decisions"
    page = client.get("/subjects/sub-01", **auth()).text
    assert 'value="Dr Solo" readonly' in page
    # without a server reader, a write must name one
    anonymous = TestClient(api.create_app(store, TOKEN), base_url="http://127.0.0.1").post(
        "/api/subjects/01/findings/01-02:L3/decision", json={"action": "confirm"}, **auth())
    assert anonymous.status_code == 400 and "reviewer" in anonymous.json()["detail"]
