"""Evaluation harness: bootstrap intervals, summaries, run_eval's output and its errors and warnings."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from agentr1_nb import runs
from agentr1_nb.config import Config
from agentr1_nb.data import QAExample, make_passage
from agentr1_nb.evaluate import (
    SUMMARY_KEYS,
    CoverageWarning,
    bootstrap_ci,
    check_coverage,
    em_by_kind,
    load_eval_questions,
    summarize,
)
from agentr1_nb.runs import run_eval

# ----------------------------------------------------------------------------- bootstrap and summaries


def test_bootstrap_ci_degenerate_inputs():
    assert bootstrap_ci([1.0] * 30) == (1.0, 1.0)
    assert bootstrap_ci([0.0] * 5) == (0.0, 0.0)
    lo, hi = bootstrap_ci([])
    assert math.isnan(lo) and math.isnan(hi)
    assert bootstrap_ci([0, 1] * 20, seed=3) == bootstrap_ci([0, 1] * 20, seed=3)  # seeded


def test_bootstrap_ci_covers_the_true_mean_about_95_percent():
    rng = np.random.default_rng(0)
    p, n, reps = 0.3, 200, 200
    covered = 0
    for i in range(reps):
        lo, hi = bootstrap_ci(rng.random(n) < p, n_boot=1000, seed=i)
        assert lo <= hi
        covered += lo <= p <= hi
    assert 0.88 <= covered / reps <= 0.99


def _rec(em, seen, support, turns=1, searches=0, fmt=True):
    return {
        "em": em,
        "f1": em,
        "format_ok": fmt,
        "turns": turns,
        "searches": searches,
        "passages_seen": seen,
        "supporting_titles": support,
        "supporting_seen": [t for t in support if t in seen],
        "supporting_found": all(t in seen for t in support),
    }


def test_summarize_recall_counts_only_questions_with_known_support():
    recs = [
        _rec(1.0, ["A", "B"], ["A", "B"], turns=3, searches=2),  # all found
        _rec(0.0, ["A"], ["A", "C"], turns=2, searches=1),  # one of two
        _rec(0.0, ["D"], ["E"], fmt=False),  # none
        _rec(0.0, ["D"], []),  # unknown support: not counted in recall
    ]
    s = summarize(recs)
    assert s["n"] == 4 and s["em"] == 0.25 and s["format_ok"] == 0.75
    assert s["mean_turns"] == pytest.approx(7 / 4) and s["mean_searches"] == pytest.approx(3 / 4)
    assert s["recall_any"] == pytest.approx(2 / 3) and s["recall_all"] == pytest.approx(1 / 3)
    assert math.isnan(summarize([_rec(1.0, ["A"], [])])["recall_any"])


# ----------------------------------------------------------------------------- corpus coverage

PASSAGES = [
    make_passage("Brindle Abbey", "Brindle Abbey is a ruined monastery founded by Aldo Finch."),
    make_passage("Aldo Finch", "Aldo Finch was a monk born in Saltmere."),
]


def test_covered_questions_do_not_warn():
    ex = [QAExample("q1", "Who founded Brindle Abbey?", ["Aldo Finch"], ["Brindle Abbey"])]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cov = check_coverage(ex, PASSAGES)
    assert cov["titles_missing"] == 0 and cov["answers_missing"] == 0


def test_missing_supporting_titles_warn():
    ex = [QAExample(f"q{i}", "Where is Vantria?", ["Osk"], ["Vantria"]) for i in range(3)]
    with pytest.warns(CoverageWarning, match=r"lacks supporting passages of 3 of 3.*--corpus"):
        cov = check_coverage(ex, PASSAGES)
    assert cov["examples_titles_missing"][0]["missing"] == ["Vantria"]


def test_question_only_file_with_a_corpus_lacking_the_answers_warns():
    ex = [QAExample(f"q{i}", "Who is the mother of Tom Vey?", [f"Mira Vey {i}"]) for i in range(4)]
    with pytest.warns(CoverageWarning) as got:
        check_coverage(ex, PASSAGES)
    text = " ".join(str(w.message) for w in got)
    assert "answers of 4 of 4 questions occur in no passage" in text
    assert "recall_any cannot be measured" in text


def test_em_by_kind_pools_records_of_each_kind():
    recs = [
        {"kind": "bridge", "em": 1.0},
        {"kind": "bridge", "em": 0.0},
        {"kind": "single", "em": 1.0},
        {"em": 1.0},
    ]
    assert em_by_kind(recs) == {"bridge": 0.5, "single": 1.0}


def test_run_eval_refuses_an_unwritable_out_before_working(tiny_policy, tmp_path):
    """--out that is a file is a clear error before any evaluation runs (no results lost at the end)."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        run_eval(Config(dataset="generated", **FAST), "naive_rag", limit=1, out_dir=blocker)
    assert tiny_policy == []


# ----------------------------------------------------------------------------- run_eval


@pytest.fixture
def tiny_policy(tiny_model, tokenizer, monkeypatch):
    """run_eval with the tiny random model in place of the real one; records what load_policy received."""
    calls = []

    def fake_load_policy(cfg, adapter=None):
        calls.append({"adapter": adapter, "cfg": cfg})
        return tiny_model, tokenizer

    monkeypatch.setattr(runs, "load_policy", fake_load_policy)
    return calls


FAST = dict(max_tokens_per_turn=4, max_turns=2, eval_batch_size=4, world_entities=12, world_questions=40)


def test_run_eval_naive_rag_on_generated_world(tiny_policy, tmp_path):
    cfg = Config(dataset="generated", **FAST)
    out = run_eval(cfg, "naive_rag", limit=3, out_dir=tmp_path)
    assert tuple(out) == SUMMARY_KEYS
    assert out["dataset"] == "generated" and out["method"] == "naive_rag" and out["n"] == 3
    assert out["mean_turns"] == 1.0 and out["mean_searches"] == 0.0
    assert len(out["em_ci95"]) == 2 and 0.0 <= out["em"] <= 1.0
    lines = (tmp_path / "generated_naive_rag.jsonl").read_text().splitlines()
    recs = [json.loads(ln) for ln in lines]
    assert len(recs) == 3
    assert {"question", "gold", "prediction", "turns", "passages_seen"} <= set(recs[0])
    extra = json.loads((tmp_path / "generated_naive_rag.summary.json").read_text())
    assert extra["coverage"]["titles_missing"] == 0 and "recall_all" in extra and extra["limit"] == 3
    assert tiny_policy[0]["adapter"] is None


def test_run_eval_tool_call_is_multi_turn(tiny_policy, tmp_path):
    out = run_eval(Config(dataset="generated", **FAST), "tool_call", limit=2, out_dir=tmp_path)
    assert tuple(out) == SUMMARY_KEYS and out["n"] == 2
    assert 1.0 <= out["mean_turns"] <= 2.0
    assert (tmp_path / "generated_tool_call.jsonl").is_file()


def test_run_eval_prompt_style_sets_the_baselines_prompt(tiny_policy, tmp_path, monkeypatch):
    from agentr1_nb import baselines

    seen = []
    real = baselines.tool_call

    def spy(model, tok, examples, tools, cfg, prompt_style="zero_shot"):
        seen.append(prompt_style)
        return real(model, tok, examples, tools, cfg, prompt_style=prompt_style)

    monkeypatch.setattr(runs, "tool_call", spy)
    cfg = Config(dataset="generated", prompt_style="few_shot", **FAST)
    run_eval(cfg, "tool_call", limit=1, out_dir=tmp_path)  # default: the paper's zero-shot, whatever cfg says
    run_eval(cfg, "tool_call", limit=1, out_dir=tmp_path, prompt_style="few_shot")
    assert seen == ["zero_shot", "few_shot"]
    # each style keeps its own files, and the summary says which prompt was used
    assert (
        json.loads((tmp_path / "generated_tool_call.summary.json").read_text())["prompt_style"] == "zero_shot"
    )
    few = json.loads((tmp_path / "generated_tool_call_few_shot.summary.json").read_text())
    assert few["prompt_style"] == "few_shot"
    run_eval(
        cfg.replace(prompt_style="few_shot"), "naive_rag", limit=1, out_dir=tmp_path, prompt_style="zero_shot"
    )
    assert tiny_policy[-1]["cfg"].prompt_style == "zero_shot"
    with pytest.raises(ValueError, match="prompt_style"):
        run_eval(cfg, "naive_rag", limit=1, out_dir=tmp_path, prompt_style="two_shot")
    with pytest.raises(ValueError, match="adapter was trained with"):
        run_eval(cfg, "agent", adapter=str(tmp_path), limit=1, out_dir=tmp_path, prompt_style="few_shot")


def test_run_eval_agent_takes_the_training_runs_prompt(tiny_policy, tiny_model, tmp_path):
    run = tmp_path / "run"
    tiny_model.save_pretrained(run / "checkpoint" / "adapter")
    trained = Config(prompt_style="zero_shot").to_dict()
    (run / "config.json").write_text(json.dumps(trained))
    cfg = Config(dataset="generated", prompt_style="few_shot", **FAST)
    out = run_eval(cfg, "agent", adapter=str(run), limit=2, out_dir=tmp_path / "eval")
    assert out["method"] == "agent" and out["n"] == 2
    call = tiny_policy[0]
    assert call["adapter"] == run / "checkpoint" / "adapter"
    assert call["cfg"].prompt_style == "zero_shot"


def test_unknown_method_dataset_and_missing_files_fail_clearly(tiny_policy, tmp_path):
    with pytest.raises(ValueError, match="unknown method 'rag'; valid: naive_rag, tool_call, agent"):
        run_eval(Config(), "rag")
    with pytest.raises(ValueError, match="dataset='trivia' is not one of: generated, hotpotqa, 2wiki"):
        run_eval(Config(dataset="trivia"), "naive_rag")
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match=f"question file {missing} not found"):
        run_eval(Config(dataset="hotpotqa", data_path=str(missing)), "naive_rag")
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"id": "a", "question": "Q?", "answer": "A"}) + "\n")
    with pytest.raises(FileNotFoundError, match="corpus file .*corpus.json not found"):
        run_eval(
            Config(dataset="2wiki", data_path=str(qa), corpus_path=str(tmp_path / "corpus.json")), "naive_rag"
        )
    with pytest.raises(ValueError, match="carry no passages"):  # question-only file and no corpus
        run_eval(Config(dataset="2wiki", data_path=str(qa)), "naive_rag")
    assert tiny_policy == []  # every error comes before the model is loaded


def test_agent_needs_an_adapter(tiny_policy, tmp_path):
    with pytest.raises(ValueError, match="--method agent needs --adapter DIR"):
        run_eval(Config(dataset="generated"), "agent")
    with pytest.raises(FileNotFoundError, match="adapter folder .* not found"):
        run_eval(Config(dataset="generated"), "agent", adapter=str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="holds no LoRA adapter"):
        run_eval(Config(dataset="generated"), "agent", adapter=str(tmp_path))
    assert tiny_policy == []


def test_run_eval_warns_when_the_corpus_does_not_cover_the_questions(tiny_policy, tmp_path):
    questions = [
        {
            "_id": f"h{i}",
            "question": f"Where was the founder of Abbey {i} born?",
            "answer": f"Town{i}",
            "type": "bridge",
            "supporting_facts": [[f"Abbey {i}", 0]],
            "context": [[f"Abbey {i}", [f"Abbey {i} was founded by a monk from Town{i}."]]],
        }
        for i in range(3)
    ]
    qfile = tmp_path / "hotpot.json"
    qfile.write_text(json.dumps(questions))
    corpus = tmp_path / "corpus.json"
    corpus.write_text(json.dumps([{"title": "Elsewhere", "text": "Nothing about abbeys here."}]))
    cfg = Config(dataset="hotpotqa", data_path=str(qfile), corpus_path=str(corpus), **FAST)
    with pytest.warns(CoverageWarning, match="lacks supporting passages of 3 of 3"):
        out = run_eval(cfg, "naive_rag", out_dir=tmp_path / "eval")
    assert out["n"] == 3 and out["recall_any"] == 0.0
    # without --corpus the corpus is the questions' own passages: covered, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", CoverageWarning)
        out = run_eval(cfg.replace(corpus_path=""), "naive_rag", out_dir=tmp_path / "eval")
    assert out["recall_any"] == 1.0


@pytest.mark.shared_data
def test_run_eval_on_the_real_samples(tiny_policy, shared_data, tmp_path):
    hp = Config(
        dataset="hotpotqa", data_path=str(shared_data / "hotpotqa" / "dev_distractor_100.json"), **FAST
    )
    out = run_eval(hp, "naive_rag", limit=2, out_dir=tmp_path)
    assert out["n"] == 2 and tuple(out) == SUMMARY_KEYS
    extra = json.loads((tmp_path / "hotpotqa_naive_rag.summary.json").read_text())
    assert extra["coverage"]["n_passages"] > 900  # the corpus is built from all 100 questions, not the 2
    wiki = Config(
        dataset="2wiki",
        data_path=str(shared_data / "qa_only" / "2wiki_dev_500.jsonl"),
        corpus_path=str(shared_data / "2wiki" / "corpus.json"),
        **FAST,
    )
    examples, passages = load_eval_questions(wiki, limit=20)
    assert len(examples) == 20 and len(passages) > 6000
    with pytest.warns(CoverageWarning, match="occur in no passage"):
        check_coverage(examples, passages)


def test_questions_without_known_support_give_null_recall(tiny_policy, tmp_path):
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"id": "a", "question": "Who built it?", "answer": "Aldo Finch"}) + "\n")
    corpus = tmp_path / "corpus.json"
    corpus.write_text(json.dumps([{"title": p.title, "text": p.text} for p in PASSAGES]))
    cfg = Config(dataset="2wiki", data_path=str(qa), corpus_path=str(corpus), **FAST)
    with pytest.warns(CoverageWarning, match="recall_any cannot be measured"):
        out = run_eval(cfg, "naive_rag", out_dir=tmp_path / "eval")
    assert out["n"] == 1 and out["recall_any"] is None
    json.loads(json.dumps(out), parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
