"""Lesion models at inference: per-visit segmentation and two-visit change, sliding window, offline bundles.

Input contract (the bundles' metadata repeats it): 1 mm grids; per-visit model [FLAIR, T1 registered
to it] on the visit's FLAIR grid; change model [FLAIR baseline, FLAIR follow-up, T1 baseline, T1
follow-up] on the interval's halfway grid. Each channel is divided by its median inside the brain
mask (a missing T1 is zeros); the whole head is given, the output is kept inside the brain mask
dilated by 2 mm. Output: a probability per voxel (sigmoid of one logit).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage

from msvol.config import SegmentParams
from msvol.datatypes import PreparedVisit, Volume
from msvol.errors import ModelError
from msvol.models.bundle import Bundle


def normalize_inputs(images: list[np.ndarray | None], brain_mask: np.ndarray) -> np.ndarray:
    """Stack the channels as (C, X, Y, Z) float32, each divided by its median inside the brain.

    A missing image (None: no T1) becomes all zeros, the models' FLAIR-only input (msvol.training.randomise).
    """
    if not brain_mask.any():
        raise ModelError("empty brain mask: cannot normalise the model inputs")
    channels = []
    for image in images:
        if image is None:
            channels.append(np.zeros(brain_mask.shape, np.float32))
            continue
        median = float(np.median(image[brain_mask]))
        if median <= 0:
            raise ModelError("image is zero inside the brain mask: cannot normalise the model inputs")
        channels.append(image.astype(np.float32) / median)
    return np.stack(channels)


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
    with torch.inference_mode(), warnings.catch_warnings():
        # MONAI indexes with a list (PyTorch's deprecation UserWarning on every window); the result is correct,
        # and the warning is not the user's to act on
        warnings.filterwarnings("ignore", "Using a non-tuple sequence for multidimensional indexing", UserWarning)
        logits = sliding_window_inference(crop, params.roi_size, params.sw_batch_size, network.to(device),
                                          overlap=params.overlap, mode="gaussian")
    probability = np.zeros(brain_mask.shape, np.float32)
    probability[box] = torch.sigmoid(logits)[0, 0].cpu().numpy()
    probability *= dilated
    return probability


def segment_visit(visit: PreparedVisit, params: SegmentParams, model: Bundle) -> tuple[Volume, str]:
    """Lesion probability on the visit's FLAIR grid, and the methods sentence.

    Parameters
    ----------
    visit : PreparedVisit with FLAIR, T1 on the FLAIR grid (None: FLAIR-only) and the brain mask.
    params : SegmentParams (sliding window size, overlap, batch).
    model : the per-visit bundle (msvol.models.bundle.load_bundle(..., "per_visit")).
    """
    t1 = visit.t1_on_flair.data if visit.t1_on_flair is not None else None
    inputs = normalize_inputs([visit.flair.data, t1], visit.brain_mask.data)
    probability = predict_probability(model.network, inputs, visit.brain_mask.data, params)
    inputs_used = "FLAIR and T1" if t1 is not None else "FLAIR alone"
    methods = (f"Lesions were segmented with a 3D U-Net (MONAI bundle '{model.name}', trained on domain-randomised "
               f"synthetic data) on {inputs_used} with sliding-window inference ({params.roi_size[0]} mm windows, "
               f"overlap {params.overlap}) [monai, ronneberger2015, billot2023].")
    return visit.flair.with_data(probability, "probability"), methods


def predict_change(flairs: tuple[np.ndarray, np.ndarray], t1s: tuple[np.ndarray, np.ndarray], brain_mask: np.ndarray,
                   params: SegmentParams, model: Bundle, *, region: np.ndarray | None = None) -> np.ndarray:
    """Probability of new or enlarged lesion tissue at the second visit, from both visits on one halfway grid.

    `flairs` and `t1s` are (first, second): (baseline, follow-up) for new tissue, (follow-up, baseline)
    for tissue lost. `brain_mask` is where both visits are brain (the inputs are normalised over it);
    `region`, when given, limits the inference to its bounding box (0 elsewhere).
    """
    inputs = normalize_inputs([flairs[0], flairs[1], t1s[0], t1s[1]], brain_mask)
    return predict_probability(model.network, inputs, brain_mask if region is None else brain_mask & region, params)
