"""Choose segment.probability_threshold on a held-out synthetic patient (not a training, sample or bench seed).

    msvol synth build/calib --subjects 1 --visits 2 --seed 300
    python bench/calibrate_threshold.py build/calib

Prints, per visit and threshold, voxel Dice, lesions found, false-positive components and
lesion-wise F1 against the generator's truth labels.
"""

import dataclasses
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from msvol import ingest, lesions, pipeline, segment
from msvol.config import Params


def main(root: Path) -> None:
    params = Params()
    resources = pipeline.Resources.load()
    for visit in ingest.load_patient(root / "sub-01").visits:
        ready = pipeline.prepare_visit(visit, params, resources)
        probability, _ = segment.segment_visit(ready, params.segment, resources.segmenter)
        truth_path = root / "derivatives" / "truth" / "sub-01" / f"sub-01_ses-{visit.session}_lesions.nii.gz"
        truth = np.asarray(nib.load(truth_path).dataobj)
        truth_ids = np.unique(truth)[1:]
        for threshold in (0.5, 0.6, 0.7, 0.8, 0.9):
            segment_params = dataclasses.replace(params.segment, probability_threshold=threshold)
            predicted = lesions.label_lesions(probability, visit.session, segment_params, params.lesions).labels.data
            predicted_ids = np.unique(predicted)[1:]
            dice = 2 * ((predicted > 0) & (truth > 0)).sum() / ((predicted > 0).sum() + (truth > 0).sum())
            found = sum(bool((predicted[truth == i] > 0).any()) for i in truth_ids)
            false = sum(not (truth[predicted == j] > 0).any() for j in predicted_ids)
            sensitivity = found / len(truth_ids)
            precision = (len(predicted_ids) - false) / max(len(predicted_ids), 1)
            f1 = 2 * sensitivity * precision / max(sensitivity + precision, 1e-9)
            print(f"ses-{visit.session} threshold {threshold}: Dice {dice:.3f}, found {found}/{len(truth_ids)}, "
                  f"false components {false}, F1 {f1:.3f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
