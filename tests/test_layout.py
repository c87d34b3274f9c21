"""The package's shape: no import cycles (imports inside functions counted), no benchmark in a stage
module, and the README's module table lists exactly the package's modules."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "agentr1_nb"
MODULES = {p.stem: p for p in PKG.glob("*.py") if p.stem != "__init__"}


def _imports(path: Path) -> set[str]:
    """Package modules imported anywhere in the file (top level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.add(node.module.split(".")[0])
            else:
                out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("agentr1_nb."):
            out.add(node.module.split(".")[1])
    return {m for m in out if m in MODULES and m != path.stem}


GRAPH = {m: _imports(p) for m, p in MODULES.items()}


def test_no_import_cycles():
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for n in GRAPH[m]:
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path + [m, n]))
            if n not in state:
                visit(n, path + [m])
        state[m] = 2

    for m in GRAPH:
        if m not in state:
            visit(m, [])


def test_benchmarks_live_in_the_bench_module():
    for m, p in MODULES.items():
        if m in ("bench", "__main__"):
            continue
        defs = [n.name for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.FunctionDef)]
        assert not [d for d in defs if d.startswith("bench")], f"{m} defines a benchmark"


def test_stage_modules_do_not_import_the_glue():
    glue = {"runs", "compare", "bench", "viz", "__main__"}
    for m in MODULES.keys() - glue:
        assert not (GRAPH[m] & glue), f"{m} imports {GRAPH[m] & glue}"


def test_readme_module_table_matches_the_files():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## The package, one module per stage", 1)[1].split("\n## ", 1)[0]
    listed = set()
    for row in table.splitlines():
        if row.startswith("| `"):
            listed.update(re.findall(r"`(\w+)`", row.split("|")[1]))
    assert listed == set(MODULES), (sorted(listed - set(MODULES)), sorted(set(MODULES) - listed))
