"""Pseudonymous subject ids for DICOM patients, and the only link back to the real PatientID.

The link lives in OUT/private/pseudonyms.tsv (folder 0700, file 0600, so only the account that
runs msvol can read it). A pseudonym is random, so it reveals nothing without that file, and the
same patient gets the same pseudonym on every later run into the same output folder.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import secrets
from pathlib import Path

FOLDER, FILE = "private", "pseudonyms.tsv"
COLUMNS = ("pseudonym", "patient_id", "created")


class Registry:
    """PatientID -> pseudonym for one output folder."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / FOLDER / FILE
        self._rows: dict[str, tuple[str, str]] = {}  # patient_id -> (pseudonym, date created)
        if self.path.is_file():
            with self.path.open(newline="") as handle:
                for row in csv.DictReader(handle, delimiter="\t"):
                    self._rows[row["patient_id"]] = (row["pseudonym"], row["created"])

    def pseudonym(self, patient_id: str) -> str:
        """The patient's pseudonym, created (and saved before it is used) on first sight."""
        if patient_id not in self._rows:
            taken = {pseudonym for pseudonym, _ in self._rows.values()}
            candidate = secrets.token_hex(4)
            while candidate in taken:
                candidate = secrets.token_hex(4)
            self._rows[patient_id] = (candidate, dt.date.today().isoformat())
            self._save()
        return self._rows[patient_id][0]

    def _save(self) -> None:
        """Rewrite the file atomically, readable by the owner only."""
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        temporary = folder / f".{FILE}.partial-{os.getpid()}"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t")
            writer.writerow(COLUMNS)
            for patient_id, (pseudonym, created) in sorted(self._rows.items(), key=lambda item: item[1]):
                writer.writerow((pseudonym, patient_id, created))
        os.replace(temporary, self.path)
