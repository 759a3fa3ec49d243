"""Command line: parse, call pipeline/ops/synth, map errors to exit codes.

Exit codes: 0 success, 2 bad input or usage (including subjects set aside for bad input),
1 internal error (a traceback is written to a crash file under the output folder), and for `run`
75 when another run holds the claim on every patient with work left.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from msvol import __version__
from msvol.cli_cohort import COMMANDS as COHORT_COMMANDS
from msvol.cli_review import COMMANDS as REVIEW_COMMANDS
from msvol.config import BatchSettings

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT = 0, 1, 2
EXIT_HELD = 75  # sysexits.h EX_TEMPFAIL: `msvol run` found every patient left claimed by another run


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
              help="Store of exam states, claims and findings (default: SQLite at OUT/msvol.db; on NFS use "
                   "postgresql://..., see docs/OPERATIONS.md).")
@click.option("--settle-minutes", type=click.FloatRange(min=0), default=BatchSettings.settle_minutes,
              show_default=True, envvar="MSVOL_SETTLE_MINUTES", show_envvar=True,
              help="An exam is analysed once no file in it changed for this long (an export still being copied "
                   "is left for the next run); 0 for data known to be complete.")
@click.option("--retries", type=click.IntRange(min=0), default=BatchSettings.retries, show_default=True,
              help="A failed exam is tried again by at most this many later runs, then quarantined.")
@click.option("--lease-minutes", type=click.FloatRange(min=0, min_open=True), default=BatchSettings.lease_minutes,
              show_default=True,
              help="A claim whose heartbeat is older than this is taken over (its run is presumed dead).")
@click.option("--retry-exam", "retry_exams", metavar="ID", multiple=True,
              help="Analyse this exam (sub-XX/ses-YY) or patient (sub-XX) again, clearing its quarantine, "
                   "refusal and tries; repeatable.")
@click.option("--log-json", "log_json", type=click.Path(dir_okay=False, path_type=Path),
              help="Append one JSON event per exam state change to this file (pseudonyms only).")
@click.option("--workers", type=click.IntRange(min=1), metavar="N",
              help="Run N patients at a time on a Dask LocalCluster of N worker processes on this machine (the "
                   "cores shared out between them). Default: one after the other in this process.")
@click.option("--scheduler", "scheduler_address", metavar="ADDRESS",
              help="Submit the patients to the Dask scheduler at ADDRESS (e.g. tcp://10.0.0.5:8786; dask-jobqueue on "
                   "SLURM, docs/OPERATIONS.md). The workers must see INPUT, OUT and the store (--db postgresql://).")
@click.option("--worker-memory", default=BatchSettings.worker_memory, show_default=True,
              help="Memory limit of each --workers process (Dask restarts a worker above it).")
@click.option("--quiet", is_flag=True, help="Print only the summary.")
def run(input_path, out_dir, force, protocol, keep_identifiers, model_dir, change_model_dir, db_url, settle_minutes,
        retries, lease_minutes, retry_exams, log_json, workers, scheduler_address, worker_memory, quiet):
    """Analyse every new exam in INPUT and write reports to OUT; a cron job may run it every few minutes.

    INPUT is a BIDS dataset, one sub-* folder, or a folder of DICOM exams (a PACS export; any
    layout, several patients allowed). DICOM subjects are named by pseudonym; the link to the
    PatientID is kept in OUT/private/pseudonyms.tsv (readable by the owner only). Each exam is
    analysed once, also when several runs share INPUT and OUT (docs/OPERATIONS.md).

    Exit codes: 0 all done or nothing new, 2 an exam or subject refused (bad input), 1 internal error,
    75 another run holds the claim on every patient with work left.
    """
    from msvol.cli_progress import RunDisplay
    from msvol.config import load_params
    from msvol.errors import MsvolError
    from msvol.ingest.protocol import load_protocol
    from msvol.ops import batch, events

    display = RunDisplay(quiet)
    log = None
    try:
        params, rules = load_params(protocol), load_protocol(protocol)
        settings = BatchSettings(settle_minutes=settle_minutes, retries=retries, lease_minutes=lease_minutes,
                                 retry_exams=frozenset(retry_exams))
        cluster = None
        if workers is not None or scheduler_address is not None:
            from msvol.ops.scheduler import Cluster

            cluster = Cluster(workers, scheduler_address, worker_memory)
        log = events.JsonLog(log_json) if log_json else None

        def on_event(event):
            display.event(event)
            if log is not None:
                log(event)

        summary = batch.run_batch(input_path, out_dir, params, force=force, model_dir=model_dir,
                                  change_model_dir=change_model_dir, rules=rules, keep_identifiers=keep_identifiers,
                                  progress=display.progress, db_url=db_url, settings=settings, on_event=on_event,
                                  cluster=cluster)
    except MsvolError as exc:
        display.close()
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_INPUT)
    except Exception as exc:
        display.close()
        if isinstance(exc, OSError) and exc.filename:  # e.g. OUT or the --log-json file cannot be written
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_INPUT)
        sys.exit(_internal_error(out_dir, "the run"))
    finally:
        if log is not None:
            log.close()
    display.close()
    _print_summary(summary, settle_minutes)
    sys.exit(run_exit_code(summary))


def run_exit_code(summary) -> int:
    """0 all done or nothing new; 1 an internal error (a crash or a new quarantine); 2 bad input (a subject
    set aside or an exam refused); 75 (EX_TEMPFAIL: try later) another run holds every patient left."""
    if summary.crashed or summary.quarantined:
        return EXIT_INTERNAL
    if summary.set_aside or summary.refused:
        return EXIT_INPUT
    return EXIT_HELD if summary.held and not summary.done else EXIT_OK


def _print_summary(summary, settle_minutes: float) -> None:
    for warning in summary.warnings:
        click.echo(f"warning: {warning}", err=True)
    for subject, stale in summary.taken_over:
        click.echo(f"warning: {subject}: took over the {stale}", err=True)
    for folder in summary.done:
        click.echo(f"report: {folder / 'report.html'}")
    for name in summary.skipped:
        click.echo(f"skipped {name}: {summary.skip_reasons.get(name) or 'result exists (use --force to redo)'}")
    for exam, minutes in summary.settling:
        click.echo(f"settling {exam}: last change {minutes:.1f} min ago (--settle-minutes {settle_minutes:g}); "
                   f"left for the next run")
    for name, holder in summary.held:
        click.echo(f"held {name}: another run works on it ({holder})", err=True)
    for name, reason in summary.set_aside:
        click.echo(f"set aside {name}: {reason}", err=True)
    for exam, reason in summary.refused:
        click.echo(f"refused {exam}: {reason}", err=True)
    for name, crash in summary.crashed:
        click.echo(f"internal error in {name}; traceback: {crash}", err=True)
    for name, crash, reason in summary.quarantined:
        click.echo(f"quarantined {name}: {reason}" + (f"; traceback: {crash}" if crash else ""), err=True)
    if summary.still_quarantined:
        click.echo(f"{len(summary.still_quarantined)} exam(s) stay quarantined from earlier runs "
                   f"({', '.join(summary.still_quarantined[:5])}{', ...' if len(summary.still_quarantined) > 5 else ''}"
                   f"); clear with --retry-exam ID (docs/OPERATIONS.md)", err=True)
    counts = summary.counts()
    click.echo("summary: " + ", ".join(f"{counts[key]} {label}" for key, label in (
        ("done", "done"), ("skipped", "up to date"), ("settling", "exam(s) settling"), ("held", "held by another run"),
        ("set_aside", "bad input"), ("refused", "exam(s) refused"), ("failed", "failed"),
        ("quarantined", "quarantined"))), err=True)


def _internal_error(out_dir: Path, what: str) -> int:
    """One line on stderr, the traceback in a crash file under OUT/crashes/ (or the temp folder); EXIT_INTERNAL."""
    import datetime as dt
    import tempfile
    import traceback

    text, name = traceback.format_exc(), f"run-{dt.datetime.now():%Y%m%dT%H%M%S}.txt"
    for folder in (Path(out_dir) / "crashes", Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            crash = folder / name
            partial = crash.with_name(f".{name}.partial")
            partial.write_text(text)
            partial.replace(crash)
            break
        except OSError:
            crash = None
    last = text.strip().splitlines()[-1]
    click.echo(f"internal error in {what}: {last}" + (f"; traceback: {crash}" if crash else ""), err=True)
    return EXIT_INTERNAL


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
@click.option("--seed", type=int, help="Seed of the first patient (then seed+1, ...); default 0, and 4100 (the check "
                                      "set) with --checkset; another seed gives another set of its design.")
@click.option("--intensity-scale", default=1000.0, show_default=True,
              help="Stored value of intensity 1.0; below ~250 images are stored as bytes (smaller files).")
@click.option("--noise", nargs=2, type=float, default=(0.012, 0.025), show_default=True,
              help="Range of the noise level, as a fraction of the WM intensity, drawn per visit.")
@click.option("--contrast", type=click.Choice(["standard", "shifted"]), default="standard", show_default=True,
              help="Tissue intensities; 'shifted' lies outside the models' training ranges (robustness tests).")
@click.option("--checkset", is_flag=True,
              help="Write the independent check set instead (msvol.synth.checkset: 7 subjects of 2 visits drawn from "
                   "--seed, made by a second method; the other options do not apply; subjects already there are kept).")
@click.option("--quiet", is_flag=True, help="Print only the output folder.")
def synth(out_dir, subjects, visits, seed, intensity_scale, noise, contrast, checkset, quiet):
    """Write synthetic patients with known truth as a BIDS dataset in OUT (truth in OUT/derivatives/truth)."""
    from msvol.synth import patients as generator

    if checkset:
        from msvol.synth import checkset as check_set

        check_set.write_checkset(out_dir, seed=check_set.CHECKSET_SEED if seed is None else seed, log=_echo(quiet))
        click.echo(str(out_dir))
        return
    if visits < 1 or subjects < 1:
        raise click.BadParameter("--subjects and --visits must be at least 1")
    seed = 0 if seed is None else seed
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


for _command in (*REVIEW_COMMANDS, *COHORT_COMMANDS):
    main.add_command(_command)
