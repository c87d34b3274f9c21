"""The generated fictional world: determinism, answerability, question kinds, splits, retrieval difficulty."""

from __future__ import annotations

import collections
import re

import pytest

from agentr1_nb.config import Config
from agentr1_nb.data import load_corpus_file, load_qa_jsonl
from agentr1_nb.retrieval import BM25Retriever, recall_at_k
from agentr1_nb.world import (
    DEFAULT_KIND_WEIGHTS,
    KIND_HOPS,
    WORLD_FILES,
    generate_world,
    load_corpus,
    load_examples,
    split_world,
    world_files,
    world_from_config,
    write_world,
)


@pytest.fixture(scope="module")
def world():
    return generate_world(seed=0)


def test_deterministic_by_seed(world):
    again = generate_world(seed=0)
    assert again.passages == world.passages
    assert [(q.question, q.answers, q.supporting_titles) for q in again.questions] == [
        (q.question, q.answers, q.supporting_titles) for q in world.questions
    ]
    other = generate_world(seed=1)
    assert {p.title for p in other.passages} != {p.title for p in world.passages}
    assert [q.question for q in other.questions] != [q.question for q in world.questions]


def test_sizes_and_passages(world):
    assert len(world.questions) == 400
    assert len({q.question for q in world.questions}) == 400  # no duplicate questions
    assert len({q.id for q in world.questions}) == 400
    types = collections.Counter(e["type"] for e in world.entities.values())
    assert types["person"] == 60 and types["company"] == 40
    titles = [p.title for p in world.passages]
    assert len(titles) == len(set(titles)) == len(world.entities)  # one passage per entity, title = name
    for p in world.passages:
        assert len(p.text) < 300 and p.text.startswith(p.title)
        assert 1 <= p.text.count(". ") + 1 <= 3
    # a person's passage never names a company: "the founder of X" needs two searches
    companies = [n for n, e in world.entities.items() if e["type"] == "company"]
    for n, e in world.entities.items():
        if e["type"] == "person":
            assert not any(c in world.passage(n).text for c in companies)


def test_answers_found_in_supporting_passages(world):
    for q in world.questions:
        texts = [world.passage(t).text for t in q.supporting_titles]
        assert len(q.answer.split()) <= 2
        assert q.hops == KIND_HOPS[q.kind]
        # the answer is written in the last supporting passage (or is one of the compared names)
        if q.kind == "comparison":
            assert q.answer in q.supporting_titles and q.answer in q.question
        else:
            assert re.search(r"\b" + re.escape(q.answer) + r"\b", texts[-1]), (q.question, texts)
            assert q.answer not in q.question
        assert {p.title for p in q.context} >= set(q.supporting_titles)
        assert len(q.context) == len(q.supporting_titles) + 3


def test_question_kinds(world):
    counts = collections.Counter(q.kind for q in world.questions)
    assert set(counts) == set(DEFAULT_KIND_WEIGHTS)
    assert counts["3hop"] == 40 and counts["bridge"] == 180  # 0.1 and 0.45 of 400
    for q in world.questions:
        assert len(q.supporting_titles) == q.hops or q.kind == "comparison"
        if q.kind == "3hop":
            assert q.question.startswith("In which country is the birthplace of the founder of ")
        if q.kind == "comparison":
            a, b = q.supporting_titles
            assert f"{a} or {b}" in q.question
    only_bridge = generate_world(seed=0, n_questions=50, kinds=("bridge",))
    assert {q.kind for q in only_bridge.questions} == {"bridge"} and len(only_bridge.questions) == 50
    mix = generate_world(seed=0, n_questions=100, kinds={"single": 3, "3hop": 1})
    c = collections.Counter(q.kind for q in mix.questions)
    assert c == {"single": 75, "3hop": 25}
    # more 3-hop questions than companies: the shortfall goes to the other kinds
    short = generate_world(seed=0, n_people=12, n_questions=40, kinds={"3hop": 1, "single": 1})
    c = collections.Counter(q.kind for q in short.questions)
    assert c["3hop"] == 8 and c["single"] == 32
    with pytest.raises(ValueError, match="unknown question kind"):
        generate_world(kinds=("trivia",))


def test_split_deterministic_disjoint_stratified(world):
    train, held = split_world(world, 0.25)
    assert len(train) == 300 and len(held) == 100
    assert not {q.id for q in train} & {q.id for q in held}
    assert split_world(world, 0.25) == (train, held)
    kinds = collections.Counter(q.kind for q in held)
    assert kinds["3hop"] == 10 and kinds["bridge"] == 45
    with pytest.raises(ValueError):
        split_world(world, 1.5)


def test_world_from_config_and_load_examples():
    cfg = Config(world_seed=3, world_entities=20, world_questions=80, eval_fraction=0.5)
    assert world_from_config(cfg) is world_from_config(cfg)  # generated once per process
    train, held = load_examples(cfg, "train"), load_examples(cfg, "eval")
    assert len(train) + len(held) == 80 and abs(len(train) - len(held)) <= 4
    assert all(q.dataset == "generated" for q in train + held)
    assert load_corpus(cfg, held) == world_from_config(cfg).passages


def test_bm25_on_world(world):
    """The question alone finds the first hop at rank 1; the second hop needs a search for the bridge entity."""
    r = BM25Retriever(world.passages)
    multi = [q for q in world.questions if q.kind in ("bridge", "3hop")]
    first = sum(q.supporting_titles[0] in [h.passage.title for h in r.search(q.question, 3)] for q in multi)
    assert first / len(multi) > 0.95
    second = sum(
        r.search(q.supporting_titles[1], 1)[0].passage.title == q.supporting_titles[1] for q in multi
    )
    assert second == len(multi)
    rec = recall_at_k(r, world.questions, 5)
    assert rec["recall_any"] > 0.95
    assert rec["by_kind"]["single"]["recall_all"] > 0.95
    assert rec["by_kind"]["comparison"]["recall_all"] > 0.9
    assert rec["by_kind"]["bridge"]["recall_all"] < 0.3  # single-shot retrieval cannot solve the bridge
    assert rec["by_kind"]["3hop"]["recall_all"] < 0.1


def test_write_world_reads_back_with_the_real_format_loaders(tmp_path):
    world = generate_world(seed=2, n_people=12, n_questions=40)
    paths = write_world(world, tmp_path / "w", eval_fraction=0.25)
    assert [p.name for p in paths] == list(WORLD_FILES)
    assert load_corpus_file(tmp_path / "w" / "passages.jsonl") == world.passages
    train, held = split_world(world, 0.25)
    for name, split in (("questions_train.jsonl", train), ("questions_eval.jsonl", held)):
        back = load_qa_jsonl(tmp_path / "w" / name, "generated")
        assert [(q.id, q.question, q.answers, q.supporting_titles, q.kind, q.hops) for q in back] == [
            (q.id, q.question, q.answers, q.supporting_titles, q.kind, q.hops) for q in split
        ]
    assert world_files(world, 0.25) == {p.name: p.read_text(encoding="utf-8") for p in paths}


@pytest.mark.parametrize(
    "seed, kw, digest",
    [
        (0, {}, "76be017ea5d8b972b1da2937f8b5486097da3ee3e1248fd1c156a8fefadc1bbe"),
        (
            3,
            dict(n_people=12, n_questions=40, kinds=("bridge", "3hop"), n_distractors=1),
            "42236a256bb97af7be6daaa6c6ab4d1cccff11064b5b06c4d23bf25b7ce9c431",
        ),
    ],
)
def test_generated_world_is_pinned(seed, kw, digest):
    """The world a seed gives is part of every shipped run: entities, passages and questions hash to what
    the code generated before `generate_world` was split into steps (any change here changes training)."""
    import hashlib
    import json
    from dataclasses import asdict

    w = generate_world(seed, **kw)
    blob = json.dumps(
        [w.entities, [asdict(p) for p in w.passages], [asdict(q) for q in w.questions]], sort_keys=True
    )
    assert hashlib.sha256(blob.encode()).hexdigest() == digest
