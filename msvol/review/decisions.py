"""A reviewer's decisions on findings, each with its audit row, under optimistic locking.

Decisions on a lesion finding: confirm; reject (with a reason from REJECT_REASONS and free text);
reclassify (new <-> enlarging <-> stable); edit its mask (a label volume on the follow-up FLAIR
grid). On an interval: add a lesion the model missed (grown from a point, review.grow); accept or
overrule its PBVC (with a reason). Nothing automated is changed: a decision is a new row, the
newest one is the finding's current state, and report.json stays as written.

Optimistic locking: every write names the subject version it was made against (`expected_version`,
None: whatever is current) and raises StaleVersionError when another reviewer wrote since; the
version check and the increment are one conditional UPDATE, so two concurrent writers cannot both
pass it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from msvol.config import GrowParams
from msvol.datatypes import Volume
from msvol.errors import InputError, SpaceError, StaleVersionError, UnknownIdError
from msvol.review import grow
from msvol.review.findings import FindingView, current_run, find, interval_key, subject_findings, subject_name
from msvol.review.store import AuditEntry, Decision, Finding, Store, Subject, now

REJECT_REASONS = ("not a lesion", "artefact", "already present at baseline", "other")
RECLASSIFY_TO = ("new", "enlarging", "stable")
ADDED_CLASSES = ("new", "enlarging")
LESION_ACTIONS = ("confirm", "reject", "reclassify", "edit_mask")
PBVC_ACTIONS = ("accept", "overrule")
GRID_TOLERANCE_MM = 1e-3  # an uploaded mask must sit on the follow-up grid (affines equal to within this)


def normalise_reason(reason: str) -> str:
    """'not-a-lesion', 'Not_a_lesion' -> 'not a lesion'; refuses reasons outside REJECT_REASONS."""
    text = " ".join(reason.replace("-", " ").replace("_", " ").lower().split())
    if text not in REJECT_REASONS:
        raise InputError(f"reject reason {reason!r} is not one of: {', '.join(REJECT_REASONS)} "
                         f"(add free text with --note)")
    return text


def decide(store: Store, subject: str, key: str, action: str, *, reviewer: str, reason: str | None = None,
           status: str | None = None, note: str | None = None, expected_version: int | None = None) -> dict:
    """Record one decision on finding `key` of `subject`; returns the finding as `FindingView.as_dict`
    after it, with the subject's new `version`."""
    reviewer = reviewer_name(reviewer)
    with store.transaction() as db:
        view = find(db, subject, key)
        kind = view.finding.kind
        allowed = PBVC_ACTIONS if kind == "pbvc" else LESION_ACTIONS[:3]
        if action not in allowed:
            raise InputError(f"{key} is a {'PBVC' if kind == 'pbvc' else 'lesion'} finding: decide it with "
                             f"{' / '.join(allowed)}, not {action}")
        if action == "confirm":  # a confirmed possible new lesion is a new one: now it counts
            status, reason = view.current_status or view.finding.automated_status, None
            status = "new" if status == "possible_new" else status
        elif action == "reject":
            status, reason = None, normalise_reason(reason or "")
        elif action == "reclassify":
            if status not in RECLASSIFY_TO:
                raise InputError(f"reclassify {key} as one of {', '.join(RECLASSIFY_TO)}, not {status!r}")
            reason = None
        elif action == "overrule":
            if not (reason or "").strip():
                raise InputError(f"overruling the PBVC of {key.split(':')[0]} needs a reason")
            status = None
        else:  # accept
            status, reason = None, None
        # the reviewer's newest mask (edited or grown) stays the lesion's mask through later decisions
        kept = None if action == "reject" else db.scalar(
            select(Decision).where(Decision.finding_id == view.finding.id, Decision.mask_path.is_not(None))
            .order_by(Decision.id.desc()).limit(1))
        return _record(db, view, action, reviewer=reviewer, status=status, reason=reason, note=note,
                       version=bump_version(db, subject, expected_version),
                       mask_path=kept.mask_path if kept else None, volume_mm3=kept.volume_mm3 if kept else None)


def edit_mask(store: Store, subject: str, key: str, mask: Volume, *, reviewer: str, note: str | None = None,
              expected_version: int | None = None) -> dict:
    """Replace a lesion finding's mask by a reviewer's label volume (non-zero = lesion) on the
    follow-up FLAIR grid. The mask is kept under OUT/sub-XX/review/masks/; its volume becomes the
    finding's follow-up volume."""
    reviewer = reviewer_name(reviewer)
    with store.transaction() as db:
        view = find(db, subject, key)
        if view.finding.kind == "pbvc":
            raise InputError(f"{key} is the interval's PBVC; only a lesion finding has a mask")
        grid = followup_grid(store, subject, view.finding.to_session)
        _check_grid(mask, grid, f"the mask for {key}")
        binary = np.asarray(mask.data) > 0
        if not binary.any():
            raise InputError(f"the mask for {key} is empty; reject the finding instead")
        volume_mm3 = float(binary.sum() * grid.voxel_volume_mm3)
        status = view.current_status or view.finding.automated_status
        version = bump_version(db, subject, expected_version)  # before the file: a stale write leaves none
        path = _save_mask(store, subject, f"{key}-v{version}", grid.with_data(binary, "mask"))
        return _record(db, view, "edit_mask", reviewer=reviewer, status=status, reason=None, note=note,
                       version=version, mask_path=path, volume_mm3=volume_mm3)


def add_lesion(store: Store, subject: str, interval: str, point_mm, status: str, *, reviewer: str,
               note: str | None = None, expected_version: int | None = None,
               params: GrowParams = GrowParams()) -> dict:
    """Add a lesion the model missed in `interval` ("01-02" or "ses-01_to_ses-02"), grown from
    `point_mm` (world RAS mm of the follow-up images) on the follow-up FLAIR."""
    reviewer = reviewer_name(reviewer)
    if status not in ADDED_CLASSES:
        raise InputError(f"an added lesion is {' or '.join(ADDED_CLASSES)}, not {status!r}")
    with store.transaction() as db:
        run = current_run(db, subject)
        pbvc = _interval_pbvc(db, subject, interval)
        session = pbvc.finding.to_session
        folder = store.out_dir / subject_name(subject) / f"ses-{session}"
        flair, brain, labels = (_load(folder / name) for name in ("flair.nii.gz", "brain_mask.nii.gz",
                                                                   "lesions.nii.gz"))
        mask = grow.grow_lesion(flair, brain.with_data(brain.data > 0, "mask"), tuple(map(float, point_mm)),
                                params, existing_labels=labels.data.astype(np.int32))
        volume_mm3 = float(mask.sum() * flair.voxel_volume_mm3)
        centroid = (flair.affine @ np.append(np.argwhere(mask).mean(axis=0), 1.0))[:3]
        prefix = interval_key(pbvc.finding.from_session, session)
        added = [view for view in subject_findings(db, subject) if view.finding.kind == "added"
                 and view.finding.key.startswith(prefix + ":")]
        key = f"{prefix}:A{len(added) + 1}"
        finding = Finding(run_id=run.id, subject_id=subject, key=key, from_session=pbvc.finding.from_session,
                          to_session=session, kind="added", lesion_id=None, automated_status=None,
                          baseline_volume_mm3=0.0, followup_volume_mm3=round(volume_mm3, 1),
                          centroid_mm=[round(float(value), 1) for value in centroid], confidence=None,
                          details={"clicked_mm": [float(value) for value in point_mm]}, created_by=reviewer,
                          created_at=now())
        version = bump_version(db, subject, expected_version)
        db.add(finding)
        db.flush()
        path = _save_mask(store, subject, f"{key}-v{version}", flair.with_data(mask, "mask"))
        return _record(db, FindingView(finding, None), "add", reviewer=reviewer, status=status, reason=None,
                       note=note, version=version, mask_path=path, volume_mm3=volume_mm3)


def _record(db: Session, view: FindingView, action: str, *, reviewer: str, status: str | None,
            reason: str | None, note: str | None, version: int, mask_path: str | None = None,
            volume_mm3: float | None = None) -> dict:
    """The decision row and its audit row, in the caller's transaction (which made subject `version`)."""
    subject = view.finding.subject_id
    before = view.as_dict()["decision"]
    decision = Decision(finding_id=view.finding.id, action=action, status=status, reason=reason, note=note,
                        mask_path=mask_path, volume_mm3=None if volume_mm3 is None else round(volume_mm3, 1),
                        reviewer=reviewer, at=now(), subject_version=version)
    db.add(decision)
    db.flush()
    after = FindingView(view.finding, decision).as_dict()
    db.add(AuditEntry(at=decision.at, actor=reviewer, action=action, subject_id=subject,
                      finding_key=view.finding.key, before=before, after=after["decision"],
                      reason=reason or note))
    return after | {"version": version}


def bump_version(db: Session, subject: str, expected: int | None) -> int:
    """Increment the subject's version if it is still `expected` (None: the current one); the new version."""
    current = subject_version(db, subject)
    expected = current if expected is None else expected
    changed = db.execute(update(Subject).where(Subject.id == subject, Subject.version == expected)
                         .values(version=Subject.version + 1)).rowcount
    if changed != 1:
        raise StaleVersionError(_stale_message(db, subject, expected))
    return expected + 1


def _stale_message(db: Session, subject: str, expected: int) -> str:
    current = subject_version(db, subject)
    last = db.scalar(select(AuditEntry).where(AuditEntry.subject_id == subject)
                     .order_by(AuditEntry.id.desc()).limit(1))
    who = f" ({last.actor}, {last.action} {last.finding_key or ''} at {last.at:%Y-%m-%d %H:%M:%S} UTC)" if last else ""
    return (f"{subject_name(subject)} changed since you loaded it: your write was made against version {expected}, "
            f"the store holds version {current}{who}. Nothing was written; reload the subject and decide again.")


def subject_version(db: Session, subject: str) -> int:
    """The subject's version as the database holds it now."""
    db.expire_all()  # the version is read fresh: another writer may have changed it since this session read it
    row = db.get(Subject, subject)
    if row is None:
        raise UnknownIdError(f"unknown subject {subject_name(subject)}")
    return row.version


def _interval_pbvc(db: Session, subject: str, interval: str) -> FindingView:
    wanted = interval.replace("ses-", "").replace("_to_", "-")
    views = [view for view in subject_findings(db, subject) if view.finding.kind == "pbvc"]
    for view in views:
        if view.finding.key.split(":")[0] == wanted:
            return view
    raise UnknownIdError(f"{subject_name(subject)} has no interval {interval!r}; intervals: "
                     f"{', '.join(view.finding.key.split(':')[0] for view in views)}")


def reviewer_name(reviewer: str) -> str:
    """The reviewer's name with whitespace normalised; refuses an empty or overlong one."""
    name = " ".join((reviewer or "").split())
    if not name or len(name) > 200:
        raise InputError("a decision needs the reviewer's name (--reviewer NAME, at most 200 characters)")
    return name


def followup_grid(store: Store, subject: str, session: str) -> Volume:
    """The follow-up FLAIR grid of `session` (as its lesions.nii.gz), on which masks are given."""
    return _load(store.out_dir / subject_name(subject) / f"ses-{session}" / "lesions.nii.gz")


def _check_grid(mask: Volume, grid: Volume, what: str) -> None:
    if mask.data.shape != grid.data.shape or not np.allclose(mask.affine, grid.affine, atol=GRID_TOLERANCE_MM):
        raise SpaceError(f"{what} is not on the follow-up FLAIR grid: got shape {mask.data.shape} and affine "
                         f"{np.round(mask.affine, 3).tolist()}, expected {grid.data.shape} and "
                         f"{np.round(grid.affine, 3).tolist()} (the grid of {grid.source})")


def load_mask(path: Path) -> Volume:
    """A reviewer's label volume from a NIfTI file."""
    return _load(Path(path))


def _load(path: Path) -> Volume:
    import nibabel as nib

    try:
        image = nib.load(path)
        data = np.asarray(image.dataobj)
    except FileNotFoundError as exc:
        raise InputError(f"{path}: missing (was the subject analysed by this msvol version?)") from exc
    except Exception as exc:
        raise InputError(f"{path}: cannot read it as NIfTI ({exc})") from exc
    if data.ndim != 3:
        raise InputError(f"{path}: a 3D volume is needed, got shape {data.shape}")
    kind = "labels" if np.issubdtype(data.dtype, np.integer) else "FLAIR"
    return Volume(data.astype(np.float32) if kind == "FLAIR" else data, image.affine, kind, path)


def _save_mask(store: Store, subject: str, name: str, mask: Volume) -> str:
    """Write a mask under OUT/sub-XX/review/masks/ (never over an existing file); its path relative to OUT."""
    import nibabel as nib

    folder = store.out_dir / subject_name(subject) / "review" / "masks"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name.replace(':', '_')}.nii.gz"
    if target.exists():
        raise StaleVersionError(f"{target}: a mask of this version is already there; reload and decide again")
    partial = target.with_name(f".partial-{os.getpid()}-{target.name}")  # nibabel wants the .nii.gz suffix
    nib.Nifti1Image(mask.data.astype(np.uint8), mask.affine).to_filename(partial)
    partial.replace(target)
    return str(target.relative_to(store.out_dir))
