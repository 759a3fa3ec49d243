"""Training runs, checkpoints, resumes and produces weights that segment.load_model accepts.

A tiny pre-rendered cache (32^3 cases) stands in for synthetic patients, so nothing is generated.
"""

import csv

import numpy as np
import pytest

from msvol import segment, train


@pytest.fixture
def tiny_cache(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    rng = np.random.default_rng(0)
    for visit in range(2):
        label = np.zeros((1, 32, 32, 32), np.uint8)
        label[0, 12:18, 12:18, 12:18] = 1
        image = rng.normal(1.0, 0.05, (2, 32, 32, 32)).astype(np.float16)
        image[0][label[0] > 0] = 2.0  # FLAIR-bright lesion
        np.savez_compressed(cache / f"case-7-{visit}.npz", image=image, label=label)
    return cache


def _rows(path):
    with path.open() as handle:
        return list(csv.reader(handle))


class Interrupted(Exception):
    pass


def test_train_checkpoints_resumes_and_loads(tmp_path, tiny_cache):
    """An interrupted run (killed after its step-2 checkpoint) resumes there with the same settings."""
    out = tmp_path / "model"
    settings = train.TrainSettings(seeds=(7,), steps=3, patch_size=(16, 16, 16), batch_size=2, checkpoint_every=1)

    def interrupt_after_step_2(message):
        if message.startswith("step 2/"):
            raise Interrupted

    with pytest.raises(Interrupted):
        train.train(out, tiny_cache, settings, log=interrupt_after_step_2)
    assert [row[0] for row in _rows(out / "loss.csv")] == ["1", "2"]
    assert not (out / segment.WEIGHTS_FILE).exists()
    messages = []
    train.train(out, tiny_cache, settings, log=messages.append)
    assert "resumed from step 2" in messages
    assert [row[0] for row in _rows(out / "loss.csv")] == ["1", "2", "3"]
    network, card = segment.load_model(out)
    assert card["training_data"]["synthetic_only"] is True
    assert sum(parameter.numel() for parameter in network.parameters()) > 0
