"""The package's structure promises (DESIGN.md, "Layout"): data flows one way, the CLI starts
without the heavy parts, no function grows past 80 lines, no module reaches into another's
private names."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Source folder -> the package it installs as (pyproject maps solvers/ and heuristics/ into provrepair).
FOLDERS = {"provrepair": "provrepair", "solvers": "provrepair.solvers", "heuristics": "provrepair.heuristics"}
#: Folders in the order data flows (DESIGN.md); a folder may import only from folders before it.
LAYERS = ["provrepair.errors", "provrepair.version", "provrepair.fileio", "provrepair.callable_package", "provrepair.solvers",
          "provrepair.models",
          "provrepair.specs", "provrepair.data", "provrepair.zoo", "provrepair.certify", "provrepair.heuristics",
          "provrepair.repair", "provrepair.api", "provrepair.evaluate", "provrepair.demo", "provrepair.cli",
          "provrepair.__main__", "provrepair"]
MAX_FUNCTION_LINES = 80


def _loaded_after(statement: str) -> list[str]:
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout)


def test_import_solvers_loads_no_repairer_and_no_evaluation():
    loaded = _loaded_after("import provrepair.solvers")
    assert not [m for m in loaded if m.startswith(("provrepair.repair", "provrepair.evaluate"))]
    assert "torch" not in loaded


def test_import_certify_loads_no_repairer():
    loaded = _loaded_after("import provrepair.certify")
    assert not [m for m in loaded if m.startswith(("provrepair.repair", "provrepair.api", "provrepair.evaluate"))]


def test_cli_parser_needs_neither_torch_nor_numpy():
    loaded = _loaded_after("from provrepair.cli import build_parser; build_parser()")
    assert not [m for m in loaded if m.split(".")[0] in ("torch", "numpy", "scipy")]
    assert not [m for m in loaded if m.startswith(("provrepair.models", "provrepair.api"))]


def _modules():
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = package.split(".") + list(rel.parts)
            is_init = parts[-1] == "__init__"
            if is_init:
                parts = parts[:-1]
            yield ".".join(parts), is_init, ast.parse(path.read_text(), str(path))


def _imports(module: str, is_init: bool, tree: ast.AST):
    """(imported module, names) for every import of a project module, relative ones resolved."""
    package = module if is_init else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            yield base, [a.name for a in node.names]


def _layer(module: str) -> int:
    best = max((name for name in LAYERS if module == name or module.startswith(name + ".")), key=len)
    return LAYERS.index(best)


def test_data_flows_one_way_between_folders():
    backwards = []
    for module, is_init, tree in _modules():
        for target, names in _imports(module, is_init, tree):
            if target.split(".")[0] != "provrepair":
                continue
            for t in [target] + [f"{target}.{n}" for n in names]:
                if any(t == n or t.startswith(n + ".") for n in LAYERS):
                    if _layer(t) > _layer(module) and not (module == "provrepair" or t == "provrepair"):
                        backwards.append(f"{module} imports {t}")
                    break
    assert not backwards, "imports against the data flow:\n" + "\n".join(sorted(set(backwards)))


def test_no_function_over_80_lines():
    long = [f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
            for module, _, tree in _modules() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, "split these functions:\n" + "\n".join(long)


def test_no_module_imports_another_modules_private_names():
    leaks = [f"{module} imports {name} from {target}" for module, is_init, tree in _modules()
             for target, names in _imports(module, is_init, tree) if target.split(".")[0] == "provrepair"
             for name in names if name.startswith("_") and not name.startswith("__")]
    assert not leaks, "\n".join(leaks)


@pytest.mark.parametrize("argv", [["--help"], ["certify", "--help"], ["repair", "--help"]])
def test_help_works_without_loading_torch(argv):
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "provrepair", *argv], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 0 and "usage: provrepair" in out.stdout
    assert " torch\n" not in out.stderr and "| torch" not in out.stderr
