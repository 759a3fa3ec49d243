"""The house import rules (docs/STYLE.md section 1), checked by walking msvol/*.py with `ast`.

Every import counts, including those deferred inside functions. `from msvol import X` imports
the module msvol/X.py when it exists, otherwise a name of msvol/__init__.py (the version).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "msvol"
MODULES = sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem not in ("__init__", "__main__"))

LEAVES = {"datatypes", "errors", "config", "atlas", "bundle"}  # atlas (MNI template), bundle (model files): extra leaves
STAGES = {"ingest", "preprocess", "register", "segment", "lesions", "atrophy", "report", "report_html"}
# module -> (may import from msvol, or None for "anything not forbidden"; must not import)
# STYLE.md: "all may import datatypes, errors, config", so a leaf may use another leaf
# (config raises errors.ConfigError) but nothing beyond the leaves.
RULES = {
    **{leaf: (LEAVES - {leaf}, set()) for leaf in LEAVES},
    **{stage: (LEAVES, set()) for stage in STAGES},
    "synth": (LEAVES | {"synth_anatomy"}, {"pipeline", "cli"}),
    "synth_anatomy": (LEAVES, {"pipeline", "cli"}),  # synth split by responsibility (STYLE: < ~400 lines)
    "train": (LEAVES | {"randomise", "synth"}, {"pipeline", "cli"}),
    "randomise": (LEAVES, {"pipeline", "cli"}),
    "evaluate": (LEAVES, {"pipeline", "cli"}),
    # ingest split by responsibility: ingest_dicom reads DICOM and reuses the NIfTI checks of ingest;
    # protocol holds the series rules both ingest_dicom and `msvol check` apply
    "protocol": (LEAVES, {"pipeline", "cli"}),
    "ingest_dicom": (LEAVES | {"protocol", "ingest"}, {"pipeline", "cli"}),
    "pseudonyms": (LEAVES, {"pipeline", "cli"}),
    "dicom_export": (LEAVES, {"pipeline", "cli"}),
    "synth_dicom": (LEAVES, {"pipeline", "cli"}),
    "pipeline": (None, {"cli", "batch", "review"}),
    "batch": (None, {"cli"}),
    "cli": (None, set()),
}


def msvol_imports(module: str) -> list[tuple[str, list[str], int]]:
    """(imported msvol module, names imported from it, line) for every import in msvol/<module>.py."""
    return imports_in((PACKAGE / f"{module}.py").read_text())


def imports_in(source: str) -> list[tuple[str, list[str], int]]:
    """The msvol imports of a source text. The package itself (msvol/__init__.py) is "__init__"."""
    tree = ast.parse(source)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "msvol":
                    found.append((parts[1] if len(parts) > 1 else "__init__", [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import inside the package
                parts = ["msvol"] + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "msvol":
                parts = node.module.split(".")
            else:
                continue
            names = [alias.name for alias in node.names]
            if len(parts) > 1:
                found.append((parts[1], names, node.lineno))
            else:  # from msvol import X: a submodule or a name of __init__
                for name in names:
                    is_module = (PACKAGE / f"{name}.py").is_file() or (PACKAGE / name).is_dir()
                    found.append((name if is_module else "__init__", [] if is_module else [name], node.lineno))
    return found


def test_every_module_has_a_rule():
    """A new module must be placed in the table (STYLE.md section 1) before it can import anything."""
    assert set(MODULES) - set(RULES) == set(), "add the new module to RULES and to STYLE.md section 1"


def test_the_walker_sees_every_kind_of_import():
    source = (
        "import numpy\n"
        "import msvol.lesions\n"
        "from msvol import __version__, pipeline\n"
        "from msvol.segment import build_network, _private\n"
        "from . import atrophy\n"
        "from .config import Params\n"
        "def run():\n"
        "    from msvol import batch as b\n"
    )
    assert imports_in(source) == [
        ("lesions", [], 2), ("__init__", ["__version__"], 3), ("pipeline", [], 3),
        ("segment", ["build_network", "_private"], 4), ("atrophy", [], 5), ("config", ["Params"], 6),
        ("batch", [], 8)]


def violations(module: str, imports: list[tuple[str, list[str], int]]) -> list[str]:
    allowed, forbidden = RULES.get(module, (set(), set()))
    return [f"msvol/{module}.py:{line} imports msvol.{imported}" for imported, _, line in imports
            if imported not in ("__init__", module)
            and (imported in forbidden or (allowed is not None and imported not in allowed))]


def test_the_table_check_catches_a_violation():
    assert violations("ingest", imports_in("from msvol.config import IngestParams\n"
                                           "from msvol import __version__")) == []
    assert violations("ingest", imports_in("def f():\n    from msvol import segment")) == [
        "msvol/ingest.py:2 imports msvol.segment"]
    assert violations("pipeline", imports_in("from msvol import batch, segment")) == [
        "msvol/pipeline.py:1 imports msvol.batch"]
    assert violations("config", imports_in("import msvol.ingest")) == ["msvol/config.py:1 imports msvol.ingest"]
    assert violations("train", imports_in("from msvol import randomise, synth, lesions")) == [
        "msvol/train.py:1 imports msvol.lesions"]


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


def test_package_init_imports_nothing_from_msvol():
    assert msvol_imports("__init__") == []


def test_cli_uses_no_private_names():
    private = [f"msvol/cli.py:{line} imports {name} from msvol.{imported}"
               for imported, names, line in msvol_imports("cli") for name in names if name.startswith("_")
               and not name.startswith("__")]
    assert not private, "; ".join(private)


@pytest.mark.parametrize("statement", ["import msvol", "import msvol.cli", "import msvol.config"])
def test_light_imports_do_not_load_heavy_libraries(statement):
    code = f"{statement}, sys; print(sorted(m for m in ('torch', 'ants', 'monai') if m in sys.modules))"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert output.stdout.strip() == "[]"
