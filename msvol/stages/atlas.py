"""The MNI ICBM152 2009a template shipped in nilearn's wheel (a leaf module: no msvol imports).

Used by synth (anatomy) and by the cross-sectional measures (head-size normalisation).
Nothing is downloaded: the files are part of the installed nilearn package.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage


def template_dir() -> Path:
    import nilearn

    return Path(nilearn.__file__).parent / "datasets" / "data"


def load_mni() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Template maps as float32 in [0, 1]: t1 (brain only), gm, wm, csf, intracranial; and the affine.

    `intracranial` is the filled non-zero region of the skull-stripped T1; `csf` is what of it
    is neither GM nor WM.
    """
    import nibabel as nib

    maps, affine = {}, None
    for name in ("t1", "gm", "wm"):
        image = nib.load(template_dir() / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz")
        maps[name] = np.asarray(image.dataobj, dtype=np.float32) / 255.0
        affine = image.affine
    intracranial = ndimage.binary_fill_holes(maps["t1"] > 0.02)
    tissue = np.clip(maps["gm"] + maps["wm"], 0, 1)
    maps["intracranial"] = intracranial.astype(np.float32)
    maps["csf"] = np.where(intracranial, 1 - tissue, 0).astype(np.float32)
    return maps, affine
