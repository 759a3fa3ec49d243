"""The researcher's command: cohort tables and plots from the reports of an output folder (msvol.ops.cohort).

Exit codes as in cli.py: 0 every report read; 2 bad input (OUT missing, no report found, none readable)
or some report left out (the tables are still written from the others, and each one left out is listed
with its reason); 1 internal error (one line on stderr, the traceback in DIR/cohort-crash.txt).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT = 0, 1, 2


@click.command("cohort")
@click.argument("out_dir", metavar="OUT", type=click.Path(path_type=Path))
@click.option("--out", "dest", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the tables, cohort.html and cohort.json (default: OUT/cohort).")
@click.option("--protocol", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Protocol YAML whose atrophy cut-off (atrophy.pathological_annualized_pbvc_percent) to apply "
                   "(default: msvol's, -0.40 %/year).")
@click.option("--quiet", is_flag=True, help="Print only the page's path and what was left out.")
def cohort(out_dir, dest, protocol, quiet):
    """Cohort tables and plots from every OUT/sub-*/report.json.

    One row per visit, interval, lesion finding and patient (TSV with a JSON data dictionary, and
    Parquet), cohort.html with the plots, and cohort.json with the figures, versions and parameters.
    Where a subject was signed off, its confirmed figures (final/report.json) are used and marked.
    """
    import traceback

    from msvol.config import CohortParams, load_params
    from msvol.errors import MsvolError
    from msvol.ops import cohort as cohort_ops

    dest = out_dir / "cohort" if dest is None else dest
    # the effective command (defaults filled in), as a user would type it again
    command = ["msvol", "cohort", str(out_dir), "--out", str(dest),
               *(["--protocol", str(protocol)] if protocol else [])]
    try:
        cutoff = load_params(protocol).atrophy.pathological_annualized_pbvc_percent
        params = CohortParams()
        built = cohort_ops.build_cohort(out_dir, cutoff_percent=cutoff, params=params)
        files = cohort_ops.write_cohort(built, dest, command=command, cutoff_percent=cutoff, params=params)
    except MsvolError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_INPUT)
    except Exception as exc:  # noqa: BLE001 - the CLI's last line: one line here, the traceback in a file
        dest.mkdir(parents=True, exist_ok=True)
        crash = dest / "cohort-crash.txt"
        crash.write_text(traceback.format_exc())
        click.echo(f"internal error: {type(exc).__name__}: {exc}; traceback: {crash}", err=True)
        sys.exit(EXIT_INTERNAL)
    for item in built.skipped:
        click.echo(f"left out {item.path}: {item.reason}", err=True)
    for note in built.notes:
        click.echo(f"note: {note}", err=True)
    if not quiet:
        summary = built.summary
        click.echo(f"{summary['patients']} patients ({summary['confirmed']} confirmed, {summary['automated']} "
                   f"automated), {summary['visits']} visits, {summary['intervals']} intervals, "
                   f"{summary['lesion_findings']} lesion findings; {summary['skipped']} left out")
        for name in ("visits", "intervals", "lesions", "patients"):
            click.echo(f"table: {files[name + '.tsv']}")
        click.echo(f"record: {files['cohort.json']}")
    click.echo(f"cohort: {files['cohort.html']}")
    sys.exit(EXIT_INPUT if built.skipped else EXIT_OK)


COMMANDS = [cohort]
