"""Events of a batch run: one per exam state change (and per claim taken over, patient held, run summary).

What `msvol run --log-json FILE` writes, one JSON object per line (docs/OPERATIONS.md):
  {"at": "2026-12-01T15:12:00.123456+00:00", "run": "<token>", "host": "...", "pid": 123,
   "subject": "sub-3fa9c21e", "exam": "sub-3fa9c21e/ses-20220301", "state": "done", "attempt": 1,
   "duration_s": 41.2, "reason": null}
Subjects are pseudonyms (or BIDS labels); reasons of DICOM input have their export paths replaced by
"<export>" (folders of a PACS export are often named after the patient). No names or birth dates:
the batch never reads them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

from msvol.review.store import now


@dataclasses.dataclass(frozen=True)
class Event:
    subject: str | None  # "sub-XX"; None for the run's summary
    state: str  # an exam state (ops/states.py), or "taken_over", "held", "swept", "summary"
    exam: str | None = None  # "sub-XX/ses-YY"; None for patient-level events
    attempt: int | None = None
    duration_s: float | None = None
    reason: str | None = None
    stages: int | None = None  # with "running": how many stage messages the pipeline will send
    counts: dict | None = None  # with "summary": patients per outcome
    at: str = dataclasses.field(default_factory=lambda: now().isoformat())
    run: str | None = None  # the owner token of the run (claims.Owner), filled in by the batch
    host: str | None = None
    pid: int | None = None

    def record(self) -> dict:
        """The JSON object of one line (empty fields left out, except exam and reason)."""
        fields = {"at": self.at, "run": self.run, "host": self.host, "pid": self.pid, "subject": self.subject,
                  "exam": self.exam,
                  "state": self.state, "attempt": self.attempt, "duration_s": self.duration_s,
                  "reason": self.reason, "stages": self.stages, "counts": self.counts}
        return {key: value for key, value in fields.items()
                if value is not None or key in ("subject", "exam", "reason")}


def redactor(input_path: Path):
    """A function removing every path below `input_path` (as given and resolved) from a text."""
    roots = sorted({str(Path(input_path)), str(Path(input_path).resolve())}, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(root) + r"[^\s:;,'\"]*" for root in roots))
    return lambda text: None if text is None else pattern.sub("<export>", text)


class JsonLog:
    """Appends events to FILE, one JSON line each, flushed at once (a log shipper may tail it).

    Each line goes out in one write() on a file opened with O_APPEND, so the lines of several runs
    appending to one local file do not interleave; on NFS give each host its own file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)

    def __call__(self, event: Event) -> None:
        line = json.dumps(event.record(), ensure_ascii=False) + "\n"
        os.write(self._descriptor, line.encode())

    def close(self) -> None:
        os.close(self._descriptor)
