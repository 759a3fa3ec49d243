"""The review pages: the worklist, the subject view, the page's own files and the images it shows.

`add_pages(app, store)` adds them to the API app of api.create_app, whose token middleware already
guards every route (pages, /static and /files included). The pages hold no data: their JavaScript
(static/review.js, plain ES modules, no build step) reads and writes through the JSON API only, and
draws the images with the vendored NiiVue (static/niivue/). Nothing is fetched from elsewhere; the
Content-Security-Policy of the pages tells the browser so too.

/files/<subject>/<path> serves what the page shows from OUT/sub-XX: the viewer images of an interval
(intervals/<interval>/viewer/), the lesion thumbnails (thumbnails/) and the signed report (final/).
Any other path, a dot-name, or a path that leaves those folders (`..`, a link) is a 404.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import jinja2
from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from msvol import __version__
from msvol.review.findings import subject_id, subject_name
from msvol.review.store import Store

SUBJECT_PATTERN = re.compile(r"(sub-)?[A-Za-z0-9]+")  # a BIDS label
# The browser may load only what this server sends; data: and blob: cover in-memory URLs a page script makes.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                           "connect-src 'self' data: blob:; worker-src 'self' blob:; object-src 'none'; "
                           "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def add_pages(app: FastAPI, store: Store, *, reviewer: str | None = None) -> FastAPI:
    """Add the worklist (/), the subject view (/subjects/<subject>), /static/<path> and /files/<subject>/<path>
    to `app`; returns it. Call it once, after the API routes (e.g. at the end of api.create_app). `reviewer`:
    the one reader the server records (the pages show the name and do not ask for it)."""
    templates = jinja2.Environment(loader=jinja2.PackageLoader("msvol.review", "templates"),
                                   autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined)

    def page(name: str, **context) -> HTMLResponse:
        html = templates.get_template(name).render(msvol_version=__version__, reviewer=reviewer, **context)
        return HTMLResponse(html, headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY,
                                           "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})

    @app.get("/", include_in_schema=False)
    def worklist() -> HTMLResponse:
        return page("worklist.html")

    @app.get("/subjects/{subject}", include_in_schema=False)
    def subject_view(subject: str) -> HTMLResponse:
        if not SUBJECT_PATTERN.fullmatch(subject):
            raise HTTPException(404, f"no subject {subject!r}: subjects are named like sub-01")
        return page("subject.html", subject=subject_id(subject))

    @app.get("/files/{subject}/{path:path}", include_in_schema=False)
    def subject_file(subject: str, path: str) -> FileResponse:
        return FileResponse(served_file(store.out_dir, subject, path))

    app.mount("/static", StaticFiles(packages=[("msvol.review", "static")]), name="static")
    return app


def served_file(out_dir: Path, subject: str, path: str) -> Path:
    """The file OUT/sub-XX/<path>, if the page may have it (see the module docstring).

    Parameters
    ----------
    out_dir : the output folder of `msvol run`
    subject : "sub-01" or "01"
    path : relative to OUT/sub-XX, with "/" separators, e.g. "intervals/ses-01_to_ses-02/viewer/changes.nii.gz"

    Raises
    ------
    HTTPException
        404 for a path outside intervals/*/viewer/, thumbnails/ and final/, or for no such file.
    """
    not_served = HTTPException(404, f"{subject}/{path} is not served: the page gets only intervals/*/viewer/, "
                                    f"thumbnails/ and final/ of a subject")
    parts = PurePosixPath(path).parts
    if (not SUBJECT_PATTERN.fullmatch(subject) or "\\" in path or path.startswith("/")
            or any(part.startswith(".") for part in parts)):
        raise not_served
    if len(parts) >= 4 and parts[0] == "intervals" and parts[2] == "viewer":
        base_parts = parts[:3]
    elif len(parts) >= 2 and parts[0] in ("thumbnails", "final"):
        base_parts = parts[:1]
    else:
        raise not_served
    folder = Path(out_dir) / subject_name(subject_id(subject))
    base = folder.joinpath(*base_parts).resolve()
    target = folder.joinpath(*parts).resolve()  # resolves links: one pointing out of `base` is refused below
    if not target.is_relative_to(base) or not target.is_file():
        raise not_served
    return target
