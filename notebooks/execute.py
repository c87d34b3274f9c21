"""Run the notebooks in FAST mode and write them back, outputs included, stamped with the code they came from.

    python notebooks/execute.py                        # every notebook, one after the other (make notebooks)
    python notebooks/execute.py notebooks/04_*.ipynb   # the ones named
    python notebooks/execute.py --stale                # only those whose stamp no longer matches the code
    python notebooks/execute.py --check                # run nothing: list the notebooks whose stamp is stale

A notebook runs with papermill (kernel `python3`, working directory notebooks/) into a temporary file; only a
run without an error replaces the committed notebook. FAST mode comes from the notebook's own `parameters`
cell, which must say `FAST = True` (execute.py refuses to run one that does not): nothing is injected, so the
committed notebook has no papermill `injected-parameters` cell after its parameters and a reader who sets
`FAST = False` gets the real run. An `injected-parameters` cell left by an older run is removed before the
run. papermill's per-cell timing metadata is dropped (it changes on every run and adds nothing to read); the
notebook-level `papermill` record (duration) is kept.

The stamp, `nb.metadata["agentr1_nb"]`, records what the outputs came from, and only that:
- `cells`: the sha256 of the notebook's code cells, each as its syntax tree (`ast.dump`: comments and layout
  do not count; IPython magics and shell lines count by their text);
- `package`: `{module: sha256 of its code}` for every package module the notebook imports, directly or
  through the package's own imports (found by parsing agentr1_nb/*.py; imports inside functions count,
  since a call runs them). A module's code is its syntax tree without docstrings and other string
  statements (a field's docstring in a dataclass), so editing a docstring or a comment leaves every stamp
  valid; a module whose source a notebook prints (`inspect.getsource(f)` with `f` imported from it) counts
  by its whole text instead, docstrings included;
- `version`: the stamp's format (an older format reads as stale, naming that).
`tests/test_notebooks.py` recomputes the stamp and fails, naming what changed, when a committed notebook's
outputs no longer come from the code beside it. It imports this file by path: the stamp logic is here only.

Run one notebook at a time on a shared machine (`OMP_NUM_THREADS=1` keeps the figures stable on 2 cores).
The committed outputs of 02 and 06 show the real-dataset samples: run from a checkout with `../shared/data`
beside it or with `AGENTR1_DATA` set (it warns when the samples are missing).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat

NOTEBOOK_DIR = Path(__file__).resolve().parent
ROOT = NOTEBOOK_DIR.parent
PACKAGE = "agentr1_nb"
PACKAGE_DIR = ROOT / PACKAGE
STAMP_KEY = "agentr1_nb"
STAMP_VERSION = 2
"""2: code cells and modules hashed as syntax trees without docstrings; 1 (no `version`): file bytes."""
INJECTED = "injected-parameters"
PARAMETERS_TAG = "parameters"
REQUIRED = {"FAST": True}
"""What a committed notebook's parameters cell must assign: its outputs are a FAST run."""
KERNEL = "python3"
CELL_METADATA_DROPPED = ("execution", "papermill")
"""Per-cell metadata papermill and nbclient write on every run (timestamps, durations, status)."""
MAGIC = re.compile(r"(?m)^[ \t]*[%!].*$")


def notebooks() -> list[Path]:
    return sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def read(path: str | Path):
    return nbformat.read(str(path), as_version=4)


def is_injected(cell) -> bool:
    return INJECTED in cell.metadata.get("tags", [])


def parameters_index(nb) -> int | None:
    """The index of the cell tagged `parameters` (the first, if several); None when there is none."""
    return next((i for i, c in enumerate(nb.cells) if PARAMETERS_TAG in c.metadata.get("tags", [])), None)


def parameter_values(nb) -> dict:
    """{name: value} of the parameters cell's literal assignments (`FAST = True`); a value that is not a
    literal is left out."""
    i = parameters_index(nb)
    if i is None:
        return {}
    values = {}
    for node in _python(nb.cells[i].source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return values


def assigned_names(source: str) -> set[str]:
    """Names a cell binds at its top level or in its control flow (not inside functions or classes, whose
    names are their own): assignments, `for` targets, `with ... as`, imports."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            found.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            found.update((a.asname or a.name).split(".")[0] for a in node.names)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            if not isinstance(node, ast.Lambda):
                found.add(node.name)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(_python(source))
    return found


def parameter_overrides(nb) -> list[str]:
    """Where a cell after the parameters cell sets a parameter again, so that editing the parameters cell
    would not change the run: papermill's injected cell, or any code cell that assigns a parameter."""
    i = parameters_index(nb)
    if i is None:
        return []
    names = set(parameter_values(nb)) | assigned_names(nb.cells[i].source)
    found = []
    for k, c in enumerate(nb.cells[i + 1 :], i + 1):
        if c.cell_type != "code":
            continue
        if is_injected(c):
            found.append(f"cell {k}: papermill's injected-parameters cell")
            continue
        again = sorted(names & assigned_names(c.source))
        if again:
            found.append(f"cell {k} assigns the parameter(s) {', '.join(again)}")
    return found


# ------------------------------------------------------------------------------------------ the stamp
def code_sources(nb) -> list[str]:
    """The sources of the code cells, in order, papermill's injected-parameters cell left out."""
    return [c.source for c in nb.cells if c.cell_type == "code" and not is_injected(c)]


def cell_code(source: str) -> str:
    """What a code cell runs: its syntax tree (comments and layout dropped) and its magic/shell lines."""
    try:
        tree = ast.dump(_python(source))
    except SyntaxError:
        return source
    return json.dumps([tree, MAGIC.findall(source)])


def cells_hash(nb) -> str:
    return hashlib.sha256(json.dumps([cell_code(s) for s in code_sources(nb)]).encode()).hexdigest()


def _python(source: str) -> ast.Module:
    """Parse notebook code: IPython magics and shell escapes (`%...`, `!...`) are blanked first."""
    return ast.parse(MAGIC.sub("", source))


def module_file(module: str) -> Path | None:
    """agentr1_nb -> agentr1_nb/__init__.py, agentr1_nb.x -> agentr1_nb/x.py; None if not a package module."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for f in (base / "__init__.py", base.with_suffix(".py")):
        if f.is_file():
            return f
    return None


def _imported(tree: ast.AST, package: str | None) -> set[str]:
    """Package modules an AST imports anywhere (top level or inside functions). `package` is the package
    relative imports start from (None for notebook code, which has no relative imports)."""
    found: set[str] = set()

    def add(name: str) -> None:
        if module_file(name) is not None:
            found.add(name)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if package is None:
                    continue
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            add(mod)
            for a in node.names:  # `from agentr1_nb import rewards` names a module
                add(f"{mod}.{a.name}")
    # importing agentr1_nb.x runs agentr1_nb/__init__.py first
    for name in list(found):
        parts = name.split(".")
        for i in range(1, len(parts)):
            add(".".join(parts[:i]))
    return found


def package_modules(nb) -> list[str]:
    """The package modules the notebook's code imports, transitively through the package's own imports."""
    todo = set()
    for source in code_sources(nb):
        todo |= _imported(_python(source), None)
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        todo |= _imported(ast.parse(path.read_text(), str(path)), package) - seen
    return sorted(seen)


def shown_modules(nb) -> set[str]:
    """Package modules whose source text the notebook prints: `inspect.getsource(f)` (or `getsource(f)`)
    where the cells import `f` from a package module."""
    origin: dict[str, str] = {}
    shown: set[str] = set()
    trees = [_python(s) for s in code_sources(nb)]
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and not node.level and module_file(node.module or ""):
                for a in node.names:
                    origin[a.asname or a.name] = node.module
    for tree in trees:
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Name)):
                continue
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name == "getsource" and node.args[0].id in origin:
                shown.add(origin[node.args[0].id])
    return shown


def _is_string_statement(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def code_hash(path: Path) -> str:
    """sha256 of what a module runs: its syntax tree without docstrings or other string statements (a
    string on a line of its own does nothing), so docstring, comment and layout edits leave it unchanged."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            body = getattr(node, field, None)
            if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
                kept = [s for s in body if not _is_string_statement(s)]
                setattr(node, field, kept or [ast.Pass()])
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compute_stamp(nb) -> dict:
    """What the notebook's outputs should come from: its code cells and the package modules they import."""
    shown = shown_modules(nb)
    return {
        "version": STAMP_VERSION,
        "cells": cells_hash(nb),
        "package": {
            name: (file_hash if name in shown else code_hash)(module_file(name))
            for name in package_modules(nb)
        },
    }


def stamp_changes(nb) -> list[str]:
    """How the current code differs from the one the committed outputs came from; [] when they match."""
    old = nb.metadata.get(STAMP_KEY)
    if not isinstance(old, dict) or "cells" not in old or "package" not in old:
        return ["it carries no stamp: it was not run by notebooks/execute.py"]
    if old.get("version") != STAMP_VERSION:
        return [f"its stamp has an older format (version {old.get('version', 1)}, now {STAMP_VERSION})"]
    new = compute_stamp(nb)
    changes = []
    if old["cells"] != new["cells"]:
        changes.append("its code cells changed")
    before, now = old["package"], new["package"]
    changed = sorted(m for m in before.keys() & now.keys() if before[m] != now[m])
    if changed:
        changes.append("package modules changed: " + ", ".join(changed))
    if now.keys() - before.keys():
        changes.append("modules it now imports: " + ", ".join(sorted(now.keys() - before.keys())))
    if before.keys() - now.keys():
        changes.append("modules it no longer imports: " + ", ".join(sorted(before.keys() - now.keys())))
    return changes


def rerun_command(path: Path) -> str:
    return f"python notebooks/execute.py notebooks/{Path(path).name}"


def stale_message(path: Path, changes: list[str]) -> str:
    return (
        f"{Path(path).name}: the committed outputs do not come from the current code ({'; '.join(changes)}). "
        f"Re-run it: {rerun_command(path)}"
    )


# ---------------------------------------------------------------------------------------- executing
def strip_injected(nb) -> int:
    """Remove papermill's injected-parameters cells; returns how many there were."""
    n = len(nb.cells)
    nb.cells = [c for c in nb.cells if not is_injected(c)]
    return n - len(nb.cells)


def check_parameters(nb, name: str) -> None:
    """Raise unless the parameters cell assigns REQUIRED (FAST = True) and no later cell overrides it."""
    if parameters_index(nb) is None:
        raise RuntimeError(f"{name}: no cell is tagged `parameters`")
    values = parameter_values(nb)
    wrong = {k: values.get(k, "(not set)") for k, v in REQUIRED.items() if values.get(k) is not v}
    if wrong:
        raise RuntimeError(
            f"{name}: its parameters cell must say {', '.join(f'{k} = {v!r}' for k, v in REQUIRED.items())} "
            f"(the committed outputs are a FAST run); it has {wrong}"
        )
    overrides = parameter_overrides(nb)
    if overrides:
        raise RuntimeError(
            f"{name}: a cell after the parameters cell sets a parameter again: {'; '.join(overrides)}"
        )


def clean(nb, name: str) -> None:
    """Drop papermill's per-cell run metadata and any injected-parameters cell; keep the notebook's papermill
    record with relative paths."""
    strip_injected(nb)
    for c in nb.cells:
        for key in CELL_METADATA_DROPPED:
            c.metadata.pop(key, None)
    record = nb.metadata.get("papermill")
    if isinstance(record, dict):
        record["input_path"] = record["output_path"] = name
        record.pop("parameters", None)
    # Progress bars: keep their final text, drop the widget views and the saved widget state (most of a
    # notebook's size, and a dead widget once the kernel is gone).
    nb.metadata.pop("widgets", None)
    for c in nb.cells:
        for o in c.get("outputs", []):
            data = o.get("data")
            if isinstance(data, dict) and "application/vnd.jupyter.widget-view+json" in data:
                data.pop("application/vnd.jupyter.widget-view+json")


def errors(nb) -> list[str]:
    return [
        f"{o.get('ename')}: {o.get('evalue')}"
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]


def execute(path: Path, timeout: float | None = None, progress: bool = True) -> None:
    """Run one notebook in FAST mode (its parameters cell's own `FAST = True`; nothing injected); on success
    write it back in place, stamped. Raises on failure (the committed notebook is left as it was; the failed
    run is kept in a temporary folder, named in the error)."""
    import papermill

    path = Path(path).resolve()
    src = read(path)
    strip_injected(src)
    check_parameters(src, path.name)
    stamp = compute_stamp(src)
    tmp = Path(tempfile.mkdtemp(prefix="nb-execute-"))
    source, out = tmp / f"source-{path.name}", tmp / path.name
    nbformat.write(src, str(source))
    t0 = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(source),
            str(out),
            parameters=None,  # FAST = True is the parameters cell's own: no injected cell to commit
            kernel_name=KERNEL,
            cwd=str(path.parent),
            execution_timeout=timeout,
            progress_bar=progress,
        )
    except Exception as e:
        raise RuntimeError(f"{path.name} failed; its partial run is in {out}: {type(e).__name__}: {e}") from e
    nb = read(out)
    if errors(nb):
        raise RuntimeError(f"{path.name}: error outputs {errors(nb)}; the run is in {out}")
    if compute_stamp(nb) != stamp or compute_stamp(read(path)) != stamp:
        raise RuntimeError(
            f"{path.name}: the notebook or a package module it imports changed during the run; run it again"
        )
    clean(nb, path.name)
    nb.metadata[STAMP_KEY] = stamp
    staged = path.with_name(f".{path.name}.tmp")
    nbformat.write(nb, str(staged))
    staged.replace(path)
    shutil.rmtree(tmp, ignore_errors=True)
    size = path.stat().st_size / 1024
    print(
        f"{path.name}: executed in {time.perf_counter() - t0:.0f} s, {size:.0f} KiB, stamped "
        f"({len(stamp['package'])} package modules)"
    )


def samples_warning() -> str | None:
    """A line to print before running notebooks when the real-dataset samples are not where the package looks
    (`config.default_data_dir()`): 02 and 06 would commit their no-samples outputs."""
    from agentr1_nb.config import default_data_dir
    from agentr1_nb.data import DEFAULT_SAMPLES

    missing = [s for s in DEFAULT_SAMPLES.values() if not (Path(default_data_dir()) / s).is_file()]
    if not missing:
        return None
    return (
        f"warning: no real-dataset samples in {default_data_dir()} (missing {', '.join(missing)}): the notebooks "
        "that read them will show the generated world only. Set AGENTR1_DATA to the samples' folder."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "notebooks", nargs="*", type=Path, help="notebooks to run (default: all in notebooks/)"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="run nothing; exit 1 if a stamp does not match")
    mode.add_argument(
        "--stale", action="store_true", help="run only the notebooks whose stamp does not match"
    )
    parser.add_argument("--timeout", type=float, default=None, help="seconds per cell (default: none)")
    parser.add_argument("--no-progress", action="store_true", help="no papermill progress bar")
    args = parser.parse_args(argv)

    paths = [p.resolve() for p in args.notebooks] or notebooks()
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        parser.error("no such notebook: " + ", ".join(missing))
    if args.check or args.stale:
        changes = {p: stamp_changes(read(p)) for p in paths}
        stale = [p for p in paths if changes[p]]
        for p in stale:
            print(stale_message(p, changes[p]))
        if args.check:
            if not stale:
                print(f"{len(paths)} notebook(s): outputs come from the current code")
            return 1 if stale else 0
        paths = stale
    warning = samples_warning() if paths else None
    if warning:
        print(warning, file=sys.stderr)
    failed = []
    for p in paths:
        print(f"--- {p.name}", flush=True)
        try:
            execute(p, args.timeout, progress=not args.no_progress)
        except RuntimeError as e:
            print(e, file=sys.stderr)
            failed.append(p.name)
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
