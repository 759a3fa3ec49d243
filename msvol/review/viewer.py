"""What the review page's viewers need: each interval's halfway-space images and the maps between halfway
space (where both visits are shown side by side) and the follow-up images (where findings, added points
and masks live), as `msvol run` wrote them under intervals/ses-A_to_ses-B/viewer/.
"""

from __future__ import annotations

import json

import numpy as np
from scipy import ndimage

from msvol.datatypes import Volume
from msvol.errors import InputError
from msvol.review.findings import current_run, read_report, subject_name
from msvol.review.store import Store


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


def _space(store: Store, subject: str, relative: str | None) -> dict:
    if relative is None:
        return {"halfway_to_followup": None, "followup_to_halfway": None}
    path = store.out_dir / subject_name(subject) / relative
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the viewer's space maps ({exc})") from exc
