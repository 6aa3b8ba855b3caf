"""The shape of the house (docs/architecture.md): imports point one way, ``service``, ``worker`` -> ``jobs`` ->
``converter``, never back and never sideways; no module import cycles, lazy imports included; the worker stays
thin."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("converter", "jobs", "service", "worker")
#: what each package may import of ours
ALLOWED = {
    "converter": {"converter"},
    "jobs": {"jobs", "converter"},
    "service": {"service", "jobs", "converter"},
    "worker": {"worker", "jobs", "converter"},
}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = p
    return mods


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Every module of ours each module imports, at module level or inside a function."""
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m.split(".") if p.name == "__init__.py" else m.split(".")[:-1]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(pkg[: len(pkg) - node.level + 1] + [node.module or ""]).strip(".")
                base = base if node.level else (node.module or "")
                subs = [f"{base}.{a.name}" for a in node.names]
                # ``from . import kernels`` depends on the submodule, not on the package's __init__
                names = [n for n in subs if n in mods] or [base]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            graph[m] |= {n for n in names if n in mods and n != m}
    return graph


def test_imports_point_one_way():
    mods = _modules()
    wrong = [
        (m, t)
        for m, targets in _imports(mods).items()
        for t in targets
        if t.split(".")[0] not in ALLOWED[m.split(".")[0]]
    ]
    assert wrong == []


def test_no_module_import_cycles():
    graph = _imports(_modules())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("converter", ("jobs", "service", "worker", "torch", "transformers", "celery", "fastapi")),
        ("converter.job", ("jobs", "service", "worker", "torch", "celery")),
        ("jobs.store", ("service", "worker")),
        ("jobs.queue", ("service", "worker")),
        ("service.app", ("worker",)),
        ("worker.run", ("service",)),
    ],
)
def test_each_package_imports_alone(module, forbidden):
    """Importing a package in a fresh interpreter loads none of the packages it must not depend on."""
    code = (
        f"import sys, {module}\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {forbidden!r})\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    env = {"REDIS_URL": "redis://127.0.0.1:1/0", "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_worker_is_thin():
    lines = sum(len(p.read_text().splitlines()) for p in (ROOT / "worker").rglob("*.py"))
    assert lines < 350, lines
