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
- an `answer` that is null, empty or not a string / number is an error (a null never becomes the answer
  "None"); null or empty *aliases* are dropped; an empty `question` is an error;
- two items with the same id are an error naming both items (dropping one would silently change the set);
- 2Wiki files are read item by item: an item with `context` is in the official format, one without it is a
  question/answer item, so a file mixing both keeps every item's passages;
- MuSiQue items with `answerable: false` are skipped and counted (`read_musique`).
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import hub_reachable
from .config import DATASETS, Config

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


class DataFormatError(ValueError):
    """A data file does not follow its format; the message names the file, the item and the field."""


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


def read_records(path: str | Path) -> list[dict]:
    """The records of a JSON list, an object with a "data" list, or JSON lines; each must be a JSON object.

    Errors name the file: missing, a folder, not UTF-8, empty, not valid JSON (with the line and column),
    no records, or a record that is not an object.
    """
    path = Path(path)
    if path.is_dir():
        raise DataFormatError(f"{path}: is a folder, not a data file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        raw = path.read_bytes().decode("utf-8-sig")  # -sig: a leading byte-order mark is dropped
    except UnicodeDecodeError as e:
        raise DataFormatError(
            f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); convert it to UTF-8"
        ) from None
    stripped = raw.strip()
    if not stripped:
        raise DataFormatError(f"{path}: the file is empty")
    records: Any
    if stripped[0] in "[{":
        try:
            records = json.loads(stripped)
        except json.JSONDecodeError as e:
            if stripped[0] == "[":
                ends_early = e.pos >= len(stripped) or e.msg.startswith("Unterminated string")
                cut = "; the file ends too early (truncated?)" if ends_early else ""
                raise DataFormatError(
                    f"{path}: not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}{cut}"
                ) from None
            records = None  # several objects: JSON lines
        if isinstance(records, dict):  # a one-line JSON-lines file, or an object wrapping a "data" list
            records = records["data"] if isinstance(records.get("data"), list) else [records]
    else:
        records = None
    if records is None:
        records = []
        for lineno, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataFormatError(
                    f"{path}: line {lineno} is not valid JSON (column {e.colno}): {e.msg}"
                ) from None
    if not records:
        raise DataFormatError(f"{path}: holds no records (an empty list)")
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise DataFormatError(f"{path}: item {i} is a {type(r).__name__}, expected a JSON object")
    return records


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
    """The text of one answer (a string or a number), or None when it is null, empty or another type."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    text = str(value)
    return text if text.strip() else None


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
            what = "null" if a is None else "empty" if isinstance(a, str) else f"a {type(a).__name__}"
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


def parse_musique(path: Path, records: list[dict]) -> tuple[list[QAExample], int]:
    out, kept, skipped = [], [], 0
    for i, rec in enumerate(records):
        if rec.get("answerable", True) is False:
            skipped += 1
            continue
        paras = _get(path, i, rec, "paragraphs", list)
        by_idx: dict[int, dict] = {}
        for j, p in enumerate(paras):
            for key in ("title", "paragraph_text"):
                if not isinstance(p, dict) or not isinstance(p.get(key), str):
                    raise DataFormatError(
                        f"{_where(path, i, rec)}: paragraphs[{j}] has no string field '{key}'"
                    )
            idx = p.get("idx", j)
            if isinstance(idx, bool) or not isinstance(idx, int):
                raise DataFormatError(f"{_where(path, i, rec)}: paragraphs[{j}].idx is not an integer")
            by_idx[idx] = p
        decomp = rec.get("question_decomposition") or []
        order = [d.get("paragraph_support_idx") for d in decomp if isinstance(d, dict)]
        support = [by_idx[k]["title"] for k in order if k in by_idx]
        support += [p["title"] for p in paras if p.get("is_supporting")]
        hops = len(decomp)
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
