"""Evaluation: roll out a policy greedily over questions, score EM / F1, and bootstrap confidence intervals;
the held-out questions of a dataset and how well its corpus covers them.

`runs.run_eval(cfg, method, ...)` (`python -m agentr1_nb eval`) puts these together for one of the methods
(see `baselines` for what exactly differs between them):

- "naive_rag": retrieve top-k with the question once, answer in one greedy generation;
- "tool_call": the untrained policy (adapter disabled) in the agent's multi-turn `ToolEnv`, zero-shot;
  either baseline takes one worked example with `prompt_style="few_shot"` (`--prompt-style`);
- "agent": the policy with a trained LoRA adapter (`--adapter DIR`), with the prompt it was trained with.

All three share the questions, the corpus, the retriever, `top_k`, `max_tool_chars`, `max_tokens_per_turn`
and greedy decoding; the two multi-turn methods also share `max_turns` and the env.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import DATASETS, Config
from .rewards import normalize_answer, score_trajectory
from .rollout import rollout
from .world import load_corpus, load_examples

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
        "kind": getattr(traj.example, "kind", None) or None,
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
        "em_by_kind": em_by_kind(records),
    }


MULTIHOP_KINDS = ("bridge", "3hop")
"""The kinds that need a second search: a bridge entity read from one passage names the next query."""


def multihop_em(records: list[dict], seed: int = 0) -> tuple[float, list[float], int]:
    """(EM, 95% bootstrap interval, n) over the bridge and 3-hop questions pooled."""
    em = [r["em"] for r in records if r.get("kind") in MULTIHOP_KINDS]
    lo, hi = bootstrap_ci(em, seed=seed)
    return (float(np.mean(em)) if em else float("nan")), [lo, hi], len(em)


def em_by_kind(records: list[dict]) -> dict[str, float]:
    """Mean EM per question kind (single / bridge / comparison / 3hop ...), for the records that have one."""
    kinds: dict[str, list[float]] = {}
    for r in records:
        if r.get("kind"):
            kinds.setdefault(r["kind"], []).append(r["em"])
    return {k: float(np.mean(v)) for k, v in sorted(kinds.items())}


def answer_account(records: list[dict]) -> dict[str, dict]:
    """What the answers of each question kind are made of (records with a kind and `supporting_titles`):

    {kind: {"n", "em", "support_found" (every supporting passage was seen), "searches" (mean),
    "wrong_support" (the answer is one of the question's own supporting entities but not the gold: for a
    comparison the other compared name, for a bridge or 3-hop question an entity met on the way),
    "other" (a wrong answer that is none of them: a third name, a date...), "no_answer"}}, shares of n.
    It tells a comparison answered by a guess between its two names (EM about 0.5, other 0) from one answered
    by a name read on the way (other high), and a chain stopped early (wrong_support) from a lost one."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        if r.get("kind"):
            groups.setdefault(r["kind"], []).append(r)
    out = {}
    for kind, rs in sorted(groups.items()):
        n = len(rs)
        wrong_support = other = no_answer = 0
        for r in rs:
            if r["em"]:
                continue
            if not r.get("prediction"):
                no_answer += 1
            elif normalize_answer(r["prediction"]) in {
                normalize_answer(t) for t in r.get("supporting_titles", [])
            }:
                wrong_support += 1
            else:
                other += 1
        out[kind] = {
            "n": n,
            "em": round(float(np.mean([r["em"] for r in rs])), 4),
            "support_found": round(float(np.mean([bool(r.get("supporting_found")) for r in rs])), 4),
            "searches": round(float(np.mean([r.get("searches", 0) for r in rs])), 3),
            "wrong_support": round(wrong_support / n, 4),
            "other": round(other / n, 4),
            "no_answer": round(no_answer / n, 4),
        }
    return out


@torch.no_grad()
def evaluate_agent(
    model, tokenizer, examples, make_env, cfg: Config, out_file: str | Path | None = None, desc: str = "eval"
):
    """Greedy multi-turn rollouts over `examples` in batches of `cfg.eval_batch_size` (a tqdm bar `desc`).

    Returns `(summary, records)`; with `out_file`, records are also written as JSON lines.
    """
    was_training = model.training
    model.eval()
    records = []
    bar = tqdm(total=len(examples), desc=desc, unit="q", dynamic_ncols=True)
    for i in range(0, len(examples), cfg.eval_batch_size):
        batch = examples[i : i + cfg.eval_batch_size]
        trajs = rollout(model, tokenizer, batch, make_env, cfg, group_size=1, greedy=True)
        for t in trajs:
            score_trajectory(t, cfg)
            records.append(trajectory_record(t))
        bar.update(len(batch))
    bar.close()
    if was_training:
        model.train()
    if out_file is not None:
        Path(out_file).parent.mkdir(parents=True, exist_ok=True)
        with open(out_file, "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
    return summarize(records, seed=cfg.seed), records


# ----------------------------------------------------------------------------- the questions of a dataset


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


def eval_subset(examples: list, cfg: Config) -> list:
    """The held-out questions an experiment evaluates: the first `cfg.eval_questions` of `examples`, after
    keeping only the first `cfg.eval_per_kind` of each kind when that is > 0 (in their order, the kinds
    interleaved as they come)."""
    if cfg.eval_per_kind > 0:
        taken: dict[str, int] = {}
        kept = []
        for ex in examples:
            if taken.get(ex.kind, 0) < cfg.eval_per_kind:
                taken[ex.kind] = taken.get(ex.kind, 0) + 1
                kept.append(ex)
        examples = kept
    return list(examples[: cfg.eval_questions])


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
