"""The comparison's definitions and its table: the paper's numbers (`PAPER`), the trained variants
(`VARIANTS`) and baselines, the FAST smoke sizes, intervals over seeds and questions (`hier_ci`), the rows
(`table_rows`, `kind_rows`) and their Markdown. `compare` runs the protocol; notebook 06 shows the table.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .config import Config
from .data import read_records
from .evaluate import MULTIHOP_KINDS, bootstrap_ci, em_by_kind

# ----------------------------------------------------------------------------- the paper and the variants

PAPER_COLUMNS = ("hotpotqa", "2wiki", "musique", "avg")
PAPER: dict[str, dict[str, float]] = {
    m: dict(zip(PAPER_COLUMNS, v))
    for m, v in {
        "Base Tool Call": (0.1372, 0.0891, 0.0277, 0.0847),
        "Naive RAG": (0.1916, 0.1792, 0.0277, 0.1328),
        "PPO": (0.4136, 0.5468, 0.1552, 0.3719),
        "GRPO": (0.4405, 0.5741, 0.1485, 0.3877),
        "REINFORCE++": (0.3768, 0.4796, 0.1336, 0.3300),
        "REINFORCE++ baseline": (0.3966, 0.5406, 0.1485, 0.3619),
        "RLOO": (0.4089, 0.5641, 0.1419, 0.3716),
    }.items()
}
PAPER.update(
    {  # the mask ablation is reported as the average over the three datasets only
        "PPO w/o adv mask": {"avg": 0.3136},
        "PPO w/o adv+loss mask": {"avg": 0.3022},
        "GRPO w/o loss mask": {"avg": 0.3722},
    }
)
"""Exact match of Qwen2.5-3B-Instruct in Agent-R1 (arXiv 2511.14460): Table 3 and the mask ablation."""

VARIANTS: dict[str, dict] = {
    "GRPO": {"algo": "grpo"},
    "PPO": {"algo": "ppo"},
    "REINFORCE++": {"algo": "reinforce++"},
    "REINFORCE++ baseline": {"algo": "reinforce++_baseline"},
    "RLOO": {"algo": "rloo"},
    "PPO w/o adv mask": {"algo": "ppo", "advantage_mask": False},
    "PPO w/o adv+loss mask": {"algo": "ppo", "advantage_mask": False, "loss_mask": False},
    "GRPO w/o loss mask": {"algo": "grpo", "loss_mask": False},
    "GRPO w/o process reward": {"algo": "grpo", "use_process_reward": False},
}
"""Each trained row of the table: its `Config` overrides on top of the preset (nothing else differs). The
last row is ours, not the paper's: the process reward (`rewards.process_reward`) switched off."""

BASELINE_METHODS = ("Base Tool Call", "Base Tool Call (1-shot)", "Naive RAG", "Naive RAG (1-shot)")
"""The baseline rows: the paper's zero-shot prompts, and one worked example ("1-shot", `few_shot`)."""

REAL_SETS = ["hotpotqa", "2wiki", "musique"]
GENERATED_SETS = ["generated", "hotpotqa", "2wiki"]
"""The evaluation sets of a run trained on the generated world: its own held-out questions and the two real
samples that ship beside the project (`Config.data_dir`)."""
RL_FIELDS = ("steps", "algo", "advantage_mask", "loss_mask", "use_process_reward")
"""Fields the variants and the step count change: the warm-up and the baselines do not depend on them."""

# FAST: a smoke run for tests and CI (minutes on a CPU). Its numbers are not results.
FAST_OVERRIDES = dict(
    steps=1,
    questions_per_step=2,
    group_size=2,
    max_turns=2,
    max_tokens_per_turn=48,
    minibatch_size=4,
    micro_batch_size=4,
    sft_warmup_steps=2,
    eval_batch_size=4,
)
FAST_VARIANTS = ["GRPO", "RLOO"]
FAST_SEEDS = [0]
FAST_EVAL_N = 4
FAST_SFT_BATCH = 2


def fast_config(cfg: Config) -> Config:
    """`cfg` cut to FAST sizes: 1 RL step of 2 questions x 2 samples, 2 turns, 2 warm-up steps."""
    return cfg.replace(**FAST_OVERRIDES)


def default_sets(cfg: Config) -> tuple[list[str], list[str]]:
    """(agent sets, baseline sets). Trained on the generated world (the CPU presets): agents and baselines
    are evaluated on its held-out questions and on the real HotpotQA and 2Wiki samples (what a model trained
    on a fictional world transfers); a sample that is missing is skipped with a note (`load_eval_set`).
    Trained on a real dataset (the GPU presets): both on the paper's three datasets (MuSiQue out of domain)."""
    if cfg.dataset == "generated":
        return list(GENERATED_SETS), list(GENERATED_SETS)
    return list(REAL_SETS), list(REAL_SETS)


# ----------------------------------------------------------------------------- statistics and the table


def hier_ci(per_seed, n_boot: int = 2000, seed: int = 0) -> list[float]:
    """95% interval of the mean EM over seeds: resample the seeds, then the questions within each resampled
    seed, so the interval holds run-to-run noise and question sampling noise. With one seed it is exactly
    `evaluate.bootstrap_ci` of that seed's questions; with none (or only empty seeds), [nan, nan]."""
    per_seed = [np.asarray(x, dtype=float) for x in per_seed if len(x)]
    if not per_seed:
        return [float("nan")] * 2
    if len(per_seed) == 1:
        return list(bootstrap_ci(per_seed[0], n_boot=n_boot, seed=seed))
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for b in range(n_boot):
        seeds = rng.integers(0, len(per_seed), len(per_seed))
        means[b] = np.mean(
            [per_seed[s][rng.integers(0, len(per_seed[s]), len(per_seed[s]))].mean() for s in seeds]
        )
    return [float(q) for q in np.quantile(means, [0.025, 0.975])]


def table_rows(runs: dict, n_boot: int = 2000) -> list[dict]:
    """One row per (method, dataset) of `runs` = {(method, dataset): [per-seed lists of per-question EM]}.

    A row holds `em` (mean over seeds of the per-seed mean), `ci` (`hier_ci`), `em_per_seed`, `seeds` and
    `n` (questions per seed). Baselines come first, then the variants in `VARIANTS` order, then any other
    method; datasets in the order they first appear.
    """
    known = [*BASELINE_METHODS, *VARIANTS]
    methods = sorted(
        dict.fromkeys(m for m, _ in runs), key=lambda m: known.index(m) if m in known else len(known)
    )
    datasets = list(dict.fromkeys(ds for _, ds in runs))
    rows = []
    for m in methods:
        for ds in datasets:
            if (m, ds) not in runs:
                continue
            per_seed = runs[(m, ds)]
            rows.append(
                {
                    "method": m,
                    "dataset": ds,
                    "em": float(np.mean([np.mean(x) for x in per_seed])),
                    "ci": hier_ci(per_seed, n_boot=n_boot),
                    "em_per_seed": [float(np.mean(x)) for x in per_seed],
                    "seeds": len(per_seed),
                    "n": len(per_seed[0]),
                }
            )
    return rows


def kind_rows(out_dir: str | Path, done: list[tuple[str, int]], datasets: list[str]) -> list[dict]:
    """What the EM of each trained variant is made of, from the per-question files of its finished runs
    `done` = [(variant, seed)] (`out_dir/<variant>_seed<s>/eval_<dataset>.jsonl`; a run folder not in `done`,
    e.g. one left by another config, is not read): one row per (variant, dataset) with `multihop_em`
    (bridge and 3-hop questions pooled: mean over seeds, `multihop_ci` by `hier_ci`, `multihop_per_seed`),
    `em_by_kind` and `searches` (means over seeds of the per-seed means), `seeds` (how many seeds had a
    readable file). A variant with no file, or a dataset without question kinds, has no row; an unreadable
    file is skipped with a warning."""
    rows = []
    for name in dict.fromkeys(n for n, _ in done):
        for ds in datasets:
            per_seed = []
            for seed in [s for n, s in done if n == name]:
                f = Path(out_dir) / f"{run_slug(name)}_seed{seed}" / f"eval_{ds}.jsonl"
                if f.is_file():
                    try:
                        per_seed.append(read_records(f))
                    except (OSError, ValueError) as e:  # a damaged file costs its seed's row, not the table
                        warnings.warn(f"skipping {f}: {e}", stacklevel=2)
            seed_kinds = [em_by_kind(recs) for recs in per_seed]  # {} for a file without question kinds
            if not any(seed_kinds):
                continue
            multihop = [[r["em"] for r in recs if r.get("kind") in MULTIHOP_KINDS] for recs in per_seed]
            kinds = sorted({k for bk in seed_kinds for k in bk})
            by_kind = {k: float(np.mean([bk[k] for bk in seed_kinds if k in bk])) for k in kinds}
            rows.append(
                {
                    "method": name,
                    "dataset": ds,
                    "multihop_em": _mean_of_means(multihop),
                    "multihop_ci": hier_ci(multihop),
                    "multihop_per_seed": [float(np.mean(x)) for x in multihop if x],
                    "multihop_n": len(multihop[0]),
                    "em_by_kind": by_kind,
                    "searches": _mean_of_means([r["searches"] for r in recs] for recs in per_seed),
                    "seeds": len(per_seed),
                }
            )
    return rows


def _mean_of_means(lists) -> float:
    """The mean over the non-empty lists of their means (NaN when all are empty): a mean over seeds."""
    means = [float(np.mean(x)) for x in lists if len(x)]
    return float(np.mean(means)) if means else float("nan")


def kind_markdown(rows: list[dict]) -> str:
    """`kind_rows` as a Markdown table: multi-hop EM [95% CI] and per seed, EM by kind, searches."""
    kinds = list(dict.fromkeys(k for r in rows for k in r["em_by_kind"]))
    lines = [
        "| method | dataset | bridge + 3-hop EM [95% CI] | per seed | "
        + " | ".join(f"EM {k}" for k in kinds)
        + " | searches |",
        "|---|---|---|---|" + "---|" * len(kinds) + "---|",
    ]
    for r in rows:
        lo, hi = r["multihop_ci"]
        per_seed = " / ".join(f"{x:.2f}" for x in r["multihop_per_seed"])
        by_kind = " | ".join(_fmt2(r["em_by_kind"].get(k)) for k in kinds)
        lines.append(
            f"| {r['method']} | {r['dataset']} | {r['multihop_em']:.2f} [{lo:.2f}, {hi:.2f}] | {per_seed} | "
            f"{by_kind} | {r['searches']:.2f} |"
        )
    return "\n".join(lines)


def _fmt2(v) -> str:
    return "" if v is None else f"{v:.2f}"


def _fmt(v) -> str:
    return "" if v is None else f"{v:.4f}"


def paper_markdown(paper: dict = PAPER) -> str:
    """The paper's numbers as a Markdown table."""
    head = "| method | HotpotQA | 2Wiki | MuSiQue | avg |\n|---|---|---|---|---|\n"
    return head + "\n".join(
        f"| {m} | " + " | ".join(_fmt(p.get(c)) for c in PAPER_COLUMNS) + " |" for m, p in paper.items()
    )


def paper_row(method: str, paper: dict = PAPER) -> dict:
    """The paper's numbers beside a row of ours: its method's, or for a trained adapter's label such as
    "GRPO (cpu_demo adapter)" those of the method the label starts with (the text before " ("); none for
    our 1-shot baselines (the paper's baselines are zero-shot)."""
    if method in paper:
        return paper[method]
    return {} if method in BASELINE_METHODS else paper.get(method.split(" (")[0], {})


def markdown_table(rows: list[dict], paper: dict = PAPER, datasets: list[str] | None = None) -> str:
    """Our EM [95% CI] per dataset (n questions per seed), beside the paper's four columns; `datasets`
    orders our columns (default: as they first appear in `rows`; those without a row are left out)."""
    present = list(dict.fromkeys(r["dataset"] for r in rows))
    datasets = (
        [d for d in datasets if d in present] + [d for d in present if d not in datasets]
        if datasets
        else present
    )
    cell = {(r["method"], r["dataset"]): r for r in rows}
    n = {r["dataset"]: r["n"] for r in reversed(rows)}
    ours = " | ".join(f"ours: {ds} (n={n[ds]})" for ds in datasets)
    lines = [
        f"| method | {ours} | paper: HotpotQA | paper: 2Wiki | paper: MuSiQue | paper: avg |",
        "|---|" + "---|" * (len(datasets) + 4),
    ]
    for m in dict.fromkeys(r["method"] for r in rows):
        shown = [cell.get((m, ds)) for ds in datasets]
        ours = ["" if r is None else f"{r['em']:.3f} [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]" for r in shown]
        theirs = [_fmt(paper_row(m, paper).get(c)) for c in PAPER_COLUMNS]
        lines.append(f"| {m} | " + " | ".join(ours + theirs) + " |")
    return "\n".join(lines)


def run_slug(name: str) -> str:
    """The folder name of a variant's runs (`<slug>_seed<s>`)."""
    return name.replace(" ", "_").replace("/", "").replace("+", "p")


# ----------------------------------------------------------------------------- the agents on real questions


def per_question_runs(entries: list[dict]) -> dict:
    """`table_rows`' input, {(method, dataset): [per-seed lists of per-question EM]}, from the `per_question`
    entries of a comparison's results ([{"method", "dataset", "em": [[...], ...]}])."""
    return {(e["method"], e["dataset"]): e["em"] for e in entries}


def real_record(results: dict) -> dict:
    """What `compare.export_real` ships from a comparison's results (results.json): the rows of the trained
    adapters (`CompareSpec.adapters`) and of the baselines, on every set they ran on, with their per-question
    EM (`per_question`, so any interval can be recomputed), the model, EVAL_N, each adapter's folders and
    weights' hashes, the evaluation config and the date (UTC) of the `compare` call that wrote it."""
    labels = set(results.get("adapters") or {})
    keep = [
        e for e in results.get("per_question", []) if e["method"] in labels or e["method"] in BASELINE_METHODS
    ]
    return {
        "note": results.get("note", ""),
        "model": results.get("model"),
        "date": results.get("date"),
        "eval_n": results.get("eval_n"),
        "agent_sets": results.get("agent_sets", []),
        "baseline_sets": results.get("baseline_sets", []),
        "adapters": results.get("adapters", {}),
        "config": results.get("config", {}),
        "rows": table_rows(per_question_runs(keep)),
        "per_question": keep,
    }


def real_markdown(record: dict, paper: dict = PAPER) -> str:
    """A shipped `real_record` as `markdown_table`: EM [95% CI] per set (intervals recomputed from the
    per-question EM: seeds, then questions), beside the paper's columns."""
    rows = table_rows(per_question_runs(record["per_question"]))
    return markdown_table(rows, paper, datasets=record.get("agent_sets"))


def transfer_lines(record: dict, n_boot: int = 2000) -> list[str]:
    """One sentence per (adapter, real set) of a `real_record`: its EM against the best baseline on the same
    questions, with the paired difference (mean over the adapter's seeds minus the baseline, per question)
    and its 95% bootstrap interval, and what that interval says: above, below, or no difference these
    questions can show. Sets whose rows are missing or of other lengths are left out."""
    runs = per_question_runs(record["per_question"])
    lines = []
    for label in record.get("adapters", {}):
        for ds in dict.fromkeys(d for _, d in runs if d != "generated"):
            ours = runs.get((label, ds))
            base = {m: runs[(m, ds)][0] for m in BASELINE_METHODS if (m, ds) in runs}
            if not ours or not base or any(len(x) != len(ours[0]) for x in [*ours, *base.values()]):
                continue
            best = max(base, key=lambda m: np.mean(base[m]))
            diff = np.mean(ours, axis=0) - np.asarray(base[best], dtype=float)
            lo, hi = bootstrap_ci(diff, n_boot=n_boot)
            verdict = (
                "above it" if lo > 0 else "below it" if hi < 0 else "no difference these questions can show"
            )
            ci = hier_ci(ours, n_boot=n_boot)
            lines.append(
                f"{label} on {ds} (n={len(diff)}): EM {np.mean(ours):.3f} [{ci[0]:.2f}, {ci[1]:.2f}]; the best "
                f"baseline there, {best}, {np.mean(base[best]):.3f}; difference {diff.mean():+.3f} "
                f"[{lo:+.2f}, {hi:+.2f}] (paired over questions): {verdict}"
            )
    return lines
