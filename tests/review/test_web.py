"""Tests for the review pages' routes (msvol/review/web.py) without a browser: the token, what /files serves
and refuses, the page's own files, and that nothing the pages ship points off this machine."""

from __future__ import annotations

import re
from importlib import resources

import pytest
from fastapi.testclient import TestClient

from msvol.review import api

TOKEN = "web-test-token-0123456789"
VIEWER = "intervals/ses-01_to_ses-02/viewer"


@pytest.fixture
def database_url():
    """SQLite only (None: OUT/msvol.db): these routes read files, not the store."""


@pytest.fixture
def client(store):
    app = api.create_app(store, TOKEN)
    return TestClient(app, base_url="http://127.0.0.1", headers={"Authorization": f"Bearer {TOKEN}"})


@pytest.mark.parametrize("path", ["/", "/subjects/sub-01", "/static/review.js", "/static/niivue/niivue.js",
                                  f"/files/sub-01/{VIEWER}/changes.nii.gz"])
def test_pages_and_files_need_the_token(client, path):
    assert client.get(path, headers={"Authorization": ""}).status_code == 401
    assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_the_pages_are_html_with_a_same_origin_policy(client):
    for path, words in (("/", "Worklist"), ("/subjects/sub-01", 'data-subject="01"')):
        response = client.get(path)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        assert words in response.text
        policy = response.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "script-src 'self'" in policy
        addresses = re.findall(r'(?:src|href)="([^"]*)"', response.text)
        assert addresses and all(address.startswith(("/", "#", "data:")) for address in addresses), addresses


def test_a_subject_name_that_is_not_a_label_is_a_404(client):
    assert client.get("/subjects/sub-01%3Cscript%3E").status_code == 404


def test_static_serves_the_modules_and_the_vendored_niivue(client):
    script = client.get("/static/review.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    niivue = client.get("/static/niivue/niivue.js")
    assert niivue.status_code == 200 and "Niivue" in niivue.text[-3000:], "the ES module's export list"
    assert "BSD 2-Clause" in client.get("/static/niivue/LICENSE").text
    assert client.get("/static/nothing.js").status_code == 404


def test_files_serves_the_viewer_images_thumbnails_and_final_report(client, review_out):
    final = review_out / "sub-01" / "final"
    final.mkdir()
    (final / "report.html").write_text("<p>signed</p>")
    for path in (f"{VIEWER}/baseline_flair.nii.gz", f"{VIEWER}/followup_flair.nii.gz", f"{VIEWER}/changes.nii.gz",
                 "thumbnails/ses-01_to_ses-02/lesion-1.png", "final/report.html"):
        response = client.get(f"/files/sub-01/{path}")
        assert response.status_code == 200, path
        assert response.content == (review_out / "sub-01" / path).read_bytes()
    assert client.get(f"/files/01/{VIEWER}/changes.nii.gz").status_code == 200, "01 names sub-01 too"


@pytest.mark.parametrize("path", [
    "report.json", "ses-01/flair.nii.gz", "ses-02/lesions.nii.gz", "msvol.db", "intervals/ses-01_to_ses-02/x.json",
    f"{VIEWER}", f"{VIEWER}/missing.nii.gz", "thumbnails", "thumbnails/%2e%2e/report.json",
    f"{VIEWER}/%2e%2e/%2e%2e/%2e%2e/report.json", "final/..%5c..%5creport.json", "thumbnails/.hidden.png",
    "%2Fetc%2Fpasswd",
])
def test_files_refuses_everything_else(client, review_out, path):
    (review_out / "sub-01" / "thumbnails" / ".hidden.png").write_bytes(b"x")
    response = client.get(f"/files/sub-01/{path}")
    assert response.status_code == 404, path
    assert "is not served" in response.json()["detail"]


def test_files_refuses_a_link_that_leaves_the_served_folders(client, review_out):
    link = review_out / "sub-01" / "thumbnails" / "flair.nii.gz"
    link.symlink_to(review_out / "sub-01" / "ses-01" / "flair.nii.gz")
    assert client.get("/files/sub-01/thumbnails/flair.nii.gz").status_code == 404


@pytest.mark.parametrize("subject", ["sub-02", "..", "sub-01%2F..", "sub-01.db"])
def test_files_of_an_unknown_or_malformed_subject_are_404(client, subject):
    assert client.get(f"/files/{subject}/{VIEWER}/changes.nii.gz").status_code == 404


def test_nothing_the_pages_ship_points_off_this_machine():
    """Our templates, scripts and styles name no remote address (NiiVue's bundle names some in comments and
    in loaders the page does not use; tests/review/test_page.py checks the requests a real browser makes)."""
    package = resources.files("msvol.review")
    shipped = [*(package / "templates").iterdir(), *(package / "static").iterdir()]
    texts = {item.name: item.read_text() for item in shipped if item.is_file() and item.name.endswith(
        (".html", ".js", ".css"))}
    assert {"base.html", "worklist.html", "subject.html", "review.js", "review.css"} <= set(texts)
    assert [name for name, text in texts.items() if re.search(r"https?://|//cdn|@import", text)] == []
