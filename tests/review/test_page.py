"""The review page in a real browser: Debian's chromium (WebGL on SwiftShader) driven by Playwright.

The app of api.create_app (with web.add_pages) is served by uvicorn on a free 127.0.0.1 port, on the
synthetic OUT of msvol.synth.review_case: subject 01 (the known findings of conftest.review_out) and
subject 02, the same case with five lesion findings (lesion 6, resolved, dropped), for timing the
keyboard path. Skipped without /usr/bin/chromium or without playwright.

The test also measures (prints, and writes to review_page_timings.json in its tmp_path) the time from
opening a subject to the first drawn slices and the time to sign off the five-finding case by keyboard;
they are printed for the record, never asserted. It writes docs/review_subject_view.png.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

from msvol.synth.review_case import AFFINE, LESIONS, MISSED_CENTRE_MM, write_review_case

CHROMIUM = Path("/usr/bin/chromium")
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (Debian: apt-get install chromium); "
                                                      "the review page test needs a real browser"),
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not installed (pip install playwright; it "
                                                       "drives /usr/bin/chromium, no browser download needed)"),
]

TOKEN = "page-test-token-0123456789"
CHROMIUM_ARGS = ["--no-sandbox", "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-sync"]
LOAD_TIMEOUT_MS = 180_000  # NiiVue on SwiftShader took ~16 s for a 184x220x188 FLAIR with both cores busy
WRITE_TIMEOUT_MS = 60_000  # sign-off renders the PDF
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "review_subject_view.png"


@pytest.fixture
def database_url():
    """SQLite only (None: OUT/msvol.db): the page reads and writes through the API, which tests/review/test_api.py
    runs on both backends."""


@pytest.fixture
def review_out(tmp_path):
    """OUT with subject 01 (conftest's case) and subject 02: five lesion findings (resolved lesion 6 dropped), the
    least confident at 0.30 (so it heads the worklist)."""
    out = tmp_path / "out"
    write_review_case(out, "01")
    write_review_case(out, "02")
    path = out / "sub-02" / "report.json"
    report = json.loads(path.read_text())
    interval = report["intervals"][0]
    interval["lesions"] = [lesion for lesion in interval["lesions"] if lesion["id"] != 6]
    interval["counts"]["resolved"] = 0
    interval["lesions"][0]["confidence"] = 0.30
    path.write_text(json.dumps(report, indent=2))
    return out


@pytest.fixture
def server(store):
    """The base URL of the app on a free 127.0.0.1 port, served by uvicorn in a background thread."""
    import uvicorn

    from msvol.review import api

    app = api.create_app(store, TOKEN)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uvicorn_server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uvicorn_server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    uvicorn_server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def browser(tmp_path):
    """A chromium context with a fresh user data dir; `requests` lists every URL it asked for."""
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900})
        context.requests = []
        context.on("request", lambda request: context.requests.append(request.url))
        yield context
        context.close()


def drawn_brain(png: bytes) -> dict:
    """Pixel statistics of a canvas screenshot: how much of it is grey image (not black, not overlay colour)."""
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float)
    grey = rgb.mean(axis=2)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    greyish = (np.ptp(rgb, axis=2) < 12) & (grey > 12)
    overlay = (red - green > 50) | (blue - green > 50)  # new, enlarging, shrinking; not the green crosshair
    return {"std": float(grey.std()), "grey_fraction": float(greyish.mean()),
            "overlay_fraction": float(overlay.mean()), "levels": len(np.unique(grey.astype(int)))}


def assert_drew_the_brain(stats: dict) -> None:
    assert stats["std"] > 5 and stats["levels"] > 20, f"the canvas is blank or uniform: {stats}"
    assert stats["grey_fraction"] > 0.05, f"no grey image on the canvas: {stats}"


def test_a_reviewer_reads_decides_and_signs_in_the_browser(server, browser, review_out, store, tmp_path):
    import httpx

    timings = {}
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.on("console", lambda message: errors.append(f"console {message.type}: {message.text}")
            if message.type == "error" or "Content Security Policy" in message.text else None)

    def wait_idle():
        page.wait_for_function("() => window.msvolReview.idle()", timeout=WRITE_TIMEOUT_MS)

    def findings_of(subject):
        response = httpx.get(f"{server}/api/subjects/{subject}", headers={"Authorization": f"Bearer {TOKEN}"})
        return {finding["id"]: finding for finding in response.json()["findings"]}

    def canvas_stats(name):
        return drawn_brain(page.locator(f"#{name}-canvas").screenshot())

    def cursors():
        return page.evaluate("() => ['baseline', 'followup'].map((name) => msvolReview.viewers.cursorMM(name))")

    def selected():
        return page.evaluate("() => msvolReview.state.selected")

    def on_canvas(mm):
        """Follow-up mm -> CSS px from the follow-up canvas's top left (a single-plane layout)."""
        return page.evaluate("""(mm) => {
            const nv = msvolReview.viewers.followup, canvas = nv.canvas;
            const [x, y] = nv.frac2canvasPos(nv.mm2frac(msvolReview.viewers.toHalfway(mm), 0, true));
            return [x * canvas.clientWidth / canvas.width, y * canvas.clientHeight / canvas.height]; }""", list(mm))

    def overlay_around(mm, half=8):
        """The coloured (overlay) share of a small square of the follow-up canvas centred on `mm`, shown there."""
        page.evaluate("(mm) => msvolReview.viewers.moveTo(msvolReview.viewers.toHalfway(mm))", list(mm))
        x, y = on_canvas(mm)
        box = page.locator("#followup-canvas").bounding_box()
        clip = {"x": box["x"] + x - half, "y": box["y"] + y - half, "width": 2 * half, "height": 2 * half}
        from PIL import Image

        rgb = np.asarray(Image.open(io.BytesIO(page.screenshot(clip=clip))).convert("RGB"), dtype=float)
        crosshair = (rgb[..., 1] > rgb[..., 0]) & (rgb[..., 1] > rgb[..., 2])
        return float(((np.ptp(rgb, axis=2) > 40) & ~crosshair).mean())  # any class colour, not grey

    def drag(points_mm):
        """Press at the first point on the follow-up canvas, move through the others, release."""
        box = page.locator("#followup-canvas").bounding_box()
        positions = [on_canvas(mm) for mm in points_mm]
        page.mouse.move(box["x"] + positions[0][0], box["y"] + positions[0][1])
        page.mouse.down()
        for x, y in positions[1:]:
            page.mouse.move(box["x"] + x, box["y"] + y, steps=12)
        page.mouse.up()

    def voxel_mm(voxel):
        return [float(value) for value in (AFFINE @ (*voxel, 1))[:3]]

    def open_subject(subject):
        started = time.monotonic()
        page.goto(f"{server}/subjects/sub-{subject}")
        page.wait_for_function("() => window.msvolReview && window.msvolReview.state.timings.drawn",
                               timeout=LOAD_TIMEOUT_MS)
        page_side = page.evaluate("() => msvolReview.state.timings.drawn")
        return {"seconds_from_goto": round(time.monotonic() - started, 2),
                "seconds_from_navigation_start_page_clock": round(page_side / 1000, 2)}

    # without the token: 401, page and API alike
    assert page.goto(f"{server}/").status == 401
    assert page.goto(f"{server}/subjects/sub-01").status == 401

    # the worklist, with the token from the URL (it sets the cookie)
    assert page.goto(f"{server}/?token={TOKEN}").status == 200
    page.wait_for_selector("body[data-ready=true]", timeout=LOAD_TIMEOUT_MS)
    rows = page.locator("#worklist tbody tr")
    assert [rows.nth(index).get_attribute("data-subject") for index in range(rows.count())] == ["02", "01"], \
        "both have 4 new or enlarging findings; sub-02's least confident one (0.30) puts it first"
    assert "2020-01-15" in page.inner_text("#worklist") and "pending" in page.inner_text("#worklist")
    page.fill("#reviewer", "Dr A")
    page.locator("#reviewer").dispatch_event("change")

    # the subject view: both viewers drew the brain
    started = time.monotonic()
    page.click("a[href='/subjects/sub-01']")
    page.wait_for_function("() => window.msvolReview && window.msvolReview.state.timings.drawn",
                           timeout=LOAD_TIMEOUT_MS)
    timings["sub-01 opened to first drawn slices (cold cache)"] = {
        "seconds_from_click": round(time.monotonic() - started, 2),
        "seconds_from_navigation_start_page_clock": round(page.evaluate("() => msvolReview.state.timings.drawn")
                                                          / 1000, 2)}
    for name in ("baseline", "followup"):
        assert_drew_the_brain(canvas_stats(name))
    assert selected() == "01-02:L1", "the least confident finding is selected first"
    centroid = findings_of("01")["01-02:L1"]["centroid_mm"]
    for cursor in cursors():  # halfway space is the follow-up grid in the synthetic case
        np.testing.assert_allclose(cursor, centroid, atol=0.51)

    # overlay and difference view change what is drawn
    with_overlay = canvas_stats("followup")
    page.keyboard.press("o")
    assert with_overlay["overlay_fraction"] > 0.001
    assert canvas_stats("followup")["overlay_fraction"] < with_overlay["overlay_fraction"] / 4
    page.keyboard.press("o")
    baseline_before = canvas_stats("baseline")
    page.keyboard.press("d")
    assert "Difference" in page.inner_text("#baseline-caption")
    assert canvas_stats("baseline") != baseline_before
    page.keyboard.press("d")

    # a click in the follow-up viewer (single plane) moves both crosshairs to the same mm
    page.click("button[data-layout=axial]")
    before = cursors()[1]
    box = page.locator("#followup-canvas").bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2 + 37, box["y"] + box["height"] / 2 - 23)
    baseline_cursor, followup_cursor = cursors()
    np.testing.assert_allclose(baseline_cursor, followup_cursor, atol=1e-3)
    assert not np.allclose(followup_cursor, before), "the click moved the crosshair"

    # confirm one (click, then the button), reject one (keyboard: r, 2 = artefact, Enter)
    page.click("li[data-finding='01-02:L1']")
    page.click("#confirm")
    wait_idle()
    assert selected() == "01-02:L2", "after a decision the next undecided finding is selected"
    l2_mm = findings_of("01")["01-02:L2"]["centroid_mm"]
    assert overlay_around(l2_mm) > 0.5, "new lesion L2 is drawn in the overlay"
    page.evaluate("(id) => document.querySelector(`li[data-finding='${id}']`).click()", "01-02:L2")
    page.keyboard.press("r")
    page.wait_for_selector("#reject-dialog[open]")
    page.keyboard.press("2")
    page.keyboard.press("Enter")
    wait_idle()
    assert overlay_around(l2_mm) < 0.02, "the rejected lesion left the overlay"
    decided = findings_of("01")
    assert decided["01-02:L1"]["decision"]["action"] == "confirm"
    assert (decided["01-02:L2"]["decision"]["action"], decided["01-02:L2"]["decision"]["reason"]) == \
        ("reject", "artefact")

    # add the missed lesion by clicking its centre in the follow-up viewer
    page.evaluate("(mm) => msvolReview.viewers.moveTo(msvolReview.viewers.toHalfway(mm))", list(MISSED_CENTRE_MM))
    x, y = on_canvas(MISSED_CENTRE_MM)
    page.keyboard.press("a")
    page.mouse.click(box["x"] + x, box["y"] + y)
    wait_idle()
    added = findings_of("01")["01-02:A1"]
    assert added["current_class"] == "new" and added["decision"]["reviewer"] == "Dr A"
    np.testing.assert_allclose(added["centroid_mm"], MISSED_CENTRE_MM, atol=1.0)
    assert added["followup_volume_mm3"] > 50, "grown from the click, not a single voxel"

    # edit the enlarging lesion's mask with the buttons and the mouse (axial plane through its centre): seeded from
    # the overlay, an erase stroke and a pen stroke through the centre, and a filled square outline beside it
    page.click("li[data-finding='01-02:L4']")
    page.keyboard.press("e")
    seeded = page.evaluate("() => msvolReview.viewers.drawnVoxels()")
    radius = max(LESIONS[4][2], 2)  # review_case draws each class blob with at least radius 2
    offsets = range(-radius, radius + 1)
    expected_seed = sum(1 for dx in offsets for dy in offsets for dz in offsets if dx * dx + dy * dy + dz * dz <= radius ** 2)
    assert seeded == expected_seed, "the drawing starts from the lesion's component of changes.nii.gz"
    cx, cy, cz = LESIONS[4][1]
    count = lambda: page.evaluate("() => msvolReview.viewers.drawnVoxels()")  # noqa: E731
    page.click("[data-tool=erase]")
    drag([voxel_mm((cx - 5, cy, cz)), voxel_mm((cx + 5, cy, cz))])
    assert count() == seeded - 7, "the erase stroke cleared the ball's middle row (7 voxels)"
    page.click("#draw-undo")
    assert count() == seeded, "undo"
    page.click("[data-tool=erase]")
    drag([voxel_mm((cx - 5, cy, cz)), voxel_mm((cx + 5, cy, cz))])
    page.click("[data-tool=pen]")
    drag([voxel_mm((cx, cy - 5, cz)), voxel_mm((cx, cy + 5, cz))])
    assert count() == seeded - 7 + 5, "the pen stroke: the erased centre again and two voxels beyond either side"
    page.click("[data-tool=fill]")
    square = [(cx - 13, cy - 3), (cx - 7, cy - 3), (cx - 7, cy + 3), (cx - 13, cy + 3), (cx - 13, cy - 3)]
    drag([voxel_mm((x, y, cz)) for x, y in square])
    drawn = count()
    assert drawn == seeded - 2 + 49, "the closed 7 x 7 outline was filled"
    page.click("#draw-save")
    wait_idle()
    edited = findings_of("01")["01-02:L4"]
    assert edited["decision"]["action"] == "edit_mask" and edited["followup_volume_mm3"] == float(drawn)
    assert page.is_hidden("#draw-tools")
    assert overlay_around(voxel_mm((cx - 10, cy, cz))) > 0.5, "the saved mask is drawn in the overlay"
    page.click("button[data-layout=multiplanar]")

    # reclassify one (the select, then Shift+S), accept the PBVC (p)
    page.click("li[data-finding='01-02:L5']")
    page.select_option("#reclassify-to", "enlarging")
    wait_idle()
    assert findings_of("01")["01-02:L5"]["current_class"] == "enlarging"
    page.click("li[data-finding='01-02:L5']")
    page.keyboard.press("Shift+S")
    wait_idle()
    page.keyboard.press("p")
    wait_idle()
    decided = findings_of("01")
    assert decided["01-02:L5"]["current_class"] == "stable"
    assert decided["01-02:PBVC"]["decision"]["action"] == "accept"
    assert "accept by Dr A" in page.inner_text("#pbvc")

    # the screenshot for the docs, then sign off by keyboard (j until L3, c, s, Enter)
    page.click("li[data-finding='01-02:L1']")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))
    assert page.is_disabled("#signoff"), "L3 is still undecided"
    for _ in range(8):
        if selected() == "01-02:L3":
            break
        page.keyboard.press("j")
    assert selected() == "01-02:L3"
    page.keyboard.press("c")
    page.keyboard.press("s")
    page.wait_for_selector("#signoff-dialog[open]", timeout=WRITE_TIMEOUT_MS)
    page.keyboard.press("Enter")
    page.wait_for_selector("#final-links", state="visible", timeout=WRITE_TIMEOUT_MS)
    final = json.loads((review_out / "sub-01" / "final" / "report.json").read_text())
    assert final["signed"]["reviewer"] == "Dr A"
    assert final["intervals"][0]["confirmed"]["counts"]["new"] == 3 - 1 + 1  # L2 rejected, A1 added
    assert final["intervals"][0]["confirmed"]["counts"]["enlarging"] == 1
    assert (final["intervals"][0]["confirmed"]["counts"]["shrinking"], final["intervals"][0]["confirmed"]["counts"]
            ["stable"]) == (0, 2)
    assert final["intervals"][0]["pbvc_decision"]["reviewer"] == "Dr A"
    statuses = {item["id"]: item["decision"] for item in final["intervals"][0]["findings"]}
    assert statuses["01-02:L1"] == statuses["01-02:L3"] == "confirmed" and statuses["01-02:L2"] == "rejected"
    assert page.get_attribute("#final-pdf", "href") == "/files/sub-01/final/report.pdf"
    assert httpx.get(f"{server}/files/sub-01/final/report.pdf", headers={"Authorization": f"Bearer {TOKEN}"}
                     ).content[:4] == b"%PDF"
    signed = httpx.get(f"{server}/api/subjects/01", headers={"Authorization": f"Bearer {TOKEN}"}).json()["signed"]
    assert signed["reading_seconds"] is not None and signed["reading_seconds"] > 0, "the page marked the reading"

    # another reviewer writes; this page's next write gets 409 and says so plainly
    stale = httpx.post(f"{server}/api/subjects/01/findings/01-02:L5/decision",
                       json={"action": "confirm", "reviewer": "Dr B"}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert stale.status_code == 200
    page.click("li[data-finding='01-02:L6']")
    page.keyboard.press("c")
    wait_idle()
    message = page.inner_text("#message")
    assert "changed since you loaded it" in message and "Reload" in message
    assert findings_of("01")["01-02:L6"]["decision"] is None

    # the five-finding case by keyboard alone: c five times (each moves on), s, Enter
    timings["sub-02 opened to first drawn slices (warm cache)"] = open_subject("02")
    assert page.evaluate("() => msvolReview.state.entry.findings.filter((f) => f.kind !== 'pbvc').length") == 5
    started = time.monotonic()
    for _ in range(5):
        page.keyboard.press("c")
    page.keyboard.press("s")
    page.wait_for_selector("#signoff-dialog[open]", timeout=WRITE_TIMEOUT_MS)
    page.keyboard.press("Enter")
    page.wait_for_selector("#final-links", state="visible", timeout=WRITE_TIMEOUT_MS)
    timings["sub-02 five findings signed off by keyboard (7 keys, from first drawn slices)"] = {
        "seconds": round(time.monotonic() - started, 2)}
    final = json.loads((review_out / "sub-02" / "final" / "report.json").read_text())
    assert all(item["decision"] == "confirmed" for item in final["intervals"][0]["findings"])

    # nothing left 127.0.0.1, and the page raised no error
    assert browser.requests
    outside = [url for url in browser.requests
               if not (urlparse(url).scheme in ("data", "blob") or urlparse(url).hostname == "127.0.0.1")]
    assert outside == [], f"requests left 127.0.0.1: {outside}"
    expected = ("status of 401", "status of 409")  # the requests without the token, and the stale write
    unexpected = [error for error in errors if not any(words in error for words in expected)]
    assert unexpected == [], unexpected

    path = tmp_path / "review_page_timings.json"
    path.write_text(json.dumps(timings, indent=2))
    print(f"\nreview page timings ({path}):\n{json.dumps(timings, indent=2)}")


def test_a_subject_without_viewer_images_is_decided_from_the_list(server, browser, review_out, store):
    """A report of an older msvol (no viewer images): the page says so, and the findings are still decided by key."""
    import httpx

    from msvol.review import findings

    write_review_case(review_out, "03")
    path = review_out / "sub-03" / "report.json"
    report = json.loads(path.read_text())
    del report["intervals"][0]["files"]["viewer"]
    subtraction = dict(report["intervals"][0]["lesions"][0], id=90, status="possible_new", baseline_volume_mm3=0.0,
                       followup_volume_mm3=12.0, baseline_labels=[], followup_labels=[], confidence=None,
                       subtraction_only=True)
    report["intervals"][0]["lesions"].append(subtraction)  # a candidate only the FLAIR subtraction image shows
    path.write_text(json.dumps(report, indent=2))
    findings.register_all(store)

    page = browser.new_page()
    page.goto(f"{server}/subjects/sub-03?token={TOKEN}")
    page.wait_for_function("() => window.msvolReview && window.msvolReview.state.selected", timeout=LOAD_TIMEOUT_MS)
    page.wait_for_function("() => document.getElementById('viewer-status').textContent.includes('no viewer images')",
                           timeout=LOAD_TIMEOUT_MS)
    assert page.is_hidden(".viewer-pair")
    candidate = page.locator("li[data-finding$=':L90']")  # no model confidence: said where it comes from, not 'reader'
    assert "subtraction image only" in candidate.inner_text() and "reader" not in candidate.inner_text()
    assert page.locator("#finding-list li").first.get_attribute("data-finding").endswith(":L90")  # least certain first
    page.fill("#reviewer", "Dr C")
    page.locator("#reviewer").dispatch_event("change")
    page.evaluate("() => document.activeElement.blur()")  # keys typed in the name box are the name's
    first = page.evaluate("() => msvolReview.state.selected")
    page.keyboard.press("c")
    page.wait_for_function("() => window.msvolReview.idle()", timeout=WRITE_TIMEOUT_MS)
    decided = {finding["id"]: finding for finding in httpx.get(
        f"{server}/api/subjects/03", headers={"Authorization": f"Bearer {TOKEN}"}).json()["findings"]}
    assert decided[first]["decision"]["action"] == "confirm" and decided[first]["decision"]["reviewer"] == "Dr C"
    page.keyboard.press("a")  # adding needs the images: nothing happens
    assert page.is_hidden("#add-hint")
