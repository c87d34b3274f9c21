"""The README a newcomer starts from: short, the two commands on its first screen, a headline table that is what
the shipped runs say, and a Python example that runs (on a tiny model here)."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import shlex
from pathlib import Path

import pytest
from conftest import TINY_RUN, tiny_lora_policy

import agentr1_nb
from agentr1_nb import policy, runs
from agentr1_nb.compare import shipped_comparison

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
SEEDS = (0, 1, 2)
NUMBER = r"-?\d+\.\d+"


def section(title: str) -> str:
    """The README's text under `## title`, up to the next `## ` heading."""
    assert f"\n## {title}\n" in README, f"README has no section {title!r}"
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def headline_rows() -> dict[str, list[str]]:
    """{first cell: the other cells} of the headline table (the one whose header starts `| seed | EM before`)."""
    lines = README.splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("| seed | EM before RL |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    assert header == [
        "seed",
        "EM before RL",
        "EM after RL",
        "multi-hop EM before RL",
        "multi-hop EM after RL",
    ], header
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def agrees(printed: str, value: float | None, interval: list[float] | None) -> None:
    """`printed` ("0.33 [0.24, 0.42]" or "0.17") is `value` (and `interval`) at the precision it is printed."""
    numbers = re.findall(NUMBER, printed)
    expected = [value] + (list(interval) if interval is not None else [])
    assert len(numbers) == len(expected), (printed, expected)
    for text, x in zip(numbers, expected):
        places = len(text.split(".")[1])
        assert abs(float(text) - x) <= 0.5 * 10**-places + 1e-9, (printed, expected)


def test_readme_is_short_with_the_two_commands_on_its_first_screen():
    lines = README.splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; results go to docs/results.md"
    first = "\n".join(lines[:40])
    assert "make demo" in first and "make test" in first
    for doc in ("docs/results.md", "docs/history.md", "docs/gpu.md"):
        assert doc in README and (ROOT / doc).is_file(), doc


def test_headline_table_is_what_the_shipped_demo_runs_say():
    """Per seed: EM and multi-hop EM before and after RL with their intervals, from `results/demo_sS`. The mean
    row: the means of those, and for after RL the interval over seeds and questions of the shipped comparison,
    whose GRPO runs are these demo runs (checked: the same EM per seed)."""
    rows = headline_rows()
    assert set(rows) == {str(s) for s in SEEDS} | {"mean"}, set(rows)
    shipped = runs.shipped_runs()
    reports = [shipped[f"demo_s{s}"]["report"] for s in SEEDS]
    for s, rep in zip(SEEDS, reports):
        assert rep["seed"] == s and rep["use_process_reward"] and rep["config"]["algo"] == "grpo"
        before, after, mh_before, mh_after = rows[str(s)]
        agrees(before, rep["em_before"], rep["em_before_ci95"])
        agrees(after, rep["em_after"], rep["em_after_ci95"])
        agrees(mh_before, rep["multihop_em_before"], rep["multihop_em_before_ci95"])
        agrees(mh_after, rep["multihop_em_after"], rep["multihop_em_after_ci95"])

    comparison = shipped_comparison()
    grpo = next(r for r in comparison["rows"] if r["method"] == "GRPO" and r["dataset"] == "generated")
    grpo_kind = next(r for r in comparison["kind_rows"] if r["method"] == "GRPO")
    assert comparison["seeds"] == list(SEEDS)
    assert grpo["em_per_seed"] == pytest.approx([r["em_after"] for r in reports])
    assert grpo_kind["multihop_per_seed"] == pytest.approx([r["multihop_em_after"] for r in reports])

    def mean(key):
        return sum(r[key] for r in reports) / len(reports)

    before, after, mh_before, mh_after = rows["mean"]
    agrees(before, mean("em_before"), None)
    agrees(after, mean("em_after"), grpo["ci"])
    agrees(mh_before, mean("multihop_em_before"), None)
    agrees(mh_after, mean("multihop_em_after"), grpo_kind["multihop_ci"])


def python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", section("In Python"), flags=re.S)
    assert len(blocks) == 1, "one Python example under '## In Python'"
    return blocks[0]


def test_python_example_is_short_and_every_call_fits_the_real_api():
    """It compiles, every name it imports exists, and every call of an imported function binds to that
    function's signature (a renamed argument fails here, not in a reader's session)."""
    source = python_example()
    assert 10 <= len(source.strip().splitlines()) <= 15
    tree = ast.parse(source)
    compile(tree, "README example", "exec")
    imported = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"
                imported[alias.asname or alias.name] = getattr(module, alias.name)
    assert {"get_config", "load_policy", "build_task", "train", "evaluate_agent"} <= set(imported)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) in imported]
    assert {c.func.id for c in calls} == set(imported), "every imported name is used"
    for call in calls:
        sig = inspect.signature(imported[call.func.id])
        sig.bind(*[None] * len(call.args), **{k.arg: None for k in call.keywords})


def test_python_example_runs_end_to_end_on_a_tiny_model(tmp_path, monkeypatch, tokenizer, capsys):
    """The example as printed, with two substitutions: a tiny random model for `load_policy`, and tiny-run
    overrides added to the config it builds (one warm-up step, one RL step, 2 x 2 episodes of 2 turns)."""
    tiny = TINY_RUN + ["minibatch_size=2", "micro_batch_size=1", "steps=1", "sft_warmup_steps=1"]
    real_get_config = agentr1_nb.get_config

    def tiny_config(preset="cpu_demo", overrides=None):
        ours = {item.split("=", 1)[0] for item in tiny}  # the tiny run's values replace the example's
        return real_get_config(
            preset, [f"{k}={v}" for k, v in (overrides or {}).items() if k not in ours] + tiny
        )

    monkeypatch.setattr(agentr1_nb, "get_config", tiny_config)
    monkeypatch.setattr(
        policy, "load_policy", lambda cfg, adapter=None: (tiny_lora_policy(tokenizer), tokenizer)
    )
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(python_example(), "README example", "exec"), namespace)
    assert len(namespace["history"]) == 1
    assert (tmp_path / "runs" / "example" / "metrics.jsonl").is_file()
    summary, records = namespace["summary"], namespace["records"]
    assert 0.0 <= summary["em"] <= 1.0 and len(records) == summary["n"] > 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed.split()[1] == str(summary["em"])


PLACEHOLDER = re.compile(r"\.\.\.|=S\b|\b(DIR|METHOD|DATASET|NAME|N)\b")


def documented_commands() -> list[tuple[str, str]]:
    """(file, argv text) of every one-line `python -m agentr1_nb ...` command in the README and docs/, in code
    blocks or inline code; commands with placeholders (`...`, `seed=S`, `DATASET`) are left out."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for line in path.read_text(encoding="utf-8").splitlines():
            for cmd in re.findall(r"python -m agentr1_nb ([^`#\n]*)", line):
                cmd = cmd.strip()
                if cmd and not PLACEHOLDER.search(cmd):
                    found.append((path.name, cmd))
    return found


def test_every_documented_command_parses_and_builds_its_config():
    """Each command the docs show is one the command line accepts, with overrides `get_config` accepts: a
    renamed flag or Config field fails here rather than in a reader's terminal."""
    from agentr1_nb.__main__ import build_parser
    from agentr1_nb.config import get_config

    commands = documented_commands()
    assert len(commands) >= 15, commands
    parser = build_parser()
    for where, cmd in commands:
        try:
            args = parser.parse_args(shlex.split(cmd))
        except SystemExit as exit:
            if exit.code == 0:  # --help
                continue
            pytest.fail(f"{where}: `python -m agentr1_nb {cmd}` does not parse")
        if getattr(args, "overrides", None):
            get_config(getattr(args, "preset", None) or "cpu_demo", args.overrides)


# ----------------------------------------------------------------------------- docs/results.md against the files

RESULTS = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
ANY_NUMBER = r"(?<![\d.])-?\d[\d,]*(?:\.\d+)?"


def table(text: str, header_start: str) -> dict[str, list[str]]:
    """{first cell: the other cells} of the Markdown table whose header row starts with `header_start`."""
    lines = text.splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith(header_start))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def numbers_agree(where: str, printed: str, expected: list[float]) -> None:
    """Every number in `printed` (commas allowed, integers too) is the expected one at its printed precision."""
    found = re.findall(ANY_NUMBER, printed)
    assert len(found) == len(expected), (where, printed, expected)
    for text, x in zip(found, expected):
        text = text.replace(",", "")
        places = len(text.split(".")[1]) if "." in text else 0
        assert abs(float(text) - x) <= 0.5 * 10**-places + 1e-9, (where, printed, expected)


def with_ci(value: float, ci: list[float]) -> list[float]:
    return [value, *ci]


def test_results_demo_table_is_what_the_shipped_runs_say():
    """docs/results.md's table of the nine demo runs: EM by kind, bridge count, searches, minutes, seconds per
    step and peak RSS of each, and EM and multi-hop EM of the ablations, read from `results/demo_s*`."""
    rows = table(RESULTS, "| run | EM before -> after RL |")
    shipped = runs.shipped_runs()
    names = {"": "", ", `use_process_reward=false`": "_no_process_reward", ", RLOO": "_rloo"}
    expected_rows = {
        f"seed {s}{label}": f"demo_s{s}{suffix}" for s in SEEDS for label, suffix in names.items()
    }
    assert set(rows) == set(expected_rows)
    for label, name in expected_rows.items():
        r = shipped[name]["report"]
        em, single, comparison, bridge, hop3, multihop, searches, cost = rows[label]
        kb, ka = r["em_by_kind_before"], r["em_by_kind_after"]
        if name.endswith(("_no_process_reward", "_rloo")):
            numbers_agree(
                label,
                em,
                with_ci(r["em_before"], r["em_before_ci95"]) + with_ci(r["em_after"], r["em_after_ci95"]),
            )
            numbers_agree(
                label,
                multihop,
                with_ci(r["multihop_em_before"], r["multihop_em_before_ci95"])
                + with_ci(r["multihop_em_after"], r["multihop_em_after_ci95"]),
            )
        else:  # the README's headline holds these
            assert em == multihop == "README", label
        numbers_agree(label, single, [kb["single"], ka["single"]])
        numbers_agree(label, comparison, [kb["comparison"], ka["comparison"]])
        numbers_agree(label, bridge, [round(kb["bridge"] * 45), round(ka["bridge"] * 45)])
        numbers_agree(label, hop3, [kb["3hop"], ka["3hop"]])
        numbers_agree(label, searches, [r["mean_searches_before"], r["mean_searches_after"]])
        numbers_agree(label, cost, [r["minutes"], r["seconds_per_step"], r["peak_rss_mb"]])


@pytest.mark.parametrize(
    "header, suffix",
    [
        ("| `cpu_multihop` | EM before -> after |", ""),
        ("| `cpu_multihop`, 40 steps | EM before -> after |", "_40steps"),
    ],
)
def test_results_multihop_table_is_what_the_shipped_multihop_runs_say(header, suffix):
    """docs/results.md's tables of the cpu_multihop preset's three seeds, at its steps and at twice them: EM
    overall, by kind (3-hop with its intervals) and multi-hop before -> after RL, searches (on 3-hop questions
    too), read from `results/multihop_s*`."""
    rows = table(RESULTS, header)
    shipped = runs.shipped_runs()
    assert set(rows) == {f"seed {s}" for s in SEEDS}
    for s in SEEDS:
        r = shipped[f"multihop_s{s}{suffix}"]["report"]
        em, single, comparison, bridge, hop3, multihop, searches = rows[f"seed {s}"]
        kb, ka = r["em_by_kind_before"], r["em_by_kind_after"]
        cb, ca = r["em_by_kind_before_ci95"], r["em_by_kind_after_ci95"]
        label = f"multihop seed {s}{suffix}"
        numbers_agree(
            label,
            em,
            with_ci(r["em_before"], r["em_before_ci95"]) + with_ci(r["em_after"], r["em_after_ci95"]),
        )
        for kind, cell in (("single", single), ("comparison", comparison), ("bridge", bridge)):
            numbers_agree(label, cell, [kb[kind], ka[kind]])
        numbers_agree(label, hop3, with_ci(kb["3hop"], cb["3hop"]) + with_ci(ka["3hop"], ca["3hop"]))
        mh = [r["multihop_em_before"], *with_ci(r["multihop_em_after"], r["multihop_em_after_ci95"])]
        numbers_agree(label, multihop, mh)
        hop_searches = [r[f"answers_by_kind_{x}"]["3hop"]["searches"] for x in ("before", "after")]
        numbers_agree(
            label, searches, [r["mean_searches_before"], r["mean_searches_after"], 3, *hop_searches]
        )


COMPARISON_LABELS = {
    "GRPO (the demo runs)": "GRPO",
    "Base Tool Call, 1-shot": "Base Tool Call (1-shot)",
    "Naive RAG, 1-shot": "Naive RAG (1-shot)",
    "PPO w/o advantage mask": "PPO w/o adv mask",
    "PPO w/o advantage and loss masks": "PPO w/o adv+loss mask",
}
"""Row labels of docs/results.md's comparison table that differ from `comparison.json`'s method names."""


def test_results_comparison_table_is_the_shipped_comparison():
    """docs/results.md's 20-step comparison: the rows `compare` ran are `comparison.json`'s (EM, intervals, per
    seed, multi-hop, by kind, searches, minutes per run, the paper's column); the rows taken from the demo runs
    (GRPO, RLOO, without the process reward, before RL) agree with those runs' per-seed reports."""
    rows = table(RESULTS, "| method | EM [95% CI] | per seed 0 / 1 / 2 |")
    shipped = shipped_comparison()
    em_rows = {r["method"]: r for r in shipped["rows"] if r["dataset"] == "generated"}
    kind_rows = {r["method"]: r for r in shipped["kind_rows"]}
    kinds = ("single", "comparison", "bridge", "3hop")
    checked = set()
    for label, cells in rows.items():
        method = COMPARISON_LABELS.get(label, label)
        em, per_seed, mh, mh_per_seed, by_kind, searches, minutes, paper = cells
        if method in em_rows:
            r = em_rows[method]
            readme = em == "README"  # GRPO: the README's headline (its test) holds these cells
            assert not readme or [em, per_seed, mh, mh_per_seed] == ["README"] * 4, label
            if not readme:
                numbers_agree(label, em, with_ci(r["em"], r["ci"]))
            if method in kind_rows:
                k = kind_rows[method]
                if not readme:
                    numbers_agree(label, per_seed, r["em_per_seed"])
                    numbers_agree(label, mh, with_ci(k["multihop_em"], k["multihop_ci"]))
                    numbers_agree(label, mh_per_seed, k["multihop_per_seed"])
                numbers_agree(label, by_kind, [k["em_by_kind"][x] for x in kinds])
                numbers_agree(label, searches, [k["searches"]])
                secs = [shipped["seconds_per_run"][f"{method} seed {s}"] / 60 for s in SEEDS]
                numbers_agree(label, minutes, [min(secs), max(secs)])
            numbers_agree(
                label, paper, [shipped["paper"][method]["avg"]] if method in shipped["paper"] else []
            )
            checked.add(method)
    assert checked == set(em_rows), set(em_rows) - checked

    demo = runs.shipped_runs()
    from_demo = {"GRPO (the demo runs)": "", "RLOO (the demo's `*_rloo` runs)": "_rloo"}
    from_demo["GRPO w/o process reward (the demo's `*_no_process_reward` runs)"] = "_no_process_reward"
    for label, suffix in from_demo.items():
        reps = [demo[f"demo_s{s}{suffix}"]["report"] for s in SEEDS]
        em, per_seed, mh, mh_per_seed, by_kind, searches, _, _ = rows[label]
        mean_kinds = [sum(r["em_by_kind_after"][x] for r in reps) / 3 for x in kinds]
        numbers_agree(label, by_kind, mean_kinds)
        numbers_agree(label, searches, [sum(r["mean_searches_after"] for r in reps) / 3])
        if em == "README":
            continue
        # the mean and the per-seed values; the interval comes from per-question files, which are not shipped
        numbers_agree(label, per_seed, [r["em_after"] for r in reps])
        numbers_agree(label, mh_per_seed, [r["multihop_em_after"] for r in reps])
        assert float(em.strip("*").split()[0]) == pytest.approx(
            sum(r["em_after"] for r in reps) / 3, abs=0.005
        )
        assert float(mh.strip("*").split()[0]) == pytest.approx(
            sum(r["multihop_em_after"] for r in reps) / 3, abs=0.005
        )
    before = rows["before RL (the warm-up alone, the same seeds)"]
    reps = [demo[f"demo_s{s}"]["report"] for s in SEEDS]
    numbers_agree("before RL", before[1], [r["em_before"] for r in reps])
    numbers_agree("before RL", before[3], [r["multihop_em_before"] for r in reps])
    numbers_agree("before RL", before[5], [sum(r["mean_searches_before"] for r in reps) / 3])
