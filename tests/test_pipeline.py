"""The atomic output write of pipeline: nothing half-written, nothing lost unless asked."""

from __future__ import annotations

import pytest

from msvol import pipeline
from msvol.errors import OutputExistsError


def existing_result(tmp_path):
    final = tmp_path / "out" / "sub-01"
    final.mkdir(parents=True)
    (final / "report.json").write_text("old")
    return final


def test_an_existing_result_is_kept_without_force(tmp_path):
    final = existing_result(tmp_path)
    with pytest.raises(OutputExistsError, match="sub-01"):
        pipeline._write_atomically(final, {"report.json": "new"}, {}, force=False)
    assert (final / "report.json").read_text() == "old"
    assert sorted(path.name for path in final.parent.iterdir()) == ["sub-01"]  # no staging left behind


def test_force_replaces_and_keep_previous_moves_the_earlier_result(tmp_path):
    final = existing_result(tmp_path)
    previous = tmp_path / "out" / "previous" / "sub-01-20240101T000000"
    pipeline._write_atomically(final, {"report.json": "new"}, {}, force=True, keep_previous=previous)
    assert (final / "report.json").read_text() == "new"
    assert (previous / "report.json").read_text() == "old"


def test_a_failing_writer_leaves_the_earlier_result_untouched(tmp_path):
    final = existing_result(tmp_path)

    def broken(target):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        pipeline._write_atomically(final, {"report.json": "new"}, {}, force=True, writers={"dicom/x.dcm": broken})
    assert (final / "report.json").read_text() == "old"
    assert sorted(path.name for path in final.parent.iterdir()) == ["sub-01"]


@pytest.mark.parametrize("reviewed", ["final", "review"])
def test_force_never_deletes_a_reviewed_result(tmp_path, reviewed):
    """A forced rerun replaces the automated result; a signed report or a reviewer's masks move to
    OUT/previous/ with it instead of being deleted."""
    final = existing_result(tmp_path)
    (final / reviewed).mkdir()
    (final / reviewed / "report.json").write_text("signed")
    pipeline._write_atomically(final, {"report.json": "new"}, {}, force=True)
    assert (final / "report.json").read_text() == "new" and not (final / reviewed).exists()
    kept = list((tmp_path / "out" / "previous").glob("sub-01-*"))
    assert len(kept) == 1 and (kept[0] / reviewed / "report.json").read_text() == "signed"
