"""A probe of bad command lines (issue 34): each must end with exit status 2 and exactly one line on stderr,
`error: ...`, naming the culprit (the flag, field, file or value), before any model loads.

The cases run `main([...])` in-process (a few through `python -m agentr1_nb` too). Classes: abbreviated
options, an empty --out, a flag and the same key=value disagreeing, a key=value given twice, numbers out of
range or past int64 / 2**64, duplicate seeds, variants or datasets, unknown names and values, and the older
classes of test_cli (bad preset, field, value; contradicting flags).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentr1_nb.__main__ import main

BIG = "1" * 401  # a 401-digit int
HUGE = "9" * 5000  # past Python's 4,300-digit int conversion limit
EVAL = ["eval", "--method", "tool_call", "--dataset", "generated"]
RETRIEVAL = ["retrieval", "--dataset", "generated"]
AGENT = ["eval", "--method", "agent", "--adapter", "some/adapter", "--dataset", "generated"]
NOT_AN_ADAPTER = str(Path(__file__).resolve().parent / "fixtures")  # a folder without adapter_config.json

CASES = [
    # ---- argparse abbreviations are off: a prefix of an option is an unknown option, never that option
    ("abbrev-no-resume", ["train", "--out", "R", "--no"], "--no"),
    ("abbrev-no-res", ["train", "--out", "R", "--no-res"], "--no-res"),
    ("abbrev-compare-seeds", ["compare", "--see", "0"], "--see"),
    ("abbrev-eval-limit", [*EVAL, "--lim", "3"], "--lim"),
    ("abbrev-info-json", ["info", "--js"], "--js"),
    ("abbrev-ask-adapter", ["ask", "--adapt", "x"], "--adapt"),
    ("abbrev-bench-steps", ["bench", "trainers", "--step", "3"], "--step"),
    ("abbrev-demo-out", ["demo", "--ou", "R"], "--ou"),
    ("abbrev-check-tiny", ["check", "--tin"], "--tin"),
    ("abbrev-retriever", [*RETRIEVAL, "--retr", "dense"], "--retr"),
    ("abbrev-preset", ["info", "--pre", "a100"], "--pre"),
    # ---- an empty --out is an error (it would write the run into the current folder)
    ("empty-out-train", ["train", "--out", ""], "--out"),
    ("blank-out-train", ["train", "--out", "   "], "--out"),
    ("empty-out-demo", ["demo", "--out", ""], "--out"),
    ("empty-out-compare", ["compare", "--out", ""], "--out"),
    ("empty-out-eval", [*EVAL, "--out", ""], "--out"),
    # ---- a flag and the same key=value with another value: an error naming both
    ("retriever-flag-vs-key", [*RETRIEVAL, "--retriever", "dense", "retriever=bm25"], "retriever='bm25'"),
    (
        "data-path-flag-vs-key",
        [*RETRIEVAL, "--data-path", "a.json", "data_path=b.json"],
        "data_path='b.json'",
    ),
    ("corpus-flag-vs-key", [*RETRIEVAL, "--corpus", "a.json", "corpus_path=b.json"], "corpus_path='b.json'"),
    ("dataset-flag-vs-key", [*RETRIEVAL, "dataset=hotpotqa"], "dataset='hotpotqa'"),
    ("eval-data-path", [*EVAL, "--data-path", "a.json", "data_path=b.json"], "--data-path 'a.json'"),
    ("eval-corpus", [*EVAL, "--corpus", "a.json", "corpus_path=b.json"], "--corpus 'a.json'"),
    ("eval-dataset", [*EVAL, "dataset=2wiki"], "dataset='2wiki'"),
    (
        "eval-prompt-style",
        ["eval", "--method", "naive_rag", "--dataset", "generated", "--prompt-style", "few_shot"]
        + ["prompt_style=zero_shot"],
        "prompt_style='zero_shot'",
    ),
    ("eval-agent-prompt-style-key", [*AGENT, "prompt_style=few_shot"], "prompt_style=few_shot"),
    ("eval-agent-prompt-style-flag", [*AGENT, "--prompt-style", "few_shot"], "--prompt-style"),
    ("compare-steps", ["compare", "--steps", "3", "steps=4"], "steps=4"),
    ("compare-eval-n", ["compare", "--eval-n", "5", "eval_questions=6"], "eval_questions=6"),
    ("compare-fast-vs-key", ["compare", "--fast", "group_size=3"], "group_size=3"),
    ("compare-seed-key", ["compare", "seed=5"], "seed=5"),
    ("bench-steps", ["bench", "trainers", "--steps", "3", "steps=4"], "steps=4"),
    ("check-steps", ["check", "--tiny", "--steps", "3", "steps=4"], "steps=4"),
    ("bench-steps-wrong-bench", ["bench", "logprobs", "--steps", "3"], "--steps"),
    ("bench-late-key-twice", ["bench", "step", "seed=1", "--json", "seed=2"], "seed is given twice"),
    ("bench-late-not-key-value", ["bench", "step", "--json", "steps"], "unrecognized arguments: steps"),
    ("ask-key-value-not-set", ["ask", "3", "seed=1"], "unrecognized arguments: seed=1"),
    # ---- a key=value given twice with two values
    ("twice-seed", ["info", "seed=1", "seed=2"], "seed is given twice"),
    ("twice-data-path", ["info", "data_path=a", "data_path=b"], "data_path is given twice"),
    ("twice-ask-set", ["ask", "--set", "max_turns=1", "--set", "max_turns=2"], "max_turns is given twice"),
    ("twice-train", ["train", "--out", "R", "lr=1e-4", "lr=2e-4"], "lr is given twice"),
    ("twice-check", ["check", "--tiny", "algo=ppo", "algo=rloo"], "algo is given twice"),
    (
        "twice-trl",
        ["train", "--out", "R", "--backend", "trl", "--trl", "beta=0.1", "--trl", "beta=0.2"],
        "--trl beta is given twice",
    ),
    # ---- numbers of the command line's own flags
    ("eval-limit-negative", [*EVAL, "--limit", "-1"], "--limit"),
    ("eval-limit-text", [*EVAL, "--limit", "ten"], "--limit"),
    ("eval-limit-huge", [*EVAL, "--limit", HUGE], "--limit"),
    ("compare-eval-n-zero", ["compare", "--eval-n", "0"], "--eval-n"),
    ("compare-eval-n-negative", ["compare", "--eval-n", "-3"], "--eval-n"),
    ("compare-steps-negative", ["compare", "--steps", "-1"], "--steps"),
    ("compare-seeds-twice", ["compare", "--seeds", "0", "0"], "--seeds lists 0 twice"),
    ("compare-seeds-twice-apart", ["compare", "--seeds", "1", "2", "1"], "--seeds lists 1 twice"),
    ("compare-variants-twice", ["compare", "--variants", "GRPO", "GRPO"], "--variants lists GRPO twice"),
    (
        "compare-baseline-sets-twice",
        ["compare", "--baseline-sets", "generated", "generated"],
        "--baseline-sets lists generated twice",
    ),
    ("compare-seed-negative", ["compare", "--seeds", "-1"], "--seeds"),
    ("compare-seed-2-64", ["compare", "--seeds", str(2**64)], "--seeds"),
    ("compare-seed-2-32", ["compare", "--seeds", str(2**32)], "--seeds"),
    ("compare-seed-big", ["compare", "--seeds", BIG], "--seeds"),
    ("compare-seed-float", ["compare", "--seeds", "1e3"], "--seeds"),
    ("retrieval-k-zero", [*RETRIEVAL, "--k", "0"], "--k"),
    ("retrieval-k-401-digits", [*RETRIEVAL, "--k", BIG], "--k"),
    ("compare-steps-401-digits", ["compare", "--steps", BIG], "--steps"),
    ("bench-steps-zero", ["bench", "trainers", "--steps", "0"], "--steps"),
    ("check-steps-zero", ["check", "--steps", "0"], "--steps"),
    # ---- numbers at the edges of the Config: the field is named
    ("seed-negative", ["train", "--out", "R", "seed=-1"], "seed=-1"),
    ("seed-401-digits", ["info", f"seed={BIG}"], "seed="),
    ("seed-2-64", ["info", f"seed={2**64}"], f"seed={2**64}"),
    ("seed-2-32", ["info", f"seed={2**32}"], f"seed={2**32}"),
    ("world-seed-2-32", ["info", f"world_seed={2**32}"], "world_seed="),
    ("steps-401-digits", ["info", f"steps={BIG}"], "steps="),
    ("steps-5000-digits", ["info", f"steps={HUGE}"], "'steps'"),
    ("max-turns-minus-huge", ["info", "max_turns=-" + "9" * 30], "max_turns="),
    ("tool-timeout-1e10", ["info", "tool_timeout_s=1e10"], "tool_timeout_s="),
    ("lr-1e400", ["info", "lr=1e400"], "lr=inf"),
    ("lr-nan", ["info", "lr=nan"], "lr=nan"),
    ("ask-seed-2-64", ["ask", "--set", f"seed={2**64}"], "seed="),
    # ---- the older classes (test_cli): bad preset, field, value, command; contradicting flags
    ("preset-unknown", ["info", "--preset", "tpu_pod"], "tpu_pod"),
    ("field-unknown", ["info", "group_sizee=3"], "group_sizee"),
    ("field-not-key-value", ["info", "group_size"], "group_size"),
    ("int-not-int", ["info", "group_size=three"], "group_size"),
    ("int-float-text", ["info", "group_size=1e3"], "group_size"),
    ("bool-not-bool", ["info", "loss_mask=maybe"], "loss_mask"),
    ("choice-unknown", ["info", "algo=gpro"], "algo='gpro'"),
    ("dataset-unknown", ["info", "dataset=trivia"], "dataset='trivia'"),
    ("range-save-every", ["info", "save_every=0"], "save_every=0"),
    ("range-temperature", ["info", "temperature=0"], "temperature="),
    ("range-top-p", ["info", "top_p=1.5"], "top_p=1.5"),
    ("lr-inf", ["info", "lr=inf"], "lr=inf"),
    ("model-empty", ["info", "model= "], "model"),
    ("group-algo-one-sample", ["info", "group_size=1", "algo=grpo"], "group_size=1"),
    ("command-unknown", ["fly"], "'fly'"),
    ("bench-unknown", ["bench", "nothing"], "'nothing'"),
    ("method-unknown", ["eval", "--method", "flop", "--dataset", "generated"], "'flop'"),
    ("prompt-style-unknown", [*EVAL, "--prompt-style", "2shot"], "'2shot'"),
    ("retriever-unknown", [*RETRIEVAL, "--retriever", "tfidf"], "'tfidf'"),
    ("weights-unknown", ["check", "--weights", "odd"], "'odd'"),
    ("eval-needs-dataset", ["eval", "--method", "tool_call"], "--dataset"),
    ("eval-dataset-unknown", ["eval", "--method", "tool_call", "--dataset", "trivia"], "dataset='trivia'"),
    ("eval-agent-needs-adapter", ["eval", "--method", "agent", "--dataset", "generated"], "--adapter"),
    ("train-needs-out", ["train", "steps=1"], "--out"),
    ("trl-needs-backend", ["train", "--out", "R", "--trl", "use_vllm=true"], "--trl"),
    ("compare-variant-unknown", ["compare", "--variants", "NOPE"], "'NOPE'"),
    ("compare-baseline-set-unknown", ["compare", "--baseline-sets", "nosuch"], "'nosuch'"),
    ("compare-fresh-saved-only", ["compare", "--fresh", "--saved-only"], "contradict"),
    # ---- compare --adapter LABEL=PATH[,PATH...] and --export-real: checked before any model loads
    ("compare-adapter-no-equals", ["compare", "--adapter", "GRPO"], "--adapter 'GRPO': give LABEL=PATH"),
    ("compare-adapter-no-path", ["compare", "--adapter", "GRPO="], "no adapter folder after '='"),
    ("compare-adapter-no-label", ["compare", "--adapter", "=shipped"], "give LABEL=PATH"),
    ("compare-adapter-empty-folder", ["compare", "--adapter", "A=shipped,"], "an empty folder"),
    (
        "compare-adapter-label-twice",
        ["compare", "--adapter", "A=shipped", "--adapter", "A=x"],
        "--adapter label 'A' is given twice",
    ),
    ("compare-adapter-missing-folder", ["compare", "--adapter", "A=no/such/run"], "no/such/run not found"),
    (
        "compare-adapter-not-an-adapter",
        ["compare", "--adapter", f"A={NOT_AN_ADAPTER}"],
        "holds no LoRA adapter",
    ),
    ("compare-adapter-folder-twice", ["compare", "--adapter", "A=shipped,shipped"], "more than once"),
    ("compare-adapter-baseline-label", ["compare", "--adapter", "Naive RAG=shipped"], "'Naive RAG' is also"),
    (
        "compare-agent-sets-twice",
        ["compare", "--agent-sets", "2wiki", "2wiki"],
        "--agent-sets lists 2wiki twice",
    ),
    ("compare-agent-set-unknown", ["compare", "--agent-sets", "trivia"], "'trivia'"),
    ("compare-export-real-no-adapter", ["compare", "--export-real"], "needs --adapter"),
    ("compare-export-real-fast", ["compare", "--adapter", "A=shipped", "--fast", "--export-real"], "--fast"),
]


@pytest.mark.parametrize("argv,culprit", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_command_line_is_one_error_line_naming_the_culprit(
    argv, culprit, capsys, monkeypatch, tmp_path
):
    monkeypatch.chdir(tmp_path)  # nothing a case might write lands in the repository
    try:
        status = main(argv)
    except SystemExit as e:  # argparse's own errors
        status = e.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert culprit in lines[0], lines[0]
    assert BIG not in lines[0] and "9" * 100 not in lines[0], "the error quotes a huge value in full"
    assert captured.out == ""
    assert list(tmp_path.iterdir()) == [], "a rejected command wrote something"


def test_the_probe_covers_every_class():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(
    "argv,culprit",
    [
        (["train", "--out", "R", "--no"], "--no"),
        (["train", "--out", ""], "--out"),
        (["info", f"seed={BIG}"], "seed="),
    ],
    ids=["abbrev", "empty-out", "seed-401-digits"],
)
def test_the_module_entry_point_gives_the_same_one_line_errors(argv, culprit, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "agentr1_nb", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},  # this checkout
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and culprit in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_compare_adapter_rows_reach_compare_and_the_export(monkeypatch, tmp_path):
    """`--adapter LABEL=PATH[,PATH...]` (repeatable) becomes {label: [folders]} (folders = seeds; spaces
    around the commas dropped); `--export-real` without a value writes the package's shipped file."""
    from agentr1_nb import compare as cmp

    seen = {}

    def fake_compare(cfg, out, **kw):
        seen.update(kw, out=out)
        return {"rows": [], "missing": [], "minutes": 0.0}

    monkeypatch.setattr(cmp, "compare", fake_compare)
    monkeypatch.setattr(cmp, "export_real", lambda out, dest: seen.setdefault("export", (out, dest)))
    argv = ["compare", "--out", str(tmp_path), "--adapter", "GRPO (x)=a, b", "--adapter", "RLOO=c"]
    assert main([*argv, "--export-real", "--json", "--agent-sets", "hotpotqa", "2wiki"]) == 0
    assert seen["adapters"] == {"GRPO (x)": ["a", "b"], "RLOO": ["c"]} and seen["variants"] is None
    assert seen["agent_sets"] == ["hotpotqa", "2wiki"]
    assert seen["export"] == (str(tmp_path), cmp.SHIPPED_REAL)
    seen.clear()
    assert main([*argv, "--export-real", str(tmp_path / "r.json")]) == 0
    assert seen["export"] == (str(tmp_path), str(tmp_path / "r.json"))
