"""Alembic environment of the findings store: run with a connection handed in by store.migrate."""

from alembic import context

from msvol.review.store import Base

connection = context.config.attributes["connection"]
# render_as_batch: SQLite cannot ALTER most columns; batch mode rebuilds the table instead
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
