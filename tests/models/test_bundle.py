"""Tests for models.bundle: the lesion networks' architecture, writing and loading MONAI bundles (offline,
refusals naming the file), and the shipped bundles. Tiny randomly initialised networks only.
"""

from __future__ import annotations

import hashlib
import json

import pytest

torch = pytest.importorskip("torch")

from msvol.errors import ModelError  # noqa: E402
from msvol.models import bundle  # noqa: E402
from msvol.training.train import RECIPES, TrainSettings, load_settings  # noqa: E402
from tests.builders import TINY_CHANNELS, save_bundle, tiny_network  # noqa: E402


# --- the networks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("task, channels", [("per_visit", 2), ("change", 4)])
def test_architecture_maps_the_task_channels_to_one_logit(task, channels):
    """A 1x1 head gives the logit: MONAI's UNet would instance-normalise a single output channel."""
    unet = bundle.architecture(task)["unet_def"]
    assert unet["in_channels"] == channels == len(bundle.CHANNELS[task])
    assert unet["out_channels"] == bundle.HEAD_CHANNELS
    assert len(unet["strides"]) == len(unet["channels"]) - 1
    with torch.no_grad():
        logits = tiny_network(task)(torch.zeros(1, channels, 32, 32, 32))
    assert tuple(logits.shape) == (1, 1, 32, 32, 32)


# --- bundles: writing and loading -----------------------------------------------------------------


@pytest.mark.parametrize("task", ["per_visit", "change"])
def test_bundle_round_trips_the_weights_exactly(tmp_path, task):
    network = tiny_network(task, seed=3)
    folder = save_bundle(tmp_path / "model", network, task)
    loaded = bundle.load_bundle(folder, task)
    assert loaded.folder == folder and not loaded.network.training
    assert loaded.metadata["msvol"]["role"] == task
    assert loaded.name == f"msvol-{task.replace('_', '-')}-unet-synth"
    saved, restored = network.state_dict(), loaded.network.state_dict()
    assert saved.keys() == restored.keys()
    for key in saved:
        assert torch.equal(saved[key], restored[key]), key
    with torch.no_grad():
        sample = torch.randn(1, len(bundle.CHANNELS[task]), 16, 16, 16, generator=torch.Generator().manual_seed(0))
        assert torch.equal(network(sample), loaded.network(sample))


@pytest.mark.parametrize("task", ["per_visit", "change"])
def test_bundle_is_readable_with_monai_alone(tmp_path, task):
    """A researcher needs only MONAI: ConfigParser builds network_def and the inferer, and the state dict fits."""
    from monai.bundle import ConfigParser
    from monai.inferers import SlidingWindowInferer

    folder = save_bundle(tmp_path / "model", tiny_network(task), task)
    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(folder / "models" / "model.pt", map_location="cpu", weights_only=True))
    assert network[0].in_channels == len(bundle.CHANNELS[task]) and network[-1].out_channels == 1
    assert isinstance(parser.get_parsed_content("inferer"), SlidingWindowInferer)
    metadata = json.loads((folder / "configs" / "metadata.json").read_text())
    image = metadata["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == len(bundle.CHANNELS[task])
    assert list(image["channel_def"].values()) == bundle.CHANNELS[task]
    assert metadata["network_data_format"]["outputs"]["pred"]["num_channels"] == 1
    for key in ("version", "monai_version", "pytorch_version", "intended_use", "data_source", "task"):
        assert metadata.get(key), f"metadata lacks '{key}'"
    assert "not a medical device" in metadata["intended_use"]


def test_bundle_train_yaml_records_the_settings(tmp_path):
    import yaml

    settings = TrainSettings(task="change", channels=TINY_CHANNELS, steps=7, seed=3)
    folder = bundle.write_bundle(tmp_path / "model", tiny_network("change"), settings)
    recorded = yaml.safe_load((folder / "configs" / "train.yaml").read_text())
    assert recorded["task"] == "change" and recorded["steps"] == 7 and recorded["seed"] == 3
    assert recorded["channels"] == list(TINY_CHANNELS)


def test_a_fine_tuned_bundle_keeps_the_changelog_and_names_its_starting_weights(tmp_path):
    first = bundle.write_bundle(tmp_path / "first", tiny_network(), TrainSettings(channels=TINY_CHANNELS))
    settings = TrainSettings(channels=TINY_CHANNELS, init_bundle=str(first), version="3.0.0", change_note="tuned")
    second = bundle.write_bundle(tmp_path / "second", tiny_network(), settings)
    metadata = json.loads((second / "configs" / "metadata.json").read_text())
    assert metadata["version"] == "3.0.0"
    assert list(metadata["changelog"]) == ["2.0.0", "3.0.0"] and metadata["changelog"]["3.0.0"] == "tuned"
    assert metadata["msvol"]["initialised_from"] == {
        "name": "msvol-per-visit-unet-synth", "version": "2.0.0",
        "model_sha256": hashlib.sha256((first / "models" / "model.pt").read_bytes()).hexdigest()}


# role -> (shipped version, the versions it was fine-tuned through); `make train` rebuilds each stage from a recipe
SHIPPED_LINEAGE = {"per_visit": ("3.0.0", ["2.0.0"]), "change": ("3.0.0", ["2.0.0"])}


@pytest.mark.parametrize("role", sorted(SHIPPED_LINEAGE))
def test_the_shipped_bundles_record_their_fine_tuning_and_their_recipes_load(role):
    version, earlier = SHIPPED_LINEAGE[role]
    folder, stem = bundle.SHIPPED[role], role.replace("_", "-")
    metadata = bundle.load_bundle(None, role).metadata
    assert metadata["version"] == version and list(metadata["changelog"]) == [*earlier, version]
    assert metadata["msvol"]["initialised_from"]["version"] == earlier[-1]
    shipped = load_settings(folder / "configs" / "train.yaml")
    assert shipped.version == version
    # each stage starts from the previous one's output where `make train` puts it; the first from scratch
    stages = [load_settings(RECIPES / f"{stem}-{release[:3]}.yaml") for release in earlier] + [shipped]
    assert [stage.version for stage in stages] == [*earlier, version] and stages[0].init_bundle == ""
    for previous, stage in zip(stages, stages[1:]):
        assert stage.init_bundle == f"build/train-{stem}-{previous.version[:3]}/bundle"


@pytest.mark.parametrize("part", ["configs/metadata.json", "configs/inference.json", "models/model.pt"])
def test_load_bundle_names_the_missing_file(tmp_path, part):
    folder = save_bundle(tmp_path / "model", tiny_network())
    (folder / part).unlink()
    with pytest.raises(ModelError) as caught:
        bundle.load_bundle(folder, "per_visit")
    assert str(folder / part) in str(caught.value)


def test_load_bundle_of_a_folder_that_is_not_a_bundle_names_what_is_needed(tmp_path):
    with pytest.raises(ModelError) as caught:
        bundle.load_bundle(tmp_path, "per_visit")
    assert "configs/metadata.json" in str(caught.value) and "models/model.pt" in str(caught.value)


@pytest.mark.parametrize("task, asked", [("per_visit", "change"), ("change", "per_visit")])
def test_load_bundle_refuses_a_bundle_of_the_other_role(tmp_path, task, asked):
    folder = save_bundle(tmp_path / "model", tiny_network(task), task)
    with pytest.raises(ModelError) as caught:
        bundle.load_bundle(folder, asked)
    message = str(caught.value)
    assert str(folder / "configs" / "metadata.json") in message
    assert repr(task) in message and repr(asked) in message


def test_load_bundle_refuses_metadata_without_a_role(tmp_path):
    folder = save_bundle(tmp_path / "model", tiny_network())
    path = folder / "configs" / "metadata.json"
    metadata = json.loads(path.read_text())
    del metadata["msvol"]
    path.write_text(json.dumps(metadata))
    with pytest.raises(ModelError, match="role"):
        bundle.load_bundle(folder, "per_visit")


def test_load_bundle_refuses_weights_that_do_not_fit_the_network_def(tmp_path):
    folder = save_bundle(tmp_path / "model", tiny_network())
    path = folder / "configs" / "inference.json"
    inference = json.loads(path.read_text())
    inference["unet_def"]["channels"] = [8, 16]
    path.write_text(json.dumps(inference))
    with pytest.raises(ModelError) as caught:
        bundle.load_bundle(folder, "per_visit")
    assert str(folder / "models" / "model.pt") in str(caught.value)


def test_load_bundle_refuses_metadata_that_is_not_json(tmp_path):
    folder = save_bundle(tmp_path / "model", tiny_network())
    path = folder / "configs" / "metadata.json"
    path.write_text("{not json")
    with pytest.raises(ModelError) as caught:
        bundle.load_bundle(folder, "per_visit")
    assert str(path) in str(caught.value) and "JSON" in str(caught.value)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_load_bundle_refuses_a_damaged_weights_file(tmp_path, damage):
    folder = save_bundle(tmp_path / "model", tiny_network())
    weights = folder / "models" / "model.pt"
    content = weights.read_bytes()
    weights.write_bytes(content[: len(content) // 2] if damage == "truncated" else b"not a checkpoint")
    with pytest.raises(ModelError) as caught:
        bundle.load_bundle(folder, "per_visit")
    assert str(weights) in str(caught.value)


# --- the shipped bundles --------------------------------------------------------------------------


@pytest.mark.skipif(not (bundle.SHIPPED["per_visit"] / "models" / "model.pt").exists(),
                    reason="trained bundles not yet shipped")
@pytest.mark.parametrize("role", ["per_visit", "change"])
def test_shipped_bundles_load_offline(role):
    model = bundle.load_bundle(None, role)
    assert model.folder == bundle.SHIPPED[role]
    assert model.metadata["msvol"]["role"] == role
    assert not model.network.training
    with torch.no_grad():
        logits = model.network(torch.zeros(1, len(bundle.CHANNELS[role]), 32, 32, 32))
    assert tuple(logits.shape) == (1, 1, 32, 32, 32)
    for key in ("name", "version", "intended_use", "data_source", "network_data_format", "changelog"):
        assert model.metadata.get(key), f"metadata lacks '{key}'"
    assert (model.folder / "configs" / "train.yaml").is_file()
