"""Fixtures of the review tests: a database per test on both backends, and an output folder with known findings.

`database_url` runs a test on SQLite (OUT/msvol.db, the default) and on PostgreSQL: a fresh database
on the server named by MSVOL_TEST_POSTGRES_URL (.ci/run starts one with .ci/start-postgres); without
that variable the PostgreSQL case is skipped, saying why.

`review_out` is OUT of the synthetic subject "01" of msvol.synth.review_case (known findings: new
lesions 1-3, enlarging 4, shrinking 5, resolved 6, stable 7, and a missed lesion to add).
"""

from __future__ import annotations

import os
import uuid

import pytest

from msvol.synth.review_case import write_review_case

@pytest.fixture
def review_out(tmp_path):
    out = tmp_path / "out"
    write_review_case(out)
    return out


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request):
    """None (SQLite at OUT/msvol.db) or the URL of a fresh PostgreSQL database, dropped after the test."""
    if request.param == "sqlite":
        yield None
        return
    server = os.environ.get("MSVOL_TEST_POSTGRES_URL")
    if not server:
        pytest.skip("no PostgreSQL server: set MSVOL_TEST_POSTGRES_URL (.ci/run starts one with .ci/start-postgres)")
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"msvol_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(server).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def store(review_out, database_url):
    from msvol.review import findings
    from msvol.review.store import open_store

    opened = open_store(review_out, database_url)
    findings.register_all(opened)
    yield opened
    opened.dispose()
