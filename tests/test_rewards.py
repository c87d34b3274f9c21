"""Rewards: SQuAD normalisation, EM/F1 over aliases, the format score, eq. 6, token rewards."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from agentr1_nb.config import Config
from agentr1_nb.rewards import (
    exact_match,
    f1_score,
    format_score,
    normalize_answer,
    outcome_reward,
    score_trajectory,
    token_rewards,
    trajectory_scores,
)


@pytest.mark.parametrize(
    "raw, norm",
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  A  cat,   an apple ", "cat apple"),
        ("Theatre of the Absurd", "theatre of absurd"),  # "the" inside a word stays
        ("U.S.A.", "usa"),
        ("", ""),
        (None, ""),
        (1984, "1984"),
    ],
)
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_exact_match_aliases_and_empty():
    assert exact_match("the USA", ["United States", "U.S.A."]) == 1.0
    assert exact_match("US", ["United States", "USA"]) == 0.0
    assert exact_match("Paris", "paris.") == 1.0  # a bare string is one alias
    assert exact_match(None, ["x"]) == 0.0
    assert exact_match("", [""]) == 0.0
    assert exact_match("the", ["an"]) == 0.0  # both normalise to "": no credit for an empty prediction
    assert exact_match("x", []) == 0.0
    assert exact_match("x", None) == 0.0


def test_f1_hand_values():
    # pred 3 tokens, gold 2, 2 in common: P = 2/3, R = 1, F1 = 0.8
    assert f1_score("Barack Obama Jr", ["Barack Obama"]) == pytest.approx(0.8)
    # P = 1, R = 1/2, F1 = 2/3; the best alias wins
    assert f1_score("Obama", ["Barack Obama"]) == pytest.approx(2 / 3)
    assert f1_score("Obama", ["Barack Obama", "Obama"]) == 1.0
    assert f1_score("Michelle", ["Barack Obama"]) == 0.0
    assert f1_score(None, ["a b"]) == 0.0
    assert f1_score("  ", ["a b"]) == 0.0
    # repeated tokens are counted with multiplicity: common = min(2, 1) = 1, P = 1/2, R = 1
    assert f1_score("york york", ["york"]) == pytest.approx(2 / 3)


def test_format_score():
    assert format_score(True, True) == 1.0
    assert format_score(True, False) == 0.5
    assert format_score(False, True) == 0.5
    assert format_score(False, False) == 0.0


@pytest.mark.parametrize(
    "pred, answer_ok, tool_ok, expected",
    [
        ("Paris", True, True, 1.0),  # format 1, right -> EM = 1
        ("Lyon", True, True, 0.0),  # format 1, wrong -> EM = 0
        ("Paris", True, False, -0.5),  # format 0.5 -> -0.5 even when right
        ("Paris", False, True, -0.5),
        (None, False, False, -1.0),  # format 0 -> -1
    ],
)
def test_paper_composition_table(pred, answer_ok, tool_ok, expected):
    assert outcome_reward(pred, ["Paris"], answer_ok, tool_ok, Config()) == expected


def test_reward_types_em_f1_and_unknown():
    em, f1 = Config(reward_type="em"), Config(reward_type="f1")
    assert outcome_reward("Paris", ["Paris"], False, False, em) == 1.0  # not gated on format
    assert outcome_reward("Paris France", ["Paris"], True, True, f1) == pytest.approx(2 / 3)
    bad = Config()
    bad.reward_type = "bleu"  # past the Config's own check, which rejects it when built
    with pytest.raises(ValueError, match="reward_type"):
        outcome_reward("x", ["x"], True, True, bad)


def _traj(answer="Paris", answer_ok=True, tool_ok=True, n=10, process=(0.1, 0.0)):
    #            prompt   act   obs    act  obs
    action_mask = [0, 0, 0, 1, 1, 0, 0, 1, 1, 0][:n]
    return SimpleNamespace(
        example=SimpleNamespace(answers=["Paris", "City of Light"]),
        answer=answer,
        answer_ok=answer_ok,
        tool_ok=tool_ok,
        token_ids=list(range(100, 100 + n)),
        action_mask=action_mask,
        turn_ends=[4, 8],
        process_rewards=list(process),
    )


def test_score_trajectory_fills_fields():
    t = _traj(answer="city of light")
    score_trajectory(t, Config())
    assert (t.reward, t.em, t.f1, t.format_score) == (1.0, 1.0, 1.0, 1.0)
    bad = _traj(answer_ok=False)
    score_trajectory(bad, Config())
    assert bad.reward == -0.5 and bad.em == 1.0 and bad.format_score == 0.5


def test_token_rewards_positions():
    t = _traj()
    score_trajectory(t, Config())
    r = token_rewards([t], Config(), seq_len=12)
    assert r.shape == (1, 11)  # log-prob layout: column j = token j+1
    assert r[0, 7].item() == pytest.approx(1.0)  # outcome on the last action token 8 (+ 0.0 process)
    assert r[0, 3].item() == pytest.approx(0.1)  # process reward at the end of turn 1 (token 4)
    assert r.sum().item() == pytest.approx(1.1)


def test_process_reward_weight_and_switch_live_in_the_env():
    # the env returns final step rewards (weight, switch and format penalty applied; the switch itself is
    # tested in test_env.py); token_rewards places them unchanged under any config, so a format penalty
    # survives use_process_reward=False
    t = _traj(process=(0.1, -0.05))
    for cfg in (Config(use_process_reward=True, process_reward_weight=0.5), Config(use_process_reward=False)):
        r = token_rewards([t], cfg, seq_len=10)
        assert r[0, 3].item() == pytest.approx(0.1) and r[0, 7].item() == pytest.approx(1.0 - 0.05)


def test_token_rewards_scores_unscored_and_rejects_bad_input():
    t = _traj()  # no .reward attribute yet
    assert token_rewards([t], Config(), 10)[0, 7].item() == 1.0
    with pytest.raises(ValueError, match="seq_len"):
        token_rewards([_traj()], Config(), 5)
    with pytest.raises(ValueError, match="process_rewards"):
        token_rewards([_traj(process=(0.1,))], Config(), 10)
    far = _traj()
    far.turn_ends = [4, 30]
    with pytest.raises(ValueError, match="outside"):
        token_rewards([far], Config(), 10)


def test_token_rewards_without_actions_uses_last_token():
    t = _traj()
    t.action_mask = [0] * 10
    t.turn_ends, t.process_rewards = [], []
    assert token_rewards([t], Config(), 10)[0, 8].item() == 1.0  # token 9 -> column 8


def test_trajectory_scores_is_the_row_sum_of_token_rewards():
    # process rewards off, format penalty on: the env's step rewards then carry only the penalties
    # (-0.2 for a malformed first turn here), and they count in the score as in the token rewards
    cfg = Config(use_process_reward=False, format_penalty=-0.2)
    trajs = [
        _traj(process=(-0.2, 0.0)),
        _traj(answer="Lyon", process=(0.0, 0.0)),
        _traj(answer_ok=False, n=9, process=(0.0, -0.2)),
    ]
    scores = trajectory_scores(trajs, cfg)  # scores the unscored trajectories, as token_rewards does
    assert scores.shape == (3,) and scores.dtype == torch.float32
    assert scores.tolist() == pytest.approx([1.0 - 0.2, 0.0, -0.5 - 0.2])
    assert torch.equal(scores, token_rewards(trajs, cfg, 10).sum(-1))
    for T in (11, 64):  # any padded length >= the longest trajectory
        torch.testing.assert_close(scores, token_rewards(trajs, cfg, T).sum(-1))
    assert trajectory_scores([], cfg).shape == (0,)
