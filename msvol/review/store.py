"""The findings store: subjects, sessions, analysis runs, findings, decisions, sign-offs, audit log (and the
exam states and claims of `msvol run`, see msvol/ops/states.py).

SQLAlchemy 2 models; the schema is created and upgraded by the Alembic migrations in
msvol/review/migrations (never by `create_all`), so SQLite (default: OUT/msvol.db) and any other
database given by URL (PostgreSQL is tested) carry the same tables.

Vocabulary:
- subject: a pseudonymous id ("01", "3fa9c21e"), never a name or PatientID; `version` counts every
  change made to it by a reviewer (optimistic locking: a write made against an older version is
  refused, see `decisions.StaleVersionError`).
- analysis run: one automated report.json, identified by its SHA-256 (registering it again changes
  nothing); the newest run of a subject is the one under review.
- finding: one new, enlarging, shrinking or resolved lesion of an interval, or the interval's PBVC,
  or a lesion a reviewer added. Its key ("01-02:L7", "01-02:PBVC", "01-02:A1") is derived from the
  report, so it is stable across re-registration.
- decision: what a reviewer decided on a finding (append-only: the newest decision is the current one).
- audit log: append-only record of every create and change, who, when, before and after; the
  migrations add triggers that refuse UPDATE and DELETE on it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from sqlalchemy import JSON, Date, DateTime, Float, ForeignKey, Integer, String, Text, TypeDecorator
from sqlalchemy import UniqueConstraint, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from msvol.errors import ConfigError

DATABASE_NAME = "msvol.db"


class UtcDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use datetime.now(timezone.utc)")
        return None if value is None else value.astimezone(dt.timezone.utc)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dt.datetime: UtcDateTime, dict: JSON, list: JSON}


class Subject(Base):
    __tablename__ = "subjects"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # pseudonymous subject id, no "sub-"
    created_at: Mapped[dt.datetime]
    version: Mapped[int] = mapped_column(Integer, default=0)
    reading_started_at: Mapped[dt.datetime | None]  # the review page opened it; cleared at sign-off


class SessionRow(Base):
    __tablename__ = "sessions"
    __table_args__ = (UniqueConstraint("subject_id", "session"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    subject_id: Mapped[str] = mapped_column(ForeignKey("subjects.id"))
    session: Mapped[str] = mapped_column(String(64))
    date: Mapped[dt.date] = mapped_column(Date)


class AnalysisRun(Base):
    __tablename__ = "analysis_runs"
    __table_args__ = (UniqueConstraint("subject_id", "report_sha256"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    subject_id: Mapped[str] = mapped_column(ForeignKey("subjects.id"))
    report_sha256: Mapped[str] = mapped_column(String(64))
    report_path: Mapped[str] = mapped_column(Text)  # relative to OUT
    generated: Mapped[str] = mapped_column(String(40))  # the report's own timestamp
    msvol_version: Mapped[str] = mapped_column(String(32))
    params_hash: Mapped[str] = mapped_column(String(64))
    model_versions: Mapped[dict]
    input_hashes: Mapped[dict]
    registered_at: Mapped[dt.datetime]


class Finding(Base):
    __tablename__ = "findings"
    __table_args__ = (UniqueConstraint("run_id", "key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("analysis_runs.id"))
    subject_id: Mapped[str] = mapped_column(ForeignKey("subjects.id"))
    key: Mapped[str] = mapped_column(String(80))
    from_session: Mapped[str] = mapped_column(String(64))
    to_session: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # lesion | pbvc | added
    lesion_id: Mapped[int | None]
    automated_status: Mapped[str | None] = mapped_column(String(16))  # None for pbvc and added
    baseline_volume_mm3: Mapped[float | None] = mapped_column(Float)
    followup_volume_mm3: Mapped[float | None] = mapped_column(Float)
    centroid_mm: Mapped[list | None]
    confidence: Mapped[float | None] = mapped_column(Float)
    details: Mapped[dict]  # lesion: merged/split/confluent/thumbnail; pbvc: figures and QC flags
    created_by: Mapped[str] = mapped_column(String(200))  # "msvol", or the reviewer who added it
    created_at: Mapped[dt.datetime]


class Decision(Base):
    __tablename__ = "decisions"
    id: Mapped[int] = mapped_column(primary_key=True)
    finding_id: Mapped[int] = mapped_column(ForeignKey("findings.id"))
    action: Mapped[str] = mapped_column(String(16))  # confirm reject reclassify edit_mask add accept overrule
    status: Mapped[str | None] = mapped_column(String(16))  # the finding's class after this decision
    reason: Mapped[str | None] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(Text)
    mask_path: Mapped[str | None] = mapped_column(Text)  # relative to OUT, for edit_mask and add
    volume_mm3: Mapped[float | None] = mapped_column(Float)
    reviewer: Mapped[str] = mapped_column(String(200))
    at: Mapped[dt.datetime]
    subject_version: Mapped[int]  # the subject's version this decision made


class SignOff(Base):
    """A signed version of one analysis run's confirmed result (versions count per run: a new analysis of the
    subject, e.g. after a new exam, is signed from version 1 again)."""

    __tablename__ = "signoffs"
    __table_args__ = (UniqueConstraint("run_id", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    subject_id: Mapped[str] = mapped_column(ForeignKey("subjects.id"))
    run_id: Mapped[int] = mapped_column(ForeignKey("analysis_runs.id"))
    version: Mapped[int]
    subject_version: Mapped[int]  # the decisions it signs
    reviewer: Mapped[str] = mapped_column(String(200))
    at: Mapped[dt.datetime]
    amendment_reason: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[dict]  # confirmed counts per interval
    reading_seconds: Mapped[float | None] = mapped_column(Float)  # opened in the review page -> signed (0002)


class AuditEntry(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime]
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(32))
    subject_id: Mapped[str] = mapped_column(String(64))
    finding_key: Mapped[str | None] = mapped_column(String(80))
    before: Mapped[dict | None]
    after: Mapped[dict | None]
    reason: Mapped[str | None] = mapped_column(Text)


# The exam states and claims of `msvol run` (migration 0003; their protocol is in msvol/ops/states.py and
# msvol/ops/claims.py, which alone write them).
class ExamState(Base):
    __tablename__ = "exam_states"
    id: Mapped[int] = mapped_column(primary_key=True)
    exam: Mapped[str] = mapped_column(String(160), unique=True)
    subject: Mapped[str] = mapped_column(String(80), index=True)
    session: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    fingerprint: Mapped[str] = mapped_column(String(64))
    last_change_at: Mapped[dt.datetime]
    seen_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]
    duration_s: Mapped[float | None] = mapped_column(Float)
    crash_file: Mapped[str | None] = mapped_column(Text)
    run: Mapped[str | None] = mapped_column(String(64))


class ClaimRow(Base):
    __tablename__ = "claims"
    subject: Mapped[str] = mapped_column(String(80), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    host: Mapped[str] = mapped_column(String(255))
    boot_id: Mapped[str] = mapped_column(String(64))
    pid: Mapped[int]
    started_at: Mapped[dt.datetime]
    heartbeat_at: Mapped[dt.datetime]
    lease_s: Mapped[float] = mapped_column(Float)
    revision: Mapped[int]
    keep_previous: Mapped[str | None] = mapped_column(Text)


@dataclass(frozen=True)
class Store:
    """An open store: the engine and a session factory. Use `with store.transaction() as db:`."""

    engine: Engine
    out_dir: Path
    url: str

    @contextlib.contextmanager
    def transaction(self):
        """One unit of work: commits at the end, rolls back on any error (a decision and its audit row
        are written together or not at all)."""
        with sessionmaker(self.engine, expire_on_commit=False)() as db, db.begin():
            yield db

    def dispose(self) -> None:
        self.engine.dispose()


def default_url(out_dir: Path) -> str:
    return f"sqlite:///{Path(out_dir).resolve() / DATABASE_NAME}"


def open_store(out_dir: Path, url: str | None = None) -> Store:
    """Connect to the store of OUT (SQLite at OUT/msvol.db unless `url` names another database),
    creating or upgrading its schema with the shipped migrations."""
    url = url or default_url(out_dir)
    if url.startswith(("postgresql://", "postgres://")):  # the driver msvol ships (psycopg 3), not psycopg2
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    try:
        engine = create_engine(url)
    except Exception as exc:  # a malformed URL or a missing driver
        raise ConfigError(f"--db {_safe_url(url)}: cannot use this database URL ({exc})") from exc
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    try:
        migrate(engine)
    except Exception as exc:
        engine.dispose()
        raise ConfigError(f"--db {_safe_url(url)}: cannot open the findings store ({exc.__class__.__name__}: "
                          f"{str(exc).splitlines()[0]})") from exc
    return Store(engine, Path(out_dir), url)


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database to `revision` with Alembic (creates every table on an empty database)."""
    from alembic import command

    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), revision)


def alembic_config(connection):
    """Alembic's configuration for the shipped migrations, run on `connection` (migrations/env.py)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(resources.files("msvol.review") / "migrations"))
    config.attributes["connection"] = connection
    return config


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")  # two reviewers' writes wait for each other, not fail
    cursor.close()


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable URL>"


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)

