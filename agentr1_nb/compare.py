"""The comparison of notebook 06: our agents and baselines beside the paper's Table 3 and mask ablation.

`compare(cfg, out_dir, ...)` runs the whole protocol; notebook 06 and `python -m agentr1_nb compare` call it:

    for each seed:     one supervised warm-up (`sft_warmup`), saved, shared by every variant of the seed
    for each variant:  a `Config` override (`VARIANTS`): the experiment pipeline the demo runs
                       (`experiment.run_experiment`) from the warm-up adapter: `train()` for cfg.steps,
                       evaluate greedily on the held-out questions of each agent set; report.json as the demo's
    for each adapter:  an already-trained agent (`CompareSpec.adapters`, `--adapter LABEL=PATH`), evaluated
                       greedily on each agent set as `eval --method agent` does; its folders are its seeds
    baselines:         the base model, Naive RAG and Base Tool Call, zero-shot and 1-shot, on each baseline set
    rows:              EM per (method, dataset), the mean over seeds, with a seed-then-question bootstrap
                       interval (`hier_ci`); per variant, what its EM is made of (`kind_rows`: multi-hop
                       EM, EM by question kind, searches)  -> out_dir/results.json

Agents trained on the generated world are evaluated on its held-out questions and on the real HotpotQA and
2Wiki samples (`default_sets`; a missing sample is skipped with a note).
Everything is saved under `out_dir` and read back when asked for again with the same key (`compare_store`:
the run's config, EVAL_N and the warm-up batch; for the baselines the config without the RL fields; for an
adapter its weights' hash, the set, EVAL_N and the evaluation config); a saved run that lacks an evaluation
set asked for now is evaluated on it from its final adapter, not trained again. So
an interrupted run resumes, a finished run asked for with more steps trains on from its checkpoint, and a
long run can be split over processes: `variants=[...]`, `baselines=False` in each worker, then one full call
that reads everything back and writes the table.
Within a seed, the variants differ only in the RL: same warm-up weights, questions, retriever and prompt.
A saved result that cannot be read or has the wrong shape is run again, with a warning naming the file.
The paper's numbers, the variants and the table's statistics are in `compare_table`, the keys and the
shipped files (`export_real`: the adapters and baselines on the real samples) in `compare_store` (their
names are importable from here too).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import io
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .baselines import naive_rag, tool_call
from .checkpoint import CheckpointError, find_checkpoint, load_metrics, read_state
from .common import atomic_write_json, check_writable_dir, hub_reachable, replace_dir, set_seed
from .compare_store import (  # the saved results' names are compare's too (notebook 06, the CLI, tests)
    SHIPPED_COMPARISON,  # noqa: F401
    SHIPPED_REAL,  # noqa: F401
    adapter_hash,
    baseline_key,
    baseline_shape,
    can_resume,
    ems_list,
    eval_key,
    export_comparison,  # noqa: F401
    export_real,  # noqa: F401
    read_back,
    run_key,
    run_shape,
    shipped_comparison,  # noqa: F401
    shipped_real,  # noqa: F401
    shown_path,
    without,
)
from .compare_table import (
    BASELINE_METHODS,
    FAST_EVAL_N,
    FAST_OVERRIDES,  # noqa: F401 - the table's names are compare's too (notebooks 05, 06, the CLI)
    FAST_SEEDS,
    FAST_SFT_BATCH,
    FAST_VARIANTS,
    PAPER,
    PAPER_COLUMNS,  # noqa: F401
    RL_FIELDS,
    VARIANTS,
    default_sets,
    fast_config,
    hier_ci,  # noqa: F401
    kind_markdown,  # noqa: F401
    kind_rows,
    markdown_table,  # noqa: F401
    paper_markdown,  # noqa: F401
    real_markdown,  # noqa: F401
    real_record,  # noqa: F401
    run_slug,
    table_rows,
    transfer_lines,  # noqa: F401
)
from .config import Config
from .env import ToolEnv, build_task
from .evaluate import evaluate_agent, load_eval_questions
from .experiment import EvalSet, run_experiment, train_ours
from .policy import check_adapter, load_policy, load_tokenizer
from .retrieval import build_retriever
from .runs import agent_config, resolve_adapter
from .sft import sft_warmup
from .tools import make_tools

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
    key = {"config": without(c.to_dict(), RL_FIELDS), "sft_batch": sft_batch}
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

    The run is `experiment.run_experiment` from the warm-up adapter (no warm-up, no evaluation before RL), so
    its run folder holds the same report.json as a demo's. `eval_sets`: {dataset: (questions, tools, cfg_ds)
    or None (skipped)}. The result is `key` plus `eval` ({dataset: per-question EM}), `train_reward_last`
    and `seconds`, written atomically to `run_dir/result.json`; per-question records go to
    `run_dir/eval_<dataset>.jsonl`.

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
    saved = read_back(
        marker, {"warm_start": train_key["warm_start"]}, lambda d: isinstance(d.get("config"), dict)
    )
    resume = not fresh and can_resume(saved, cfg) and find_checkpoint(run_dir) is not None
    atomic_write_json(marker, train_key)
    sets = [
        EvalSet(
            ds,
            es[0],
            tools=es[1],
            cfg=cfg.replace(dataset=es[2].dataset, data_path=es[2].data_path, corpus_path=es[2].corpus_path),
            files=(None, f"eval_{ds}.jsonl"),
        )
        for ds, es in eval_sets.items()
        if es is not None
    ]
    run = run_experiment(
        cfg,
        run_dir,
        train_ours,
        entry="compare",
        task=task,
        adapter=adapter,
        warmup=False,
        eval_before=False,
        eval_sets=sets,
        resume=resume,
    )
    metrics = load_metrics(run_dir)
    result = dict(key, eval={}, train_reward_last=metrics[-1]["reward"] if metrics else None)
    for es in sets:
        result["eval"][es.name] = [r["em"] for r in run.records[es.name]["after"]]
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
        label = f"{cfg.dataset}: Base Tool Call{shot}"
        calls = tool_call(model, tokenizer, questions, tools, cfg, prompt_style=style, desc=label)
        out["Base Tool Call" + shot] = [r["em"] for r in calls]
    return out


def evaluate_adapter(session: Session, cfg: Config, adapter, datasets: list[str], folder, desc: str) -> dict:
    """{dataset: per-question records} of the trained `adapter` evaluated greedily under `cfg`
    (`evaluate.evaluate_agent`, as `eval --method agent` and a variant's run do) on each of `datasets` that
    is available (`Session.eval_set`; one that is not is left out), the records also written to
    `folder/eval_<dataset>.jsonl`. The policy is loaded once, and only when some set is available."""
    sets = {ds: es for ds in datasets if (es := session.eval_set(ds)) is not None}
    if not sets:
        return {}
    set_seed(0)
    model, tok = load_policy(cfg, adapter=adapter)
    out = {}
    for ds, (questions, tools, cds) in sets.items():
        c = cfg.replace(dataset=cds.dataset, data_path=cds.data_path, corpus_path=cds.corpus_path)
        make_env = lambda tools=tools, c=c: ToolEnv(tools, tok, c)  # noqa: E731
        _, out[ds] = evaluate_agent(
            model, tok, questions, make_env, c, Path(folder) / f"eval_{ds}.jsonl", desc=f"{desc} on {ds}"
        )
    del model
    free()
    return out


def check_adapters(cfg: Config, adapters: dict, variants: list[str]) -> dict[str, list[str]]:
    """`CompareSpec.adapters` ({label: folders, one per seed}) with each folder resolved
    (`runs.resolve_adapter`: an adapter folder, a run folder, or "shipped") and checked before anything loads
    (`policy.check_adapter`, and its run's config.json as `runs.agent_config` reads it). An empty label, a
    label that is also a baseline or a variant row, no folder, a folder listed twice, a missing folder or
    one that is not an adapter: an error naming it."""
    if not isinstance(adapters, dict):
        raise ValueError(
            f"compare: adapters must map a label to its folders, not a {type(adapters).__name__}"
        )
    checked = {}
    for label, folders in adapters.items():
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"compare: adapter label {label!r} is empty; name each adapter row")
        if label in BASELINE_METHODS or label in variants:
            raise ValueError(
                f"compare: adapter label {label!r} is also the name of a baseline or variant row"
            )
        folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
        if not folders or any(not str(f).strip() for f in folders):
            raise ValueError(f"compare: adapter {label!r} needs its folders (one per seed), not {folders!r}")
        dirs = []
        for f in folders:
            d = resolve_adapter(f)  # FileNotFoundError naming the folder
            check_adapter(d)
            with contextlib.redirect_stderr(io.StringIO()):  # its note is printed when it is evaluated
                agent_config(cfg, d)
            dirs.append(str(d))
        twice = sorted({d for d in dirs if dirs.count(d) > 1})
        if twice:
            raise ValueError(
                f"compare: adapter {label!r} lists {twice[0]} more than once (one folder per seed)"
            )
        checked[label] = dirs
    return checked


# ----------------------------------------------------------------------------- the entry point


@dataclass
class CompareSpec:
    """What `compare` runs (None: the default named; the FAST ones with `fast`).

    seeds: training seeds; default [0, 1, 2] ([0] with `fast`).
    variants: names in `VARIANTS` to run; default all (`FAST_VARIANTS` with `fast`), none when `adapters`
        are given; [] for none.
    adapters: already-trained agents to evaluate instead of (or beside) training variants: {row label:
        [adapter folders, one per seed]} (a folder may be a run folder or "shipped"; `check_adapters`). Each
        is evaluated greedily on every agent set as `eval --method agent --adapter` does: the model, LoRA
        and prompt style of its training run (its config.json, `runs.agent_config`), everything else
        (budgets, retriever, top_k) from `cfg`. Saved per set under out_dir/adapters/<weights' hash>/ and
        read back with the same `eval_key`. Its rows are a variant's: several folders are seeds.
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
    """

    seeds: list[int] | None = None
    variants: list[str] | None = None
    adapters: dict[str, list[str]] | None = None
    eval_n: int | None = None
    steps: int | None = None
    agent_sets: list[str] | None = None
    baseline_sets: list[str] | None = None
    baselines: bool = True
    sft_batch: int | None = None
    fast: bool = False
    fresh: bool = False
    saved_only: bool = False
    progress: bool = True
    note: str = ""

    def resolve(self, cfg: Config) -> tuple[Config, CompareSpec]:
        """(the config every variant starts from, this spec with every default filled in), checked."""
        fast = self.fast
        cfg = fast_config(cfg) if fast else cfg
        cfg = cfg.replace(steps=self.steps) if self.steps is not None else cfg
        names = list(
            self.variants
            if self.variants is not None
            else ([] if self.adapters else FAST_VARIANTS if fast else VARIANTS)
        )
        unknown = [n for n in names if n not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}; valid: {', '.join(VARIANTS)}")
        if self.fresh and self.saved_only:
            raise ValueError("fresh (redo every run) and saved_only (run nothing) contradict each other")
        agent, base = default_sets(cfg)
        spec = replace(
            self,
            seeds=list(self.seeds if self.seeds is not None else (FAST_SEEDS if fast else [0, 1, 2])),
            variants=names,
            adapters=check_adapters(cfg, self.adapters or {}, names),
            eval_n=self.eval_n if self.eval_n is not None else (FAST_EVAL_N if fast else cfg.eval_questions),
            steps=cfg.steps,
            sft_batch=self.sft_batch if self.sft_batch is not None else (FAST_SFT_BATCH if fast else 8),
            agent_sets=list(self.agent_sets if self.agent_sets is not None else agent),
            baseline_sets=list(self.baseline_sets if self.baseline_sets is not None else base),
        )
        spec.check(cfg)
        return cfg, spec

    def check(self, cfg: Config) -> None:
        """A filled-in spec that would count a run twice or evaluate nothing is an error naming the field."""
        for name in ("seeds", "variants", "agent_sets", "baseline_sets"):
            values = getattr(self, name)
            twice = sorted({str(v) for v in values if values.count(v) > 1})
            if twice:
                raise ValueError(f"compare: {name} lists {', '.join(twice)} more than once")
        for name in ("eval_n", "sft_batch"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int):
                raise ValueError(f"compare: {name} must be an int, not {getattr(self, name)!r}")
            if getattr(self, name) < 1:
                raise ValueError(f"compare: {name} must be at least 1, not {getattr(self, name)}")
        for seed in self.seeds:
            cfg.replace(seed=seed)  # an error naming the seed field and value


@dataclass
class Tally:
    """What a comparison has gathered: {(method, dataset): per-seed lists of per-question EM}, the adapters'
    folders and hashes, seconds per run, the runs read back, those left out (`saved_only`), and the finished
    (variant, seed) pairs."""

    runs: dict = field(default_factory=dict)
    adapters: dict = field(default_factory=dict)  # label -> [{"path", "sha256"}]
    seconds: dict = field(default_factory=dict)
    reused: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    finished: list = field(default_factory=list)


class Session:
    """The state one `compare` call shares between its runs: the spec, the run folder, evaluation sets and
    warm-up adapters built on first use (a fully read-back call builds none), and the progress lines."""

    def __init__(self, cfg: Config, spec: CompareSpec, out: Path):
        self.cfg, self.spec, self.out = cfg, spec, out
        self.sets: dict = {}  # dataset -> eval set
        self.adapters: dict = {}  # seed -> warm-up adapter of this call
        self.task = None  # training questions and retriever, shared by every run

    def eval_set(self, ds: str):
        if ds not in self.sets:
            self.sets[ds] = load_eval_set(self.cfg, ds, self.spec.eval_n)
        return self.sets[ds]

    def say(self, msg: str) -> None:
        if self.spec.progress:
            tqdm.write(msg, file=sys.stderr)

    def warm_adapter(self, seed: int) -> Path:
        if self.task is None:
            self.task = build_task(self.cfg, load_tokenizer(self.cfg))
        if seed not in self.adapters:
            self.adapters[seed] = warm_start(
                self.cfg, seed, self.task, self.out, self.spec.sft_batch, fresh=self.spec.fresh
            )
        return self.adapters[seed]


def variant_result(session: Session, name: str, seed: int, tally: Tally) -> dict | None:
    """Variant `name` with `seed`: read back when saved with the same key, else trained and evaluated
    (`run_variant`); None when `saved_only` leaves it out."""
    spec = session.spec
    c = session.cfg.replace(seed=seed, **VARIANTS[name])
    run_dir = session.out / f"{run_slug(name)}_seed{seed}"
    key = run_key(c, spec.eval_n, spec.sft_batch)
    label = f"{name} seed {seed}"
    result = None if spec.fresh else read_back(run_dir / "result.json", key, run_shape)
    if result is not None:
        result = complete_sets(session, label, c, run_dir, result, tally)
    if result is not None:
        tally.reused.append(label)
        return result
    if spec.saved_only:
        tally.missing.append(label)
        session.say(f"{label}: not saved yet, left out")
        return None
    adapter = session.warm_adapter(seed)
    sets = {ds: session.eval_set(ds) for ds in spec.agent_sets}
    result = run_variant(c, run_dir, adapter, session.task, sets, key, fresh=spec.fresh)
    free()
    return result


def complete_sets(session: Session, label: str, c: Config, run_dir: Path, result: dict, tally: Tally):
    """A read-back `result` with the agent sets it lacks (saved before they were asked for, or while their
    sample was missing) evaluated from the run's final adapter (its checkpoint of step `c.steps`) and saved
    into result.json and `eval_<set>.jsonl`; with `saved_only`, listed as missing instead; a set whose sample
    is still missing, left out. None when the checkpoint is not the final step's: the caller runs the
    variant (`run_variant` resumes it)."""
    todo = [ds for ds in session.spec.agent_sets if ds not in result["eval"]]
    if not todo:
        return result
    if session.spec.saved_only:
        tally.missing += [f"{label} on {ds}" for ds in todo]
        return result
    todo = [ds for ds in todo if session.eval_set(ds) is not None]  # a missing sample stays missing
    if not todo:
        return result
    ckpt = find_checkpoint(run_dir)
    try:
        final = ckpt is not None and read_state(ckpt)["step"] == c.steps
    except CheckpointError:
        final = False
    if not final:
        return None
    records = evaluate_adapter(session, c, ckpt / "adapter", todo, run_dir, label)
    if records:
        result["eval"].update({ds: [r["em"] for r in recs] for ds, recs in records.items()})
        atomic_write_json(run_dir / "result.json", result)
    return result


def adapter_result(session: Session, label: str, folder: str, tally: Tally) -> dict:
    """{dataset: per-question EM} of the trained adapter `folder` (a row of `label`) on every agent set:
    read back when saved with the same `eval_key` (out/adapters/<hash>/eval_<set>.json), else evaluated
    (`evaluate_adapter`) and saved; a set whose sample is missing is left out, and with `saved_only` a set
    not saved is listed as missing."""
    spec = session.spec
    c = agent_config(session.cfg, Path(folder))
    sha = adapter_hash(folder)
    where = session.out / "adapters" / sha[:16]
    tally.adapters.setdefault(label, []).append({"path": shown_path(folder), "sha256": sha})
    name = f"{label} ({shown_path(folder)})"
    ems, todo = {}, []
    for ds in spec.agent_sets:
        key = eval_key(c, spec.eval_n, ds, sha)
        saved = (
            None if spec.fresh else read_back(where / f"eval_{ds}.json", key, lambda d: ems_list(d.get("em")))
        )
        if saved is None:
            todo.append(ds)
        else:
            ems[ds] = saved["em"]
            tally.reused.append(f"{name} on {ds}")
    if todo and spec.saved_only:
        tally.missing += [f"{name} on {ds}" for ds in todo]
    elif todo:
        t = time.time()
        where.mkdir(parents=True, exist_ok=True)
        for ds, recs in evaluate_adapter(session, c, folder, todo, where, label).items():
            ems[ds] = [r["em"] for r in recs]
            atomic_write_json(where / f"eval_{ds}.json", dict(eval_key(c, spec.eval_n, ds, sha), em=ems[ds]))
        tally.seconds[name] = round(time.time() - t, 1)
    return ems


def run_all_adapters(session: Session, tally: Tally) -> None:
    """Every adapter folder of the spec (`adapter_result`), into `tally` under its label (folders = seeds)."""
    for label, folders in session.spec.adapters.items():
        for folder in folders:
            ems = adapter_result(session, label, folder, tally)
            for ds in session.spec.agent_sets:  # the spec's order
                if ds in ems:
                    tally.runs.setdefault((label, ds), []).append(ems[ds])
            shown = ", ".join(f"{ds} EM {np.mean(e):.3f}" for ds, e in ems.items())
            session.say(f"{label} ({shown_path(folder)}): {shown or 'nothing evaluated'}")


def run_all_variants(session: Session, tally: Tally) -> None:
    """Every (variant, seed) of the spec, into `tally`, with a bar over the runs."""
    spec = session.spec
    bar = tqdm(total=len(spec.variants) * len(spec.seeds), desc="runs", unit="run", disable=not spec.progress)
    for name in spec.variants:
        for seed in spec.seeds:
            label = f"{name} seed {seed}"
            bar.set_postfix_str(label)
            result = variant_result(session, name, seed, tally)
            bar.update(1)
            if result is None:
                continue
            tally.seconds[label] = result.get("seconds")
            tally.finished.append((name, seed))
            for ds in spec.agent_sets:  # a saved result may hold sets not asked for now
                if ds in result["eval"]:
                    tally.runs.setdefault((name, ds), []).append(result["eval"][ds])
            ems = ", ".join(f"{ds} EM {np.mean(e):.3f}" for ds, e in result["eval"].items())
            session.say(
                f"{label}: {ems} ({result.get('seconds')} s{', read back' if label in tally.reused else ''})"
            )
    bar.close()


def run_all_baselines(session: Session, tally: Tally) -> None:
    """The baselines on every baseline set of the spec (read back when saved), into `tally`; the base model
    is loaded once, on first need."""
    spec, base = session.spec, None
    key = baseline_key(session.cfg, spec.eval_n)
    for ds in spec.baseline_sets:
        done = session.out / f"baselines_{ds}.json"
        result = None if spec.fresh else read_back(done, key, baseline_shape)
        if result is None and spec.saved_only:
            tally.missing.append(f"baselines {ds}")
            continue
        if result is None:
            es = session.eval_set(ds)
            if es is None:
                continue
            if base is None:
                set_seed(0)
                base = load_policy(session.cfg)
            t = time.time()
            questions, tools, cds = es
            result = dict(key, **run_baselines(*base, questions, tools, cds, spec.progress))
            result["seconds"] = round(time.time() - t, 1)
            atomic_write_json(done, result)
        else:
            tally.reused.append(f"baselines {ds}")
        tally.seconds[f"baselines {ds}"] = result.get("seconds")
        for m in BASELINE_METHODS:
            tally.runs[(m, ds)] = [result[m]]
        ems = ", ".join(f"{m} EM {np.mean(result[m]):.3f}" for m in BASELINE_METHODS)
        again = ", read back" if f"baselines {ds}" in tally.reused else ""
        session.say(f"{ds}: {ems} ({result.get('seconds')} s{again})")
    del base
    free()


def compare(cfg: Config, out_dir: str | Path, spec: CompareSpec | None = None, **options) -> dict:
    """Run (or read back) the comparison and write `out_dir/results.json`; return what it holds.

    cfg: the preset (with overrides) every variant starts from. `spec` (or its fields as keyword arguments:
    seeds, variants, adapters, eval_n, steps, agent_sets, baseline_sets, baselines, sft_batch, fast, fresh,
    saved_only, progress, note) says what to run: see `CompareSpec`.

    Returns {"rows": `table_rows` of this call's variants, adapters and baselines (of those saved, with
    `saved_only`), "per_question" (the adapters' and baselines' per-question EM, per seed: what
    `export_real` ships), "adapters" ({label: [{"path", "sha256"}]}), "date" (UTC),
    "missing" (what `saved_only` left out), "kind_rows" (`kind_rows` of its
    variants: multi-hop EM, EM by question kind, searches), "seconds_per_run",
    "reused" (what was read back), "config", "seeds", "steps", "eval_n", "variants", "agent_sets",
    "baseline_sets", "model", "paper", "note", "minutes"}.
    """
    t0 = time.time()
    cfg, spec = (spec or CompareSpec(**options)).resolve(cfg)
    out = check_writable_dir(out_dir, "comparison folder")  # before minutes of work
    session, tally = Session(cfg, spec, out), Tally()
    run_all_variants(session, tally)
    run_all_adapters(session, tally)
    if spec.baselines:
        run_all_baselines(session, tally)
    results = {
        "note": spec.note,
        "model": cfg.model,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seeds": spec.seeds,
        "steps": cfg.steps,
        "eval_n": spec.eval_n,
        "variants": spec.variants,
        "agent_sets": spec.agent_sets,
        "baseline_sets": spec.baseline_sets if spec.baselines else [],
        "config": cfg.to_dict(),
        "adapters": tally.adapters,
        "rows": table_rows(tally.runs),
        "per_question": [  # the adapters' and baselines' (the variants' are in their run folders)
            {"method": m, "dataset": ds, "em": per_seed}
            for (m, ds), per_seed in tally.runs.items()
            if m not in spec.variants
        ],
        "kind_rows": kind_rows(out, tally.finished, spec.agent_sets),
        "paper": PAPER,
        "seconds_per_run": tally.seconds,
        "reused": tally.reused,
        "missing": tally.missing,
        "minutes": round((time.time() - t0) / 60, 1),
    }
    atomic_write_json(out / "results.json", results)
    return results
