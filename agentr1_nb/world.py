"""The generated fictional world, and the dataset of a config: `load_examples(cfg, split)`, `load_corpus(cfg)`.

A world is invented people, companies, cities and countries, one short passage per entity, and questions
whose answers can only be found by searching those passages (single-hop, 2-hop bridge, comparison, 3-hop).
It is deterministic from its seed, needs no download, and is small enough for a 135M model on a CPU.

- `generate_world(seed, ...)` / `world_from_config(cfg)` (cached per process) / `split_world(world, f)`;
- `write_world(world, folder, eval_fraction)` writes it as readable JSON lines (the committed copy of the
  default world is `data/generated/` at the top of the repository; a test keeps it in step with the code);
- `load_examples(cfg, split)` and `load_corpus(cfg, examples)`: the questions and passages of any
  `cfg.dataset`, the generated world here and the real formats through `data.load_real_examples`. They live
  here, not in `data.py`, because this module sits above `data.py` (it builds `QAExample`s and `Passage`s)
  and is the lowest one that knows both.
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import atomic_write_text
from .config import Config
from .data import (
    SPLITS,
    Passage,
    QAExample,
    context_passages,
    default_corpus_path,
    load_corpus_file,
    load_real_examples,
    make_passage,
)

_ONSETS = "b d f g k l m n p r s t v z br dr kr tr st gr".split()
_VOWELS = ["a", "e", "i", "o", "u"]
_CODAS = ["", "n", "r", "l", "s", "k", "x", "m", "th", "nd", "rk", "sk"]
_PROFESSIONS = ["painter", "chemist", "sailor", "architect", "baker", "poet", "engineer", "pilot", "botanist"]
_PRODUCTS = ["lamps", "bicycles", "clocks", "tea", "ropes", "glassware", "paper", "boots", "maps", "soap"]
_SUFFIXES = ["Labs", "Works", "Foods", "Motors", "Mills", "Press", "Systems", "Textiles"]

KINDS = ("single", "bridge", "comparison", "3hop")
"""Question kinds of the generated world, with their hop counts in `KIND_HOPS`."""
KIND_HOPS = {"single": 1, "bridge": 2, "comparison": 2, "3hop": 3}
DEFAULT_KIND_WEIGHTS = {"single": 0.2, "bridge": 0.45, "comparison": 0.25, "3hop": 0.1}
"""Default mix for the CPU demo: mostly 2-hop bridge questions (the paper's main kind), some single-hop
questions so that a 135M model gets reward early (a curriculum of sorts), comparisons, and a few 3-hop."""


@dataclass
class World:
    """A generated fictional world: entities (people, companies, cities, countries), one passage per
    entity (title = name), and questions whose answers can only be found by searching the passages."""

    seed: int
    entities: dict[str, dict[str, Any]]
    passages: list[Passage]
    questions: list[QAExample]

    def passage(self, title: str) -> Passage:
        for p in self.passages:
            if p.title == title:
                return p
        raise KeyError(title)


class _Names:
    """Invented, pronounceable names, unique across the world (also after stemming, so BM25 never merges two)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()
        import Stemmer  # imported here so that `import agentr1_nb.world` works without it

        # PyStemmer is a dependency (BM25 stems with it too): a fallback without it would invent other names
        self.stem = Stemmer.Stemmer("english").stemWord

    def word(self, syllables: int, coda: bool = True, ending: str = "") -> str:
        for _ in range(10_000):
            w = "".join(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(syllables))
            if coda:
                w += self.rng.choice(_CODAS)
            w = (w + ending).capitalize()
            low = w.lower()
            if low not in self.used and self.stem(low) not in self.used and len(low) >= 3:
                self.used.update({low, self.stem(low)})
                return w
        raise RuntimeError("ran out of invented names; lower the world size")


def generate_world(
    seed: int = 0,
    n_people: int = 60,
    n_questions: int = 400,
    kinds: dict[str, float] | tuple[str, ...] | None = None,
    n_distractors: int = 3,
) -> World:
    """Generate a fictional world, deterministic from `seed`.

    Sizes: `n_people` people; 2/3 as many companies (each founded by a different person); a quarter as many
    cities; a third as many countries as cities. Passages are 1-2 templated sentences (< 300 characters).
    A person's passage does not name the company they founded, so "the founder of X" needs a search for X
    first and then a second search for the founder's name.

    `kinds` is a dict kind -> weight over `KINDS` (a tuple means equal weights); default
    `DEFAULT_KIND_WEIGHTS`. Questions are unique; when a kind runs out of distinct questions the rest of
    its quota goes to the other kinds. Each question's `context` is its supporting passages plus
    `n_distractors` others, shuffled.
    """
    rng = random.Random(seed)
    ent, people, companies, cities = _entities(rng, max(4, n_people))
    passages = [make_passage(n, passage_text(n, ent[n])) for n in ent]

    pools = _question_pools(ent, people, companies, cities, rng)
    weights = _kind_weights(kinds)
    quotas = _quotas(weights, {k: len(pools[k]) for k in weights}, n_questions)
    chosen = []
    for kind in KINDS:
        chosen += [(kind, q) for q in pools.get(kind, [])[: quotas.get(kind, 0)]]
    rng.shuffle(chosen)
    questions = _examples(seed, chosen, passages, n_distractors, rng)
    return World(seed=seed, entities=ent, passages=passages, questions=questions)


def _entities(rng: random.Random, n_people: int) -> tuple[dict[str, dict[str, Any]], list, list, list]:
    """The entities of a world (name -> attributes) and the names of its people, companies and cities.

    Sizes: 2/3 as many companies as people (each founded by a different person); a quarter as many cities;
    a third as many countries as cities. Every draw comes from `rng`, in a fixed order.
    """
    names = _Names(rng)
    n_companies = max(2, n_people * 2 // 3)
    n_cities = max(2, n_people // 4)
    n_countries = max(2, n_cities // 3)

    countries = [
        names.word(2, coda=False, ending=rng.choice(["ia", "a", "land", "mar"])) for _ in range(n_countries)
    ]
    cities = [names.word(2) for _ in range(n_cities)]
    city_country = {c: countries[i % n_countries] for i, c in enumerate(cities)}
    people = [f"{names.word(2, coda=False)} {names.word(1)}" for _ in range(n_people)]
    companies = [f"{names.word(2)} {rng.choice(_SUFFIXES)}" for _ in range(n_companies)]
    birth_years = rng.sample(range(1900, 1900 + max(100, n_people)), n_people)
    founded_years = rng.sample(range(1950, 1950 + max(70, n_companies)), n_companies)

    ent: dict[str, dict[str, Any]] = {}
    for c in countries:
        capital = next(x for x in cities if city_country[x] == c)
        ent[c] = dict(type="country", capital=capital)
    for c in cities:
        ent[c] = dict(type="city", country=city_country[c])
    for p, year in zip(people, birth_years):
        ent[p] = dict(
            type="person", born_in=rng.choice(cities), born_year=year, profession=rng.choice(_PROFESSIONS)
        )
    founders = rng.sample(people, n_companies)
    for c, year, founder in zip(companies, founded_years, founders):
        ent[c] = dict(
            type="company",
            founder=founder,
            founded=year,
            hq=rng.choice(cities),
            product=rng.choice(_PRODUCTS),
        )
    return ent, people, companies, cities


def passage_text(name: str, e: dict[str, Any]) -> str:
    """The passage of entity `name` with attributes `e`: 1-2 templated sentences (< 300 characters)."""
    if e["type"] == "person":
        return f"{name} is a {e['profession']}. {name} was born in {e['born_year']} in the city of {e['born_in']}."
    if e["type"] == "company":
        return (
            f"{name} is a company that makes {e['product']}. It was founded in {e['founded']} by "
            f"{e['founder']} and is based in the city of {e['hq']}."
        )
    if e["type"] == "city":
        return f"{name} is a city in the country of {e['country']}."
    return f"{name} is a country. Its capital is the city of {e['capital']}."


def _examples(seed: int, chosen: list, passages: list[Passage], n_distractors: int, rng) -> list[QAExample]:
    """The chosen (kind, (question, answer, support)) as `QAExample`s, each with its supporting passages
    and `n_distractors` others as its context, shuffled."""
    by_title = {p.title: p for p in passages}
    questions = []
    for i, (kind, (question, answer, support)) in enumerate(chosen):
        others = [p for p in passages if p.title not in support]
        ctx = [by_title[t] for t in support] + rng.sample(others, min(n_distractors, len(others)))
        rng.shuffle(ctx)
        questions.append(
            QAExample(
                id=f"gen{seed}-{i:04d}",
                question=question,
                answers=[str(answer)],
                supporting_titles=list(support),
                dataset="generated",
                kind=kind,
                hops=KIND_HOPS[kind],
                context=ctx,
            )
        )
    return questions


def _question_pools(ent, people, companies, cities, rng) -> dict[str, list[tuple[str, str, list[str]]]]:
    """Every distinct question of each kind as (question, answer, supporting titles), shuffled."""
    pools: dict[str, list] = {k: [] for k in KINDS}
    for p in people:
        e = ent[p]
        pools["single"] += [
            (f"In which city was {p} born?", e["born_in"], [p]),
            (f"In which year was {p} born?", e["born_year"], [p]),
        ]
        pools["bridge"].append(
            (f"In which country was {p} born?", ent[e["born_in"]]["country"], [p, e["born_in"]])
        )
    for c in cities:
        pools["single"].append((f"In which country is the city of {c}?", ent[c]["country"], [c]))
    for c in companies:
        e, f = ent[c], ent[ent[c]["founder"]]
        founder = e["founder"]
        pools["single"] += [
            (f"Who founded {c}?", founder, [c]),
            (f"In which year was {c} founded?", e["founded"], [c]),
        ]
        pools["bridge"] += [
            (f"In which city was the founder of {c} born?", f["born_in"], [c, founder]),
            (f"In which year was the founder of {c} born?", f["born_year"], [c, founder]),
            (f"What is the profession of the founder of {c}?", f["profession"], [c, founder]),
            (f"In which country is {c} based?", ent[e["hq"]]["country"], [c, e["hq"]]),
        ]
        pools["3hop"].append(
            (
                f"In which country is the birthplace of the founder of {c}?",
                ent[f["born_in"]]["country"],
                [c, founder, f["born_in"]],
            )
        )
    for group, key, (early, late) in (
        (people, "born_year", ("Who was born earlier, {a} or {b}?", "Who was born later, {a} or {b}?")),
        (
            companies,
            "founded",
            ("Which company was founded first, {a} or {b}?", "Which company was founded later, {a} or {b}?"),
        ),
    ):
        pairs = [(a, b) for i, a in enumerate(group) for b in group[i + 1 :]]
        rng.shuffle(pairs)
        for n, (a, b) in enumerate(pairs[: 4 * len(group)]):
            if rng.random() < 0.5:
                a, b = b, a
            first = a if ent[a][key] < ent[b][key] else b
            second = b if first == a else a
            template, answer = (early, first) if n % 2 == 0 else (late, second)
            pools["comparison"].append((template.format(a=a, b=b), answer, [a, b]))
    for pool in pools.values():
        rng.shuffle(pool)
    return pools


def _kind_weights(kinds: dict[str, float] | tuple[str, ...] | list[str] | None) -> dict[str, float]:
    if kinds is None:
        kinds = DEFAULT_KIND_WEIGHTS
    if not isinstance(kinds, dict):
        kinds = {k: 1.0 for k in kinds}
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown question kind(s) {sorted(unknown)}; valid: {', '.join(KINDS)}")
    if any(w < 0 for w in kinds.values()) or sum(kinds.values()) <= 0:
        raise ValueError(f"kind weights must be >= 0 with a positive sum; got {kinds}")
    total = sum(kinds.values())
    return {k: w / total for k, w in kinds.items() if w > 0}


def _quotas(weights: dict[str, float], available: dict[str, int], n: int) -> dict[str, int]:
    """Largest-remainder counts per kind, capped by what each pool has; the shortfall is spread over the rest."""
    quotas = {k: 0 for k in weights}
    remaining, open_kinds = n, dict(weights)
    while remaining > 0 and open_kinds:
        total = sum(open_kinds.values())
        raw = {k: remaining * w / total for k, w in open_kinds.items()}
        add = {k: int(v) for k, v in raw.items()}
        for k in sorted(raw, key=lambda k: raw[k] - add[k], reverse=True)[: remaining - sum(add.values())]:
            add[k] += 1
        for k, a in add.items():
            a = min(a, available[k] - quotas[k])
            quotas[k] += a
            remaining -= a
        open_kinds = {k: w for k, w in open_kinds.items() if quotas[k] < available[k]}
    return quotas


def split_world(world: World, eval_fraction: float = 0.25) -> tuple[list[QAExample], list[QAExample]]:
    """Deterministic (train, eval) split, stratified by kind: the last share of each kind is held out.

    The split is by question, not by entity: an eval question may ask about an entity that a training
    question also touches (with a different question). The passages are shared (one world, one corpus).
    """
    if not 0.0 <= eval_fraction <= 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1]; got {eval_fraction}")
    train, held = [], []
    for kind in KINDS:
        qs = [q for q in world.questions if q.kind == kind]
        n_eval = round(len(qs) * eval_fraction)
        train += qs[: len(qs) - n_eval]
        held += qs[len(qs) - n_eval :]
    order = {q.id: i for i, q in enumerate(world.questions)}
    return sorted(train, key=lambda q: order[q.id]), sorted(held, key=lambda q: order[q.id])


@functools.lru_cache(maxsize=8)
def _cached_world(seed: int, n_people: int, n_questions: int) -> World:
    return generate_world(seed=seed, n_people=n_people, n_questions=n_questions)


def world_from_config(cfg: Config) -> World:
    """The world of `cfg` (world_seed, world_entities, world_questions), generated once per process."""
    return _cached_world(cfg.world_seed, cfg.world_entities, cfg.world_questions)


# ====================================================================== the world as readable files

WORLD_FILES = ("passages.jsonl", "questions_train.jsonl", "questions_eval.jsonl")


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _question_row(q: QAExample) -> dict:
    """One question as the `{id, question, answer, ...}` line that `data.load_qa_jsonl` reads back."""
    return {
        "id": q.id,
        "question": q.question,
        "answer": q.answer,
        "type": q.kind,
        "hops": q.hops,
        "supporting_titles": list(q.supporting_titles),
        "context_titles": [p.title for p in q.context],
    }


def world_files(world: World, eval_fraction: float = 0.25) -> dict[str, str]:
    """The text of each file in `WORLD_FILES`: passages as `{id, title, text}` lines (what
    `data.load_corpus_file` reads), the train / eval questions of `split_world` as `{id, question, answer,
    type, hops, supporting_titles, context_titles}` lines (what `data.load_qa_jsonl` reads)."""
    train, held = split_world(world, eval_fraction)
    return {
        "passages.jsonl": _jsonl([{"id": p.id, "title": p.title, "text": p.text} for p in world.passages]),
        "questions_train.jsonl": _jsonl([_question_row(q) for q in train]),
        "questions_eval.jsonl": _jsonl([_question_row(q) for q in held]),
    }


def write_world(world: World, folder: str | Path, eval_fraction: float = 0.25) -> list[Path]:
    """Write `world_files(world, eval_fraction)` into `folder` (each file atomically); returns the paths.

    The committed `data/generated/` is `write_world(world_from_config(Config()), "data/generated",
    Config().eval_fraction)`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in world_files(world, eval_fraction).items():
        atomic_write_text(folder / name, text)
        paths.append(folder / name)
    return paths


# ====================================================================== the dataset of a config


def load_examples(cfg: Config, split: str = "eval") -> list[QAExample]:
    """Questions of `cfg.dataset` for `split` ("train" or "eval").

    - generated: `split_world(world_from_config(cfg), cfg.eval_fraction)` (`cfg.data_path` is not read);
    - a real dataset: `data.load_real_examples(cfg, split)` (`cfg.data_path`, else the sample in
      `cfg.data_dir`, else the hub).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'eval'; got {split!r}")
    if cfg.dataset == "generated":
        train, held = split_world(world_from_config(cfg), cfg.eval_fraction)
        return train if split == "train" else held
    return load_real_examples(cfg, split)


def load_corpus(cfg: Config, examples: list[QAExample] | None = None) -> list[Passage]:
    """Passages to search: `cfg.corpus_path` if set; for the generated world, all its passages; for the
    2Wiki sample, its corpus file; else the union of the context passages of `examples` (default: the eval
    questions), deduplicated by (title, text)."""
    path = default_corpus_path(cfg)
    if path is not None:
        return load_corpus_file(path)
    if cfg.dataset == "generated":
        return list(world_from_config(cfg).passages)
    if examples is None:
        examples = load_examples(cfg, "eval")
    return context_passages(examples, cfg.dataset)
