"""What the review page's viewers need: each interval's halfway-space images and the maps between halfway
space (where both visits are shown side by side) and the follow-up images (where findings, added points
and masks live), as `msvol run` wrote them under intervals/ses-A_to_ses-B/viewer/; and the change map as
the reviewer has left it (rejections, reclassifications, edited and added masks drawn in).
"""

from __future__ import annotations

import json

import numpy as np
from scipy import ndimage

from msvol.datatypes import CHANGE_MAP_VALUES, Volume
from msvol.errors import InputError
from msvol.review.decisions import followup_grid, load_mask
from msvol.review.findings import current_run, interval_key, read_report, subject_findings, subject_name
from msvol.review.store import Store

SEED_SEARCH_VOXELS = 3  # a finding's centroid may fall just outside its own (non-convex) lesion; as viewers.js


def intervals(store: Store, subject: str) -> list[dict]:
    """Per interval of the subject's current report: its key, sessions, viewer image paths (relative to
    OUT/sub-XX) and the halfway <-> follow-up maps (4 x 4, world mm)."""
    with store.transaction() as db:
        report_path = store.out_dir / current_run(db, subject).report_path
    report, _ = read_report(report_path)
    result = []
    for interval in report["intervals"]:
        viewer = dict(interval.get("files", {}).get("viewer", {}))
        space = _space(store, subject, viewer.pop("space", None))
        result.append({"interval": f"{interval['from_session']}-{interval['to_session']}",
                       "from_session": interval["from_session"], "to_session": interval["to_session"],
                       "viewer": viewer, **space})
    return result


def interval_space(store: Store, subject: str, interval: str) -> dict:
    """The maps of one interval ("01-02" or "ses-01_to_ses-02")."""
    wanted = interval.replace("ses-", "").replace("_to_", "-")
    for entry in intervals(store, subject):
        if entry["interval"] == wanted:
            if not entry["viewer"]:
                raise InputError(f"{subject_name(subject)} interval {wanted} has no viewer images (analysed by an "
                                 f"older msvol): run `msvol run --force` on it, or give points in follow-up mm")
            return entry
    raise InputError(f"{subject_name(subject)} has no interval {interval!r}")


def halfway_point_to_followup(space: dict, point_mm) -> tuple[float, float, float]:
    point = np.asarray(space["halfway_to_followup"]) @ np.append(np.asarray(point_mm, float), 1.0)
    return tuple(float(value) for value in point[:3])


def halfway_mask_to_followup(mask: Volume, grid: Volume, space: dict) -> Volume:
    """A mask drawn on the halfway grid, resampled (nearest neighbour, once) onto the follow-up grid."""
    # follow-up voxel -> follow-up mm -> halfway mm -> halfway voxel
    pull = np.linalg.inv(mask.affine) @ np.asarray(space["followup_to_halfway"]) @ grid.affine
    data = ndimage.affine_transform((np.asarray(mask.data) > 0).astype(np.uint8), pull[:3, :3], pull[:3, 3],
                                    output_shape=grid.data.shape, order=0)
    return grid.with_data(data.astype(np.uint8), "labels")


def current_changes(store: Store, subject: str, interval: str) -> Volume:
    """The interval's change map (halfway grid, CHANGE_MAP_VALUES) with the decisions made so far: a rejected
    finding's lesion cleared, a reclassified one in its new class, an edited or added lesion's mask (from the
    follow-up grid, nearest neighbour, once) in its class. Undecided and confirmed findings stay as computed."""
    space = interval_space(store, subject, interval)
    folder = store.out_dir / subject_name(subject)
    changes = load_mask(folder / space["viewer"]["changes"])
    with store.transaction() as db:
        decided = [view for view in subject_findings(db, subject) if view.decision is not None
                   and view.finding.kind != "pbvc"
                   and interval_key(view.finding.from_session, view.finding.to_session) == space["interval"]]
    if not decided:
        return changes
    data = np.asarray(changes.data).astype(np.uint8)
    automated = None  # the follow-up lesion labels on the halfway grid, read when first needed
    for view in decided:
        finding, decision = view.finding, view.decision
        if finding.kind == "lesion":
            if finding.automated_status == "resolved":  # no follow-up label: the map's blob at the centroid
                region = _component_at(data, changes.affine, halfway_point(space, finding.centroid_mm))
            else:
                if automated is None:
                    labels = followup_grid(store, subject, finding.to_session)
                    automated = _to_halfway(labels.data, labels.affine, changes, space)
                region = (automated == finding.lesion_id) & (data > 0)
            data[region] = 0
        value = CHANGE_MAP_VALUES.get(view.current_status) if view.current_status else None
        if value is None:
            continue
        if decision.mask_path:
            mask = load_mask(store.out_dir / decision.mask_path)
            data[_to_halfway(np.asarray(mask.data) > 0, mask.affine, changes, space) > 0] = value
        elif finding.kind == "lesion":
            data[region] = value
    return changes.with_data(data, "labels")


def halfway_point(space: dict, followup_mm) -> np.ndarray:
    return (np.asarray(space["followup_to_halfway"]) @ np.append(np.asarray(followup_mm, float), 1.0))[:3]


def _to_halfway(data: np.ndarray, affine: np.ndarray, halfway: Volume, space: dict) -> np.ndarray:
    """A follow-up-grid label volume resampled onto the halfway grid (nearest neighbour)."""
    # halfway voxel -> halfway mm -> follow-up mm -> follow-up voxel
    pull = np.linalg.inv(affine) @ np.asarray(space["halfway_to_followup"]) @ halfway.affine
    return ndimage.affine_transform(np.asarray(data).astype(np.int32), pull[:3, :3], pull[:3, 3],
                                    output_shape=halfway.data.shape, order=0)


def _component_at(data: np.ndarray, affine: np.ndarray, point_mm: np.ndarray) -> np.ndarray:
    """The connected non-zero region of `data` at (or within SEED_SEARCH_VOXELS of) the point; empty if none."""
    seed = np.rint((np.linalg.inv(affine) @ np.append(point_mm, 1.0))[:3]).astype(int)
    low = np.maximum(seed - SEED_SEARCH_VOXELS, 0)
    high = np.minimum(seed + SEED_SEARCH_VOXELS + 1, data.shape)
    if np.any(low >= high):
        return np.zeros(data.shape, bool)
    near = np.argwhere(data[tuple(slice(a, b) for a, b in zip(low, high))] > 0)
    if not len(near):
        return np.zeros(data.shape, bool)
    nearest = near[np.argmin(np.linalg.norm(near + low - seed, axis=1))] + low
    components, _ = ndimage.label(data > 0)
    return components == components[tuple(nearest)]


def _space(store: Store, subject: str, relative: str | None) -> dict:
    if relative is None:
        return {"halfway_to_followup": None, "followup_to_halfway": None}
    path = store.out_dir / subject_name(subject) / relative
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the viewer's space maps ({exc})") from exc
