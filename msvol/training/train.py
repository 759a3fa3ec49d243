"""Train msvol's two lesion models on domain-randomised synthetic data (msvol.synth.patients label maps).

Tasks:
- per_visit: lesion segmentation of one visit from [FLAIR, T1] (T1 dropped at random, so the
  same network serves the FLAIR-only fallback);
- change: new or enlarged lesion tissue at the follow-up, from [FLAIR, FLAIR, T1, T1] of two
  aligned visits (baseline first).

Training patients are rendered once as tissue fraction maps (`render_label_cases`, cached as
compressed arrays); every patch then gets a new random contrast and acquisition
(msvol.training.randomise). Settings come from a YAML file (`load_settings`); the run is seeded,
checkpoints every `checkpoint_every` steps, resumes from its checkpoint when called again with
the same settings, and writes loss.csv. The result is a MONAI bundle (msvol.models.bundle).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from msvol.errors import ConfigError
from msvol.models import bundle
from msvol.synth.patients import SynthSettings, generate_label_maps

TASKS = ("per_visit", "change")
# The training generator: more sites (infratentorial), confluent lesions and more new lesions
# per interval than the default patient, sizes 10-3000 mm3 (issue 3).
TRAINING_SYNTH = SynthSettings(n_visits=3, site_weights=(0.35, 0.3, 0.2, 0.15), confluent_fraction=0.15,
                               n_new_per_interval=(3, 6), n_enlarging_per_interval=(1, 3),
                               new_lesion_volume_mm3=(10.0, 1500.0))
# The from-scratch recipes of earlier bundle versions; a shipped bundle's own configs/train.yaml is
# the last stage (3.0.0: a fine-tuning of the 2.0 recipe's result; `make train` runs both).
RECIPES = Path(__file__).parent / "recipes"
BRAIN_SAMPLE_SIZE = 20000  # brain voxels kept per visit to normalise rendered patches by the brain median
BACKGROUND_SAMPLE_SIZE = 50000  # head voxels kept per case as candidate centres of background patches


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    task: str = "per_visit"
    seeds: tuple[int, ...] = tuple(range(1000, 1012))  # training patients; evaluation uses others
    steps: int = 1200  # the shipped bundles (docs/MODEL.md)
    patch_size: tuple[int, int, int] = (48, 48, 48)
    batch_size: int = 4
    learning_rate: float = 2e-3
    seed: int = 0
    checkpoint_every: int = 100
    channels: tuple[int, ...] = (16, 32, 64, 128)
    # Fine-tuning (issue 12): start from this bundle's weights ("" = from scratch), and the lesion
    # intensity ranges relative to white matter (randomise.FLAIR_RANGES / T1_RANGES["lesion"] when empty), and
    # the fraction of samples whose FLAIR lesion comes from faint_flair_lesion_range instead (0: none).
    init_bundle: str = ""
    flair_lesion_range: tuple[float, ...] = ()
    t1_lesion_range: tuple[float, ...] = ()
    faint_fraction: float = 0.0
    faint_flair_lesion_range: tuple[float, ...] = ()
    # Other ranges for the tissues named, {tissue: [low, high]} relative to white matter (randomise.FRACTION_CHANNELS).
    flair_tissue_ranges: dict = dataclasses.field(default_factory=dict)
    t1_tissue_ranges: dict = dataclasses.field(default_factory=dict)
    # What the bundle calls itself: its version and the changelog line of this run (carried forward
    # after the init bundle's changelog).
    version: str = "2.0.0"
    change_note: str = "domain-randomised training on msvol synth label maps (issue 3)"


def load_settings(path: Path | None, **overrides) -> TrainSettings:
    """TrainSettings from a YAML file (keys = field names), then `overrides` (None values ignored)."""
    import yaml

    values = {}
    if path is not None:
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read the training config ({exc})") from exc
        known = {field.name for field in dataclasses.fields(TrainSettings)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown training settings {unknown}; known: {sorted(known)}")
    values.update({key: value for key, value in overrides.items() if value is not None})
    values = {key: tuple(value) if isinstance(value, list) else value for key, value in values.items()}
    source = path or "training settings"
    defaults = TrainSettings()
    for key, value in values.items():
        expected = type(getattr(defaults, key))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            values[key] = value = float(value)
        if not isinstance(value, expected) or isinstance(value, bool):
            raise ConfigError(f"{source}: '{key}' must be {expected.__name__}, got {value!r}")
    settings = TrainSettings(**values)
    if settings.task not in TASKS:
        raise ConfigError(f"{source}: task must be one of {TASKS}, not {settings.task!r}")
    if not 0 <= settings.faint_fraction <= 1 or (settings.faint_fraction and len(settings.faint_flair_lesion_range) != 2):
        raise ConfigError(f"{source}: faint_fraction must lie in 0-1 and, when above 0, come with a "
                          f"faint_flair_lesion_range of two numbers (got {settings.faint_fraction!r}, "
                          f"{list(settings.faint_flair_lesion_range)})")
    return settings


def render_label_cases(seeds, cache_dir: Path, synth: SynthSettings = TRAINING_SYNTH) -> list[Path]:
    """Render each seed's label maps to `cache_dir` once (reused when present); returns the files."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in seeds:
        path = cache_dir / f"labelmaps-{seed}.npz"
        if not path.exists():
            maps = generate_label_maps(seed, synth)
            arrays = {}
            for index, visit in enumerate(maps["visits"]):
                arrays[f"fractions_{index}"] = visit["fractions"]
                arrays[f"labels_{index}"] = visit["labels"]
                arrays[f"brain_{index}"] = visit["brain"]
            fates = {f"{a}-{b}": {str(k): v for k, v in fates.items()} for (a, b), fates in maps["fates"].items()}
            temporary = path.with_suffix(".partial.npz")
            np.savez_compressed(temporary, fates=json.dumps(fates), **arrays)
            temporary.replace(path)
        paths.append(path)
    return paths


def _class_indices(classes: np.ndarray, rng: np.random.Generator, head: np.ndarray) -> list[np.ndarray]:
    """Flat voxel indices per class for RandCropByLabelClassesd; background is a sample of head voxels."""
    background = np.flatnonzero(head & (classes == 0))
    indices = [rng.choice(background, min(BACKGROUND_SAMPLE_SIZE, background.size), replace=False)]
    for value in range(1, int(classes.max()) + 1):
        indices.append(np.flatnonzero(classes == value))
    return indices


def _brain_sample(fractions: np.ndarray, brain: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    voxels = np.flatnonzero(brain)
    picks = rng.choice(voxels, min(BRAIN_SAMPLE_SIZE, voxels.size), replace=False)
    return fractions.reshape(fractions.shape[0], -1)[:, picks]


def load_cases(paths, task: str, seed: int) -> list[dict]:
    """Training items for `task` from cached label maps (visits for per_visit, visit pairs for change)."""
    rng = np.random.default_rng(seed)
    items = []
    for path in paths:
        with np.load(path) as stored:
            case = {key: stored[key] for key in stored.files}
        visits = sorted(int(key.split("_")[1]) for key in case if key.startswith("fractions_"))
        head = {v: case[f"fractions_{v}"].sum(axis=0) > 128 for v in visits}
        samples = {v: _brain_sample(case[f"fractions_{v}"], case[f"brain_{v}"], rng) for v in visits}
        if task == "per_visit":
            for v in visits:
                lesion = (case[f"labels_{v}"] > 0).astype(np.uint8)
                items.append({"fractions": case[f"fractions_{v}"], "brain_sample": samples[v], "label": lesion[None],
                              "label_classes": lesion[None],
                              "class_indices": _class_indices(lesion, rng, head[v])})
            continue
        fates = json.loads(str(case["fates"]))
        for pair, pair_fates in fates.items():
            a, b = (int(v) for v in pair.split("-"))
            active = [int(k) for k, fate in pair_fates.items() if fate in ("new", "enlarging")]
            followup = case[f"labels_{b}"]
            change = (np.isin(followup, active) & (case[f"labels_{a}"] == 0)).astype(np.uint8)
            classes = np.where(change > 0, 2, (followup > 0) | (case[f"labels_{a}"] > 0)).astype(np.uint8)
            items.append({"fractions_a": case[f"fractions_{a}"], "fractions_b": case[f"fractions_{b}"],
                          "brain_sample_a": samples[a], "brain_sample_b": samples[b], "label": change[None],
                          "label_classes": classes[None], "class_indices": _class_indices(classes, rng, head[b])})
    return items


def train(out_dir: Path, cache_dir: Path, settings: TrainSettings = TrainSettings(), *, log=print,
          cases: list[dict] | None = None) -> Path:
    """Train `settings.task`, checkpointing to `out_dir`; writes the bundle to out_dir/bundle.

    `cases` replaces the rendered training patients (tests use tiny hand-made ones). An
    interrupted run resumes from its last checkpoint when called again with the same settings.
    """
    import torch
    from monai.data import DataLoader, Dataset
    from monai.losses import DiceCELoss
    from monai.utils import set_determinism

    from msvol.training.randomise import training_transforms

    out_dir.mkdir(parents=True, exist_ok=True)
    set_determinism(settings.seed)
    if cases is None:
        began = time.time()
        cases = load_cases(render_label_cases(settings.seeds, cache_dir), settings.task, settings.seed)
        log(f"{len(cases)} training cases ready in {time.time() - began:.0f} s")
    architecture = bundle.architecture(settings.task, settings.channels)
    network = bundle.build_network(architecture)
    if settings.init_bundle:
        network.load_state_dict(bundle.load_bundle(Path(settings.init_bundle), settings.task).network.state_dict())
        log(f"weights from {settings.init_bundle}")
    optimizer = torch.optim.AdamW(network.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings.learning_rate, total_steps=settings.steps)
    # Dice over the whole batch: per-sample Dice on lesion-free patches rewards over-segmentation.
    loss_function = DiceCELoss(sigmoid=True, batch=True)
    checkpoint_path = out_dir / "checkpoint.pt"
    start = 0
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, weights_only=False)
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = state["step"]
        log(f"resumed from step {start}")
    transform = training_transforms(settings.task, settings.patch_size, settings.batch_size,
                                    flair_lesion_range=settings.flair_lesion_range or None,
                                    t1_lesion_range=settings.t1_lesion_range or None,
                                    faint_fraction=settings.faint_fraction,
                                    faint_flair_lesion_range=settings.faint_flair_lesion_range or None,
                                    flair_tissue_ranges=settings.flair_tissue_ranges or None,
                                    t1_tissue_ranges=settings.t1_tissue_ranges or None)
    transform.set_random_state(seed=settings.seed + start)  # a resumed run continues with fresh draws
    sampler = torch.utils.data.RandomSampler(range(len(cases)), replacement=True,
                                             num_samples=max(settings.steps - start, 1),
                                             generator=torch.Generator().manual_seed(settings.seed + start))
    loader = DataLoader(Dataset(cases, transform), batch_size=1, sampler=sampler, num_workers=0)
    curve = out_dir / "loss.csv"
    began = time.time()
    network.train()
    for step, batch in zip(range(start, settings.steps), loader):
        optimizer.zero_grad()
        loss = loss_function(network(batch["image"].float()), batch["label"].float())
        loss.backward()
        optimizer.step()
        scheduler.step()
        with curve.open("a", newline="") as handle:
            csv.writer(handle).writerow([step + 1, f"{loss.item():.5f}", f"{time.time() - began:.1f}"])
        if (step + 1) % settings.checkpoint_every == 0 or step + 1 == settings.steps:
            torch.save({"network": network.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "step": step + 1}, checkpoint_path)
            log(f"step {step + 1}/{settings.steps} loss {loss.item():.4f} ({time.time() - began:.0f} s)")
    return bundle.write_bundle(out_dir / "bundle", network, settings)
