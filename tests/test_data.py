"""Loaders for the real dataset formats: hand-written fixtures, malformed files, and the real samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentr1_nb.config import Config
from agentr1_nb.data import (
    DataFormatError,
    context_passages,
    fill_titles_from_question,
    load_2wiki,
    load_corpus_file,
    load_hotpotqa,
    load_hub,
    load_musique,
    load_qa_jsonl,
    load_real_examples,
    read_musique,
    read_records,
)
from agentr1_nb.world import load_corpus, load_examples

FIX = Path(__file__).parent / "fixtures"


def test_hotpotqa_official():
    exs = load_hotpotqa(FIX / "hotpot_official.json")
    assert [e.id for e in exs] == ["hp-1", "hp-2"]
    e = exs[0]
    assert e.answers == ["Ostend"] and e.answer == "Ostend"
    assert e.supporting_titles == ["Moonfall Diary", "Ada Brel"]  # deduplicated, first-seen order
    assert e.kind == "bridge" and e.hops == 2 and e.dataset == "hotpotqa"
    assert [p.title for p in e.context] == ["Moonfall Diary", "Ada Brel", "Ostend"]
    assert e.context[0].text == "Moonfall Diary is a 1990 film. It was directed by Ada Brel."


def test_hotpotqa_hf_layout_with_string_literals():
    exs = load_hotpotqa(FIX / "hotpot_hf.json")
    assert [e.id for e in exs] == ["hotpot_hf-0", "hotpot_hf-1"]  # no id field: file stem + index
    assert exs[0].supporting_titles == ["Ada Brel", "Tom Vey"]
    assert exs[1].supporting_titles == ["Moonfall Diary"]
    assert [p.title for p in exs[1].context] == ["Moonfall Diary", "Ostend"]
    assert exs[1].context[0].text.endswith("directed by Ada Brel.")


def test_2wiki_official_and_qa_lines():
    exs = load_2wiki(FIX / "2wiki_official.json")
    assert exs[0].kind == "compositional" and exs[0].hops == 2
    assert exs[1].kind == "bridge_comparison" and exs[1].hops == 4
    assert exs[0].supporting_titles == ["Glass Harbour", "Tom Vey"]
    assert "His mother is Mira Vey." in exs[0].context[1].text
    qa = load_2wiki(FIX / "2wiki_qa.jsonl")  # question/answer lines are dispatched to load_qa_jsonl
    assert [e.id for e in qa] == ["2wq-1", "2wq-2", "2wq-3"]
    assert qa[0].context == [] and qa[0].supporting_titles == [] and qa[0].dataset == "2wiki"


def test_corpus_file_dedup_and_titles_from_question():
    corpus = load_corpus_file(FIX / "corpus.json")
    assert len(corpus) == 6  # the duplicated "Ostend" passage appears once
    assert len({p.id for p in corpus}) == 6
    qa = load_qa_jsonl(FIX / "2wiki_qa.jsonl", "2wiki")
    assert fill_titles_from_question(qa, corpus) == 3
    assert qa[0].supporting_titles == ["Glass Harbour"]
    assert qa[1].supporting_titles == ["Glass Harbour", "Moonfall Diary (film)"]  # disambiguation stripped
    assert qa[2].supporting_titles == ["Ada Brel"]  # lower-case "place of birth" is not an entity


@pytest.mark.parametrize("name", ["musique.jsonl", "musique_list.json"])
def test_musique_lines_and_list(name):
    exs, skipped = read_musique(FIX / name)
    assert skipped == 1
    assert [e.id for e in exs] == ["2hop__1_2", "3hop1__5_6_7"]
    e = exs[0]
    assert e.answers == ["Ostend", "Oostende"]
    assert e.supporting_titles == ["Moonfall Diary", "Ada Brel"]  # decomposition order
    assert e.hops == 2 and e.kind == "2hop"
    # two different paragraphs under the title "Moonfall Diary" are both kept
    assert sum(p.title == "Moonfall Diary" for p in e.context) == 2
    assert exs[1].hops == 3 and exs[1].answers[1] == "Kingdom of Belgium"


def test_musique_counts_skipped(capsys):
    exs = load_musique(FIX / "musique.jsonl")
    assert len(exs) == 2
    assert "skipped 1 unanswerable" in capsys.readouterr().err


def test_load_examples_and_corpus_from_config():
    cfg = Config(dataset="musique", data_path=str(FIX / "musique.jsonl"))
    exs = load_examples(cfg, "eval")
    corpus = load_corpus(cfg, exs)
    assert len(corpus) == len({(p.title, p.text) for p in corpus}) == 5
    cfg = Config(dataset="2wiki", data_path=str(FIX / "2wiki_qa.jsonl"), corpus_path=str(FIX / "corpus.json"))
    exs = load_examples(cfg, "eval")
    assert exs[0].supporting_titles == ["Glass Harbour"]  # filled from the corpus titles
    assert len(load_corpus(cfg, exs)) == 6
    with pytest.raises(ValueError, match="corpus_path"):
        load_corpus(Config(dataset="2wiki", data_path=str(FIX / "2wiki_qa.jsonl")), exs)
    nope = Config()
    nope.dataset = "nope"  # past the config's own check: the loaders check too
    with pytest.raises(ValueError, match="unknown real dataset 'nope'"):
        load_examples(nope, "eval")
    with pytest.raises(ValueError, match="world.load_examples"):
        load_real_examples(Config(), "eval")  # the generated world is not a real dataset
    with pytest.raises(ValueError, match="split"):
        load_examples(Config(), "test")
    with pytest.raises(ValueError, match="split"):
        load_real_examples(cfg, "dev")


# ---------------------------------------------------------------- malformed input


def _write(tmp_path, name, content) -> Path:
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return p


def _jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_bad_json_names_file(tmp_path):
    p = _write(tmp_path, "broken.json", '[{"question": "a", ')
    with pytest.raises(DataFormatError, match=r"broken\.json.*not valid JSON.*truncated"):
        load_hotpotqa(p)
    p = _write(tmp_path, "broken.jsonl", '{"id": "1", "question": "q", "answer": "a"}\n{"id": 2,\n')
    with pytest.raises(DataFormatError, match=r"broken\.jsonl: line 2"):
        load_qa_jsonl(p, "2wiki")


def test_missing_field_names_file_item_field(tmp_path):
    recs = json.loads((FIX / "hotpot_official.json").read_text())
    del recs[1]["answer"]
    p = _write(tmp_path, "noanswer.json", recs)
    with pytest.raises(
        DataFormatError, match=r"noanswer\.json: item 1 \(id 'hp-2'\): missing field 'answer'"
    ):
        load_hotpotqa(p)
    recs = json.loads((FIX / "hotpot_official.json").read_text())
    recs[0]["context"] = [["only a title"]]
    p = _write(tmp_path, "badctx.json", recs)
    with pytest.raises(DataFormatError, match=r"badctx\.json: item 0 .*'context'"):
        load_hotpotqa(p)
    p = _write(tmp_path, "corpus.json", [{"title": "A", "text": "a"}, {"title": "B"}])
    with pytest.raises(DataFormatError, match=r"corpus\.json: item 1: missing field 'text'"):
        load_corpus_file(p)
    lines = (FIX / "musique.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    del rec["paragraphs"][1]["paragraph_text"]
    p = _write(tmp_path, "mq.jsonl", json.dumps(rec) + "\n")
    with pytest.raises(
        DataFormatError, match=r"mq\.jsonl: item 0 \(id '2hop__1_2'\): paragraphs\[1\].*paragraph_text"
    ):
        load_musique(p)
    p = _write(tmp_path, "notobj.json", [1, 2])
    with pytest.raises(DataFormatError, match=r"notobj\.json: item 0 is a int"):
        load_qa_jsonl(p, "2wiki")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_hotpotqa(tmp_path / "missing.json")
    with pytest.raises(DataFormatError, match="is a folder"):
        load_corpus_file(tmp_path)


# ---------------------------------------------------------------- edge cases (issue #14): an error or a fallback

QA = [
    {"id": "a", "question": "Who founded Brindle Abbey?", "answer": "Aldo Finch"},
    {"id": "b", "question": "Where was Aldo Finch born?", "answer": "Saltmere"},
]


def _qa(**changes) -> list[dict]:
    rows = [dict(r) for r in QA]
    rows[1].update(changes)
    return rows


@pytest.mark.parametrize(
    "answer,what",
    [(None, "null"), ("", "empty"), ("   ", "empty"), ([], "an empty list"), ({"text": "x"}, "a dict"),
     (True, "a bool"), (["Saltmere", None], "null")],
)  # fmt: skip
def test_null_or_empty_answer_is_an_error_naming_file_and_item(tmp_path, answer, what):
    p = _write(tmp_path, "qa.jsonl", _jsonl(_qa(answer=answer)))
    with pytest.raises(DataFormatError, match=rf"qa\.jsonl: item 1 \(id 'b'\): field 'answer' is {what}"):
        load_qa_jsonl(p, "2wiki")
    recs = json.loads((FIX / "hotpot_official.json").read_text())
    recs[0]["answer"] = answer
    p = _write(tmp_path, "hp.json", recs)
    with pytest.raises(DataFormatError, match=rf"hp\.json: item 0 \(id 'hp-1'\): field 'answer' is {what}"):
        load_hotpotqa(p)


def test_null_answer_never_becomes_the_string_none(tmp_path):
    lines = (FIX / "musique.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    rec["answer"] = None
    p = _write(tmp_path, "mq.jsonl", json.dumps(rec) + "\n")
    with pytest.raises(
        DataFormatError, match=r"mq\.jsonl: item 0 \(id '2hop__1_2'\): field 'answer' is null"
    ):
        load_musique(p)
    # null and empty aliases are dropped (a defined fallback); numbers are answers too
    rec["answer"], rec["answer_aliases"] = 1990, [None, "", "nineteen ninety"]
    p = _write(tmp_path, "mq.jsonl", json.dumps(rec) + "\n")
    assert load_musique(p)[0].answers == ["1990", "nineteen ninety"]


@pytest.mark.parametrize("question", ["", "  \n ", None, 5])
def test_empty_question_is_an_error(tmp_path, question):
    p = _write(tmp_path, "qa.jsonl", _jsonl(_qa(question=question)))
    with pytest.raises(DataFormatError, match=r"qa\.jsonl: item 1 \(id 'b'\): field 'question'"):
        load_qa_jsonl(p, "2wiki")
    recs = json.loads((FIX / "2wiki_official.json").read_text())
    recs[1]["question"] = question
    p = _write(tmp_path, "2w.json", recs)
    with pytest.raises(DataFormatError, match=r"2w\.json: item 1 \(id '2w-2'\): field 'question'"):
        load_2wiki(p)


def test_duplicate_ids_are_an_error_naming_both_items(tmp_path):
    rows = QA + [{"id": "a", "question": "Again?", "answer": "x"}]
    p = _write(tmp_path, "dup.jsonl", _jsonl(rows))
    with pytest.raises(DataFormatError, match=r"dup\.jsonl: item 2 has the same id 'a' as item 0"):
        load_qa_jsonl(p, "2wiki")
    recs = json.loads((FIX / "hotpot_official.json").read_text())
    recs[1]["_id"] = recs[0]["_id"]
    with pytest.raises(DataFormatError, match=r"item 1 has the same id 'hp-1' as item 0"):
        load_hotpotqa(_write(tmp_path, "dup.json", recs))
    lines = (
        (FIX / "musique.jsonl").read_text().splitlines()
    )  # item 1 is unanswerable: indices stay the file's
    rec = json.loads(lines[2])
    rec["id"] = json.loads(lines[0])["id"]
    p = _write(tmp_path, "mq.jsonl", "\n".join([lines[0], lines[1], json.dumps(rec)]) + "\n")
    with pytest.raises(DataFormatError, match=r"mq\.jsonl: item 2 has the same id '2hop__1_2' as item 0"):
        load_musique(p)


def test_2wiki_format_is_decided_per_item_not_by_item_0(tmp_path):
    official = json.loads((FIX / "2wiki_official.json").read_text())
    qa_item = {"id": "2wq-9", "question": "Who directed Glass Harbour?", "answer": "Tom Vey"}
    exs = load_2wiki(_write(tmp_path, "mixed.json", [qa_item] + official))
    assert [e.id for e in exs] == ["2wq-9", "2w-1", "2w-2"]
    assert exs[0].context == [] and exs[0].supporting_titles == []
    assert [len(e.context) for e in exs[1:]] == [3, 2]  # the later items keep their passages
    assert exs[1].supporting_titles == ["Glass Harbour", "Tom Vey"] and exs[2].hops == 4
    # the other order too, and the corpus of a mixed file is the union of the items that have passages
    exs = load_2wiki(_write(tmp_path, "mixed2.json", official + [qa_item]))
    assert [len(e.context) for e in exs] == [3, 2, 0]
    assert len(context_passages(exs)) == 4


def test_empty_files_say_they_are_empty(tmp_path):
    for content in ["", "  \n\n", "\ufeff"]:
        p = _write(tmp_path, "empty.jsonl", content)
        with pytest.raises(DataFormatError, match=r"empty\.jsonl: the file is empty"):
            load_2wiki(p)
    for content in ["[]", '{"data": []}']:
        p = _write(tmp_path, "none.json", content)
        with pytest.raises(DataFormatError, match=r"none\.json: holds no records"):
            load_hotpotqa(p)
    p = _write(tmp_path, "empty.jsonl", "")
    cfg = Config(dataset="2wiki", data_path=str(p))
    with pytest.raises(DataFormatError, match="the file is empty"):  # not "question-only format"
        load_corpus(cfg)
    with pytest.raises(DataFormatError, match=r"corpus\.json: the file is empty"):
        load_corpus_file(_write(tmp_path, "corpus.json", "\n"))


def test_all_unanswerable_musique_file_is_an_error(tmp_path):
    lines = (FIX / "musique.jsonl").read_text().splitlines()
    unanswerable = [ln for ln in lines if json.loads(ln).get("answerable") is False]
    p = _write(tmp_path, "mq.jsonl", "\n".join(unanswerable) + "\n")
    with pytest.raises(ValueError, match=r"no musique questions to use in .*mq\.jsonl"):
        load_examples(Config(dataset="musique", data_path=str(p)), "eval")


def test_non_utf8_file_names_the_file(tmp_path):
    p = _write(
        tmp_path,
        "latin1.jsonl",
        '{"id": "a", "question": "Où est Zürich?", "answer": "x"}\n'.encode("latin-1"),
    )
    with pytest.raises(DataFormatError, match=r"latin1\.jsonl: not UTF-8 text \(byte 0xf9 at offset 26\)"):
        load_qa_jsonl(p, "2wiki")
    # a UTF-8 byte-order mark is accepted
    p = _write(tmp_path, "bom.json", "\ufeff" + json.dumps(QA))
    assert [e.id for e in load_qa_jsonl(p, "2wiki")] == ["a", "b"]


@pytest.mark.parametrize(
    "content,match",
    [
        (
            '[{"id": "a", "question": "q", "answer": "x"}, {"id": "b", "qu',
            r"t\.json: not valid JSON.*truncated",
        ),
        (
            '[{"id": "a", "question": "q", "answer": "x"}] []',
            r"t\.json: not valid JSON \(line 1, column 47\)",
        ),
        ('{"id": "a", "question": "q", "answer": "x"', r"t\.json: line 1 is not valid JSON"),
        ('{"id": "a", "question": "q", "answer": "x"}\n{"id": "b", "question": "q",\n', r"t\.json: line 2"),
        ("id,question,answer\na,q,x\n", r"t\.json: line 1 is not valid JSON"),
        ('["a", "b"]', r"t\.json: item 0 is a str, expected a JSON object"),
    ],
)
def test_corrupt_or_truncated_json_names_the_file(tmp_path, content, match):
    p = _write(tmp_path, "t.json", content)
    with pytest.raises(DataFormatError, match=match):
        read_records(p)


def test_hub_offline_error_names_alternatives(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match=r"hotpotqa/dev_distractor_100\.json.*generated"):
        load_hub("hotpotqa", "eval")
    with pytest.raises(RuntimeError, match="data_path"):
        load_examples(Config(dataset="musique"), "eval")
    with pytest.raises(ValueError, match="unknown hub dataset"):
        load_hub("nope")


# ---------------------------------------------------------------- the real samples (skip without ../shared/data)


def test_real_hotpotqa_samples(shared_data):
    cfg = Config(dataset="hotpotqa", data_dir=str(shared_data))
    dev = load_examples(cfg, "eval")
    train = load_examples(cfg, "train")
    assert len(dev) == 100 and len(train) == 100
    assert sum(e.kind == "bridge" for e in dev) == 79 and sum(e.kind == "comparison" for e in train) == 22
    for e in dev + train:
        assert e.answer and len(e.supporting_titles) == 2 and 2 <= len(e.context) <= 10
        assert set(e.supporting_titles) <= {p.title for p in e.context}
    corpus = load_corpus(cfg, dev)
    assert 900 < len(corpus) <= 1000


def test_real_2wiki_sample(shared_data, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the train split has no local sample: never download it here
    cfg = Config(dataset="2wiki", data_dir=str(shared_data))
    exs = load_examples(cfg, "eval")
    corpus = load_corpus(cfg, exs)
    assert len(exs) == 87 and len(corpus) == 6119
    titles = {p.title for p in corpus}
    with_titles = [e for e in exs if e.supporting_titles]
    assert len(with_titles) > 50
    assert all(set(e.supporting_titles) <= titles for e in with_titles)
    with pytest.raises(RuntimeError, match="no local"):
        load_examples(cfg.replace(dataset="2wiki"), "train")


# ------------------------------------------------------------------------------------ line ends and numbers
def test_json_lines_split_on_newlines_only(tmp_path):
    """U+2028, U+2029 and U+0085 are valid inside JSON strings; str.splitlines() would cut a record there."""
    qs = ["Who\u2028is A?", "Where\u2029is B?", "What\u0085is C?"]
    lines = [
        json.dumps({"id": str(i), "question": q, "answer": "x"}, ensure_ascii=False) for i, q in enumerate(qs)
    ]
    path = tmp_path / "qa.jsonl"
    path.write_text("\r\n".join(lines) + "\n", encoding="utf-8")
    exs = load_qa_jsonl(path, "2wiki")
    assert [e.question for e in exs] == qs
    musique = json.loads((FIX / "musique.jsonl").read_text().splitlines()[0])
    musique["paragraphs"][0]["paragraph_text"] = "A city\u2028on the coast."
    (tmp_path / "mq.jsonl").write_text(json.dumps(musique, ensure_ascii=False) + "\n", encoding="utf-8")
    (ex,), _ = read_musique(tmp_path / "mq.jsonl")
    assert ex.context[0].text == "A city\u2028on the coast."


@pytest.mark.parametrize(
    "answer, what",
    [
        ("NaN", "constant NaN"),
        ("Infinity", "constant Infinity"),
        ("-Infinity", "constant -Infinity"),
        ("1e400", "1e400 is out of range"),
        ("7" * 5000, "integer of 5000 digits"),
    ],
)
def test_non_finite_or_huge_numbers_are_an_error_naming_file_and_line(tmp_path, answer, what):
    for name, line, text in [
        ("qa.jsonl", 2, '{"id": "a", "question": "Q?", "answer": "x"}\n{"id": "b", "question": "Q?", "answer": ' + answer + "}\n"),
        ("qa.json", 3, '[\n{"id": "a", "question": "Q?", "answer": "x"},\n{"id": "b", "question": "Q?", "answer": ' + answer + "}\n]\n"),
    ]:  # fmt: skip
        (tmp_path / name).write_text(text)
        with pytest.raises(DataFormatError, match=rf"{name}: line {line}: .*{what}") as e:
            load_qa_jsonl(tmp_path / name, "2wiki")
        assert "\n" not in str(e.value)


def test_nan_inside_a_string_is_text(tmp_path):
    path = tmp_path / "qa.json"
    path.write_text('[{"id": "a", "question": "Is NaN or Infinity a number?", "answer": "NaN"}]')
    assert load_qa_jsonl(path, "2wiki")[0].answers == ["NaN"]


def test_numeric_answers_become_their_text_when_finite_and_sane(tmp_path):
    path = tmp_path / "qa.jsonl"
    rows = [{"id": "a", "question": "Q?", "answer": 1887}, {"id": "b", "question": "Q?", "answer": 2.5}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert [e.answers for e in load_qa_jsonl(path, "2wiki")] == [["1887"], ["2.5"]]
    path.write_text(json.dumps({"id": "c", "question": "Q?", "answer": int("9" * 60)}))
    with pytest.raises(
        DataFormatError, match=r"qa\.jsonl: item 0 \(id 'c'\): field 'answer' is the number 9+\.\.\."
    ):
        load_qa_jsonl(path, "2wiki")


def test_hub_rows_with_non_finite_answers_are_refused():
    """Rows from the hub never pass through the JSON reader: the answer check itself refuses NaN."""
    from agentr1_nb.data import parse_2wiki

    rows = [{"id": "a", "question": "Q?", "answer": float("nan")}]
    with pytest.raises(DataFormatError, match=r"item 0 \(id 'a'\): field 'answer' is the number nan"):
        parse_2wiki(Path("<hub>"), rows)


# ------------------------------------------------------------------------------------ MuSiQue field types
def _musique_row(**changes):
    row = json.loads((FIX / "musique.jsonl").read_text().splitlines()[0])
    row.update(changes)
    return row


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(question_decomposition=3), "'question_decomposition' has type int"),
        (dict(question_decomposition="abc"), "'question_decomposition' has type str"),
        (dict(question_decomposition=[1, 2]), r"question_decomposition\[0\] is a int"),
        (dict(question_decomposition=[{"paragraph_support_idx": [1]}]), r"question_decomposition\[0\]\.paragraph_support_idx' has type list"),
        (dict(question_decomposition=[{"paragraph_support_idx": "1"}]), "paragraph_support_idx' has type str"),
        (dict(answerable="false"), "'answerable' must be true or false, not str 'false'"),
        (dict(answerable=0), "'answerable' must be true or false, not int"),
    ],
)  # fmt: skip
def test_musique_fields_of_the_wrong_type_are_errors(tmp_path, changes, field):
    path = tmp_path / "mq.jsonl"
    path.write_text(json.dumps(_musique_row(**changes)) + "\n")
    with pytest.raises(DataFormatError, match=rf"mq\.jsonl: item 0 \(id '2hop__1_2'\): .*{field}"):
        read_musique(path)


def test_musique_is_supporting_must_be_a_boolean(tmp_path):
    row = _musique_row()
    row["paragraphs"][0]["is_supporting"] = "false"
    path = tmp_path / "mq.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataFormatError, match=r"'paragraphs\[0\]\.is_supporting' must be true or false"):
        read_musique(path)


def test_musique_null_fields_keep_their_defaults(tmp_path):
    path = tmp_path / "mq.jsonl"
    path.write_text(json.dumps(_musique_row(answerable=None, question_decomposition=None)) + "\n")
    (ex,), skipped = read_musique(path)
    assert skipped == 0 and ex.hops == 0 and ex.supporting_titles  # from is_supporting alone
