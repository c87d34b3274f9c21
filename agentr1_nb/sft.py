"""Supervised warm-up: a few steps of cross-entropy on gold demonstration episodes before RL.

A gold episode searches each supporting title of a generated question in hop order, then answers. The
actions are our own text (tokenised here, which is fine: they were never sampled); the observations come
from the env exactly as in a rollout, and the loss is taken on action tokens only. The paper starts RL from
an instruction-tuned 3B model that already follows the tool format; a 135M model needs these few steps to
learn the format before RL has a reward to work with.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from .actions import format_call
from .config import Config
from .env import Task
from .logprobs import token_logprobs


def gold_episode(example, env, tokenizer) -> tuple[list[int], list[int]]:
    """A demonstration episode: search each supporting title in hop order, then answer.

    Returns `(token_ids, action_mask)`. The actions are our own text, so tokenising them is fine; the
    observation tokens come from the env exactly as in a rollout.
    """
    ids = list(env.reset(example))
    mask = [0] * len(ids)
    actions = [format_call("search", {"query": title}) for title in example.supporting_titles]
    actions.append(f"<answer>{example.answer}</answer>")
    for text in actions:
        a = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += a
        mask += [1] * len(a)
        res = env.step(a)
        if res.done:
            break
        ids += res.obs_ids
        mask += [0] * len(res.obs_ids)
    return ids, mask


def balanced_picks(rng: np.random.Generator, examples: list, k: int) -> list[int]:
    """`k` indices of `examples` (with replacement): a kind drawn uniformly, then a question of that kind
    (`Config.kind_balanced`: the warm-up sees 3-hop episodes as often as single-hop ones)."""
    by_kind: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        by_kind.setdefault(ex.kind, []).append(i)
    groups = [by_kind[kind] for kind in sorted(by_kind)]
    return [int(rng.choice(groups[int(rng.integers(len(groups)))])) for _ in range(k)]


def sft_warmup(
    model, tokenizer, task: Task, cfg: Config, steps: int | None = None, batch_size: int = 8
) -> list[float]:
    """Supervised steps on gold episodes of training questions (cross-entropy on action tokens only).

    Each step averages over `batch_size` episodes, run `cfg.micro_batch_size` at a time (gradient
    accumulation) so memory stays that of one micro-batch. Returns the loss of each step.
    """
    steps = cfg.sft_warmup_steps if steps is None else steps
    if steps <= 0:
        return []
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.sft_lr)
    rng = np.random.default_rng(cfg.seed + 7)
    losses = []
    model.train()
    for _ in tqdm(range(steps), desc="warm-up (SFT)", dynamic_ncols=True):
        picks = (
            balanced_picks(rng, task.train, batch_size)
            if cfg.kind_balanced
            else rng.choice(len(task.train), batch_size)
        )
        rows = [gold_episode(task.train[i], task.make_env(), tokenizer) for i in picks]
        n_act = sum(sum(m[1:]) for _, m in rows)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for j in range(0, len(rows), cfg.micro_batch_size):
            part = rows[j : j + cfg.micro_batch_size]
            T = max(len(x) for x, _ in part)
            ids = torch.full((len(part), T), tokenizer.pad_token_id, dtype=torch.long)  # (b, T)
            am = torch.zeros((len(part), T), dtype=torch.long)
            act = torch.zeros((len(part), T - 1))  # (b, T-1) log-prob layout
            for i, (x, m) in enumerate(part):
                ids[i, : len(x)] = torch.tensor(x)
                am[i, : len(x)] = 1
                act[i, : len(x) - 1] = torch.tensor(m[1:], dtype=torch.float)
            device = next(model.parameters()).device  # a GPU model takes GPU batches
            ids, am, act = ids.to(device), am.to(device), act.to(device)
            logp = token_logprobs(model, ids, am, chunk=cfg.logprob_chunk, positions=act > 0)  # (b, T-1)
            loss = -(logp * act).sum() / max(n_act, 1)
            loss.backward()
            total += loss.item()
        gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        if math.isfinite(total) and bool(torch.isfinite(gnorm)):
            opt.step()
        else:  # a non-finite loss or gradient never reaches the weights (the step is skipped, loss logged)
            opt.zero_grad(set_to_none=True)
        losses.append(total)
    return losses
