"""The package's shape: one namespace, the foundation imports no part, no import circles, short modules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "careloop"
PARTS = ("careloop.gateway", "careloop.monitor", "careloop.retrain", "careloop.console")
GATEWAY_CLIENT = "careloop.gateway.vllm_admin"  # the one vLLM adapter client, which retrain loads checkpoints with
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    """Every module under careloop/ by dotted name (a package by its own name)."""
    out: dict[str, Path] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """The careloop modules `path` imports anywhere in it (in functions too: a local import hides no circle)."""
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("careloop") and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(path, name, known) for name, path in known.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), ignoring a package's own children."""
    def edges(n: str) -> set[str]:
        # a package importing its own submodules (re-exports in __init__) is not a circle with them
        return {m for m in graph[n] if not m.startswith(n + ".")}

    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges(v):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles() -> None:
    """No two careloop modules import each other, directly or round about (local imports count)."""
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_circle() -> None:
    """The check above can fail: a planted a → b → c → a circle is reported."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_foundation_imports_no_part() -> None:
    """careloop.core is imported by the gateway, monitor, retrain and console, and imports none of them."""
    bad = {name: sorted(m for m in deps if m.startswith(PARTS) or m in {"careloop.cli", "careloop.demo"})
           for name, deps in _graph().items() if name.startswith("careloop.core")}
    assert {k: v for k, v in bad.items() if v} == {}


def _gateway_reach(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """What each monitor and retrain module imports from the gateway besides its vLLM adapter client."""
    def in_gateway(m: str) -> bool:
        return m == "careloop.gateway" or m.startswith("careloop.gateway.")

    bad = {name: sorted(m for m in deps if in_gateway(m) and m != GATEWAY_CLIENT)
           for name, deps in graph.items() if name.startswith(("careloop.monitor", "careloop.retrain"))}
    return {k: v for k, v in bad.items() if v}


def test_monitor_and_retrain_use_only_the_gateways_adapter_client() -> None:
    """The monitor and retrain import nothing of the gateway but vllm_admin (tracing lives in careloop.core)."""
    assert _gateway_reach(_graph()) == {}


def test_the_gateway_reach_check_finds_an_import() -> None:
    """The check above can fail: a monitor module importing the gateway package or a gateway module is reported."""
    graph = {"careloop.monitor.worker": {"careloop.gateway", "careloop.core.store"},
             "careloop.retrain.run": {"careloop.gateway.request_id", GATEWAY_CLIENT},
             "careloop.retrain.generate": {GATEWAY_CLIENT}, "careloop.gateway.app": {"careloop.gateway.proxy"}}
    assert _gateway_reach(graph) == {"careloop.monitor.worker": ["careloop.gateway"],
                                     "careloop.retrain.run": ["careloop.gateway.request_id"]}


def test_modules_are_short() -> None:
    """No product module over 400 lines (benchmarks and experiments live in bench/)."""
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_one_name_in_site_packages() -> None:
    """Only careloop/ is a top-level package of the project (no `service`, `monitor`, `retrain` to collide)."""
    tops = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert tops <= {"careloop", "tests", "bench"}
