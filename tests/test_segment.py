"""Tests for segment with a tiny randomly initialised U-Net: shapes, masking, normalisation, offline loading.

Accuracy is not tested here (that is `make bench`).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

torch = pytest.importorskip("torch")

from msvol import segment  # noqa: E402
from msvol.config import SegmentParams  # noqa: E402
from msvol.datatypes import Acquisition, PreparedVisit, Rigid, Volume  # noqa: E402
from msvol.errors import ModelError  # noqa: E402

TINY = {"channels": [4, 8], "strides": [2]}
PARAMS = SegmentParams(roi_size=(32, 32, 32), sw_batch_size=1)
SHAPE = (40, 40, 40)


def tiny_network(seed: int = 0):
    torch.manual_seed(seed)
    return segment.build_network(TINY).eval()


def brain_ball(shape=SHAPE, centre=(20, 19, 21), radius=9) -> np.ndarray:
    grid = np.indices(shape)
    return sum((axis - c) ** 2 for axis, c in zip(grid, centre)) <= radius ** 2


def save_model(folder: Path, network, architecture=TINY) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), folder / segment.WEIGHTS_FILE)
    card = {"name": "tiny-test", "architecture": architecture}
    (folder / segment.CARD_FILE).write_text(json.dumps(card))
    return folder


def test_tiny_network_maps_two_channels_to_one_logit():
    network = tiny_network()
    with torch.no_grad():
        logits = network(torch.zeros(1, 2, 32, 32, 32))
    assert tuple(logits.shape) == (1, 1, 32, 32, 32)


def test_default_architecture_is_two_channels_in_one_out():
    assert segment.DEFAULT_ARCHITECTURE["in_channels"] == 2
    assert segment.DEFAULT_ARCHITECTURE["out_channels"] == 1


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


def test_normalize_inputs_divides_each_channel_by_its_median_in_the_mask():
    mask = brain_ball()
    flair = np.full(SHAPE, 7.0, np.float32)
    flair[mask] = 4.0
    flair[20, 19, 21] = 100.0  # one bright voxel does not move the median
    t1 = np.zeros(SHAPE, np.float32)
    t1[mask] = 10.0
    inputs = segment.normalize_inputs(flair, t1, mask)

    assert inputs.shape == (2, *SHAPE) and inputs.dtype == np.float32
    assert inputs[0, 20, 19, 21] == pytest.approx(25.0)
    inside = mask.copy()
    inside[20, 19, 21] = False
    np.testing.assert_allclose(inputs[0][inside], 1.0)
    np.testing.assert_allclose(inputs[0][~mask], 7.0 / 4.0)
    np.testing.assert_allclose(inputs[1][mask], 1.0)
    np.testing.assert_allclose(inputs[1][~mask], 0.0)


def test_normalize_inputs_accepts_integer_images_and_keeps_them():
    mask = brain_ball()
    flair = np.where(mask, 300, 0).astype(np.int16)
    t1 = np.where(mask, 50, 0).astype(np.int16)
    inputs = segment.normalize_inputs(flair, t1, mask)
    assert inputs.dtype == np.float32
    np.testing.assert_allclose(inputs[:, mask], 1.0)
    assert flair.dtype == np.int16 and flair[mask].max() == 300


def test_normalize_inputs_refuses_an_empty_mask():
    with pytest.raises(ModelError, match="empty brain mask"):
        segment.normalize_inputs(np.ones(SHAPE), np.ones(SHAPE), np.zeros(SHAPE, bool))


def test_normalize_inputs_refuses_an_image_that_is_zero_in_the_brain():
    mask = brain_ball()
    with pytest.raises(ModelError):
        segment.normalize_inputs(np.ones(SHAPE), np.zeros(SHAPE), mask)


def test_load_model_round_trips_the_weights_exactly(tmp_path):
    network = tiny_network(seed=3)
    folder = save_model(tmp_path / "model", network)
    loaded, card = segment.load_model(folder)
    assert card["name"] == "tiny-test" and card["architecture"] == TINY
    assert not loaded.training
    saved, restored = network.state_dict(), loaded.state_dict()
    assert saved.keys() == restored.keys()
    for key in saved:
        assert torch.equal(saved[key], restored[key]), key
    with torch.no_grad():
        sample = torch.randn(1, 2, 16, 16, 16, generator=torch.Generator().manual_seed(0))
        assert torch.equal(network(sample), loaded(sample))


def test_load_model_names_the_missing_weights_file(tmp_path):
    folder = save_model(tmp_path / "model", tiny_network())
    (folder / segment.WEIGHTS_FILE).unlink()
    with pytest.raises(ModelError) as caught:
        segment.load_model(folder)
    assert str(folder / segment.WEIGHTS_FILE) in str(caught.value)


def test_load_model_names_the_missing_card(tmp_path):
    folder = save_model(tmp_path / "model", tiny_network())
    (folder / segment.CARD_FILE).unlink()
    with pytest.raises(ModelError) as caught:
        segment.load_model(folder)
    assert str(folder / segment.CARD_FILE) in str(caught.value)


def test_load_model_refuses_weights_that_do_not_fit_the_card(tmp_path):
    folder = save_model(tmp_path / "model", tiny_network(), architecture={"channels": [8, 16], "strides": [2]})
    with pytest.raises(ModelError) as caught:
        segment.load_model(folder)
    assert str(folder / segment.WEIGHTS_FILE) in str(caught.value)


def test_load_model_refuses_a_card_that_is_not_json(tmp_path):
    folder = save_model(tmp_path / "model", tiny_network())
    (folder / segment.CARD_FILE).write_text("{not json")
    with pytest.raises(ModelError):
        segment.load_model(folder)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_load_model_refuses_a_damaged_weights_file(tmp_path, damage):
    folder = save_model(tmp_path / "model", tiny_network())
    weights = folder / segment.WEIGHTS_FILE
    content = weights.read_bytes()
    weights.write_bytes(content[: len(content) // 2] if damage == "truncated" else b"not a checkpoint")
    with pytest.raises(ModelError) as caught:
        segment.load_model(folder)
    assert str(weights) in str(caught.value)


def test_segment_visit_returns_probability_on_the_flair_grid(tmp_path):
    mask = brain_ball()
    rng = np.random.default_rng(2)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [-20.0, -25.0, -15.0]
    flair = Volume(np.where(mask, 100.0, 5.0).astype(np.float32) + rng.normal(0, 1, SHAPE).astype(np.float32),
                   affine, "FLAIR")
    t1 = flair.with_data(np.where(mask, 80.0, 3.0).astype(np.float32), "T1w")
    brain = flair.with_data(mask, "mask")
    visit = PreparedVisit("01", dt.date(2020, 1, 1), flair, t1, brain, Rigid(np.eye(4)), t1, brain, Acquisition())
    network = tiny_network()
    probability, methods = segment.segment_visit(visit, PARAMS, model=(network, {"name": "tiny-test"}))
    assert probability.kind == "probability"
    np.testing.assert_array_equal(probability.affine, affine)
    np.testing.assert_array_equal(probability.data, segment.predict_probability(
        network, segment.normalize_inputs(flair.data, t1.data, mask), mask, PARAMS))
    assert "tiny-test" in methods and "[monai, ronneberger2015]" in methods


SHIPPED = segment.MODEL_DIR / segment.WEIGHTS_FILE


@pytest.mark.skipif(not SHIPPED.is_file(), reason="msvol/models/lesion_unet.pt not shipped yet")
def test_shipped_model_loads_offline_and_has_a_model_card():
    network, card = segment.load_model()
    assert not network.training
    with torch.no_grad():
        logits = network(torch.zeros(1, 2, 32, 32, 32))
    assert tuple(logits.shape) == (1, 1, 32, 32, 32)
    for field in ("name", "architecture", "intended_use", "training_data", "input_contract", "output"):
        assert card.get(field), f"model card lacks '{field}'"
