"""Multi-turn rollout through a token-id generation engine (vLLM): `engine_rollout`, the `Engine` protocol,
and `VLLMEngine` on the trainer's vLLM (TRL's `vllm_generation`, colocate or server mode).

When TRL runs vLLM (`use_vllm=True`), `trl_backend.make_rollout_func` generates turn by turn here, token
ids in and out: each turn sends every running episode's full token history, keeps the sampled ids and
vLLM's log-probs of them, cuts the turn at our stop strings, and appends the env's observation ids, so the
token-exactness of `rollout.rollout` holds here too. The id bookkeeping is tested on the CPU with a fake
engine; the vLLM calls themselves have not been run (no GPU with vLLM was available when this was written).
vLLM is imported only inside `VLLMEngine`'s methods.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .actions import STOP_STRINGS
from .config import Config
from .rollout import Row, StopChecker, Trajectory, eos_ids, start_rows, step_envs


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
    """The members of `kvcache.KVBatch` that `rollout.step_envs` uses (rows, select, the timer its env steps
    add to), without a cache."""

    def __init__(self, rows: list[Row], timer: dict | None = None):
        self.rows = rows
        self.timer = timer if timer is not None else {"env_s": 0.0, "cache_s": 0.0}

    def select(self, idx: list[int]) -> _Rows:
        return _Rows([self.rows[i] for i in idx], self.timer)


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
