"""Evaluation: roll out a policy greedily over questions, score EM / F1, and bootstrap confidence intervals.

`run_eval(cfg, method, ...)` is `python -m agentr1_nb eval`: it loads the held-out questions of
`cfg.dataset`, the corpus, the retriever and the policy, runs one method, writes per-question JSON lines and
returns the summary. The methods (see `baselines` for what exactly differs between them):

- "naive_rag": retrieve top-k with the question once, answer in one greedy generation;
- "tool_call": the untrained policy (adapter disabled) in the agent's multi-turn `ToolEnv`, zero-shot;
  either baseline takes one worked example with `prompt_style="few_shot"` (`--prompt-style`);
- "agent": the policy with a trained LoRA adapter (`--adapter DIR`), with the prompt it was trained with.

All three share the questions, the corpus, the retriever, `top_k`, `max_tool_chars`, `max_tokens_per_turn`
and greedy decoding; the two multi-turn methods also share `max_turns` and the env.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from .config import Config
from .env import ToolEnv, check_prompt_style
from .rewards import normalize_answer, score_trajectory

METHODS = ("naive_rag", "tool_call", "agent")
SUMMARY_KEYS = (
    "dataset",
    "method",
    "n",
    "em",
    "f1",
    "em_ci95",
    "f1_ci95",
    "format_ok",
    "mean_turns",
    "mean_searches",
    "recall_any",
)
"""The keys `run_eval` returns (and `eval --json` prints), in this order; extras go to the summary file."""
COVERAGE_WARN = 0.1
"""Warn when more than this share of the questions is not covered by the corpus (titles or answers)."""
POLICY_FIELDS = ("model", "load_in_4bit", "lora_r", "lora_alpha", "lora_target_modules", "prompt_style")
"""Fields taken from a training run's config.json found beside the adapter: they define the trained policy."""


class CoverageWarning(UserWarning):
    """The corpus lacks the passages (or the answers) that many questions need."""


def bootstrap_ci(values, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (95% by default). Empty input gives (nan, nan)."""
    x = np.asarray(list(values), dtype=np.float64)
    if x.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def trajectory_record(traj) -> dict:
    """What we keep per question for inspection (one JSON line).

    `supporting_found`: every supporting title was seen; `supporting_seen`: those that were; `actions`: the
    text of each turn (what the model wrote), so a record can be read without the tokenizer.
    """
    seen = []
    for turn in traj.turns:
        for title in (turn.get("info") or {}).get("titles", []) or []:
            if title not in seen:
                seen.append(title)
    support = list(traj.example.supporting_titles)
    return {
        "id": traj.example.id,
        "question": traj.example.question,
        "gold": traj.example.answers,
        "prediction": traj.answer,
        "em": traj.em,
        "f1": traj.f1,
        "reward": traj.reward,
        "format_ok": bool(traj.answer_ok and traj.tool_ok),
        "turns": len(traj.turns),
        "searches": traj.num_searches,
        "passages_seen": seen,
        "supporting_found": all(t in seen for t in support),
        "stop_reason": traj.stop_reason,
        "supporting_titles": support,
        "supporting_seen": [t for t in support if t in seen],
        "actions": [t.get("action_text", "") for t in traj.turns],
    }


def _recall(records: list[dict]) -> tuple[float, float]:
    """(any, all): share of questions with at least one / every supporting passage seen, over the questions
    whose supporting titles are known (NaN when none are). Records without `supporting_titles` (older
    files) count as known, with `supporting_found` for both."""
    known = [r for r in records if r.get("supporting_titles", [None])]
    if not known:
        return float("nan"), float("nan")
    if all("supporting_seen" in r for r in known):
        hits_any = [bool(r["supporting_seen"]) for r in known]
    else:
        hits_any = [bool(r["passages_seen"]) and r["supporting_found"] for r in known]
    return float(np.mean(hits_any)), float(np.mean([r["supporting_found"] for r in known]))


def summarize(records: list[dict], seed: int = 0) -> dict:
    """Means and 95% bootstrap intervals of EM and F1, format rate, turns, searches, and recall of the
    supporting passages over the whole episode (`recall_any`: at least one seen, `recall_all`: all seen)."""
    em = [r["em"] for r in records]
    f1 = [r["f1"] for r in records]
    lo, hi = bootstrap_ci(em, seed=seed)
    flo, fhi = bootstrap_ci(f1, seed=seed)
    n = len(records)
    return {
        "n": n,
        "em": float(np.mean(em)) if n else float("nan"),
        "f1": float(np.mean(f1)) if n else float("nan"),
        "em_ci95": [lo, hi],
        "f1_ci95": [flo, fhi],
        "format_ok": float(np.mean([r["format_ok"] for r in records])) if n else float("nan"),
        "mean_turns": float(np.mean([r["turns"] for r in records])) if n else float("nan"),
        "mean_searches": float(np.mean([r["searches"] for r in records])) if n else float("nan"),
        "recall_any": _recall(records)[0],
        "recall_all": _recall(records)[1],
    }


@torch.no_grad()
def evaluate_agent(model, tokenizer, examples, make_env, cfg: Config, out_file: str | Path | None = None):
    """Greedy multi-turn rollouts over `examples` in batches of `cfg.eval_batch_size`.

    Returns `(summary, records)`; with `out_file`, records are also written as JSON lines.
    """
    from .rollout import rollout

    was_training = model.training
    model.eval()
    records = []
    for i in range(0, len(examples), cfg.eval_batch_size):
        batch = examples[i : i + cfg.eval_batch_size]
        trajs = rollout(model, tokenizer, batch, make_env, cfg, group_size=1, greedy=True)
        for t in trajs:
            score_trajectory(t, cfg)
            records.append(trajectory_record(t))
    if was_training:
        model.train()
    if out_file is not None:
        Path(out_file).parent.mkdir(parents=True, exist_ok=True)
        with open(out_file, "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
    return summarize(records, seed=cfg.seed), records


# ----------------------------------------------------------------------------- the eval command


def _need_file(path: str, what: str) -> None:
    if path and not Path(path).is_file():
        raise FileNotFoundError(
            f"{what} {path} not found" + (" (it is a folder)" if Path(path).is_dir() else "")
        )


def load_eval_questions(cfg: Config, limit: int = 0) -> tuple[list, list]:
    """`(questions, passages)` of `cfg.dataset`: the held-out split (generated) or `load_examples(cfg, "eval")`.

    The corpus is `cfg.corpus_path`, else the dataset's own (the generated world; for real data the union of
    *all* the file's question passages, as in the distractor setting), built before `limit` cuts the
    questions so that a quick run searches the same corpus as a full one.
    """
    from .data import DATASETS, load_corpus, load_examples

    if cfg.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {cfg.dataset!r}; valid: {', '.join(DATASETS)}")
    if cfg.dataset == "generated" and cfg.data_path:
        warnings.warn(
            f"dataset generated ignores --data-path {cfg.data_path}: its questions come from the world "
            f"(world_seed={cfg.world_seed})",
            stacklevel=2,
        )
    elif cfg.dataset != "generated":
        _need_file(cfg.data_path, "question file")
    _need_file(cfg.corpus_path, "corpus file")
    examples = load_examples(cfg, "eval")
    if not examples:
        raise ValueError(f"no {cfg.dataset} questions loaded from {cfg.data_path or 'the default sample'}")
    passages = load_corpus(cfg, examples)
    if limit and limit > 0:
        examples = examples[:limit]
    return examples, passages


def corpus_coverage(examples: list, passages: list) -> dict:
    """How well the corpus covers the questions.

    - `titles_missing`: questions with a supporting title absent from the corpus (among `with_titles`, the
      questions whose supporting titles are known; question-only files have none);
    - `answers_missing`: questions whose gold answer (any alias, normalised) occurs in no passage, among
      `answers_checked` (yes/no answers are not checked). This catches a corpus that does not cover a
      question-only file, where titles cannot be checked.
    """
    titles = {p.title for p in passages}
    blob = " " + normalize_answer(" ".join(p.text for p in passages)) + " "
    with_titles = [ex for ex in examples if ex.supporting_titles]
    miss_t = [ex for ex in with_titles if any(t not in titles for t in ex.supporting_titles)]
    checked = [ex for ex in examples if normalize_answer(ex.answer) not in ("", "yes", "no")]
    miss_a = [ex for ex in checked if not any(f" {normalize_answer(a)} " in blob for a in ex.answers if a)]
    return {
        "n": len(examples),
        "n_passages": len(passages),
        "with_titles": len(with_titles),
        "titles_missing": len(miss_t),
        "answers_checked": len(checked),
        "answers_missing": len(miss_a),
        "examples_titles_missing": [
            {"id": ex.id, "missing": [t for t in ex.supporting_titles if t not in titles]}
            for ex in miss_t[:5]
        ],
        "examples_answers_missing": [{"id": ex.id, "answer": ex.answer} for ex in miss_a[:5]],
    }


def check_coverage(examples: list, passages: list) -> dict:
    """`corpus_coverage`, with a `CoverageWarning` when more than `COVERAGE_WARN` of the questions miss."""
    cov = corpus_coverage(examples, passages)
    hint = "pass --corpus FILE with the passages of these questions (a {title, text} JSON list)"
    if cov["with_titles"] and cov["titles_missing"] > COVERAGE_WARN * cov["with_titles"]:
        ex = cov["examples_titles_missing"][0]
        warnings.warn(
            f"the corpus ({cov['n_passages']} passages) lacks supporting passages of {cov['titles_missing']} "
            f"of {cov['with_titles']} questions (e.g. {ex['id']}: {ex['missing']}); {hint}",
            CoverageWarning,
            stacklevel=2,
        )
    if cov["answers_checked"] and cov["answers_missing"] > COVERAGE_WARN * cov["answers_checked"]:
        ex = cov["examples_answers_missing"][0]
        warnings.warn(
            f"the answers of {cov['answers_missing']} of {cov['answers_checked']} questions occur in no passage "
            f"of the corpus (e.g. {ex['id']}: {ex['answer']!r}), so it does not cover them; {hint}",
            CoverageWarning,
            stacklevel=2,
        )
    if not cov["with_titles"]:
        warnings.warn(
            "no question names its supporting passages, so recall_any cannot be measured (it is NaN)",
            CoverageWarning,
            stacklevel=2,
        )
    return cov


def resolve_adapter(adapter: str | Path) -> Path:
    """The LoRA folder: `adapter` itself, or `adapter/adapter`, or `adapter/checkpoint/adapter` (a run dir)."""
    root = Path(adapter)
    for cand in (root, root / "adapter", root / "checkpoint" / "adapter"):
        if (cand / "adapter_config.json").is_file():
            return cand
    if not root.exists():
        raise FileNotFoundError(f"adapter folder {root} not found")
    raise FileNotFoundError(
        f"{root} holds no LoRA adapter (no adapter_config.json in it, in {root / 'adapter'} or in "
        f"{root / 'checkpoint' / 'adapter'}); pass the folder written by model.save_pretrained or a train --out dir"
    )


def training_config(adapter_dir: Path) -> dict | None:
    """The config.json of the training run an adapter comes from (train writes OUT/config.json and
    OUT/checkpoint/adapter), looked up in the adapter folder and its two parents; None when absent."""
    for folder in (adapter_dir, adapter_dir.parent, adapter_dir.parent.parent):
        path = folder / "config.json"
        if path.is_file():
            try:
                cfg = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(cfg, dict) and "prompt_style" in cfg:  # a Config, not a model's config.json
                return cfg
    return None


def agent_config(cfg: Config, adapter_dir: Path) -> Config:
    """`cfg` with the policy fields (`POLICY_FIELDS`) of the run that trained the adapter, when known: the
    adapter only fits its base model, and the agent is evaluated with the prompt it was trained with."""
    trained = training_config(adapter_dir)
    if trained is None:
        return cfg
    changes = {k: trained[k] for k in POLICY_FIELDS if k in trained and trained[k] != getattr(cfg, k)}
    if changes:
        print(f"eval: using the training run's {changes} for the adapter {adapter_dir}", file=sys.stderr)
    return cfg.replace(**changes)


def run_eval(
    cfg: Config,
    method: str,
    adapter: str | Path | None = None,
    limit: int = 0,
    out_dir: str | Path | None = None,
    prompt_style: str | None = None,
) -> dict:
    """Evaluate `method` on the held-out questions of `cfg.dataset` (greedy, batched).

    `prompt_style` ("zero_shot" or "few_shot") sets a baseline's prompt; None keeps the defaults: Naive RAG
    follows `cfg.prompt_style`, Base Tool Call is zero-shot (the paper's). An agent always uses the prompt
    its adapter was trained with, so it is an error there.

    Writes one JSON line per question to `out_dir/<dataset>_<method>.jsonl` (default `runs/eval`) and the
    summary with extras (recall_all, corpus coverage, stop reasons, timing, config) to
    `<dataset>_<method>.summary.json`; returns the summary restricted to `SUMMARY_KEYS` (`recall_any` is None
    when no question names its supporting passages).
    """
    from .policy import load_policy
    from .retrieval import build_retriever
    from .tools import make_tools

    t0 = time.time()
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if prompt_style is not None:
        check_prompt_style(prompt_style)  # before minutes of loading
    adapter_dir = None
    if method == "agent" and prompt_style is not None:
        raise ValueError(
            "--prompt-style applies to the baselines; an agent uses the prompt its adapter was trained with"
        )
    if method == "naive_rag" and prompt_style is not None:
        cfg = cfg.replace(prompt_style=prompt_style)
    if method == "agent":
        if not adapter:
            raise ValueError(
                "--method agent needs --adapter DIR (a trained LoRA adapter, e.g. a train --out folder); "
                "for the untrained policy use --method tool_call"
            )
        adapter_dir = resolve_adapter(adapter)
        cfg = agent_config(cfg, adapter_dir)
    elif adapter:
        warnings.warn(
            f"--adapter is ignored by --method {method} (it evaluates the base model)", stacklevel=2
        )

    examples, passages = load_eval_questions(cfg, limit)
    coverage = check_coverage(examples, passages)
    retriever = build_retriever(cfg, passages)
    model, tok = load_policy(cfg, adapter=adapter_dir)

    if method == "naive_rag":
        from .baselines import naive_rag

        records = naive_rag(model, tok, examples, retriever, cfg)
    elif method == "tool_call":
        from .baselines import tool_call

        records = tool_call(
            model, tok, examples, make_tools(cfg, retriever), cfg, prompt_style=prompt_style or "zero_shot"
        )
    else:
        tools = make_tools(cfg, retriever)
        _, records = evaluate_agent(model, tok, examples, lambda: ToolEnv(tools, tok, cfg), cfg)

    full = summarize(records, seed=cfg.seed)
    result = {"dataset": cfg.dataset, "method": method, **full}
    # NaN (recall without known supporting titles) is not JSON: it becomes null
    result = {
        k: None if isinstance(result[k], float) and math.isnan(result[k]) else result[k] for k in SUMMARY_KEYS
    }
    out = Path(out_dir or "runs/eval")
    out.mkdir(parents=True, exist_ok=True)
    used_style = (prompt_style or "zero_shot") if method == "tool_call" else cfg.prompt_style
    stem = f"{cfg.dataset}_{method}" + ("_few_shot" if prompt_style == "few_shot" else "")
    with open(out / f"{stem}.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    stops: dict[str, int] = {}
    for r in records:
        stops[r["stop_reason"]] = stops.get(r["stop_reason"], 0) + 1
    extras = {
        "recall_all": full["recall_all"],
        "stop_reasons": stops,
        "coverage": coverage,
        "prompt_style": used_style,
        "adapter": None if adapter_dir is None else str(adapter_dir),
        "data_path": cfg.data_path,
        "corpus_path": cfg.corpus_path,
        "limit": limit,
        "seconds": round(time.time() - t0, 1),
        "records": str(out / f"{stem}.jsonl"),
        "config": cfg.to_dict(),
    }
    (out / f"{stem}.summary.json").write_text(json.dumps({**result, **extras}, indent=2))
    return result
