"""The lesion book of the check set (msvol.synth.checkset): one subject's subject-grid FLAIR, T1 and
label map being edited, and a record per lesion id (origin, site, shape, contrast, edge, designed
volume, fate).

Lesion ids: the base patient's own lesions keep theirs; inserted old lesions start at 101, the
merger's tiny lesion at 201, new lesions at 301. Every inserted or grown lesion keeps 4 mm (voxel
centres) from every other lesion, except one placed 'next to an old lesion' (2.5-4.5 mm from it, never
touching at 26-connectivity).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from msvol.synth import checkset_lesions as lesions

_GAP_MM = 4.0
_NEAR_MM = (2.5, 4.5)
_MARGIN = 5  # voxels between a fitted mask and its box border
_STARTS = {"inserted_old": 101, "merger_tiny": 201, "new": 301}


class LesionBook:
    """One subject's images being edited on the subject grid, and what was put where."""

    def __init__(self, subject: dict, maps, rng, donors: list, old_sites: dict):
        self.flair, self.t1 = subject["flair"].copy(), subject["t1"].copy()
        self.tissue, self.labels = subject["tissue"], subject["labels"].copy()
        self.maps, self.rng, self.donors = maps, rng, donors
        self.records = {int(i): {"origin": "base", "site": str(old_sites.get(int(i), "unknown"))}
                        for i in np.unique(self.labels[self.labels > 0])}
        self._next = dict(_STARTS)
        self._used: set[int] = set()
        self._turn = 0
        self._merger = None

    def snapshot(self) -> dict:
        return {"flair": self.flair.copy(), "t1": self.t1.copy(), "tissue": self.tissue, "labels": self.labels.copy()}

    def _old_lesions(self, low_mm3: float, high_mm3: float) -> list[int]:
        sizes = np.bincount(self.labels.ravel())
        found = [i for i, record in self.records.items() if record["origin"] == "base" and i not in self._used
                 and i < len(sizes) and low_mm3 <= sizes[i] <= high_mm3]
        return [found[k] for k in self.rng.permutation(len(found))]

    def _box_of(self, lesion_id: int, pad: int):
        where = ndimage.find_objects((self.labels == lesion_id).astype(np.int8))[0]
        return tuple(slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(where, self.labels.shape))

    def insert_new(self, volume_mm3: float, site: str, contrast: float, *, origin: str, target: int | None = None,
                   near_mm=_NEAR_MM) -> int:
        """Fit and blend one lesion of `volume_mm3` at `site` ('any' for periventricular, deep or
        juxtacortical; 'next_to_old' for near an old lesion); returns its id."""
        radius = (3 * volume_mm3 / (4 * np.pi)) ** (1 / 3)
        if site == "next_to_old" and target is None:
            target = next(iter(self._old_lesions(30, 3000)))
        if target is not None:
            box = self._box_of(target, int(radius + near_mm[1] + 3))
            distance = ndimage.distance_transform_edt(self.labels[box] != target)
            ring = (distance >= radius + near_mm[0]) & (distance <= radius + near_mm[1]) & (self.maps.wm[box] >= 0.9)
            pool = np.argwhere(ring) + [s.start for s in box]
        else:
            names = ("periventricular", "deep_white_matter", "juxtacortical") if site == "any" else (site,)
            pool = self.maps.sites[names[int(self.rng.integers(len(names)))]]
        kind = SHAPES_IN_TURN[self._turn % 3] if self.donors or self._turn % 3 != 2 else "blob"
        self._turn += 1
        half = int(np.ceil(2.2 * radius)) + _MARGIN + 2
        for _attempt in range(80):
            if not len(pool):
                break
            centre = pool[int(self.rng.integers(len(pool)))] + self.rng.uniform(-0.5, 0.5, 3)
            box = lesions.box_around(np.rint(centre), half, self.labels.shape)
            if any(s.stop - s.start != 2 * half + 1 for s in box):
                continue
            level = _level(kind, self.rng, box, centre, radius, self.donors)
            others = (self.labels[box] > 0) & (self.labels[box] != (target or -1))
            clear = ndimage.distance_transform_edt(~others) >= _GAP_MM if others.any() else True
            allowed = (self.maps.wm[box] >= 0.5) & clear
            if target is not None:
                to_target = ndimage.distance_transform_edt(self.labels[box] != target)
                allowed &= to_target >= near_mm[0]
            mask = lesions.fit_mask(level, allowed, volume_mm3)
            if mask is None or not _clear_of_border(mask, _MARGIN):
                continue
            if target is not None and to_target[mask].min() > near_mm[1]:
                continue
            return self._blend_new(box, mask, contrast, origin, site, kind, volume_mm3,
                                   target, None if target is None else float(to_target[mask].min()))
        raise RuntimeError(f"check set: could not place a {volume_mm3:.0f} mm3 lesion at {site}")

    def _blend_new(self, box, mask, contrast, origin, site, kind, volume_mm3, target, distance) -> int:
        edge = round(float(self.rng.uniform(0.0, 2.0)), 2)
        t1_ratio = round(float(self.rng.uniform(0.5, 1.0)), 3)
        fraction = lesions.soft_fraction(mask, edge)
        lesions.blend(self.flair, box, fraction, (1 + contrast) * self.maps.flair_wm[box])
        lesions.blend(self.t1, box, fraction, t1_ratio * self.maps.t1_wm[box])
        lesion_id = self._next[origin]
        self._next[origin] += 1
        self.labels[box][mask] = lesion_id
        record = {"origin": origin, "site": site, "shape": kind, "flair_contrast": round(float(contrast), 3),
                  "t1_ratio": t1_ratio, "edge_mm": edge, "designed_volume_mm3": round(float(volume_mm3), 2),
                  "fate": "new" if origin == "new" else "stable"}
        if target is not None:
            record.update(next_to=int(target), distance_to_neighbour_mm=round(distance, 2))
            self._used.add(int(target))
        self.records[lesion_id] = record
        return lesion_id

    def grow(self, factor: float, *, fate: str) -> int:
        """Grow an old lesion's volume by `factor` (new tissue of the lesion's own intensity)."""
        low, high = (30, 800) if fate == "enlarging" else (250, 3000)
        sizes = np.bincount(self.labels.ravel())
        for lesion_id in self._old_lesions(low, high):
            radius = (3 * sizes[lesion_id] / (4 * np.pi)) ** (1 / 3)
            box = self._box_of(lesion_id, int(np.ceil(2 * (factor ** (1 / 3) - 1) * radius)) + _MARGIN + 4)
            lesion = self.labels[box] == lesion_id
            others = (self.labels[box] > 0) & ~lesion
            clear = ndimage.distance_transform_edt(~others) >= _GAP_MM if others.any() else True
            grown = lesions.grow_mask(self.rng, lesion, (self.maps.wm[box] >= 0.5) & clear, factor * lesion.sum())
            if grown is None or not _clear_of_border(grown, 3):
                continue
            edge = round(float(self.rng.uniform(0.0, 2.0)), 2)
            self._blend_growth(box, lesion, grown, edge)
            self.labels[box][grown & ~lesion] = lesion_id
            self.records[lesion_id].update(fate=fate, growth_factor_designed=factor, edge_mm=edge)
            self._used.add(lesion_id)
            return lesion_id
        raise RuntimeError(f"check set: no old lesion could grow x{factor}")

    def _blend_growth(self, box, lesion, grown, edge) -> None:
        core = ndimage.binary_erosion(lesion) if ndimage.binary_erosion(lesion).any() else lesion
        fraction = np.where(lesion, 0.0, lesions.soft_fraction(grown, edge)).astype(np.float32)
        for image in (self.flair, self.t1):
            lesions.blend(image, box, fraction, float(np.median(image[box][core])))

    def insert_merger_pair(self) -> None:
        """A tiny old lesion 2.5-3.5 mm from a larger old one (they join at follow-up: join_merger)."""
        neighbour = next(iter(self._old_lesions(80, 2000)))
        tiny = self.insert_new(float(self.rng.uniform(15, 24)), "next_to_old", 0.5, origin="merger_tiny",
                               target=neighbour, near_mm=(2.5, 3.5))
        self.records[neighbour]["role"] = "merger_neighbour"
        self._merger = (tiny, neighbour)

    def join_merger(self) -> None:
        tiny, neighbour = self._merger
        box = self._box_of(tiny, 12)
        first, second = self.labels[box] == tiny, self.labels[box] == neighbour
        bridge = lesions.bridge_mask(first, second, self.maps.wm[box] >= 0.3)
        grown = first | bridge
        self._blend_growth(box, first, grown, 1.0)
        self.labels[box][bridge] = tiny
        joined, _ = ndimage.label(grown | second, np.ones((3, 3, 3), bool))
        self.records[tiny].update(fate="enlarging_by_merger", merges_with=int(neighbour),
                                  bridge_voxels=int(bridge.sum()), joined=bool(len(np.unique(joined[second])) == 1
                                                                              and joined[first].min() == joined[second].min()))


SHAPES_IN_TURN = ("blob", "cluster", "donor")


def _level(kind, rng, box, centre, radius, donors):
    if kind == "cluster":
        return lesions.cluster_level(rng, box, centre, radius)
    if kind == "donor":
        volumes = np.array([donor.sum() for donor in donors], dtype=float)
        pick = int(np.argmin(np.abs(np.log(volumes / (4 / 3 * np.pi * radius ** 3)))
                             + 0.3 * rng.uniform(size=len(volumes))))
        return lesions.donor_level(rng, box, centre, radius, donors[pick])
    return lesions.blob_level(rng, box, centre, radius)


def _clear_of_border(mask: np.ndarray, margin: int) -> bool:
    where = np.argwhere(mask)
    return bool(len(where)) and (where.min(axis=0) >= margin).all() and \
        (where.max(axis=0) < np.array(mask.shape) - margin).all()
