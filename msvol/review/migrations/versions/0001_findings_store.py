"""The findings store: subjects, sessions, analysis runs, findings, decisions, sign-offs, audit log.

Revision 0001, the first. The audit log is append-only: triggers refuse UPDATE and DELETE on it.
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "subjects",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("reading_started_at", TIME, nullable=True))
    op.create_table(
        "sessions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("subject_id", sa.String(64), sa.ForeignKey("subjects.id"), nullable=False),
        sa.Column("session", sa.String(64), nullable=False),
        sa.Column("date", sa.Date, nullable=False),
        sa.UniqueConstraint("subject_id", "session"))
    op.create_table(
        "analysis_runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("subject_id", sa.String(64), sa.ForeignKey("subjects.id"), nullable=False),
        sa.Column("report_sha256", sa.String(64), nullable=False),
        sa.Column("report_path", sa.Text, nullable=False),
        sa.Column("generated", sa.String(40), nullable=False),
        sa.Column("msvol_version", sa.String(32), nullable=False),
        sa.Column("params_hash", sa.String(64), nullable=False),
        sa.Column("model_versions", sa.JSON, nullable=False),
        sa.Column("input_hashes", sa.JSON, nullable=False),
        sa.Column("registered_at", TIME, nullable=False),
        sa.UniqueConstraint("subject_id", "report_sha256"))
    op.create_table(
        "findings",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("analysis_runs.id"), nullable=False),
        sa.Column("subject_id", sa.String(64), sa.ForeignKey("subjects.id"), nullable=False),
        sa.Column("key", sa.String(80), nullable=False),
        sa.Column("from_session", sa.String(64), nullable=False),
        sa.Column("to_session", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("lesion_id", sa.Integer, nullable=True),
        sa.Column("automated_status", sa.String(16), nullable=True),
        sa.Column("baseline_volume_mm3", sa.Float, nullable=True),
        sa.Column("followup_volume_mm3", sa.Float, nullable=True),
        sa.Column("centroid_mm", sa.JSON, nullable=True),
        sa.Column("confidence", sa.Float, nullable=True),
        sa.Column("details", sa.JSON, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.UniqueConstraint("run_id", "key"))
    op.create_table(
        "decisions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("finding_id", sa.Integer, sa.ForeignKey("findings.id"), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=True),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("note", sa.Text, nullable=True),
        sa.Column("mask_path", sa.Text, nullable=True),
        sa.Column("volume_mm3", sa.Float, nullable=True),
        sa.Column("reviewer", sa.String(200), nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("subject_version", sa.Integer, nullable=False))
    op.create_table(
        "signoffs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("subject_id", sa.String(64), sa.ForeignKey("subjects.id"), nullable=False),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("analysis_runs.id"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("subject_version", sa.Integer, nullable=False),
        sa.Column("reviewer", sa.String(200), nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("amendment_reason", sa.Text, nullable=True),
        sa.Column("summary", sa.JSON, nullable=False),
        sa.UniqueConstraint("run_id", "version"))
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", TIME, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("subject_id", sa.String(64), nullable=False),
        sa.Column("finding_key", sa.String(80), nullable=True),
        sa.Column("before", sa.JSON, nullable=True),
        sa.Column("after", sa.JSON, nullable=True),
        sa.Column("reason", sa.Text, nullable=True))
    _append_only("audit_log")


def _append_only(table: str) -> None:
    if op.get_bind().dialect.name == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                       f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END")
    elif op.get_bind().dialect.name == "postgresql":
        op.execute(f"CREATE FUNCTION {table}_append_only() RETURNS trigger LANGUAGE plpgsql AS "
                   f"$$ BEGIN RAISE EXCEPTION '{table} is append-only'; END $$")
        op.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                   f"FOR EACH ROW EXECUTE FUNCTION {table}_append_only()")


def downgrade() -> None:
    for table in ("audit_log", "signoffs", "decisions", "findings", "analysis_runs", "sessions", "subjects"):
        op.drop_table(table)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")
