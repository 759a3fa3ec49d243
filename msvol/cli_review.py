"""The reader's commands: list findings, decide, add a lesion, sign off, print the audit trail, serve the API.

They work on an output folder of `msvol run` and its findings store (SQLite at OUT/msvol.db unless
--db names another database). Reports in OUT not yet in the store are registered first, so a
folder written before the store existed can be reviewed too. Exit codes as in cli.py: 0 done, 2 a
request that cannot be carried out (bad id, unknown subject, undecided findings, stale version,
second sign-off), with a message that says what to do.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import click

EXIT_INPUT = 2

out_argument = click.argument("out_dir", metavar="OUT", type=click.Path(exists=True, file_okay=False, path_type=Path))
db_option = click.option("--db", "db_url", metavar="URL",
                         help="Database URL of the findings store (default: SQLite at OUT/msvol.db), "
                              "e.g. postgresql://user@host/msvol.")
subject_option = click.option("--subject", required=True, help="Subject, e.g. sub-01 (or 01).")
reviewer_option = click.option("--reviewer", required=True, help="Your name, as it goes into the audit trail.")
note_option = click.option("--note", help="Free text kept with the decision.")
version_option = click.option("--expect-version", type=int,
                              help="Refuse the write unless the subject is still at this version (what "
                                   "`msvol findings` showed); for scripts that read, then write.")


@contextlib.contextmanager
def _review(out_dir: Path, db_url: str | None):
    """The store of OUT with every report registered; MsvolError -> exit 2 with its message."""
    from msvol.errors import MsvolError

    try:
        from msvol.review import findings, store

        opened = store.open_store(out_dir, db_url)
        try:
            findings.register_all(opened)
            yield opened
        finally:
            opened.dispose()
    except MsvolError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_INPUT)


def _subject(subject: str) -> str:
    return subject.removeprefix("sub-")


@click.command("findings")
@out_argument
@click.option("--subject", help="Only this subject.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@db_option
def findings_command(out_dir, subject, as_json, db_url):
    """List findings with their ids, class, confidence and decision, and each subject's version and status."""
    from msvol.review import findings

    with _review(out_dir, db_url) as opened:
        listing = findings.listing(opened, None if subject is None else _subject(subject))
    if as_json:
        click.echo(json.dumps(listing, indent=2))
        return
    for entry in listing:
        click.echo(f"sub-{entry['subject']}  version {entry['version']}  {entry['status']}")
        for finding in entry["findings"]:
            decision = finding["decision"]
            said = "pending" if decision is None else f"{decision['action']} by {decision['reviewer']}" + (
                f" ({decision['reason']})" if decision["reason"] else "")
            if finding["confidence"] is not None:
                confidence = f"confidence {finding['confidence']:.2f}"
            else:  # the reader's own, a PBVC, or a candidate only the subtraction image shows
                confidence = "subtraction only" if (finding["details"] or {}).get("subtraction_only") else ""
            if finding["kind"] == "pbvc":
                shown = f"PBVC {finding['details']['pbvc_percent']:+.2f}%"
            else:
                shown = finding["current_class"] or "rejected"
            click.echo(f"  {finding['id']:<24} {finding['kind']:<6} {shown:<10} {confidence:<16} {said}")


@click.command("decide")
@out_argument
@subject_option
@click.option("--finding", "finding_id", required=True, help="Finding id, as `msvol findings` lists it.")
@click.option("--confirm", is_flag=True, help="Confirm the finding as proposed.")
@click.option("--reject", metavar="REASON",
              help="Reject: not-a-lesion, artefact, already-present-at-baseline or other (details with --note).")
@click.option("--reclassify", type=click.Choice(["new", "enlarging", "stable"]), help="Change the lesion's class.")
@click.option("--mask", "mask_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Replace the lesion's mask by this label volume (NIfTI, on the follow-up FLAIR grid).")
@click.option("--accept", is_flag=True, help="Accept the interval's PBVC (finding <interval>:PBVC).")
@click.option("--overrule", metavar="REASON", help="Overrule the interval's PBVC, with the reason.")
@reviewer_option
@note_option
@version_option
@db_option
def decide_command(out_dir, subject, finding_id, confirm, reject, reclassify, mask_path, accept, overrule,
                   reviewer, note, expect_version, db_url):
    """Decide one finding: confirm, reject, reclassify or edit its mask; accept or overrule a PBVC."""
    from msvol.review import decisions

    chosen = [name for name, value in (("--confirm", confirm), ("--reject", reject), ("--reclassify", reclassify),
                                       ("--mask", mask_path), ("--accept", accept), ("--overrule", overrule))
              if value]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --confirm, --reject, --reclassify, --mask, --accept, --overrule"
                               + (f" (got {', '.join(chosen)})" if chosen else ""))
    with _review(out_dir, db_url) as opened:
        common = dict(reviewer=reviewer, note=note, expected_version=expect_version)
        if mask_path:
            result = decisions.edit_mask(opened, _subject(subject), finding_id, decisions.load_mask(mask_path),
                                         **common)
        else:
            action = chosen[0].removeprefix("--")
            result = decisions.decide(opened, _subject(subject), finding_id, action, reason=reject or overrule,
                                      status=reclassify, **common)
    outcome = (f"PBVC {result['decision']['action']}ed" if result["kind"] == "pbvc"
               else f"class now {result['current_class'] or 'rejected'}")
    click.echo(f"{finding_id}: {result['decision']['action']} by {result['decision']['reviewer']}; {outcome}; "
               f"sub-{_subject(subject)} at version {result['version']}")


@click.command("add-lesion")
@out_argument
@subject_option
@click.option("--interval", required=True, help="The interval, e.g. ses-01_to_ses-02 (or 01-02).")
@click.option("--at", "point_mm", required=True, nargs=3, type=float, metavar="X Y Z",
              help="A point inside the lesion, world RAS mm of the follow-up images (as report.json centroid_mm).")
@click.option("--class", "lesion_class", type=click.Choice(["new", "enlarging"]), default="new", show_default=True)
@reviewer_option
@note_option
@version_option
@db_option
def add_lesion_command(out_dir, subject, interval, point_mm, lesion_class, reviewer, note, expect_version, db_url):
    """Add a lesion the model missed; its mask is grown from the point on the follow-up FLAIR."""
    from msvol.review import decisions

    with _review(out_dir, db_url) as opened:
        result = decisions.add_lesion(opened, _subject(subject), interval, point_mm, lesion_class, reviewer=reviewer,
                                      note=note, expected_version=expect_version)
    click.echo(f"{result['id']}: added as {result['current_class']}, {result['followup_volume_mm3']:.0f} mm3 at "
               f"{result['centroid_mm']} mm; mask {result['decision']['mask']}")


@click.command("signoff")
@out_argument
@subject_option
@reviewer_option
@click.option("--amend", "amend_reason", metavar="REASON",
              help="Sign again after a change to a signed subject (an amendment), with the reason.")
@version_option
@db_option
def signoff_command(out_dir, subject, reviewer, amend_reason, expect_version, db_url):
    """Sign the subject off: writes OUT/sub-XX/final/ (report.json, report.html, report.pdf; DICOM SEG and SR
    for DICOM input). Every new and enlarging finding needs a decision first."""
    from msvol.review import signoff

    with _review(out_dir, db_url) as opened:
        final = signoff.sign_off(opened, _subject(subject), reviewer=reviewer, amend_reason=amend_reason,
                                 expected_version=expect_version)
        folder = opened.out_dir / f"sub-{_subject(subject)}" / "final"
    click.echo(f"sub-{_subject(subject)} version {final['version']}: {final['signed']['statement']}")
    for name in ("report.json", "report.html", "report.pdf"):
        click.echo(f"final: {folder / name}")


@click.command("audit")
@out_argument
@click.option("--subject", help="Only this subject.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of lines.")
@db_option
def audit_command(out_dir, subject, as_json, db_url):
    """Print the audit trail: who changed what, when, before and after, and why."""
    from msvol.review import findings

    with _review(out_dir, db_url) as opened:
        entries = findings.audit_trail(opened, None if subject is None else _subject(subject))
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    for entry in entries:
        reason = f"  reason: {entry['reason']}" if entry["reason"] else ""
        click.echo(f"{entry['at']}  {entry['actor']}  {entry['action']}  sub-{entry['subject']}  "
                   f"{entry['finding'] or ''}  {json.dumps(entry['before'])} -> {json.dumps(entry['after'])}{reason}")


@click.command("review")
@out_argument
@db_option
@click.option("--port", type=int, default=8765, show_default=True, help="Port on 127.0.0.1.")
@click.option("--reviewer", help="Serve one reader: every decision and sign-off is recorded under this name (the "
                                 "page does not ask for one; a write naming someone else is refused).")
def review_command(out_dir, db_url, port, reviewer):
    """Serve the review pages and API on 127.0.0.1; open the printed URL (it carries a random token)."""
    import secrets

    import uvicorn

    from msvol.review import api

    token = secrets.token_urlsafe(24)
    with _review(out_dir, db_url) as opened:
        app = api.create_app(opened, token, reviewer=reviewer)  # a blank name: exit 2 from _review
        click.echo(f"msvol review: http://127.0.0.1:{port}/?token={token}", err=True)
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


COMMANDS = (findings_command, decide_command, add_lesion_command, signoff_command, audit_command, review_command)
