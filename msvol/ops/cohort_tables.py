"""The four cohort tables: their columns (the data dictionary), and writing and reading them.

Each table is written as BIDS-derivative-style TSV (tab-separated, header row, `n/a` for a missing
value, booleans as `true`/`false`) with a JSON data dictionary beside it (per column: LongName,
Description, Units, Levels), and as Parquet (pandas nullable dtypes: string, Int64, Float64,
boolean). `read_table` reads either back into the same DataFrame. Writing goes to the caller's
staging folder (msvol.ops.cohort.write_cohort moves the files into place).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

MISSING = "n/a"
DTYPES = {"string": "string", "integer": "Int64", "number": "Float64", "boolean": "boolean"}


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # a key of DTYPES
    long_name: str
    description: str
    units: str | None = None
    levels: dict[str, str] | None = None


BOOL = {"true": "yes", "false": "no"}
SOURCE = [
    Column("source", "string", "Source of the figures", "Which file this row's figures were read from.",
           levels={"automated": "sub-XX/report.json: not signed off, or its sign-off is of an earlier analysis run",
                   "confirmed": "sub-XX/final/report.json: the figures a radiologist signed off"}),
    Column("signoff_version", "integer", "Sign-off version",
           "Version of the signed final report (1, then 2, ... for amendments); n/a for automated rows."),
]
PARTICIPANT = Column("participant_id", "string", "Participant", "Pseudonymous subject folder under OUT, e.g. sub-01.")
INTERVAL_ENDS = [
    PARTICIPANT,
    Column("from_session_id", "string", "Earlier visit", "Session of the interval's earlier visit, e.g. ses-01."),
    Column("to_session_id", "string", "Later visit", "Session of the interval's later visit."),
]
COUNT_WORDS = {"new": "present at the later visit, absent at the earlier one",
               "enlarging": "present at both, grown beyond the enlargement thresholds",
               "shrinking": "present at both, shrunk beyond the thresholds",
               "resolved": "present at the earlier visit, absent at the later one",
               "stable": "present at both, neither grown nor shrunk beyond the thresholds"}
STATUS_LEVELS = {name: f"T2/FLAIR lesion {words}" for name, words in COUNT_WORDS.items()}
POSSIBLE_NEW = ("a candidate new lesion below the reporting operating point (report schema 1.4): listed for the "
                "reader, counted only once confirmed (then as new)")
STATUS_LEVELS["possible_new"] = POSSIBLE_NEW

TABLES: dict[str, list[Column]] = {
    "visits": [
        PARTICIPANT,
        Column("session_id", "string", "Visit", "Session label, e.g. ses-01."),
        Column("acq_date", "string", "Visit date", "Date of the visit's images (YYYY-MM-DD), as in report.json."),
        Column("years_from_baseline", "number", "Years from baseline",
               "Days since the participant's first visit / 365.25.", "year"),
        Column("brain_volume_ml", "number", "Brain volume", "Brain (parenchyma) volume.", "ml"),
        Column("normalized_brain_volume_ml", "number", "Normalised brain volume",
               "Brain volume scaled for head size (atlas-based scaling factor).", "ml"),
        Column("intracranial_volume_ml", "number", "Intracranial volume", "Estimated total intracranial volume.",
               "ml"),
        Column("brain_parenchymal_fraction", "number", "Brain parenchymal fraction",
               "Brain volume / intracranial volume.", "fraction"),
        Column("lesion_count", "integer", "T2 lesions", "Number of T2/FLAIR lesions (connected components).",
               "lesions"),
        Column("lesion_volume_ml", "number", "T2 lesion volume", "Total T2/FLAIR lesion volume.", "ml"),
        Column("scanner_manufacturer", "string", "Scanner manufacturer", "From the images' headers; n/a if unknown."),
        Column("scanner_model", "string", "Scanner model", "From the images' headers; n/a if unknown."),
        Column("field_strength_t", "number", "Field strength", "Magnetic field strength; n/a if unknown.", "T"),
        *SOURCE,
    ],
    "intervals": [
        *INTERVAL_ENDS,
        Column("consecutive", "boolean", "Consecutive interval",
               "The two visits are next to each other in date order; per-patient counts sum these intervals.",
               levels=BOOL),
        Column("baseline_to_latest", "boolean", "Baseline to latest",
               "From the first to the last visit; the patient's annualised PBVC is this interval's. With two "
               "visits one interval is both consecutive and baseline to latest.", levels=BOOL),
        Column("years", "number", "Interval length", "Time between the two visits.", "year"),
        Column("pbvc_percent", "number", "PBVC",
               "Percent brain volume change (negative = loss); n/a where the radiologist overruled it.", "%"),
        Column("pbvc_annualized_percent", "number", "Annualised PBVC",
               "PBVC / years; n/a for an interval too short to annualise or an overruled PBVC.", "%/year"),
        Column("pbvc_beyond_cutoff", "boolean", "Beyond the atrophy cut-off",
               "Annualised PBVC <= the cohort's pathological cut-off (cohort.json: atrophy_cutoff); n/a where "
               "there is no annualised PBVC.", levels=BOOL),
        Column("pbvc_decision", "string", "PBVC decision", "The radiologist's decision on the interval's PBVC; n/a "
               "for automated rows.", levels={"accepted": "accepted", "overruled": "overruled: not reported",
                                             "pending": "not decided at sign-off (the automated value is kept)"}),
        Column("alignment_correlation", "number", "Alignment correlation",
               "FLAIR correlation inside the brain after registration into halfway space; low values flag a PBVC "
               "that cannot be trusted.", "correlation"),
        *[Column(f"{status}_lesions", "integer", f"{status.capitalize()} lesions",
                 f"T2/FLAIR lesions {words}.", "lesions") for status, words in COUNT_WORDS.items()],
        Column("possible_new_lesions", "integer", "Possible new lesions", f"Lesions listed as {POSSIBLE_NEW}; not "
               "in new_lesions or any patient count; 0 for reports before schema 1.4.", "lesions"),
        Column("new_volume_mm3", "number", "New lesion volume", "Summed later-visit volume of the new lesions.",
               "mm3"),
        Column("enlarging_volume_mm3", "number", "Enlarging lesion volume",
               "Summed later-visit volume of the enlarging lesions.", "mm3"),
        Column("qc_flags", "string", "QC flags", "Codes of the interval's quality flags, separated by ';' (e.g. "
               "poor_alignment, scanner_change); n/a when none."),
        *SOURCE,
    ],
    "lesions": [
        *INTERVAL_ENDS,
        Column("finding_id", "string", "Finding", "The review's finding id, <from>-<to>:L<lesion id> (A<n> for a "
               "lesion the reader added)."),
        Column("lesion_id", "integer", "Lesion id", "Later-visit label of the lesion in the interval's label maps; "
               "n/a for an added lesion."),
        Column("kind", "string", "Kind", "Who proposed the finding.",
               levels={"lesion": "proposed by msvol", "added": "drawn by the reader"}),
        Column("automated_status", "string", "Automated class", "The class msvol gave; n/a for an added lesion.",
               levels=STATUS_LEVELS),
        Column("status", "string", "Class counted", "The class this row's source counts: the automated class, or "
               "the confirmed class after sign-off; n/a when rejected.", levels=STATUS_LEVELS),
        Column("decision", "string", "Decision", "The radiologist's decision; n/a for automated rows.",
               levels={"confirmed": "class kept", "rejected": "not counted", "reclassified": "class changed",
                       "added": "added by the reader", "mask_edited": "outline corrected, class kept",
                       "pending": "not decided at sign-off"}),
        Column("reason", "string", "Rejection reason", "Why a finding was rejected (fixed vocabulary); n/a otherwise.",
               levels={"not a lesion": "not a lesion", "artefact": "artefact",
                       "already present at baseline": "already present at baseline", "other": "other"}),
        Column("confidence", "number", "Confidence", "How sure the models are of the automated class (0-1, a "
               "ranking, not a calibrated probability); n/a when no model gave one.", "fraction"),
        Column("baseline_volume_mm3", "number", "Earlier volume", "Lesion volume at the earlier visit.", "mm3"),
        Column("followup_volume_mm3", "number", "Later volume", "Lesion volume at the later visit (after a mask edit, "
               "the edited one).", "mm3"),
        *[Column(f"centroid_{axis}_mm", "number", f"Centroid {axis}", f"Lesion centre, {axis} in RAS+ world "
                 "coordinates of the later FLAIR (the earlier one for a resolved lesion).", "mm") for axis in "xyz"],
        *[Column(name, "boolean", name.capitalize(), words + "; n/a for an added lesion.", levels=BOOL)
          for name, words in (("merged", "Several earlier lesions became this one"),
                              ("split", "One earlier lesion became several"),
                              ("confluent", "Grew by joining another lesion (reported as enlarging, never new)"))],
        *SOURCE,
    ],
    "patients": [
        PARTICIPANT,
        Column("visits", "integer", "Visits", "Number of visits in the report.", "visits"),
        Column("baseline_session_id", "string", "Baseline visit", "First visit in date order."),
        Column("latest_session_id", "string", "Latest visit", "Last visit in date order."),
        Column("followup_years", "number", "Follow-up", "Sum of the consecutive intervals' years; n/a with one "
               "visit or a missing consecutive interval.", "year"),
        Column("new_lesions", "integer", "New lesions", "New T2 lesions summed over the consecutive intervals.",
               "lesions"),
        Column("enlarging_lesions", "integer", "Enlarging lesions",
               "Enlarging T2 lesions summed over the consecutive intervals.", "lesions"),
        Column("new_lesions_per_year", "number", "New lesions per year", "new_lesions / followup_years (the "
               "patient's own rate; the cohort rate is in cohort.json).", "lesions/year"),
        Column("annualized_pbvc_percent", "number", "Annualised PBVC", "Annualised PBVC of the baseline-to-latest "
               "interval; n/a when too short or overruled. Precision is adequate for groups, marginal for one "
               "patient (Sastre-Garriga et al., Nat Rev Neurol 2020).", "%/year"),
        Column("pbvc_interval", "string", "PBVC interval", "The interval the annualised PBVC comes from."),
        Column("pbvc_beyond_cutoff", "boolean", "Beyond the atrophy cut-off",
               "annualized_pbvc_percent <= the cohort's pathological cut-off (cohort.json).", levels=BOOL),
        Column("mri_activity_free", "boolean", "MRI activity-free", "No new or enlarging T2 lesion over the "
               "follow-up: the MRI part of NEDA-3 without enhancing lesions (definition and sources in cohort.json); "
               "n/a with one visit.", levels=BOOL),
        Column("mri_activity_free_atrophy_within_cutoff", "boolean", "MRI activity-free, atrophy within cut-off",
               "MRI activity-free and annualised PBVC above the cut-off: the MRI parts of NEDA-4; false when active, "
               "n/a when not active but without an annualised PBVC.", levels=BOOL),
        Column("pbvc_qc_flags", "string", "PBVC QC flags", "QC flag codes of the PBVC interval, ';'-separated."),
        Column("qc_flags", "string", "Subject QC flags", "Subject-level QC flag codes, ';'-separated."),
        *SOURCE,
        Column("signed_at", "string", "Signed at", "When the final report was signed (ISO 8601); n/a if automated."),
        Column("msvol_version", "string", "msvol version", "The msvol version that wrote report.json."),
        Column("params_hash", "string", "Parameter hash", "Hash of the effective parameters of the report "
               "(cohort.json lists each set)."),
    ],
}


def data_dictionary(table: str) -> dict:
    """The BIDS-style JSON sidecar of a table: column -> {LongName, Description, Units?, Levels?}."""
    dictionary = {}
    for column in TABLES[table]:
        entry = {"LongName": column.long_name, "Description": column.description}
        if column.units:
            entry["Units"] = column.units
        if column.levels:
            entry["Levels"] = dict(column.levels)
        dictionary[column.name] = entry
    return dictionary


def frame(table: str, rows: list[dict]):
    """The rows as a DataFrame with the table's columns, in order, and nullable dtypes.

    Raises
    ------
    ValueError : a row whose keys are not exactly the table's columns (a column without a dictionary entry).
    """
    import pandas as pd

    columns = TABLES[table]
    names = [column.name for column in columns]
    expected = set(names)
    for row in rows:
        if set(row) != expected:
            raise ValueError(f"a {table} row lacks {sorted(expected - set(row))} or has {sorted(set(row) - expected)}, "
                             "which the data dictionary does not describe")
    data = {column.name: pd.array([row[column.name] for row in rows], dtype=DTYPES[column.kind])
            for column in columns}
    return pd.DataFrame(data, columns=names)


def tsv_text(table: str, rows: list[dict]) -> str:
    """The TSV text: header, one line per row, `n/a` for None, floats in their shortest exact form."""
    names = [column.name for column in TABLES[table]]
    lines = ["\t".join(names)]
    for row in rows:
        lines.append("\t".join(_cell(row[name]) for name in names))
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # shortest string that reads back as the same float
    # tabs and line breaks would break the table; report values never hold them, but say so if one does
    return str(value).replace("\t", " ").replace("\n", " ")


def write_table(table: str, rows: list[dict], folder: Path) -> list[Path]:
    """Write <table>.tsv, <table>.json (the data dictionary) and <table>.parquet into `folder`."""
    folder = Path(folder)
    frame(table, rows).to_parquet(folder / f"{table}.parquet", index=False)
    (folder / f"{table}.tsv").write_text(tsv_text(table, rows))
    (folder / f"{table}.json").write_text(json.dumps(data_dictionary(table), indent=2) + "\n")
    return [folder / f"{table}.{suffix}" for suffix in ("tsv", "json", "parquet")]


def read_table(path: Path):
    """A cohort table (.tsv or .parquet) as a DataFrame with the dtypes `frame` gives; the table is named by the
    file's stem (visits, intervals, lesions, patients).

    Raises
    ------
    ValueError : an unknown table name, or a TSV whose header is not the table's columns.
    """
    import pandas as pd

    path = Path(path)
    if path.stem not in TABLES:
        raise ValueError(f"{path}: not a cohort table (expected one of {', '.join(TABLES)})")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    lines = path.read_text().splitlines()
    header, body = lines[0].split("\t"), [line.split("\t") for line in lines[1:]]
    names = [column.name for column in TABLES[path.stem]]
    if header != names:
        raise ValueError(f"{path}: columns {header} are not the {path.stem} table's {names}")
    rows = [{name: _parse(cell, column.kind) for name, cell, column in zip(names, cells, TABLES[path.stem])}
            for cells in body]
    return frame(path.stem, rows)


def _parse(cell: str, kind: str):
    if cell == MISSING:
        return None
    if kind == "integer":
        return int(cell)
    if kind == "number":
        return float(cell)
    if kind == "boolean":
        return {"true": True, "false": False}[cell]
    return cell
