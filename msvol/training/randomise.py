"""Domain randomisation for training (SynthSeg-style): every sample is a new scanner.

Images are drawn from the tissue fraction maps of msvol.synth.patients (`generate_label_maps`): each
sample gets new random intensities per tissue for a FLAIR-like and a T1-like contrast (ranges
below, relative to white matter), then MONAI's transforms add affine and elastic deformation,
left-right flips, thick slices or low resolution resampled back to 1 mm, bias fields, gamma,
Rician noise and blur. A model that never sees the same contrast twice has to learn shape
and relative brightness, not one scanner's grey values (Billot et al., Med Image Anal 2023).

Channel order (the models' input contract, repeated in the bundles' metadata):
per-visit model [FLAIR, T1]; change model [FLAIR baseline, FLAIR follow-up, T1 baseline,
T1 follow-up]. Each channel is divided by its median inside the brain, as at inference.
"""

from __future__ import annotations

import numpy as np

from monai.transforms import MapTransform, RandomizableTransform

# Order of the fraction channels written by msvol.synth.patients.generate_label_maps.
FRACTION_CHANNELS = ("csf", "gm", "wm", "skull", "marrow", "scalp", "lesion")
# Intensity ranges relative to white matter (= 1). They contain the "standard" contrast of msvol.synth.patients
# with its per-patient jitter; the "shifted" preset lies outside them on purpose (docs/MODEL.md).
FLAIR_RANGES = {"csf": (0.03, 0.45), "gm": (1.0, 1.6), "wm": (1.0, 1.0), "skull": (0.0, 0.3),
                "marrow": (0.3, 1.5), "scalp": (0.5, 1.8), "lesion": (1.5, 3.0)}
T1_RANGES = {"csf": (0.03, 0.45), "gm": (0.45, 0.85), "wm": (1.0, 1.0), "skull": (0.0, 0.3),
             "marrow": (0.5, 1.5), "scalp": (0.5, 1.5), "lesion": (0.3, 0.85)}


def _ranges(defaults: dict, tissues: dict | None, lesion: tuple[float, float] | None) -> dict:
    """`defaults` with the tissues named in `tissues` (and the lesion) given other ranges."""
    ranges = {**defaults, **{name: tuple(bounds) for name, bounds in (tissues or {}).items()}}
    unknown = sorted(set(ranges) - set(FRACTION_CHANNELS))
    bad = [name for name, bounds in ranges.items() if len(bounds) != 2 or not 0 <= bounds[0] <= bounds[1]]
    if unknown or bad:
        raise ValueError(f"tissue ranges: unknown tissues {unknown} or ranges not (low, high) with 0 <= low <= high "
                         f"{bad}; tissues are {list(FRACTION_CHANNELS)}")
    return ranges if lesion is None else {**ranges, "lesion": tuple(lesion)}


class RandTissueContrastd(RandomizableTransform, MapTransform):
    """Render FLAIR-like and T1-like images from fraction maps with random per-tissue intensities.

    `fraction_keys` hold (7, X, Y, Z) uint8 fraction maps (one key per visit, same contrast for all
    visits of a sample, each visit jittered by `visit_jitter` as a rescan would be); the matching
    `brain_sample_keys` hold (7, N) fractions of random brain voxels, to normalise by the whole
    brain's median as inference does. With probability `t1_dropout` the T1 channels are zero
    (the FLAIR-only fallback). With probability `faint_fraction` the FLAIR lesion brightness comes from
    `faint_flair_lesion_range` instead (a training mix weighted to faint lesions, issue 12).
    `flair_tissue_ranges` and `t1_tissue_ranges` replace the ranges of the tissues they name.
    """

    def __init__(self, fraction_keys, brain_sample_keys, image_key: str = "image", visit_jitter: float = 0.03,
                 t1_dropout: float = 0.0, flair_lesion_range: tuple[float, float] | None = None,
                 t1_lesion_range: tuple[float, float] | None = None, faint_fraction: float = 0.0,
                 faint_flair_lesion_range: tuple[float, float] | None = None,
                 flair_tissue_ranges: dict | None = None, t1_tissue_ranges: dict | None = None):
        RandomizableTransform.__init__(self, prob=1.0)
        MapTransform.__init__(self, fraction_keys)
        self.brain_sample_keys = list(brain_sample_keys)
        self.image_key = image_key
        self.visit_jitter = visit_jitter
        self.t1_dropout = t1_dropout
        self.flair_ranges = _ranges(FLAIR_RANGES, flair_tissue_ranges, flair_lesion_range)
        self.t1_ranges = _ranges(T1_RANGES, t1_tissue_ranges, t1_lesion_range)
        self.faint_fraction = faint_fraction
        if faint_fraction and not faint_flair_lesion_range:
            raise ValueError("a faint-lesion fraction needs faint_flair_lesion_range")
        self.faint_ranges = {**self.flair_ranges, "lesion": tuple(faint_flair_lesion_range or ())}

    def _draw(self, ranges: dict) -> np.ndarray:
        return np.array([self.R.uniform(*ranges[name]) for name in FRACTION_CHANNELS])

    def __call__(self, data):
        sample = dict(data)
        # only a faint mix draws the extra number, so the default draws stay as they were
        faint = bool(self.faint_fraction) and self.R.uniform() < self.faint_fraction
        contrasts = {"flair": self._draw(self.faint_ranges if faint else self.flair_ranges),
                     "t1": self._draw(self.t1_ranges)}
        drop_t1 = self.R.uniform() < self.t1_dropout
        channels = {"flair": [], "t1": []}
        for key, brain_key in zip(self.keys, self.brain_sample_keys):
            fractions = np.asarray(sample[key], dtype=np.float32) / 255
            brain = np.asarray(sample[brain_key], dtype=np.float32) / 255
            for modality, values in contrasts.items():
                values = values * (1 + self.R.uniform(-self.visit_jitter, self.visit_jitter, len(values)))
                median = float(np.median(values @ brain))
                image = np.tensordot(values.astype(np.float32), fractions, axes=1) / median
                channels[modality].append(np.zeros_like(image) if modality == "t1" and drop_t1 else image)
        sample[self.image_key] = np.stack(channels["flair"] + channels["t1"]).astype(np.float32)
        return sample


class RandSliceThicknessd(RandomizableTransform, MapTransform):
    """Simulate a thicker slice along a random axis: blur with the slice profile, subsample, resample to 1 mm."""

    def __init__(self, keys, prob: float = 0.3, thickness_mm: tuple[float, float] = (1.5, 4.0)):
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys)
        self.thickness_mm = thickness_mm

    def __call__(self, data):
        import torch
        import torch.nn.functional as F
        from scipy import ndimage

        sample = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return sample
        axis = int(self.R.randint(3))
        thickness = self.R.uniform(*self.thickness_mm)
        for key in self.keys:
            image = np.asarray(sample[key], dtype=np.float32)
            blurred = ndimage.gaussian_filter1d(image, thickness / 2.355, axis=axis + 1)  # FWHM = thickness
            shape = list(image.shape[1:])
            coarse = list(shape)
            coarse[axis] = max(2, int(round(shape[axis] / thickness)))
            tensor = torch.from_numpy(blurred)[None]
            tensor = F.interpolate(F.interpolate(tensor, size=coarse, mode="trilinear"), size=shape, mode="trilinear")
            sample[key] = tensor[0].numpy()
        return sample


def training_transforms(task: str, patch_size, num_samples: int, flair_lesion_range=None, t1_lesion_range=None,
                        faint_fraction: float = 0.0, faint_flair_lesion_range=None, flair_tissue_ranges=None,
                        t1_tissue_ranges=None):
    """The MONAI pipeline for one task ('per_visit' or 'change'): crop, render, deform, degrade.
    `flair_lesion_range` and `t1_lesion_range` replace FLAIR_RANGES["lesion"] and T1_RANGES["lesion"];
    a `faint_fraction` of the samples draws the FLAIR lesion from `faint_flair_lesion_range` (fine-tuning to
    fainter lesions); `flair_tissue_ranges` and `t1_tissue_ranges` ({tissue: (low, high)}) widen other tissues."""
    from monai import transforms as T

    if task == "per_visit":
        fraction_keys, brain_keys, ratios, t1_dropout = ["fractions"], ["brain_sample"], [1, 2], 0.15
    else:
        fraction_keys, brain_keys, ratios, t1_dropout = ["fractions_a", "fractions_b"], \
            ["brain_sample_a", "brain_sample_b"], [1, 1, 2], 0.0
    spatial = ["image", "label"]
    # Crop a margin larger than the patch, so rotation and deformation never pull in empty corners.
    crop_size = [size + 16 for size in patch_size]
    return T.Compose([
        # Lesion- (and change-) centred patches; indices are precomputed per case (train.py).
        T.RandCropByLabelClassesd(fraction_keys + ["label"], "label_classes", crop_size, ratios=ratios,
                                  num_classes=len(ratios), num_samples=num_samples, indices_key="class_indices",
                                  warn=False),
        RandTissueContrastd(fraction_keys, brain_keys, t1_dropout=t1_dropout, flair_lesion_range=flair_lesion_range,
                            t1_lesion_range=t1_lesion_range, faint_fraction=faint_fraction,
                            faint_flair_lesion_range=faint_flair_lesion_range,
                            flair_tissue_ranges=flair_tissue_ranges, t1_tissue_ranges=t1_tissue_ranges),
        T.Rand3DElasticd(spatial, sigma_range=(5, 8), magnitude_range=(0, 60), prob=0.8, spatial_size=patch_size,
                         rotate_range=(0.3, 0.3, 0.3), scale_range=(0.15, 0.15, 0.15), shear_range=0.05,
                         mode=("bilinear", "nearest"), padding_mode="zeros"),
        T.RandFlipd(spatial, prob=0.5, spatial_axis=0),
        RandSliceThicknessd("image", prob=0.3),
        T.RandSimulateLowResolutiond("image", prob=0.15, zoom_range=(0.6, 1.0)),
        T.RandBiasFieldd("image", prob=0.6, coeff_range=(0.0, 0.15)),
        T.RandAdjustContrastd("image", prob=0.5, gamma=(0.7, 1.5)),
        T.RandGaussianSmoothd("image", prob=0.2, sigma_x=(0.3, 0.8), sigma_y=(0.3, 0.8), sigma_z=(0.3, 0.8)),
        T.RandRicianNoised("image", prob=0.7, std=0.05),
        T.DeleteItemsd(fraction_keys + brain_keys + ["label_classes", "class_indices"]),
    ])
