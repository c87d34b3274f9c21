"""Glue for the command line and the notebooks: the main job (`demo`), the shipped adapter and run records
(`export_adapter`, `export_run_record`, `shipped_runs`), a trained agent (`load_agent`) and one episode of
it (`ask`), and one method's evaluation on a dataset (`run_eval`). Each puts the pipeline stages together;
none holds a stage of its own.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .baselines import naive_rag, tool_call
from .common import (
    atomic_write_json,
    check_writable_dir,
    replace_dir,
)
from .config import METHODS, Config
from .data import QAExample
from .env import Task, ToolEnv, build_task
from .evaluate import (
    SUMMARY_KEYS,
    check_coverage,
    evaluate_agent,
    load_eval_questions,
    summarize,
)
from .experiment import run_experiment, train_ours
from .policy import load_policy
from .prompts import check_prompt_style
from .retrieval import build_retriever
from .rewards import score_trajectory
from .rollout import rollout
from .tools import make_tools
from .viz import plot_demo

POLICY_FIELDS = ("model", "load_in_4bit", "lora_r", "lora_alpha", "lora_target_modules", "prompt_style")
"""Fields taken from a training run's config.json found beside the adapter: they define the trained policy."""


# ----------------------------------------------------------------------------- the main job

DEMO_MARKER = "demo.json"
"""Written into a demo's run folder before it trains: a later demo may start that folder over."""


def check_demo_folder(out: Path) -> None:
    """Refuse a folder that holds another run's history: the demo starts over (as `--no-resume` would),
    which is allowed only in a folder a demo made (its `DEMO_MARKER`, or the report of an earlier demo)."""
    metrics = out / "metrics.jsonl"
    history = [n for n in ("checkpoint", "checkpoint.old") if (out / n).exists()]
    if metrics.is_file() and metrics.stat().st_size > 0:
        history.insert(0, "metrics.jsonl")
    if not history or (out / DEMO_MARKER).is_file():
        return
    try:
        earlier = json.loads((out / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        earlier = None
    if isinstance(earlier, dict) and "phase_minutes" in earlier and earlier.get("entry", "demo") == "demo":
        return  # a finished demo of an earlier version
    raise ValueError(
        f"demo: {out} holds another run's history ({', '.join(history)}) and the demo starts over, which "
        "would delete it; pass another --out (or resume that run with `train --out`)"
    )


def demo(cfg: Config, out_dir: str | Path = "runs/demo") -> dict:
    """The CPU main job: warm-up, GRPO on the generated world, evaluated on held-out questions before and
    after RL (`experiment.run_experiment`); returns the report's headline (`experiment.REPORT_KEYS`).

    `em_before` is measured on the policy RL starts from (after the optional warm-up), so the gain is RL's.
    `reward_first` / `reward_last` are the mean training reward over the first / last five steps. The run
    starts over in `out_dir`; a folder holding another run's history (a `train` run) is refused.
    """
    out = check_writable_dir(out_dir, "demo folder")
    check_demo_folder(out)
    atomic_write_json(out / DEMO_MARKER, {"entry": "demo", "config": cfg.to_dict()})
    run = run_experiment(cfg, out, train_ours, entry="demo", resume=False)
    plot_demo(run.history, run.full["before"], run.full["after"], out / "demo.png")
    return run.report


# ----------------------------------------------------------------------------- the shipped adapter

SHIPPED_ADAPTER = Path(__file__).resolve().parent / "adapters" / "cpu_demo"
"""The LoRA adapter `make demo` trained for the CPU default, shipped with the package (fp16 weights, the run's
config.json, report.json and metrics.jsonl beside them): `resolve_adapter("shipped")`; notebook 05 shows
the run from these files."""


def export_adapter(run_dir: str | Path, dest: str | Path = SHIPPED_ADAPTER) -> Path:
    """Copy a demo run's trained adapter to `dest` with fp16 weights (half the size; the policy computes in
    its own dtype after loading) beside the run's record (`RUN_RECORD_FILES`: config.json holds the policy
    fields `agent_config` reads)."""
    from safetensors.torch import load_file, save_file

    src = resolve_adapter(run_dir)
    weights = load_file(str(src / "adapter_model.safetensors"))

    def add_weights(tmp: Path) -> None:
        shutil.copy2(src / "adapter_config.json", tmp / "adapter_config.json")
        save_file(
            {k: v.half().contiguous() for k, v in weights.items()}, str(tmp / "adapter_model.safetensors")
        )

    return _export(run_dir, Path(dest), add_weights)


SHIPPED_RUNS = Path(__file__).resolve().parent / "results"
"""Records of the demo runs the README and notebooks 05/06 quote, one folder per run (config.json,
report.json, metrics.jsonl; no weights): `export_run_record` writes one, `shipped_runs` reads them all."""

RUN_RECORD_FILES = ("config.json", "report.json", "metrics.jsonl")


def export_run_record(run_dir: str | Path, name: str, root: str | Path = SHIPPED_RUNS) -> Path:
    """Copy a finished demo run's record (`RUN_RECORD_FILES`, a few KB) to `root/name`."""
    if not (Path(run_dir) / "report.json").is_file():
        raise FileNotFoundError(f"{run_dir} holds no report.json: not a finished demo run")
    return _export(run_dir, Path(root) / name)


def _export(run_dir: str | Path, dest: Path, add: Callable[[Path], None] | None = None) -> Path:
    """Write the run's record files (and whatever `add` puts beside them) to a temporary folder, then
    replace `dest` with it: a failed export leaves the old `dest` whole."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in RUN_RECORD_FILES:
        if (Path(run_dir) / f).is_file():
            shutil.copy2(Path(run_dir) / f, tmp / f)
    if add is not None:
        add(tmp)
    replace_dir(tmp, dest)
    return dest


def shipped_runs(root: str | Path = SHIPPED_RUNS) -> dict[str, dict]:
    """{name: {"report": report.json, "metrics": [metrics.jsonl rows]}} for every run record under `root`,
    by name; a folder whose report is missing or unreadable is skipped with a warning."""
    runs = {}
    for folder in sorted(Path(root).glob("*/")) if Path(root).is_dir() else []:
        try:
            report = json.loads((folder / "report.json").read_text())
            lines = (
                (folder / "metrics.jsonl").read_text().splitlines()
                if (folder / "metrics.jsonl").is_file()
                else []
            )
            runs[folder.name] = {"report": report, "metrics": [json.loads(x) for x in lines if x.strip()]}
        except (OSError, ValueError) as e:
            warnings.warn(f"skipping the run record {folder}: {e}", stacklevel=2)
    return runs


# ----------------------------------------------------------------------------- one method on one dataset
def resolve_adapter(adapter: str | Path) -> Path:
    """The LoRA folder: `adapter` itself, or `adapter/adapter`, or `adapter/checkpoint/adapter` (a run dir);
    "shipped" is the adapter shipped with the package (`SHIPPED_ADAPTER`)."""
    if str(adapter) == "shipped":
        if not (SHIPPED_ADAPTER / "adapter_config.json").is_file():
            raise FileNotFoundError(
                f"no shipped adapter in {SHIPPED_ADAPTER} (this copy of the package has none)"
            )
        return SHIPPED_ADAPTER
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
    OUT/checkpoint/adapter), looked up in the adapter folder and its two parents; None when absent. A
    config.json there that is not readable JSON is an error naming it (a damaged run record would
    otherwise evaluate the adapter under the wrong prompt); one that is not a `Config` (a model's
    config.json) is passed over."""
    return _training_config_file(adapter_dir)[1]


def _training_config_file(adapter_dir: Path) -> tuple[Path | None, dict | None]:
    for folder in (adapter_dir, adapter_dir.parent, adapter_dir.parent.parent):
        path = folder / "config.json"
        if not path.is_file():
            continue
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"the adapter's run config {path} is not readable JSON: {e}") from e
        if isinstance(cfg, dict) and "prompt_style" in cfg:  # a Config, not a model's config.json
            return path, cfg
    return None, None


def agent_config(cfg: Config, adapter_dir: Path) -> Config:
    """`cfg` with the policy fields (`POLICY_FIELDS`) of the run that trained the adapter, when known: the
    adapter only fits its base model, and the agent is evaluated with the prompt it was trained with. A bad
    value there is an error naming that config.json."""
    path, trained = _training_config_file(adapter_dir)
    if trained is None:
        return cfg
    changes = {k: trained[k] for k in POLICY_FIELDS if k in trained and trained[k] != getattr(cfg, k)}
    try:
        agent_cfg = cfg.replace(**changes)
    except (TypeError, ValueError) as e:
        raise ValueError(f"the adapter's run config {path} has a bad value: {e}") from e
    if changes:
        print(f"eval: using the training run's {changes} for the adapter {adapter_dir}", file=sys.stderr)
    return agent_cfg


ASK_DEFAULT = "81"
"""The question `ask` poses when given none: held-out question 81 of the generated world, a bridge question
("In which year was the founder of Bapa Mills born?") the shipped adapter answers after two searches."""


@dataclass
class Agent:
    """A policy ready to act: the config it runs under (the adapter's model and prompt), the model with its
    adapter, the tokenizer, the task (tools, env factory, questions) and the adapter's folder (None: untrained)."""

    cfg: Config
    model: Any
    tokenizer: Any
    task: Task
    adapter: Path | None


def load_agent(cfg: Config, adapter: str | Path | None = "shipped") -> Agent:
    """Load the policy with `adapter` ("shipped": the adapter `make demo` trained, which fits the CPU default
    model only; a run or adapter folder; None: the untrained model) under the model and prompt style the
    adapter was trained with, and build its task."""
    adapter_dir = resolve_adapter(adapter) if adapter else None
    if adapter_dir is not None:
        cfg = agent_config(cfg, adapter_dir)
    model, tok = load_policy(cfg, adapter=adapter_dir)
    return Agent(cfg, model, tok, build_task(cfg, tok), adapter_dir)


def ask(cfg: Config, question: str = ASK_DEFAULT, adapter: str | Path | None = "shipped") -> dict:
    """One greedy episode of the agent (`load_agent(cfg, adapter)`) on `question`: a held-out question's
    number (its gold answer is known and scored) or any text (asked of the same search tool; no gold).
    Returns the question, gold answers (or []), the answer, EM (None without gold), the searches and, per
    turn, the model's action and the tool's observation."""
    question = question.strip()
    if not question:
        raise ValueError("ask: the question is empty; pass a question's text or a held-out question number")
    agent = load_agent(cfg, adapter)
    if question.isdigit():
        if int(question) >= len(agent.task.eval):
            raise ValueError(
                f"ask: there are {len(agent.task.eval)} held-out questions (0..{len(agent.task.eval) - 1}), "
                f"not {question}"
            )
        example = agent.task.eval[int(question)]
    else:
        example = QAExample(id="ask", question=question, answers=[], dataset=agent.cfg.dataset)
    traj = rollout(agent.model, agent.tokenizer, [example], agent.task.make_env, agent.cfg, greedy=True)[0]
    score_trajectory(traj, agent.cfg)
    return {
        "question": example.question,
        "gold": example.answers,
        "answer": traj.answer,
        "em": traj.em if example.answers else None,
        "searches": traj.num_searches,
        "stop_reason": traj.stop_reason,
        "adapter": str(agent.adapter) if agent.adapter else None,
        "turns": [{"action": t["action_text"], "observation": t["observation"]} for t in traj.turns],
    }


def method_config(
    cfg: Config, method: str, adapter: str | Path | None, prompt_style: str | None
) -> tuple[Config, Path | None]:
    """(the config `method` is evaluated under, the adapter folder or None), checked before minutes of
    loading: a baseline's `prompt_style`, an agent's adapter and the policy fields of its training run."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if prompt_style is not None:
        check_prompt_style(prompt_style)
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
        return agent_config(cfg, adapter_dir), adapter_dir
    if adapter:
        warnings.warn(
            f"--adapter is ignored by --method {method} (it evaluates the base model)", stacklevel=3
        )
    return cfg, None


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
    t0 = time.time()
    cfg, adapter_dir = method_config(cfg, method, adapter, prompt_style)
    out = check_writable_dir(out_dir or "runs/eval", "--out folder")  # before the work, not after
    examples, passages = load_eval_questions(cfg, limit)
    coverage = check_coverage(examples, passages)
    retriever = build_retriever(cfg, passages)
    model, tok = load_policy(cfg, adapter=adapter_dir)

    if method == "naive_rag":
        records = naive_rag(model, tok, examples, retriever, cfg)
    elif method == "tool_call":
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
        "prompt_style": (prompt_style or "zero_shot") if method == "tool_call" else cfg.prompt_style,
        "adapter": None if adapter_dir is None else str(adapter_dir),
        "data_path": cfg.data_path,
        "corpus_path": cfg.corpus_path,
        "limit": limit,
        "seconds": round(time.time() - t0, 1),
        "records": str(out / f"{stem}.jsonl"),
        "config": cfg.to_dict(),
    }
    atomic_write_json(out / f"{stem}.summary.json", {**result, **extras})
    return result
