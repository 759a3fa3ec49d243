"""Tests for the findings store: migrations from empty on SQLite and PostgreSQL, registration, append-only audit."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from msvol.review import findings
from msvol.review.store import AuditEntry, Base, Finding, alembic_config, open_store
from msvol.synth.review_case import LESIONS


def test_migrations_build_the_schema_of_the_models_from_empty(review_out, database_url):
    store = open_store(review_out, database_url)
    with store.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
        assert connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0003"
    with store.engine.begin() as connection:  # and back down to nothing
        command.downgrade(alembic_config(connection), "base")
    assert set(sa.inspect(store.engine).get_table_names()) <= {"alembic_version"}
    store.dispose()
    if database_url is None:
        assert (review_out / "msvol.db").is_file(), "the default store is SQLite in OUT"


def test_registration_gives_one_finding_per_lesion_change_and_pbvc(store):
    views = findings.listing(store)[0]["findings"]
    expected = {f"01-02:L{lesion_id}" for lesion_id, (status, *_) in LESIONS.items() if status != "stable"}
    assert {view["id"] for view in views} == expected | {"01-02:PBVC"}
    lesion_1 = next(view for view in views if view["id"] == "01-02:L1")
    assert lesion_1["class"] == "new" and lesion_1["confidence"] == 0.56 and lesion_1["decision"] is None
    assert lesion_1["details"]["thumbnail"] == "thumbnails/ses-01_to_ses-02/lesion-1.png"
    pbvc = next(view for view in views if view["id"] == "01-02:PBVC")
    assert pbvc["details"]["pbvc_percent"] == -0.61 and pbvc["details"]["alignment_correlation"] == 0.98


def test_registering_the_same_report_again_changes_nothing(store, review_out):
    report = review_out / "sub-01" / "report.json"
    before = _dump(store)
    run_id, added = findings.register_report(store, report)
    assert added is False and _dump(store) == before
    report.write_text(report.read_text().replace('"pbvc_percent": -0.61', '"pbvc_percent": -0.62'))
    second_id, added = findings.register_report(store, report)
    assert added is True and second_id != run_id, "a changed report is a new analysis run"


def test_finding_ids_are_stable_across_stores(review_out, tmp_path, database_url):
    first = open_store(review_out, database_url)
    findings.register_all(first)
    keys = [view["id"] for view in findings.listing(first)[0]["findings"]]
    first.dispose()
    other = open_store(review_out, f"sqlite:///{tmp_path / 'other.db'}")
    findings.register_all(other)
    assert [view["id"] for view in findings.listing(other)[0]["findings"]] == keys
    other.dispose()


def test_the_run_records_versions_and_hashes(store):
    with store.transaction() as db:
        run = findings.current_run(db, "01")
        assert run.msvol_version == "0.1.0" and len(run.report_sha256) == 64
        assert run.model_versions["per_visit"]["version"] == "2.0.0"
        assert run.input_hashes["01"]["flair_sha256"] == "ab" * 32
        assert run.report_path == "sub-01/report.json"


@pytest.mark.parametrize("statement", ["UPDATE audit_log SET actor = 'someone else'", "DELETE FROM audit_log"])
def test_the_audit_log_refuses_updates_and_deletes(store, statement):
    with pytest.raises(sa.exc.DBAPIError, match="append-only"):
        with store.engine.begin() as connection:
            connection.execute(sa.text(statement))
    with store.transaction() as db:
        assert db.scalar(sa.select(sa.func.count()).select_from(AuditEntry)) == 1  # the registration


def test_an_unreachable_database_is_a_config_error_naming_it_without_its_password(review_out):
    from msvol.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        open_store(review_out, "postgresql://msvol:secret@127.0.0.1:1/none")  # plain scheme: psycopg 3 is used
    assert "127.0.0.1:1/none" in str(caught.value) and "secret" not in str(caught.value)


def _dump(store) -> str:
    with store.transaction() as db:
        rows = {table.name: [dict(row._mapping) for row in db.execute(sa.select(table).order_by(*table.primary_key))]
                for table in Base.metadata.sorted_tables}
        rows["findings_count"] = db.scalar(sa.select(sa.func.count()).select_from(Finding))
    return json.dumps(rows, default=str, sort_keys=True)
