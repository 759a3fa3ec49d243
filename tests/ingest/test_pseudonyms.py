"""Tests for pseudonyms: stable, random, and stored only in an owner-only file under the output folder."""

from __future__ import annotations

import stat

from msvol.ingest.pseudonyms import Registry


def test_a_patient_keeps_its_pseudonym_across_runs(tmp_path):
    first = Registry(tmp_path).pseudonym("MRN12345")
    assert first == Registry(tmp_path).pseudonym("MRN12345")
    assert "12345" not in first and len(first) == 8


def test_patients_get_different_pseudonyms(tmp_path):
    registry = Registry(tmp_path)
    names = {registry.pseudonym(f"MRN{number}") for number in range(50)}
    assert len(names) == 50


def test_the_mapping_is_readable_by_the_owner_only(tmp_path):
    registry = Registry(tmp_path)
    pseudonym = registry.pseudonym("MRN12345")
    assert stat.S_IMODE(registry.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(registry.path.parent.stat().st_mode) == 0o700
    assert registry.path.parent == tmp_path / "private"
    lines = registry.path.read_text().splitlines()
    assert lines[0].split("\t") == ["pseudonym", "patient_id", "created"]
    assert lines[1].split("\t")[:2] == [pseudonym, "MRN12345"]
    assert not list(registry.path.parent.glob(".*partial*"))
