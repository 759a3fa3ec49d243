"""Tests for review.grow: growing a missed lesion from a point, against spheres and a synthetic patient's truth.

Scenes are small brains (a ball at intensity 100 with Gaussian noise) holding spheres of known centre
and radius in world mm, on affines that are not the identity (flipped x, offset origin), so a test also
fails when the point is read in voxels instead of millimetres.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from msvol.config import GrowParams
from msvol.datatypes import Volume
from msvol.errors import InputError, SpaceError
from msvol.review.grow import grow_lesion

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "sample_data"
WM = 100.0  # normal-appearing brain intensity of every scene


def make_affine(spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Voxel -> mm with x flipped (LAS-like) and an offset origin."""
    affine = np.diag([-spacing[0], spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [30.0, -20.0, -10.0]
    return affine


def world(affine: np.ndarray, shape) -> np.ndarray:
    """World mm of every voxel centre, shape (*shape, 3)."""
    index = np.stack(np.indices(shape), axis=-1).astype(float)
    return index @ affine[:3, :3].T + affine[:3, 3]


def centre_mm(affine: np.ndarray, shape) -> np.ndarray:
    return affine[:3, :3] @ ((np.array(shape) - 1) / 2) + affine[:3, 3]


class Scene:
    """A brain ball of radius 21 mm at intensity WM (+ noise); spheres are painted on with `add`."""

    def __init__(self, shape=(48, 48, 48), spacing=(1.0, 1.0, 1.0), noise=3.0, seed=0):
        self.affine = make_affine(spacing)
        self.shape = shape
        self.points = world(self.affine, shape)
        self.centre = centre_mm(self.affine, shape)
        self.brain = self.within(self.centre, 21.0)
        self.clean = np.where(self.brain, WM, 5.0).astype(np.float32)
        self.noise = np.random.default_rng(seed).normal(0.0, noise, shape).astype(np.float32)

    def within(self, centre, radius_mm) -> np.ndarray:
        return np.linalg.norm(self.points - np.asarray(centre, float), axis=-1) <= radius_mm

    def add(self, centre, radius_mm, intensity) -> np.ndarray:
        sphere = self.within(centre, radius_mm)
        self.clean[sphere] = intensity
        return sphere

    @property
    def flair(self) -> Volume:
        return Volume(self.clean + self.noise, self.affine, "FLAIR")

    @property
    def brain_mask(self) -> Volume:
        return Volume(self.brain.astype(np.uint8), self.affine, "mask")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


# ----------------------------------------------------------------------------- known spheres

def test_grows_the_sphere_pointed_at_and_nothing_else():
    scene = Scene()
    lesion = scene.add(scene.centre + [5, 3, -2], 5.0, 180.0)
    other = scene.add(scene.centre - [8, 6, 4], 3.0, 190.0)  # a second lesion 14 mm away: not grown
    mask = grow_lesion(scene.flair, scene.brain_mask, scene.centre + [5, 3, -2])
    assert mask.dtype == bool and mask.shape == scene.shape
    assert dice(mask, lesion) >= 0.9
    assert not (mask & ~lesion).any()
    assert not (mask & other).any()


@pytest.mark.parametrize("offset_mm", [(1.0, 0.0, 0.0), (1.0, -1.0, 1.0), (0.0, 2.0, 0.0)])
def test_a_point_off_a_small_lesions_centre_still_finds_it(offset_mm):
    scene = Scene()
    lesion_centre = scene.centre + [-4, 2, 3]
    lesion = scene.add(lesion_centre, 2.5, 170.0)
    mask = grow_lesion(scene.flair, scene.brain_mask, lesion_centre + np.array(offset_mm))
    assert dice(mask, lesion) >= 0.9
    assert not (mask & ~lesion).any()


def test_a_faint_lesion_is_found():
    """+20 % over white matter, with 3 % noise."""
    scene = Scene()
    lesion = scene.add(scene.centre, 4.0, 1.2 * WM)
    mask = grow_lesion(scene.flair, scene.brain_mask, scene.centre)
    assert dice(mask, lesion) >= 0.9
    assert (mask & ~ndimage.binary_dilation(lesion)).sum() == 0


def test_a_faint_lesion_on_the_dark_side_of_a_bias_field_is_found():
    """The reference is the brain near the point: a +25 % lesion where a bias field darkens the brain by 19 %
    (a 40 % ramp across the brain) is found; against the whole brain's median it is not even hyperintense."""
    scene = Scene()
    x_mm = (scene.points - scene.centre)[..., 0]
    scene.clean = np.where(scene.brain, WM * (1 + 0.4 * x_mm / 21), 5.0).astype(np.float32)
    point = scene.centre + [-10, 0, 0]
    lesion = scene.add(point, 4.0, 1.25 * WM * (1 - 0.4 * 10 / 21))
    mask = grow_lesion(scene.flair, scene.brain_mask, point)
    assert dice(mask, lesion) >= 0.9
    with pytest.raises(InputError, match="is hyperintense"):
        grow_lesion(scene.flair, scene.brain_mask, point, dataclasses.replace(GrowParams(), reference_radius_mm=100.0))


def test_a_touching_lesion_already_found_is_not_swallowed():
    scene = Scene()
    found = scene.add(scene.centre - [3.5, 0, 0], 4.0, 175.0)
    missed = scene.add(scene.centre + [3.5, 0, 0], 4.0, 185.0) & ~found
    assert (ndimage.binary_dilation(found, np.ones((3, 3, 3))) & missed).any(), "the scene must have them touch"
    point = scene.centre + [4.5, 0, 0]
    mask = grow_lesion(scene.flair, scene.brain_mask, point, existing_labels=found.astype(np.int32) * 7)
    assert not (mask & found).any()
    assert dice(mask, missed) >= 0.9
    # Without existing_labels the same click takes both: the exclusion is what keeps them apart.
    both = grow_lesion(scene.flair, scene.brain_mask, point)
    assert dice(both, found | missed) >= 0.9


def test_the_volume_bound_holds_on_a_huge_bright_region():
    """A bright blob, elongated along x, fading from 200 at its peak: the bound rises until the region fits, so
    the region keeps the blob's shape (an iso-intensity ellipsoid, 3:1), not a ball cut around the seed."""
    scene = Scene(noise=1.0)
    offset = scene.points - scene.centre
    blob = np.exp(-offset[..., 0] ** 2 / (2 * 12.0 ** 2) - (offset[..., 1] ** 2 + offset[..., 2] ** 2) / (2 * 4.0 ** 2))
    scene.clean = np.where(scene.brain, WM + 100.0 * blob, 5.0).astype(np.float32)
    unbounded = grow_lesion(scene.flair, scene.brain_mask, scene.centre)
    assert unbounded.sum() > 1000  # the half-contrast ellipsoid: ~14 x 4.7 x 4.7 mm semi-axes
    params = dataclasses.replace(GrowParams(), max_volume_mm3=500.0)
    mask = grow_lesion(scene.flair, scene.brain_mask, scene.centre, params)
    assert 400 <= mask.sum() <= 500  # the lowest bound that fits, not just any that does
    assert mask[unbounded].sum() == mask.sum()
    extent = np.abs(scene.points[mask] - scene.centre).max(axis=0)
    assert extent[0] >= 2 * max(extent[1], extent[2])
    assert ndimage.label(mask, np.ones((3, 3, 3)))[1] == 1


def test_enclosed_dips_inside_a_lesion_are_filled():
    scene = Scene()
    lesion = scene.add(scene.centre, 6.0, 180.0)
    scene.add(scene.centre + [1, 0, 0], 2.0, WM)  # a core at white-matter intensity, enclosed by the lesion
    mask = grow_lesion(scene.flair, scene.brain_mask, scene.centre - [3, 0, 0])
    assert np.array_equal(mask, lesion)


def test_the_volume_bound_holds_on_a_flat_plateau():
    """No intensity separates the voxels (no noise): the voxels nearest the seed are kept."""
    scene = Scene(noise=0.0)
    scene.add(scene.centre, 10.0, 180.0)
    params = dataclasses.replace(GrowParams(), max_volume_mm3=1000.0)
    mask = grow_lesion(scene.flair, scene.brain_mask, scene.centre, params)
    assert 950 <= mask.sum() <= 1000
    assert np.linalg.norm(scene.points[mask] - scene.centre, axis=-1).max() <= (3 * 1000 / (4 * np.pi)) ** (1 / 3) + 1


def test_voxels_touching_only_at_corners_are_one_region():
    """26-connectivity, as LesionParams.connectivity: a one-voxel diagonal streak is grown whole."""
    scene = Scene()
    streak = np.zeros(scene.shape, dtype=bool)
    for step in range(-4, 5):
        streak[24 + step, 24 + step, 24 + step] = True
    scene.clean[streak] = 250.0
    mask = grow_lesion(scene.flair, scene.brain_mask, scene.points[24, 24, 24])
    assert np.array_equal(mask, streak)


def test_deterministic_and_inputs_unchanged():
    scene = Scene(noise=6.0, seed=3)
    scene.add(scene.centre + [2, -3, 1], 4.5, 150.0)
    flair, brain_mask = scene.flair, scene.brain_mask
    labels = np.zeros(scene.shape, np.int32)
    labels[scene.within(scene.centre - [9, 0, 0], 3.0)] = 1
    before = (flair.data.copy(), brain_mask.data.copy(), labels.copy())
    first = grow_lesion(flair, brain_mask, scene.centre + [2, -3, 1], existing_labels=labels)
    second = grow_lesion(flair, brain_mask, scene.centre + [2, -3, 1], existing_labels=labels)
    assert first.any() and np.array_equal(first, second)
    for original, now in zip(before, (flair.data, brain_mask.data, labels)):
        assert np.array_equal(original, now)


def test_anisotropic_voxels_sphere_volume_in_mm3():
    scene = Scene(shape=(48, 48, 32), spacing=(1.0, 1.0, 1.5))
    lesion = scene.add(scene.centre + [3, -2, 4.5], 5.0, 180.0)
    mask = grow_lesion(scene.flair, scene.brain_mask, scene.centre + [3, -2, 4.5])
    assert dice(mask, lesion) >= 0.9
    volume_mm3 = mask.sum() * 1.5
    assert volume_mm3 == pytest.approx(4 / 3 * np.pi * 5.0 ** 3, rel=0.12)


def test_anisotropic_voxels_radius_and_volume_bounds_in_mm():
    """A wide smooth blob peaking on a voxel centre (no noise), so the seed is the peak and the centre."""
    scene = Scene(shape=(49, 49, 33), spacing=(1.0, 1.0, 1.5), noise=0.0)
    distance = np.linalg.norm(scene.points - scene.centre, axis=-1)
    scene.clean = np.where(scene.brain, WM + 100.0 * np.exp(-distance ** 2 / (2 * 15.0 ** 2)), 5.0).astype(np.float32)
    params = dataclasses.replace(GrowParams(), max_radius_mm=6.0)
    mask = grow_lesion(scene.flair, scene.brain_mask, scene.centre, params)
    offsets = scene.points[mask] - scene.centre
    assert np.linalg.norm(offsets, axis=-1).max() <= 6.0 + 1e-6  # 6 mm, not 6 voxels (9 mm along k)
    assert np.abs(offsets).max(axis=0) == pytest.approx([6.0, 6.0, 6.0], abs=0.01)  # reaches it on every axis
    bounded = grow_lesion(scene.flair, scene.brain_mask, scene.centre,
                          dataclasses.replace(params, max_volume_mm3=300.0))
    assert 0.8 * 300 <= bounded.sum() * 1.5 <= 300


# ----------------------------------------------------------------------------- refusals

def test_point_outside_the_image_is_refused():
    scene = Scene()
    with pytest.raises(InputError, match="outside the image"):
        grow_lesion(scene.flair, scene.brain_mask, scene.centre + [0, 0, 40])


def test_point_outside_the_brain_is_refused():
    scene = Scene()
    with pytest.raises(InputError, match="outside the brain mask"):
        grow_lesion(scene.flair, scene.brain_mask, scene.centre + [0, 22.5, 0])


def test_point_in_normal_brain_is_refused_as_not_hyperintense():
    scene = Scene(noise=5.0)
    with pytest.raises(InputError, match="is hyperintense") as error:
        grow_lesion(scene.flair, scene.brain_mask, scene.centre)
    assert ">= 1.1 x" in str(error.value)


def test_point_only_on_a_lesion_already_found_is_refused():
    scene = Scene()
    found = scene.add(scene.centre, 5.0, 180.0)
    with pytest.raises(InputError, match="already found"):
        grow_lesion(scene.flair, scene.brain_mask, scene.centre, existing_labels=found.astype(np.int32))


def test_grids_that_differ_are_refused():
    scene = Scene()
    scene.add(scene.centre, 5.0, 180.0)
    shifted = scene.affine.copy()
    shifted[:3, 3] += [0, 0, 1.0]
    with pytest.raises(SpaceError, match="not on the grid"):
        grow_lesion(scene.flair, Volume(scene.brain_mask.data, shifted, "mask"), scene.centre)
    with pytest.raises(SpaceError, match="not on the grid"):
        grow_lesion(scene.flair, Volume(scene.brain_mask.data[:, :, :40], scene.affine, "mask"), scene.centre)
    with pytest.raises(SpaceError, match="existing_labels"):
        grow_lesion(scene.flair, scene.brain_mask, scene.centre, existing_labels=np.zeros((48, 48, 40), np.int32))


def test_every_grow_parameter_has_a_unit_and_a_source():
    for item in dataclasses.fields(GrowParams):
        assert item.metadata.get("unit", "").strip(), f"{item.name}: unit missing"
        assert item.metadata.get("source", "").strip(), f"{item.name}: source missing"


# ----------------------------------------------------------------------------- synthetic patient

def _load(path: Path, dtype) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(path)
    return np.asarray(image.dataobj, dtype=dtype), image.affine


@pytest.mark.parametrize("session", ["02", "03"])
def test_new_lesions_of_the_sample_patient_are_grown_from_their_centroids(session):
    """sample_data sub-01 (the end-to-end test's patient): each truth lesion new at this visit (>= 14 mm3), grown
    from its centroid on the raw FLAIR with the truth brain mask and the other truth lesions as already found."""
    truth_dir = SAMPLE / "derivatives" / "truth" / "sub-01"
    truth = json.loads((truth_dir / "sub-01_truth.json").read_text())
    interval = next(item for item in truth["intervals"] if item["to_session"] == session
                    and int(item["from_session"]) == int(session) - 1)
    new_ids = [int(lesion) for lesion, fate in interval["fates"].items() if fate == "new"]
    assert new_ids
    data, affine = _load(SAMPLE / "sub-01" / f"ses-{session}" / "anat" / f"sub-01_ses-{session}_FLAIR.nii.gz",
                         np.float32)
    labels, labels_affine = _load(truth_dir / f"sub-01_ses-{session}_lesions.nii.gz", np.int32)
    brain, brain_affine = _load(truth_dir / f"sub-01_ses-{session}_brainmask.nii.gz", np.uint8)
    assert np.allclose(affine, labels_affine) and np.allclose(affine, brain_affine)
    flair = Volume(data, affine, "FLAIR")
    for lesion_id in new_ids:
        lesion = labels == lesion_id
        point = affine[:3, :3] @ np.argwhere(lesion).mean(axis=0) + affine[:3, 3]
        assert np.allclose(point, truth["lesions"][lesion_id - 1]["visits"][session]["centroid_mm"], atol=0.01)
        mask = grow_lesion(flair, Volume(brain, affine, "mask"), point, existing_labels=np.where(lesion, 0, labels))
        assert dice(mask, lesion) >= 0.8, f"lesion {lesion_id}"
        inside = (mask & ndimage.binary_dilation(lesion, np.ones((3, 3, 3)))).sum() / mask.sum()
        assert inside >= 0.95, f"lesion {lesion_id}"
