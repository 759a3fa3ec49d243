"""The acquisition protocol: recognise the 3D FLAIR and 3D T1 of an exam, check them, choose one of each.

Rules come from the `series:` section of a protocol YAML (protocols/ms_standard.yaml documents
every key); geometry limits come from `params.ingest` (msvol/config.py). Works on header facts
only (`SeriesInfo`), so `msvol check` never has to read pixel data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from msvol.config import IngestParams
from msvol.datatypes import SeriesInfo
from msvol.errors import ConfigError

# Package data, so an installed wheel finds it; protocols/ms_standard.yaml at the top of the repository is
# the identical copy a site edits and passes with --protocol (tests/ingest/test_protocol.py keeps them equal).
DEFAULT_PROTOCOL = resources.files("msvol.ingest") / "protocols" / "ms_standard.yaml"
ROLES = ("flair", "t1")
ROLE_NAMES = {"flair": "3D FLAIR", "t1": "3D T1"}
RANGE_FIELDS = ("repetition_time_ms", "echo_time_ms", "inversion_time_ms")
Status = Literal["pass", "warn", "fail"]


@dataclass(frozen=True)
class SeriesRule:
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    required_acquisition_type: str | None
    required_ranges: dict[str, tuple[float, float]]
    expected_ranges: dict[str, tuple[float, float]]

    def matches(self, text: str) -> bool:
        return (any(re.search(pattern, text, re.IGNORECASE) for pattern in self.include)
                and not any(re.search(pattern, text, re.IGNORECASE) for pattern in self.exclude))


@dataclass(frozen=True)
class Protocol:
    source: Path  # the file, or the shipped protocol inside the package (importlib.resources)
    rules: dict[str, SeriesRule]  # role -> rule


@dataclass(frozen=True)
class Check:
    """One conformance rule applied to one series."""

    rule: str
    status: Status
    measured: str
    limit: str


@dataclass(frozen=True)
class Assessment:
    """A candidate series for a role and its checks."""

    series: SeriesInfo
    checks: tuple[Check, ...]

    @property
    def status(self) -> Status:
        statuses = {check.status for check in self.checks}
        return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass"


@dataclass(frozen=True)
class RoleDecision:
    """Which series fills a role, and why; `chosen` is None when no usable candidate exists."""

    role: str
    candidates: tuple[Assessment, ...]  # best first
    chosen: Assessment | None
    why: str


def load_protocol(path: Path | None = None) -> Protocol:
    """The `series:` rules of a protocol file (the shipped standard protocol when None)."""
    import yaml

    path = Path(path) if path is not None else DEFAULT_PROTOCOL  # a Path, or a Traversable of the package
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read protocol file ({exc})") from exc
    series = document.get("series")
    if not isinstance(series, dict) or set(series) != set(ROLES):
        raise ConfigError(f"{path}: 'series' must define exactly the roles {', '.join(ROLES)}")
    return Protocol(path, {role: _parse_rule(path, role, series[role]) for role in ROLES})


def _parse_rule(path: Path, role: str, entry) -> SeriesRule:
    if not isinstance(entry, dict):
        raise ConfigError(f"{path}: 'series.{role}' must be a mapping")
    unknown = set(entry) - {"include", "exclude", "require", "expect"}
    if unknown:
        raise ConfigError(f"{path}: unknown key 'series.{role}.{sorted(unknown)[0]}'; "
                          f"valid: include, exclude, require, expect")
    patterns = {}
    for key in ("include", "exclude"):
        values = entry.get(key) or []
        if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
            raise ConfigError(f"{path}: 'series.{role}.{key}' must be a list of regular expressions")
        for value in values:
            try:
                re.compile(value)
            except re.error as exc:
                raise ConfigError(f"{path}: 'series.{role}.{key}': invalid pattern {value!r} ({exc})") from exc
        patterns[key] = tuple(values)
    if not patterns["include"]:
        raise ConfigError(f"{path}: 'series.{role}.include' needs at least one pattern")
    require = dict(entry.get("require") or {})
    acquisition_type = require.pop("mr_acquisition_type", None)
    if acquisition_type is not None and str(acquisition_type).upper() not in ("2D", "3D"):
        raise ConfigError(f"{path}: 'series.{role}.require.mr_acquisition_type' must be 2D or 3D")
    return SeriesRule(patterns["include"], patterns["exclude"],
                      str(acquisition_type).upper() if acquisition_type is not None else None,
                      _parse_ranges(path, f"series.{role}.require", require),
                      _parse_ranges(path, f"series.{role}.expect", dict(entry.get("expect") or {})))


def _parse_ranges(path: Path, where: str, entries: dict) -> dict[str, tuple[float, float]]:
    ranges = {}
    for name, value in entries.items():
        if name not in RANGE_FIELDS:
            raise ConfigError(f"{path}: unknown key '{where}.{name}'; valid: {', '.join(RANGE_FIELDS)}")
        if (not isinstance(value, list) or len(value) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
                or value[0] > value[1]):
            raise ConfigError(f"{path}: '{where}.{name}' must be [low, high] in ms, got {value!r}")
        ranges[name] = (float(value[0]), float(value[1]))
    return ranges


def recognise(series: SeriesInfo, protocol: Protocol) -> str | None:
    """The role a series is a candidate for, by description and type; None for everything else."""
    if series.modality != "MR" or "LOCALIZER" in series.image_type:
        return None
    for role in ROLES:
        if protocol.rules[role].matches(series.description):
            return role
    return None


def check_series(series: SeriesInfo, role: str, protocol: Protocol, limits: IngestParams) -> tuple[Check, ...]:
    """Every conformance rule for one candidate series: pass, warn or fail with the measured value and the limit."""
    rule = protocol.rules[role]
    checks = [Check("readable as one 3D volume", "fail" if series.problems else "pass",
                    "; ".join(series.problems) or f"{series.shape[2]} slices", "one regular stack of slices")]
    if rule.required_acquisition_type is not None:
        measured = series.mr_acquisition_type or "absent"
        checks.append(Check("MR acquisition type", "pass" if measured == rule.required_acquisition_type else "fail",
                            measured, rule.required_acquisition_type))
    for ranges, failing in ((rule.required_ranges, "fail"), (rule.expected_ranges, "warn")):
        for name, (low, high) in ranges.items():
            value = getattr(series, name)
            within = value is not None and low <= value <= high
            checks.append(Check(name.removesuffix("_ms").replace("_", " ") + " (ms)", "pass" if within else failing,
                                "absent" if value is None else f"{value:g}", f"{low:g}-{high:g}"))
    checks += _geometry_checks(series, limits)
    strength = series.acquisition.field_strength_t
    checks.append(Check("field strength (T)",
                        "pass" if strength is not None and any(abs(strength - expected) < 0.1
                                                               for expected in limits.expected_field_strengths_t)
                        else "warn", "absent" if strength is None else f"{strength:g}",
                        " or ".join(f"{value:g}" for value in limits.expected_field_strengths_t)))
    if role == "t1":
        checks.append(Check("contrast agent", "warn" if series.contrast_agent else "pass",
                            series.contrast_agent or "none", "none (atrophy is measured before contrast)"))
    return tuple(checks)


def _geometry_checks(series: SeriesInfo, limits: IngestParams) -> list[Check]:
    voxel = series.voxel_size_mm
    checks = [Check("voxel size (mm)", _graded(voxel, limits.warn_voxel_size_mm, limits.max_voxel_size_mm),
                    "unknown" if voxel is None else f"{voxel:.2f}",
                    f"<= {limits.warn_voxel_size_mm:g} (warn), <= {limits.max_voxel_size_mm:g} (fail)")]
    thickness = series.slice_thickness_mm
    checks.append(Check("slice thickness (mm)",
                        "warn" if thickness is None else _graded(thickness, limits.warn_voxel_size_mm,
                                                                  limits.max_voxel_size_mm),
                        "absent" if thickness is None else f"{thickness:.2f}",
                        f"<= {limits.warn_voxel_size_mm:g} (warn), <= {limits.max_voxel_size_mm:g} (fail)"))
    if thickness is not None and series.slice_spacing_mm is not None:
        gap = series.slice_spacing_mm - thickness
        checks.append(Check("gap between slices (mm)", "pass" if gap <= limits.max_slice_gap_mm else "warn",
                            f"{max(gap, 0.0):.2f}", f"<= {limits.max_slice_gap_mm:g}"))
    error = series.geometry_error_mm
    checks.append(Check("slice positions on one grid (mm)",
                        "fail" if error is None or error > limits.geometry_tolerance_mm else "pass",
                        "irregular" if error is None else f"{error:.3f}", f"<= {limits.geometry_tolerance_mm:g}"))
    if series.pixel_spacing_mm is not None and series.slice_spacing_mm is not None:
        extent = min(series.shape[0] * series.pixel_spacing_mm[0], series.shape[1] * series.pixel_spacing_mm[1],
                     series.shape[2] * series.slice_spacing_mm)
        checks.append(Check("field of view (mm)", "pass" if extent >= limits.min_field_of_view_mm else "fail",
                            f"{extent:.0f}", f">= {limits.min_field_of_view_mm:g} along every axis"))
    return checks


def _graded(value: float | None, warn_above: float, fail_above: float) -> Status:
    if value is None or value > fail_above:
        return "fail"
    return "warn" if value > warn_above else "pass"


def choose(role: str, candidates: list[SeriesInfo], protocol: Protocol, limits: IngestParams) -> RoleDecision:
    """Rank the candidates for a role by the documented tie-break rules; say which was chosen and why."""
    assessed = [Assessment(series, check_series(series, role, protocol, limits)) for series in candidates]
    if not assessed:
        return RoleDecision(role, (), None, f"no series matches the {ROLE_NAMES[role]} rule of {protocol.source.name}")
    ranked = sorted(assessed, key=_preference)
    best = ranked[0]
    if best.status == "fail":
        failed = "; ".join(f"{check.rule} {check.measured} (needs {check.limit})"
                           for check in best.checks if check.status == "fail")
        return RoleDecision(role, tuple(ranked), None, f"{best.series.label} is not usable: {failed}")
    if len(ranked) == 1:
        return RoleDecision(role, tuple(ranked), best, "the only candidate")
    reasons = [f"over {other.series.label}: {_separating_reason(best, other)}" for other in ranked[1:]]
    return RoleDecision(role, tuple(ranked), best, "; ".join(reasons))


# Tie-break rules in order, each a (reason, key) pair; a smaller key is preferred.
_RULES = (
    ("it passes every required check", lambda a: a.status == "fail"),
    ("fewer protocol warnings", lambda a: sum(check.status == "warn" for check in a.checks)),
    ("ORIGINAL, not a DERIVED reformat", lambda a: "DERIVED" in a.series.image_type),
    ("smaller voxels", lambda a: round(_voxel_volume(a.series), 3)),
    ("acquired later (a repeat)", lambda a: -(a.series.number or 0)),
)


def _preference(assessment: Assessment) -> tuple:
    return tuple(key(assessment) for _, key in _RULES) + (assessment.series.series_uid,)


def _separating_reason(best: Assessment, other: Assessment) -> str:
    for reason, key in _RULES:
        if key(best) != key(other):
            return reason
    return "same on every rule; the lower series UID is taken so the choice is repeatable"


def _voxel_volume(series: SeriesInfo) -> float:
    if series.pixel_spacing_mm is None or series.slice_spacing_mm is None:
        return float("inf")
    return series.pixel_spacing_mm[0] * series.pixel_spacing_mm[1] * series.slice_spacing_mm


def exam_decisions(series: list[SeriesInfo], protocol: Protocol, limits: IngestParams) -> dict[str, RoleDecision]:
    """One decision per role for the series of one exam."""
    by_role: dict[str, list[SeriesInfo]] = {role: [] for role in ROLES}
    for item in series:
        role = recognise(item, protocol)
        if role is not None:
            by_role[role].append(item)
    return {role: choose(role, by_role[role], protocol, limits) for role in ROLES}
