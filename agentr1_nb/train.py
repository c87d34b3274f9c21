"""The training loop: rollout -> rewards -> advantages -> clipped policy-gradient updates of the LoRA adapter.

`train()` reads top to bottom like cleanrl's and nanochat's loops. One step, as in Agent-R1 (Algorithm 1)::

    questions  <- this process's share of the next `questions_per_step` shuffled training questions
    trajs      <- rollout(policy, questions, G = group_size)          # multi-turn, tools in the loop
    r          <- outcome reward (+ weighted process rewards) per token, in the log-prob layout
    old_logp   <- log pi_old(a_t | s_t)       recorded by the sampler (or recomputed, see below)
    ref_logp   <- log pi_ref(a_t | s_t)       same model with the LoRA adapter disabled (when kl_coef > 0)
    A          <- advantages (GRPO / RLOO / REINFORCE++ / PPO+GAE), on action tokens only
    for epoch in ppo_epochs: for minibatch: for micro-batch:        # gradient accumulation
        loss   <- clipped surrogate(logp, old_logp, A) + kl_coef * KL(pi || pi_ref)   on action tokens
    gradients summed over processes; clip; AdamW step on the LoRA parameters (and PPO's value head)

Devices and processes run on `accelerate`: the same loop runs on the CPU, on one GPU and under
`accelerate launch --num_processes N`. Every process rolls out its own share of the questions (a GRPO group
stays on one process), micro-batches are weighed by their share of the loss tokens of the whole step on all
processes, and the LoRA gradients are summed across processes before clipping, so N processes compute the
update one process would on the whole batch. fp16 losses are scaled (accelerate's GradScaler) and unscaled
before clipping. The model is not wrapped in DDP: the log-probs call the decoder directly (to compute the
output head in chunks), which DDP's forward hooks would not see, so the (small) LoRA gradients are reduced
explicitly instead.

Departures from the paper's training code (verl-based, 4 GPUs):
- LoRA (optionally on a 4-bit NF4 base) instead of full fine-tuning, so the learning rate is larger.
- `old_logp` is recomputed with a full forward pass (as verl does) wherever the sampler and the training
  pass compute differently (a 4-bit base, 16-bit compute: `old_logprobs="auto"`); in fp32 the sampler's
  recorded log-probs are used as they are (the first ratio is 1 to within 1e-3) and the pass is saved.
- The output head runs on the tokens the loss reads (action tokens under the loss mask) only.
- A minibatch's rows are ordered by group, so a micro-batch holding one group runs the group's prompt once
  (`logprobs.final_hidden(share_prefix=True)`; same log-probs and gradients, the prompt's LoRA dropout noise
  shared by the group's rows). With `share_prompt` (off by default: the shipped runs were drawn without it)
  micro-batches never mix groups and each group's prompt runs once per minibatch for all its rows, across
  micro-batches, and once per group in the old / reference / value passes (`logprobs.SharedPrompt`): the
  same maths, another rounding order.
- When LoRA adapts only the top layers (`lora_top_layers`, the CPU default), the rollout keeps every token's
  input to the first adapted layer and the update runs only the adapted layers on it (`reuse_trunk`,
  `logprobs.trunk_layer`): the frozen layers below compute the same function at both times. The rollout's
  cached decoding and the update's full pass round differently (fp32: ~1e-6).
- PPO's critic is a linear value head on the policy's final hidden states (a shared backbone with a
  separate head, trained by its own loss), not a second 3B model.
- A NaN/inf loss or gradient skips the update and is logged; after `max_bad_steps` the run stops and the
  last good checkpoint is kept.

The run folder `out/` (`checkpoint.py`): `config.json`, `metrics.jsonl` (one line per step, the source of
truth), `tensorboard/` (the same numbers through accelerate's trackers, `Config.log_with`), `checkpoint/`
(adapter, optimiser, scheduler, value head, every process's RNG state, step and data position), written
atomically every `save_every` steps and on Ctrl-C between steps (a second Ctrl-C waits for the save);
`train(..., resume=True)` continues so that an interrupted run gives the metrics of an uninterrupted one.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import is_tensorboard_available, is_wandb_available
from tqdm.auto import tqdm

from . import algos
from .checkpoint import (
    InterruptedAfterSave,
    TrainState,
    load_checkpoint,
    load_metrics,
    prepare_run_dir,
    run_lock,
    save_checkpoint,
)
from .common import check_writable_dir, mean, peak_memory_mb, set_seed
from .config import Config
from .env import Task, build_task
from .logprobs import (
    GroupPrompts,
    SharedPrompt,
    final_hidden,
    micro_batches,
    token_logprobs,
    trim_padding,
    trunk_layer,
)
from .policy import compute_dtype, load_policy, reference
from .rewards import score_trajectory, token_rewards
from .rollout import episode_stats, rollout

__all__ = ["TrainHistory", "TrainingStopped", "QuestionSampler", "load_metrics", "train"]
"""`load_metrics` (checkpoint.py) is re-exported: notebooks read a run's metrics from here."""


class TrainingStopped(RuntimeError):
    """Raised when too many NaN/inf losses were seen; the last good checkpoint is kept."""


class TrainHistory(list):
    """The metrics of the steps run by one `train()` call; `interrupted` is True when Ctrl-C ended it."""

    interrupted: bool = False


class QuestionSampler:
    """Shuffled passes over the training questions; its (epoch, position) is saved in checkpoints.

    With `kinds` (one label per question, e.g. `QAExample.kind`) holding more than one label, a pass is
    round-robin over the kinds: each round takes the next question of every kind still left, in a shuffled
    kind order, so consecutive steps see the kinds alike (`Config.kind_balanced`)."""

    def __init__(self, n: int, seed: int, kinds: list[str] | None = None):
        if n <= 0:
            raise ValueError("the training set is empty: no questions to sample")
        if kinds is not None and len(kinds) != n:
            raise ValueError(f"QuestionSampler: {len(kinds)} kinds for {n} questions")
        self.n, self.seed, self.epoch, self.pos = n, seed, 0, 0
        self.kinds = kinds if kinds is not None and len(set(kinds)) > 1 else None

    def _order(self) -> list[int]:
        rng = np.random.default_rng(self.seed + 1000 * self.epoch)
        if self.kinds is None:
            return rng.permutation(self.n).tolist()
        by_kind = {k: [i for i in range(self.n) if self.kinds[i] == k] for k in sorted(set(self.kinds))}
        queues = [rng.permutation(ix).tolist() for ix in by_kind.values()]
        order: list[int] = []
        for r in range(max(len(q) for q in queues)):
            order += [queues[j][r] for j in rng.permutation(len(queues)) if r < len(queues[j])]
        return order

    def next(self, k: int) -> list[int]:
        out: list[int] = []
        order = self._order()
        while len(out) < k:
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                order = self._order()
            out.append(order[self.pos])
            self.pos += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, s: dict) -> None:
        self.epoch, self.pos = s["epoch"], s["pos"]


# ----------------------------------------------------------------------------- the loop


def train(
    cfg: Config,
    out_dir: str | Path,
    resume: bool = True,
    model=None,
    tokenizer=None,
    task: Task | None = None,
    callback: Callable[[dict], None] | None = None,
) -> TrainHistory:
    """Train for `cfg.steps` steps, writing `metrics.jsonl` and checkpoints to `out_dir`; returns the
    metrics of the steps run now (a list; `.interrupted` says whether Ctrl-C ended the run).

    Resumes from `out_dir/checkpoint` (or `checkpoint.old` after a kill mid-save) when `resume`; a run
    folder with history but nothing to resume from is an error, and only `resume=False` (`--no-resume`)
    deletes a run's history (`checkpoint.prepare_run_dir`). `callback(metrics)` runs after every step (live
    plots in notebooks). Ctrl-C between steps saves a checkpoint and returns; inside a step the last
    checkpoint stands. Every step's metrics also go to accelerate's trackers (`cfg.log_with`).
    """
    out = check_writable_dir(out_dir, "run folder")
    acc = make_accelerator(cfg, out)
    world, rank = acc.num_processes, acc.process_index
    if acc.device.type == "cuda":
        torch.cuda.set_device(acc.device)  # load_policy puts this process's model on its own GPU
    if cfg.questions_per_step % world or cfg.minibatch_size % world:
        raise ValueError(
            f"questions_per_step={cfg.questions_per_step} and minibatch_size={cfg.minibatch_size} must be "
            f"multiples of the number of processes ({world})"
        )
    with run_lock(out, exclusive=acc.is_main_process):
        ckpt = prepare_run_dir(out, cfg, resume, write=acc.is_main_process)
        acc.wait_for_everyone()
        if acc.log_with:  # before the seeds are set, so that a tracker's random draws change nothing
            start_trackers(acc, cfg, out)
        try:
            # the LoRA initialisation is the same on every process
            set_seed(cfg.seed)
            state, tokenizer, task = setup(acc, cfg, model, tokenizer, task)
            set_seed(cfg.seed + 1_000_003 * rank)  # each process samples its own rollouts
            if ckpt is not None:
                load_checkpoint(ckpt, state, rank)
            return run_steps(acc, cfg, out, state, tokenizer, task, callback)
        finally:
            acc.end_training()


def setup(acc: Accelerator, cfg: Config, model=None, tokenizer=None, task: Task | None = None):
    """(TrainState at step 0, tokenizer, task): the policy (loaded unless given), the task, PPO's value head,
    AdamW on the trainable parameters with its linear warm-up, the question sampler."""
    if model is None:
        model, tokenizer = load_policy(cfg)
    if task is None:
        task = build_task(cfg, tokenizer)
    device = next(model.parameters()).device
    value_head = None
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.algo == "ppo":
        value_head = algos.ValueHead(_hidden_size(model)).to(device)
        params += list(value_head.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(lr_factor, cfg))
    optimizer = acc.prepare_optimizer(optimizer, device_placement=False)  # fp16: loss scaling
    kinds = [ex.kind for ex in task.train] if cfg.kind_balanced else None
    sampler = QuestionSampler(len(task.train), cfg.seed, kinds)
    return TrainState(model, optimizer, scheduler, sampler, value_head), tokenizer, task


def lr_factor(cfg: Config, s: int) -> float:
    """The learning rate of step `s` (0-based) as a share of `cfg.lr`: a linear ramp over `warmup_steps`,
    then constant or a cosine down to `min_lr_ratio` at step `steps - 1` (`lr_schedule`)."""
    warm = cfg.warmup_steps
    if warm and s < warm:
        return (s + 1) / warm
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = min(1.0, (s - warm + 1) / max(1, cfg.steps - warm))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def run_steps(
    acc, cfg: Config, out: Path, state: TrainState, tokenizer, task: Task, callback
) -> TrainHistory:
    """Steps until `cfg.steps`: each one logged (metrics.jsonl, trackers) and checkpointed every `save_every`
    steps; Ctrl-C between steps saves, inside a step (until its metrics are written) the last save stands."""
    # the update starts at the first adapted layer, from the inputs the rollout gave it (None: layer 0)
    trunk_at = trunk_layer(state.model) if cfg.reuse_trunk else None
    history = TrainHistory()
    in_step, saved_at, current = False, state.step, state.step + 1
    bar = tqdm(
        total=cfg.steps, initial=state.step, desc="train", dynamic_ncols=True, disable=not acc.is_main_process
    )
    try:
        while state.step < cfg.steps:
            in_step, current = True, state.step + 1
            m = train_step(acc, cfg, state, tokenizer, task, trunk_at)
            history.append(m)
            log_step(acc, out, m)
            in_step = False
            bar.update(1)
            bar.set_postfix(reward=f"{m['reward']:.3f}", em=f"{m['em']:.2f}")
            # checkpoint (never after a skipped step: the last good one stands)
            if state.bad_steps >= cfg.max_bad_steps:
                raise TrainingStopped(
                    f"stopped after {state.bad_steps} steps with non-finite loss; the last good checkpoint "
                    f"in {out / 'checkpoint'} is kept"
                )
            if not m["skipped_updates"] and (state.step % cfg.save_every == 0 or state.step == cfg.steps):
                save_checkpoint(acc, out, state, cfg)
                saved_at = state.step
            if callback is not None:
                callback(m)
    except KeyboardInterrupt as e:
        if isinstance(e, InterruptedAfterSave):  # during this step's save, which was completed
            saved_at = state.step
        # Only a state between two steps is consistent: mid-step, some minibatch updates may be applied
        # while the step counter, sampler and RNG are elsewhere, so the last checkpoint stands.
        if in_step:
            print(f"interrupted during step {current}; resume continues from the last checkpoint in {out}")
        elif history and history[-1]["skipped_updates"]:
            print(f"interrupted after a skipped step; the last good checkpoint in {out} is kept")
        else:
            if saved_at != state.step:
                save_checkpoint(acc, out, state, cfg)  # a second Ctrl-C waits until it is written
            print(f"interrupted at step {state.step}; checkpoint saved in {out}; train(...) again to resume")
        history.interrupted = True
    finally:
        bar.close()
    return history


def train_step(acc, cfg: Config, state: TrainState, tokenizer, task: Task, trunk_at: int | None) -> dict:
    """One RL step: build the batch, update on it, advance the schedule; returns the step's metrics."""
    t0 = time.perf_counter()
    batch, trajs, times = build_batch(acc, cfg, state, tokenizer, task, trunk_at)
    t2 = time.perf_counter()
    agg, skipped = update(acc, cfg, state, batch, trunk_at)
    state.scheduler.step()
    state.step += 1
    state.bad_steps += bool(skipped)

    # every number is over all processes' trajectories
    scores = batch["token_rewards"].sum(-1)  # (B,): what the advantages saw
    m = _gather_means(acc, {"reward": scores.tolist(), **episode_stats(trajs)})
    gen_tokens = _sum_all(acc, torch.tensor(float(sum(sum(t.action_mask) for t in trajs))))
    m.update(
        step=state.step,
        rollout_s=times["rollout_s"],
        logprob_s=times["logprob_s"],
        update_s=time.perf_counter() - t2,
        step_s=time.perf_counter() - t0,
        tokens_per_s=gen_tokens / max(times["rollout_s"], 1e-9),
        peak_mem_mb=peak_memory_mb(),
        skipped_updates=skipped,
        lr=state.scheduler.get_last_lr()[0],
        world_size=acc.num_processes,
    )
    for k, v in agg.items():  # first_* are the first minibatch's on-policy ratios
        m[k] = float(v[0]) if k.startswith("first_") else float(np.mean(v))
    if skipped:
        m["nan_guard"] = f"skipped {skipped} update(s): non-finite loss or gradient"
    return m


def build_batch(acc, cfg: Config, state: TrainState, tokenizer, task: Task, trunk_at: int | None):
    """(batch, trajectories, timings) of one step: this process's share of the questions -> rollout ->
    rewards -> old and reference log-probs (and PPO's old values) -> advantages; every per-token tensor in
    the log-prob layout (B, L = T-1), on the model's device."""
    model = state.model
    device = next(model.parameters()).device
    t0 = time.perf_counter()
    # the questions: the same draw on every process, each takes its share
    picks = state.sampler.next(cfg.questions_per_step)[acc.process_index :: acc.num_processes]
    examples = [task.train[i] for i in picks]
    model.eval()  # no grad, eval mode: LoRA dropout off
    with torch.no_grad():
        trajs = rollout(
            model, tokenizer, examples, task.make_env, cfg, cfg.group_size, keep_hidden_at=trunk_at
        )
    t_roll = time.perf_counter() - t0

    for t in trajs:
        score_trajectory(t, cfg)
    batch = algos.batch_from_trajectories(trajs, tokenizer.pad_token_id)
    for t in trajs:
        t.trunk_hidden = None  # in the batch now
    batch["token_rewards"] = token_rewards(trajs, cfg, batch["input_ids"].shape[1])  # (B, L)
    batch = {k: v.to(device) for k, v in batch.items()}

    t1 = time.perf_counter()
    batch["loss_weight"] = algos.loss_token_mask(
        batch["action_mask"], batch["response_mask"], cfg.loss_mask
    )  # (B, L): the tokens the loss reads; micro-batches weigh by their share of them
    with torch.no_grad():
        add_old_and_reference(batch, model, state.value_head, cfg, trunk_at)
    t_logp = time.perf_counter() - t1

    # advantages, on action tokens (the advantage mask) unless ablated; (B, L) each
    batch["advantages"], batch["returns"] = algos.compute_advantages(
        cfg.algo,
        batch["token_rewards"],
        batch["action_mask"],
        batch["response_mask"],
        batch["group"],
        batch["old_values"],
        advantage_mask=cfg.advantage_mask,
        norm_adv_by_std=cfg.norm_adv_by_std,
        gamma=cfg.gamma,
        lam=cfg.lam,
    )
    return batch, trajs, {"rollout_s": t_roll, "logprob_s": t_logp}


def add_old_and_reference(batch: dict, model, value_head, cfg: Config, trunk_at: int | None) -> None:
    """log pi_old (recomputed where the sampler's differ, `recompute_old_logprobs`), log pi_ref (the adapter
    disabled, when kl_coef > 0) and PPO's old values, micro-batch by micro-batch, into `batch`."""
    logprobs = functools.partial(_logprobs, model, cfg, trunk_at)
    per_micro_batch = functools.partial(_per_micro_batch, model=model, trunk_at=trunk_at)
    if recompute_old_logprobs(cfg):
        batch["old_logprobs"] = per_micro_batch(batch, cfg, logprobs)
    batch["ref_logprobs"] = None
    if cfg.kl_coef > 0:
        with reference(model):
            batch["ref_logprobs"] = per_micro_batch(batch, cfg, logprobs)
    batch["old_values"] = None
    if value_head is not None:
        batch["old_values"] = per_micro_batch(
            batch,
            cfg,
            lambda ids, am, pos, tr, prompt=None: _values(model, value_head, ids, am, tr, trunk_at, prompt),
        )


def update(acc, cfg: Config, state: TrainState, batch: dict, trunk_at: int | None):
    """`ppo_epochs` passes over the batch in shuffled minibatches of `minibatch_size` rows (this process's
    share), one optimiser step each; returns (metrics lists, number of skipped non-finite updates)."""
    state.model.train()
    agg: dict[str, list[float]] = {}
    skipped = 0
    B = batch["input_ids"].shape[0]
    device = next(state.model.parameters()).device
    for _ in range(cfg.ppo_epochs):
        for mb_rows in torch.randperm(B, device=device).split(cfg.minibatch_size // acc.num_processes):
            # a group's rows side by side: a micro-batch of one group runs its prompt once
            mb_rows = mb_rows[torch.argsort(batch["group"][mb_rows], stable=True)]
            if not update_minibatch(acc, cfg, state, batch, mb_rows, trunk_at, agg):
                skipped += 1
    return agg, skipped


def update_minibatch(acc, cfg: Config, state: TrainState, batch: dict, mb_rows, trunk_at, agg: dict) -> bool:
    """One optimiser step on the minibatch `mb_rows`, accumulating gradients over micro-batches; False when
    a loss or the gradient was not finite on some process (the step is skipped: nothing changes)."""
    optimizer = state.optimizer
    params = [p for group in optimizer.param_groups for p in group["params"]]
    loss_weight = batch["loss_weight"]
    optimizer.zero_grad(set_to_none=True)
    # the step's loss is the mean over all processes' tokens (or trajectories)
    if cfg.loss_agg == "token_mean":
        total = _sum_all(acc, loss_weight[mb_rows].sum())
    else:
        total = _sum_all(acc, torch.tensor(float(len(mb_rows)), device=mb_rows.device))
    ok = True
    prompts = GroupPrompts(state.model, batch, mb_rows, trunk_at) if cfg.share_prompt else None
    for micro_rows in micro_batches(batch["group"], mb_rows, cfg.micro_batch_size, cfg.share_prompt):
        micro = _select(batch, micro_rows)
        with acc.autocast():
            prompt = None if prompts is None else prompts.get(micro_rows)  # (its backward: after its rows')
            loss, m = _micro_loss(state.model, state.value_head, micro, cfg, trunk_at, prompt)
        if not algos.is_finite_loss(loss):
            ok = False
            break
        share = loss_weight[micro_rows].sum() if cfg.loss_agg == "token_mean" else len(micro_rows)
        acc.backward(loss * (float(share) / max(total, 1e-12)))
        for k, v in m.items():
            agg.setdefault(k, []).append(float(v))
    if prompts is not None:
        prompts.finish(backward=ok)
    ok = _all_true(acc, ok)
    if ok:
        _reduce_gradients(acc, params)
        gnorm = acc.clip_grad_norm_(params, cfg.max_grad_norm)
        ok = bool(torch.isfinite(torch.as_tensor(gnorm)))
        agg.setdefault("grad_norm", []).append(float(gnorm))
    if ok:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return ok


def log_step(acc, out: Path, m: dict) -> None:
    """One step's metrics: a line of metrics.jsonl (the source of truth) and the trackers' numbers."""
    if acc.is_main_process:
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(m) + "\n")
    if acc.log_with:
        numbers = {k: v for k, v in m.items() if k != "step" and isinstance(v, (int, float))}
        acc.log(numbers, step=m["step"])


# ----------------------------------------------------------------------------- pieces of a step


def make_accelerator(cfg: Config, out: Path | None = None) -> Accelerator:
    """One Accelerator per process: fp16 autocast + loss scaling when the policy computes in fp16 on a GPU,
    bf16 autocast for bf16 on a GPU, nothing extra on the CPU (the CPU model is loaded in its dtype); with a
    run folder `out`, the trackers of `cfg.log_with` writing into it."""
    trackers = {} if out is None else dict(log_with=tracker(cfg), project_dir=out)
    if not torch.cuda.is_available():  # cpu=True: several CPU processes (torchrun) join as MULTI_CPU
        return Accelerator(cpu=True, mixed_precision="no", **trackers)
    mp = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(compute_dtype(cfg), "no")
    return Accelerator(mixed_precision=mp, **trackers)


def tracker(cfg: Config) -> str | None:
    """accelerate's tracker for `cfg.log_with`: "auto" is TensorBoard when it is installed, else none; a
    tracker asked for by name and not installed is an error."""
    available = {"tensorboard": is_tensorboard_available(), "wandb": is_wandb_available()}
    if cfg.log_with == "auto":
        return "tensorboard" if available["tensorboard"] else None
    if cfg.log_with == "none":
        return None
    if not available[cfg.log_with]:
        raise ValueError(
            f"log_with={cfg.log_with} needs the {cfg.log_with} package: pip install {cfg.log_with}, "
            "or log_with=none"
        )
    return cfg.log_with


def start_trackers(acc: Accelerator, cfg: Config, out: Path) -> None:
    """TensorBoard writes into `out/tensorboard/`; a resumed run's events replace those of the steps after
    its checkpoint (`purge_step`), as its metrics.jsonl lines do. W&B files the run under "agentr1_nb"."""
    if tracker(cfg) != "tensorboard":
        acc.init_trackers("agentr1_nb")
        return
    last = max((r["step"] for r in load_metrics(out)), default=0)  # the checkpoint's step, after resume
    acc.init_trackers("tensorboard", init_kwargs={"tensorboard": {"purge_step": last + 1}})


def _hidden_size(model) -> int:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.config.hidden_size


def recompute_old_logprobs(cfg: Config) -> bool:
    """Whether log pi_old is recomputed by a full forward pass instead of taken from the sampler: always
    for "recompute", never for "sampler"; for "auto" wherever the sampler's arithmetic differs from the
    training pass's (a 4-bit base or 16-bit compute)."""
    if cfg.old_logprobs != "auto":
        return cfg.old_logprobs == "recompute"
    return cfg.load_in_4bit or compute_dtype(cfg) != torch.float32


def _logprobs(
    model, cfg: Config, trunk_at: int | None, ids, am, positions=None, trunk=None, prompt=None
) -> torch.Tensor:
    """log pi(token t | < t) at the sampling temperature, (b, T-1), at `positions` (b, T-1) only; from the
    rollout's inputs to layer `trunk_at` when the batch has them (`trunk` (b, T, H)); on the rows' shared
    `prompt` pass when given."""
    return token_logprobs(
        model,
        ids,
        am,
        chunk=cfg.logprob_chunk,
        temperature=cfg.temperature,
        positions=positions,
        trunk=trunk,
        trunk_at=trunk_at,
        prompt=prompt,
    )


def _values(model, value_head, ids, am, trunk=None, trunk_at=None, prompt=None) -> torch.Tensor:
    """(b, T-1) values V(s_t) in the log-prob layout; the trunk's features are detached (the critic head
    learns from its own loss, the trunk from the policy loss). Every layer runs on the tokens, unless a
    shared `prompt` pass is given (`share_prompt`): then from where it started (the trunk's layer)."""
    with torch.no_grad():
        if prompt is None:
            h = final_hidden(model, ids, am)  # (b, T, H)
        else:
            h = final_hidden(model, ids, am, trunk=trunk, trunk_at=trunk_at, prompt=prompt)
    return algos.values_from_hidden(value_head, h)


def _micro_loss(
    model,
    value_head,
    micro: dict,
    cfg: Config,
    trunk_at: int | None = None,
    prompt: SharedPrompt | None = None,
):
    """The loss of one micro-batch (policy loss + KL - entropy [+ value loss]) and its metrics; the decoder
    runs from layer `trunk_at` on the rollout's inputs to it when the batch has them, and on the rows'
    shared `prompt` pass when given (`share_prompt`)."""
    ids, am = micro["input_ids"], micro["attention_mask"]
    want_entropy = cfg.entropy_coef > 0
    out = token_logprobs(
        model,
        ids,
        am,
        chunk=cfg.logprob_chunk,
        temperature=cfg.temperature,
        with_entropy=want_entropy,
        positions=micro["loss_weight"] > 0,
        trunk=micro.get("trunk_hidden"),  # (b, T, H) when the rollout kept it (only with trunk_at)
        trunk_at=trunk_at,
        prompt=prompt,
    )
    logp, entropy = out if want_entropy else (out, None)
    loss, metrics = algos.policy_loss(
        logp,
        micro["old_logprobs"],
        micro["advantages"],
        micro["action_mask"],
        micro["response_mask"],
        clip_eps=cfg.clip_eps,
        loss_mask=cfg.loss_mask,
        loss_agg=cfg.loss_agg,
        ref_logp=micro["ref_logprobs"],
        kl_coef=cfg.kl_coef,
        kl_estimator=cfg.kl_estimator,
        entropy=entropy,
        entropy_coef=cfg.entropy_coef,
    )
    with torch.no_grad():  # the on-policy check: before any update, every ratio should be 1
        ratio = torch.exp((logp.detach().float() - micro["old_logprobs"].float()).clamp(-20, 20))
        act = micro["action_mask"] > 0
        if act.any():
            metrics["first_ratio_mean"] = float(ratio[act].mean())
            metrics["first_ratio_max"] = float((ratio[act] - 1).abs().max() + 1)
            metrics["first_clip_frac"] = float(((ratio[act] - 1).abs() > cfg.clip_eps).float().mean())
    if value_head is not None:
        vl = algos.value_loss(
            _values(model, value_head, ids, am, micro.get("trunk_hidden"), trunk_at, prompt),
            micro["old_values"],
            micro["returns"],
            algos.advantage_token_mask(micro["action_mask"], micro["response_mask"], cfg.advantage_mask),
            cfg.clip_eps,
        )
        loss = loss + cfg.vf_coef * vl
        metrics["value_loss"] = float(vl.detach())
    return loss, metrics


def _per_micro_batch(batch: dict, cfg: Config, fn, model=None, trunk_at: int | None = None) -> torch.Tensor:
    """fn(ids, am, positions, trunk) -> (b, t-1) over micro-batches of the trimmed rows, padded back to
    (B, T-1); `positions` are the loss's tokens (`batch["loss_weight"] > 0`) in the trimmed layout, `trunk`
    the rows' `trunk_hidden` (b, t, H) or None. With `share_prompt`, micro-batches of one group each and
    fn(..., prompt=) the group's prompt pass of `model`, run once per group."""
    B, T = batch["input_ids"].shape
    rows = torch.arange(B, device=batch["input_ids"].device)
    if cfg.share_prompt:
        rows = torch.argsort(batch["group"], stable=True)
        prompts = GroupPrompts(model, batch, rows, trunk_at)
    out = None
    for micro_rows in micro_batches(batch.get("group"), rows, cfg.micro_batch_size, cfg.share_prompt):
        ids, am = trim_padding(batch["input_ids"][micro_rows], batch["attention_mask"][micro_rows])
        trunk = batch.get("trunk_hidden")
        trunk = None if trunk is None else trunk[micro_rows, : ids.shape[1]]
        pos = batch["loss_weight"][micro_rows, : ids.shape[1] - 1] > 0
        extra = {"prompt": prompts.get(micro_rows)} if cfg.share_prompt else {}
        x = fn(ids, am, pos, trunk, **extra)
        out = x.new_zeros(B, T - 1) if out is None else out
        out[micro_rows, : x.shape[1]] = x
    return out if out is not None else torch.zeros(B, T - 1)  # (B, T-1)


TOKEN_KEYS = ("input_ids", "attention_mask", "trunk_hidden")
"""The (B, T[, H]) tensors of a batch; every other per-token tensor is (B, T-1), the log-prob layout."""


def _select(batch: dict, rows: torch.Tensor) -> dict:
    """Rows of every batch tensor, trimmed to the longest real sequence among them (L tokens, L-1 steps)."""
    L = int(batch["attention_mask"][rows].sum(dim=1).max())
    out = {}
    for k, v in batch.items():
        if v is None or v.dim() == 1:
            out[k] = None if v is None else v[rows]
        else:
            out[k] = v[rows, :L] if k in TOKEN_KEYS else v[rows, : L - 1]
    return out


def _sum_all(acc: Accelerator, x: torch.Tensor) -> float:
    """Sum of a scalar over all processes."""
    if acc.num_processes == 1:
        return float(x)
    return float(acc.reduce(x.float().reshape(1).to(acc.device), reduction="sum"))


def _all_true(acc: Accelerator, ok: bool) -> bool:
    if acc.num_processes == 1:
        return ok
    return _sum_all(acc, torch.tensor(float(not ok))) == 0


def _reduce_gradients(acc: Accelerator, params: list) -> None:
    """Sum the gradients over processes (each process's loss is already its share of the whole step's):
    one all-reduce of all LoRA gradients flattened together, since one call per tensor costs more than the
    update itself on the CPU's gloo backend."""
    if acc.num_processes == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = acc.reduce(torch.cat([g.reshape(-1).float() for g in grads]), reduction="sum")
    i = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[i : i + n].view_as(g).to(g.dtype)
        i += n


def _gather_means(acc: Accelerator, values: dict[str, list[float]]) -> dict[str, float]:
    """Means over all processes' trajectories."""
    if acc.num_processes == 1:
        return {k: mean(v) for k, v in values.items()}
    out = {}
    for k, v in values.items():
        t = torch.tensor([float(sum(v)), float(len(v))], device=acc.device)
        s, n = acc.reduce(t, reduction="sum").tolist()
        out[k] = s / n if n else float("nan")
    return out
