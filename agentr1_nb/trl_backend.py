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
    train_trl(cfg, out_dir)                                  # all of it: experiment.run_experiment with TRL

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

vLLM (GPU only; unmeasured): when the trainer runs vLLM (`use_vllm=True`, colocate or server mode), the
rollout generates turn by turn through `vllm_engine.VLLMEngine`, token ids in and out
(`vllm_engine.engine_rollout`), so the token-exactness of the rollout holds there too.

TRL's own multi-turn tool loop (`GRPOTrainer(tools=...)`), the baseline `bench trainers` measures ours
against, lives with that benchmark (`bench_trainers.native_trainer`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .common import atomic_write_json, check_writable_dir, mean, peak_memory_mb
from .config import Config
from .env import Task, build_prompt_messages
from .experiment import Trainer, run_experiment
from .policy import compute_dtype
from .rewards import outcome_reward, score_trajectory, trajectory_scores
from .rollout import Trajectory, episode_stats, rollout
from .train import TrainHistory
from .vllm_engine import Engine, VLLMEngine, engine_rollout

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


TRL_FIELDS = (
    *("prompt_ids", "completion_ids", "logprobs", "env_mask"),  # TRL's
    *("answer", "answer_ok", "tool_ok", "answers", "process_rewards"),  # the reward function's
    *("example_id", "num_turns", "num_searches", "stop_reason"),  # for inspection
)
"""The keys of the rollout func's output (`trl_fields`)."""


def trl_fields(trajs: Sequence[Trajectory], pad_id: int) -> dict[str, list]:
    """The rollout func's output for trajectories (one row each, in order).

    prompt_ids / completion_ids / logprobs / env_mask as TRL 1.16 reads them (completion = every token after
    the prompt; env_mask 1 = sampled by the policy, 0 = written by the env; log-prob 0 on env tokens), plus
    the fields the reward functions read (answer, answer_ok, tool_ok, answers, process_rewards) and a few for
    inspection. An episode with no room to generate (prompt at `max_total_tokens`) gets one pad token with
    env_mask 0: TRL needs a non-empty completion, and this one stays out of the loss.
    """
    out: dict[str, list] = {k: [] for k in TRL_FIELDS}
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


TRACKER_DIR = "tensorboard"
"""The run folder's subfolder that TensorBoard event files go to (`tensorboard --logdir OUT/tensorboard`)."""


def report_to(log_with: str) -> list[str]:
    """`Config.log_with` as `GRPOConfig.report_to`: "auto" is TensorBoard when `tensorboard` is importable,
    else nothing; "none" nothing; "tensorboard" / "wandb" that tracker, an error naming the package when it
    is not installed (before minutes of loading, not at the first log)."""
    if log_with == "none":
        return []
    if log_with == "auto":
        return ["tensorboard"] if importlib.util.find_spec("tensorboard") is not None else []
    if importlib.util.find_spec(log_with) is None:
        raise ValueError(f"log_with={log_with!r} needs the {log_with} package: pip install {log_with}")
    return [log_with]


def grpo_config(cfg: Config, out_dir: str | Path, world: int | None = None, **overrides):
    """`trl.GRPOConfig` for `cfg`: learning rate and warm-up (constant after it, as ours), group_size ->
    num_generations, steps -> max_steps (see `trl_batch_sizes`), temperature / top_p (no top-k), clip_eps ->
    epsilon, kl_coef -> beta, loss_agg -> loss_type, norm_adv_by_std -> scale_rewards, entropy_coef, batch
    sizes, seed, log_with -> report_to (`report_to`; `make_trainer` puts TensorBoard's files in
    `out_dir/tensorboard`); on the CPU `use_cpu` without bf16 / fp16, on a GPU the policy's compute dtype; a
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
        report_to=report_to(cfg.log_with),
        logging_steps=1,
        save_strategy="no",
        log_completions=False,
        **sizes,
    )
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(GRPOConfig)})
    if unknown:
        raise ValueError(f"unknown trl.GRPOConfig field(s) {unknown}")
    kw.update(overrides)
    # transformers 5.24 renames gradient_checkpointing activation_checkpointing; older ones lack that
    with warnings.catch_warnings():
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
    with quiet_experimental():
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
    quiet_progress(trainer)
    place_tracker_logs(trainer, out)
    return trainer


def place_tracker_logs(trainer, out: Path) -> None:
    """TensorBoard's event files go to `out/TRACKER_DIR` (transformers' default is a dated folder under
    TRL's output_dir)."""
    for cb in trainer.callback_handler.callbacks:
        if type(cb).__name__ == "TensorBoardCallback":
            cb.logging_dir = str(out / TRACKER_DIR)


def quiet_progress(trainer) -> None:
    """Drop the Trainer's progress bar and its printing of every log dict (to stdout, which `--json` keeps
    for one line); our metrics callback shows a bar of our steps instead."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


@contextlib.contextmanager
def quiet_experimental():
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


def trl_trainer(state, **trl_args) -> Trainer:
    """The pipeline's training phase under TRL (an `experiment.Trainer`): `make_trainer`, `train()`, and the
    LoRA adapter saved to `out/adapter` by the main process of `state` (accelerate's `PartialState`), also
    after Ctrl-C (the history's `.interrupted` says so). `trl_args` override GRPOConfig fields."""

    def run(cfg: Config, out: Path, model, tokenizer, task: Task, resume: bool, callback=None) -> TrlHistory:
        history = TrlHistory()
        trainer = make_trainer(
            cfg, out, model, tokenizer, task, history=history, callback=callback, **trl_args
        )
        try:
            trainer.train()
        except KeyboardInterrupt:
            history.interrupted = True
            print(f"interrupted after {len(history)} steps; the adapter is saved in {out / 'adapter'}")
        state.wait_for_everyone()
        if state.is_main_process:
            model.save_pretrained(out / "adapter")
        return history

    return run


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
    """Train the LoRA policy with TRL's GRPOTrainer and our rollout: `runs.demo`'s pipeline, with TRL.

    Loads the policy with `policy.load_policy` (QLoRA when `load_in_4bit`) unless given, runs the supervised
    warm-up (`cfg.sft_warmup_steps`, as the demo does; `warmup=False` skips it), evaluates on
    `cfg.eval_questions` held-out questions before and after (`evaluate.evaluate_agent`, main process only;
    `evaluate=False` skips it), trains `cfg.steps` steps, and writes into `out_dir`: config.json,
    metrics.jsonl (one row per step, our trainer's keys where they exist), eval_before/after.jsonl,
    report.json (the demo's keys, `experiment.REPORT_KEYS`, with `backend` "trl") and the LoRA adapter
    (`adapter/`, which `eval --method agent --adapter OUT` reads). Runs under `accelerate launch` /
    `torchrun` as our trainer does (each process rolls out its share). `trl_args` override GRPOConfig fields
    (e.g. use_vllm=True). Returns the metrics rows (`.report` holds the report's headline, `.interrupted`
    whether Ctrl-C ended the run; the adapter is saved then too).
    """
    require_trl()
    check_supported(cfg)
    from accelerate import PartialState

    out = check_writable_dir(out_dir, "run folder")
    trl_batch_sizes(cfg, world_size())  # a bad batch shape fails before anything loads
    state = PartialState(cpu=not torch.cuda.is_available())
    _prepare_out(out, cfg, resume, write=state.is_main_process)
    if state.device.type == "cuda":
        torch.cuda.set_device(state.device)
    run = run_experiment(
        cfg,
        out,
        trl_trainer(state, **trl_args),
        entry="train",
        backend="trl",
        model=model,
        tokenizer=tokenizer,
        task=task,
        warmup=warmup,
        evaluate=evaluate,
        resume=resume,
        callback=callback,
        main=state.is_main_process,
        barrier=state.wait_for_everyone,
        extra={"world_size": state.num_processes, "versions": {"trl": importlib.metadata.version("trl")}},
    )
    history = run.history
    history.report = run.report
    return history
