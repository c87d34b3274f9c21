"""The same env, rewards and token-exact multi-turn rollout under Hugging Face TRL's `GRPOTrainer`.

For users who outgrow one GPU or already run TRL: accelerate, DeepSpeed, FSDP and vLLM come from TRL, while
the episode (prompt, tool calls, observations, rewards) stays this package's. TRL is an optional extra
(`pip install "agentr1_nb[trl]"`) and is imported only inside the functions that need it.

The pieces TRL takes (TRL >= 1.16)::

    dataset      = build_dataset(task)                      # {"prompt": our chat messages, "example_id", "answers"}
    rollout_func = make_rollout_func(task, cfg, tokenizer)   # (prompts, trainer) -> prompt_ids, completion_ids,
                                                            #    logprobs, env_mask (+ fields for the rewards)
    rewards      = reward_funcs(cfg)                         # one scalar per rollout: eq. 6 + process rewards
    args         = grpo_config(cfg, out_dir)                 # our Config mapped onto trl.GRPOConfig
    train_trl(cfg, out_dir)                                  # all of it, with warm-up, evaluation, metrics.jsonl

How one TRL step maps onto ours:
- TRL hands each process its slice of the generation batch: every question repeated `num_generations`
  (= `group_size`) times in a row; a group may straddle two processes, since TRL gathers the rewards before
  it normalises them per group. The rollout func returns one episode per prompt it receives, in order.
- `completion_ids` is everything after the prompt exactly as our rollout produced it: sampled action tokens
  (`env_mask` 1, with the sampler's log-probs) and the env's observation tokens (`env_mask` 0, log-prob 0).
  TRL's loss, KL and entropy then cover the action tokens only, our loss mask. No text is re-encoded.
- TRL keeps one scalar reward per rollout, so the env's process rewards (and format penalties) are added to
  the outcome reward (eq. 6) here, where our trainer places each one on the last token of its turn. With the
  group baseline of GRPO both give every token of a trajectory the same advantage; the difference appears
  only with per-token estimators (REINFORCE++, PPO), which TRL's GRPOTrainer does not run.

Departures from our trainer (`train.py`) under `--backend trl`:
- GRPO only (`algo=grpo`); `loss_agg` maps to TRL's `loss_type` ("token_mean" -> "dapo", normalised by the
  action tokens of the whole generation batch; "seq_mean_token_mean" -> "grpo"; "seq_mean_token_sum" ->
  "dr_grpo", which also divides by `max_completion_length`); the KL is TRL's k3, our "low_var_kl"; the
  group std of the advantage gets TRL's +1e-4 (ours: 1e-6).
- TRL recomputes log pi_old itself when it needs it and otherwise takes the current log-probs (the first
  ratio is exactly 1); the sampler's log-probs we return feed TRL's vLLM importance-sampling correction.
  TRL's training forward gets no position ids, so a left-padded prompt is scored with shifted positions.
- No mid-run checkpoints or resume: the adapter is saved at the end (`OUT/adapter`).

vLLM (GPU only; unmeasured: no GPU with vLLM was available when this was written). When the trainer runs
vLLM (`use_vllm=True`, colocate or server mode), the rollout generates turn by turn through `VLLMEngine`,
token ids in and out (`engine_rollout`): each turn sends every running episode's full token history, keeps
the sampled ids and vLLM's log-probs of them, cuts the turn at our stop strings, and appends the env's
observation ids, so the token-exactness of the rollout holds there too. The id bookkeeping is tested on the
CPU with a fake engine; the vLLM calls themselves have not been run.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from .actions import STOP_STRINGS, answer_well_formed, parse_action
from .common import atomic_write_json, check_writable_dir, mean, peak_memory_mb, set_seed
from .config import Config
from .env import Task, build_prompt_messages, build_task
from .evaluate import evaluate_agent
from .policy import compute_dtype, load_policy
from .rewards import outcome_reward, score_trajectory, trajectory_scores
from .rollout import Row, StopChecker, Trajectory, eos_ids, episode_stats, rollout, start_rows, step_envs
from .sft import sft_warmup
from .train import TrainHistory

TRL_MIN_VERSION = (1, 16)
INSTALL_HINT = 'pip install "agentr1_nb[trl]"'
"""How to get TRL; named in the error when it is missing."""


class TrlMissingError(ImportError, RuntimeError):
    """TRL is missing or too old. An ImportError for library code; a RuntimeError too, so that the command
    line prints it as one `error: ...` line like its other errors."""


def require_trl():
    """Import and return `trl`, or raise `TrlMissingError` naming the extra that installs it."""
    try:
        import trl
    except ImportError as e:
        raise TrlMissingError(
            f"the TRL backend needs trl>={'.'.join(map(str, TRL_MIN_VERSION))}, an optional extra: "
            f"{INSTALL_HINT} (or pip install 'trl>=1.16')"
        ) from e
    version = tuple(int(p) for p in trl.__version__.split(".")[:2] if p.isdigit())
    if version < TRL_MIN_VERSION:
        raise TrlMissingError(
            f"the TRL backend needs trl>=1.16 (its rollout_func / env_mask contract); found {trl.__version__}: "
            f"{INSTALL_HINT}"
        )
    return trl


# ----------------------------------------------------------------------------- the dataset


def prompt_key(prompt: Sequence[dict]) -> tuple:
    """A hashable key of a chat prompt: its (role, content) pairs (what survives a `datasets` round trip)."""
    return tuple((str(m["role"]), str(m["content"])) for m in prompt)


def build_dataset(task: Task, examples: Sequence | None = None, tokenizer: Any = None):
    """A `datasets.Dataset` of our questions for TRL: "prompt" (the chat messages our env starts an episode
    with: system instructions with the tool block, optional worked example, the question), "example_id" and
    "answers" (for reward functions of TRL's own tool loop). `examples` defaults to `task.train`;
    `tokenizer` (default: the env's) decides whether the tool block is left to the chat template."""
    from datasets import Dataset

    env = task.make_env()
    tok = env.tokenizer if tokenizer is None else tokenizer
    rows = [
        {
            "prompt": build_prompt_messages(ex, env.tool_list, env.cfg, tok),
            "example_id": ex.id,
            "answers": list(ex.answers),
        }
        for ex in (task.train if examples is None else examples)
    ]
    return Dataset.from_list(rows)


def example_index(task: Task) -> dict[tuple, Any]:
    """prompt_key -> example over the train and eval questions (TRL hands the rollout func prompts only).
    Two questions with the same text have the same prompt; the first one is kept."""
    env = task.make_env()
    index: dict[tuple, Any] = {}
    for ex in list(task.train) + list(task.eval):
        index.setdefault(prompt_key(build_prompt_messages(ex, env.tool_list, env.cfg, env.tokenizer)), ex)
    return index


# ----------------------------------------------------------------------------- trajectories -> TRL


def trl_fields(trajs: Sequence[Trajectory], pad_id: int) -> dict[str, list]:
    """The rollout func's output for trajectories (one row each, in order).

    prompt_ids / completion_ids / logprobs / env_mask as TRL 1.16 reads them (completion = every token after
    the prompt; env_mask 1 = sampled by the policy, 0 = written by the env; log-prob 0 on env tokens), plus
    the fields the reward functions read (answer, answer_ok, tool_ok, answers, process_rewards) and a few for
    inspection. An episode with no room to generate (prompt at `max_total_tokens`) gets one pad token with
    env_mask 0: TRL needs a non-empty completion, and this one stays out of the loss.
    """
    out: dict[str, list] = {
        k: []
        for k in (
            "prompt_ids",
            "completion_ids",
            "logprobs",
            "env_mask",
            "answer",
            "answer_ok",
            "tool_ok",
            "answers",
            "process_rewards",
            "example_id",
            "num_turns",
            "num_searches",
            "stop_reason",
        )
    }
    for t in trajs:
        p = t.prompt_len
        comp, mask, lps = list(t.token_ids[p:]), list(t.action_mask[p:]), list(t.logprobs[p:])
        if not comp:
            comp, mask, lps = [pad_id], [0], [0.0]
        out["prompt_ids"].append(list(t.token_ids[:p]))
        out["completion_ids"].append(comp)
        out["logprobs"].append(lps)
        out["env_mask"].append(mask)
        out["answer"].append(t.answer)
        out["answer_ok"].append(bool(t.answer_ok))
        out["tool_ok"].append(bool(t.tool_ok))
        out["answers"].append(list(t.example.answers))
        out["process_rewards"].append([float(r) for r in t.process_rewards])
        out["example_id"].append(t.example.id)
        out["num_turns"].append(len(t.turns))
        out["num_searches"].append(int(t.num_searches))
        out["stop_reason"].append(t.stop_reason)
    return out


def reward_funcs(cfg: Config) -> list[Callable]:
    """TRL reward functions: one, `agent_reward`, giving each rollout the outcome reward of `cfg.reward_type`
    (eq. 6 by default: EM when the format score is 1, else format - 1) plus the env's step rewards (process
    rewards already weighted by `process_reward_weight`, and format penalties).

    TRL has one scalar per rollout, so the step rewards are folded into it here; our trainer puts each on the
    last token of its turn (`rewards.token_rewards`). The scalar equals `rewards.trajectory_scores`, the
    score our trainer's GRPO advantages read, so under GRPO both give the same advantages.
    """

    def agent_reward(prompts=None, completions=None, completion_ids=None, **kw) -> list[float]:
        missing = {"answer", "answer_ok", "tool_ok", "answers", "process_rewards"} - set(kw)
        if missing:
            raise ValueError(
                f"agent_reward needs the fields of trl_backend.make_rollout_func's output; missing {sorted(missing)}"
            )
        return [
            outcome_reward(a, gold, bool(aok), bool(tok), cfg) + float(sum(pr))
            for a, aok, tok, gold, pr in zip(
                kw["answer"], kw["answer_ok"], kw["tool_ok"], kw["answers"], kw["process_rewards"]
            )
        ]

    return [agent_reward]


# ----------------------------------------------------------------------------- the rollout func


@dataclass
class RolloutLog:
    """The training metrics of the latest rollout of the rollout func, over all processes (the rows of
    `metrics.jsonl` take them): reward, em, f1, format_rate, turns, searches, ..., rollout_s, tokens_per_s."""

    last: dict = field(default_factory=dict)
    calls: int = 0

    def record(self, trajs: Sequence[Trajectory], cfg: Config, rollout_s: float, accelerator=None) -> None:
        scores = trajectory_scores(trajs, cfg).tolist() if trajs else []
        values = {"reward": scores, **episode_stats(trajs)}
        keys = list(values)
        local = [float(sum(values[k])) for k in keys] + [
            float(len(trajs)),
            float(sum(t.num_generated for t in trajs)),
            float(rollout_s),
        ]
        rows = [local]
        if accelerator is not None and getattr(accelerator, "num_processes", 1) > 1:
            t = torch.tensor(local, dtype=torch.float64, device=accelerator.device)
            rows = accelerator.gather(t[None]).view(-1, len(local)).tolist()  # (world, k)
        n = sum(r[len(keys)] for r in rows)
        gen = sum(r[len(keys) + 1] for r in rows)
        wall = max(r[len(keys) + 2] for r in rows)
        self.last = {k: (sum(r[i] for r in rows) / n if n else float("nan")) for i, k in enumerate(keys)}
        self.last.update(rollout_s=wall, tokens_per_s=gen / max(wall, 1e-9), generated_tokens=int(gen))
        self.calls += 1


@contextlib.contextmanager
def _generation_model(trainer):
    """The trainer's policy, unwrapped from DDP / DeepSpeed / FSDP for generation (TRL's own helper).
    Any object with a `.model` and no `.accelerator` (a test's stand-in) yields its model."""
    acc = getattr(trainer, "accelerator", None)
    if acc is None:
        yield trainer.model
        return
    from trl.models import unwrap_model_for_generation

    dist = getattr(trainer, "_dist", None)
    full = dist.summon_full_params(trainer.model_wrapped, recurse=False) if dist else contextlib.nullcontext()
    with (
        unwrap_model_for_generation(
            trainer.model_wrapped,
            acc,
            gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
            gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs,
        ) as model,
        full,
    ):
        yield model


def make_rollout_func(
    task: Task, cfg: Config, tokenizer, log: RolloutLog | None = None, engine: Engine | None = None
) -> Callable[[list, Any], dict]:
    """TRL's `rollout_func(prompts, trainer) -> dict`, running this package's multi-turn rollout.

    `prompts` are this process's rows of the generation batch (each question `num_generations` times in a
    row, as TRL's sampler repeats them; the dataset's "prompt" column, see `build_dataset`). Every prompt
    gets one episode: `rollout.rollout` with the trainer's unwrapped model and the KV-cached batch over all
    rows, or, when the trainer runs vLLM (or `engine` is given), `engine_rollout` turn by turn with token ids
    in and out. The output is `trl_fields` of the trajectories. With `log`, training rollouts record their
    metrics there (a collective over processes, which every process reaches since each calls the func).
    """
    index = example_index(task)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def rollout_func(prompts: list, trainer) -> dict:
        try:
            examples = [index[prompt_key(p)] for p in prompts]
        except (KeyError, TypeError) as e:
            raise ValueError(
                "rollout_func got a prompt that is not one of the task's questions; build the dataset with "
                "trl_backend.build_dataset(task) (chat-message prompts)"
            ) from e
        t0 = time.perf_counter()
        eng = engine
        if eng is None and getattr(trainer, "use_vllm", False):
            eng = VLLMEngine(trainer, cfg)
        if eng is not None:
            trajs = engine_rollout(eng, tokenizer, examples, task.make_env, cfg)
        else:
            with _generation_model(trainer) as model:
                trajs = rollout(model, tokenizer, examples, task.make_env, cfg, group_size=1)
        rollout_s = time.perf_counter() - t0
        for t in trajs:
            score_trajectory(t, cfg)
        model = getattr(trainer, "model", None)
        if log is not None and (model is None or model.training):
            log.record(trajs, cfg, rollout_s, getattr(trainer, "accelerator", None))
        return trl_fields(trajs, pad_id)

    return rollout_func


# ----------------------------------------------------------------------------- turn-by-turn engines (vLLM)


class Engine(Protocol):
    """A generation engine that takes and returns token ids.

    `generate(prompt_ids, max_tokens, stop)` samples one continuation per history (`prompt_ids[i]`, the
    episode's whole token history) of at most `max_tokens[i]` tokens, and may stop early at eos or at one of
    the `stop` strings; it returns the sampled ids and the log-prob of each under the sampling distribution.
    Engines that gather across processes (vLLM server mode) need every process to call `generate` the same
    number of times, so `engine_rollout` calls it once per turn up to `max_turns`, even with no histories.
    """

    def generate(
        self, prompt_ids: list[list[int]], max_tokens: list[int], stop: Sequence[str]
    ) -> tuple[list[list[int]], list[list[float]]]: ...


class _Rows:
    """The two members of `kvcache.KVBatch` that `rollout.step_envs` uses, without a cache."""

    def __init__(self, rows: list[Row]):
        self.rows = rows

    def select(self, idx: list[int]) -> _Rows:
        return _Rows([self.rows[i] for i in idx])


def engine_rollout(
    engine: Engine, tokenizer, examples: list, make_env: Callable[[], Any], cfg: Config, group_size: int = 1
) -> list[Trajectory]:
    """Multi-turn rollout through a token-id engine (vLLM): the same episodes, rules and `Trajectory` as
    `rollout.rollout`, one engine call per turn.

    Per turn, every running episode sends its whole token history; of what comes back, the prefix up to our
    stop (a stop string in this turn's tokens, eos, the per-turn or total token limit) is appended as
    sampled (action mask 1, the engine's log-probs); tokens after it are dropped, which keeps the kept ones
    exactly sampled since each was drawn given only the tokens before it. Then the env steps on the turn's
    ids (`rollout.step_envs`, shared with `rollout.rollout`) and its observation ids are appended (mask 0).
    Nothing is decoded and re-encoded.
    """
    rows = start_rows(examples, make_env, cfg, group_size)
    stop = StopChecker(tokenizer, eos_ids(tokenizer))
    for turn in range(cfg.max_turns):  # every turn calls the engine, even with no histories (see `Engine`)
        live = [r for r in rows if not r.traj.stop_reason]
        budgets = [min(cfg.max_tokens_per_turn, cfg.max_total_tokens - len(r.traj.token_ids)) for r in live]
        new_ids, new_lps = engine.generate([list(r.traj.token_ids) for r in live], budgets, STOP_STRINGS)
        if len(new_ids) != len(live) or len(new_lps) != len(live):
            raise RuntimeError(f"the engine returned {len(new_ids)} continuations for {len(live)} histories")
        going = []
        for r, ids, lps, budget in zip(live, new_ids, new_lps, budgets):
            r.turn_start, r.turn_stop = len(r.traj.token_ids), None
            ids, lps = [int(i) for i in ids][:budget], [float(x) for x in lps][:budget]
            if len(lps) < len(ids):
                raise RuntimeError("the engine returned fewer log-probs than tokens")
            kept = 0
            for k in range(1, len(ids) + 1):  # the same stop order as rollout._sample_turn
                kept = k
                r.turn_stop = stop(ids[:k])
                if r.turn_stop is None and k >= cfg.max_tokens_per_turn:
                    r.turn_stop = "max_tokens_per_turn"
                if r.turn_stop is None and r.turn_start + k >= cfg.max_total_tokens:
                    r.turn_stop = "max_total_tokens"
                if r.turn_stop is not None:
                    break
            if kept == 0:  # nothing sampled (an engine that returned no token): the episode cannot go on
                r.finish("empty")
                continue
            r.append(ids[:kept], sampled=True, logprobs=lps[:kept])
            r.n_fed = len(r.traj.token_ids)
            if r.turn_stop is None:
                r.turn_stop = "engine_stop"  # the engine ended the turn on a rule of its own
            going.append(r)
        step_envs(_Rows(going), tokenizer, cfg, last_turn=turn == cfg.max_turns - 1)
    return [r.traj for r in rows]


def _vllm_logprob(entry, token: int) -> float:
    """The log-prob of `token` in one position of vLLM's output (a {token_id: Logprob} dict, or a float)."""
    if isinstance(entry, dict):
        lp = entry.get(token)
        return float(getattr(lp, "logprob", lp)) if lp is not None else float("nan")
    return float(entry)


class VLLMEngine:
    """`Engine` on the trainer's vLLM (TRL's `trainer.vllm_generation`), colocate or server mode.

    Unmeasured: written against vLLM's and TRL 1.16's documented calls, never run (no GPU with vLLM was
    available). Colocate: `LLM.generate` with one `SamplingParams` per history (its own token budget, our
    stop strings kept in the output, `logprobs=0` = the sampled token's log-prob; TRL starts vLLM with
    `logprobs_mode="processed_logprobs"`, i.e. after the temperature). Server mode: every process's
    histories are gathered to the main process, sent to `trl vllm-serve` in one request, and the results
    scattered back (a collective, so `collective` is True). Tensor parallelism and sleep mode in colocate mode
    are not supported here.
    """

    def __init__(self, trainer, cfg: Config, greedy: bool = False):
        self.trainer, self.cfg = trainer, cfg
        self.vg = trainer.vllm_generation
        self.mode = getattr(trainer, "vllm_mode", "colocate")
        self.temperature = 0.0 if greedy else float(cfg.temperature)
        self.collective = self.mode == "server"
        if self.mode == "colocate" and (
            getattr(self.vg, "tensor_parallel_size", 1) > 1 or getattr(self.vg, "enable_sleep_mode", False)
        ):
            raise NotImplementedError(
                "the turn-by-turn vLLM engine supports colocate mode without tensor parallelism or sleep mode"
            )

    def generate(self, prompt_ids, max_tokens, stop):
        return (
            self._server(prompt_ids, max_tokens, stop)
            if self.collective
            else self._colocate(prompt_ids, max_tokens, stop)
        )

    def _colocate(self, prompt_ids, max_tokens, stop):
        if not prompt_ids:
            return [], []
        from vllm import SamplingParams

        params = [
            SamplingParams(
                n=1,
                temperature=self.temperature,
                top_p=self.cfg.top_p,
                max_tokens=int(m),
                logprobs=0,
                stop=list(stop),
                include_stop_str_in_output=True,
            )
            for m in max_tokens
        ]
        prompts = [{"prompt_token_ids": list(p)} for p in prompt_ids]
        outs = self.vg.llm.generate(prompts, sampling_params=params, use_tqdm=False)
        ids = [list(o.outputs[0].token_ids) for o in outs]
        lps = [
            [_vllm_logprob(e, t) for e, t in zip(o.outputs[0].logprobs or [], toks)]
            for o, toks in zip(outs, ids)
        ]
        return ids, lps

    def _server(self, prompt_ids, max_tokens, stop):
        from accelerate.utils import broadcast_object_list, gather_object

        acc = self.trainer.accelerator
        counts = gather_object([len(prompt_ids)])
        all_prompts = gather_object([list(p) for p in prompt_ids])
        all_max = gather_object([int(m) for m in max_tokens])
        payload = None
        if acc.is_main_process and all_prompts:
            out = self.vg.vllm_client.generate(
                prompts=all_prompts,
                n=1,
                temperature=self.temperature,
                top_p=self.cfg.top_p,
                max_tokens=max(all_max),
                logprobs=0,
                generation_kwargs={"stop": list(stop), "include_stop_str_in_output": True},
            )
            lps = [[lp[0] if isinstance(lp, list) else lp for lp in seq] for seq in out["logprobs"]]
            payload = (out["completion_ids"], lps)
        box = [payload]
        broadcast_object_list(box, from_process=0)
        if box[0] is None:
            return [], []
        all_ids, all_lps = box[0]
        start = sum(counts[: acc.process_index])
        end = start + len(prompt_ids)
        ids = [list(x)[:m] for x, m in zip(all_ids[start:end], all_max[start:end])]
        return ids, [list(x)[: len(i)] for x, i in zip(all_lps[start:end], ids)]


# ----------------------------------------------------------------------------- configuration

LOSS_TYPES = {"token_mean": "dapo", "seq_mean_token_mean": "grpo", "seq_mean_token_sum": "dr_grpo"}
"""Our `loss_agg` -> TRL's `loss_type` (see the module docstring for how they differ)."""


def world_size() -> int:
    """Processes of this run as the launcher (torchrun, accelerate launch) announces them."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def trl_batch_sizes(cfg: Config, world: int = 1) -> dict[str, int]:
    """Our batch shape in TRL's terms.

    One of our steps rolls out B = questions_per_step x group_size episodes and takes B / minibatch_size
    optimiser steps per epoch (`ppo_epochs` epochs), `micro_batch_size` episodes per forward. In TRL: the
    generation batch is B, `per_device_train_batch_size` = micro_batch_size, `gradient_accumulation_steps`
    = minibatch_size / (micro_batch_size x processes), `num_iterations` = ppo_epochs, and TRL's optimiser
    steps (`max_steps`) = steps x `updates_per_step`.
    """
    B = cfg.questions_per_step * cfg.group_size
    per_forward = cfg.micro_batch_size * world
    problems = []
    if B % cfg.minibatch_size:
        problems.append(f"questions_per_step x group_size ({B}) must be a multiple of minibatch_size")
    if cfg.minibatch_size % per_forward:
        problems.append(
            f"minibatch_size ({cfg.minibatch_size}) must be a multiple of micro_batch_size x processes "
            f"({cfg.micro_batch_size} x {world})"
        )
    if problems:
        raise ValueError("the TRL backend cannot map this batch shape: " + "; ".join(problems))
    updates = (B // cfg.minibatch_size) * cfg.ppo_epochs
    return {
        "generation_batch_size": B,
        "per_device_train_batch_size": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.minibatch_size // per_forward,
        "num_iterations": cfg.ppo_epochs,
        "updates_per_step": updates,
        "max_steps": cfg.steps * updates,
    }


def parse_trl_args(items: Sequence[str] | None) -> dict[str, Any]:
    """`["use_vllm=true", "vllm_mode=server"]` -> GRPOConfig overrides (values read as JSON, else strings)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--trl {item!r} is not key=value")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def check_supported(cfg: Config) -> None:
    """The TRL backend runs GRPO on outcome-level scores; say so before anything loads."""
    if cfg.algo != "grpo":
        raise ValueError(
            f"algo={cfg.algo!r}: the TRL backend runs GRPOTrainer (algo=grpo); use --backend ours for {cfg.algo}"
        )
    if cfg.group_size < 2:
        raise ValueError("TRL's GRPO needs group_size >= 2")
    if cfg.kl_coef > 0 and cfg.kl_estimator != "low_var_kl":
        raise ValueError(f"kl_estimator={cfg.kl_estimator!r}: TRL's KL term is k3 (low_var_kl) only")
    if not cfg.advantage_mask or not cfg.loss_mask:
        raise ValueError("the mask ablations (advantage_mask / loss_mask = false) exist in our trainer only")


def grpo_config(cfg: Config, out_dir: str | Path, world: int | None = None, **overrides):
    """`trl.GRPOConfig` for `cfg`: learning rate and warm-up (constant after it, as ours), group_size ->
    num_generations, steps -> max_steps (see `trl_batch_sizes`), temperature / top_p (no top-k), clip_eps ->
    epsilon, kl_coef -> beta, loss_agg -> loss_type, norm_adv_by_std -> scale_rewards, entropy_coef, batch
    sizes, seed; on the CPU `use_cpu` without bf16 / fp16, on a GPU the policy's compute dtype; no reports, a
    log line every step, no checkpoints. TRL's output goes to `out_dir/trl`. `overrides` are GRPOConfig
    fields (e.g. `use_vllm=True, vllm_mode="server"`) and win over the mapping.
    """
    require_trl()
    from trl import GRPOConfig

    check_supported(cfg)
    sizes = trl_batch_sizes(cfg, world or world_size())
    updates = sizes.pop("updates_per_step")
    on_gpu = torch.cuda.is_available()
    dtype = compute_dtype(cfg)
    kw: dict[str, Any] = dict(
        output_dir=str(Path(out_dir) / "trl"),
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=cfg.warmup_steps * updates,
        max_grad_norm=cfg.max_grad_norm,
        num_generations=cfg.group_size,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=0,
        epsilon=cfg.clip_eps,
        beta=cfg.kl_coef,
        loss_type=LOSS_TYPES[cfg.loss_agg],
        scale_rewards="group" if cfg.norm_adv_by_std else "none",
        entropy_coef=cfg.entropy_coef,
        max_completion_length=cfg.max_total_tokens,
        mask_truncated_completions=False,  # an episode ending at </answer> has no eos: it is not truncated
        multi_objective_aggregation="sum_then_normalize",
        gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        seed=cfg.seed,
        use_cpu=not on_gpu,
        bf16=on_gpu and dtype == torch.bfloat16,
        fp16=on_gpu and dtype == torch.float16,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        log_completions=False,
        **sizes,
    )
    import dataclasses

    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(GRPOConfig)})
    if unknown:
        raise ValueError(f"unknown trl.GRPOConfig field(s) {unknown}")
    kw.update(overrides)
    with (
        warnings.catch_warnings()
    ):  # transformers 5.24 renames it activation_checkpointing; older ones lack that
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)
        return GRPOConfig(**kw)


# ----------------------------------------------------------------------------- trainers


class TrlHistory(TrainHistory):
    """The metrics rows of a TRL run (a list, like `train()`'s), with `report` (the run's report.json)."""

    report: dict | None = None


# TRL's log keys -> ours (TRL's "reward" is its own mean of the reward funcs: `trl_reward`, equal to ours)
_TRL_KEYS = {
    "loss": "loss",
    "grad_norm": "grad_norm",
    "learning_rate": "lr",
    "kl": "kl",
    "entropy": "entropy",
    "clip_ratio/region_mean": "clip_frac",
    "reward": "trl_reward",
    "frac_reward_zero_std": "frac_reward_zero_std",
    "completions/mean_length": "action_tokens_mean",
}


def metrics_callback(log: RolloutLog, out: Path | None, updates_per_step: int, history: list, callback=None):
    """A TrainerCallback writing one `metrics.jsonl` row per step of ours (= `updates_per_step` optimiser
    steps of TRL): the rollout's metrics (`log`), TRL's loss / grad_norm / kl / entropy / clip fraction
    averaged over those optimiser steps, step_s (wall time since the previous row), peak_mem_mb, world_size.
    Only the main process writes; `callback(row)` runs on every process."""
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        def __init__(self):
            self.t_last = time.perf_counter()
            self.pending: dict[str, list[float]] = {}

        def on_train_begin(self, args, state, control, **kw):
            self.t_last = time.perf_counter()
            self.bar = tqdm(
                total=state.max_steps // updates_per_step,
                desc="train (trl)",
                dynamic_ncols=True,
                disable=not state.is_world_process_zero,
            )

        def on_train_end(self, args, state, control, **kw):
            if getattr(self, "bar", None) is not None:
                self.bar.close()

        def on_log(self, args, state, control, logs=None, **kw):
            if not logs or "loss" not in logs:  # the end-of-training summary has no loss
                return
            for k, v in logs.items():
                if k in _TRL_KEYS and isinstance(v, (int, float)) and math.isfinite(v):
                    self.pending.setdefault(_TRL_KEYS[k], []).append(float(v))
            if state.global_step % updates_per_step:
                return
            now = time.perf_counter()
            row = {"step": state.global_step // updates_per_step, **log.last}
            row.update({k: mean(v) for k, v in self.pending.items()})
            row.update(
                step_s=now - self.t_last,
                peak_mem_mb=peak_memory_mb(),
                world_size=int(args.world_size),
                trl_global_step=int(state.global_step),
                backend="trl",
            )
            self.pending, self.t_last = {}, now
            history.append(row)
            if getattr(self, "bar", None) is not None:
                self.bar.update(1)
                self.bar.set_postfix(
                    reward=f"{row.get('reward', float('nan')):.3f}", em=f"{row.get('em', 0):.2f}"
                )
            if out is not None and state.is_world_process_zero:
                with open(out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
            if callback is not None:
                callback(row)

    return MetricsCallback()


def make_trainer(
    cfg: Config,
    out_dir: str | Path,
    model,
    tokenizer,
    task: Task,
    history: list | None = None,
    callbacks: Sequence = (),
    callback: Callable[[dict], None] | None = None,
    write_metrics: bool = True,
    **trl_args,
):
    """`GRPOTrainer` on our policy (a PEFT model from `policy.load_policy`), dataset, rollout func and reward.
    Rows of metrics go to `history` (and `out_dir/metrics.jsonl` with `write_metrics`). `trl_args` override
    GRPOConfig fields. Returns the trainer."""
    require_trl()
    from trl import GRPOTrainer

    out = Path(out_dir)
    args = grpo_config(cfg, out, **trl_args)
    sizes = trl_batch_sizes(cfg, int(args.world_size))
    log = RolloutLog()
    history = [] if history is None else history
    cb = metrics_callback(log, out if write_metrics else None, sizes["updates_per_step"], history, callback)
    with _quiet_experimental():
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=reward_funcs(cfg),
            args=args,
            train_dataset=build_dataset(task),
            processing_class=tokenizer,
            rollout_func=make_rollout_func(task, cfg, tokenizer, log),
            callbacks=[cb, *callbacks],
        )
    trainer.rollout_log = log
    _quiet_progress(trainer)
    return trainer


def _quiet_progress(trainer) -> None:
    """Drop the Trainer's progress bar and its printing of every log dict (to stdout, which `--json` keeps
    for one line); our metrics callback shows a bar of our steps instead."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


@contextlib.contextmanager
def _quiet_experimental():
    """TRL warns that rollout_func / environment_factory are experimental on every construction: once is
    said in our docs."""
    old = os.environ.get("TRL_EXPERIMENTAL_SILENCE")
    os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TRL_EXPERIMENTAL_SILENCE", None)
        else:
            os.environ["TRL_EXPERIMENTAL_SILENCE"] = old


def tool_calling_tokenizer(tokenizer):
    """A copy of `tokenizer` whose chat template can drive TRL's tool loop.

    TRL's loop needs a template that renders `tools=`, assistant `tool_calls` and tool turns, and a response
    parser it knows. SmolLM2's ChatML template renders no tools, so it gets Qwen2.5's template (TRL ships it;
    same <|im_start|> / <|im_end|> tokens, Qwen's <tool_call> JSON format, the format our env parses).
    Tokenizers whose template already supports tool calling are copied unchanged.
    """
    import copy

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
    with _quiet_experimental():
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[native_reward],
            args=args,
            train_dataset=build_dataset(task, tokenizer=tok),
            processing_class=tok,
            tools=[search],
            callbacks=list(callbacks),
        )
    _quiet_progress(trainer)
    return trainer


# ----------------------------------------------------------------------------- the run


def _prepare_out(out: Path, cfg: Config, resume: bool, write: bool) -> None:
    metrics = out / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0 and resume:
        raise RuntimeError(
            f"run folder {out} has history (metrics.jsonl) and the TRL backend does not resume; pass "
            "--no-resume (resume=False) to start over and delete it, or use another --out"
        )
    if write:
        metrics.unlink(missing_ok=True)
        atomic_write_json(out / "config.json", cfg.to_dict())


def train_trl(
    cfg: Config,
    out_dir: str | Path,
    model=None,
    tokenizer=None,
    task: Task | None = None,
    resume: bool = False,
    warmup: bool = True,
    evaluate: bool = True,
    callback: Callable[[dict], None] | None = None,
    **trl_args,
) -> TrlHistory:
    """Train the LoRA policy with TRL's GRPOTrainer and our rollout; the TRL counterpart of `runs.demo`.

    Loads the policy with `policy.load_policy` (QLoRA when `load_in_4bit`) unless given, runs the supervised
    warm-up (`cfg.sft_warmup_steps`, as the demo does; `warmup=False` skips it), evaluates on
    `cfg.eval_questions` held-out questions before and after (`evaluate.evaluate_agent`, main process only;
    `evaluate=False` skips it), trains `cfg.steps` steps, and writes into `out_dir`: config.json,
    metrics.jsonl (one row per step, our trainer's keys where they exist), eval_before/after.jsonl,
    report.json and the LoRA adapter (`adapter/`, which `eval --method agent --adapter OUT` reads).
    Runs under `accelerate launch` / `torchrun` as our trainer does (each process rolls out its share).
    `trl_args` override GRPOConfig fields (e.g. use_vllm=True). Returns the metrics rows (`.report` holds the
    report, `.interrupted` whether Ctrl-C ended the run; the adapter is saved then too).
    """
    t0 = time.time()
    require_trl()
    check_supported(cfg)
    from accelerate import PartialState

    out = check_writable_dir(out_dir, "run folder")
    trl_batch_sizes(cfg, world_size())  # a bad batch shape fails before anything loads
    state = PartialState(cpu=not torch.cuda.is_available())
    main = state.is_main_process
    _prepare_out(out, cfg, resume, write=main)
    if state.device.type == "cuda":
        torch.cuda.set_device(state.device)
    set_seed(cfg.seed)
    if model is None:
        print("loading the policy and building the task...", file=sys.stderr, flush=True)
        model, tokenizer = load_policy(cfg)
    if task is None:
        task = build_task(cfg, tokenizer)
    warm = sft_warmup(model, tokenizer, task, cfg) if warmup else []  # every process: same seed, same weights
    eval_ex = task.eval[: cfg.eval_questions]
    before = after = None
    if evaluate and main:
        before, _ = evaluate_agent(
            model, tokenizer, eval_ex, task.make_env, cfg, out / "eval_before.jsonl", desc="eval before RL"
        )
    state.wait_for_everyone()

    history = TrlHistory()
    trainer = make_trainer(cfg, out, model, tokenizer, task, history=history, callback=callback, **trl_args)
    try:
        trainer.train()
    except KeyboardInterrupt:
        history.interrupted = True
        print(f"interrupted after {len(history)} steps; the adapter is saved in {out / 'adapter'}")
    state.wait_for_everyone()
    if main:
        model.save_pretrained(out / "adapter")
        if evaluate:
            after, _ = evaluate_agent(
                model, tokenizer, eval_ex, task.make_env, cfg, out / "eval_after.jsonl", desc="eval after RL"
            )
        rewards = [m["reward"] for m in history]
        report = {
            "backend": "trl",
            "trl_version": importlib.metadata.version("trl"),
            "em_before": None if before is None else before["em"],
            "em_before_ci95": None if before is None else before["em_ci95"],
            "em_after": None if after is None else after["em"],
            "em_after_ci95": None if after is None else after["em_ci95"],
            "reward_first": mean(rewards[:5]),
            "reward_last": mean(rewards[-5:]),
            "steps": len(history),
            "minutes": round((time.time() - t0) / 60, 2),
            "seed": cfg.seed,
        }
        history.report = report
        atomic_write_json(
            out / "report.json",
            dict(
                report,
                before=before,
                after=after,
                sft_warmup_losses=warm,
                peak_mem_mb=peak_memory_mb(),
                interrupted=history.interrupted,
                world_size=state.num_processes,
                config=cfg.to_dict(),
            ),
        )
    state.wait_for_everyone()
    return history
