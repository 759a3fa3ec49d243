"""The house import rules (STYLE.md section 1), checked by walking msvol/**/*.py with `ast`.

Every import counts, including those deferred inside functions. A module is named by its dotted
path below msvol ("stages.lesions", "pipeline"); its part is the first component ("stages").
`from msvol.stages import lesions` imports the module stages.lesions; a name that is no module
(`from msvol import __version__`) counts as an import of the package's __init__.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "msvol"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


MODULES = sorted(module_name(path) for path in PACKAGE.rglob("*.py") if path.name != "__main__.py")
SUBPACKAGE_INITS = sorted(module_name(path) for path in PACKAGE.glob("*/__init__.py"))

LEAVES = {"config", "datatypes", "errors"}
ATLAS = "stages.atlas"  # the MNI template loader: a leaf inside stages, used by stages' composer and by synth
# the thresholds and confluent-growth test the lesion stages share, and the smooth field atrophy and the subtraction
# image share: leaves inside stages too
STAGE_LEAVES = {ATLAS, "stages.lesion_rules", "stages.smooth_field"}
# part -> (parts and modules it may import besides the leaves, or None for "anything not forbidden"; forbidden)
RULES = {
    "config": (set(), set()), "datatypes": (set(), set()), "errors": (set(), set()),
    "ingest": ({"ingest"}, {"stages", "outputs", "pipeline", "review", "ops", "cli"}),
    "stages": ({"models"} | STAGE_LEAVES, {"pipeline", "outputs", "cli"}),
    "outputs": ({"outputs"}, {"stages", "pipeline", "review", "ops", "cli"}),
    "models": (set(), set()),
    "synth": ({"synth", "models", ATLAS}, {"pipeline", "cli", "review", "ops"}),
    "training": ({"training", "synth", "models"}, {"pipeline", "cli", "review", "ops"}),
    "evaluate": ({"evaluate_io", "evaluate_lesions", "evaluate_table"}, {"pipeline", "cli"}),
    # msvol.evaluate split by responsibility: reading, array scores, the text table (leaves besides)
    "evaluate_io": (set(), {"pipeline", "cli"}),
    "evaluate_lesions": (set(), {"pipeline", "cli"}),
    "evaluate_table": (set(), {"pipeline", "cli"}),
    "pipeline": ({"ingest", "stages", "outputs", "models", "run_files"}, {"review", "ops", "cli"}),
    # the composer's label maps and viewer images, back on each input's grid (split from pipeline)
    "run_files": ({"stages"}, {"pipeline", "outputs", "review", "ops", "cli"}),
    # the reader's loop reads report.json and label files; never the pipeline, its stages or torch
    "review": ({"review", "outputs"}, {"pipeline", "stages", "ingest", "models", "training", "synth", "ops", "cli"}),
    # runs the pipeline over many exams: states, claims and findings in the store; the cohort reads the report
    # schema's constants (outputs); never the commands (a scheduler imports ops without click)
    "ops": ({"ops", "pipeline", "ingest", "outputs", "review.store", "review.findings"},
            {"cli", "cli_review", "cli_cohort", "cli_progress", "stages", "models", "training", "synth"}),
    "cli": (None, set()),
    "cli_review": (None, set()),  # the reader's commands, added to cli's group
    "cli_progress": (None, set()),  # what `msvol run` shows on the terminal
    "cli_cohort": (None, set()),  # the researcher's cohort command, added to cli's group
}


def part_of(module: str) -> str:
    return module.split(".")[0]


def is_module(dotted: str) -> bool:
    path = PACKAGE.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def msvol_imports(module: str) -> list[tuple[str, list[str], int]]:
    """(imported msvol module, names imported from it, line) for every import in that module."""
    path = PACKAGE.joinpath(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    if module == "__init__":
        path = PACKAGE / "__init__.py"
    return imports_in(path.read_text(), package=module if path.name == "__init__.py" else module.rpartition(".")[0])


def imports_in(source: str, package: str = "") -> list[tuple[str, list[str], int]]:
    """The msvol imports of a source text (as dotted names below msvol; the package itself is "__init__").
    `package` is the dotted package of the source, for relative imports."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "msvol":
                    found.append((".".join(parts[1:]) or "__init__", [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import inside the package
                base = [part for part in package.split(".") if part and part != "__init__"]
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                parts = ["msvol", *base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.split(".")[0] == "msvol":
                parts = node.module.split(".")
            else:
                continue
            origin = ".".join(parts[1:])
            for alias in node.names:
                candidate = f"{origin}.{alias.name}" if origin else alias.name
                if is_module(candidate):
                    found.append((candidate, [], node.lineno))
                else:
                    found.append((origin or "__init__", [alias.name], node.lineno))
    return found


def violations(module: str, imports: list[tuple[str, list[str], int]]) -> list[str]:
    allowed, forbidden = RULES.get(part_of(module), (set(), set()))
    problems = []
    for imported, _, line in imports:
        if imported == "__init__" or imported == module or part_of(imported) in LEAVES and part_of(module) != "errors":
            continue
        part = part_of(imported)
        if part == part_of(module) == "stages" and imported not in STAGE_LEAVES:
            problems.append(f"msvol.{module} (line {line}) imports msvol.{imported}: a stage never imports another stage")
        elif part in forbidden or (allowed is not None and part not in allowed and imported not in allowed):
            problems.append(f"msvol.{module} (line {line}) imports msvol.{imported}")
    return problems


def test_every_part_has_a_rule():
    """A new top-level module or subpackage must be placed in the table (STYLE.md section 1) first."""
    assert {part_of(module) for module in MODULES} - set(RULES) - {"__init__"} == set(), \
        "add the new part to RULES and to STYLE.md section 1"


def test_the_walker_sees_every_kind_of_import():
    source = (
        "import numpy\n"
        "import msvol.stages.lesions\n"
        "from msvol import __version__, pipeline\n"
        "from msvol.stages.segment import build_network, _private\n"
        "from . import atrophy\n"
        "from ..config import Params\n"
        "def run():\n"
        "    from msvol.ingest import dicom as ingest_dicom\n"
    )
    assert imports_in(source, package="stages") == [
        ("stages.lesions", [], 2), ("__init__", ["__version__"], 3), ("pipeline", [], 3),
        ("stages.segment", ["build_network"], 4), ("stages.segment", ["_private"], 4), ("stages.atrophy", [], 5),
        ("config", ["Params"], 6),
        ("ingest.dicom", [], 8)]


def test_the_table_check_catches_a_violation():
    assert violations("ingest.bids", imports_in("from msvol.config import IngestParams\n"
                                                "from msvol import __version__")) == []
    assert violations("ingest.bids", imports_in("def f():\n    from msvol.stages import segment")) == [
        "msvol.ingest.bids (line 2) imports msvol.stages.segment"]
    assert violations("stages.lesions", imports_in("from msvol.stages import register")) == [
        "msvol.stages.lesions (line 1) imports msvol.stages.register: a stage never imports another stage"]
    assert violations("stages.segment", imports_in("from msvol.models import bundle\nfrom msvol.stages import atlas")) == []
    assert violations("pipeline", imports_in("from msvol.ops import batch\nfrom msvol.stages import segment")) == [
        "msvol.pipeline (line 1) imports msvol.ops.batch"]
    assert violations("ops.batch", imports_in("from msvol.review import store, findings\nfrom msvol import pipeline")) \
        == []
    assert violations("ops.batch", imports_in("from msvol import cli\nfrom msvol.review import decisions")) == [
        "msvol.ops.batch (line 1) imports msvol.cli", "msvol.ops.batch (line 2) imports msvol.review.decisions"]
    assert violations("config", imports_in("import msvol.ingest.bids")) == ["msvol.config (line 1) imports msvol.ingest.bids"]
    assert violations("outputs.html", imports_in("from msvol.stages import lesions")) == [
        "msvol.outputs.html (line 1) imports msvol.stages.lesions"]
    assert violations("training.train", imports_in("from msvol.synth import patients\nfrom msvol.stages import lesions")) == [
        "msvol.training.train (line 2) imports msvol.stages.lesions"]
    assert violations("synth.patients", imports_in("from msvol import pipeline")) == [
        "msvol.synth.patients (line 1) imports msvol.pipeline"]


@pytest.mark.parametrize("module", MODULES)
def test_module_follows_the_import_table(module):
    problems = violations(module, msvol_imports(module))
    assert not problems, "; ".join(problems)


def test_leaf_modules_do_not_import_each_other_in_a_cycle():
    graph = {leaf: {name for name, _, _ in msvol_imports(leaf)} & LEAVES for leaf in LEAVES}
    for leaf, targets in graph.items():
        for target in targets:
            assert leaf not in graph[target], f"msvol.{leaf} and msvol.{target} import each other"
    assert graph["errors"] == set(), "errors is the base of everything and imports nothing from msvol"
    assert [name for name, _, _ in msvol_imports(ATLAS)] == [], "the atlas loader is a leaf"
    assert {name for name, _, _ in msvol_imports("stages.lesion_rules")} <= LEAVES, "the lesion rules are a leaf"
    assert {name for name, _, _ in msvol_imports("stages.smooth_field")} <= LEAVES, "the smooth field is a leaf"


@pytest.mark.parametrize("module", ["__init__", *SUBPACKAGE_INITS])
def test_package_inits_import_nothing_from_msvol(module):
    """Importing a subpackage (msvol.stages) must not pull in its modules: the heavy ones import torch."""
    assert msvol_imports(module) == []


def test_cli_uses_no_private_names():
    private = [f"msvol/cli.py:{line} imports {name} from msvol.{imported}"
               for imported, names, line in msvol_imports("cli") for name in names if name.startswith("_")
               and not name.startswith("__")]
    assert not private, "; ".join(private)


HEAVY = "print(sorted(m for m in ('torch', 'ants', 'monai') if m in sys.modules))"


@pytest.mark.parametrize("statement", ["import msvol", "import msvol.cli", "import msvol.config",
                                       "import msvol.ingest, msvol.stages, msvol.outputs, msvol.models",
                                       "import msvol.review.api, msvol.review.signoff, msvol.review.decisions"])
def test_light_imports_do_not_load_heavy_libraries(statement):
    output = subprocess.run([sys.executable, "-c", f"{statement}, sys; {HEAVY}"], capture_output=True, text=True,
                            check=True)
    assert output.stdout.strip() == "[]"


def test_help_loads_no_heavy_library():
    code = ("import sys\nfrom msvol.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            + HEAVY)
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Usage" in output.stdout and output.stdout.strip().splitlines()[-1] == "[]"
