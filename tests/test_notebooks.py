"""Every notebook follows the house conventions, its committed outputs come from the current code, and it
runs top to bottom on a CPU with FAST=True (papermill)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
COLAB = "https://colab.research.google.com/github/agentr1-nb/agentr1_nb/blob/main/notebooks/{}"
NOTEBOOK_TIMEOUT_S = 1200
"""Per notebook; a FAST run should take minutes on 2 CPU cores."""


def _read(path: Path):
    import nbformat

    return nbformat.read(path, as_version=4)


def _execute_script():
    """notebooks/execute.py, imported by path: the one copy of the stamp logic."""
    spec = importlib.util.spec_from_file_location("notebooks_execute", NOTEBOOK_DIR / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_conventions(path):
    nb = _read(path)
    cells = nb.cells
    assert cells[0].cell_type == "markdown" and COLAB.format(path.name) in cells[0].source, (
        "Colab badge first"
    )
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged `parameters`"
    assert "FAST" in cells[tagged[0]].source
    # papermill reads every `NAME = value  # help` line (its --help-notebook and -p); a comment it cannot
    # parse (an `=` inside it, say) silently drops that parameter from the list
    from papermill.translators import PythonTranslator

    lines = [x for x in cells[tagged[0]].source.splitlines() if x.strip() and not x.lstrip().startswith("#")]
    names = [p.name for p in PythonTranslator.inspect(cells[tagged[0]])]
    assert len(names) == len(lines), f"papermill reads {names} from {len(lines)} parameter lines"
    setup = [c for c in cells[: tagged[0]] if c.cell_type == "code" and "google.colab" in c.source]
    assert setup and "pip" in setup[0].source, (
        "a setup cell that installs the package in Colab, before parameters"
    )
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    code = [c for c in cells if c.cell_type == "code"]
    assert any(c.get("outputs") for c in code), "committed notebooks keep the outputs of a real run"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"committed outputs contain an error: {errors[0].get('ename')}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_outputs_come_from_the_current_code(path):
    """The stamp `notebooks/execute.py` wrote (code cells, package modules imported) matches the code now."""
    execute = _execute_script()
    changes = execute.stamp_changes(_read(path))
    assert not changes, execute.stale_message(path, changes)


@pytest.mark.slow
@pytest.mark.timeout(NOTEBOOK_TIMEOUT_S)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_fast(path, tmp_path):
    import papermill

    papermill.execute_notebook(
        str(path),
        str(tmp_path / path.name),
        parameters={"FAST": True},
        kernel_name="python3",
        cwd=str(path.parent),
        execution_timeout=NOTEBOOK_TIMEOUT_S,
        progress_bar=False,
    )
    out = _read(tmp_path / path.name)
    assert not [o for c in out.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
