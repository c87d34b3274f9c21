"""Rewards: SQuAD answer normalisation, exact match, F1, the format score, the paper's composition (eq. 6),
and the per-token reward tensor that the advantage estimators read.

Background
----------
Agent-R1 scores an episode with an *outcome* reward computed from the final answer and, optionally,
*process* rewards from the environment (here: a search that surfaces a new supporting passage; the env also
adds `cfg.format_penalty` for a malformed action and `cfg.repeat_search_penalty` for a search that shows
nothing new to the same step reward). The paper's
outcome reward (eq. 6) gates the answer score on the format::

    format = (answer_ok + tool_ok) / 2          # mean of the answer-format and tool-call-syntax checks
    r      = EM(pred, answers)   if format == 1
           = format - 1          otherwise      # -0.5 or -1

So a well-formed wrong answer (0) beats a malformed one (-0.5, -1), and only a well-formed right answer
earns 1. `cfg.reward_type` picks "paper" (default), "em" or "f1" (ungated).

Where each reward sits in the token sequence
--------------------------------------------
`token_rewards` returns a (B, T-1) tensor in the *log-prob layout* shared by every per-token tensor of
`algos` (index j = token j+1 of `token_ids`, because a causal LM predicts token j+1 at position j): the
outcome reward on the last action token of the trajectory, each process reward on the last action token of
its turn (`traj.turn_ends[i]`, an index into token_ids, so it lands at column turn_ends[i] - 1).
`trajectory_scores` is its row sum (B,): the score the outcome-level estimators broadcast, and the "reward"
the trainer logs, so the logged number is the one the advantages see.

Departures / decisions
----------------------
- Step rewards arrive *final* from the environment: `StepResult.reward` already holds
  `cfg.process_reward_weight` x (new supporting passages) when `cfg.use_process_reward` is on, plus
  `cfg.format_penalty` per malformed action and `cfg.repeat_search_penalty` per repeated search. The weight
  and the switch are applied there and only there;
  `token_rewards` places `traj.process_rewards` as they are (re-applying the switch here would also drop
  the format penalties, which share the same number).
- An empty (or missing) prediction scores 0 for EM and F1, even against an answer that normalises to "".
- F1 is SQuAD's token F1 (HotpotQA's official script additionally zeroes partial credit on yes/no answers;
  that rule is not applied).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import torch

# REWARD_TYPES is defined once in config; importing it here also re-exports it (`rewards.REWARD_TYPES`)
from .config import REWARD_TYPES, Config

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: Any) -> str:
    """SQuAD normalisation: lower case, drop punctuation, drop articles (a/an/the), collapse whitespace."""
    if s is None:
        return ""
    text = str(s).lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _aliases(answers: str | Iterable[str] | None) -> list[str]:
    """Answer aliases, normalised, empty ones dropped. A bare string is one alias."""
    if answers is None:
        return []
    if isinstance(answers, str):
        answers = [answers]
    return [n for n in (normalize_answer(a) for a in answers) if n]


def exact_match(pred: str | None, answers: str | Iterable[str] | None) -> float:
    """1.0 if the normalised prediction equals any normalised alias, else 0.0."""
    p = normalize_answer(pred)
    if not p:
        return 0.0
    return float(any(p == a for a in _aliases(answers)))


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(pred: str | None, answers: str | Iterable[str] | None) -> float:
    """SQuAD token F1 of the normalised prediction, maximised over the aliases."""
    p = normalize_answer(pred).split()
    if not p:
        return 0.0
    return max((_f1(p, a.split()) for a in _aliases(answers)), default=0.0)


def format_score(answer_ok: bool, tool_ok: bool) -> float:
    """The paper's format score: the mean of the answer-format check and the tool-call-syntax check."""
    return (float(bool(answer_ok)) + float(bool(tool_ok))) / 2.0


def outcome_reward(
    pred: str | None, answers: str | Iterable[str] | None, answer_ok: bool, tool_ok: bool, cfg: Config
) -> float:
    """Outcome reward of one episode according to `cfg.reward_type`.

    "paper": EM if format == 1 else format - 1 (eq. 6); "em": EM; "f1": F1 (the last two are not gated).
    """
    kind = cfg.reward_type
    if kind == "paper":
        fmt = format_score(answer_ok, tool_ok)
        return exact_match(pred, answers) if fmt == 1.0 else fmt - 1.0
    if kind == "em":
        return exact_match(pred, answers)
    if kind == "f1":
        return f1_score(pred, answers)
    raise ValueError(f"unknown reward_type {kind!r}; valid: {', '.join(REWARD_TYPES)}")


def score_trajectory(traj: Any, cfg: Config) -> None:
    """Fill traj.reward (outcome only), traj.em, traj.f1 and traj.format_score in place.

    Reads traj.answer, traj.example.answers, traj.answer_ok and traj.tool_ok. Process rewards are not added
    to traj.reward: they stay per turn in traj.process_rewards and enter through `token_rewards`.
    """
    answers = getattr(traj.example, "answers", None)
    traj.em = exact_match(traj.answer, answers)
    traj.f1 = f1_score(traj.answer, answers)
    traj.format_score = format_score(traj.answer_ok, traj.tool_ok)
    traj.reward = outcome_reward(traj.answer, answers, traj.answer_ok, traj.tool_ok, cfg)


def _last_action_index(action_mask: Sequence[int]) -> int:
    """Index of the last action token; the last token when the trajectory has none (its reward then lands
    on a token that no action-only estimator credits, which is right: nothing was sampled)."""
    for i in range(len(action_mask) - 1, -1, -1):
        if action_mask[i]:
            return i
    return len(action_mask) - 1


def token_rewards(trajs: Sequence[Any], cfg: Config, seq_len: int) -> torch.Tensor:
    """Per-token rewards in the log-prob layout: (B, seq_len - 1), float32, column j = token j+1.

    seq_len is the padded length T of token_ids. Placed at (token position - 1):
    - the outcome reward `traj.reward` (call `score_trajectory` first; an unscored trajectory is scored
      here) at the last action token;
    - the env's step reward `traj.process_rewards[i]` at `traj.turn_ends[i]`, as it is: the env has already
      applied `cfg.process_reward_weight`, `cfg.use_process_reward` and `cfg.format_penalty`.
    Token 0 is never predicted, so a reward there cannot be placed (an error: actions follow a prompt).
    """
    out = torch.zeros(len(trajs), max(seq_len - 1, 0))  # (B, T-1)
    for b, traj in enumerate(trajs):
        n = len(traj.token_ids)
        if n == 0:
            raise ValueError(f"trajectory {b} has no tokens")
        if n > seq_len:
            raise ValueError(f"trajectory {b} has {n} tokens but seq_len is {seq_len}")
        if getattr(traj, "reward", None) is None:
            score_trajectory(traj, cfg)
        ends, rewards = list(traj.turn_ends), list(traj.process_rewards)
        if len(ends) != len(rewards):
            raise ValueError(
                f"trajectory {b}: {len(ends)} turn_ends but {len(rewards)} process_rewards (one per turn)"
            )
        placed = [(_last_action_index(traj.action_mask), float(traj.reward))]
        placed += [(int(pos), float(r)) for pos, r in zip(ends, rewards)]
        for pos, r in placed:
            if not 1 <= pos < n:
                raise ValueError(f"trajectory {b}: reward position {pos} outside tokens 1..{n - 1}")
            out[b, pos - 1] += r
    return out


def trajectory_scores(trajs: Sequence[Any], cfg: Config) -> torch.Tensor:
    """Score of each trajectory: outcome reward + its step rewards (process rewards and format penalties, as
    the env returned them). (B,) float32, equal to `token_rewards(trajs, cfg, T).sum(-1)` for any T >= the
    longest trajectory, i.e. the score `algos.compute_advantages` reads. The trainer logs its mean as
    "reward". An unscored trajectory is scored first, as in `token_rewards`.
    """
    T = max((len(t.token_ids) for t in trajs), default=1)
    return token_rewards(trajs, cfg, T).sum(-1)  # (B,)
