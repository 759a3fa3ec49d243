"""Exam states and claims of `msvol run` (issue 13): what happened to each exam, and who works on which patient.

Revision 0003, after 0002. The models are in msvol/review/store.py, the code that writes them in
msvol/ops/ (states.py, claims.py), the protocol in docs/OPERATIONS.md.
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "exam_states",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("exam", sa.String(160), nullable=False, unique=True),  # "sub-XX/ses-YY", pseudonymous
        sa.Column("subject", sa.String(80), nullable=False),  # "sub-XX": the unit of work
        sa.Column("session", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),  # SHA-256 of the exam's file names, sizes, mtimes
        sa.Column("last_change_at", TIME, nullable=False),  # newest mtime among its files and folders
        sa.Column("seen_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.Column("duration_s", sa.Float, nullable=True),  # of the last attempt
        sa.Column("crash_file", sa.Text, nullable=True),  # relative to OUT
        sa.Column("run", sa.String(64), nullable=True))  # the owner token of the run that set the state
    op.create_index("ix_exam_states_subject", "exam_states", ["subject"])
    op.create_table(
        "claims",
        sa.Column("subject", sa.String(80), primary_key=True),  # the primary key makes two inserts exclusive
        sa.Column("owner", sa.String(64), nullable=False),  # a random token per msvol process
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("boot_id", sa.String(64), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", TIME, nullable=False),
        sa.Column("heartbeat_at", TIME, nullable=False),
        sa.Column("lease_s", sa.Float, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),  # +1 on every write: the compare-and-set token
        sa.Column("keep_previous", sa.Text, nullable=True))  # where the replaced result goes (relative to OUT)


def downgrade() -> None:
    op.drop_table("claims")
    op.drop_index("ix_exam_states_subject", "exam_states")
    op.drop_table("exam_states")
