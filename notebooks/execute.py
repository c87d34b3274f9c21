"""Run the notebooks in FAST mode and write them back, outputs included, stamped with the code they came from.

    python notebooks/execute.py                        # every notebook, one after the other
    python notebooks/execute.py notebooks/04_*.ipynb   # the ones named
    python notebooks/execute.py --stale                # only those whose stamp no longer matches the code
    python notebooks/execute.py --check                # run nothing: list the notebooks whose stamp is stale

A notebook runs with papermill (kernel `python3`, `parameters={"FAST": True}`, working directory
notebooks/) into a temporary file; only a run without an error replaces the committed notebook. papermill's
per-cell timing metadata is dropped (it changes on every run and adds nothing to read); the
`injected-parameters` cell and the notebook-level `papermill` record (parameters, duration) are kept.

The stamp, `nb.metadata["agentr1_nb"]`, records what the outputs came from:
- `cells`: the sha256 of the notebook's code cells (their sources, in order), the papermill
  `injected-parameters` cell excluded;
- `package`: `{module: sha256 of its file}` for every package module the notebook imports, directly or
  through the package's own imports (found by parsing agentr1_nb/*.py; imports inside functions count,
  since a call runs them).
`tests/test_notebooks.py` recomputes both and fails, naming what changed, when a committed notebook's
outputs no longer come from the code beside it. It imports this file by path: the stamp logic is here only.

Run one notebook at a time on a shared machine (`OMP_NUM_THREADS=1` keeps the figures stable on 2 cores).
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
INJECTED = "injected-parameters"
PARAMETERS = {"FAST": True}
KERNEL = "python3"
CELL_METADATA_DROPPED = ("execution", "papermill")
"""Per-cell metadata papermill and nbclient write on every run (timestamps, durations, status)."""


def notebooks() -> list[Path]:
    return sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def read(path: str | Path):
    return nbformat.read(str(path), as_version=4)


# ------------------------------------------------------------------------------------------ the stamp
def code_sources(nb) -> list[str]:
    """The sources of the code cells, in order, papermill's injected-parameters cell left out."""
    return [
        c.source for c in nb.cells if c.cell_type == "code" and INJECTED not in c.metadata.get("tags", [])
    ]


def cells_hash(nb) -> str:
    return hashlib.sha256(json.dumps(code_sources(nb)).encode()).hexdigest()


def _python(source: str) -> ast.Module:
    """Parse notebook code: IPython magics and shell escapes (`%...`, `!...`) are blanked first."""
    return ast.parse(re.sub(r"(?m)^[ \t]*[%!].*$", "", source))


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


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compute_stamp(nb) -> dict:
    """What the notebook's outputs should come from: its code cells and the package modules they import."""
    return {
        "cells": cells_hash(nb),
        "package": {name: file_hash(module_file(name)) for name in package_modules(nb)},
    }


def stamp_changes(nb) -> list[str]:
    """How the current code differs from the one the committed outputs came from; [] when they match."""
    old = nb.metadata.get(STAMP_KEY)
    if not isinstance(old, dict) or "cells" not in old or "package" not in old:
        return ["it carries no stamp: it was not run by notebooks/execute.py"]
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
def _injected_id(nb) -> str | None:
    return next((c.get("id") for c in nb.cells if INJECTED in c.metadata.get("tags", [])), None)


def clean(nb, name: str, injected_id: str | None = None) -> None:
    """Drop papermill's per-cell run metadata; keep the notebook's papermill record with relative paths, and
    the id the injected-parameters cell had before (papermill makes a new cell, with a new id, every run)."""
    for c in nb.cells:
        for key in CELL_METADATA_DROPPED:
            c.metadata.pop(key, None)
        if injected_id and INJECTED in c.metadata.get("tags", []):
            c.id = injected_id
    record = nb.metadata.get("papermill")
    if isinstance(record, dict):
        record["input_path"] = record["output_path"] = name
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
    """Run one notebook in FAST mode; on success write it back in place, stamped. Raises on failure (the
    committed notebook is left as it was; the failed run is kept in a temporary folder, named in the error)."""
    import papermill

    path = Path(path).resolve()
    src = read(path)
    stamp = compute_stamp(src)
    tmp = Path(tempfile.mkdtemp(prefix="nb-execute-"))
    out = tmp / path.name
    t0 = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(path),
            str(out),
            parameters=PARAMETERS,
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
    if compute_stamp(nb) != stamp:
        raise RuntimeError(
            f"{path.name}: the notebook or a package module it imports changed during the run; run it again"
        )
    clean(nb, path.name, _injected_id(src))
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
