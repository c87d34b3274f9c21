"""Batched multi-turn rollout: questions x G samples, tokens kept exactly as the policy sampled them.

Pseudocode (one call, B = len(examples) * group_size rows, row i belongs to group i // group_size)::

    tokens_i <- env_i.reset(question)                        # prompt, action_mask 0
    for turn in 1..max_turns:
        until every running row stops (stop string, eos, per-turn or total token limit):
            sample a_t ~ pi(. | tokens_i) for all decoding rows at once; append a_t (mask 1, log pi(a_t))
        for each running row:  result <- env_i.step(action tokens of this turn)
            done -> finish the row;  else append result.obs_ids (mask 0, log-prob 0)

How it stays exact and cheap:
- The model's sampled ids are appended as they are; no text is ever re-encoded, so decoding the masked-in
  tokens gives exactly the actions the env saw (the misalignment of Search-R1 PR #21 cannot happen).
- Stop strings are searched only in the text of the current turn's sampled tokens, so a tool that
  *returns* `</answer>` or the eos string cannot end or break an episode.
- All rows share one KV cache (`kvcache.KVBatch`), and a GRPO group's prompt is computed once for the group.
  Rows have different lengths, so padding appears as holes masked out by a 2D attention mask, and explicit
  position ids (`cumsum(mask) - 1`) give every real token its true position. A turn therefore prefills only the new observation tokens; once per turn the holes are
  squeezed out again (`KVBatch.compact`), since attention kernels pay for masked columns too.
- A row that stops leaves the decoding batch at once (its cache rows are moved aside and merged back for
  the observation prefill), and a finished episode leaves the cache for good: finished rows cost nothing.

Departures from a textbook sampler: the log-prob recorded for each token is log softmax(logits / T) of the
untruncated distribution (top-p only restricts which token is drawn); greedy decoding records
log softmax(logits). The trainer recomputes these with `logprobs.token_logprobs(..., temperature=T)`.

The re-encode-every-turn baseline and the speed benchmark are in `bench.py`; the HTML view of a trajectory
in `viz.py`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .actions import STOP_STRINGS
from .config import Config
from .data import QAExample
from .kvcache import HiddenProbe, KVBatch
from .logprobs import decoder_layers


@dataclass
class Trajectory:
    """One sampled episode. Token-level lists all have length len(token_ids)."""

    example: QAExample
    group: int
    """Index of the question in the batch (the GRPO group id)."""
    prompt_len: int
    token_ids: list[int]
    """Prompt + actions + observations, exactly as sampled / appended."""
    action_mask: list[int]
    """1 on model-sampled tokens, 0 on prompt and tool (observation) tokens."""
    logprobs: list[float]
    """Sampling-policy log-prob of each token (0.0 where action_mask == 0)."""
    turns: list[dict] = field(default_factory=list)
    """Per turn: action_text, observation, reward, info, stop (why the action ended: stop string, eos, ...)."""
    turn_ends: list[int] = field(default_factory=list)
    """Index into token_ids of the last action token of each turn (process rewards go there)."""
    process_rewards: list[float] = field(default_factory=list)
    """One per turn."""
    answer: str | None = None
    answer_ok: bool = False
    tool_ok: bool = False
    num_searches: int = 0
    stop_reason: str = ""
    """"answer" | "eos" | "max_turns" | "max_tokens" | the env's info kind when it ended the episode."""
    truncated: bool = False
    """The episode was cut by max_total_tokens or ran out of turns without the env ending it."""
    turn_starts: list[int] = field(default_factory=list)
    """Index into token_ids of the first action token of each turn (for inspection)."""
    # filled by rewards.score_trajectory
    reward: float = 0.0
    em: float = 0.0
    f1: float = 0.0
    format_score: float = 0.0
    trunk_hidden: torch.Tensor | None = field(default=None, repr=False)
    """With `rollout(keep_hidden_at=k)`: (n, H), each fed token's input to decoder layer k, for the first n
    tokens (all but the last, which no forward ever read); the update starts there (`logprobs.final_hidden`)."""

    @property
    def num_generated(self) -> int:
        return sum(self.action_mask)


def episode_stats(trajs: list[Trajectory]) -> dict[str, list[float]]:
    """Per-episode numbers that training logs (one list per name, one value per trajectory): the outcome
    reward, EM, F1, format and answer rates, turns, searches and the summed process reward. The scalar reward
    the advantages saw is the caller's (it depends on how rewards are shaped)."""
    return {
        "outcome_reward": [t.reward for t in trajs],
        "em": [t.em for t in trajs],
        "f1": [t.f1 for t in trajs],
        "format_rate": [float(t.answer_ok and t.tool_ok) for t in trajs],
        "answer_rate": [float(t.answer is not None) for t in trajs],
        "turns": [len(t.turns) for t in trajs],
        "searches": [t.num_searches for t in trajs],
        "process_reward": [sum(t.process_rewards) for t in trajs],
    }


# ----------------------------------------------------------------------------- per-row state


@dataclass
class Row:
    """One episode while it is rolled out: its trajectory, its env, and where it stands in the KV cache."""

    traj: Trajectory
    env: Any
    n_fed: int = 0
    """Tokens of traj.token_ids already in the KV cache; the rest are fed at the next forward."""
    turn_start: int = 0
    turn_stop: str | None = None
    """Why the current turn's action ended, once it has."""
    hidden: list = field(default_factory=list)
    """With a `HiddenProbe`: the probed layer's input for the tokens fed so far, (t, H) pieces in order."""

    @property
    def pending(self) -> list[int]:
        return self.traj.token_ids[self.n_fed :]

    def append(self, ids: list[int], sampled: bool, logprobs: list[float] | None = None) -> None:
        t = self.traj
        t.token_ids.extend(ids)
        t.action_mask.extend([int(sampled)] * len(ids))
        t.logprobs.extend(logprobs if logprobs is not None else [0.0] * len(ids))

    def finish(self, reason: str, truncated: bool = False) -> None:
        t, env = self.traj, self.env
        t.stop_reason, t.truncated = reason, truncated
        t.answer = getattr(env, "answer", None)
        t.answer_ok = bool(getattr(env, "answer_ok", False))
        t.tool_ok = bool(getattr(env, "tool_ok", False))
        t.num_searches = int(getattr(env, "num_searches", 0))


# ----------------------------------------------------------------------------- sampling and stopping


def sample_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_p: float,
    greedy: bool,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row from (n, V) logits; return ids (n,) and their log-probs (n,).

    The log-prob is under softmax(logits / T) without the top-p cut (see the module docstring).
    temperature <= 0 means greedy. Non-finite logits (a model overflowing in fp16, as Qwen2.5 is known to)
    are a clear error here rather than a cryptic one from the draw or silent garbage from argmax.
    """
    dtype = logits.dtype
    logits = logits.float()
    if not bool(torch.isfinite(logits.sum(-1)).all()):  # an inf or nan anywhere in a row makes its sum one
        bad = int((~torch.isfinite(logits)).any(-1).sum())
        raise RuntimeError(
            f"the policy produced non-finite logits ({dtype}) for {bad} of {logits.shape[0]} rows: the "
            "model overflows in this dtype. Use compute_dtype=bf16 on a GPU that has it (compute capability "
            ">= 8) or fp32, or compute the overflowing layers in fp32 (fp32_modules=..., on in colab_t4)"
        )
    if greedy or temperature <= 0:
        logp = torch.log_softmax(logits, dim=-1)  # (n, V)
        tokens = logp.argmax(-1)
    else:
        logp = torch.log_softmax(logits / temperature if temperature != 1.0 else logits, dim=-1)
        probs = logp.exp()
        if top_p < 1.0:
            sorted_p, order = probs.sort(-1, descending=True)
            outside = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest prefix with mass >= top_p
            sorted_p = sorted_p.masked_fill(outside, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


def eos_ids(tokenizer, model=None) -> set[int]:
    """The tokenizer's eos plus the model's generation eos ids (Qwen2.5 has two)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    if isinstance(extra, int):
        ids.add(extra)
    elif extra:
        ids.update(int(i) for i in extra)
    return ids


class StopChecker:
    """Decides whether the current turn's action has ended, looking only at the tokens sampled this turn.

    A stop string is found by decoding just the last few sampled tokens: every token decodes to at least one
    character, so a stop string that ends at the newest token lies inside the last len(stop) tokens.
    """

    def __init__(self, tokenizer, eos: set[int], stop_strings=STOP_STRINGS):
        self.tokenizer, self.eos, self.stop_strings = tokenizer, eos, tuple(stop_strings)
        self.window = max((len(s) for s in self.stop_strings), default=0)

    def __call__(self, action: list[int]) -> str | None:
        if action[-1] in self.eos:
            return "eos"
        if self.window:
            tail = self.tokenizer.decode(action[-self.window :], skip_special_tokens=False)
            for s in self.stop_strings:
                if s in tail:
                    return s
        return None


# ----------------------------------------------------------------------------- the rollout

PARTS = ("start_s", "sample_s", "stop_s", "cache_s", "env_s", "probe_s")
"""The parts of a rollout's wall time that `rollout` times besides its forwards: resetting the envs and
encoding prompts; sampling (softmax, draw, log-prob, to Python); appending tokens and stop / limit checks;
cache bookkeeping (compact, split, select, merge); env steps (detokenising the action, the tool, tokenising
the observation); dealing out the probed hidden states."""


def rollout(
    model,
    tokenizer,
    examples: list[QAExample],
    make_env: Callable[[], Any],
    cfg: Config,
    group_size: int = 1,
    greedy: bool = False,
    use_cache: bool = True,
    stats: dict | None = None,
    keep_hidden_at: int | None = None,
) -> list[Trajectory]:
    """Sample `group_size` episodes per example; return them in order (row i is example i // group_size).

    `stats`, if given, is filled with wall_s, forward_s, forward_calls, generated_tokens and the parts of the
    wall time (`PARTS`, seconds each) with the schedule of the forwards (`calls`, see `kvcache.KVBatch`);
    `bench_rollout.rollout_account` turns them into an account of the wall time.
    `keep_hidden_at` = k: keep each token's input to decoder layer k in `Trajectory.trunk_hidden` (training
    passes `logprobs.trunk_layer(model)`, so that its update runs only the layers it trains).
    """
    timer: dict = {"forward_s": 0.0, "forward_calls": 0, **dict.fromkeys(PARTS, 0.0)}
    if stats is not None:
        timer["calls"] = []  # the forwards' schedule: recorded only when asked for
    t_start = time.perf_counter()
    rows = start_rows(examples, make_env, cfg, group_size)
    timer["start_s"] = time.perf_counter() - t_start
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop = StopChecker(tokenizer, eos_ids(tokenizer, model))
    probe = HiddenProbe(decoder_layers(model)[keep_hidden_at]) if keep_hidden_at is not None else None
    batch = KVBatch(model, [r for r in rows if not r.traj.stop_reason], use_cache, pad_id, timer, probe=probe)

    with inference(model), probe or contextlib.nullcontext():
        logits = batch.prefill_shared()  # a group's prompt once; None: fed at the first step as usual
        for turn in range(cfg.max_turns):
            if not len(batch):
                break
            batch = _sample_turn(batch, stop, cfg, greedy, logits if turn == 0 else None)
            batch = step_envs(batch, tokenizer, cfg, last_turn=turn == cfg.max_turns - 1)
    if probe is not None:  # outside inference mode: normal tensors, which autograd may save
        with timed(timer, "probe_s"):
            for r in rows:
                r.traj.trunk_hidden = torch.cat(r.hidden) if r.hidden else None  # (n_fed, H)
                r.hidden = []

    if stats is not None:
        stats.update(timer)
        stats["wall_s"] = time.perf_counter() - t_start
        stats["generated_tokens"] = sum(r.traj.num_generated for r in rows)
    return [r.traj for r in rows]


def start_rows(
    examples: list[QAExample], make_env: Callable[[], Any], cfg: Config, group_size: int
) -> list[Row]:
    """One `Row` per episode (row i is example i // group_size), its env reset and its prompt in place; a
    prompt that leaves no room under `max_total_tokens` ends at once (truncated)."""
    check_limits(cfg, group_size)
    rows: list[Row] = []
    for q, example in enumerate(examples):
        for _ in range(group_size):
            env = make_env()
            prompt = [int(i) for i in env.reset(example)]
            if not prompt:
                raise ValueError(f"env.reset returned no prompt tokens for example {example.id!r}")
            traj = Trajectory(example, q, len(prompt), prompt, [0] * len(prompt), [0.0] * len(prompt))
            rows.append(Row(traj, env))
    for r in rows:
        if len(r.traj.token_ids) >= cfg.max_total_tokens:  # no room to generate anything
            r.finish("max_tokens", truncated=True)
    return rows


def _sample_turn(
    batch: KVBatch, stop: StopChecker, cfg: Config, greedy: bool, logits: torch.Tensor | None = None
) -> KVBatch:
    """Decode all rows of `batch` together until each one's action stops; return them (merged) again.
    `logits` (n, V): the next-token logits when the rows' pending tokens were already fed (`prefill_shared`)."""
    timer = batch.timer
    for r in batch.rows:
        r.turn_start, r.turn_stop = len(r.traj.token_ids), None
    stopped: list[KVBatch] = []
    step = 0
    while len(batch):
        if logits is None:
            logits = batch.forward()  # (n, V): feeds the observation (first step) or the last sampled token
            if step == 0:  # merging and the ragged observation chunk left holes in the cache
                with timed(timer, "cache_s"):
                    batch.compact()
        step += 1
        with timed(timer, "sample_s"):
            tokens, logps = sample_tokens(logits, cfg.temperature, cfg.top_p, greedy)
            tokens, logps = tokens.tolist(), logps.tolist()
        logits = None
        t0 = time.perf_counter()
        running = []
        for i, (r, tok, lp) in enumerate(zip(batch.rows, tokens, logps)):
            r.append([tok], sampled=True, logprobs=[lp])
            action = r.traj.token_ids[r.turn_start :]
            r.turn_stop = stop(action)
            if r.turn_stop is None and len(action) >= cfg.max_tokens_per_turn:
                r.turn_stop = "max_tokens_per_turn"
            if r.turn_stop is None and len(r.traj.token_ids) >= cfg.max_total_tokens:
                r.turn_stop = "max_total_tokens"
            if r.turn_stop is None:
                running.append(i)
        timer["stop_s"] += time.perf_counter() - t0
        if len(running) < len(batch):
            keep = set(running)
            done = [i for i in range(len(batch)) if i not in keep]
            if running:  # move the stopped rows' cache aside; they wait for the turn to end
                with timed(timer, "cache_s"):
                    stopped.append(batch.split(done))
                    batch = batch.select(running)
            else:
                stopped.append(batch)
                break
    with timed(timer, "cache_s"):
        return KVBatch.merge(stopped)


def step_envs(batch: KVBatch, tokenizer, cfg: Config, last_turn: bool) -> KVBatch:
    """Hand each row's action to its env; append observations of the rows that go on, drop the rest."""
    t0 = time.perf_counter()
    going_on = []
    for i, r in enumerate(batch.rows):
        t = r.traj
        action = t.token_ids[r.turn_start :]
        t.turn_starts.append(r.turn_start)
        t.turn_ends.append(len(t.token_ids) - 1)
        action_text = tokenizer.decode(action, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if r.turn_stop == "max_total_tokens":  # cut mid-action: the env never sees a partial action
            t.turns.append(_turn(action_text, "", 0.0, {"kind": "truncated"}, r.turn_stop))
            t.process_rewards.append(0.0)
            r.finish("max_tokens", truncated=True)
            continue
        res = r.env.step(list(action))
        observation = res.observation
        if res.done:
            kind = str((res.info or {}).get("kind") or "done")
            if kind in ("answer", "max_turns"):  # the env counts turns too: out of turns is a truncation
                r.finish(kind, truncated=kind == "max_turns")
            else:
                r.finish("eos" if r.turn_stop == "eos" else kind)
        elif last_turn:
            observation = ""
            r.finish("max_turns", truncated=True)
        elif len(t.token_ids) + len(res.obs_ids) >= cfg.max_total_tokens:
            observation = ""
            r.finish("max_tokens", truncated=True)
        else:
            r.append([int(x) for x in res.obs_ids], sampled=False)
            going_on.append(i)
        t.turns.append(_turn(action_text, observation, float(res.reward), dict(res.info or {}), r.turn_stop))
        t.process_rewards.append(float(res.reward))
    batch.timer["env_s"] += time.perf_counter() - t0
    with timed(batch.timer, "cache_s"):
        return batch.select(going_on)


@contextlib.contextmanager
def timed(timer: dict, key: str):
    """Add the seconds the block takes to `timer[key]`."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timer[key] += time.perf_counter() - t0


def _turn(action_text, observation, reward, info, stop) -> dict:
    return {
        "action_text": action_text,
        "observation": observation,
        "reward": reward,
        "info": info,
        "stop": stop,
    }


@contextlib.contextmanager
def inference(model):
    """Eval mode (no dropout) and no autograd for the duration of the rollout; restores the mode after.

    On an fp32 base (the CPU default) the active LoRA adapter is merged into the base weights for the
    duration (`mergeable_lora`) and taken out again after: decoding a few rows at a time is bound by the
    per-module work, and peft's unmerged forward runs two extra matmuls, a dropout and a scaling per adapted
    linear. SmolLM2-135M, 15 adapted layers, 2 threads: 130 -> 94 ms per decoding step for one row, 314 ->
    270 ms for 16 rows. Taking the delta out again rounds each weight once (fp32: a relative ~6e-8 per
    rollout); 16-bit and 4-bit bases are never merged (rounding there would be 1e-3 or a requantisation).
    """
    was_training = model.training
    model.eval()
    merged = mergeable_lora(model)
    if merged:
        with torch.no_grad():
            model.merge_adapter()
    try:
        with torch.inference_mode():
            yield
    finally:
        if merged:
            with torch.no_grad():
                model.unmerge_adapter()
        model.train(was_training)


def mergeable_lora(model) -> bool:
    """Whether `inference` may merge `model`'s LoRA adapter: a peft model whose adapter is active (not inside
    `policy.reference`) and not merged yet, and every adapted layer a plain fp32 `nn.Linear`."""
    if not hasattr(model, "merge_adapter"):
        return False
    layers = [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    return bool(layers) and all(
        not m.disable_adapters
        and not m.merged
        and type(m.base_layer) is torch.nn.Linear
        and m.base_layer.weight.dtype == torch.float32
        for m in layers
    )


def check_limits(cfg: Config, group_size: int) -> None:
    for name, value in [
        ("group_size", group_size),
        ("max_turns", cfg.max_turns),
        ("max_tokens_per_turn", cfg.max_tokens_per_turn),
        ("max_total_tokens", cfg.max_total_tokens),
    ]:
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1; got {value}")
    if not 0.0 < cfg.top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1]; got {cfg.top_p}")
