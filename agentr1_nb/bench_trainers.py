"""The parts of `bench.bench_trainers`: the same tiny configuration trained three ways, each in a fresh
process (`trainer_worker`): our trainer, TRL's GRPOTrainer with its own multi-turn tool loop
(`native_trainer`, what a TRL user would write), and TRL's GRPOTrainer with our rollout func
(`trl_backend.make_trainer`); `summarize_trainers` turns the workers' lines into the benchmark's result.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from .actions import answer_well_formed, parse_action
from .common import maxrss_bytes, rss_bytes, set_seed
from .config import Config
from .env import Task, build_task
from .policy import load_policy
from .rewards import outcome_reward
from .sft import sft_warmup
from .train import train
from .trl_backend import (
    build_dataset,
    grpo_config,
    make_trainer,
    quiet_experimental,
    quiet_progress,
    require_trl,
)

# ----------------------------------------------------------------------------- TRL's own tool loop


def tool_calling_tokenizer(tokenizer):
    """A copy of `tokenizer` whose chat template can drive TRL's tool loop.

    TRL's loop needs a template that renders `tools=`, assistant `tool_calls` and tool turns, and a response
    parser it knows. SmolLM2's ChatML template renders no tools, so it gets Qwen2.5's template (TRL ships it;
    same <|im_start|> / <|im_end|> tokens, Qwen's <tool_call> JSON format, the format our env parses).
    Tokenizers whose template already supports tool calling are copied unchanged.
    """
    from trl.chat_template_utils import qwen2_5_chat_template, supports_tool_calling

    tok = copy.deepcopy(tokenizer)
    if not supports_tool_calling(tok):
        tok.chat_template = qwen2_5_chat_template
    return tok


def native_trainer(
    cfg: Config, out_dir: str | Path, model, tokenizer, task: Task, callbacks: Sequence = (), **trl_args
):
    """What a TRL user would write instead of our rollout: `GRPOTrainer(tools=[search])`, TRL's own
    multi-turn tool loop with Hugging Face generation, on the same questions, retriever and limits (the
    baseline of `bench trainers`).

    Same model, questions, group size, temperature, batch shape and steps; turn limits mapped as closely as
    TRL allows: `max_tool_calling_iterations` = max_turns - 1, `max_new_tokens` per generation =
    max_tokens_per_turn, `max_completion_length` = max_total_tokens. TRL's loop stops a turn at eos only (not
    at </tool_call>), parses tool calls with its response parser, and renders tool results with the chat
    template (`tool_calling_tokenizer`). The reward is eq. 6 from the final assistant message; the
    tool-syntax half of the format score is taken as 1 (TRL's parser does not report malformed calls per
    rollout), and there are no process rewards.
    """
    require_trl()
    from trl import GRPOTrainer

    tok = tool_calling_tokenizer(tokenizer)
    search_tool = next(t for t in task.tools if t.name == "search")

    def search(query: str) -> str:
        """Search an encyclopedia for passages.

        Args:
            query: Search query.

        Returns:
            The top passages, one per line.
        """
        return search_tool.execute({"query": query}).content

    def native_reward(completions, answers, **_) -> list[float]:
        out = []
        for messages, gold in zip(completions, answers):
            text = next(
                (m.get("content") or "" for m in reversed(messages) if m.get("role") == "assistant"), ""
            )
            parsed = parse_action(text if isinstance(text, str) else "")
            ok = parsed.kind == "answer" and answer_well_formed(parsed.answer, parsed.answer_closed)
            out.append(outcome_reward(parsed.answer, gold, ok, True, cfg))
        return out

    args = grpo_config(
        cfg,
        out_dir,
        **{
            "max_tool_calling_iterations": cfg.max_turns - 1,
            "generation_kwargs": {"max_new_tokens": cfg.max_tokens_per_turn},
            **trl_args,
        },
    )
    with quiet_experimental():
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[native_reward],
            args=args,
            train_dataset=build_dataset(task, tokenizer=tok),
            processing_class=tok,
            tools=[search],
            callbacks=list(callbacks),
        )
    quiet_progress(trainer)
    return trainer


# ----------------------------------------------------------------------------- trainers side by side

TRAINER_VARIANTS = ("ours", "trl_native", "trl_rollout_func")
"""`bench_trainers`' three ways to train: `train.train`; TRL's GRPOTrainer with its own tool loop
(`native_trainer` here); TRL's GRPOTrainer with our rollout func (`trl_backend.make_trainer`)."""


def trainer_worker(variant: str, cfg_json: str, run_dir: str) -> None:
    """One trainer for `cfg.steps` steps in a fresh process; prints one JSON line (per-step seconds,
    generated tokens and rewards, the process's peak resident memory and its resident size before training)."""
    from transformers import TrainerCallback

    cfg = Config(**json.loads(cfg_json))
    set_seed(cfg.seed)
    model, tok = load_policy(cfg)
    task = build_task(cfg, tok)
    sft_warmup(model, tok, task, cfg)  # the same seed in every worker: the same warmed-up weights
    rss_before = rss_bytes()
    rows = cfg.questions_per_step * cfg.group_size
    result: dict = {"variant": variant}
    cpu_s: list[float] = []  # CPU seconds of each step (all threads): robust to other load on the machine
    if variant == "ours":
        last = [time.process_time()]

        def on_step(m: dict) -> None:
            now = time.process_time()
            cpu_s.append(now - last[0])
            last[0] = now

        hist = train(cfg, run_dir, resume=False, model=model, tokenizer=tok, task=task, callback=on_step)
        result["step_s"] = [m["step_s"] for m in hist]
        result["rollout_s"] = [m["rollout_s"] for m in hist]
        result["gen_tokens"] = [m["tokens_per_s"] * m["rollout_s"] for m in hist]
        result["reward"] = [m["reward"] for m in hist]
    else:

        class StepTimer(TrainerCallback):
            """Wall time of each optimiser step (rollout included: TRL generates inside the first
            micro-batch of a step) and TRL's logged completion lengths and rewards."""

            def __init__(self):
                self.step_s, self.logs, self.t0, self.c0 = [], [], 0.0, 0.0

            def on_step_begin(self, args, state, control, **kw):
                self.t0, self.c0 = time.perf_counter(), time.process_time()

            def on_step_end(self, args, state, control, **kw):
                self.step_s.append(time.perf_counter() - self.t0)
                cpu_s.append(time.process_time() - self.c0)

            def on_log(self, args, state, control, logs=None, **kw):
                if logs and "loss" in logs:
                    self.logs.append(dict(logs))

        timer = StepTimer()
        if variant == "trl_native":
            trainer = native_trainer(cfg, run_dir, model, tok, task, callbacks=[timer])
        else:
            history: list = []
            trainer = make_trainer(
                cfg, run_dir, model, tok, task, history=history, callbacks=[timer], write_metrics=False
            )
        trainer.train()
        result["step_s"] = timer.step_s
        # TRL's completion length counts the model's tokens only (tool_mask / env_mask 1)
        result["gen_tokens"] = [lg.get("completions/mean_length", float("nan")) * rows for lg in timer.logs]
        result["reward"] = [lg.get("reward", float("nan")) for lg in timer.logs]
        if variant == "trl_rollout_func":
            result["rollout_s"] = [m["rollout_s"] for m in history]
        result["tool_calling_template"] = variant == "trl_native" and (
            tool_calling_tokenizer(tok).chat_template != tok.chat_template
        )
    result["step_cpu_s"] = cpu_s
    result["peak_mb"] = maxrss_bytes() / 2**20
    result["rss_before_train_mb"] = rss_before / 2**20
    print(json.dumps(result), flush=True)


def run_worker(variant: str, cfg: Config, run_dir: Path) -> dict:
    """`trainer_worker(variant)` in a fresh Python process; its JSON line, or an error with its stderr."""
    code = "from agentr1_nb.bench_trainers import trainer_worker; import sys; trainer_worker(*sys.argv[1:])"
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20), "TRL_EXPERIMENTAL_SILENCE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code, variant, cfg.to_json(), str(run_dir)],
        capture_output=True,
        text=True,
        env=env,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('{"variant"')]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"bench trainers: the {variant} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def _steady(xs: list) -> float:
    """The mean after the first value (which pays one-off costs); the first alone when it is the only one."""
    xs = [float(x) for x in xs]
    return sum(xs[1:]) / len(xs[1:]) if len(xs) > 1 else (xs[0] if xs else float("nan"))


def summarize_trainers(results: dict, cfg: Config) -> dict:
    """`bench_trainers`' result from the workers' JSON lines ({variant: line}), in its documented keys."""
    out: dict = {f"{v}_step_s": round(_steady(results[v]["step_s"]), 3) for v in TRAINER_VARIANTS}
    out["speed_ratio"] = round(out["trl_native_step_s"] / out["ours_step_s"], 3)
    out["rollout_func_ratio"] = round(out["trl_rollout_func_step_s"] / out["ours_step_s"], 3)
    cpu = {v: _steady(results[v]["step_cpu_s"]) for v in TRAINER_VARIANTS}
    out["cpu_speed_ratio"] = round(cpu["trl_native"] / cpu["ours"], 3)
    out.update({f"{v}_peak_mb": round(results[v]["peak_mb"], 1) for v in TRAINER_VARIANTS})
    for v in TRAINER_VARIANTS:
        r = results[v]
        out[f"{v}_first_step_s"] = round(float(r["step_s"][0]), 3) if r["step_s"] else None
        out[f"{v}_step_cpu_s"] = round(_steady(r["step_cpu_s"]), 3)
        out[f"{v}_gen_tokens_per_step"] = round(_steady(r["gen_tokens"]), 1)
        out[f"{v}_rss_before_train_mb"] = round(r["rss_before_train_mb"], 1)
        if "rollout_s" in r:
            out[f"{v}_rollout_s"] = round(_steady(r["rollout_s"]), 3)
        out[f"{v}_reward"] = [round(float(x), 4) for x in r["reward"]]
    out["native_tool_calling_template"] = bool(results["trl_native"].get("tool_calling_template"))
    out.update(
        steps=cfg.steps,
        model=cfg.model,
        questions_per_step=cfg.questions_per_step,
        group_size=cfg.group_size,
        max_turns=cfg.max_turns,
        max_tokens_per_turn=cfg.max_tokens_per_turn,
        threads=torch.get_num_threads(),
        trl=importlib.metadata.version("trl"),
    )
    return out
