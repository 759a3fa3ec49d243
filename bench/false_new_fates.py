"""Where the false new lesions of a held-out run lie: the truth fate of what each overlaps.

    python bench/false_new_fates.py bench/work/heldout/standard/fused bench/work/heldout/standard/data
"""
import json, sys
from pathlib import Path
import numpy as np, nibabel as nib
from scipy import ndimage
root = Path(sys.argv[1]); data = Path(sys.argv[2])
counts = {}
for report in sorted(root.glob("sub-*/report.json")):
    subject = report.parent.name
    truth = json.loads((data / "derivatives/truth" / subject / f"{subject}_truth.json").read_text())
    for interval in truth["intervals"]:
        a, b = interval["from_session"], interval["to_session"]
        pred = np.asarray(nib.load(root / subject / "intervals" / f"ses-{a}_to_ses-{b}" / "new_lesions.nii.gz").dataobj)
        labels = np.asarray(nib.load(data / "derivatives/truth" / subject / f"{subject}_ses-{b}_lesions.nii.gz").dataobj)
        comps, n = ndimage.label(pred > 0, np.ones((3, 3, 3)))
        for c in range(1, n + 1):
            ids = np.unique(labels[comps == c]); ids = [str(i) for i in ids if i > 0]
            fates = sorted({interval["fates"].get(i, "?") for i in ids}) or ["no truth lesion"]
            if "new" in fates or "new_below_minimum" in fates:
                continue
            key = "+".join(fates); counts[key] = counts.get(key, 0) + 1
            print(subject, a, b, "false new", int((comps == c).sum()), "mm3 on", key)
print(counts)
