"""Lesion segmentation: a MONAI 3D U-Net on FLAIR + T1, sliding-window inference, offline weights.

Input contract (the model card repeats it): two channels on the visit's FLAIR grid (1 mm),
FLAIR then T1 registered to it, each divided by its median inside the brain mask; the
whole head is given, the output is kept inside the brain mask dilated by 2 mm.
Output: a lesion probability per voxel (sigmoid of one logit).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from msvol.config import SegmentParams
from msvol.datatypes import PreparedVisit, Volume
from msvol.errors import ModelError

MODEL_DIR = Path(__file__).parent / "models"
WEIGHTS_FILE = "lesion_unet.pt"
CARD_FILE = "model_card.json"
DEFAULT_ARCHITECTURE = {
    "spatial_dims": 3, "in_channels": 2, "out_channels": 1,
    "channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1, "norm": "instance",
}


def build_network(architecture: dict | None = None):
    """The MONAI U-Net described by `architecture` (defaults: DEFAULT_ARCHITECTURE)."""
    from monai.networks.nets import UNet

    spec = dict(DEFAULT_ARCHITECTURE, **(architecture or {}))
    return UNet(spatial_dims=spec["spatial_dims"], in_channels=spec["in_channels"],
                out_channels=spec["out_channels"], channels=tuple(spec["channels"]),
                strides=tuple(spec["strides"]), num_res_units=spec["num_res_units"], norm=spec["norm"])


def normalize_inputs(flair: np.ndarray, t1: np.ndarray, brain_mask: np.ndarray) -> np.ndarray:
    """Stack FLAIR and T1 as (2, X, Y, Z) float32, each divided by its median inside the brain."""
    if not brain_mask.any():
        raise ModelError("empty brain mask: cannot normalise the model inputs")
    channels = []
    for image in (flair, t1):
        median = float(np.median(image[brain_mask]))
        if median <= 0:
            raise ModelError("image is zero inside the brain mask: cannot normalise the model inputs")
        channels.append(image.astype(np.float32) / median)
    return np.stack(channels)


def load_model(model_dir: Path | None = None):
    """Load the U-Net and its model card from `model_dir` (default: the weights shipped in msvol).

    Raises ModelError naming the file when weights or card are missing or do not fit.
    """
    import torch

    folder = Path(model_dir) if model_dir else MODEL_DIR
    card_path, weights_path = folder / CARD_FILE, folder / WEIGHTS_FILE
    for path in (card_path, weights_path):
        if not path.is_file():
            raise ModelError(f"{path}: model file missing; reinstall msvol or pass a model folder")
    try:
        card = json.loads(card_path.read_text())
        network = build_network(card.get("architecture"))
        network.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    except Exception as exc:  # torch raises many types (OSError, UnpicklingError, RuntimeError) for bad files
        raise ModelError(f"{weights_path}: cannot load the model ({exc})") from exc
    network.eval()
    return network, card


def predict_probability(network, inputs: np.ndarray, brain_mask: np.ndarray,
                        params: SegmentParams, *, device: str = "cpu") -> np.ndarray:
    """Lesion probability (X, Y, Z) float32 from normalised inputs, inside the brain's bounding box."""
    import torch
    from monai.inferers import sliding_window_inference

    dilated = ndimage.binary_dilation(brain_mask, iterations=2)
    coords = np.argwhere(dilated)
    low = np.maximum(coords.min(axis=0) - 4, 0)
    high = np.minimum(coords.max(axis=0) + 5, brain_mask.shape)
    box = tuple(slice(a, b) for a, b in zip(low, high))
    crop = torch.from_numpy(np.ascontiguousarray(inputs[(slice(None),) + box]))[None].to(device)
    with torch.inference_mode():
        logits = sliding_window_inference(crop, params.roi_size, params.sw_batch_size, network.to(device),
                                          overlap=params.overlap, mode="gaussian")
    probability = np.zeros(brain_mask.shape, np.float32)
    probability[box] = torch.sigmoid(logits)[0, 0].cpu().numpy()
    probability *= dilated
    return probability


def segment_visit(visit: PreparedVisit, params: SegmentParams, *, model=None) -> tuple[Volume, str]:
    """Lesion probability on the visit's FLAIR grid, and the methods sentence.

    Parameters
    ----------
    visit : PreparedVisit with FLAIR, T1 on the FLAIR grid and the brain mask.
    params : SegmentParams (sliding window size, overlap, batch).
    model : (network, card) from `load_model`; loaded from the shipped weights when None.
    """
    network, card = model if model is not None else load_model()
    inputs = normalize_inputs(visit.flair.data, visit.t1_on_flair.data, visit.brain_mask.data)
    probability = predict_probability(network, inputs, visit.brain_mask.data, params)
    methods = (f"Lesions were segmented with a 3D U-Net (MONAI; model '{card.get('name', 'unknown')}', "
               f"trained on synthetic data) on FLAIR and T1 with sliding-window inference "
               f"({params.roi_size[0]} mm windows, overlap {params.overlap}) [monai, ronneberger2015].")
    return visit.flair.with_data(probability, "probability"), methods
