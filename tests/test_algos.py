"""Algorithms: the batch layout, every estimator on hand-computed groups, masks, the loss, KL, the guards."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from agentr1_nb.algos import (
    ALGOS,
    ValueHead,
    advantage_token_mask,
    aggregate,
    batch_from_trajectories,
    compute_advantages,
    discounted_returns,
    gae_advantages,
    grpo_advantages,
    is_finite_loss,
    kl_penalty,
    loss_token_mask,
    masked_whiten,
    policy_loss,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    rloo_advantages,
    value_loss,
    values_from_hidden,
)
from agentr1_nb.config import Config
from agentr1_nb.rewards import token_rewards, trajectory_scores

T_ = torch.tensor


def _traj(n_prompt, segments, group=0, answer="Paris", answer_ok=True, tool_ok=True, process=None):
    """A fake trajectory: `n_prompt` prompt tokens, then segments [("a", k) | ("o", k)] of k action or
    observation tokens. Log-probs are -0.5 on action tokens."""
    ids, mask, ends = list(range(10, 10 + n_prompt)), [0] * n_prompt, []
    for kind, k in segments:
        ids += [50 + len(ids) + i for i in range(k)]
        mask += [int(kind == "a")] * k
        if kind == "a":
            ends.append(len(ids) - 1)
    return SimpleNamespace(
        example=SimpleNamespace(answers=["Paris"]),
        group=group,
        prompt_len=n_prompt,
        token_ids=ids,
        action_mask=mask,
        logprobs=[-0.5 * m for m in mask],
        turn_ends=ends,
        process_rewards=list(process) if process is not None else [0.0] * len(ends),
        answer=answer,
        answer_ok=answer_ok,
        tool_ok=tool_ok,
    )


# ------------------------------------------------------------------------------------- batch layout
def test_batch_layout_is_shifted_and_right_padded():
    a = _traj(3, [("a", 2), ("o", 2), ("a", 1)], group=0, process=[0.1, 0.0])  # 8 tokens
    b = _traj(2, [("a", 2)], group=1, answer="Lyon")  # 4 tokens
    batch = batch_from_trajectories([a, b], pad_id=0)
    assert set(batch) == {
        "input_ids",
        "attention_mask",
        "action_mask",
        "response_mask",
        "old_logprobs",
        "group",
    }
    assert batch["input_ids"].shape == (2, 8) and batch["action_mask"].shape == (2, 7)
    assert batch["input_ids"][1, 4:].tolist() == [0] * 4
    assert batch["attention_mask"][1].tolist() == [1] * 4 + [0] * 4
    # column j = token j+1
    assert batch["action_mask"][0].tolist() == [0, 0, 1, 1, 0, 0, 1]
    assert batch["response_mask"][0].tolist() == [0, 0, 1, 1, 1, 1, 1]
    assert batch["response_mask"][1].tolist() == [0, 1, 1, 0, 0, 0, 0]
    assert batch["old_logprobs"][0].tolist() == [0, 0, -0.5, -0.5, 0, 0, -0.5]
    assert batch["group"].tolist() == [0, 1]
    # the rewards, placed by rewards.token_rewards, share the layout: outcome 1 at the last action token 7
    # -> column 6; process 0.1 at token 4 -> column 3
    rewards = token_rewards([a, b], Config(), batch["input_ids"].shape[1])
    assert rewards.shape == batch["action_mask"].shape
    assert rewards[0].tolist() == pytest.approx([0, 0, 0, 0.1, 0, 0, 1.0])
    assert rewards[1].tolist() == pytest.approx([0, 0, 0, 0, 0, 0, 0])  # wrong answer: 0
    assert rewards.sum(-1).tolist() == pytest.approx([1.1, 0.0])


def test_batch_carries_the_rollouts_trunk_states_only_when_every_row_has_them():
    a = _traj(3, [("a", 2), ("o", 2), ("a", 1)], group=0)  # 8 tokens
    b = _traj(2, [("a", 2)], group=1)  # 4 tokens
    assert "trunk_hidden" not in batch_from_trajectories([a, b], pad_id=0)
    a.trunk_hidden = torch.arange(7 * 3, dtype=torch.float32).reshape(7, 3)  # all but the last token
    assert "trunk_hidden" not in batch_from_trajectories([a, b], pad_id=0)  # b has none
    b.trunk_hidden = torch.ones(4, 3)
    trunk = batch_from_trajectories([a, b], pad_id=0)["trunk_hidden"]
    assert trunk.shape == (2, 8, 3)
    assert torch.equal(trunk[0, :7], a.trunk_hidden) and not trunk[0, 7].any()
    assert torch.equal(trunk[1, :4], b.trunk_hidden) and not trunk[1, 4:].any()
    b.trunk_hidden = torch.ones(2, 3)  # fewer than the tokens a forward read: unusable
    assert "trunk_hidden" not in batch_from_trajectories([a, b], pad_id=0)


def test_batch_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        batch_from_trajectories([], 0)
    bad = _traj(2, [("a", 2)])
    bad.logprobs = bad.logprobs[:-1]
    with pytest.raises(ValueError, match="equal length"):
        batch_from_trajectories([bad], 0)


def test_mask_switches():
    action = T_([[0, 1, 1, 0, 0, 1, 0]])
    response = T_([[0, 1, 1, 1, 1, 1, 1]])
    for fn in (advantage_token_mask, loss_token_mask):
        assert fn(action, response).tolist() == [[0.0, 1, 1, 0, 0, 1, 0]]  # on by default (the paper)
        assert fn(action, response, True).dtype == torch.float32
        assert fn(action, response, False).tolist() == [[0.0, 1, 1, 1, 1, 1, 1]]


# ------------------------------------------------------------------------- outcome estimators
def test_grpo_hand_computed():
    # group [1, 0, 0, 1]: mean 0.5, unbiased std sqrt(1/3) = 0.57735 -> +-0.5 / 0.57735 = +-0.866025
    scores, group = T_([1.0, 0.0, 0.0, 1.0]), T_([0, 0, 0, 0])
    expected = [0.866025, -0.866025, -0.866025, 0.866025]
    assert grpo_advantages(scores, group).tolist() == pytest.approx(expected, abs=1e-5)  # eps = 1e-6 in std
    # Dr. GRPO: no std -> +-0.5
    assert grpo_advantages(scores, group, norm_by_std=False).tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5])
    # group [1, 0, 0, 0]: mean 0.25, unbiased var (0.5625 + 3 * 0.0625) / 3 = 0.25, std 0.5
    assert grpo_advantages(T_([1.0, 0, 0, 0]), group).tolist() == pytest.approx(
        [1.5, -0.5, -0.5, -0.5], abs=1e-5
    )


def test_grpo_groups_are_independent_and_degenerate_groups_are_zero():
    scores = T_([1.0, -1.0, 0.3, 0.3, 0.3, 0.7])
    group = T_([7, 7, 2, 2, 2, 9])  # arbitrary ids; group 2 has zero variance, group 9 is a singleton
    adv = grpo_advantages(scores, group)
    assert torch.isfinite(adv).all()
    # group 7: mean 0, unbiased std sqrt(2) -> +-1/sqrt(2)
    assert adv.tolist() == pytest.approx([1 / math.sqrt(2), -1 / math.sqrt(2), 0, 0, 0, 0])


def test_rloo_hand_computed():
    # A_i = r_i - mean of the others: 1 - 0 = 1; 0 - 1/3
    adv = rloo_advantages(T_([1.0, 0, 0, 0, 5.0]), T_([0, 0, 0, 0, 1]))
    assert adv.tolist() == pytest.approx([1.0, -1 / 3, -1 / 3, -1 / 3, 0.0])  # singleton -> 0
    # the same as G/(G-1) (r - mean): 4/3 * (1 - 0.25) = 1; equal scores -> 0
    assert rloo_advantages(T_([2.0, 2.0]), T_([0, 0])).tolist() == [0.0, 0.0]


def test_reinforce_pp_returns_and_whitening():
    rewards = T_([[0.0, 0.0, 0.0, 1.0]])
    mask = T_([[1.0, 0.0, 1.0, 1.0]])  # token 1 is an observation: skipped, not a discount step
    # steps 0, 2, 3 with gamma 0.5: G = [0.25, 0.5, 1.0]
    assert discounted_returns(rewards, mask, 0.5).tolist() == [[0.25, 0.0, 0.5, 1.0]]
    # whitening: mean 7/12, unbiased var 0.291667 / 2 = 0.145833, std 0.381881
    adv = reinforce_pp_advantages(rewards, mask, 0.5)
    assert adv.tolist()[0] == pytest.approx([-0.872872, 0.0, -0.218218, 1.091089], abs=1e-5)


def test_reward_on_a_skipped_token_counts_for_the_action_before_it():
    # reward 0.5 on observation token 1 belongs to action step 0: G0 = 0.5 + 0.5 * G2, G2 = 0.5 * 1
    g = discounted_returns(T_([[0.0, 0.5, 0.0, 1.0]]), T_([[1.0, 0.0, 1.0, 1.0]]), 0.5)
    assert g.tolist() == [[0.75, 0.0, 0.5, 1.0]]


def test_reinforce_pp_baseline_hand_computed():
    scores, group = T_([1.0, 0.0, 1.0, 1.0]), T_([0, 0, 1, 1])
    mask = T_([[1.0, 1.0]] * 4)
    # centred scores [0.5, -0.5, 0, 0] (group 1 has zero variance), 2 tokens each: 8 tokens, mean 0,
    # sum of squares 4 * 0.25 = 1 -> unbiased var 1/7, std 0.377964 -> 0.5 / 0.377964 = 1.322876
    adv = reinforce_pp_baseline_advantages(scores, group, mask)
    assert adv[:, 0].tolist() == pytest.approx([1.322876, -1.322876, 0.0, 0.0], abs=1e-5)


def test_logged_reward_is_the_score_the_advantages_see():
    # process rewards off and a format penalty: the env's step rewards then hold only the penalty of the
    # malformed second turn of trajectory 0. The trainer logs the mean of `trajectory_scores`; it must be the
    # score GRPO reads from the token rewards (the old log, outcome + process rewards only when
    # use_process_reward, dropped the penalty)
    cfg = Config(use_process_reward=False, format_penalty=-0.1)
    trajs = [
        _traj(3, [("a", 2), ("o", 2), ("a", 1)], process=[0.0, -0.1]),  # right, one malformed call
        _traj(2, [("a", 2)], answer="Lyon"),  # wrong
        _traj(2, [("a", 3)]),  # right
    ]
    batch = batch_from_trajectories(trajs, pad_id=0)
    rewards = token_rewards(trajs, cfg, batch["input_ids"].shape[1])  # (B, L)
    scores = trajectory_scores(trajs, cfg)  # (B,)
    assert scores.tolist() == pytest.approx([0.9, 0.0, 1.0])
    assert torch.equal(scores, rewards.sum(-1))
    old_log = [t.reward + (sum(t.process_rewards) if cfg.use_process_reward else 0.0) for t in trajs]
    assert sum(old_log) / 3 != pytest.approx(scores.mean().item())
    adv, _ = compute_advantages("grpo", rewards, batch["action_mask"], batch["response_mask"], batch["group"])
    expected = grpo_advantages(scores, batch["group"])[:, None] * batch["action_mask"]
    torch.testing.assert_close(adv, expected, rtol=0, atol=0)


# ----------------------------------------------------------------------------- GAE / PPO
def test_gae_three_step_toy():
    # delta2 = 1 - 0.7 = 0.3;           A2 = 0.3
    # delta1 = 0.9 * 0.7 - 0.6 = 0.03;  A1 = 0.03 + 0.72 * 0.3 = 0.246
    # delta0 = 0.9 * 0.6 - 0.5 = 0.04;  A0 = 0.04 + 0.72 * 0.246 = 0.21712
    adv, ret = gae_advantages(T_([[0.0, 0.0, 1.0]]), T_([[0.5, 0.6, 0.7]]), T_([[1.0, 1.0, 1.0]]), 0.9, 0.8)
    assert adv.tolist()[0] == pytest.approx([0.21712, 0.246, 0.3])
    assert ret.tolist()[0] == pytest.approx([0.71712, 0.846, 1.0])


def test_gae_skips_observation_tokens_with_advantage_mask():
    rewards, values = T_([[0.0, 0.0, 0.0, 1.0]]), T_([[0.5, 0.6, 9.9, 0.7]])
    # action tokens 0, 1, 3: the observation's value 9.9 is ignored -> the 3-step toy again
    adv, _ = gae_advantages(rewards, values, T_([[1.0, 1.0, 0.0, 1.0]]), 0.9, 0.8)
    assert adv.tolist()[0] == pytest.approx([0.21712, 0.246, 0.0, 0.3])
    # without the advantage mask token 2 is a timestep: delta2 = 0.9 * 0.7 - 9.9 = -9.27, A2 = -9.054
    # delta1 = 0.9 * 9.9 - 0.6 = 8.31, A1 = 8.31 + 0.72 * -9.054 = 1.79112
    adv_all, _ = gae_advantages(rewards, values, T_([[1.0, 1.0, 1.0, 1.0]]), 0.9, 0.8)
    assert adv_all.tolist()[0][1:] == pytest.approx([1.79112, -9.054, 0.3])


def test_ppo_needs_values():
    z, ones = torch.zeros(1, 3), torch.ones(1, 3)
    with pytest.raises(ValueError, match="values"):
        compute_advantages("ppo", z, ones, ones, T_([0]))
    with pytest.raises(ValueError, match="match"):
        compute_advantages("ppo", z, ones, ones, T_([0]), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="unknown algo"):
        compute_advantages("dpo", z, ones, ones, T_([0]))


# ------------------------------------------------------------------------------------------ masks
def _toy_batch():
    # 4 trajectories, 2 questions; L = 8: prompt(1) act(2) obs(2) act(2) pad(1)
    action = T_([[0, 1, 1, 0, 0, 1, 1, 0]] * 4, dtype=torch.float32)
    response = T_([[0, 1, 1, 1, 1, 1, 1, 0]] * 4, dtype=torch.float32)
    rewards = torch.zeros(4, 8)
    rewards[:, 6] = T_([1.0, 0.0, 1.0, -1.0])
    rewards[0, 2] = 0.1  # a process reward
    values = torch.linspace(0, 1, 32).reshape(4, 8)
    return rewards, action, response, T_([0, 0, 1, 1]), values


@pytest.mark.parametrize("algo", ALGOS)
def test_advantages_zero_off_action_tokens(algo):
    rewards, action, response, group, values = _toy_batch()
    adv, ret = compute_advantages(algo, rewards, action, response, group, values, gamma=0.9)
    assert torch.isfinite(adv).all() and torch.isfinite(ret).all()
    assert (adv[action == 0] == 0).all()
    assert (adv[action == 1] != 0).any()


@pytest.mark.parametrize("algo", ALGOS)
def test_without_advantage_mask_observations_get_advantages(algo):
    rewards, action, response, group, values = _toy_batch()
    adv, _ = compute_advantages(
        algo, rewards, action, response, group, values, advantage_mask=False, gamma=0.9
    )
    obs = (response == 1) & (action == 0)
    assert (adv[obs] != 0).any()
    assert (adv[response == 0] == 0).all()  # prompt and padding stay zero


def test_grpo_broadcasts_outcome_plus_process_score():
    rewards, action, response, group, _ = _toy_batch()
    adv, _ = compute_advantages("grpo", rewards, action, response, group)
    # group 0 scores [1.1, 0.0]: +-0.55 / std([1.1, 0]) = +-0.55 / 0.777817 = +-0.707107
    assert adv[0, 1].item() == pytest.approx(0.707107, abs=1e-5) and adv[0, 6].item() == adv[0, 1].item()
    assert adv[1, 6].item() == pytest.approx(-0.707107, abs=1e-5)


@pytest.mark.parametrize("algo", ALGOS)
def test_zero_variance_is_finite(algo):
    _, action, response, _, values = _toy_batch()
    rewards = torch.zeros(4, 8)
    rewards[:, 6] = -1.0  # every trajectory scores the same
    adv, ret = compute_advantages(algo, rewards, action, response, T_([0, 0, 1, 1]), values)
    assert torch.isfinite(adv).all() and torch.isfinite(ret).all()
    if algo != "ppo":  # PPO's TD errors still differ through the values
        assert adv.abs().max().item() < 1e-6


def test_whitening_with_one_token_is_finite():
    out = masked_whiten(T_([[3.0, 7.0]]), T_([[0.0, 1.0]]))
    assert torch.isfinite(out).all() and out.tolist() == [[0.0, 0.0]]


# ------------------------------------------------------------------------------------------ loss
def test_aggregations_hand_computed():
    x = T_([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [9.0, 9.0, 9.0]])
    m = T_([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # the third row has no token: left out
    assert aggregate(x, m, "token_mean").item() == pytest.approx(10 / 4)
    assert aggregate(x, m, "seq_mean_token_mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate(x, m, "seq_mean_token_sum").item() == pytest.approx((6 + 4) / 2)
    assert aggregate(x, torch.zeros_like(m), "token_mean").item() == 0.0
    with pytest.raises(ValueError, match="loss_agg"):
        aggregate(x, m, "sum")


def test_clip_fraction_and_pg_loss_by_hand():
    ratio = T_([[1.5, 0.5, 1.1, 0.7]])
    adv = T_([[1.0, 1.0, -1.0, -1.0]])
    # per token max(-A r, -A clip(r)): 1.5 -> -1.2 (clipped), 0.5 -> -0.5, 1.1 -> 1.1, 0.7 -> 0.8 (clipped)
    ones = torch.ones(1, 4)
    loss, m = policy_loss(ratio.log(), torch.zeros(1, 4), adv, ones, ones, clip_eps=0.2)
    assert m["clip_frac"] == pytest.approx(0.5)
    assert m["pg_loss"] == pytest.approx((-1.2 - 0.5 + 1.1 + 0.8) / 4)
    assert loss.item() == pytest.approx(m["pg_loss"])
    assert m["ratio_mean"] == pytest.approx(0.95)


def test_kl_estimators():
    logp = torch.log(T_([0.2, 0.5, 0.9]))
    for est in ("low_var_kl", "kl", "mse"):
        assert kl_penalty(logp, logp.clone(), est).abs().max().item() == 0.0
    # log r = log 2: k1 = 0.693147, k2 = 0.5 * 0.480453 = 0.240227, k3 = 0.5 - 1 + 0.693147 = 0.193147
    lp, ref = T_([math.log(0.5)]), T_([math.log(0.25)])
    assert kl_penalty(lp, ref, "kl").item() == pytest.approx(0.693147, abs=1e-5)
    assert kl_penalty(lp, ref, "mse").item() == pytest.approx(0.240227, abs=1e-5)
    assert kl_penalty(lp, ref, "low_var_kl").item() == pytest.approx(0.193147, abs=1e-5)
    assert kl_penalty(T_([0.0]), T_([-50.0]), "low_var_kl").item() == 10.0  # clamped
    with pytest.raises(ValueError, match="kl_estimator"):
        kl_penalty(lp, ref, "js")


def test_kl_only_on_action_tokens_even_without_loss_mask():
    logp = torch.full((1, 4), -1.0)
    ref = T_([[-1.0, -1.0, -5.0, -5.0]])  # differs only on the observation tokens 2, 3
    action = T_([[1.0, 1.0, 0.0, 0.0]])
    for loss_mask in (True, False):
        _, m = policy_loss(
            logp,
            logp,
            torch.zeros(1, 4),
            action,
            torch.ones(1, 4),
            loss_mask=loss_mask,
            ref_logp=ref,
            kl_coef=0.5,
        )
        assert m["kl"] == 0.0


def test_loss_mask_switch_decides_which_tokens_get_gradient():
    logp = torch.zeros(1, 4, requires_grad=True)
    action = T_([[1.0, 1.0, 0.0, 0.0]])
    adv = torch.ones(1, 4)  # observation tokens carry advantages (advantage mask off)
    for loss_mask, expect_obs_grad in ((True, False), (False, True)):
        logp.grad = None
        loss, _ = policy_loss(logp, torch.zeros(1, 4), adv, action, torch.ones(1, 4), loss_mask=loss_mask)
        loss.backward()
        assert (logp.grad[0, :2] != 0).all()
        assert bool((logp.grad[0, 2:] != 0).any()) == expect_obs_grad
    assert loss_token_mask(action, torch.ones(1, 4), loss_mask=False).tolist() == [[1.0] * 4]


def test_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    B, L, V = 4, 6, 5
    logits = torch.nn.Parameter(torch.randn(B, L, V))
    tokens = torch.randint(0, V, (B, L))
    mask = torch.ones(B, L)
    mask[:, :2] = 0  # prompt
    adv = T_([1.0, -1.0, 0.5, -0.5])[:, None].expand(B, L) * mask

    def logp_of(lg):
        return torch.log_softmax(lg, -1).gather(-1, tokens[..., None]).squeeze(-1)  # (B, L)

    old = logp_of(logits).detach()
    ref = old.clone()
    opt = torch.optim.Adam([logits], lr=0.05)
    losses = []
    for _ in range(15):
        logp = logp_of(logits)
        entropy = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
        loss, metrics = policy_loss(
            logp,
            old,
            adv,
            mask,
            mask,
            clip_eps=0.2,
            ref_logp=ref,
            kl_coef=0.01,
            entropy=entropy,
            entropy_coef=0.001,
        )
        assert is_finite_loss(loss) and {"entropy", "approx_kl", "kl"} <= set(metrics)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    assert metrics["kl"] > 0 and metrics["approx_kl"] > 0 and metrics["clip_frac"] > 0
    new = logp_of(logits).detach()
    assert (new[0, 2:] > old[0, 2:]).all() and (new[1, 2:] < old[1, 2:]).all()  # A > 0 up, A < 0 down


# ------------------------------------------------------------------------------ value head / loss
def test_value_loss_by_hand_and_value_head_layout():
    # V = 1, V_old = 0, R = 2, clip 0.2: V_clip = 0.2 -> 0.5 * max(1, 3.24) = 1.62; unclipped: 0.5
    v, old, ret, m = T_([[1.0]]), T_([[0.0]]), T_([[2.0]]), T_([[1.0]])
    assert value_loss(v, old, ret, m, 0.2).item() == pytest.approx(1.62)
    assert value_loss(v, old, ret, m, 0.0).item() == pytest.approx(0.5)
    head = ValueHead(8)
    vals = values_from_hidden(head, torch.randn(2, 5, 8))
    assert vals.shape == (2, 4) and (vals == 0).all()  # zero-initialised critic


def test_is_finite_loss():
    assert is_finite_loss(torch.tensor(1.5))
    assert is_finite_loss(2.0)
    assert not is_finite_loss(torch.tensor(float("nan")))
    assert not is_finite_loss(torch.tensor([1.0, float("inf")]))
    assert not is_finite_loss(float("-inf"))
    assert not is_finite_loss(None)
    assert not is_finite_loss("loss")


def test_batch_layout_matches_token_logprobs_and_a_grpo_step_moves_the_policy(tiny_model, tokenizer):
    """End to end on the tiny LoRA model: the rollout's log-probs (index t in token_ids) land where
    `logprobs.token_logprobs` of the right-padded batch puts them (column t-1), and GRPO steps on the batch
    raise the log-prob of the better trajectory's actions and lower the worse one's."""
    from agentr1_nb.logprobs import token_logprobs

    torch.manual_seed(0)
    trajs = [
        _traj(4, [("a", 3), ("o", 2), ("a", 2)], group=0, answer="Paris"),  # right: A > 0
        _traj(3, [("a", 2)], group=0, answer="Lyon"),  # wrong: A < 0
    ]
    for t in trajs:  # real token ids and the log-probs a sampler would have recorded
        t.token_ids = torch.randint(100, 5000, (len(t.token_ids),)).tolist()
        with torch.no_grad():
            lp = token_logprobs(tiny_model, torch.tensor([t.token_ids]))[0]  # (T-1,): column j = token j+1
        t.logprobs = [0.0] + [float(x) * m for x, m in zip(lp, t.action_mask[1:])]
    batch = batch_from_trajectories(trajs, pad_id=tokenizer.pad_token_id)
    ids, am, act = batch["input_ids"], batch["attention_mask"], batch["action_mask"]
    rewards = token_rewards(trajs, Config(), ids.shape[1])  # (B, T-1)
    with torch.no_grad():
        fresh = token_logprobs(tiny_model, ids, am)  # (B, T-1)
    torch.testing.assert_close(fresh * act, batch["old_logprobs"], atol=1e-5, rtol=1e-5)

    adv, _ = compute_advantages("grpo", rewards, act, batch["response_mask"], batch["group"])
    assert adv[0][act[0] > 0].gt(0).all() and adv[1][act[1] > 0].lt(0).all()
    params = [p for p in tiny_model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    tiny_model.train()
    for _ in range(3):
        logp = token_logprobs(tiny_model, ids, am)
        loss, _ = policy_loss(
            logp,
            batch["old_logprobs"],
            adv,
            act,
            batch["response_mask"],
            ref_logp=batch["old_logprobs"],
            kl_coef=0.001,
        )
        assert is_finite_loss(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = token_logprobs(tiny_model.eval(), ids, am)
    gain = ((after - fresh) * act).sum(-1) / act.sum(-1)  # mean change of the action log-probs, (B,)
    assert gain[0] > 0 > gain[1]
