"""The comparison of notebook 06: our agents and baselines beside the paper's Table 3 and mask ablation.

`compare(cfg, out_dir, ...)` runs the whole protocol; notebook 06 and `python -m agentr1_nb compare` call it:

    for each seed:     one supervised warm-up (`sft_warmup`), saved, shared by every variant of the seed
    for each variant:  a `Config` override (`VARIANTS`): load the warm-up adapter, `train()` for cfg.steps,
                       evaluate greedily on the held-out questions of each agent set (`evaluate_agent`)
    baselines:         the base model, Naive RAG and Base Tool Call, zero-shot and 1-shot, on each baseline set
    rows:              EM per (method, dataset), the mean over seeds, with a seed-then-question bootstrap
                       interval (`hier_ci`); per variant, what its EM is made of (`kind_rows`: multi-hop
                       EM, EM by question kind, searches)  -> out_dir/results.json

Everything is saved under `out_dir` and read back when asked for again with the same key (the run's config,
EVAL_N, the evaluation sets and the warm-up batch; for the baselines the config without the RL fields), so
an interrupted run resumes, a finished run asked for with more steps trains on from its checkpoint, and a
long run can be split over processes: `variants=[...]`, `baselines=False` in each worker, then one full call
that reads everything back and writes the table.
Within a seed, the variants differ only in the RL: same warm-up weights, questions, retriever and prompt.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .baselines import naive_rag, tool_call
from .checkpoint import config_changes, find_checkpoint, load_metrics
from .common import atomic_write_json, check_writable_dir, hub_reachable, replace_dir, set_seed
from .config import Config
from .data import read_records
from .env import ToolEnv, build_task
from .evaluate import MULTIHOP_KINDS, bootstrap_ci, em_by_kind, evaluate_agent, load_eval_questions
from .policy import load_policy, load_tokenizer
from .retrieval import build_retriever
from .sft import sft_warmup
from .tools import make_tools
from .train import train

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
    """(agent sets, baseline sets). Trained on the generated world (the CPU presets): agents are evaluated on
    its held-out questions, the baselines also on the real HotpotQA and 2Wiki samples. Trained on a real
    dataset (the GPU presets): both on the paper's three datasets (MuSiQue out of domain)."""
    if cfg.dataset == "generated":
        return ["generated"], ["generated", "hotpotqa", "2wiki"]
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
                f = Path(out_dir) / f"{_slug(name)}_seed{seed}" / f"eval_{ds}.jsonl"
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


def markdown_table(rows: list[dict], paper: dict = PAPER) -> str:
    """Our EM [95% CI] per dataset (n questions per seed), beside the paper's four columns."""
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
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
        theirs = [_fmt(paper.get(m, {}).get(c)) for c in PAPER_COLUMNS]
        lines.append(f"| {m} | " + " | ".join(ours + theirs) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- saved results


def read_back(path: str | Path, key: dict) -> dict | None:
    """The result saved at `path` if it was computed with `key` (every item equal), else None.

    A file that cannot be parsed (a crash mid-write from an older version) counts as absent."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return saved if all(saved.get(k) == v for k, v in key.items()) else None


def can_resume(saved_key: dict | None, cfg: Config) -> bool:
    """Whether a run whose `train_key.json` is `saved_key` can be trained on under `cfg`.

    Yes when it learned the same thing (its stored config differs from `cfg` only in fields that change how a
    run is executed, `train.RESUMABLE_FIELDS`) and it asked for no more steps than `cfg` does: a finished
    20-step run asked for with 40 steps trains on from its checkpoint (the learning rate is constant after
    its warm-up, so 20 + 20 steps are the same as 40), one asked for with fewer steps starts over."""
    stored = (saved_key or {}).get("config")
    if not stored:
        return False
    forbidden, _ = config_changes(stored, cfg)
    return not forbidden and stored.get("steps", 0) <= cfg.steps


def _without(d: dict, fields) -> dict:
    return {k: v for k, v in d.items() if k not in fields}


def run_key(cfg: Config, eval_n: int, agent_sets: list[str], sft_batch: int) -> dict:
    """What a finished run's result depends on: its config, the evaluation size and sets, the warm-up batch."""
    return {"config": cfg.to_dict(), "eval_n": eval_n, "agent_sets": list(agent_sets), "sft_batch": sft_batch}


def baseline_key(cfg: Config, eval_n: int) -> dict:
    """The baselines run the base model greedily: the RL fields and the seed do not change them."""
    return {"config": _without(cfg.to_dict(), (*RL_FIELDS, "seed")), "eval_n": eval_n}


def _slug(name: str) -> str:
    return name.replace(" ", "_").replace("/", "").replace("+", "p")


SHIPPED_COMPARISON = Path(__file__).resolve().parent / "results" / "comparison.json"
"""A finished CPU comparison's results.json, shipped with the package (a few KB: the rows, the kind rows,
the config, the timings; no weights and no per-question files) for the README and notebook 06."""


def export_comparison(out_dir: str | Path, dest: str | Path = SHIPPED_COMPARISON) -> Path:
    """Copy `out_dir/results.json` of a finished comparison to `dest`. A FAST smoke run is refused: its
    numbers are not results."""
    src = Path(out_dir) / "results.json"
    if not src.is_file():
        raise FileNotFoundError(f"{out_dir} holds no results.json: not a finished comparison")
    results = json.loads(src.read_text())
    if "FAST" in results.get("note", "") or results.get("steps", 0) < 2:
        raise ValueError(f"{src} is a FAST smoke run ({results.get('steps')} RL step(s)): not results")
    atomic_write_json(dest, results)
    return Path(dest)


def shipped_comparison(path: str | Path = SHIPPED_COMPARISON) -> dict | None:
    """The comparison shipped with the package (`export_comparison`), or None when there is none; an
    unreadable file is None with a warning."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        warnings.warn(f"skipping the shipped comparison {path}: {e}", stacklevel=2)
        return None


# ----------------------------------------------------------------------------- the stages


def free() -> None:
    """Release a deleted policy before loading the next one (24 runs in a row on a 16 GB GPU)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_eval_set(cfg: Config, ds: str, eval_n: int):
    """`(questions, tools, cfg_ds)` of dataset `ds`'s held-out split, cut to `eval_n`, with its own corpus
    and retriever (`evaluate.load_eval_questions`, as `python -m agentr1_nb eval`); None, with a note, when
    a real dataset is unavailable (no sample in `cfg.data_dir` and no internet)."""
    c = cfg.replace(dataset=ds, data_path="", corpus_path="")
    if ds != "generated" and not Path(c.data_dir).is_dir() and not hub_reachable():
        print(f"skipping {ds}: no sample in {c.data_dir} and no internet", file=sys.stderr)
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # corpus-coverage notes; `eval` reports them
            questions, passages = load_eval_questions(c, eval_n)
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"skipping {ds}: {str(e)[:200]}", file=sys.stderr)
        return None
    return questions, make_tools(c, build_retriever(c, passages)), c


def in_batches(
    fn: Callable[[list], list], questions: list, batch_size: int, desc: str, progress: bool
) -> list:
    """`fn(batch) -> records` over `questions`, in the batches `fn` uses anyway (so the numbers are those
    of one call on all of them), with a progress bar in questions (for `naive_rag`, which has none)."""
    records: list = []
    with tqdm(total=len(questions), desc=desc, unit="q", disable=not progress, leave=False) as bar:
        for i in range(0, len(questions), batch_size):
            part = questions[i : i + batch_size]
            records += fn(part)
            bar.update(len(part))
    return records


def warm_start(
    cfg: Config, seed: int, task, out_dir: str | Path, sft_batch: int, fresh: bool = False
) -> Path:
    """The seed's supervised warm-up adapter: run once, saved under `out_dir`, shared by every variant.

    The folder name holds a digest of everything the warm-up depends on (the config without `RL_FIELDS`,
    with this seed, and the batch size), so a changed preset never reuses a stale adapter. It is written
    under a temporary name and renamed, so two processes of a split run never read a half-written adapter.
    `fresh` redoes it even when saved.
    """
    c = cfg.replace(seed=seed)
    key = {"config": _without(c.to_dict(), RL_FIELDS), "sft_batch": sft_batch}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    path = Path(out_dir) / f"sft_seed{seed}_{digest}"
    if (path / "adapter_config.json").is_file() and not fresh:
        return path
    set_seed(seed)
    model, tok = load_policy(c)
    sft_warmup(model, tok, task, c, batch_size=sft_batch)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    model.save_pretrained(tmp)
    (tmp / "warm_start.json").write_text(json.dumps(key, indent=1))
    del model
    free()
    if fresh:
        replace_dir(tmp, path)
    else:
        try:
            tmp.rename(path)
        except OSError:  # another process finished the same (deterministic) warm-up first
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def run_variant(
    cfg: Config,
    run_dir: str | Path,
    adapter: str | Path,
    task,
    eval_sets: dict,
    key: dict,
    fresh: bool = False,
) -> dict:
    """Train one variant from the warm-up `adapter` and evaluate it; save and return its result.

    `eval_sets`: {dataset: (questions, tools, cfg_ds) or None (skipped)}. The result is `key` plus `eval`
    ({dataset: per-question EM}), `train_reward_last` and `seconds`, written atomically to
    `run_dir/result.json`; per-question records go to `run_dir/eval_<dataset>.jsonl`.

    Training resumes from the run's checkpoint when it was made by the same training (warm-up, and a config
    that differs at most in how the run executes; `run_dir/train_key.json`, see `can_resume`): an interrupted
    run continues, a finished one asked for with another EVAL_N is only evaluated again, and a finished one
    asked for with more steps trains on from where it stopped. Any other run folder content is started over,
    and so is all with `fresh`. `seconds` is this call's wall time (training on counts only the new steps).
    """
    t = time.time()
    run_dir = check_writable_dir(run_dir, "run folder")
    marker = run_dir / "train_key.json"
    train_key = {"config": cfg.to_dict(), "warm_start": Path(adapter).name}
    saved = read_back(marker, {"warm_start": train_key["warm_start"]})
    resume = not fresh and can_resume(saved, cfg) and find_checkpoint(run_dir) is not None
    atomic_write_json(marker, train_key)
    set_seed(cfg.seed)
    model, tok = load_policy(cfg, adapter=adapter)
    train(cfg, run_dir, resume=resume, model=model, tokenizer=tok, task=task)
    metrics = load_metrics(run_dir)
    result = dict(key, eval={}, train_reward_last=metrics[-1]["reward"] if metrics else None)
    for ds, es in eval_sets.items():
        if es is None:
            continue
        questions, tools, c = es
        ce = cfg.replace(dataset=c.dataset, data_path=c.data_path, corpus_path=c.corpus_path)
        _, records = evaluate_agent(
            model,
            tok,
            questions,
            lambda ce=ce, tools=tools: ToolEnv(tools, tok, ce),
            ce,
            out_file=run_dir / f"eval_{ds}.jsonl",
            desc=f"eval {ds}",
        )
        result["eval"][ds] = [r["em"] for r in records]
    result["seconds"] = round(time.time() - t, 1)
    atomic_write_json(run_dir / "result.json", result)
    return result  # the caller frees the policy (`free()`) before loading the next


def run_baselines(model, tokenizer, questions: list, tools: list, cfg: Config, progress: bool = True) -> dict:
    """{baseline method: per-question EM} on one evaluation set, for the base `model` (no trained adapter).

    Naive RAG searches once with the question and answers in one turn; Base Tool Call runs the model in the
    agent's environment. Each with the paper's zero-shot prompt and with one worked example ("1-shot")."""

    out = {}
    for shot, style in (("", "zero_shot"), (" (1-shot)", "few_shot")):
        c = cfg.replace(prompt_style=style)
        rag = in_batches(
            lambda qs, c=c: naive_rag(model, tokenizer, qs, tools[0].retriever, c),
            questions,
            c.eval_batch_size,
            f"{cfg.dataset}: Naive RAG{shot}",
            progress,
        )
        out["Naive RAG" + shot] = [r["em"] for r in rag]
        calls = tool_call(model, tokenizer, questions, tools, cfg, prompt_style=style)  # its own progress bar
        out["Base Tool Call" + shot] = [r["em"] for r in calls]
    return out


# ----------------------------------------------------------------------------- the entry point


def compare(
    cfg: Config,
    out_dir: str | Path,
    seeds: list[int] | None = None,
    variants: list[str] | None = None,
    eval_n: int | None = None,
    steps: int | None = None,
    agent_sets: list[str] | None = None,
    baseline_sets: list[str] | None = None,
    baselines: bool = True,
    sft_batch: int | None = None,
    fast: bool = False,
    fresh: bool = False,
    saved_only: bool = False,
    progress: bool = True,
    note: str = "",
) -> dict:
    """Run (or read back) the comparison and write `out_dir/results.json`; return what it holds.

    cfg: the preset (with overrides) every variant starts from.
    seeds: training seeds; default [0, 1, 2] ([0] with `fast`).
    variants: names in `VARIANTS` to run; default all (`FAST_VARIANTS` with `fast`); [] for none.
    eval_n: held-out questions per evaluation set; default `cfg.eval_questions` (`FAST_EVAL_N` with `fast`).
    steps: RL steps per run; default `cfg.steps` (1 with `fast`).
    agent_sets, baseline_sets: evaluation datasets; default `default_sets(cfg)`.
    baselines: also run (or read back) the baselines; False in the workers of a split run.
    sft_batch: gold episodes per warm-up step; default 8 (`FAST_SFT_BATCH` with `fast`).
    fast: a smoke run: `fast_config(cfg)` and the FAST defaults above. Its numbers are not results.
    fresh: redo everything instead of reading saved runs back.
    saved_only: run nothing: the table of what is saved so far (a run or baseline not saved yet is left
        out and listed in "missing"), e.g. while the workers of a split run are still at work.
    progress: a bar over the runs, one line per finished run (on stderr) and a bar for Naive RAG; `train`
        and `evaluate_agent` always show theirs.
    note: stored in results.json (e.g. "FAST smoke run: not results").

    Returns {"rows": `table_rows` of this call's variants and baselines (of those saved, with `saved_only`),
    "missing" (what `saved_only` left out), "kind_rows" (`kind_rows` of its
    variants: multi-hop EM, EM by question kind, searches), "seconds_per_run",
    "reused" (what was read back), "config", "seeds", "steps", "eval_n", "variants", "agent_sets",
    "baseline_sets", "model", "paper", "note", "minutes"}.
    """
    t0 = time.time()
    if fast:
        cfg = fast_config(cfg)
    cfg = cfg.replace(steps=steps) if steps is not None else cfg
    seeds = list(seeds if seeds is not None else (FAST_SEEDS if fast else [0, 1, 2]))
    names = list(variants if variants is not None else (FAST_VARIANTS if fast else VARIANTS))
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; valid: {', '.join(VARIANTS)}")
    if fresh and saved_only:
        raise ValueError("fresh (redo every run) and saved_only (run nothing) contradict each other")
    eval_n = eval_n if eval_n is not None else (FAST_EVAL_N if fast else cfg.eval_questions)
    sft_batch = sft_batch if sft_batch is not None else (FAST_SFT_BATCH if fast else 8)
    default_agent, default_base = default_sets(cfg)
    agent_sets = list(agent_sets if agent_sets is not None else default_agent)
    baseline_sets = list(baseline_sets if baseline_sets is not None else default_base)
    out = check_writable_dir(out_dir, "comparison folder")  # before minutes of work

    sets: dict = {}  # dataset -> eval set, built on first use (a fully read-back call builds none)

    def eval_set(ds):
        if ds not in sets:
            sets[ds] = load_eval_set(cfg, ds, eval_n)
        return sets[ds]

    def say(msg):
        if progress:
            tqdm.write(msg, file=sys.stderr)

    runs: dict = {}  # (method, dataset) -> per-seed lists of per-question EM
    seconds: dict = {}
    reused: list = []
    missing: list = []
    finished: list = []  # (variant, seed) of every run in the table
    task = None
    adapters: dict = {}  # seed -> warm-up adapter of this call
    bar = tqdm(total=len(names) * len(seeds), desc="runs", unit="run", disable=not progress)
    for name in names:
        for seed in seeds:
            c = cfg.replace(seed=seed, **VARIANTS[name])
            run_dir = out / f"{_slug(name)}_seed{seed}"
            key = run_key(c, eval_n, agent_sets, sft_batch)
            result = None if fresh else read_back(run_dir / "result.json", key)
            label = f"{name} seed {seed}"
            if result is not None:
                reused.append(label)
            elif saved_only:
                missing.append(label)
                say(f"{label}: not saved yet, left out")
                bar.update(1)
                continue
            else:
                bar.set_postfix_str(label)
                if task is None:  # training questions and retriever, shared by every run
                    task = build_task(cfg, load_tokenizer(cfg))
                if seed not in adapters:
                    adapters[seed] = warm_start(cfg, seed, task, out, sft_batch, fresh=fresh)
                sets_ = {ds: eval_set(ds) for ds in agent_sets}
                result = run_variant(c, run_dir, adapters[seed], task, sets_, key, fresh=fresh)
                free()
            seconds[label] = result.get("seconds")
            finished.append((name, seed))
            for ds, ems in result["eval"].items():
                runs.setdefault((name, ds), []).append(ems)
            ems = ", ".join(f"{ds} EM {np.mean(e):.3f}" for ds, e in result["eval"].items())
            say(f"{label}: {ems} ({result.get('seconds')} s{', read back' if label in reused else ''})")
            bar.update(1)
    bar.close()

    if baselines:
        base = tok = None
        key = baseline_key(cfg, eval_n)
        for ds in baseline_sets:
            done = out / f"baselines_{ds}.json"
            result = None if fresh else read_back(done, key)
            if result is None and saved_only:
                missing.append(f"baselines {ds}")
                continue
            if result is None:
                es = eval_set(ds)
                if es is None:
                    continue
                if base is None:
                    set_seed(0)
                    base, tok = load_policy(cfg)
                t = time.time()
                questions, tools, cds = es
                result = dict(key, **run_baselines(base, tok, questions, tools, cds, progress))
                result["seconds"] = round(time.time() - t, 1)
                atomic_write_json(done, result)
            else:
                reused.append(f"baselines {ds}")
            seconds[f"baselines {ds}"] = result.get("seconds")
            for m in BASELINE_METHODS:
                runs[(m, ds)] = [result[m]]
            ems = ", ".join(f"{m} EM {np.mean(result[m]):.3f}" for m in BASELINE_METHODS)
            say(
                f"{ds}: {ems} ({result.get('seconds')} s{', read back' if f'baselines {ds}' in reused else ''})"
            )
        del base
        free()

    results = {
        "note": note,
        "model": cfg.model,
        "seeds": seeds,
        "steps": cfg.steps,
        "eval_n": eval_n,
        "variants": names,
        "agent_sets": agent_sets,
        "baseline_sets": baseline_sets if baselines else [],
        "config": cfg.to_dict(),
        "rows": table_rows(runs),
        "kind_rows": kind_rows(out, finished, agent_sets),
        "paper": PAPER,
        "seconds_per_run": seconds,
        "reused": reused,
        "missing": missing,
        "minutes": round((time.time() - t0) / 60, 1),
    }
    atomic_write_json(out / "results.json", results)
    return results
