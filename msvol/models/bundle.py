"""msvol's models as MONAI bundles: build, write and load them offline.

Layout (MONAI bundle specification), one folder per model:
  configs/metadata.json   version, task, input/output contract (network_data_format), msvol role
  configs/inference.json  network_def (a MONAI UNet plus a 1x1 head) and a sliding-window inferer,
                          for monai.bundle.ConfigParser
  configs/train.yaml      the `msvol train` settings that produced the weights
  models/model.pt         the network's state dict
  training/loss.csv       the loss curve of that run (when present)
A researcher can load one with MONAI alone (ConfigParser, get_parsed_content("network_def"),
load_state_dict), retrain it with `msvol train --config configs/train.yaml`, or hand msvol
another folder of the same role with `msvol run --model` / `--change-model`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import shutil
from pathlib import Path

from msvol.errors import ModelError

MODELS_DIR = Path(__file__).parent
SHIPPED = {"per_visit": MODELS_DIR / "lesion_segmenter", "change": MODELS_DIR / "lesion_change"}
CHANNELS = {"per_visit": ["FLAIR", "T1w"],
            "change": ["FLAIR baseline", "FLAIR follow-up", "T1w baseline", "T1w follow-up"]}
OUTPUTS = {"per_visit": "lesion probability (sigmoid of the logit)",
           "change": "probability that the voxel is new or enlarged lesion tissue at the follow-up"}
NORMALISATION = "each channel divided by its median inside the brain mask; a missing T1 is all zeros"


@dataclasses.dataclass(frozen=True, eq=False)
class Bundle:
    network: object  # torch.nn.Module in eval mode
    metadata: dict
    folder: Path

    @property
    def name(self) -> str:
        return self.metadata.get("name", self.folder.name)


HEAD_CHANNELS = 8


def architecture(task: str, channels=(16, 32, 64, 128)) -> dict:
    """The network definition for `task`, in MONAI bundle config syntax (ConfigParser).

    A MONAI UNet (2 input channels per visit) whose top layer gives HEAD_CHANNELS feature maps,
    then a 1x1 convolution to one logit. The head matters: MONAI's UNet with a single output
    channel instance-normalises that channel, which forces every patch, lesion or not, to unit
    variance; the old model's background sat at probability ~0.3 because of it.
    """
    return {
        "imports": ["$import torch"],
        "unet_def": {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": len(CHANNELS[task]),
                     "out_channels": HEAD_CHANNELS, "channels": list(channels),
                     "strides": [2] * (len(channels) - 1), "num_res_units": 1, "norm": "instance"},
        "network_def": f"$torch.nn.Sequential(@unet_def, torch.nn.Conv3d({HEAD_CHANNELS}, 1, kernel_size=1))",
    }


def build_network(definition: dict):
    """Instantiate an `architecture` with MONAI's config parser (the same path MONAI's tools take)."""
    from monai.bundle import ConfigParser

    return ConfigParser(dict(definition)).get_parsed_content("network_def")


def write_bundle(folder: Path, network, settings) -> Path:
    """Write `network` (trained with TrainSettings `settings`) as a bundle in `folder`; returns it."""
    import monai
    import numpy
    import torch
    import yaml

    folder = Path(folder)
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(exist_ok=True)
    task = settings.task
    spec = architecture(task, settings.channels)
    changelog, provenance = {}, {}
    if settings.init_bundle:  # a fine-tuning run: keep the history, record the exact starting weights
        base = load_bundle(Path(settings.init_bundle), task)
        changelog = dict(base.metadata.get("changelog", {}))
        provenance = {"initialised_from": {"name": base.name, "version": base.metadata.get("version"),
                                           "model_sha256": weights_digest(base.folder)}}
    changelog[settings.version] = settings.change_note
    metadata = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "name": f"msvol-{task.replace('_', '-')}-unet-synth",
        "version": settings.version,
        "changelog": changelog,
        "monai_version": monai.__version__, "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__, "required_packages_version": {},
        "task": OUTPUTS[task], "description": "msvol lesion model; see docs/MODEL.md of msvol.",
        "authors": "msvol contributors", "copyright": "msvol contributors, open source",
        "data_source": "synthetic only: msvol.synth.patients label maps with random contrasts (msvol.training.randomise)",
        "data_type": "nibabel", "intended_use": "Research only; not validated on patient scans; not a medical "
                                                "device. Every finding awaits a radiologist's confirmation.",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "MR",
                                 "num_channels": len(CHANNELS[task]), "spatial_shape": [96, 96, 96],
                                 "dtype": "float32", "is_patch_data": True,
                                 "channel_def": {str(i): name for i, name in enumerate(CHANNELS[task])}}},
            "outputs": {"pred": {"type": "image", "format": "logits", "num_channels": 1,
                                 "spatial_shape": [96, 96, 96], "dtype": "float32", "is_patch_data": True,
                                 "channel_def": {"0": OUTPUTS[task]}}}},
        "msvol": {"role": task, "channels": CHANNELS[task], "normalisation": NORMALISATION, "spacing_mm": 1.0,
                  "trained_on": platform.processor() or platform.machine(), **provenance},
    }
    inference = {
        **spec,
        "device": "$torch.device('cpu')",
        "network": "$@network_def.to(@device)",
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [96, 96, 96], "sw_batch_size": 2,
                    "overlap": 0.25, "mode": "gaussian"},
    }
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    (folder / "configs" / "inference.json").write_text(json.dumps(inference, indent=2))
    def plain(value):  # YAML-safe: tuples (also inside the tissue-range dicts) as lists
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        return list(value) if isinstance(value, tuple) else value

    train_config = {key: plain(value) for key, value in dataclasses.asdict(settings).items()}
    (folder / "configs" / "train.yaml").write_text(yaml.safe_dump(train_config, sort_keys=False))
    torch.save(network.state_dict(), folder / "models" / "model.pt")
    curve = folder.parent / "loss.csv"
    if curve.exists():
        (folder / "training").mkdir(exist_ok=True)
        shutil.copyfile(curve, folder / "training" / "loss.csv")
    return folder


def weights_digest(folder: Path) -> str:
    """SHA-256 of a bundle's models/model.pt: names the exact weights a fine-tuning started from."""
    return hashlib.sha256((Path(folder) / "models" / "model.pt").read_bytes()).hexdigest()


def load_bundle(folder: Path | None, role: str) -> Bundle:
    """Load a bundle of `role` ('per_visit' or 'change'); the shipped one when `folder` is None.

    Raises ModelError naming the file when a part is missing, unreadable or of another role.
    """
    import torch
    from monai.bundle import ConfigParser

    folder = Path(folder) if folder is not None else SHIPPED[role]
    metadata_path = folder / "configs" / "metadata.json"
    inference_path = folder / "configs" / "inference.json"
    weights_path = folder / "models" / "model.pt"
    for path in (metadata_path, inference_path, weights_path):
        if not path.is_file():
            raise ModelError(f"{path}: bundle file missing; a msvol model bundle needs configs/metadata.json, "
                             f"configs/inference.json and models/model.pt")
    try:
        metadata = json.loads(metadata_path.read_text())
    except ValueError as exc:
        raise ModelError(f"{metadata_path}: not valid JSON ({exc})") from exc
    found = metadata.get("msvol", {}).get("role")
    if found != role:
        raise ModelError(f"{metadata_path}: this bundle's msvol role is {found!r}, but a {role!r} model is needed")
    try:
        parser = ConfigParser()
        parser.read_config(str(inference_path))
        network = parser.get_parsed_content("network_def")
        network.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    except Exception as exc:  # MONAI and torch raise many types for a bad config or weights file
        raise ModelError(f"{weights_path}: cannot load the model ({exc})") from exc
    network.eval()
    return Bundle(network, metadata, folder)
