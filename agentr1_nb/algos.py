"""Algorithms: the training batch, the advantage estimators of the paper's table, the clipped policy loss
with KL to the reference, PPO's value head and value loss.

Layout of every per-token tensor (read this first)
--------------------------------------------------
A trajectory is one token sequence `token_ids` of length T: prompt, then action tokens (sampled by the
policy) interleaved with observation tokens (tool responses, chat headers, appended by the environment).
A causal LM predicts token t from tokens < t, so log-probs come as (B, T-1) with **index j = token j+1**.
Every per-token tensor used here follows that layout, with L = T-1:

    input_ids, attention_mask          (B, T)   right-padded
    action_mask                        (B, L)   1 where token j+1 was sampled by the policy
    response_mask                      (B, L)   1 where token j+1 is after the prompt (actions + observations)
    old_logprobs, logp, ref_logp       (B, L)   log pi(token j+1 | tokens <= j)
    token_rewards, values, advantages  (B, L)   reward / value / advantage of the step that emits token j+1

`values` therefore come from the hidden state at position j (it has seen tokens <= j): `values_from_hidden`
drops the last position.

Masks (the paper's two ablation switches)
-----------------------------------------
- advantage mask (`advantage_mask`, from `Config.advantage_mask`): returns / GAE run over the action tokens
  only, as if they were consecutive timesteps (observation tokens are skipped; a reward on a skipped token
  counts for the action step before it), and advantages are zero elsewhere. Off: the recursion runs over
  every response token, and observation tokens get advantages too (they only matter for the loss when the
  loss mask is off as well).
- loss mask (`loss_mask`, from `Config.loss_mask`): the policy-gradient term is aggregated over action tokens
  only. Off: over all response tokens.

Arguments, not the config
-------------------------
The functions here take the scalars they need, never the whole `Config`; each keyword carries the name of
the `Config` field it comes from, so a caller writes, for instance::

    adv, ret = compute_advantages(cfg.algo, rewards, action_mask, response_mask, group, values,
                                  advantage_mask=cfg.advantage_mask, norm_adv_by_std=cfg.norm_adv_by_std,
                                  gamma=cfg.gamma, lam=cfg.lam)

The choices (`ALGOS`, `KL_ESTIMATORS`, `LOSS_AGGS`) are defined once in `config` and re-exported here.

Departures from the paper (Agent-R1 on verl, full fine-tuning of Qwen2.5-3B)
---------------------------------------------------------------------------
- LoRA (optionally on 4-bit weights) instead of full fine-tuning, so the learning rate is larger than the
  paper's 1e-6 (see `Config.lr`); the reference policy is the base model with the adapter disabled.
- KL to the reference is a *loss* term for every estimator (verl's `use_kl_loss`, low-variance k3,
  coefficient 0.001 in the paper), never folded into the rewards. OpenRLHF's REINFORCE++ folds a per-token
  KL penalty into the rewards before the returns; we keep it in the loss so the five estimators differ only
  in their advantages.
- The KL term is always computed on action tokens, also when the loss mask is off: observation tokens are not
  sampled from the policy, so a KL on them measures nothing (a failure mode seen in peers).
- Outcome-level estimators (GRPO, RLOO, REINFORCE++ baseline) use the trajectory score = the sum of its token
  rewards (outcome + process), broadcast to its action tokens, as Agent-R1's code does for GRPO. Process
  rewards therefore change a trajectory's score, not the credit of individual turns; REINFORCE++ and PPO see
  them per token through their returns.
- A group of size 1, or a group whose scores are all equal, gets advantage exactly 0 (verl gives a singleton
  group its raw score). GRPO divides by the unbiased group std (torch.std, as verl) + eps.
- REINFORCE++ and PPO advantages are whitened over the batch's masked tokens (unbiased variance), as verl
  does; REINFORCE++ baseline whitens the group-centred scores the same way.
- Default aggregation is "token_mean" over all masked tokens of the batch (verl's default). With gradient
  accumulation each micro-batch is averaged separately, so the training loop weighs micro-batches by tokens
  if it wants the exact batch token mean.
- PPO's critic is a zero-initialised linear head on the policy's final hidden states, not a separate critic
  model as in the paper.
- When the loss mask is off, the old log-prob of an observation token is taken as the current one (ratio 1):
  the rollout records no log-prob for tokens it did not sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

# the choices are defined once in config; importing them here also re-exports them (`algos.ALGOS`)
from .config import ALGOS, KL_ESTIMATORS, LOSS_AGGS, Algo, KlEstimator, LossAgg


# --------------------------------------------------------------------------------------------- the batch
def batch_from_trajectories(trajs: Sequence[Any], pad_id: int) -> dict:
    """Collate trajectories into right-padded tensors in the layout described in the module docstring.

    Returns input_ids (B, T) long, attention_mask (B, T) long, action_mask (B, L) float, response_mask
    (B, L) float, old_logprobs (B, L) float, group (B,) long; and trunk_hidden (B, T, H) when every
    trajectory carries the rollout's hidden states (`Trajectory.trunk_hidden`, zeros where no forward read
    a token: its last). Rewards are not part of it: the caller adds `rewards.token_rewards(trajs, cfg, T)`
    (B, L), which is in the same layout.
    """
    if not trajs:
        raise ValueError("batch_from_trajectories needs at least one trajectory")
    for b, t in enumerate(trajs):
        n = len(t.token_ids)
        if n == 0 or len(t.action_mask) != n or len(t.logprobs) != n:
            raise ValueError(
                f"trajectory {b}: token_ids ({n}), action_mask ({len(t.action_mask)}) and logprobs "
                f"({len(t.logprobs)}) must be non-empty and of equal length"
            )
    B, T = len(trajs), max(len(t.token_ids) for t in trajs)
    input_ids = torch.full((B, T), int(pad_id), dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros(B, T, dtype=torch.long)  # (B, T)
    action = torch.zeros(B, T)  # (B, T) in token positions, shifted below
    response = torch.zeros(B, T)
    logprobs = torch.zeros(B, T)
    for b, t in enumerate(trajs):
        n = len(t.token_ids)
        input_ids[b, :n] = torch.tensor(t.token_ids, dtype=torch.long)
        attention_mask[b, :n] = 1
        action[b, :n] = torch.tensor(t.action_mask, dtype=torch.float32)
        response[b, int(t.prompt_len) : n] = 1.0
        logprobs[b, :n] = torch.tensor(t.logprobs, dtype=torch.float32)
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "action_mask": action[:, 1:],  # (B, L): index j = token j+1
        "response_mask": response[:, 1:],  # (B, L)
        "old_logprobs": logprobs[:, 1:] * action[:, 1:],  # (B, L)
        "group": torch.tensor([int(t.group) for t in trajs], dtype=torch.long),  # (B,)
    }
    trunks = [getattr(t, "trunk_hidden", None) for t in trajs]
    if all(h is not None and h.shape[0] >= len(t.token_ids) - 1 for h, t in zip(trunks, trajs)):
        trunk = trunks[0].new_zeros(B, T, trunks[0].shape[-1])  # (B, T, H)
        for b, h in enumerate(trunks):
            trunk[b, : h.shape[0]] = h
        batch["trunk_hidden"] = trunk
    return batch


# ------------------------------------------------------------------------------------------ helpers
def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over mask == 1 (0 where the mask is empty, never NaN)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over the masked entries (unbiased variance, 0 with < 2 entries);
    zero outside the mask."""
    n = mask.sum()
    mean = (x * mask).sum() / n.clamp(min=1)
    var = ((x - mean) ** 2 * mask).sum() / (n - 1).clamp(min=1)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def advantage_token_mask(
    action_mask: torch.Tensor, response_mask: torch.Tensor, advantage_mask: bool = True
) -> torch.Tensor:
    """The steps the returns / GAE run over (and the value loss is taken on): action tokens with the
    advantage mask (the paper), every response token without. (B, L), (B, L) -> (B, L) float."""
    return (action_mask if advantage_mask else response_mask).float()


def loss_token_mask(
    action_mask: torch.Tensor, response_mask: torch.Tensor, loss_mask: bool = True
) -> torch.Tensor:
    """The tokens the policy-gradient term is aggregated over: action tokens with the loss mask (the paper),
    every response token without. The training loop weighs micro-batches with the same mask.
    (B, L), (B, L) -> (B, L) float."""
    return (action_mask if loss_mask else response_mask).float()


def _groups(group: torch.Tensor) -> list[torch.Tensor]:
    """Index tensors of the rows of each group."""
    return [torch.nonzero(group == g, as_tuple=True)[0] for g in torch.unique(group)]


# -------------------------------------------------------------------------------- outcome estimators
def grpo_advantages(
    scores: torch.Tensor, group: torch.Tensor, norm_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """GRPO: each trajectory's score against its group's mean.

    Key equation, for the G samples o_1..o_G of one question with scores r_1..r_G::

        A_i = (r_i - mean(r)) / (std(r) + eps)      # norm_by_std (GRPO; std is unbiased, as torch.std)
        A_i =  r_i - mean(r)                        # not norm_by_std (Dr. GRPO)

    The group mean is the baseline a critic would otherwise learn. A group of size 1 or with equal scores
    gets exactly 0 (no signal, and no 0/0). scores (B,), group (B,) -> (B,).
    """
    s = scores.double()
    adv = torch.zeros_like(s)
    for idx in _groups(group):
        r = s[idx]
        if r.numel() < 2 or torch.all(r == r[0]):
            continue
        a = r - r.mean()
        adv[idx] = a / (r.std() + eps) if norm_by_std else a
    return adv.to(scores.dtype)


def rloo_advantages(scores: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """RLOO: each trajectory's score against the mean of the *other* samples of its question.

    Key equation: A_i = r_i - 1/(G-1) sum_{j != i} r_j  =  G/(G-1) (r_i - mean(r)).
    Groups of size 1 (no other sample) get 0. scores (B,), group (B,) -> (B,).
    """
    s = scores.double()
    adv = torch.zeros_like(s)
    for idx in _groups(group):
        r, G = s[idx], idx.numel()
        if G < 2:
            continue
        adv[idx] = r - (r.sum() - r) / (G - 1)
    return adv.to(scores.dtype)


# ---------------------------------------------------------------------------- per-token estimators
def gae_advantages(
    token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the steps where mask == 1.

    Key equations, over the masked steps k = 1..n of a row taken as consecutive timesteps (V_{n+1} = 0)::

        delta_k = r_k + gamma V_{k+1} - V_k
        A_k     = delta_k + gamma lam A_{k+1}
        R_k     = A_k + V_k                       # the value target

    Tokens with mask == 0 are skipped: they neither discount nor bootstrap, and a reward sitting on one is
    added (undiscounted) to the masked step before it. With values = 0 and lam = 1, A_k is the discounted
    return-to-go sum_{k' >= k} gamma^(k'-k) r_k' (used by REINFORCE++).
    token_rewards, values, mask (B, L) -> advantages (B, L), returns (B, L), both zero where mask == 0.
    """
    r, v, m = token_rewards.double(), values.double(), mask.double()
    B, L = r.shape
    adv = torch.zeros_like(r)  # (B, L)
    last_gae = torch.zeros(B, dtype=r.dtype, device=r.device)  # A_{k+1}
    next_value = torch.zeros(B, dtype=r.dtype, device=r.device)  # V_{k+1}
    pending = torch.zeros(B, dtype=r.dtype, device=r.device)  # rewards seen on skipped tokens after step k
    for t in reversed(range(L)):
        step = m[:, t] > 0
        reward = r[:, t] + pending
        delta = reward + gamma * next_value - v[:, t]
        gae = delta + gamma * lam * last_gae
        adv[:, t] = torch.where(step, gae, torch.zeros_like(gae))
        last_gae = torch.where(step, gae, last_gae)
        next_value = torch.where(step, v[:, t], next_value)
        pending = torch.where(step, torch.zeros_like(reward), reward)
    returns = (adv + v) * m
    return adv.to(token_rewards.dtype), returns.to(token_rewards.dtype)


def discounted_returns(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Return-to-go over the masked steps: G_k = r_k + gamma G_{k+1}. (B, L) -> (B, L)."""
    adv, _ = gae_advantages(token_rewards, torch.zeros_like(token_rewards), mask, gamma, 1.0)
    return adv


def reinforce_pp_advantages(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """REINFORCE++ (Hu 2025, as in OpenRLHF / verl): per-token discounted return-to-go, whitened over the
    batch (global normalisation instead of a critic or a group baseline).

    Key equations: G_t = sum_{t' >= t} gamma^(t'-t) r_t';  A_t = (G_t - mean_batch G) / std_batch G.
    The KL penalty is not folded into r_t here (see the module docstring): it is a loss term.
    (B, L) -> (B, L).
    """
    return masked_whiten(discounted_returns(token_rewards, mask, gamma).double(), mask.double()).to(
        token_rewards.dtype
    )


def reinforce_pp_baseline_advantages(
    scores: torch.Tensor, group: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """REINFORCE++ with baseline: subtract the group mean of the scores, broadcast to the masked tokens,
    then whiten over the batch's masked tokens (verl's `reinforce_plus_plus_baseline`).

    Key equations: a_i = r_i - mean_group(r);  A_{i,t} = (a_i - mean_batch a) / std_batch a.
    scores (B,), group (B,), mask (B, L) -> (B, L).
    """
    s = scores.double()
    centred = torch.zeros_like(s)
    for idx in _groups(group):
        if idx.numel() >= 2:
            centred[idx] = s[idx] - s[idx].mean()
    m = mask.double()
    return masked_whiten(centred[:, None] * m, m).to(scores.dtype)


def compute_advantages(
    algo: Algo,
    token_rewards: torch.Tensor,
    action_mask: torch.Tensor,
    response_mask: torch.Tensor,
    group: torch.Tensor,
    values: torch.Tensor | None = None,
    *,
    advantage_mask: bool = True,
    norm_adv_by_std: bool = True,
    gamma: float = 1.0,
    lam: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns of estimator `algo` (one of `ALGOS`), over the steps `advantage_token_mask`
    selects (action tokens with `advantage_mask`, every response token without).

    token_rewards (B, L), action_mask (B, L), response_mask (B, L), group (B,), values (B, L) (PPO only)
    -> advantages (B, L), returns (B, L). Returns are the value targets for PPO; for the other estimators
    they are the quantity the advantage was built from (return-to-go, or the advantage itself).
    `norm_adv_by_std` is read by GRPO only, `gamma` by REINFORCE++ and PPO, `lam` by PPO.
    The trajectory score the outcome-level estimators use is token_rewards.sum(-1), the same number as
    `rewards.trajectory_scores`.
    """
    mask = advantage_token_mask(action_mask, response_mask, advantage_mask)  # (B, L)
    token_rewards = token_rewards.float()
    scores = token_rewards.sum(-1)  # (B,): outcome + process rewards of each trajectory
    if algo == "grpo":
        adv = grpo_advantages(scores, group, norm_adv_by_std)[:, None] * mask
        return adv, adv.clone()
    if algo == "rloo":
        adv = rloo_advantages(scores, group)[:, None] * mask
        return adv, adv.clone()
    if algo == "reinforce++":
        returns = discounted_returns(token_rewards, mask, gamma)
        return reinforce_pp_advantages(token_rewards, mask, gamma), returns
    if algo == "reinforce++_baseline":
        adv = reinforce_pp_baseline_advantages(scores, group, mask)
        return adv, scores[:, None] * mask
    if algo == "ppo":
        if values is None:
            raise ValueError("algo='ppo' needs values (B, L) from the value head")
        if values.shape != token_rewards.shape:
            raise ValueError(
                f"values {tuple(values.shape)} must match token_rewards {tuple(token_rewards.shape)}"
            )
        adv, returns = gae_advantages(token_rewards, values.float(), mask, gamma, lam)
        adv = masked_whiten(adv.double(), mask.double()).float()
        return adv, returns
    raise ValueError(f"unknown algo {algo!r}; valid: {', '.join(ALGOS)}")


# ------------------------------------------------------------------------------------------ the loss
def aggregate(x: torch.Tensor, mask: torch.Tensor, how: LossAgg) -> torch.Tensor:
    """Reduce a (B, L) per-token loss to a scalar.

    token_mean: sum over all masked tokens / their count (long answers weigh more);
    seq_mean_token_mean: mean over sequences of each sequence's token mean (every trajectory weighs the same);
    seq_mean_token_sum: mean over sequences of each sequence's token sum.
    Sequences with no masked token are left out; an empty mask gives 0.
    """
    if how == "token_mean":
        return masked_mean(x, mask)
    has = (mask.sum(-1) > 0).to(x.dtype)  # (B,)
    if how == "seq_mean_token_mean":
        per_seq = masked_mean(x, mask, dim=-1)
    elif how == "seq_mean_token_sum":
        per_seq = (x * mask).sum(-1)
    else:
        raise ValueError(f"unknown loss_agg {how!r}; valid: {', '.join(LOSS_AGGS)}")
    return (per_seq * has).sum() / has.sum().clamp(min=1)


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: KlEstimator) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman's k1, k2, k3).

    kl (k1): log r with log r = logp - ref_logp (unbiased, high variance, can be negative);
    mse (k2): 0.5 (log r)^2;
    low_var_kl (k3): exp(-log r) - 1 + log r (unbiased, >= 0), clamped to [-10, 10] as verl does.
    (B, L) -> (B, L).
    """
    log_ratio = logp - ref_logp
    if estimator == "kl":
        return log_ratio
    if estimator == "mse":
        return 0.5 * log_ratio**2
    if estimator == "low_var_kl":
        kl = (-log_ratio).clamp(-20, 20)
        return (torch.exp(kl) - kl - 1).clamp(-10, 10)
    raise ValueError(f"unknown kl_estimator {estimator!r}; valid: {', '.join(KL_ESTIMATORS)}")


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    action_mask: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    loss_mask: bool = True,
    loss_agg: LossAgg = "token_mean",
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: KlEstimator = "low_var_kl",
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate + KL to the reference - entropy bonus.

    Key equations, per token t (epsilon = clip_eps, beta = kl_coef)::

        ratio_t = exp(logp_t - old_logp_t)
        L_pg    = agg( max(-A_t ratio_t, -A_t clip(ratio_t, 1 - eps, 1 + eps)) )   over the loss mask
        L       = L_pg + beta agg(KL_t)  - entropy_coef agg(H_t)                     KL, H over action tokens

    logp (B, L) carries the gradient; old_logp, advantages, ref_logp (B, L) are constants; action_mask and
    response_mask (B, L) are the batch's masks: the loss-mask switch is applied here (`loss_token_mask`,
    which the loop also uses to weigh micro-batches), so L_pg runs over the action tokens with `loss_mask`
    and over every response token without. `agg` is `aggregate(., ., loss_agg)`; the KL term is left out
    when ref_logp is None or kl_coef == 0, the entropy bonus when entropy is None (entropy (B, L)).
    Returns (loss scalar, metrics: loss, pg_loss, kl, clip_frac, approx_kl, ratio_mean[, entropy]).
    clip_frac is the share of loss-mask tokens where the clipped term is the active one; approx_kl is the
    k3 estimate of KL(old || new) over the same tokens.
    """
    logp = logp.float()
    action = action_mask.float()  # (B, L)
    pg_mask = loss_token_mask(action, response_mask, loss_mask)  # (B, L)
    if not loss_mask:
        # the rollout has no log-prob for tokens it did not sample: treat them as on-policy (ratio 1)
        old_logp = torch.where(action > 0, old_logp.float(), logp.detach())
    old_logp, advantages = old_logp.float().detach(), advantages.float().detach()

    log_ratio = (logp - old_logp).clamp(-20, 20)  # (B, L)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    pg_loss = aggregate(torch.maximum(unclipped, clipped), pg_mask, loss_agg)
    loss = pg_loss

    kl = torch.zeros((), dtype=logp.dtype)
    if ref_logp is not None and kl_coef != 0:
        kl = aggregate(kl_penalty(logp, ref_logp.float().detach(), kl_estimator), action, loss_agg)
        loss = loss + kl_coef * kl

    with torch.no_grad():
        metrics = {
            "pg_loss": pg_loss.item(),
            "kl": kl.item(),
            "clip_frac": masked_mean((clipped > unclipped).float(), pg_mask).item(),
            "approx_kl": masked_mean(ratio - 1 - log_ratio, pg_mask).item(),
            "ratio_mean": masked_mean(ratio, pg_mask).item(),
        }
    if entropy is not None:
        ent = aggregate(entropy.float(), action, loss_agg)
        if entropy_coef != 0:
            loss = loss - entropy_coef * ent
        metrics["entropy"] = ent.item()
    metrics["loss"] = loss.item()
    return loss, metrics


# ------------------------------------------------------------------------------------- PPO's critic
class ValueHead(nn.Module):
    """V(s): a linear map from the policy's last hidden state to a scalar (PPO's critic shares the LoRA
    trunk with the actor; the paper trains a separate critic model)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1)


def values_from_hidden(head: ValueHead, hidden_states: torch.Tensor) -> torch.Tensor:
    """Values in the log-prob layout: hidden_states (B, T, H) -> (B, T-1), index j = the state before token
    j+1 (position j has seen tokens <= j)."""
    return head(hidden_states[:, :-1]).float()


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float
) -> torch.Tensor:
    """Clipped value loss (PPO, as verl): 0.5 mean_t max((V - R)^2, (V_clip - R)^2) over the mask, with
    V_clip = V_old + clip(V - V_old, -clip, +clip). clip <= 0 turns clipping off. mask: the steps the GAE
    ran over (`advantage_token_mask`). (B, L) -> scalar."""
    values, returns, old_values = values.float(), returns.float().detach(), old_values.float().detach()
    loss = (values - returns) ** 2
    if clip > 0:
        v_clip = old_values + (values - old_values).clamp(-clip, clip)
        loss = torch.maximum(loss, (v_clip - returns) ** 2)
    return 0.5 * masked_mean(loss, mask.float())


# ------------------------------------------------------------------------------------------ guards
def is_finite_loss(loss: Any) -> bool:
    """True if the loss is a finite number (the training loop skips and logs the step otherwise)."""
    if loss is None:
        return False
    if isinstance(loss, torch.Tensor):
        return loss.numel() > 0 and bool(torch.isfinite(loss.detach()).all())
    try:
        return bool(torch.isfinite(torch.tensor(float(loss))))
    except (TypeError, ValueError):
        return False
