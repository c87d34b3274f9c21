"""Data: `QAExample` and `Passage`, and loaders for the real dataset formats (files and the Hugging Face hub).

The generated fictional world lives in `world.py`, one level up: it builds these types, and it is also where
a config's dataset is dispatched (`world.load_examples(cfg, split)`, `world.load_corpus(cfg, examples)`),
since it is the lowest module that knows both the world and the real formats.

Loaders for the real formats (`load_hotpotqa`, `load_2wiki`, `load_qa_jsonl`, `load_corpus_file`,
`load_musique`, `load_hub`) return the same types; `load_real_examples(cfg, split)` picks the file (or the
hub) named by a config. Bad input fails with a `DataFormatError` that names the file, the item (and its id)
and the field, or has a documented fallback:

- a file that is empty, not UTF-8, or not valid JSON (a list, an object with a "data" list, or JSON lines;
  a UTF-8 byte-order mark is accepted) is an error naming the file (and the line for JSON lines);
- JSON lines are lines ended by a line feed only (U+2028, U+2029, U+0085 inside strings are text, not line ends);
- JSON's non-standard constants NaN / Infinity / -Infinity, a number too large for a float (1e400) and an
  integer of more than `records.MAX_INT_DIGITS` digits are errors naming the file and the line;
- answers are strings: a number becomes its text only when it is finite and its text is at most
  `MAX_NUMBER_CHARS` characters (else an error); an `answer` that is null, empty or not a string / number is
  an error (a null never becomes the answer "None"); null or empty *aliases* are dropped; an empty
  `question` is an error;
- two items with the same id are an error naming both items (dropping one would silently change the set);
- 2Wiki files are read item by item: an item with `context` is in the official format, one without it is a
  question/answer item, so a file mixing both keeps every item's passages;
- MuSiQue items with `answerable: false` are skipped and counted (`read_musique`); `answerable` and a
  paragraph's `is_supporting` must be true or false, `question_decomposition` a list of objects whose
  `paragraph_support_idx` is an integer or null: anything else is an error naming the item and the field.
"""

from __future__ import annotations

import ast
import hashlib
import math
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import hub_reachable
from .config import DATASETS, Config
from .records import MAX_NUMBER_CHARS, DataFormatError, read_records

SPLITS = ("train", "eval")


@dataclass(frozen=True)
class Passage:
    """One retrievable passage (an encyclopedia paragraph)."""

    id: str
    title: str
    text: str


@dataclass
class QAExample:
    """One multi-hop question.

    `answers` holds the gold answer first, then its aliases; `supporting_titles` the titles of the passages
    a solver needs; `context` the passages shipped with the question (distractor setting), empty when the
    format has none; `kind` is bridge / comparison / compositional / ...; `hops` the number of hops (0 when
    unknown).
    """

    id: str
    question: str
    answers: list[str]
    supporting_titles: list[str] = field(default_factory=list)
    dataset: str = ""
    kind: str = ""
    hops: int = 0
    context: list[Passage] = field(default_factory=list)

    @property
    def answer(self) -> str:
        return self.answers[0] if self.answers else ""


def passage_id(title: str, text: str) -> str:
    """Stable id of a passage: a short hash of its title and text (the same passage gets the same id)."""
    return hashlib.sha1(f"{title}\n{text}".encode()).hexdigest()[:12]


def make_passage(title: str, text: str) -> Passage:
    return Passage(id=passage_id(title, text), title=title, text=text)


def dedup_passages(passages: Iterable[Passage]) -> list[Passage]:
    """Keep the first of each (title, text): MuSiQue has different paragraphs under one title."""
    seen: set[tuple[str, str]] = set()
    out = []
    for p in passages:
        key = (p.title, p.text)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


# ====================================================================== reading files


def _where(path: Path, i: int, rec: dict) -> str:
    rid = rec.get("_id", rec.get("id"))
    return f"{path}: item {i}" + (f" (id {rid!r})" if rid is not None else "")


def _get(path: Path, i: int, rec: dict, key: str, types: type | tuple = object) -> Any:
    if key not in rec:
        raise DataFormatError(f"{_where(path, i, rec)}: missing field '{key}'")
    value = rec[key]
    if not isinstance(value, types):
        raise DataFormatError(
            f"{_where(path, i, rec)}: field '{key}' has type {type(value).__name__}, expected {types}"
        )
    return value


def _question(path: Path, i: int, rec: dict) -> str:
    question = _get(path, i, rec, "question", str)
    if not question.strip():
        raise DataFormatError(f"{_where(path, i, rec)}: field 'question' is empty")
    return question


def _literal(path: Path, i: int, rec: dict, key: str) -> Any:
    """A field that some exports store as the string of a Python/JSON literal (HF `hotpot_qa` CSV/parquet)."""
    value = _get(path, i, rec, key)
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError) as e:
            raise DataFormatError(
                f"{_where(path, i, rec)}: field '{key}' is a string but not a literal: {e}"
            ) from e
    return value


def _titles_and_sentences(path: Path, i: int, rec: dict, key: str = "context") -> list[tuple[str, list[str]]]:
    """`context` as [[title, [sentences]]] (official) or {title: [...], sentences: [[...]]} (Hugging Face)."""
    ctx = _literal(path, i, rec, key)
    try:
        if isinstance(ctx, dict):
            pairs = list(zip(ctx["title"], ctx["sentences"], strict=True))
        else:
            pairs = [(t, s) for t, s in ctx]
        out = []
        for t, s in pairs:
            if isinstance(s, str):
                s = [s]
            if not isinstance(t, str) or not all(isinstance(x, str) for x in s):
                raise TypeError("titles and sentences must be strings")
            out.append((t, list(s)))
        return out
    except (KeyError, TypeError, ValueError) as e:
        raise DataFormatError(
            f"{_where(path, i, rec)}: field '{key}' is not [[title, [sentences]]] "
            f"or {{title: [...], sentences: [...]}}: {e}"
        ) from e


def _supporting_titles(path: Path, i: int, rec: dict, key: str = "supporting_facts") -> list[str]:
    """Titles of `supporting_facts` as [[title, sent_id]] or {title: [...], sent_id: [...]}, first-seen order."""
    sf = _literal(path, i, rec, key)
    try:
        titles = list(sf["title"]) if isinstance(sf, dict) else [t for t, _ in sf]
    except (KeyError, TypeError, ValueError) as e:
        raise DataFormatError(
            f"{_where(path, i, rec)}: field '{key}' is not [[title, sent_id]] or {{title: [...], sent_id: [...]}}"
        ) from e
    return list(dict.fromkeys(str(t) for t in titles))


def _answer_text(value: Any) -> str | None:
    """The text of one answer (a string, or a finite number whose text is at most `MAX_NUMBER_CHARS`
    characters), or None when it is null, empty, another type, or a number that is not finite or sane."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, int) and abs(value) >= 10**MAX_NUMBER_CHARS:
        return None
    text = str(value)
    if not isinstance(value, str) and len(text) > MAX_NUMBER_CHARS:
        return None
    return text if text.strip() else None


def _answer_problem(a: Any) -> str:
    """Why `_answer_text(a)` is None, for the error message."""
    if a is None:
        return "null"
    if isinstance(a, str):
        return "empty"
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        return (
            f"the number {str(a)[:20]}{'...' if len(str(a)) > 20 else ''}, which is not a finite, sane number"
        )
    return f"a {type(a).__name__}"


def _answers(path: Path, i: int, rec: dict) -> list[str]:
    """`answer` (a string, a number, or a list of them: all must be non-empty) first, then the aliases of
    `answer_aliases` / `aliases` / `answers`, deduplicated. Null or empty aliases are dropped."""
    ans = _get(path, i, rec, "answer")
    golds = ans if isinstance(ans, list) else [ans]
    if not golds:
        raise DataFormatError(f"{_where(path, i, rec)}: field 'answer' is an empty list")
    answers = []
    for a in golds:
        text = _answer_text(a)
        if text is None:
            what = _answer_problem(a)
            raise DataFormatError(
                f"{_where(path, i, rec)}: field 'answer' is {what}; every question needs a non-empty gold "
                "answer (a string or a number)"
            )
        answers.append(text)
    for key in ("answer_aliases", "aliases", "answers"):
        extra = rec.get(key)
        if isinstance(extra, list):
            answers += [t for t in map(_answer_text, extra) if t is not None]
    return list(dict.fromkeys(answers))


def _record_id(path: Path, i: int, rec: dict, *keys: str, prefix: str | None = None) -> str:
    """The first of `keys` present (as a string), else `<prefix or file stem>-<index>`."""
    for key in keys:
        if rec.get(key) is not None:
            return str(rec[key])
    return f"{prefix or path.stem}-{i}"


def check_unique_ids(path: str | Path, items: Iterable[tuple[int, QAExample]]) -> None:
    """A DataFormatError naming both items when two (item index, example) pairs share an id."""
    first: dict[str, int] = {}
    for i, ex in items:
        if ex.id in first:
            raise DataFormatError(
                f"{path}: item {i} has the same id {ex.id!r} as item {first[ex.id]}; ids must be unique "
                "(remove or rename the duplicate)"
            )
        first[ex.id] = i


# ====================================================================== loaders for the real formats
# Each format has a parser over records already read (`parse_*`, also used for hub rows) and a file loader.


def parse_hotpotqa(path: Path, records: list[dict], id_prefix: str | None = None) -> list[QAExample]:
    out = []
    for i, rec in enumerate(records):
        question = _question(path, i, rec)
        ctx = _titles_and_sentences(path, i, rec)
        out.append(
            QAExample(
                id=_record_id(path, i, rec, "_id", "id", prefix=id_prefix),
                question=question,
                answers=_answers(path, i, rec),
                supporting_titles=_supporting_titles(path, i, rec),
                dataset="hotpotqa",
                kind=str(rec.get("type", "")),
                hops=2,
                context=[make_passage(t, "".join(s).strip()) for t, s in ctx],
            )
        )
    check_unique_ids(path, enumerate(out))
    return out


def load_hotpotqa(path: str | Path) -> list[QAExample]:
    """HotpotQA, official JSON (`_id`, list-style fields) or the Hugging Face `hotpot_qa` layout.

    The HF layout has dict-of-lists `context` / `supporting_facts` (sometimes as strings of Python literals)
    and may have no id: the id is then `<file stem>-<index>`. One passage per context paragraph: its
    sentences joined, as in the BeIR / Agent-R1 HotpotQA corpus.
    """
    return parse_hotpotqa(Path(path), read_records(path))


_2WIKI_HOPS = {"comparison": 2, "inference": 2, "compositional": 2, "bridge_comparison": 4}


def parse_2wiki(path: Path, records: list[dict], id_prefix: str | None = None) -> list[QAExample]:
    out = []
    for i, rec in enumerate(records):
        kind = str(rec.get("type", ""))
        question = _question(path, i, rec)
        if "context" in rec:  # the official format
            context = [
                make_passage(t, " ".join(x.strip() for x in s))
                for t, s in _titles_and_sentences(path, i, rec)
            ]
            support = _supporting_titles(path, i, rec)
        else:  # a question/answer item
            context, titles = [], rec.get("supporting_titles")
            support = [str(t) for t in titles] if isinstance(titles, list) else []
        out.append(
            QAExample(
                id=_record_id(path, i, rec, "_id", "id", prefix=id_prefix),
                question=question,
                answers=_answers(path, i, rec),
                supporting_titles=support,
                dataset="2wiki",
                kind=kind,
                hops=_2WIKI_HOPS.get(kind, 0),
                context=context,
            )
        )
    check_unique_ids(path, enumerate(out))
    return out


def load_2wiki(path: str | Path) -> list[QAExample]:
    """2WikiMultihopQA: the official JSON (`_id, type, question, context, supporting_facts, evidences`) or
    question/answer JSON lines (`{id, question, answer}`), decided item by item (an item without `context`
    is a question/answer item)."""
    return parse_2wiki(Path(path), read_records(path))


def load_qa_jsonl(path: str | Path, dataset: str) -> list[QAExample]:
    """Question/answer files (`{id, question, answer}` per line, or a JSON list): no passages; supporting
    titles only when a `supporting_titles` list is given."""
    path = Path(path)
    out = []
    for i, rec in enumerate(read_records(path)):
        titles = rec.get("supporting_titles")
        out.append(
            QAExample(
                id=_record_id(path, i, rec, "id", "_id"),
                question=_question(path, i, rec),
                answers=_answers(path, i, rec),
                supporting_titles=[str(t) for t in titles] if isinstance(titles, list) else [],
                dataset=dataset,
                kind=str(rec.get("type", "")),
                hops=int(rec["hops"]) if isinstance(rec.get("hops"), int) else 0,
            )
        )
    check_unique_ids(path, enumerate(out))
    return out


def load_corpus_file(path: str | Path) -> list[Passage]:
    """A passage file: JSON list or JSON lines of `{title, text}` (or Search-R1's `{contents: "title\\ntext"}`).
    Duplicate (title, text) pairs are kept once."""
    path = Path(path)
    out = []
    for i, rec in enumerate(read_records(path)):
        if "text" not in rec and isinstance(rec.get("contents"), str):
            title, _, text = rec["contents"].partition("\n")
            out.append(make_passage(title.strip().strip('"'), text.strip()))
            continue
        text = _get(path, i, rec, "text", str)
        title = _get(path, i, rec, "title", str)
        out.append(make_passage(title, text))
    return dedup_passages(out)


def _bool_field(path: Path, i: int, rec: dict, obj: dict, key: str, default: bool, where: str = "") -> bool:
    """`obj[key]` when it is true or false (JSON booleans), `default` when absent or null; else an error."""
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise DataFormatError(
            f"{_where(path, i, rec)}: field '{where}{key}' must be true or false, not {type(value).__name__} "
            f"{value!r:.40}"
        )
    return value


def _musique_paragraphs(path: Path, i: int, rec: dict) -> tuple[list[dict], dict[int, dict]]:
    """`paragraphs` (objects with string `title` and `paragraph_text`) and the same by their `idx`."""
    paras = _get(path, i, rec, "paragraphs", list)
    by_idx: dict[int, dict] = {}
    for j, p in enumerate(paras):
        for key in ("title", "paragraph_text"):
            if not isinstance(p, dict) or not isinstance(p.get(key), str):
                raise DataFormatError(f"{_where(path, i, rec)}: paragraphs[{j}] has no string field '{key}'")
        idx = p.get("idx", j)
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise DataFormatError(f"{_where(path, i, rec)}: paragraphs[{j}].idx is not an integer")
        _bool_field(path, i, rec, p, "is_supporting", False, f"paragraphs[{j}].")
        by_idx[idx] = p
    return paras, by_idx


def _musique_decomposition(path: Path, i: int, rec: dict) -> list[int | None]:
    """The `paragraph_support_idx` of each step of `question_decomposition` (a list of objects; absent or
    null: no steps)."""
    decomp = rec.get("question_decomposition")
    if decomp is None:
        return []
    if not isinstance(decomp, list):
        raise DataFormatError(
            f"{_where(path, i, rec)}: field 'question_decomposition' has type {type(decomp).__name__}, "
            "expected a list of objects"
        )
    order = []
    for j, d in enumerate(decomp):
        if not isinstance(d, dict):
            raise DataFormatError(
                f"{_where(path, i, rec)}: question_decomposition[{j}] is a {type(d).__name__}, expected an object"
            )
        k = d.get("paragraph_support_idx")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int)):
            raise DataFormatError(
                f"{_where(path, i, rec)}: field 'question_decomposition[{j}].paragraph_support_idx' has type "
                f"{type(k).__name__}, expected an integer or null"
            )
        order.append(k)
    return order


def parse_musique(path: Path, records: list[dict]) -> tuple[list[QAExample], int]:
    out, kept, skipped = [], [], 0
    for i, rec in enumerate(records):
        if not _bool_field(path, i, rec, rec, "answerable", True):
            skipped += 1
            continue
        paras, by_idx = _musique_paragraphs(path, i, rec)
        order = _musique_decomposition(path, i, rec)
        support = [by_idx[k]["title"] for k in order if k in by_idx]
        support += [p["title"] for p in paras if p.get("is_supporting")]
        hops = len(order)
        out.append(
            QAExample(
                id=str(_get(path, i, rec, "id")),
                question=_question(path, i, rec),
                answers=_answers(path, i, rec),
                supporting_titles=list(dict.fromkeys(support)),
                dataset="musique",
                kind=f"{hops}hop" if hops else "",
                hops=hops,
                context=dedup_passages(make_passage(p["title"], p["paragraph_text"]) for p in paras),
            )
        )
        kept.append(i)
    check_unique_ids(path, zip(kept, out))
    return out, skipped


def read_musique(path: str | Path) -> tuple[list[QAExample], int]:
    """MuSiQue (JSON lines or one JSON list) -> (answerable questions, number of unanswerable ones skipped).

    Answers are `answer` + `answer_aliases`; supporting titles come from paragraphs with `is_supporting`,
    in the order of `question_decomposition`; `kind` is "<hops>hop" and `hops` the decomposition length.
    """
    return parse_musique(Path(path), read_records(path))


def load_musique(path: str | Path) -> list[QAExample]:
    """MuSiQue answerable questions; the unanswerable ones are skipped and counted on stderr."""
    examples, skipped = read_musique(path)
    if skipped:
        print(f"{path}: skipped {skipped} unanswerable MuSiQue question(s)", file=sys.stderr)
    return examples


def fill_titles_from_question(examples: list[QAExample], passages: list[Passage]) -> int:
    """For question-only files (2Wiki JSON lines) whose format has no supporting facts: take as supporting
    titles the corpus titles named in the question (case-insensitive, whole words, longest match wins).

    These are the first-hop entities only, so recall on them is an upper bound of what the question alone
    can find. Returns the number of examples filled.
    """
    by_lower: dict[str, str] = {}
    for p in passages:
        by_lower.setdefault(p.title.lower(), p.title)
        base = re.sub(r"\s*\([^)]*\)$", "", p.title).lower()  # "Navy Nurse (film)" is named as "Navy Nurse"
        if base != p.title.lower():
            by_lower.setdefault(base, p.title)
    filled = 0
    for ex in examples:
        if ex.supporting_titles:
            continue
        q = ex.question.lower()
        spans = []
        for low, title in by_lower.items():
            if len(low) < 3 or low not in q:  # the plain substring test first: ~10k titles per question
                continue
            for m in re.finditer(r"(?<!\w)" + re.escape(low) + r"(?!\w)", q):
                if not ex.question[
                    m.start()
                ].islower():  # "place of birth" is not a mention of "Place of birth"
                    spans.append((m.start(), m.end(), title))
        spans.sort(key=lambda s: (s[0], -(s[1] - s[0])))
        keep, end = [], -1
        for s, e, title in spans:
            if s >= end:
                keep.append(title)
                end = e
        ex.supporting_titles = list(dict.fromkeys(keep))
        filled += bool(keep)
    return filled


# ====================================================================== the Hugging Face hub

HUB_DATASETS = {
    "hotpotqa": ("hotpotqa/hotpot_qa", "distractor", {"eval": "validation", "train": "train"}),
    "2wiki": ("framolfese/2WikiMultihopQA", None, {"eval": "validation", "train": "train"}),
    "musique": ("dgslibisey/MuSiQue", None, {"eval": "validation", "train": "train"}),
}
"""dataset -> (hub id, config, split names). MuSiQue's copy holds the answerable set (`answerable` is kept)."""


def load_hub(name: str, split: str = "eval", limit: int = 0) -> list[QAExample]:
    """The full dataset from the Hugging Face hub through `datasets.load_dataset`, same types out.

    Offline (`common.hub_reachable` is False), raises a RuntimeError naming the local alternatives at once
    instead of retrying for a minute.
    """
    if name not in HUB_DATASETS:
        raise ValueError(f"unknown hub dataset {name!r}; valid: {', '.join(HUB_DATASETS)}")
    hub_id, config, splits = HUB_DATASETS[name]
    if not hub_reachable():
        raise RuntimeError(
            f"cannot reach the Hugging Face hub to load {hub_id} ({name}); offline alternatives: set "
            f"data_path to a local file in the official format (load_hotpotqa / load_2wiki / load_musique / "
            f"load_qa_jsonl), point data_dir / $AGENTR1_DATA at the samples (hotpotqa/dev_distractor_100.json, "
            f"hotpotqa/train_100.json, 2wiki/dev_87.jsonl + 2wiki/corpus.json), or use dataset=generated"
        )
    import datasets  # heavy and optional: only the online path needs it

    ds = datasets.load_dataset(hub_id, config, split=splits.get(split, split))
    if limit:
        ds = ds.select(range(min(limit, len(ds))))
    records = [dict(r) for r in ds]
    if not records:
        raise RuntimeError(f"the hub dataset {hub_id} ({name}) has no rows in split {split!r}")
    where = Path(f"<hub {hub_id} {split}>")  # what error messages name instead of a file
    if name == "musique":
        examples, skipped = parse_musique(where, records)
        if skipped:
            print(f"{hub_id}: skipped {skipped} unanswerable MuSiQue question(s)", file=sys.stderr)
        return examples
    parse = parse_hotpotqa if name == "hotpotqa" else parse_2wiki
    return parse(where, records, id_prefix=f"{name}-{split}")


# ====================================================================== a config's real dataset

DEFAULT_SAMPLES = {
    ("hotpotqa", "eval"): "hotpotqa/dev_distractor_100.json",
    ("hotpotqa", "train"): "hotpotqa/train_100.json",
    ("2wiki", "eval"): "2wiki/dev_87.jsonl",
}
"""Sample files (relative to `cfg.data_dir`) used when `cfg.data_path` is empty."""
DEFAULT_CORPORA = {"2wiki": "2wiki/corpus.json"}
"""Corpus files (relative to `cfg.data_dir`) used when `cfg.corpus_path` is empty."""
REAL_DATASETS = tuple(HUB_DATASETS)
"""The datasets read from files or the hub; `DATASETS` (config) adds "generated" (`world.py`)."""


def load_file(dataset: str, path: str | Path) -> list[QAExample]:
    """Load a question file of `dataset` with the right loader."""
    if dataset == "hotpotqa":
        return load_hotpotqa(path)
    if dataset == "2wiki":
        return load_2wiki(path)
    if dataset == "musique":
        return load_musique(path)
    raise ValueError(f"no question-file loader for dataset {dataset!r}; valid: {', '.join(REAL_DATASETS)}")


def default_corpus_path(cfg: Config) -> Path | None:
    """`cfg.corpus_path` when set; else the dataset's sample corpus in `cfg.data_dir` when it exists and
    the questions are the sample's (no `data_path`); else None."""
    if cfg.corpus_path:
        return Path(cfg.corpus_path)
    if cfg.dataset in DEFAULT_CORPORA and not cfg.data_path:
        path = Path(cfg.data_dir) / DEFAULT_CORPORA[cfg.dataset]
        return path if path.is_file() else None
    return None


def load_real_examples(cfg: Config, split: str = "eval") -> list[QAExample]:
    """Questions of the real dataset `cfg.dataset` for `split` ("train" or "eval").

    `cfg.data_path` if set, else the sample in `cfg.data_dir` (`DEFAULT_SAMPLES`), else the hub (which fails
    with a clear message offline). Question-only files (2Wiki JSON lines) get their supporting titles from the
    corpus titles named in the question (`fill_titles_from_question`) when a corpus file is known.
    `world.load_examples` is the entry point for every dataset, the generated one included.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'eval'; got {split!r}")
    if cfg.dataset not in REAL_DATASETS:
        where = (
            "; the generated world's questions come from world.load_examples"
            if cfg.dataset in DATASETS
            else ""
        )
        raise ValueError(f"unknown real dataset {cfg.dataset!r}; valid: {', '.join(REAL_DATASETS)}{where}")
    if cfg.data_path:
        source = cfg.data_path
        examples = load_file(cfg.dataset, cfg.data_path)
    else:
        rel = DEFAULT_SAMPLES.get((cfg.dataset, split))
        path = Path(cfg.data_dir) / rel if rel else None
        if path is not None and path.is_file():
            source = str(path)
            examples = load_file(cfg.dataset, path)
        else:
            try:
                source = f"the hub ({HUB_DATASETS[cfg.dataset][0]})"
                examples = load_hub(cfg.dataset, split)
            except RuntimeError as e:
                where = f"no local sample {path}" if path else f"no local {split} sample for {cfg.dataset}"
                raise RuntimeError(f"{where}; set data_path to a {cfg.dataset} file. {e}") from None
    if not examples:  # e.g. a MuSiQue file of unanswerable questions only
        raise ValueError(f"no {cfg.dataset} questions to use in {source}")
    corpus = default_corpus_path(cfg)
    if corpus is not None and any(not ex.supporting_titles for ex in examples):
        fill_titles_from_question(examples, load_corpus_file(corpus))
    return examples


def context_passages(examples: list[QAExample], dataset: str = "") -> list[Passage]:
    """The union of the examples' context passages, deduplicated by (title, text); an error when there are
    none (question-only files need a corpus file)."""
    if not examples:
        raise ValueError("no questions given, so there are no context passages to search")
    passages = dedup_passages(p for ex in examples for p in ex.context)
    if not passages:
        name = dataset or examples[0].dataset or "these"
        raise ValueError(
            f"the {name} questions carry no passages (question-only format); set corpus_path to a "
            f"{{title, text}} passage file"
        )
    return passages
