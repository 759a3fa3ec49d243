"""Tests for segment with tiny randomly initialised U-Nets: shapes, masking, normalisation, the FLAIR-only
input and the change model's input (the bundles themselves: tests/models/test_bundle.py).

Accuracy is not tested here (that is `make bench`).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from scipy import ndimage

torch = pytest.importorskip("torch")

from msvol.config import SegmentParams  # noqa: E402
from msvol.datatypes import Acquisition, PreparedVisit, Rigid, Volume  # noqa: E402
from msvol.errors import ModelError  # noqa: E402
from msvol.stages import segment  # noqa: E402
from tests.builders import tiny_bundle, tiny_network  # noqa: E402

PARAMS = SegmentParams(roi_size=(32, 32, 32), sw_batch_size=1)
SHAPE = (40, 40, 40)


def brain_ball(shape=SHAPE, centre=(20, 19, 21), radius=9) -> np.ndarray:
    grid = np.indices(shape)
    return sum((axis - c) ** 2 for axis, c in zip(grid, centre)) <= radius ** 2


def prepared_visit(with_t1: bool = True) -> PreparedVisit:
    mask = brain_ball()
    rng = np.random.default_rng(2)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [-20.0, -25.0, -15.0]
    flair = Volume(np.where(mask, 100.0, 5.0).astype(np.float32) + rng.normal(0, 1, SHAPE).astype(np.float32),
                   affine, "FLAIR")
    t1 = flair.with_data(np.where(mask, 80.0, 3.0).astype(np.float32), "T1w")
    brain = flair.with_data(mask, "mask")
    return PreparedVisit("01", dt.date(2020, 1, 1), flair, t1, brain, Rigid(np.eye(4)), t1 if with_t1 else None,
                         brain, Acquisition())


# --- predict_probability --------------------------------------------------------------------------


def test_predict_probability_shape_range_and_mask():
    rng = np.random.default_rng(0)
    mask = brain_ball()
    inputs = rng.normal(1.0, 0.2, (2, *SHAPE)).astype(np.float32)
    probability = segment.predict_probability(tiny_network(), inputs, mask, PARAMS)

    assert probability.shape == SHAPE and probability.dtype == np.float32
    assert probability.min() >= 0.0 and probability.max() <= 1.0
    # the output is kept inside the brain mask dilated by 2 mm (1 mm voxels here)
    distance_mm = ndimage.distance_transform_edt(~mask)
    assert not probability[distance_mm > 2].any(), "non-zero probability beyond 2 mm of the brain mask"
    assert (probability[mask] > 0).all(), "a sigmoid is never exactly 0 inside the brain"
    assert (probability[distance_mm == 1] > 0).all(), "the 1 mm rim around the brain is kept"


def test_predict_probability_with_a_mask_at_the_edge_of_the_image():
    mask = np.zeros(SHAPE, bool)
    mask[:6, :6, :6] = True
    inputs = np.ones((2, *SHAPE), np.float32)
    probability = segment.predict_probability(tiny_network(), inputs, mask, PARAMS)
    assert probability.shape == SHAPE
    assert (probability[:6, :6, :6] > 0).all()
    assert not probability[10:].any() and not probability[:, 10:].any()


def test_predict_probability_does_not_modify_its_inputs():
    rng = np.random.default_rng(1)
    mask = brain_ball()
    inputs = rng.normal(1.0, 0.2, (2, *SHAPE)).astype(np.float32)
    before_inputs, before_mask = inputs.copy(), mask.copy()
    segment.predict_probability(tiny_network(), inputs, mask, PARAMS)
    np.testing.assert_array_equal(inputs, before_inputs)
    np.testing.assert_array_equal(mask, before_mask)


def test_sliding_window_inference_warnings_do_not_reach_the_user():
    """Regression: MONAI's list indexing raised PyTorch's deprecation UserWarning on the user's terminal."""
    import warnings

    inputs = np.ones((2, *SHAPE), np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        segment.predict_probability(tiny_network(), inputs, brain_ball(), PARAMS)
    assert [str(warning.message) for warning in caught if issubclass(warning.category, UserWarning)] == []


# --- normalize_inputs -----------------------------------------------------------------------------


def test_normalize_inputs_divides_each_channel_by_its_median_in_the_mask():
    mask = brain_ball()
    flair = np.full(SHAPE, 7.0, np.float32)
    flair[mask] = 4.0
    flair[20, 19, 21] = 100.0  # one bright voxel does not move the median
    t1 = np.zeros(SHAPE, np.float32)
    t1[mask] = 10.0
    inputs = segment.normalize_inputs([flair, t1], mask)

    assert inputs.shape == (2, *SHAPE) and inputs.dtype == np.float32
    assert inputs[0, 20, 19, 21] == pytest.approx(25.0)
    inside = mask.copy()
    inside[20, 19, 21] = False
    np.testing.assert_allclose(inputs[0][inside], 1.0)
    np.testing.assert_allclose(inputs[0][~mask], 7.0 / 4.0)
    np.testing.assert_allclose(inputs[1][mask], 1.0)
    np.testing.assert_allclose(inputs[1][~mask], 0.0)


def test_normalize_inputs_turns_a_missing_image_into_a_zero_channel():
    """FLAIR-only input: the T1 channel is all zeros (the models saw this in training, t1_dropout)."""
    mask = brain_ball()
    flair = np.where(mask, 4.0, 1.0).astype(np.float32)
    inputs = segment.normalize_inputs([flair, None], mask)
    assert inputs.shape == (2, *SHAPE) and inputs.dtype == np.float32
    np.testing.assert_allclose(inputs[0][mask], 1.0)
    np.testing.assert_allclose(inputs[0][~mask], 0.25)
    assert not inputs[1].any()


def test_normalize_inputs_stacks_four_channels_in_the_given_order():
    mask = brain_ball()
    images = [np.where(mask, value, 0.0).astype(np.float32) * ramp
              for value, ramp in ((2.0, 1), (3.0, 2), (5.0, 3), (7.0, 4))]
    inputs = segment.normalize_inputs(images, mask)
    assert inputs.shape == (4, *SHAPE)
    for channel in range(4):
        np.testing.assert_allclose(inputs[channel][mask], 1.0)
    missing = segment.normalize_inputs([images[0], images[1], None, None], mask)
    np.testing.assert_array_equal(missing[:2], inputs[:2])
    assert not missing[2:].any()


def test_normalize_inputs_accepts_integer_images_and_keeps_them():
    mask = brain_ball()
    flair = np.where(mask, 300, 0).astype(np.int16)
    t1 = np.where(mask, 50, 0).astype(np.int16)
    inputs = segment.normalize_inputs([flair, t1], mask)
    assert inputs.dtype == np.float32
    np.testing.assert_allclose(inputs[:, mask], 1.0)
    assert flair.dtype == np.int16 and flair[mask].max() == 300


def test_normalize_inputs_refuses_an_empty_mask():
    with pytest.raises(ModelError, match="empty brain mask"):
        segment.normalize_inputs([np.ones(SHAPE), np.ones(SHAPE)], np.zeros(SHAPE, bool))


def test_normalize_inputs_refuses_an_image_that_is_zero_in_the_brain():
    mask = brain_ball()
    with pytest.raises(ModelError):
        segment.normalize_inputs([np.ones(SHAPE), np.zeros(SHAPE)], mask)


# --- segment_visit and predict_change -------------------------------------------------------------


def test_segment_visit_returns_probability_on_the_flair_grid(tmp_path):
    model = tiny_bundle(tmp_path)
    visit = prepared_visit()
    probability, methods = segment.segment_visit(visit, PARAMS, model)
    assert probability.kind == "probability"
    np.testing.assert_array_equal(probability.affine, visit.flair.affine)
    mask = visit.brain_mask.data
    np.testing.assert_array_equal(probability.data, segment.predict_probability(
        model.network, segment.normalize_inputs([visit.flair.data, visit.t1_on_flair.data], mask), mask, PARAMS))
    assert model.name in methods and "[monai, ronneberger2015, billot2023]" in methods


def test_segment_visit_without_t1_runs_on_flair_and_a_zero_channel(tmp_path):
    model = tiny_bundle(tmp_path)
    visit = prepared_visit(with_t1=False)
    probability, _ = segment.segment_visit(visit, PARAMS, model)
    assert probability.data.shape == SHAPE
    np.testing.assert_array_equal(probability.affine, visit.flair.affine)
    mask = visit.brain_mask.data
    flair_only = np.stack([segment.normalize_inputs([visit.flair.data], mask)[0], np.zeros(SHAPE, np.float32)])
    np.testing.assert_array_equal(probability.data,
                                  segment.predict_probability(model.network, flair_only, mask, PARAMS))
    with_t1, _ = segment.segment_visit(prepared_visit(with_t1=True), PARAMS, model)
    assert not np.array_equal(with_t1.data, probability.data), "the T1 channel reaches the network"


def test_segment_visit_methods_of_a_flair_only_visit_do_not_claim_a_t1(tmp_path):
    _, methods = segment.segment_visit(prepared_visit(with_t1=False), PARAMS, tiny_bundle(tmp_path))
    assert "T1" not in methods


def test_predict_change_uses_both_visits_in_the_documented_channel_order(tmp_path):
    model = tiny_bundle(tmp_path, "change")
    mask = brain_ball()
    rng = np.random.default_rng(4)
    flairs = tuple(np.where(mask, 100.0, 5.0).astype(np.float32) + rng.normal(0, 1, SHAPE).astype(np.float32)
                   for _ in range(2))
    t1s = tuple(np.where(mask, 80.0, 3.0).astype(np.float32) + rng.normal(0, 1, SHAPE).astype(np.float32)
                for _ in range(2))
    probability = segment.predict_change(flairs, t1s, mask, PARAMS, model)
    assert probability.shape == SHAPE and probability.dtype == np.float32
    assert probability.min() >= 0.0 and probability.max() <= 1.0
    expected = segment.predict_probability(
        model.network, segment.normalize_inputs([flairs[0], flairs[1], t1s[0], t1s[1]], mask), mask, PARAMS)
    np.testing.assert_array_equal(probability, expected)
