"""Every module of the package imports on its own, and no import cycle crosses packages.

An import that works only because something else was imported first breaks the first user
whose script starts elsewhere (``from veriprint.selectors.budget import Budget`` used to
fail with "partially initialized module"). Each module is imported first thing in a fresh
process: one interpreter loads the third-party libraries once, then forks a child per
module, which has no veriprint module loaded.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "veriprint"

CHILD = r"""
import importlib, os, sys, traceback
import numpy, torch  # loaded once, before the fork
try:
    import sklearn, sqlalchemy, alembic, starlette, jinja2, prometheus_client, matplotlib  # noqa: F401
except ImportError:
    pass
names = sys.argv[1:]
failed = []
for name in names:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            sys.stderr.write(f"{name}: " + traceback.format_exc().strip().splitlines()[-1] + "\n")
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status:
        failed.append(name)
print("FAILED " + " ".join(failed) if failed else "OK")
"""


def module_names() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        if "migrations" in parts:  # alembic scripts, loaded by alembic itself
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def module_level_imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The veriprint modules that importing ``name`` runs at once (its module-level imports,
    outside ``if TYPE_CHECKING:``, and every package on the way to each)."""
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        body = node.body if isinstance(node, ast.Try) else [node]
        for n in body:
            targets: list[str] = []
            if isinstance(n, ast.Import):
                targets = [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom):
                if n.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (n.level - 1)]
                    mod = ".".join(base + ([n.module] if n.module else []))
                else:
                    mod = n.module or ""
                targets = [mod] + [f"{mod}.{a.name}" for a in n.names]
            for t in targets:
                parts = t.split(".")
                for k in range(1, len(parts) + 1):
                    q = ".".join(parts[:k])
                    if q in known and q != name:
                        found.add(q)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return out


def package_of(name: str, packages: set[str]) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if ".".join(parts[:2]) in packages else name


def test_no_import_cycle_crosses_packages() -> None:
    mods = module_names()
    known = set(mods)
    graph = {m: module_level_imports(m, p, known) for m, p in mods.items()}
    packages = {m for m, p in mods.items() if p.name == "__init__.py"}
    # inside a package, its __init__ importing its own modules (a registry) is a cycle by
    # this count; it is sound as long as each module imports alone (the test below).
    crossing = [c for c in cycles(graph) if len({package_of(m, packages) for m in c}) > 1]
    assert crossing == [], f"import cycles across packages: {crossing}"


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    g = {"a.x": {"b.y"}, "b.y": {"a.z"}, "a.z": {"a.x"}, "c": set()}
    assert cycles(g) == [["a.x", "a.z", "b.y"]]


@pytest.mark.slow  # a fork per module: ~20 s on 2 cores
def test_every_module_imports_alone_in_a_fresh_process() -> None:
    names = sorted(module_names())
    assert "veriprint.selectors.budget" in names
    r = subprocess.run([sys.executable, "-c", CHILD, *names], capture_output=True, text=True, timeout=600,
                       cwd=SRC.parent)
    assert r.returncode == 0 and r.stdout.strip() == "OK", r.stdout + r.stderr
