"""Reading time: how long a reviewer had the subject open before signing it off.

Revision 0002, after 0001.
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("signoffs") as batch:
        batch.add_column(sa.Column("reading_seconds", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("signoffs") as batch:
        batch.drop_column("reading_seconds")
