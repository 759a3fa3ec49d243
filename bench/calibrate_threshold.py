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

from msvol import pipeline
from msvol.config import Params
from msvol.evaluate import score_scan
from msvol.ingest import bids
from msvol.stages import lesions, segment


def main(root: Path) -> None:
    params = Params()
    resources = pipeline.Resources.load()
    for visit in bids.load_patient(root / "sub-01").visits:
        ready = pipeline.prepare_visit(visit, params, resources)
        probability, _ = segment.segment_visit(ready, params.segment, resources.segmenter)
        truth_path = root / "derivatives" / "truth" / "sub-01" / f"sub-01_ses-{visit.session}_lesions.nii.gz"
        truth = np.asarray(nib.load(truth_path).dataobj)
        for threshold in (0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
            segment_params = dataclasses.replace(params.segment, probability_threshold=threshold)
            predicted = lesions.label_lesions(probability, visit.session, segment_params, params.lesions).labels.data
            score = score_scan(predicted > 0, truth > 0, 1.0, truth_ids=truth)  # synth grid: 1 mm voxels
            print(f"ses-{visit.session} threshold {threshold}: Dice {score['dice']:.3f}, found "
                  f"{score['detected']}/{score['truth_lesions']}, false components {score['false_positives']}, "
                  f"F1 {score['f1']:.3f}, volume ratio {score['volume_ratio']:.3f}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
