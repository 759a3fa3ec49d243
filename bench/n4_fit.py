"""How well N4 removes a known bias field at each fitting resolution (the source of
config.PreprocessParams.n4_fit_spacing_mm).

One msvol synth visit without bias or noise (checkset.base_from_generator) is multiplied by a known field
(a cubic-spline random field as msvol synth draws it, and a quadratic polynomial as the check set draws it),
noise is added, and N4 runs at each shrink factor. The residual field is corrected / clean in brain tissue;
the 1-99 % spread of its medians over 12 mm blocks is printed with the wall time (0 spread = perfect correction).

    python bench/n4_fit.py [--seed 4301]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
from scipy import ndimage

from msvol.config import Params
from msvol.datatypes import Volume
from msvol.stages import preprocess
from msvol.synth import checkset, checkset_geometry as geometry


def residual_spread(ratio: np.ndarray, inside: np.ndarray, block: int = 12) -> float:
    """Spread (1-99 %) of the residual field's block medians: the smooth part N4 is meant to remove, not the
    noise of single voxels. Blocks of `block` voxels with at least half of them inside."""
    medians = []
    for corner in np.ndindex(*(size // block for size in ratio.shape)):
        window = tuple(slice(c * block, (c + 1) * block) for c in corner)
        if inside[window].mean() >= 0.5:
            medians.append(np.median(ratio[window][inside[window]]))
    medians = np.asarray(medians) / np.median(medians)
    return float(np.percentile(medians, 99) - np.percentile(medians, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=4301)
    parser.add_argument("--fit-spacings", type=float, nargs="+", default=[4.0, 6.0, 8.0])
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    base = checkset.base_from_generator(args.seed)
    brain = (base.tissue > 0.5) & (np.minimum(base.flair, base.t1) >= 0.5)  # tissue, not CSF: noise-free ratios
    coarse = ndimage.zoom(rng.standard_normal((4, 4, 4)), [s / 4 for s in base.flair.shape], order=3)
    fields = {"spline": np.exp(0.2 * coarse / np.abs(coarse).max()).astype(np.float32),
              "polynomial": geometry.bias_field(rng, geometry.grid_points_mm(base.flair.shape, base.affine), 0.25)}
    print("| image | field | N4 fit spacing mm | seconds | residual field spread, 12 mm blocks |\n|---|---|---|---|---|")
    for name, clean in (("FLAIR", base.flair), ("T1", base.t1)):
        for field_name, field in fields.items():
            image = geometry.acquire(clean, rng, bias=field, gain=1.0, noise_sigma=0.01, scale=170).astype(np.float32)
            truth = np.maximum(clean, 1e-3)
            print(f"| {name} | {field_name} | uncorrected | - | {residual_spread(image / truth, brain):.3f} |")
            for spacing in args.fit_spacings:
                params = dataclasses.replace(Params().preprocess, n4_fit_spacing_mm=spacing)
                started = time.perf_counter()
                corrected = preprocess.correct_bias(Volume(image, base.affine, name), params).data
                print(f"| {name} | {field_name} | {spacing:g} | {time.perf_counter() - started:.1f} | "
                      f"{residual_spread(corrected / truth, brain):.3f} |", flush=True)


if __name__ == "__main__":
    main()
