"""The house rules of the code base, read from the source: no import circle (function-level imports
count too), one name per public class, the agent apart from the seed, libtorrent in one module, and the
HTTP-only commands free of it."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("hfbt", "tracker")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Every project module this file imports, at any depth of the file (not only the top)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found.update(n for n in names if n in known)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(path, mods) - {name} for name, path in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_sees_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_not_even_behind_function_level_imports() -> None:
    assert _cycles(_graph()) == []


def test_nothing_under_agent_imports_the_seed() -> None:
    bad = [(a, b) for a, deps in _graph().items() for b in deps if a.startswith("hfbt.agent")]
    assert [(a, b) for a, b in bad if b.startswith("hfbt.seed")] == []


def test_only_swarm_imports_libtorrent() -> None:
    users = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import) and any(a.name == "libtorrent" for a in node.names):
                users.append(name)
            elif isinstance(node, ast.ImportFrom) and node.module == "libtorrent":
                users.append(name)
    assert users == ["hfbt.swarm"]


def test_no_two_public_classes_share_a_name() -> None:
    homes: dict[str, list[str]] = defaultdict(list)
    for name, path in _modules().items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                homes[node.name].append(name)
    assert {cls: where for cls, where in homes.items() if len(where) > 1} == {}


def test_status_and_gc_load_no_libtorrent() -> None:
    code = (
        "import sys, hfbt.status, hfbt.gc, hfbt.agent.client\n"
        "sys.exit(1 if 'libtorrent' in sys.modules else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr or "libtorrent was imported"


def test_an_embedded_pull_loads_huggingface_hub_only_to_fall_back() -> None:
    # Half of a pull's import time; a node needs it only for the origin fallback (hfbt.agent.node.hub_client).
    code = "import sys, hfbt.cli, hfbt.pull\nsys.exit(1 if 'huggingface_hub' in sys.modules else 0)\n"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr or "huggingface_hub was imported"
