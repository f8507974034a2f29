"""The house rules of the source tree, checked on the code itself (README, "What is where").

Imports flow one way: drivers -> the driver contract; the daemon's core -> contract and config; tools -> core.
Every import counts, including those under ``if TYPE_CHECKING:`` and inside functions: a circle that only
type checkers see still ties two rooms together.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _modules() -> dict[str, Path]:
    out = {}
    for top in ("agent", "drivers"):
        for path in (ROOT / top).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module an import names (``agent.config.Site`` -> ``agent.config``), or None."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(mod: str) -> set[str]:
    path = MODULES[mod]
    is_pkg = path.name == "__init__.py"
    pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for n in names:
            target = _resolve(n)
            if target and target != mod:
                found.add(target)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def _is_package_init_edge(a: str, b: str) -> bool:
    # a package's __init__ re-exporting its own submodules is not a circle between rooms
    return b.startswith(a + ".") or a.startswith(b + ".")


def test_no_import_circles() -> None:
    bad = [c for c in _cycles() if not all(_is_package_init_edge(x, y) for x in c for y in c if x != y)]
    assert bad == [], f"import circles: {bad}"


def _room(mod: str) -> str:
    parts = mod.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else mod


VOCABULARY = {"agent", "agent.errors", "agent.model", "agent.types"}
# room -> rooms it may import (besides itself and the shared vocabulary)
ALLOWED = {
    "agent.contract": set(),
    "agent.config": {"agent.contract"},
    "agent.outbox": set(),
    "agent.uplink": {"agent.config", "agent.outbox"},
    "agent.obs": set(),
    "agent.remote": set(),
    "agent.core": {"agent.contract", "agent.config", "agent.outbox", "agent.uplink", "agent.obs", "agent.remote"},
    "agent.tools": {"agent.contract", "agent.config", "agent.outbox", "agent.uplink", "agent.core", "agent.obs",
                    "agent.remote"},
}


def test_rooms_import_one_way() -> None:
    bad = []
    for mod, deps in GRAPH.items():
        if not mod.startswith("agent.") or mod in VOCABULARY:
            continue
        room = _room(mod)
        allowed = ALLOWED.get(room)
        assert allowed is not None, f"{mod}: room {room} has no rule in this test (add it to ALLOWED)"
        for d in deps:
            if d in VOCABULARY or _room(d) == room or _room(d) in allowed:
                continue
            bad.append(f"{mod} -> {d}")
    assert bad == []


def test_vocabulary_is_a_leaf() -> None:
    for mod in VOCABULARY - {"agent"}:
        assert GRAPH[mod] <= VOCABULARY, f"{mod} imports {GRAPH[mod] - VOCABULARY}"


def test_drivers_see_only_the_contract() -> None:
    """Driver runtime code depends on the contract only; simulators and driver CLIs are tools."""
    bad = []
    for mod, deps in GRAPH.items():
        if not mod.startswith("drivers.") or mod.rsplit(".", 1)[-1] in ("sim", "cli"):
            continue
        for d in deps:
            if d.startswith("agent.") and d not in VOCABULARY and _room(d) != "agent.contract":
                bad.append(f"{mod} -> {d}")
    assert bad == []


def test_agent_top_level_holds_only_packages_and_vocabulary() -> None:
    flat = sorted(p.name for p in (ROOT / "agent").glob("*.py"))
    assert flat == ["__init__.py", "errors.py", "model.py", "types.py"]


CLASS_LINES = 350  # "keep a class under ~300 lines": a class past this is doing more than one job


def test_no_class_holds_several_responsibilities() -> None:
    big = []
    for mod, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                n = node.end_lineno - node.lineno + 1
                if n > CLASS_LINES:
                    big.append(f"{mod}.{node.name}: {n} lines")
    assert big == []
