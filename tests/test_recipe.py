"""The recipe's levers: kind-balanced question draws (training and warm-up), the evaluation by kind, and the
cosine learning-rate schedule."""

from collections import Counter

import numpy as np
import pytest

from agentr1_nb.config import get_config
from agentr1_nb.evaluate import eval_subset
from agentr1_nb.sft import balanced_picks
from agentr1_nb.train import QuestionSampler, lr_factor
from agentr1_nb.world import load_examples


def test_balanced_sampler_takes_every_kind_alike_and_covers_the_pass():
    kinds = ["a"] * 12 + ["b"] * 6 + ["c"] * 3
    sampler = QuestionSampler(len(kinds), seed=3, kinds=kinds)
    first = sampler.next(9)  # three rounds while every kind has questions left
    assert Counter(kinds[i] for i in first) == {"a": 3, "b": 3, "c": 3}
    rest = sampler.next(len(kinds) - 9)
    assert sorted(first + rest) == list(range(len(kinds)))  # a pass is every question once
    assert sampler.next(1) and sampler.epoch == 1


def test_balanced_sampler_resumes_where_it_was():
    kinds = ["x", "y"] * 5
    a = QuestionSampler(10, seed=0, kinds=kinds)
    a.next(3)
    b = QuestionSampler(10, seed=0, kinds=kinds)
    b.load_state_dict(a.state_dict())
    assert a.next(12) == b.next(12)


def test_one_kind_or_no_kinds_draws_as_before():
    plain = QuestionSampler(8, seed=1).next(8)
    assert QuestionSampler(8, seed=1, kinds=["k"] * 8).next(8) == plain
    assert plain == np.random.default_rng(1).permutation(8).tolist()
    with pytest.raises(ValueError, match="3 kinds for 8 questions"):
        QuestionSampler(8, seed=1, kinds=["a", "b", "c"])


def test_balanced_warmup_picks_each_kind_about_equally():
    cfg = get_config("cpu_demo")
    train = load_examples(cfg, "train")
    picks = balanced_picks(np.random.default_rng(0), train, 4000)
    share = Counter(train[i].kind for i in picks)
    assert set(share) == {"single", "bridge", "comparison", "3hop"}
    assert all(800 < n < 1200 for n in share.values()), share  # 1000 each expected; 10% of 3-hop unbalanced


def test_eval_subset_by_kind_then_capped():
    cfg = get_config("cpu_demo", ["world_entities=180", "world_questions=1200", "eval_per_kind=30"])
    held = load_examples(cfg, "eval")
    chosen = eval_subset(held, cfg.replace(eval_questions=1000))
    assert Counter(q.kind for q in chosen) == {"single": 30, "bridge": 30, "comparison": 30, "3hop": 30}
    assert [q.id for q in chosen] == [q.id for q in held if q in chosen]  # held-out order kept
    assert len(eval_subset(held, cfg.replace(eval_questions=7))) == 7
    plain = cfg.replace(eval_per_kind=0, eval_questions=50)
    assert [q.id for q in eval_subset(held, plain)] == [q.id for q in held[:50]]


def test_lr_schedules():
    const = get_config("cpu_demo", ["steps=20", "warmup_steps=5"])
    assert [lr_factor(const, s) for s in range(7)] == [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0]
    cos = const.replace(lr_schedule="cosine", min_lr_ratio=0.1)
    f = [lr_factor(cos, s) for s in range(20)]
    assert f[:5] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert all(a >= b for a, b in zip(f[4:], f[5:], strict=False))  # never rises after the warm-up
    assert f[-1] == pytest.approx(0.1) and lr_factor(cos, 30) == pytest.approx(0.1)  # past the end: the floor
    no_warm = const.replace(lr_schedule="cosine", warmup_steps=0, min_lr_ratio=0.0)
    assert lr_factor(no_warm, 19) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    "override, field",
    [
        ("lr_schedule=linear", "lr_schedule"),
        ("min_lr_ratio=1.5", "min_lr_ratio"),
        ("eval_per_kind=-1", "eval_per_kind"),
    ],
)
def test_bad_recipe_values_are_refused_by_name(override, field):
    with pytest.raises(ValueError, match=field):
        get_config("cpu_demo", [override])


def test_answer_account_splits_wrong_answers_by_where_they_come_from():
    from agentr1_nb.evaluate import answer_account

    def rec(kind, pred, gold, support, em, found=True, searches=2):
        return dict(
            kind=kind,
            prediction=pred,
            gold=[gold],
            supporting_titles=support,
            em=em,
            supporting_found=found,
            searches=searches,
        )

    records = [
        rec("comparison", "Ada Vel", "Ada Vel", ["Ada Vel", "Bo Kan"], 1.0),
        rec("comparison", "Bo Kan", "Ada Vel", ["Ada Vel", "Bo Kan"], 0.0),  # the other name
        rec("comparison", "Cy Dor", "Ada Vel", ["Ada Vel", "Bo Kan"], 0.0, found=False),  # a third name
        rec("comparison", None, "Ada Vel", ["Ada Vel", "Bo Kan"], 0.0, searches=4),
        rec("3hop", "Tarn", "Velmora", ["Acme", "Ada Vel", "Tarn"], 0.0),  # stopped at the city
    ]
    acc = answer_account(records)
    assert acc["comparison"] == {
        "n": 4,
        "em": 0.25,
        "support_found": 0.75,
        "searches": 2.5,
        "wrong_support": 0.25,
        "other": 0.25,
        "no_answer": 0.25,
    }
    assert acc["3hop"]["wrong_support"] == 1.0 and acc["3hop"]["other"] == 0.0
    assert answer_account([{"em": 1.0}]) == {}  # no kind: nothing to split
