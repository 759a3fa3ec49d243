"""Many patients: run each subject in turn; one broken exam never stops the batch.

Each subject is either done (its folder written), skipped (a finished result is already there
and --force was not given), set aside for bad input (with the reason), or failed with an
internal error (a crash file with the traceback goes under OUT/crashes/).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import traceback
from pathlib import Path

from msvol import ingest, pipeline
from msvol.config import Params
from msvol.errors import MsvolError, OutputExistsError


@dataclasses.dataclass
class BatchSummary:
    done: list[Path] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    set_aside: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (subject folder, reason)
    crashed: list[tuple[str, Path]] = dataclasses.field(default_factory=list)  # (subject folder, crash file)


def run_batch(input_path: Path, out_dir: Path, params: Params, *, force: bool = False,
              model_dir: Path | None = None, change_model_dir: Path | None = None,
              progress: pipeline.Progress = lambda message: None) -> BatchSummary:
    """Run every subject found under `input_path` (a BIDS root or one sub-* folder)."""
    subjects = ingest.find_subjects(input_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = BatchSummary()
    resources = None
    for position, subject_dir in enumerate(subjects, 1):
        name = subject_dir.name
        progress(f"[{position}/{len(subjects)}] {name}")
        if (out_dir / name).exists() and not force:
            summary.skipped.append(name)
            progress(f"{name}: a result is already there; skipped (use --force to redo)")
            continue
        try:
            patient = ingest.load_patient(subject_dir, params.ingest)
            resources = resources or pipeline.Resources.load(model_dir, change_model_dir)
            summary.done.append(pipeline.run_patient(patient, out_dir, params, resources, force=force,
                                                     progress=progress))
        except OutputExistsError:
            summary.skipped.append(name)
        except MsvolError as exc:
            summary.set_aside.append((name, str(exc)))
            progress(f"{name}: set aside: {exc}")
        except Exception:  # an internal error in one subject must not sink the batch
            crash = out_dir / "crashes" / f"{name}-{dt.datetime.now():%Y%m%dT%H%M%S}.txt"
            crash.parent.mkdir(parents=True, exist_ok=True)
            crash.write_text(traceback.format_exc())
            summary.crashed.append((name, crash))
            progress(f"{name}: internal error; traceback in {crash}")
    return summary
