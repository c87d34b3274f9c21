"""The command line: JSON output of `info` and `bench logprobs`, and clear errors for bad arguments."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agentr1_nb import bench
from agentr1_nb.__main__ import main


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_info_json(capsys, cpu_default_dir, monkeypatch):
    monkeypatch.setenv("AGENTR1_CACHE", str(cpu_default_dir.parent))
    assert main(["info", "--json"]) == 0
    out = _last_json(capsys.readouterr().out)
    for key in (
        "version",
        "torch",
        "transformers",
        "peft",
        "device",
        "cuda",
        "bf16_supported",
        "bitsandbytes",
    ):
        assert key in out
    assert out["cpu_default_model_path"] == str(cpu_default_dir)


def test_info_plain_text(capsys, cpu_default_dir, monkeypatch):
    monkeypatch.setenv("AGENTR1_CACHE", str(cpu_default_dir.parent))
    assert main(["info"]) == 0
    assert "cpu_default_model_path:" in capsys.readouterr().out


@pytest.mark.parametrize("what", ["logprobs", "rollout", "parser"])
def test_bench_commands_print_their_json_line(capsys, monkeypatch, what):
    """The wiring only: each benchmark itself is tested at a small size in test_bench."""
    monkeypatch.setattr(bench, f"bench_{what}", lambda *a, **kw: {"what": what, "ok": 1})
    assert main(["bench", what, "--json"]) == 0
    assert _last_json(capsys.readouterr().out) == {"what": what, "ok": 1}


@pytest.mark.parametrize(
    "argv,match",
    [
        (["info", "--preset", "tpu_pod"], "valid presets: cpu_demo"),
        (["info", "group_sizee=3"], "valid fields"),
        (["info", "group_size=three"], "group_size"),
        (["info", "algo=gpro"], "algo='gpro' is not one of: grpo, rloo"),
        (["info", "save_every=0"], "save_every=0 is out of range; valid: [1, inf)"),
        (["info", "lr=inf"], "lr=inf must be finite"),
    ],
)
def test_bad_config_is_a_clear_error_with_exit_code_2(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and match in err


def test_unknown_command_exits_with_usage(capsys):
    with pytest.raises(SystemExit) as e:
        main(["fly"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_eval_prompt_style_reaches_run_eval(capsys, monkeypatch):
    from agentr1_nb import runs

    got = {}

    def fake_run_eval(cfg, method, adapter=None, limit=0, out_dir=None, prompt_style=None):
        got.update(method=method, prompt_style=prompt_style, dataset=cfg.dataset)
        return {"method": method}

    monkeypatch.setattr(runs, "run_eval", fake_run_eval)
    argv = ["eval", "--method", "tool_call", "--dataset", "generated", "--json"]
    assert main(argv + ["--prompt-style", "few_shot"]) == 0
    assert got == {"method": "tool_call", "prompt_style": "few_shot", "dataset": "generated"}
    assert main(argv) == 0 and got["prompt_style"] is None  # default: each baseline's own
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(argv + ["--prompt-style", "2shot"])
    assert "invalid choice" in capsys.readouterr().err


def test_module_entry_point_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "agentr1_nb", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0
    for command in ("info", "bench", "train", "demo", "eval", "compare"):
        assert command in proc.stdout


def test_train_out_that_is_a_file_is_a_clear_error(capsys, tmp_path):
    out = tmp_path / "run"
    out.write_text("not a folder")
    assert main(["train", "--out", str(out), "steps=1"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_interrupted_train_exits_non_zero(capsys, monkeypatch, tmp_path):
    """Ctrl-C ends `train` with exit status 130 (an interrupted run), after it saved its checkpoint."""
    from agentr1_nb import train as train_mod

    def interrupted(cfg, out, resume=True):
        h = train_mod.TrainHistory([{"step": 1}])
        h.interrupted = True
        return h

    monkeypatch.setattr(train_mod, "train", interrupted)
    assert main(["train", "--out", str(tmp_path / "r")]) == 130

    def raises(cfg, out, resume=True):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "train", raises)
    assert main(["train", "--out", str(tmp_path / "r")]) == 130
    assert "interrupted" in capsys.readouterr().err


# ----------------------------------------------------------------------------- ask


@pytest.fixture
def tiny_ask(monkeypatch, tokenizer):
    """`runs.ask` on a tiny random policy (the episode is nonsense; its shape is what is tested)."""
    from conftest import tiny_lora_policy

    from agentr1_nb import runs

    monkeypatch.setattr(
        runs, "load_policy", lambda cfg, adapter=None: (tiny_lora_policy(tokenizer), tokenizer)
    )
    return runs


def test_ask_a_held_out_question_by_number_and_any_text(tiny_ask, tokenizer):
    from agentr1_nb.config import get_config
    from agentr1_nb.env import build_task

    cfg = get_config("cpu_demo", ["max_turns=2", "max_tokens_per_turn=8"])
    res = tiny_ask.ask(cfg, "3", adapter=None)
    ex = build_task(cfg, tokenizer).eval[3]
    assert res["question"] == ex.question and res["gold"] == ex.answers
    assert res["em"] in (0.0, 1.0) and 1 <= len(res["turns"]) <= 2 and res["adapter"] is None
    assert all(set(t) == {"action", "observation"} for t in res["turns"])
    free = tiny_ask.ask(cfg, "  Who founded Bapa Mills?  ", adapter=None)
    assert free["question"] == "Who founded Bapa Mills?" and free["gold"] == [] and free["em"] is None


def test_load_agent_takes_the_adapters_prompt_style(tiny_ask, tmp_path):
    """`load_agent` runs the adapter under the prompt style of the run that trained it (its config.json)."""
    import json

    from agentr1_nb.config import get_config

    cfg = get_config("cpu_demo")
    agent = tiny_ask.load_agent(cfg, None)
    assert agent.adapter is None and agent.cfg == cfg and agent.task.eval
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg.to_dict(), prompt_style="few_shot")))
    agent = tiny_ask.load_agent(cfg, tmp_path)
    assert agent.adapter == tmp_path and agent.cfg.prompt_style == "few_shot" != cfg.prompt_style


def test_ask_rejects_an_empty_question_and_an_unknown_number(tiny_ask):
    from agentr1_nb.config import get_config

    cfg = get_config("cpu_demo")
    with pytest.raises(ValueError, match="question is empty"):
        tiny_ask.ask(cfg, "   ", adapter=None)
    with pytest.raises(ValueError, match=r"held-out questions \(0\.\.\d+\), not 100000"):
        tiny_ask.ask(cfg, "100000", adapter=None)
    with pytest.raises(FileNotFoundError, match="not found"):
        tiny_ask.ask(cfg, "1", adapter="/nonexistent/adapter")


def test_ask_command_prints_the_episode_or_one_json_line(tiny_ask, capsys):
    args = ["ask", "2", "--adapter", "", "--set", "max_turns=1", "--set", "max_tokens_per_turn=8"]
    assert main(args + ["--json"]) == 0
    res = _last_json(capsys.readouterr().out)
    assert res["gold"] and len(res["turns"]) == 1
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"question: {res['question']}") and "--- turn 1" in out and "gold:" in out
    assert main(["ask", "", "--adapter", ""]) == 2  # an empty question is an error, not the default


def test_compare_saved_only_runs_nothing_and_lists_what_is_missing(capsys, tmp_path):
    argv = ["compare", "--out", str(tmp_path), "--variants", "GRPO", "--seeds", "0", "1", "--saved-only"]
    assert main([*argv, "--json"]) == 0
    line = _last_json(capsys.readouterr().out)
    assert line["rows"] == [] and line["missing"] == [
        "GRPO seed 0",
        "GRPO seed 1",
        "baselines generated",
        "baselines hotpotqa",
        "baselines 2wiki",
    ]
    assert json.loads((tmp_path / "results.json").read_text())["missing"] == line["missing"]
    assert main([*argv, "--baseline-sets", "generated", "--json"]) == 0  # the baselines on one set only
    assert _last_json(capsys.readouterr().out)["missing"] == [
        "GRPO seed 0",
        "GRPO seed 1",
        "baselines generated",
    ]
    with pytest.raises(SystemExit):  # a dataset that does not exist is argparse's error
        main([*argv, "--baseline-sets", "nosuch"])
    capsys.readouterr()
    assert main([*argv, "--fresh"]) == 2  # redo everything and run nothing: a clear error
    assert "contradict" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the command line means what it says


def test_every_command_is_in_the_table_and_no_parser_abbreviates():
    import argparse

    from agentr1_nb.__main__ import COMMANDS, build_parser

    ap = build_parser()
    (sub,) = [a for a in ap._actions if isinstance(a, argparse._SubParsersAction)]
    assert list(sub.choices) == list(COMMANDS) and len(COMMANDS) == 10
    assert not ap.allow_abbrev and not any(p.allow_abbrev for p in sub.choices.values())


def test_a_flag_left_out_takes_the_key_value(capsys, monkeypatch):
    """`retriever=`, `data_path=`, `corpus_path=` under retrieval / eval are used, not a flag's default."""
    from agentr1_nb import retrieval, runs

    got = {}

    def fake_recall(dataset, data_path, corpus_path, k, cfg):
        got.update(dataset=dataset, data=data_path, corpus=corpus_path, retriever=cfg.retriever, k=k)
        return {"ok": 1}

    monkeypatch.setattr(retrieval, "measure_recall", fake_recall)
    argv = [
        "retrieval",
        "--dataset",
        "generated",
        "retriever=dense",
        "data_path=q.json",
        "corpus_path=c.json",
    ]
    assert main(argv) == 0
    assert got == {"dataset": "generated", "data": "q.json", "corpus": "c.json", "retriever": "dense", "k": 5}
    assert (
        main(["retrieval", "--dataset", "generated", "--retriever", "dense", "retriever=dense"]) == 0
    )  # agree
    assert got["retriever"] == "dense" and got["data"] == ""  # nothing given: the preset's

    def fake_run_eval(cfg, method, adapter=None, limit=0, out_dir=None, prompt_style=None):
        got.update(data=cfg.data_path, corpus=cfg.corpus_path, prompt_style=prompt_style, out=out_dir)
        return {"method": method}

    monkeypatch.setattr(runs, "run_eval", fake_run_eval)
    argv = [
        "eval",
        "--method",
        "tool_call",
        "--dataset",
        "generated",
        "data_path=q.json",
        "corpus_path=c.json",
    ]
    assert main([*argv, "prompt_style=few_shot"]) == 0
    assert got["data"] == "q.json" and got["corpus"] == "c.json" and got["prompt_style"] == "few_shot"
    assert got["out"] is None  # the default folder of run_eval
    capsys.readouterr()


def test_compare_bench_and_check_take_steps_from_the_key_value(capsys, monkeypatch):
    from agentr1_nb import bench, check, compare

    got = {}

    def fake_compare(cfg, out, **kw):
        got.update(kw, cfg_steps=cfg.steps)
        return {
            "rows": [{"em": float("nan"), "ci": [float("nan"), float("inf")]}],
            "missing": [],
            "minutes": 0.0,
        }

    monkeypatch.setattr(compare, "compare", fake_compare)
    assert main(["compare", "--json", "steps=3", "eval_questions=7"]) == 0
    assert got["steps"] == 3 and got["eval_n"] == 7 and got["cfg_steps"] == 3
    out = capsys.readouterr().out.strip()
    line = json.loads(out, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    assert line["rows"] == [{"em": None, "ci": [None, None]}] and "NaN" not in out
    assert main(["compare", "--json", "--steps", "4", "--eval-n", "9"]) == 0
    assert got["steps"] == 4 and got["eval_n"] == 9
    assert main(["compare", "--json"]) == 0 and got["steps"] is None and got["eval_n"] is None
    assert main(["compare", "--fast", "--json", "steps=2", "group_size=2"]) == 0  # agrees with --fast
    assert got["steps"] == 2 and got["fast"]
    capsys.readouterr()

    monkeypatch.setattr(bench, "bench_trainers", lambda cfg, steps=2: {"steps": steps})
    assert main(["bench", "trainers", "steps=5", "--json"]) == 0
    assert main(["bench", "trainers", "--json"]) == 0
    assert main(["bench", "trainers", "--json", "steps=6"]) == 0  # after an option: an override too
    assert [json.loads(x)["steps"] for x in capsys.readouterr().out.splitlines()] == [5, 2, 6]

    def fake_check(preset, steps=2, overrides=None, **kw):
        got.update(check_steps=steps)
        return [{"ok": True}]

    monkeypatch.setattr(check, "run_check", fake_check)
    assert main(["check", "--tiny", "steps=3"]) == 0 and got["check_steps"] == 3
    assert main(["check", "--tiny"]) == 0 and got["check_steps"] == 2


def test_json_output_is_strict_json():
    from agentr1_nb.__main__ import dumps

    text = dumps({"a": float("nan"), "b": [1.5, float("-inf"), {"c": (float("inf"),)}], "d": "NaN"})
    assert json.loads(text) == {"a": None, "b": [1.5, None, {"c": [None]}], "d": "NaN"}
