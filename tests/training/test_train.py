"""Training runs, checkpoints, resumes and writes a bundle that bundle.load_bundle accepts; settings load from YAML.

Tiny hand-made cases (one 32^3 fraction map holding a cube of lesion in white matter) stand in for
rendered synthetic patients, so nothing is generated; patches are 16^3 and the U-Net is (4, 8).
"""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest
import torch

from msvol.errors import ConfigError, ModelError
from msvol.models import bundle
from msvol.training import train

N = 32
LESION = (slice(12, 18),) * 3


def tiny_cases(task: str) -> list[dict]:
    """One case in train.load_cases' item format: white matter with a 6^3 cube of lesion (new at follow-up)."""
    rng = np.random.default_rng(0)
    fractions = np.zeros((7, N, N, N), np.uint8)
    fractions[2] = 255
    fractions[(2, *LESION)] = 0
    fractions[(6, *LESION)] = 255
    lesion = (fractions[6] > 0).astype(np.uint8)
    head = np.ones((N, N, N), bool)
    brain_sample = fractions.reshape(7, -1)[:, ::37]
    if task == "per_visit":
        return [{"fractions": fractions, "brain_sample": brain_sample, "label": lesion[None],
                 "label_classes": lesion[None], "class_indices": train._class_indices(lesion, rng, head)}]
    baseline = fractions.copy()
    baseline[(2, *LESION)] = 255
    baseline[(6, *LESION)] = 0
    classes = (2 * lesion).astype(np.uint8)
    return [{"fractions_a": baseline, "fractions_b": fractions, "brain_sample_a": brain_sample,
             "brain_sample_b": brain_sample, "label": lesion[None], "label_classes": classes[None],
             "class_indices": train._class_indices(classes, rng, head)}]


def tiny_settings(task: str = "per_visit", steps: int = 3) -> train.TrainSettings:
    return train.TrainSettings(task=task, steps=steps, patch_size=(16, 16, 16), batch_size=2, checkpoint_every=1,
                               channels=(4, 8))


def _rows(path):
    with path.open() as handle:
        return list(csv.reader(handle))


class Interrupted(Exception):
    pass


# --- training -------------------------------------------------------------------------------------


def test_train_checkpoints_resumes_and_writes_a_bundle(tmp_path):
    """An interrupted run (killed after its step-2 checkpoint) resumes there with the same settings."""
    out = tmp_path / "run"
    settings = tiny_settings()

    def interrupt_after_step_2(message):
        if message.startswith("step 2/"):
            raise Interrupted

    with pytest.raises(Interrupted):
        train.train(out, None, settings, log=interrupt_after_step_2, cases=tiny_cases("per_visit"))
    assert [row[0] for row in _rows(out / "loss.csv")] == ["1", "2"]
    assert (out / "checkpoint.pt").is_file()
    assert not (out / "bundle").exists()

    messages = []
    folder = train.train(out, None, settings, log=messages.append, cases=tiny_cases("per_visit"))
    assert "resumed from step 2" in messages
    rows = _rows(out / "loss.csv")
    assert [row[0] for row in rows] == ["1", "2", "3"]
    assert all(len(row) == 3 and float(row[1]) > 0 and float(row[2]) >= 0 for row in rows)  # step, loss, seconds
    assert folder == out / "bundle"
    assert (folder / "training" / "loss.csv").read_text() == (out / "loss.csv").read_text()
    model = bundle.load_bundle(folder, "per_visit")
    assert model.network[0].in_channels == 2
    assert sum(parameter.numel() for parameter in model.network.parameters()) > 0
    with pytest.raises(ModelError, match="role"):
        bundle.load_bundle(folder, "change")


def test_train_change_task_writes_a_change_bundle(tmp_path):
    settings = tiny_settings("change", steps=2)
    folder = train.train(tmp_path / "run", None, settings, log=lambda message: None, cases=tiny_cases("change"))
    assert [row[0] for row in _rows(tmp_path / "run" / "loss.csv")] == ["1", "2"]
    model = bundle.load_bundle(folder, "change")
    assert model.network[0].in_channels == 4
    assert train.load_settings(folder / "configs" / "train.yaml") == settings


# --- settings -------------------------------------------------------------------------------------


def test_fine_tuning_starts_from_the_given_bundle(tmp_path):
    """init_bundle: the network starts with that bundle's weights (a zero learning rate keeps them)."""
    first = train.train(tmp_path / "first", None, tiny_settings(steps=2), log=lambda message: None,
                        cases=tiny_cases("per_visit"))
    settings = dataclasses.replace(tiny_settings(steps=1), init_bundle=str(first), learning_rate=0.0,
                                   flair_lesion_range=(1.15, 3.0), flair_tissue_ranges={"csf": [0.03, 0.7]},
                                   t1_tissue_ranges={"gm": (0.45, 0.95)})
    messages = []
    tuned = train.train(tmp_path / "tuned", None, settings, log=messages.append, cases=tiny_cases("per_visit"))
    assert f"weights from {first}" in messages
    before, after = (bundle.load_bundle(folder, "per_visit").network.state_dict() for folder in (first, tuned))
    assert all(torch.equal(before[name], after[name]) for name in before)
    recorded = train.load_settings(tuned / "configs" / "train.yaml")
    assert recorded == dataclasses.replace(settings, t1_tissue_ranges={"gm": [0.45, 0.95]})  # YAML keeps lists


def test_load_settings_refuses_a_faint_fraction_without_its_range(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("faint_fraction: 0.5\n")
    with pytest.raises(ConfigError, match="train.yaml: faint_fraction"):
        train.load_settings(path)
    path.write_text("faint_fraction: 0.5\nfaint_flair_lesion_range: [1.15, 1.6]\n")
    assert train.load_settings(path).faint_flair_lesion_range == (1.15, 1.6)


def test_load_settings_without_a_file_gives_the_defaults_and_overrides():
    assert train.load_settings(None) == train.TrainSettings()
    settings = train.load_settings(None, task="change", steps=5, seed=None)
    assert settings == dataclasses.replace(train.TrainSettings(), task="change", steps=5)


def test_load_settings_reads_yaml_and_overrides_win(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("task: change\nsteps: 20\npatch_size: [32, 32, 32]\nchannels: [8, 16]\nseeds: [3, 4]\n")
    settings = train.load_settings(path)
    assert settings == dataclasses.replace(train.TrainSettings(), task="change", steps=20, patch_size=(32, 32, 32),
                                           channels=(8, 16), seeds=(3, 4))
    assert isinstance(settings.patch_size, tuple) and isinstance(settings.seeds, tuple)
    assert train.load_settings(path, steps=7, seed=None).steps == 7


def test_load_settings_refuses_an_unknown_key_naming_the_file(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("task: per_visit\nstep: 20\n")
    with pytest.raises(ConfigError) as caught:
        train.load_settings(path)
    assert str(path) in str(caught.value) and "'step'" in str(caught.value)


@pytest.mark.parametrize("source", ["file", "override"])
def test_load_settings_refuses_an_unknown_task(tmp_path, source):
    path = tmp_path / "train.yaml"
    path.write_text("task: segmentation\n" if source == "file" else "steps: 5\n")
    with pytest.raises(ConfigError) as caught:
        train.load_settings(path, task=None if source == "file" else "lesions")
    assert str(path) in str(caught.value) and "per_visit" in str(caught.value)


def test_load_settings_refuses_unreadable_yaml(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("task: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        train.load_settings(path)
    assert str(path) in str(caught.value)


def test_load_settings_refuses_a_value_of_the_wrong_type(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("steps: ten\n")
    with pytest.raises(ConfigError):
        train.load_settings(path)


def test_training_synth_settings_use_every_site_and_confluent_lesions():
    from msvol.synth.patients import SITES

    weights = train.TRAINING_SYNTH.site_weights
    assert len(weights) == len(SITES) and sum(weights) == pytest.approx(1.0)
    assert all(weight > 0 for weight in weights)
    assert 0 < train.TRAINING_SYNTH.confluent_fraction < 1


def test_class_indices_sample_background_in_the_head_and_list_every_class():
    rng = np.random.default_rng(0)
    classes = np.zeros((10, 10, 10), np.uint8)
    classes[2:4, 2:4, 2:4] = 1
    classes[6, 6, 6] = 2
    head = np.zeros((10, 10, 10), bool)
    head[1:9, 1:9, 1:9] = True
    background, first, second = train._class_indices(classes, rng, head)
    assert set(background) <= set(np.flatnonzero(head & (classes == 0)))
    assert len(set(background)) == len(background) == min(train.BACKGROUND_SAMPLE_SIZE, 8 ** 3 - 9)
    np.testing.assert_array_equal(first, np.flatnonzero(classes == 1))
    np.testing.assert_array_equal(second, [np.ravel_multi_index((6, 6, 6), classes.shape)])
