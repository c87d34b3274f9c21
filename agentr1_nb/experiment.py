"""The one experiment pipeline that `demo`, `train --backend trl` and `compare` share, and its one report.

    run_experiment(cfg, out, trainer):
        load        the policy (with a warm-start adapter, if any) and the task, unless given
        warm-up     supervised steps on gold episodes (`sft.sft_warmup`), unless `warmup=False`
        eval before greedy episodes on each evaluation set (`evaluate.evaluate_agent`), unless skipped
        train       `trainer(cfg, out, model, tokenizer, task, resume, callback)`: our `train.train`
                    (`train_ours`) or TRL's GRPOTrainer (`trl_backend`)
        eval after  the same sets again
        report      `build_report`: the same keys (`REPORT_KEYS`) from every entry point, written with the
                    full summaries to `out/report.json`

The callers keep what differs between them: the demo's run folder and plot (`runs.demo`), TRL's process
group and adapter (`trl_backend.train_trl`), the comparison's warm-start adapter, result cache and resume
rules (`compare.run_variant`). Everything between loading and the report is here, in one order, so the
random draws of a run do not depend on which entry point started it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .common import atomic_write_json, maxrss_bytes, mean, peak_memory_mb, set_seed
from .config import Config
from .env import Task, ToolEnv, build_task
from .evaluate import answer_account, bootstrap_ci, eval_subset, evaluate_agent, multihop_em
from .policy import load_policy
from .sft import sft_warmup
from .train import TrainHistory, train

PHASES = ("load", "warmup", "eval_before", "train", "eval_after")
"""The pipeline's phases, in order: `phase_minutes` and `phase_peak_rss_mb` have one entry for each."""

REPORT_KEYS = (
    "backend",
    "em_before",
    "em_before_ci95",
    "em_after",
    "em_after_ci95",
    "n_by_kind",
    "em_by_kind_before",
    "em_by_kind_before_ci95",
    "em_by_kind_after",
    "em_by_kind_after_ci95",
    "multihop_em_before",
    "multihop_em_before_ci95",
    "multihop_em_after",
    "multihop_em_after_ci95",
    "multihop_n",
    "answers_by_kind_before",
    "answers_by_kind_after",
    "mean_searches_before",
    "mean_searches_after",
    "reward_first",
    "reward_last",
    "steps",
    "seconds_per_step",
    "peak_rss_mb",
    "minutes",
    "phase_minutes",
    "phase_peak_rss_mb",
    "seed",
    "use_process_reward",
)
"""The headline of every run (the demo's JSON line; the top of report.json), in this order. A phase that was
skipped (no evaluation before RL in `compare`) leaves its values None; a value that is undefined (multi-hop
EM on a set without multi-hop questions) is None too, never NaN (not JSON)."""

DETAIL_KEYS = (
    "entry",
    "eval_sets",
    "before",
    "after",
    "sft_warmup_losses",
    "peak_mem_mb",
    "interrupted",
    "world_size",
    "versions",
    "config",
)
"""What report.json holds besides `REPORT_KEYS`: the entry point ("demo", "train", "compare"), per set the
summaries before / after (`eval_sets`; `before` / `after` are those of the first set), the warm-up losses,
peak memory, whether Ctrl-C ended training, the processes, the versions of the trainer's libraries and the
config."""

Trainer = Callable[[Config, Path, Any, Any, Task, bool, Callable | None], TrainHistory]
"""`trainer(cfg, out, model, tokenizer, task, resume, callback) -> metrics rows` (`.interrupted` set)."""


def train_ours(
    cfg: Config, out: Path, model, tokenizer, task: Task, resume: bool, callback=None
) -> TrainHistory:
    """Our trainer (`train.train`) as a pipeline `Trainer`."""
    return train(cfg, out, resume=resume, model=model, tokenizer=tokenizer, task=task, callback=callback)


@dataclass
class EvalSet:
    """Held-out questions a run is evaluated on, with their dataset's tools and config (None: the task's
    tools, the run's config), and the files their per-question records go to before / after RL."""

    name: str
    questions: list
    tools: list | None = None
    cfg: Config | None = None
    files: tuple[str, str] = ("eval_before.jsonl", "eval_after.jsonl")


@dataclass
class Experiment:
    """What `run_experiment` returns: the headline report (`REPORT_KEYS`), the full one (report.json), the
    metrics rows of training, the per-question records ({set: {"before": [...], "after": [...]}}), and the
    trained policy and its task (the caller frees or reuses them)."""

    report: dict
    full: dict
    history: TrainHistory
    records: dict
    model: Any = field(repr=False)
    tokenizer: Any = field(repr=False)
    task: Task = field(repr=False)


@contextmanager
def _timed(phases: dict[str, float], rss: dict[str, float], name: str) -> Iterator[None]:
    """Record the seconds the `with` block took as `phases[name]`, and the process's peak RSS (MiB) at its
    end as `rss[name]`: the first phase whose value jumps is the one that set the peak."""
    t = time.time()
    yield
    phases[name] = time.time() - t
    rss[name] = round(maxrss_bytes() / 2**20, 1)


def evaluate_sets(
    model, tokenizer, task: Task, cfg: Config, sets: list[EvalSet], out: Path, when: str
) -> dict:
    """{set name: (summary, records)} of greedy episodes on each set; `when` ("before" / "after") picks the
    file each set's records go to and names the progress bar."""
    results = {}
    for es in sets:
        c = es.cfg or cfg
        tools = task.tools if es.tools is None else es.tools
        file = es.files[0 if when == "before" else 1]
        results[es.name] = evaluate_agent(
            model,
            tokenizer,
            es.questions,
            lambda tools=tools, c=c: ToolEnv(tools, tokenizer, c),
            c,
            None if file is None else out / file,
            desc=f"eval {es.name} {when} RL" if len(sets) > 1 else f"eval {when} RL",
        )
    return results


def load(cfg: Config, model, tokenizer, task: Task | None, adapter=None) -> tuple[Any, Any, Task]:
    """The policy (`policy.load_policy`, with `adapter`) and the task (`env.build_task`), each unless given,
    with a progress bar: the first minutes of a run on a fresh machine are spent here (converting the
    default model, generating the world, building the retriever)."""
    with tqdm(total=2, desc="load", unit="part", disable=model is not None and task is not None) as bar:
        if model is None:
            bar.set_postfix_str("policy")
            model, tokenizer = load_policy(cfg, adapter=adapter)
        bar.update(1)
        if task is None:
            bar.set_postfix_str("task: questions, corpus, retriever")
            task = build_task(cfg, tokenizer)
        bar.update(1)
    return model, tokenizer, task


def run_experiment(
    cfg: Config,
    out: str | Path,
    trainer: Trainer = train_ours,
    *,
    entry: str = "demo",
    backend: str = "ours",
    model=None,
    tokenizer=None,
    task: Task | None = None,
    adapter: str | Path | None = None,
    warmup: bool = True,
    eval_before: bool = True,
    evaluate: bool = True,
    eval_sets: list[EvalSet] | None = None,
    resume: bool = False,
    callback: Callable[[dict], None] | None = None,
    main: bool = True,
    barrier: Callable[[], None] = lambda: None,
    extra: dict | None = None,
) -> Experiment:
    """Load -> warm-up -> evaluate before -> train -> evaluate after -> report, into the run folder `out`
    (checked and prepared by the caller).

    The policy comes from `policy.load_policy(cfg, adapter=adapter)` unless `model` and `tokenizer` are given;
    the task from `env.build_task` unless given. `warmup=False` skips the supervised warm-up (a warm-start
    adapter already holds it); `eval_before=False` the evaluation before RL, `evaluate=False` both. The
    evaluation sets default to the task's held-out questions chosen by `evaluate.eval_subset` (`cfg.eval_questions`, or
    `cfg.eval_per_kind` of each kind). `resume` and
    `callback` go to the trainer. Under several processes (TRL), `main` says whether this one evaluates and
    writes the report, and `barrier()` waits for the others. `extra` adds to the full report (`world_size`,
    `versions`). Returns an `Experiment`; report.json holds `full`.
    """
    t0 = time.time()
    out = Path(out)
    phases: dict[str, float] = {}  # seconds per phase, in order
    rss: dict[str, float] = {}  # peak RSS (MiB) at the end of each phase
    set_seed(cfg.seed)
    with _timed(phases, rss, "load"):
        model, tokenizer, task = load(cfg, model, tokenizer, task, adapter)
    sets = eval_sets if eval_sets is not None else [EvalSet(cfg.dataset, eval_subset(task.eval, cfg))]
    with _timed(phases, rss, "warmup"):
        warm = sft_warmup(model, tokenizer, task, cfg) if warmup else []  # every process: the same weights
    with _timed(phases, rss, "eval_before"):
        run_before = evaluate and eval_before and main
        before = evaluate_sets(model, tokenizer, task, cfg, sets, out, "before") if run_before else {}
    barrier()
    with _timed(phases, rss, "train"):
        history = trainer(cfg, out, model, tokenizer, task, resume, callback)
    with _timed(phases, rss, "eval_after"):
        after = evaluate_sets(model, tokenizer, task, cfg, sets, out, "after") if evaluate and main else {}
    records = {es.name: {"before": _part(before, es, 1), "after": _part(after, es, 1)} for es in sets}
    first = records[sets[0].name] if sets else {"before": None, "after": None}
    minutes = (time.time() - t0) / 60
    report = build_report(cfg, history, first["before"], first["after"], backend, minutes, phases, rss)
    full = dict(
        report,
        entry=entry,
        eval_sets={es.name: {"before": _part(before, es, 0), "after": _part(after, es, 0)} for es in sets},
        before=_part(before, sets[0], 0) if sets else None,
        after=_part(after, sets[0], 0) if sets else None,
        sft_warmup_losses=warm,
        peak_mem_mb=peak_memory_mb(),
        interrupted=bool(getattr(history, "interrupted", False)),
        world_size=1,
        versions={},
        config=cfg.to_dict(),
    )
    full.update(extra or {})
    if main:
        atomic_write_json(out / "report.json", full)
    barrier()
    return Experiment(report, full, history, records, model, tokenizer, task)


def _part(results: dict, es: EvalSet, i: int):
    """The summary (i=0) or the records (i=1) of set `es` in `evaluate_sets`' results; None when absent."""
    return results[es.name][i] if es.name in results else None


# ----------------------------------------------------------------------------- the report


def _finite(x):
    """x, or None where x is NaN: the report is JSON."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def kind_stats(records: list[dict], seed: int = 0) -> tuple[dict, dict, dict]:
    """({kind: n}, {kind: EM}, {kind: [lo, hi]}) over the records that have a question kind (single, bridge,
    comparison, 3hop, ...): questions per kind, mean EM per kind and its 95% bootstrap interval."""
    by_kind: dict[str, list[float]] = {}
    for r in records:
        if r.get("kind"):
            by_kind.setdefault(r["kind"], []).append(r["em"])
    kinds = sorted(by_kind)
    n = {k: len(by_kind[k]) for k in kinds}
    em = {k: mean(by_kind[k]) for k in kinds}
    ci = {k: list(bootstrap_ci(by_kind[k], seed=seed)) for k in kinds}
    return n, em, ci


def _eval_part(records: list[dict] | None, when: str, seed: int) -> dict:
    """The report's keys of one evaluation (`when`: "before" / "after"); all None when it did not run."""
    names = ("em_{}", "em_{}_ci95", "em_by_kind_{}", "em_by_kind_{}_ci95", "multihop_em_{}")
    names += ("multihop_em_{}_ci95", "mean_searches_{}", "answers_by_kind_{}")
    if records is None:
        return {k.format(when): None for k in names}
    em = [r["em"] for r in records]
    _, by_kind, by_kind_ci = kind_stats(records, seed)
    mh, mh_ci, _ = multihop_em(records, seed=seed)
    values = (
        mean(em),
        list(bootstrap_ci(em, seed=seed)),
        by_kind,
        by_kind_ci,
        mh,
        mh_ci,
        mean([r["searches"] for r in records]),
        answer_account(records),
    )
    return {k.format(when): _finite(v) for k, v in zip(names, values, strict=True)}


def build_report(
    cfg: Config,
    history: list,
    before: list[dict] | None,
    after: list[dict] | None,
    backend: str = "ours",
    minutes: float = 0.0,
    phases: dict | None = None,
    rss: dict | None = None,
) -> dict:
    """The headline report of a run (`REPORT_KEYS`, in order) from its training metrics rows and the
    per-question records of its evaluation before / after RL (None: not evaluated).

    EM and its 95% bootstrap interval (seeded with `cfg.seed`), per question kind too (`n_by_kind`
    questions each), multi-hop EM (bridge and 3-hop pooled), mean searches; `reward_first` /
    `reward_last`: the mean training reward over the first / last five steps."""
    rewards = [m["reward"] for m in history]
    evaluated = after if after is not None else before
    n_by_kind, _, _ = kind_stats(evaluated or [], cfg.seed)
    parts = {**_eval_part(before, "before", cfg.seed), **_eval_part(after, "after", cfg.seed)}
    phases = phases or {}
    report = {
        "backend": backend,
        **parts,
        "n_by_kind": n_by_kind,
        "multihop_n": multihop_em(evaluated or [], seed=cfg.seed)[2],
        "reward_first": _finite(mean(rewards[:5])),
        "reward_last": _finite(mean(rewards[-5:])),
        "steps": len(history),
        "seconds_per_step": _finite(mean([m["step_s"] for m in history])),
        "peak_rss_mb": round(maxrss_bytes() / 2**20, 1),
        "minutes": round(minutes, 2),
        "phase_minutes": {k: round(phases.get(k, 0.0) / 60, 2) for k in PHASES},
        "phase_peak_rss_mb": {k: (rss or {}).get(k) for k in PHASES},
        "seed": cfg.seed,
        "use_process_reward": cfg.use_process_reward,
    }
    return {k: report[k] for k in REPORT_KEYS}
