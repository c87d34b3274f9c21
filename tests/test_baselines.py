"""Baselines: Naive RAG prompt and records, Base Tool Call = base model + zero-shot prompt in the agent's env."""

from __future__ import annotations

import pytest
from peft.tuners.lora import LoraLayer

from agentr1_nb import baselines
from agentr1_nb.config import Config
from agentr1_nb.data import QAExample, make_passage
from agentr1_nb.evaluate import summarize, trajectory_record
from agentr1_nb.prompts import RAG_FEW_SHOT_ANSWER
from agentr1_nb.retrieval import BM25Retriever, Hit

RECORD_KEYS = {
    "id",
    "question",
    "gold",
    "prediction",
    "em",
    "f1",
    "reward",
    "format_ok",
    "turns",
    "searches",
    "passages_seen",
    "supporting_found",
    "stop_reason",
}

PASSAGES = [
    make_passage(
        "Brindle Abbey", "Brindle Abbey is a ruined monastery in Coldharbour, founded by Aldo Finch."
    ),
    make_passage("Aldo Finch", "Aldo Finch was a monk born in Saltmere in 1102."),
    make_passage("Saltmere", "Saltmere is a village on the coast of Vantria."),
    make_passage("Coldharbour", "Coldharbour is a market town known for its wool."),
]
EXAMPLES = [
    QAExample("q1", "Who founded Brindle Abbey?", ["Aldo Finch"], ["Brindle Abbey"]),
    QAExample(
        "q2", "Where was the founder of Brindle Abbey born?", ["Saltmere"], ["Brindle Abbey", "Aldo Finch"]
    ),
    QAExample("q3", "In which country is Saltmere?", ["Vantria"], ["Saltmere"]),
]


class FixedRetriever:
    """Always returns the same passages, in order, with decreasing scores."""

    def __init__(self, passages):
        self.passages = passages
        self.queries: list[str] = []

    def search(self, query, k):
        self.queries.append(query)
        return [Hit(p, 1.0 / (i + 1)) for i, p in enumerate(self.passages[:k])]


class _Model:
    """Stands in for a model where generation is faked (naive_rag only reads .training and calls .eval())."""

    training = False

    def eval(self):
        return self


def test_parse_answer_follows_the_env():
    assert baselines.parse_answer("<answer> Paris </answer>") == ("Paris", True)
    assert baselines.parse_answer("I think <answer>Paris") == ("Paris", False)  # unclosed: predicted, not ok
    assert baselines.parse_answer("Paris") == (None, False)
    assert baselines.parse_answer("") == (None, False)


def test_messages_few_shot_and_zero_shot():
    few = baselines.naive_rag_messages("Q?", "Doc 1 (Title: T) text", Config(prompt_style="few_shot"))
    zero = baselines.naive_rag_messages("Q?", "Doc 1 (Title: T) text", Config(prompt_style="zero_shot"))
    assert [m["role"] for m in few] == ["system", "user", "assistant", "user"]
    assert [m["role"] for m in zero] == ["system", "user"]
    assert RAG_FEW_SHOT_ANSWER in few[2]["content"]
    assert few[-1]["content"] == zero[-1]["content"] and "Doc 1 (Title: T) text" in zero[-1]["content"]
    with pytest.raises(ValueError, match="prompt_style"):
        baselines.naive_rag_messages("Q?", "", Config(prompt_style="chain"))


def test_naive_rag_prompt_holds_the_top_k_passages(tokenizer, monkeypatch):
    cfg = Config(top_k=2, max_tool_chars=2048, eval_batch_size=2, prompt_style="zero_shot")
    retriever = FixedRetriever(PASSAGES)
    seen_prompts: list[str] = []

    replies = dict(
        zip(
            [ex.question for ex in EXAMPLES],
            ["<answer>Aldo Finch</answer>", "<answer>Coldharbour</answer>", "no idea"],
        )
    )

    def fake_generate(model, tok, prompts, cfg):
        seen_prompts.extend(prompts)
        texts = [replies[p.split("Question: ")[-1].split("<|im_end|>")[0]] for p in prompts]
        return texts, ["answer" if "</answer>" in t else "eos" for t in texts]

    monkeypatch.setattr(baselines, "generate_batch", fake_generate)
    recs = baselines.naive_rag(_Model(), tokenizer, EXAMPLES, retriever, cfg)

    assert retriever.queries == [ex.question for ex in EXAMPLES]  # one retrieval per question, the question
    assert len(seen_prompts) == 3
    for prompt, ex in zip(seen_prompts, EXAMPLES):
        assert ex.question in prompt
        assert "Doc 1 (Title: Brindle Abbey) " + PASSAGES[0].text in prompt
        assert "Doc 2 (Title: Aldo Finch) " + PASSAGES[1].text in prompt
        assert PASSAGES[2].text not in prompt  # k = 2
    assert [r["prediction"] for r in recs] == ["Aldo Finch", "Coldharbour", None]
    assert [r["em"] for r in recs] == [1.0, 0.0, 0.0]
    assert [r["format_ok"] for r in recs] == [True, True, False]
    assert [r["reward"] for r in recs] == [1.0, 0.0, -0.5]  # eq. 6: format (0 + 1) / 2 - 1
    for r in recs:
        assert RECORD_KEYS <= set(r)
        assert (r["turns"], r["searches"]) == (1, 0)
        assert r["passages_seen"] == ["Brindle Abbey", "Aldo Finch"]
    assert [r["supporting_found"] for r in recs] == [True, True, False]
    # one record builder: the agent's, plus the passages the model read
    traj = baselines.naive_rag_episode(
        EXAMPLES[0], "<answer>Aldo Finch</answer>", ["Brindle Abbey"], "answer"
    )
    assert set(recs[0]) == set(trajectory_record(traj)) | {"prompt_passages"}
    assert recs[0]["prompt_passages"].startswith("Doc 1 (Title: Brindle Abbey)")
    s = summarize(recs)
    assert s["em"] == pytest.approx(1 / 3) and s["recall_any"] == pytest.approx(2 / 3)


def test_naive_rag_cuts_passages_to_max_tool_chars(tokenizer, monkeypatch):
    cfg = Config(top_k=3, max_tool_chars=60, prompt_style="zero_shot")
    prompts: list[str] = []
    monkeypatch.setattr(
        baselines,
        "generate_batch",
        lambda m, t, p, c: (prompts.extend(p) or ["<answer>x</answer>"], ["answer"]),
    )
    recs = baselines.naive_rag(_Model(), tokenizer, EXAMPLES[:1], FixedRetriever(PASSAGES), cfg)
    body = prompts[0].split("Passages:\n")[1].split("\n\nQuestion:")[0]
    assert len(body) <= 60 and body.endswith("...")
    assert recs[0]["passages_seen"] == ["Brindle Abbey"]  # the second header did not survive the cut


def test_naive_rag_runs_with_a_tiny_model(tiny_model, tokenizer):
    cfg = Config(top_k=2, max_tokens_per_turn=5, eval_batch_size=2)
    recs = baselines.naive_rag(tiny_model, tokenizer, EXAMPLES, BM25Retriever(PASSAGES), cfg)
    assert len(recs) == 3
    for r, ex in zip(recs, EXAMPLES):
        assert RECORD_KEYS <= set(r) and r["id"] == ex.id and r["gold"] == ex.answers
        assert r["stop_reason"] in ("answer", "eos", "max_tokens")
        assert len(r["actions"]) == 1 and 1 <= len(r["passages_seen"]) <= 2
    s = summarize(recs)
    assert s["n"] == 3 and s["mean_turns"] == 1.0 and s["mean_searches"] == 0.0


def test_tool_call_is_the_base_model_with_a_zero_shot_prompt(tiny_model, tokenizer, monkeypatch):
    from agentr1_nb.tools import make_tools

    cfg = Config(prompt_style="few_shot", max_turns=2, max_tokens_per_turn=4)
    tools = make_tools(cfg, BM25Retriever(PASSAGES))
    captured = {}

    def fake_eval(model, tok, examples, make_env, cfg, out_file=None, desc="eval"):
        captured["desc"] = desc
        lora = [m for m in model.modules() if isinstance(m, LoraLayer)]
        captured["adapters_disabled"] = bool(lora) and all(m.disable_adapters for m in lora)
        captured["env_style"] = make_env().cfg.prompt_style
        captured["cfg_style"] = cfg.prompt_style
        return {}, [{"id": ex.id} for ex in examples]

    monkeypatch.setattr(baselines, "evaluate_agent", fake_eval)
    recs = baselines.tool_call(tiny_model, tokenizer, EXAMPLES, tools, cfg)
    assert [r["id"] for r in recs] == ["q1", "q2", "q3"]
    want = {"adapters_disabled": True, "env_style": "zero_shot", "cfg_style": "zero_shot"}
    assert captured == {**want, "desc": "Base Tool Call"}  # the progress bar names the method
    lora = [m for m in tiny_model.modules() if isinstance(m, LoraLayer)]
    assert not any(m.disable_adapters for m in lora)  # the adapter is back on afterwards


def test_tool_call_one_shot_puts_the_worked_example_in_the_env(tiny_model, tokenizer, monkeypatch):
    from agentr1_nb.tools import make_tools

    cfg = Config(prompt_style="zero_shot", max_turns=2, max_tokens_per_turn=4)
    tools = make_tools(cfg, BM25Retriever(PASSAGES))
    styles = []

    def fake_eval(model, tok, examples, make_env, cfg, out_file=None, desc="eval"):
        styles.append(make_env().cfg.prompt_style)
        return {}, []

    monkeypatch.setattr(baselines, "evaluate_agent", fake_eval)
    baselines.tool_call(tiny_model, tokenizer, EXAMPLES, tools, cfg, prompt_style="few_shot")
    assert styles == ["few_shot"]
    with pytest.raises(ValueError, match="prompt_style"):
        baselines.tool_call(tiny_model, tokenizer, EXAMPLES, tools, cfg, prompt_style="2-shot")


def test_tool_call_runs_multi_turn_with_a_tiny_model(tiny_model, tokenizer):
    from agentr1_nb.tools import make_tools

    cfg = Config(max_turns=2, max_tokens_per_turn=4, eval_batch_size=2)
    recs = baselines.tool_call(
        tiny_model, tokenizer, EXAMPLES[:2], make_tools(cfg, BM25Retriever(PASSAGES)), cfg
    )
    assert len(recs) == 2
    for r in recs:
        assert RECORD_KEYS <= set(r)
        assert 1 <= r["turns"] <= 2
