"""Known-answer tests for msvol.stages.register: halfway maps, Rigid round trips, resampling, rigid fit."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from msvol.config import RegisterParams
from msvol.datatypes import Rigid, Volume
from msvol.errors import SpaceError
from msvol.stages.register import alignment_correlation, bounding_grid, fit_rigid, halfway, resample


def rigid(degrees=(0.0, 0.0, 0.0), translation=(0.0, 0.0, 0.0), centre=(0.0, 0.0, 0.0)) -> np.ndarray:
    """4x4 rotation (xyz Euler angles, degrees) about `centre`, then translation, in mm."""
    matrix = np.eye(4)
    rotation = Rotation.from_euler("xyz", degrees, degrees=True).as_matrix()
    matrix[:3, :3] = rotation
    matrix[:3, 3] = np.asarray(centre) - rotation @ np.asarray(centre) + np.asarray(translation)
    return matrix


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:3, :3].T + matrix[:3, 3]


RNG = np.random.default_rng(7)
POINTS = RNG.uniform(-100, 100, size=(50, 3))


# --- halfway and Rigid ----------------------------------------------------------------------------


@pytest.mark.parametrize("degrees, translation", [
    ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    ((0.0, 0.0, 0.0), (3.0, -2.0, 5.0)),
    ((4.0, -7.0, 10.0), (3.0, -2.0, 5.0)),
    ((30.0, 20.0, -45.0), (-12.0, 8.0, 1.5)),
])
def test_halfway_splits_a_rigid_map_in_two_equal_halves(degrees, translation):
    p = rigid(degrees, translation)
    to_baseline, to_followup = halfway(Rigid(p))
    np.testing.assert_allclose(to_followup.matrix @ np.linalg.inv(to_baseline.matrix), p, atol=1e-9)
    np.testing.assert_allclose(to_followup.matrix, np.linalg.inv(to_baseline.matrix), atol=1e-9)
    np.testing.assert_allclose(to_followup.matrix @ to_followup.matrix, p, atol=1e-9)
    half = to_followup.matrix
    assert np.isrealobj(half)
    np.testing.assert_allclose(half[3], [0, 0, 0, 1], atol=0)
    np.testing.assert_allclose(half[:3, :3] @ half[:3, :3].T, np.eye(3), atol=1e-9)  # still rigid
    assert np.linalg.det(half[:3, :3]) == pytest.approx(1.0, abs=1e-9)
    angle = np.linalg.norm(Rotation.from_matrix(p[:3, :3]).as_rotvec())
    half_angle = np.linalg.norm(Rotation.from_matrix(half[:3, :3]).as_rotvec())
    assert half_angle == pytest.approx(angle / 2, abs=1e-9)


def test_halfway_of_a_translation_is_half_the_translation():
    to_baseline, to_followup = halfway(Rigid(rigid(translation=(4.0, -6.0, 2.0))))
    np.testing.assert_allclose(to_followup.matrix, rigid(translation=(2.0, -3.0, 1.0)), atol=1e-12)
    np.testing.assert_allclose(to_baseline.matrix, rigid(translation=(-2.0, 3.0, -1.0)), atol=1e-12)


def test_rigid_inverse_and_compose_round_trip():
    a = Rigid(rigid((5.0, -3.0, 12.0), (10.0, -4.0, 2.5), centre=(20.0, -10.0, 5.0)))
    b = Rigid(rigid((-20.0, 8.0, 1.0), (-1.0, 7.0, 3.0)))
    np.testing.assert_allclose(apply(a.compose(a.inverse()).matrix, POINTS), POINTS, atol=1e-9)
    np.testing.assert_allclose(apply(a.inverse().compose(a).matrix, POINTS), POINTS, atol=1e-9)
    # compose is self(inner(x)), and (a o b)^-1 = b^-1 o a^-1
    np.testing.assert_allclose(apply(a.compose(b).matrix, POINTS), apply(a.matrix, apply(b.matrix, POINTS)),
                               atol=1e-9)
    round_trip = a.compose(b).compose(b.inverse().compose(a.inverse()))
    np.testing.assert_allclose(apply(round_trip.matrix, POINTS), POINTS, atol=1e-9)


# --- resample -------------------------------------------------------------------------------------


@pytest.fixture
def oblique_affine():
    """1.2 x 1 x 1.5 mm voxels, rotated and translated: a non-trivial voxel -> mm map."""
    affine = rigid((10.0, -5.0, 20.0), (-40.0, 25.0, -10.0))
    affine[:3, :3] = affine[:3, :3] @ np.diag([1.2, 1.0, 1.5])
    return affine


def identity_round_trip(affine):
    data = np.random.default_rng(0).normal(size=(20, 18, 16)).astype(np.float32)
    volume = Volume(data, affine, "T1w")
    out = resample(volume, Rigid(np.eye(4)), data.shape, affine)
    np.testing.assert_allclose(out.data, data, atol=1e-4)
    np.testing.assert_array_equal(out.affine, affine)
    assert out.kind == "T1w" and out.data.dtype == np.float32
    labels = (np.arange(data.size) % 7).reshape(data.shape).astype(np.int32)
    out = resample(volume.with_data(labels, "labels"), Rigid(np.eye(4)), data.shape, affine)
    np.testing.assert_array_equal(out.data, labels)
    mask = data > 0.3
    out = resample(volume.with_data(mask, "mask"), Rigid(np.eye(4)), data.shape, affine)
    assert out.data.dtype == bool
    np.testing.assert_array_equal(out.data, mask)


def test_resample_with_identity_reproduces_the_data(make_affine):
    identity_round_trip(make_affine(spacing=(0.9375, 0.9375, 1.2), origin=(-120.3, -100.7, -80.1)))


def test_resample_with_identity_reproduces_the_data_on_an_oblique_grid(oblique_affine):
    """Regression: identity resampling on an oblique grid zeroed the face voxels (round-off in inv(A) @ A put
    them 1e-15 voxel outside the input, and mode='constant' drops such samples)."""
    identity_round_trip(oblique_affine)


@pytest.mark.parametrize("kind, dtype", [("T1w", np.float32), ("labels", np.int32), ("mask", bool)])
def test_resample_known_integer_translation_moves_a_blob(ball, make_affine, kind, dtype):
    shape = (32, 32, 32)
    affine = make_affine(spacing=(2.0, 1.0, 1.0), origin=(-30.0, 12.0, 4.0))
    blob = ball(shape, (14, 15, 16), 4)
    data = blob if dtype == bool else blob.astype(dtype) * 3
    volume = Volume(data, affine, kind)
    # The pull map sends a grid point x to the volume's x + t: content moves by -t.
    # t = (4, -3, 2) mm = (2, -3, 2) voxels at 2 x 1 x 1 mm.
    out = resample(volume, Rigid(rigid(translation=(4.0, -3.0, 2.0))), shape, affine)
    expected = np.zeros_like(data)
    expected[tuple(slice(max(-s, 0), n - max(s, 0)) for s, n in zip((2, -3, 2), shape))] = \
        data[tuple(slice(max(s, 0), n + min(s, 0)) for s, n in zip((2, -3, 2), shape))]
    assert out.data.dtype == data.dtype
    np.testing.assert_allclose(out.data, expected, atol=1e-5)
    assert ball(shape, (12, 18, 14), 4).sum() == blob.sum()
    np.testing.assert_array_equal(out.data != 0, ball(shape, (12, 18, 14), 4))


def test_resample_onto_another_grid(ball, make_affine):
    """Identity pull onto a grid whose origin is 5 mm further along y: content sits 5 voxels lower."""
    shape = (24, 24, 24)
    source_affine, target_affine = make_affine(origin=(0.0, 0.0, 0.0)), make_affine(origin=(0.0, 5.0, 0.0))
    volume = Volume(ball(shape, (12, 12, 12), 3).astype(np.float32), source_affine, "T1w")
    out = resample(volume, Rigid(np.eye(4)), (24, 20, 24), target_affine)
    assert out.data.shape == (24, 20, 24)
    np.testing.assert_array_equal(out.affine, target_affine)
    np.testing.assert_array_equal(out.data > 0.5, ball((24, 20, 24), (12, 7, 12), 3))


def test_bounding_grid_is_the_masks_part_of_its_grid(ball, make_affine):
    """The cropped grid keeps the voxels and orientation of the mask's grid: resampling onto it is a copy."""
    shape = (40, 36, 30)
    affine = make_affine(spacing=(1.0, 1.2, 1.5), origin=(-20.0, 10.0, 5.0))
    mask = Volume(ball(shape, (15, 20, 12), 5), affine, "mask")
    crop_shape, crop_affine = bounding_grid(mask, margin_mm=3.0)
    # 3 mm is 3, 3 and 2 voxels along the axes; the ball spans 10-20, 15-25, 7-17
    assert crop_shape == (17, 17, 15)
    np.testing.assert_allclose(crop_affine[:3, :3], affine[:3, :3])
    np.testing.assert_allclose(crop_affine[:3, 3], affine[:3, :3] @ (7, 12, 5) + affine[:3, 3])
    cropped = resample(mask, Rigid(np.eye(4)), crop_shape, crop_affine)
    assert cropped.data.sum() == mask.data.sum()
    clipped_shape, _ = bounding_grid(mask, margin_mm=100.0)  # never beyond the grid
    assert clipped_shape == shape
    with pytest.raises(SpaceError):
        bounding_grid(mask.with_data(np.zeros(shape, bool)), margin_mm=3.0)


# --- fit_rigid ------------------------------------------------------------------------------------

FIT = RegisterParams(rigid_shrink_factors=(2, 1), rigid_smoothing_mm=(1.0, 0.0), rigid_sampling_fraction=0.2)
# A LAS-like grid: x runs right-to-left, so RAS <-> voxel <-> ITK LPS conventions are all exercised.
GRID_AFFINE = np.array([[-1.0, 0, 0, 32.0], [0, 1.0, 0, -30.0], [0, 0, 1.0, -25.0], [0, 0, 0, 1]])
GRID_SHAPE = (64, 64, 64)
BLOBS = [  # (centre mm, sd mm, weight): asymmetric texture inside an ellipsoid
    ((8.0, 6.0, 10.0), 4.0, 0.8), ((-10.0, 2.0, 0.0), 3.0, -0.6), ((2.0, -12.0, 4.0), 5.0, 0.5),
    ((-4.0, 12.0, -8.0), 3.5, 0.7), ((12.0, -6.0, -6.0), 2.5, -0.5), ((-6.0, -4.0, 12.0), 3.0, 0.6),
]


PHANTOM_CENTRE = np.array([0.5, 1.5, 6.5])
SEMI_AXES = np.array([24.0, 20.0, 17.0])


def texture(points_mm: np.ndarray) -> np.ndarray:
    """A smooth intensity field in mm (an ellipsoid near the grid centre), rendered analytically."""
    local = points_mm - PHANTOM_CENTRE
    radius = np.sqrt(((local / SEMI_AXES) ** 2).sum(-1))
    value = 1.0 / (1.0 + np.exp((radius - 1.0) * 12.0))  # smooth-edged ellipsoid
    for blob_centre, sd, weight in BLOBS:
        value += weight * np.exp(-((local - blob_centre) ** 2).sum(-1) / (2 * sd**2))
    return value


def render(matrix_mm: np.ndarray) -> tuple[Volume, np.ndarray]:
    """The texture seen through a pull map (voxel value = texture(matrix @ voxel mm)), and its ellipsoid mask."""
    voxels = np.stack(np.meshgrid(*map(np.arange, GRID_SHAPE), indexing="ij"), -1).reshape(-1, 3)
    mm = apply(matrix_mm @ GRID_AFFINE, voxels.astype(float))
    inside = (((mm - PHANTOM_CENTRE) / SEMI_AXES) ** 2).sum(-1) <= 1.0
    return (Volume(texture(mm).reshape(GRID_SHAPE).astype(np.float32), GRID_AFFINE, "T1w"),
            inside.reshape(GRID_SHAPE))


# The default pyramid (4, 2) is sized for ~200^3 heads; on this 64^3 phantom its levels are 16^3
# and 32^3, too coarse for 0.3 mm. Full-size accuracy is measured by `make bench` (alignment, PBVC).
@pytest.mark.parametrize("params, masked", [(FIT, False), (FIT, True)],
                         ids=["fine-pyramid", "fine-pyramid-fixed-mask"])
def test_fit_rigid_recovers_a_known_rigid_map(params, masked):
    # Truth: fixed mm -> moving mm, a 3.0 degree rotation about the phantom centre, then 3 mm along x, 2 along z.
    truth = rigid((1.5, -1.0, 2.4), (3.0, 0.0, 2.0), centre=PHANTOM_CENTRE)
    assert np.degrees(np.linalg.norm(Rotation.from_matrix(truth[:3, :3]).as_rotvec())) == pytest.approx(3.0, abs=0.05)
    fixed, fixed_mask = render(np.eye(4))
    moving, _ = render(np.linalg.inv(truth))  # moving(truth @ x) == fixed(x)
    masks = dict(fixed_mask=fixed_mask) if masked else {}
    found = fit_rigid(fixed, moving, params, **masks)
    # the phantom's edge: the corners of the ellipsoid's bounding box (>= 17 mm from the centre)
    edge = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * SEMI_AXES + PHANTOM_CENTRE
    assert np.linalg.norm(apply(truth, edge) - edge, axis=1).min() > 3.0  # the test can tell a miss
    error = np.linalg.norm(apply(found.matrix, edge) - apply(truth, edge), axis=1)
    assert error.max() < 0.3, error
    np.testing.assert_allclose(found.matrix[3], [0, 0, 0, 1], atol=1e-9)
    np.testing.assert_allclose(found.matrix[:3, :3] @ found.matrix[:3, :3].T, np.eye(3), atol=1e-6)


# --- alignment_correlation ------------------------------------------------------------------------


def test_alignment_correlation():
    rng = np.random.default_rng(3)
    image = rng.normal(size=(16, 16, 16))
    mask = np.zeros(image.shape, bool)
    mask[4:12, 4:12, 4:12] = True
    assert alignment_correlation(image, image, mask) == pytest.approx(1.0, abs=1e-12)
    assert alignment_correlation(image, 3 * image + 2, mask) == pytest.approx(1.0, abs=1e-12)
    assert alignment_correlation(image, -image, mask) == pytest.approx(-1.0, abs=1e-12)
    assert abs(alignment_correlation(image, rng.normal(size=image.shape), mask)) < 0.2
    # only the voxels inside the mask count
    other = image.copy()
    other[~mask] = rng.normal(size=(~mask).sum())
    assert alignment_correlation(image, other, mask) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("second_shape, mask_shape", [((16, 16, 15), (16, 16, 16)), ((16, 16, 16), (16, 15, 16))])
def test_alignment_correlation_needs_one_grid(second_shape, mask_shape):
    with pytest.raises(SpaceError):
        alignment_correlation(np.zeros((16, 16, 16)), np.zeros(second_shape), np.ones(mask_shape, bool))
