"""Fixtures of the ops tests: the store on both backends (SQLite and, with MSVOL_TEST_POSTGRES_URL, PostgreSQL)."""

from __future__ import annotations

import pytest

from tests.review.conftest import database_url  # noqa: F401  (the fixture: one database per test, both backends)


@pytest.fixture
def store(tmp_path, database_url):  # noqa: F811
    from msvol.review.store import open_store

    (tmp_path / "out").mkdir(exist_ok=True)
    opened = open_store(tmp_path / "out", database_url)
    yield opened
    opened.dispose()
