"""Every notebook follows the house conventions, its committed outputs come from the current code, a reader's
FAST = False is the real run, and it runs top to bottom on a CPU with FAST=True (papermill), also with the
real-dataset samples hidden, as on a clone with nothing beside it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
COLAB = "https://colab.research.google.com/github/agentr1-nb/agentr1_nb/blob/main/notebooks/{}"
NOTEBOOK_TIMEOUT_S = 1200
"""Per notebook; a FAST run should take minutes on 2 CPU cores."""
WITHOUT_SAMPLES = {
    "02_data_and_retrieval": {"FAST": True},
    "06_baselines_and_evaluation": {"FAST": True, "ONLY": []},  # the baselines are what read the samples
}
"""The notebooks that read the real-dataset samples, and the parameters of their run without them: the
others use the generated world only. 06 runs its baselines alone (its trained variants use the generated
world), so the extra cost is about 15 s for 02 and a minute for 06 on 2 cores."""


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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_no_cell_sets_a_parameter_after_the_parameters_cell(path):
    """A reader who sets FAST = False in the parameters cell gets the real run: no papermill
    `injected-parameters` cell and no later cell assigns a parameter again; the committed default is FAST."""
    execute = _execute_script()
    nb = _read(path)
    assert not execute.parameter_overrides(nb), (
        f"{path.name}: {execute.parameter_overrides(nb)}; re-run it: {execute.rerun_command(path)}"
    )
    assert execute.parameter_values(nb).get("FAST") is True


def test_parameter_overrides_are_found():
    import nbformat

    execute = _execute_script()
    cells = [nbformat.v4.new_code_cell("FAST = True\nSEED = 0"), nbformat.v4.new_code_cell("x = 1")]
    cells[0].metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=cells)
    assert execute.parameter_overrides(nb) == []
    cells.append(nbformat.v4.new_code_cell("if x:\n    SEED = 1\ndef f():\n    FAST = 2"))
    assert execute.parameter_overrides(nb) == ["cell 2 assigns the parameter(s) SEED"]  # f's FAST is its own
    injected = nbformat.v4.new_code_cell("# Parameters\nFAST = True")
    injected.metadata["tags"] = ["injected-parameters"]
    cells.insert(1, injected)
    assert execute.parameter_overrides(nb)[0] == "cell 1: papermill's injected-parameters cell"
    assert execute.strip_injected(nb) == 1 and len(nb.cells) == 3


def _run_until(nb, name: str, fast: bool) -> dict:
    """Execute the notebook's code cells in this process, in order, with the parameters cell edited the way a
    reader edits it (`FAST = ...`), until a cell defines `name`; return the namespace."""
    ns: dict = {}
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        source = c.source
        if "parameters" in c.metadata.get("tags", []):
            assert "FAST = True" in source
            source = source.replace("FAST = True", f"FAST = {fast}")
        exec(compile(source, "<cell>", "exec"), ns)
        if name in ns:
            return ns
    raise AssertionError(f"no cell defines {name}")


def test_fast_false_in_the_parameters_cell_takes_the_real_run():
    """Notebook 05 set to its real run picks the machine's preset as it is, without running it; FAST picks
    the smoke-run budgets `compare.FAST_OVERRIDES`."""
    from agentr1_nb.compare import FAST_OVERRIDES
    from agentr1_nb.config import get_config

    nb = _read(NOTEBOOK_DIR / "05_train_grpo.ipynb")
    real = _run_until(nb, "cfg", fast=False)
    assert real["FAST"] is False and real["MACHINE_PRESET"] == "cpu_demo"  # no GPU here
    assert real["cfg"] == get_config(real["MACHINE_PRESET"], {"seed": real["SEED"]})
    fast = _run_until(nb, "cfg", fast=True)["cfg"]
    assert fast.steps == 2 and fast.group_size == FAST_OVERRIDES["group_size"] != real["cfg"].group_size


def test_stamp_ignores_docstrings_and_comments_not_code(tmp_path):
    """A docstring, comment or layout edit of a package module keeps every stamp; a code edit changes it."""
    execute = _execute_script()
    original = (execute.PACKAGE_DIR / "rewards.py").read_text()
    path = tmp_path / "rewards.py"

    def stamp_of(text: str) -> str:
        path.write_text(text)
        return execute.code_hash(path)

    base = stamp_of(original)
    assert original.startswith('"""')
    docs = original.replace('"""', '"""Edited. ', 1)  # the module docstring
    first_def = original.index("\ndef ")
    docs = docs.replace("\ndef ", "\n# a new comment\n\n\ndef ", 1)
    assert docs != original and stamp_of(docs) == base
    field_doc = original + '\nX = 1\n"""A field docstring."""\n'
    assert stamp_of(field_doc) == stamp_of(original + "\nX = 1\n")
    code = original[:first_def] + "\nUNUSED_CONSTANT = 1\n" + original[first_def:]
    assert stamp_of(code) != base
    # the same for a notebook's code cells: comments do not count, code does
    assert execute.cell_code("x = 1  # one") == execute.cell_code("x = 1")
    assert execute.cell_code("x = 1") != execute.cell_code("x = 2")
    assert execute.cell_code("!pip install a\nx = 1") != execute.cell_code("!pip install b\nx = 1")


def test_a_module_whose_source_a_notebook_prints_counts_by_its_text():
    import nbformat

    execute = _execute_script()
    cell = "import inspect\nfrom agentr1_nb.algos import grpo_advantages\nprint(inspect.getsource(grpo_advantages))"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    stamp = execute.compute_stamp(nb)
    algos = execute.PACKAGE_DIR / "algos.py"
    assert stamp["package"]["agentr1_nb.algos"] == execute.file_hash(algos)
    assert stamp["package"]["agentr1_nb.config"] == execute.code_hash(execute.PACKAGE_DIR / "config.py")


@pytest.mark.slow
@pytest.mark.timeout(NOTEBOOK_TIMEOUT_S)
@pytest.mark.parametrize("name", sorted(WITHOUT_SAMPLES))
def test_notebook_runs_without_the_samples(name, tmp_path, monkeypatch):
    """A clone with nothing beside it: $AGENTR1_DATA points at an empty folder and the hub is off. The
    notebook runs top to bottom, shows the generated world, and says in one line what is missing."""
    import papermill

    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.setenv("AGENTR1_DATA", str(empty))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = NOTEBOOK_DIR / f"{name}.ipynb"
    papermill.execute_notebook(
        str(path),
        str(tmp_path / path.name),
        parameters=WITHOUT_SAMPLES[name],
        kernel_name="python3",
        cwd=str(path.parent),
        execution_timeout=NOTEBOOK_TIMEOUT_S,
        progress_bar=False,
    )
    out = _read(tmp_path / path.name)
    assert not [o for c in out.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    text = "".join(
        o.get("text", "") for c in out.cells for o in c.get("outputs", []) if o.get("name") == "stdout"
    )
    assert "No real-dataset samples" in text and "AGENTR1_DATA" in text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebooks_import_tables_and_read_todays_runs_only(path):
    """Markdown tables come from the package (`viz`, `compare`), not from rows built by hand in a cell; the
    shipped runs read are today's preset's (no recipe-history `v1_*` / `v2_*` folders)."""
    code = [c.source for c in _read(path).cells if c.cell_type == "code"]
    assert not [s for s in code if "---|" in s], (
        "a code cell builds a Markdown table by hand: use viz.markdown_rows"
    )
    assert not [s for s in code if "v1_" in s or "v2_" in s], "a code cell reads recipe-history runs"


def test_the_notebooks_that_read_samples_are_run_without_them():
    """A notebook that reads the real-dataset samples says what is missing with `missing_samples_note`; each
    of those is in WITHOUT_SAMPLES, so its no-samples path runs in the suite."""
    says = {p.stem for p in NOTEBOOKS if any("missing_samples_note" in c.source for c in _read(p).cells)}
    assert says == set(WITHOUT_SAMPLES)
