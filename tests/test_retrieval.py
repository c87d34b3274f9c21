"""Retrieval: BM25 and dense behind one interface, the on-disk index cache, and recall measurement."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agentr1_nb.config import Config
from agentr1_nb.data import QAExample, load_corpus_file, load_qa_jsonl, make_passage
from agentr1_nb.retrieval import (
    BM25Retriever,
    DenseRetriever,
    Hit,
    build_retriever,
    measure_recall,
    minilm_dir,
    recall_at_k,
    recall_curve,
    resolve_encoder,
)

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def corpus():
    return load_corpus_file(FIX / "corpus.json")


def test_bm25_search(corpus):
    r = BM25Retriever(corpus)
    hits = r.search("mother of Tom Vey", 3)
    assert isinstance(hits[0], Hit) and hits[0].passage.title == "Tom Vey"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert r.search("Who directed films?", 10)[0].passage.title in {"Glass Harbour", "Moonfall Diary (film)"}
    assert len(r.search("film", 100)) <= len(corpus)  # k larger than the corpus is clipped
    assert r.search("film", 0) == []
    assert r.search("", 3) == [] and r.search("the of and", 3) == []  # nothing to match: no hits, no error
    assert r.search("zzqx unknownword", 3) == []
    batch = r.search_batch(["Ostend coast", "", "Ada Brel"], 2)
    assert (
        batch[0][0].passage.title == "Ostend" and batch[1] == [] and batch[2][0].passage.title == "Ada Brel"
    )
    with pytest.raises(ValueError):
        BM25Retriever([])


def test_build_retriever_by_config(corpus):
    assert isinstance(build_retriever(Config(retriever="bm25"), corpus), BM25Retriever)
    with pytest.raises(ValueError, match="retriever='tfidf'"):  # the config refuses it when built
        Config(retriever="tfidf")
    cfg = Config()
    cfg.retriever = "tfidf"  # and build_retriever when it got past the config
    with pytest.raises(ValueError, match="unknown retriever 'tfidf'; valid: bm25, dense"):
        build_retriever(cfg, corpus)


def test_resolve_encoder_offline(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_encoder("auto") == str(minilm_dir())
    assert "offline encoder" in capsys.readouterr().err
    assert resolve_encoder("some/local-path") == "some/local-path"
    assert (minilm_dir() / "modules.json").is_file()


def test_dense_search_and_cache(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = DenseRetriever(corpus, encoder="auto", cache_dir=tmp_path)
    assert not r.from_cache and r.cache_path is not None and r.cache_path.is_file()
    hits = r.search("Who is the mother of Tom Vey?", 2)
    assert hits[0].passage.title == "Tom Vey"
    assert -1.0 <= hits[1].score <= hits[0].score <= 1.0 + 1e-5  # cosine similarity
    assert r.search("Where is the coast city?", 1)[0].passage.title == "Ostend"
    assert len(r.search("film", 50)) == len(corpus) and r.search("film", 0) == []
    again = DenseRetriever(corpus, encoder="auto", cache_dir=tmp_path)
    assert again.from_cache and again.cache_path == r.cache_path
    assert [h.passage.id for h in again.search("Ada Brel", 3)] == [
        h.passage.id for h in r.search("Ada Brel", 3)
    ]
    # a different corpus gets a different index file
    other = DenseRetriever(
        corpus + [make_passage("Extra", "An extra passage.")], encoder="auto", cache_dir=tmp_path
    )
    assert not other.from_cache and other.cache_path != r.cache_path
    assert len(list((tmp_path / "dense").glob("*.faiss"))) == 2


def test_measure_recall_generated_bm25():
    cfg = Config(world_seed=0, world_entities=60, world_questions=400)
    out = measure_recall("generated", "", "", 5, cfg)
    assert {"dataset", "retriever", "k", "n", "recall_any", "recall_all", "build_s", "queries_per_s"} <= set(
        out
    )
    assert out["n"] == 100 and out["retriever"] == "bm25" and out["k"] == 5
    assert out["recall_any"] > 0.95 and 0.2 < out["recall_all"] < 0.8


def test_measure_recall_fixture_files():
    cfg = Config()
    out = measure_recall("hotpotqa", str(FIX / "hotpot_official.json"), "", 2, cfg)
    assert out["n"] == 2 and out["recall_any"] == 1.0
    out = measure_recall("2wiki", str(FIX / "2wiki_qa.jsonl"), str(FIX / "corpus.json"), 3, cfg)
    assert out["n"] == 3 and out["recall_all"] == 1.0


def test_recall_needs_questions_with_titles_and_k_at_least_1(corpus):
    r = BM25Retriever(corpus)
    ex = [QAExample("q", "Who is the mother of Tom Vey?", ["Mira Vey"], ["Tom Vey"])]
    assert recall_at_k(r, ex, 1)["recall_all"] == 1.0
    for k in (0, -3):
        with pytest.raises(ValueError, match=r"k >= 1"):
            recall_at_k(r, ex, k)
        with pytest.raises(ValueError, match=r"k >= 1"):
            recall_curve(r, ex, [1, k])
    with pytest.raises(ValueError, match=r"k >= 1"):
        recall_curve(r, ex, [])
    with pytest.raises(ValueError, match="0 questions"):
        recall_at_k(r, [], 3)
    with pytest.raises(ValueError, match="0 questions"):
        recall_curve(r, [], [1, 3])
    question_only = load_qa_jsonl(FIX / "2wiki_qa.jsonl", "2wiki")  # no supporting titles: not recall 0.0
    with pytest.raises(ValueError, match="none of the 3 questions names its supporting passages"):
        recall_at_k(r, question_only, 3)
    with pytest.raises(ValueError, match="k >= 1"):
        measure_recall("hotpotqa", str(FIX / "hotpot_official.json"), "", 0, Config())


def test_cli_retrieval_json():
    proc = subprocess.run(
        [sys.executable, "-m", "agentr1_nb", "retrieval", "--dataset", "generated", "--k", "3", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (
        out["dataset"] == "generated" and out["k"] == 3 and 0 <= out["recall_all"] <= out["recall_any"] <= 1
    )


def test_real_hotpotqa_bm25_recall(shared_data):
    out = measure_recall("hotpotqa", "", "", 5, Config(data_dir=str(shared_data)))
    assert out["n"] == 100
    assert out["recall_any"] > 0.9 and 0.4 < out["recall_all"] < 0.7


def test_bm25_on_a_corpus_without_indexable_words_is_a_clear_error():
    from agentr1_nb.data import make_passage
    from agentr1_nb.retrieval import BM25Retriever

    with pytest.raises(ValueError, match="no indexable word"):
        BM25Retriever([make_passage("A", "the"), make_passage("T", "")])
