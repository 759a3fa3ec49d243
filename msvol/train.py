"""Train the lesion U-Net on synthetic patients from msvol.synth (CPU is enough for the first model).

Cases are rendered once and cached as compressed arrays (FLAIR, T1 on the FLAIR grid, lesion
mask, brain mask); training draws 3D patches, two lesion-centred for one random, and applies
MONAI's random bias field, gamma, noise, smoothing, intensity scaling, flips and small affine
deformations so the model does not learn one contrast. Checkpoints make training resumable.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from msvol.segment import CARD_FILE, DEFAULT_ARCHITECTURE, WEIGHTS_FILE, build_network, normalize_inputs
from msvol.synth import SynthSettings, generate_patient


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    seeds: tuple[int, ...] = tuple(range(1000, 1010))  # training patients; sample_data and bench use others
    steps: int = 700  # the shipped weights (docs/MODEL.md)
    patch_size: tuple[int, int, int] = (64, 64, 64)
    batch_size: int = 4
    learning_rate: float = 2e-3
    seed: int = 0
    checkpoint_every: int = 100


def render_cases(seeds, cache_dir: Path, settings: SynthSettings = SynthSettings(n_visits=2)) -> list[Path]:
    """Render synthetic visits to `cache_dir` (skipping those already there); returns the case files."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in seeds:
        expected = [cache_dir / f"case-{seed}-{visit}.npz" for visit in range(settings.n_visits)]
        if not all(path.exists() for path in expected):
            patient = generate_patient(seed, settings)
            for path, visit in zip(expected, patient["visits"]):
                t1 = visit["t1"][::-1]  # the generator stores T1 left-right flipped (LAS); undo exactly
                image = normalize_inputs(visit["flair"].astype(np.float32), t1.astype(np.float32), visit["brain"])
                temporary = path.with_suffix(".partial.npz")
                np.savez_compressed(temporary, image=image.astype(np.float16),
                                    label=(visit["labels"] > 0).astype(np.uint8)[None])
                temporary.replace(path)
        paths.extend(expected)
    return paths


def _transforms(settings: TrainSettings):
    from monai import transforms as T

    keys = ["image", "label"]
    return T.Compose([
        T.RandCropByPosNegLabeld(keys, "label", settings.patch_size, pos=2, neg=1, num_samples=settings.batch_size),
        T.RandAffined(keys, prob=0.5, rotate_range=(0.2, 0.2, 0.2), scale_range=(0.1, 0.1, 0.1),
                      mode=("bilinear", "nearest"), padding_mode="zeros"),
        T.RandFlipd(keys, prob=0.5, spatial_axis=0),
        T.RandBiasFieldd("image", prob=0.5, coeff_range=(0.0, 0.3)),
        T.RandAdjustContrastd("image", prob=0.5, gamma=(0.7, 1.5)),
        T.RandScaleIntensityd("image", prob=0.5, factors=0.15),
        T.RandGaussianSmoothd("image", prob=0.3, sigma_x=(0.3, 0.9), sigma_y=(0.3, 0.9), sigma_z=(0.3, 0.9)),
        T.RandGaussianNoised("image", prob=0.5, std=0.04),
    ])


def train(out_dir: Path, cache_dir: Path, settings: TrainSettings = TrainSettings(), *, log=print) -> Path:
    """Train, checkpointing to `out_dir`; writes weights, model card and a loss curve there.

    An interrupted run resumes from its last checkpoint when called again with the same settings
    (the one-cycle learning-rate schedule fixes the number of steps).
    """
    import torch
    from monai.losses import DiceCELoss

    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    cases = render_cases(settings.seeds, cache_dir)
    data = [dict(np.load(path)) for path in cases]
    for case in data:
        case["image"] = case["image"].astype(np.float32)
    transform = _transforms(settings)
    transform.set_random_state(seed=settings.seed)

    network = build_network()
    optimizer = torch.optim.AdamW(network.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings.learning_rate, total_steps=settings.steps)
    loss_function = DiceCELoss(sigmoid=True)
    checkpoint_path = out_dir / "checkpoint.pt"
    start = 0
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, weights_only=False)
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = state["step"]
        log(f"resumed from step {start}")
    curve = out_dir / "loss.csv"
    began = time.time()
    network.train()
    for step in range(start, settings.steps):
        samples = transform(data[rng.integers(len(data))])
        images = torch.stack([torch.as_tensor(np.asarray(s["image"])) for s in samples]).float()
        labels = torch.stack([torch.as_tensor(np.asarray(s["label"])) for s in samples]).float()
        optimizer.zero_grad()
        loss = loss_function(network(images), labels)
        loss.backward()
        optimizer.step()
        scheduler.step()
        with curve.open("a", newline="") as handle:
            csv.writer(handle).writerow([step + 1, f"{loss.item():.5f}", f"{time.time() - began:.1f}"])
        if (step + 1) % settings.checkpoint_every == 0 or step + 1 == settings.steps:
            torch.save({"network": network.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "step": step + 1}, checkpoint_path)
            log(f"step {step + 1}/{settings.steps} loss {loss.item():.4f} ({time.time() - began:.0f} s)")
    torch.save(network.state_dict(), out_dir / WEIGHTS_FILE)
    card = {
        "name": "msvol-lesion-unet-synth-v1",
        "architecture": DEFAULT_ARCHITECTURE,
        "intended_use": "Research: white-matter lesion segmentation on 3D FLAIR + 3D T1 at ~1 mm. "
                        "Not validated on patient scans; not a medical device.",
        "training_data": {"generator": "msvol.synth", "generator_settings": "SynthSettings(n_visits=2)",
                          "seeds": list(settings.seeds), "synthetic_only": True},
        "training": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(settings).items()},
        "input_contract": {"channels": ["FLAIR", "T1w registered to FLAIR"], "spacing_mm": 1.0,
                           "orientation": "any (grid of the FLAIR)",
                           "normalisation": "each channel divided by its median inside the brain mask"},
        "output": "one logit per voxel; sigmoid = lesion probability",
    }
    (out_dir / CARD_FILE).write_text(json.dumps(card, indent=2))
    return out_dir / WEIGHTS_FILE
