"""The house (docs/internals.md): no import circles, imports inside functions only at a few documented places,
few modules at the top, and the layers contract itself checked by import-linter's own library."""
import ast
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hlrp_ladder"


def _cycle(graph: grimp.ImportGraph, package: str = "hlrp_ladder") -> list[str]:
    """One import cycle among ``package``'s modules, or [] (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str]:
        state[module] = 1
        stack.append(module)
        for nxt in sorted(graph.find_modules_directly_imported_by(module)):
            if not nxt.startswith(package):
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[module] = 2
        return []

    for module in sorted(graph.modules):
        if module.startswith(package) and module not in state:
            found = visit(module)
            if found:
                return found
    return []


@pytest.mark.pure
def test_no_import_circle():
    graph = grimp.build_graph("hlrp_ladder")
    assert _cycle(graph) == []


@pytest.mark.pure
def test_the_cycle_finder_finds_a_cycle(tmp_path, monkeypatch):
    # the check above must be able to fail: a two-module package that imports itself in a circle
    pkg = tmp_path / "circle_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from circle_pkg import b\n")
    (pkg / "b.py").write_text("from circle_pkg import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _cycle(grimp.build_graph("circle_pkg"), "circle_pkg") in (["circle_pkg.a", "circle_pkg.b", "circle_pkg.a"],
                                                                     ["circle_pkg.b", "circle_pkg.a", "circle_pkg.b"])


def _function_level_imports() -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                    [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if any(n == "hlrp_ladder" or n.startswith("hlrp_ladder.") for n in names):
                    out.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return out


@pytest.mark.pure
def test_imports_of_the_package_inside_functions_are_few():
    # each would be a hidden arrow import-linter cannot see at import time; at most 5, each a documented plugin point
    found = _function_level_imports()
    assert len(found) <= 5, found


@pytest.mark.pure
def test_the_top_of_the_package_holds_few_modules():
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(modules) <= 8, modules


@pytest.mark.process  # runs import-linter's own command
def test_the_layers_contract_is_kept():
    res = subprocess.run([str(Path(sys.executable).parent / "lint-imports")], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and "0 broken" in res.stdout, res.stdout[-3000:]
