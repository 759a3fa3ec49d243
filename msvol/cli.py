"""Command line: parse, call pipeline/batch/synth, map errors to exit codes.

Exit codes: 0 success, 2 bad input or usage (including subjects set aside for bad input),
1 internal error (a traceback is written to a crash file under the output folder).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from msvol import __version__
from msvol.cli_review import COMMANDS as REVIEW_COMMANDS

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT = 0, 1, 2


def _write_json(path: Path, data) -> None:
    """Write `data` as JSON atomically: a temporary file beside `path`, then a rename."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_text(json.dumps(data, indent=2))
    temporary.replace(path)


def _echo(quiet: bool):
    def progress(message: str) -> None:
        if not quiet:
            click.echo(message, err=True)
    return progress


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="msvol")
def main():
    """msvol: longitudinal MRI monitoring of multiple sclerosis (research software, not a medical device)."""


@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder; each subject's results go to OUT/sub-XX/.")
@click.option("--force", is_flag=True, help="Redo subjects whose results already exist (replaced atomically).")
@click.option("--protocol", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Protocol YAML: series rules for DICOM and threshold overrides (default: the shipped copy of "
                   "protocols/ms_standard.yaml).")
@click.option("--keep-identifiers", is_flag=True,
              help="Name DICOM subjects by PatientID instead of a pseudonym (identifiers then appear in outputs).")
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Another per-visit lesion model: a MONAI bundle folder (see docs/MODEL.md).")
@click.option("--change-model", "change_model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Another two-visit change model: a MONAI bundle folder.")
@click.option("--db", "db_url", metavar="URL",
              help="Findings store the reports are registered in (default: SQLite at OUT/msvol.db).")
@click.option("--quiet", is_flag=True, help="Print only the summary.")
def run(input_path, out_dir, force, protocol, keep_identifiers, model_dir, change_model_dir, db_url, quiet):
    """Analyse every subject in INPUT and write reports to OUT.

    INPUT is a BIDS dataset, one sub-* folder, or a folder of DICOM exams (a PACS export; any
    layout, several patients allowed). DICOM subjects are named by pseudonym; the link to the
    PatientID is kept in OUT/private/pseudonyms.tsv (readable by the owner only).
    """
    from msvol import batch
    from msvol.config import load_params
    from msvol.errors import MsvolError
    from msvol.ingest.protocol import load_protocol

    try:
        params, rules = load_params(protocol), load_protocol(protocol)
        summary = batch.run_batch(input_path, out_dir, params, force=force, model_dir=model_dir,
                                  change_model_dir=change_model_dir, rules=rules, keep_identifiers=keep_identifiers,
                                  progress=_echo(quiet), db_url=db_url)
    except MsvolError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_INPUT)
    for warning in summary.warnings:
        click.echo(f"warning: {warning}", err=True)
    for folder in summary.done:
        click.echo(f"report: {folder / 'report.html'}")
    for name in summary.skipped:
        click.echo(f"skipped {name}: result exists (use --force to redo)")
    for name, reason in summary.set_aside:
        click.echo(f"set aside {name}: {reason}", err=True)
    for name, crash in summary.crashed:
        click.echo(f"internal error in {name}; traceback: {crash}", err=True)
    sys.exit(EXIT_INTERNAL if summary.crashed else EXIT_INPUT if summary.set_aside else EXIT_OK)


@main.command()
@click.argument("exams", metavar="EXAM...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--protocol", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Protocol YAML (default: the shipped copy of protocols/ms_standard.yaml).")
@click.option("--keep-identifiers", is_flag=True, help="Show PatientIDs instead of 'patient 1, 2, ...'.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write every decision and check as JSON here.")
def check(exams, protocol, keep_identifiers, json_path):
    """Conformance of DICOM exams with the protocol: which series would be used, and every rule's result.

    Reads headers only and writes nothing but --json. Exit code 0 when every exam is usable,
    2 when any exam would be refused.
    """
    from msvol.config import load_params
    from msvol.errors import MsvolError
    from msvol.ingest import dicom as ingest_dicom
    from msvol.ingest.protocol import load_protocol

    try:
        params, rules = load_params(protocol), load_protocol(protocol)
        inventory = ingest_dicom.scan(list(exams), rules, params.ingest)
    except MsvolError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_INPUT)
    for warning in inventory.skipped:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"protocol: {rules.source}")
    everything, refused = [], 0
    for number, (patient_id, patient_exams) in enumerate(sorted(inventory.patients.items()), 1):
        label = f"patient {patient_id}" if keep_identifiers else f"patient {number}"
        for exam in patient_exams:
            click.echo(ingest_dicom.render_exam(exam, label))
            refused += exam.refusal is not None
            everything.append(ingest_dicom.exam_record(exam, label))
    click.echo(f"{len(everything)} exam(s): {len(everything) - refused} usable, {refused} refused"
               + (f"; {len(inventory.skipped)} file(s) skipped" if inventory.skipped else ""))
    if json_path:
        _write_json(json_path, {"protocol": str(rules.source), "exams": everything,
                                "skipped_files": list(inventory.skipped)})
    sys.exit(EXIT_INPUT if refused else EXIT_OK)


@main.command()
@click.argument("out_dir", metavar="OUT", type=click.Path(path_type=Path))
@click.option("--subjects", default=1, show_default=True, help="How many synthetic patients.")
@click.option("--visits", default=3, show_default=True, help="Visits per patient (>= 1).")
@click.option("--seed", default=0, show_default=True, help="Seed of the first patient (then seed+1, ...).")
@click.option("--intensity-scale", default=1000.0, show_default=True,
              help="Stored value of intensity 1.0; below ~250 images are stored as bytes (smaller files).")
@click.option("--noise", nargs=2, type=float, default=(0.012, 0.025), show_default=True,
              help="Range of the noise level, as a fraction of the WM intensity, drawn per visit.")
@click.option("--contrast", type=click.Choice(["standard", "shifted"]), default="standard", show_default=True,
              help="Tissue intensities; 'shifted' lies outside the models' training ranges (robustness tests).")
@click.option("--quiet", is_flag=True, help="Print only the output folder.")
def synth(out_dir, subjects, visits, seed, intensity_scale, noise, contrast, quiet):
    """Write synthetic patients with known truth as a BIDS dataset in OUT (truth in OUT/derivatives/truth)."""
    from msvol.synth import patients as generator

    if visits < 1 or subjects < 1:
        raise click.BadParameter("--subjects and --visits must be at least 1")
    settings = generator.SynthSettings(n_visits=visits, intensity_scale=intensity_scale, noise_fraction=tuple(noise),
                                       contrast=contrast)
    progress = _echo(quiet)
    for index in range(subjects):
        subject = f"{index + 1:02d}"
        progress(f"generating sub-{subject} (seed {seed + index})")
        generator.write_patient(generator.generate_patient(seed + index, settings), out_dir, subject)
    click.echo(str(out_dir))


@main.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Training settings (YAML); each shipped bundle has its own in configs/train.yaml.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for checkpoints and the loss curve; the bundle goes to OUT/bundle.")
@click.option("--cache", "cache_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for the rendered synthetic label maps (reused when present).")
@click.option("--task", type=click.Choice(["per_visit", "change"]), help="Which model (overrides the config).")
@click.option("--steps", type=int, help="Optimiser steps (overrides the config).")
@click.option("--seed", type=int, help="Seed of sampling and augmentation (overrides the config).")
def train(config_path, out_dir, cache_dir, task, steps, seed):
    """Train a lesion model on domain-randomised synthetic data; resumes from OUT/checkpoint.pt."""
    from msvol.errors import MsvolError
    from msvol.training import train as trainer

    try:
        settings = trainer.load_settings(config_path, task=task, steps=steps, seed=seed)
        folder = trainer.train(out_dir, cache_dir, settings, log=lambda message: click.echo(message, err=True))
    except MsvolError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_INPUT)
    click.echo(str(folder))


@main.command()
@click.option("--pred", "pred_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="msvol output folder (OUT of msvol run).")
@click.option("--truth", "truth_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Truth: an msvol synth dataset, or label maps laid out like OUT (see docs/MODEL.md).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the full result as JSON here.")
def evaluate(pred_dir, truth_dir, json_path):
    """Lesion-wise, new-lesion and PBVC accuracy of msvol's output against truth label maps."""
    from msvol import evaluate as evaluation
    from msvol.errors import MsvolError

    try:
        result = evaluation.evaluate(pred_dir, truth_dir)
    except MsvolError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_INPUT)
    if json_path:
        _write_json(json_path, result)
    click.echo(evaluation.render_table(result), nl=False)


for _command in REVIEW_COMMANDS:
    main.add_command(_command)
