"""What `msvol run` shows while it works: progress bars on a terminal, plain lines otherwise.

On an interactive terminal (stderr is a TTY) two tqdm bars: the patients of the run, and the stages of
the patient being analysed (the pipeline's stage messages, counted against the total that the batch's
"running" event announces). Anywhere else (cron, a log file, a pipe) every progress message is one
plain line on stderr, as before. Outcomes are not shown here: the summary reports each one once.
"""

from __future__ import annotations

import re
import sys

import click

# the line ops.batch sends when it starts on a patient: "[3/120] sub-3fa9c21e"
PATIENT_LINE = re.compile(r"^\[(\d+)/(\d+)\] (\S+)$")


class RunDisplay:
    """Receives the batch's progress messages (`progress`) and events (`event`)."""

    def __init__(self, quiet: bool = False, interactive: bool | None = None, stream=None):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.interactive = (not quiet and self.stream.isatty()) if interactive is None else interactive
        self._patients = self._stages = None

    def progress(self, message: str) -> None:
        if self.quiet:
            return
        if not self.interactive:
            click.echo(message, file=self.stream)
            return
        patient = PATIENT_LINE.match(message)
        if patient:
            position, count, subject = int(patient[1]), int(patient[2]), patient[3]
            if self._patients is None:
                self._patients = self._bar(count, "patients", 0)
            self._patients.n = position - 1
            self._patients.set_postfix_str(subject)
            self._close_stages()
            self._stages = self._bar(None, subject, 1)
        elif self._stages is not None:
            self._stages.update(1)
            self._stages.set_postfix_str(message.split(": ", 1)[-1][:40])
        else:
            click.echo(message, file=self.stream)

    def event(self, event) -> None:
        if self.interactive and self._stages is not None and event.state == "running" and event.stages:
            self._stages.total = event.stages
            self._stages.refresh()

    def close(self) -> None:
        """Finish the bars (before the summary is printed)."""
        self._close_stages()
        if self._patients is not None:
            self._patients.n = self._patients.total
            self._patients.close()
            self._patients = None

    def _bar(self, total, description: str, position: int):
        from tqdm import tqdm

        return tqdm(total=total, desc=description, position=position, leave=position == 0, file=self.stream,
                    unit="patient" if position == 0 else "stage", dynamic_ncols=True)

    def _close_stages(self) -> None:
        if self._stages is not None:
            self._stages.close()
            self._stages = None
