"""What the package ships from real runs: the demo's trained adapter and the run records notebooks 05/06 quote."""

from __future__ import annotations

import json

import pytest
import torch

from agentr1_nb import runs
from agentr1_nb.compare import BASELINE_METHODS, VARIANTS, shipped_comparison
from agentr1_nb.config import PRESETS, get_config
from agentr1_nb.policy import load_policy

# fields that may differ between the shipped run and the preset without changing the recipe: the run's own
# choices and the machine's folders (resolved from the environment when the config is built)
_RUN_FIELDS = {"seed", "use_process_reward", "save_every", "cache_dir", "data_dir"}


# a record's name ends with what its run changed on top of today's preset (besides the seed)
_SUFFIXES = {
    "_no_process_reward": {"use_process_reward": False},
    "_rloo": {"algo": "rloo"},
    "_40steps": {"steps": 40},
}


def split_name(name: str) -> tuple[str, set[str]]:
    """A record's name and the suffixes it ends with: `demo_s2_rloo` -> ("demo_s2", {"_rloo"})."""
    suffixes = set()
    while suffix := next((s for s in _SUFFIXES if name.endswith(s)), None):
        suffixes.add(suffix)
        name = name.removesuffix(suffix)
    return name, suffixes


# a record's name starts with the preset it ran: `demo_` today's cpu_demo, `multihop_` cpu_multihop
_PREFIXES = {"demo_": "cpu_demo", "multihop_": "cpu_multihop"}


def recipe_of(name: str) -> dict:
    """The config a shipped record claims: the preset its name starts with, with the overrides its name's
    suffixes say (`_rloo`: RLOO instead of GRPO)."""
    preset = next(p for prefix, p in _PREFIXES.items() if name.startswith(prefix))
    cfg = get_config(preset).to_dict()
    for suffix in split_name(name)[1]:
        cfg.update(_SUFFIXES[suffix])
    return cfg


def test_shipped_runs_are_finished_demo_runs_of_todays_presets():
    """The package ships today's presets' runs only (docs/results.md): the demo, without the process reward and
    with RLOO, and the cpu_multihop preset at its steps and at twice them, three seeds each; earlier recipes'
    runs are history (docs/history.md), not package data."""
    records = runs.shipped_runs()
    today = {f"demo_s{seed}{v}" for seed in (0, 1, 2) for v in ("", "_no_process_reward", "_rloo")}
    today |= {f"multihop_s{seed}{v}" for seed in (0, 1, 2) for v in ("", "_40steps")}
    assert set(records) == today
    for name, rec in records.items():
        recipe = recipe_of(name)
        report = rec["report"]
        assert report["steps"] == len(rec["metrics"]) == recipe["steps"], name
        assert not report["interrupted"], name
        changed = {k for k, v in report["config"].items() if recipe.get(k) != v} - _RUN_FIELDS
        assert not changed, f"{name} was run with {changed} unlike its recipe"
        base, suffixes = split_name(name)
        assert ("_no_process_reward" in suffixes) != report["use_process_reward"], name
        assert base.endswith(f"_s{report['seed']}"), name
        for key in ("em_before", "em_after", "multihop_em_after", "mean_searches_after", "peak_rss_mb"):
            assert isinstance(report[key], (int, float)), (name, key)
        lo, hi = report["em_after_ci95"]
        assert lo <= report["em_after"] <= hi
    assert set(PRESETS["cpu_demo"]) <= set(get_config("cpu_demo").to_dict())


def test_shipped_adapter_is_the_demo_run_and_loads_on_the_cpu_default():
    """`resolve_adapter("shipped")` is the demo_s0 run's adapter (same report), and it loads onto the CPU
    default with trained (non-zero) LoRA B weights on the top 15 layers only."""
    folder = runs.resolve_adapter("shipped")
    shipped = runs.shipped_runs()["demo_s0"]["report"]
    assert json.loads((folder / "report.json").read_text())["em_after"] == shipped["em_after"]
    cfg = runs.agent_config(get_config("cpu_demo"), folder)
    model, _ = load_policy(cfg, adapter=folder)
    lora_b = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b.values())
    layers = {int(n.split("layers.")[1].split(".")[0]) for n in lora_b}
    assert layers == set(range(15, 30))
    assert all(p.dtype == torch.float32 for p in lora_b.values())


def test_ask_with_the_shipped_adapter_answers_a_bridge_question_with_two_searches():
    """What `python -m agentr1_nb ask` shows a new user: the shipped adapter searches the company, then its
    founder, and answers the founder's birth year."""
    res = runs.ask(get_config("cpu_demo"))
    assert res["adapter"] == str(runs.SHIPPED_ADAPTER)
    assert res["searches"] == 2 and res["em"] == 1.0, res


def test_shipped_comparison_is_a_whole_real_run_of_todays_preset():
    """The comparison notebook 06 and the README quote (`compare.export_comparison` of a finished run): every
    variant it names has a row per seed, every baseline a row per dataset, each number agrees with the per-seed
    values it is made of, and its recipe is today's `cpu_demo` with the RL step count it states."""
    shipped = shipped_comparison()
    assert shipped is not None and not shipped["missing"] and shipped["steps"] >= 2
    seeds = shipped["seeds"]
    assert len(seeds) == 3 and set(shipped["variants"]) <= set(VARIANTS)
    rows = {(r["method"], r["dataset"]): r for r in shipped["rows"]}
    for v in shipped["variants"]:
        r = rows[(v, "generated")]
        assert r["seeds"] == len(seeds) and len(r["em_per_seed"]) == len(seeds)
        assert r["em"] == pytest.approx(sum(r["em_per_seed"]) / len(seeds))
        assert r["ci"][0] <= r["em"] <= r["ci"][1]
        assert f"{v} seed {seeds[-1]}" in shipped["seconds_per_run"]
    for ds in shipped["baseline_sets"]:
        assert all((m, ds) in rows for m in BASELINE_METHODS)
    assert {r["method"] for r in shipped["kind_rows"]} == set(shipped["variants"])  # a kind row per variant
    preset = get_config("cpu_demo").to_dict()
    differs = {k for k, v in shipped["config"].items() if preset.get(k) != v}
    assert differs <= _RUN_FIELDS | {"steps"}, differs
    assert shipped["config"]["steps"] == shipped["steps"]


def test_shipped_agents_on_real_are_the_shipped_adapter_beside_the_baselines():
    """`results/agents_on_real.json` (notebook 06's "trained agent on real questions"): written by
    `compare --adapter ... --export-real` from the adapter shipped today (same weights' hash), on the real
    samples with every baseline on the same questions, each row's EM the mean of its per-question EM."""
    from agentr1_nb.compare import shipped_real
    from agentr1_nb.compare_store import adapter_hash

    real = shipped_real()
    assert real is not None
    hashes = {f["sha256"] for folders in real["adapters"].values() for f in folders}
    assert adapter_hash(runs.SHIPPED_ADAPTER) in hashes
    per_question = {(e["method"], e["dataset"]): e["em"] for e in real["per_question"]}
    for ds in ("hotpotqa", "2wiki"):
        assert any((label, ds) in per_question for label in real["adapters"]), ds
        assert all((m, ds) in per_question for m in BASELINE_METHODS), ds
    for r in real["rows"]:
        seeds = per_question[(r["method"], r["dataset"])]
        assert len(seeds) == r["seeds"] and all(len(s) == r["n"] for s in seeds)
        assert r["em"] == pytest.approx(sum(map(sum, seeds)) / (r["n"] * r["seeds"]))
        assert r["ci"][0] <= r["em"] <= r["ci"][1]
