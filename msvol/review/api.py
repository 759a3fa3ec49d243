"""The review HTTP API (FastAPI): the same operations as the CLI, for the browser pages (review/web.py, added
to the same app) and for scripts.

Served by `msvol review OUT` on 127.0.0.1 only. Every request, the OpenAPI schema included, needs
the token printed at start: `?token=...` in the URL (the page then keeps it in a cookie), an
`Authorization: Bearer ...` header, or that cookie; anything else gets 401.

A server started for one reader (`msvol review --reviewer NAME`, `create_app(..., reviewer=NAME)`) records
that name with every write; a request naming someone else gets 403. Otherwise each write names its reviewer.

Writes carry the subject `version` the client last read; a write against an older version gets
409 with the message of StaleVersionError, and nothing is written. Errors: 400 for a request
that cannot be carried out (bad reason, undecided findings, second sign-off...), 404 for an
unknown subject, finding or interval.
"""

from __future__ import annotations

import gzip
import secrets
import tempfile
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from msvol import __version__
from msvol.errors import MsvolError, StaleVersionError, UnknownIdError
from msvol.review import decisions, findings, signoff, viewer, web
from msvol.review.store import Store

TOKEN_COOKIE = "msvol_token"


class DecisionRequest(BaseModel):
    action: str = Field(description="confirm | reject | reclassify (lesions); accept | overrule (PBVC)")
    reviewer: str | None = Field(None, description="needed unless the server was started for one reviewer")
    reason: str | None = Field(None, description="reject: not a lesion | artefact | already present at baseline | "
                                                 "other; overrule: free text")
    status: str | None = Field(None, description="reclassify: new | enlarging | stable")
    note: str | None = None
    version: int | None = Field(None, description="the subject version the decision was made on")


class AddLesionRequest(BaseModel):
    interval: str = Field(description="e.g. 01-02 or ses-01_to_ses-02")
    point_mm: tuple[float, float, float] = Field(description="world RAS mm (of point_space)")
    point_space: Literal["followup", "halfway"] = Field(
        "followup", description="followup: the follow-up images' mm (report.json centroid_mm); halfway: the viewers'")
    lesion_class: str = Field("new", alias="class", description="new | enlarging")
    reviewer: str | None = None
    note: str | None = None
    version: int | None = None


class SignOffRequest(BaseModel):
    reviewer: str | None = None
    amend_reason: str | None = None
    version: int | None = None


def create_app(store: Store, token: str, reviewer: str | None = None) -> FastAPI:
    """The API on one store; `token` is the secret every request must carry; `reviewer`, if given, the one
    reader this server records every write for."""
    reader = decisions.reviewer_name(reviewer) if reviewer is not None else None

    def who(named: str | None) -> str:
        if reader is None:
            return decisions.reviewer_name(named or "")
        if named is not None and decisions.reviewer_name(named) != reader:
            raise HTTPException(403, f"this server records the reading of {reader} (msvol review --reviewer); "
                                     f"{named!r} needs a server of their own")
        return reader

    app = FastAPI(title="msvol review", version=__version__,
                  description="Confirm or correct msvol's findings and sign them off (research software).")

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        given = (request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE)
                 or request.headers.get("authorization", "").removeprefix("Bearer ").strip())
        if not given or not secrets.compare_digest(given.encode(), token.encode()):
            return JSONResponse({"detail": "a valid token is needed (the URL `msvol review` printed)"},
                                status_code=401)
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response

    @app.exception_handler(MsvolError)
    async def msvol_error(_request: Request, exc: MsvolError):
        status = 409 if isinstance(exc, StaleVersionError) else 404 if isinstance(exc, UnknownIdError) else 400
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.get("/api/subjects", summary="Every subject with its version, review status and findings")
    def subjects() -> list[dict]:
        return findings.listing(store)

    @app.get("/api/subjects/{subject}", summary="One subject with its version, review status and findings")
    def subject(subject: str) -> dict:
        return findings.listing(store, findings.subject_id(subject))[0]

    @app.post("/api/subjects/{subject}/findings/{finding}/decision", summary="Decide one finding")
    def decide(subject: str, finding: str, body: DecisionRequest) -> dict:
        return decisions.decide(store, findings.subject_id(subject), finding, body.action, reviewer=who(body.reviewer),
                                reason=body.reason, status=body.status, note=body.note,
                                expected_version=body.version)

    @app.put("/api/subjects/{subject}/findings/{finding}/mask",
             summary="Replace a lesion's mask: the body is a NIfTI label volume on the follow-up FLAIR grid")
    async def edit_mask(subject: str, finding: str, request: Request, reviewer: str | None = None,
                        version: int | None = None, note: str | None = None,
                        space: Literal["followup", "halfway"] = "followup") -> dict:
        reviewer = who(reviewer)  # before reading the body: a refused writer sends nothing for nothing
        body = await request.body()
        if not body:
            raise HTTPException(400, "send the mask as the request body (a .nii or .nii.gz file)")
        with tempfile.TemporaryDirectory() as folder:
            suffix = ".nii.gz" if body[:2] == b"\x1f\x8b" else ".nii"
            path = Path(folder) / f"mask{suffix}"
            path.write_bytes(body)
            mask = decisions.load_mask(path)
        if space == "halfway":  # drawn in the viewer: onto the follow-up grid, once, nearest neighbour
            maps = viewer.interval_space(store, findings.subject_id(subject), finding.split(":")[0])
            grid = decisions.followup_grid(store, findings.subject_id(subject), maps["to_session"])
            mask = viewer.halfway_mask_to_followup(mask, grid, maps)
        return decisions.edit_mask(store, findings.subject_id(subject), finding, mask, reviewer=reviewer, note=note,
                                   expected_version=version)

    @app.post("/api/subjects/{subject}/lesions", summary="Add a lesion the model missed, grown from a point")
    def add_lesion(subject: str, body: AddLesionRequest) -> dict:
        point = body.point_mm
        if body.point_space == "halfway":
            point = viewer.halfway_point_to_followup(
                viewer.interval_space(store, findings.subject_id(subject), body.interval), point)
        return decisions.add_lesion(store, findings.subject_id(subject), body.interval, point,
                                    body.lesion_class, reviewer=who(body.reviewer), note=body.note,
                                    expected_version=body.version)

    @app.post("/api/subjects/{subject}/signoff", summary="Sign the subject off (or amend a sign-off)")
    def sign(subject: str, body: SignOffRequest) -> dict:
        return signoff.sign_off(store, findings.subject_id(subject), reviewer=who(body.reviewer),
                                amend_reason=body.amend_reason, expected_version=body.version)

    @app.get("/api/subjects/{subject}/intervals",
             summary="Each interval's viewer images (paths below OUT/sub-XX) and halfway <-> follow-up mm maps")
    def intervals(subject: str) -> list[dict]:
        return viewer.intervals(store, findings.subject_id(subject))

    @app.get("/api/subjects/{subject}/intervals/{interval}/changes.nii.gz",
             summary="The interval's change classes on the halfway grid with the decisions so far drawn in "
                     "(gzipped NIfTI, uint8: 1 new, 2 enlarging, 3 shrinking or resolved, 4 stable)")
    def changes(subject: str, interval: str) -> Response:
        import nibabel as nib

        volume = viewer.current_changes(store, findings.subject_id(subject), interval)
        image = nib.Nifti1Image(volume.data.astype("uint8"), volume.affine)
        return Response(gzip.compress(image.to_bytes(), compresslevel=1), media_type="application/gzip",
                        headers={"Cache-Control": "no-store"})

    @app.post("/api/subjects/{subject}/reading", summary="Mark the start of a reading (for the reading time)")
    def reading(subject: str) -> dict:
        return signoff.start_reading(store, findings.subject_id(subject))

    @app.get("/api/subjects/{subject}/audit", summary="The subject's audit trail, oldest first")
    def audit(subject: str) -> list[dict]:
        return findings.audit_trail(store, findings.subject_id(subject))

    web.add_pages(app, store, reviewer=reader)
    return app
