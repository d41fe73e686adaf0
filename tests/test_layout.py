"""The package layout keeps its promises: no import circles, no private cross-imports, small
modules, and the public API importable where the README says."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "capsroute"
MAX_MODULE_LINES = 450


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the capsroute modules it imports (at module level or inside functions)."""
    modules = {
        module_name(path): path for path in PACKAGE.rglob("*.py") if "conf" not in path.parts
    }
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_detects_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circles_in_the_package() -> None:
    assert find_cycle(import_graph()) is None


def test_no_private_names_imported_across_modules() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("capsroute"):
                offenders += [f"{path.name}: {a.name}" for a in node.names if a.name[0] == "_"]
    assert offenders == []


def test_modules_stay_small() -> None:
    sizes = {module_name(p): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def test_dependencies_point_down_the_wings() -> None:
    """Lower wings never import upper ones (cli > study/report > run > nn/routing/data)."""
    rank = {"cli": 3, "study": 2, "report": 2, "run": 1, "nn": 0, "routing": 0, "data": 0}
    upward = []
    for name, targets in import_graph().items():
        wing = name.split(".")[1] if name.count(".") else ""
        for target in targets:
            other = target.split(".")[1] if target.count(".") else ""
            if wing in rank and other in rank and rank[other] > rank[wing]:
                upward.append(f"{name} -> {target}")
    assert upward == []


def test_public_api_and_entry_point_import_without_re_entering_a_module() -> None:
    """Importing the CLI never imports a module that is still initialising (a runtime circle)."""
    probe = """
import builtins, sys
seen = []
real = builtins.__import__
def spy(name, globals=None, locals=None, fromlist=(), level=0):
    spec = getattr(sys.modules.get(name), "__spec__", None)
    importer = (globals or {}).get("__name__", "")
    if name.startswith("capsroute") and getattr(spec, "_initializing", False):
        if importer != name and not importer.startswith(name + "."):  # not a package's own part
            seen.append((importer, name))
    return real(name, globals, locals, fromlist, level)
builtins.__import__ = spy
import importlib, pkgutil
import capsroute, capsroute.cli
from capsroute.routing import dynamic_routing, squash
for info in pkgutil.walk_packages(capsroute.__path__, "capsroute."):
    if ".conf" not in info.name and not info.name.endswith("__main__"):
        importlib.import_module(info.name)
print(seen)
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
