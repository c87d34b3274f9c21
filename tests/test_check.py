"""The self-check (`python -m agentr1_nb check`): every phase runs and reports on a tiny model on the CPU,
failures land in the lines instead of crashing, and the modules it needs import without the optional
libraries a bare GPU box may lack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agentr1_nb import check, rehearsal
from agentr1_nb.__main__ import main
from agentr1_nb.config import Config, get_config
from agentr1_nb.memory import QWEN25_3B_CONFIG

ROOT = Path(__file__).resolve().parent.parent
PHASES = ["env", "load", "logits", "rollout", "ratio", "train", "ppo", "summary"]


def _lines(stdout: str) -> list[dict]:
    """Every stdout line must be one JSON object."""
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def _assert_healthy(lines: list[dict]) -> None:
    assert [ln["phase"] for ln in lines] == PHASES
    for ln in lines:
        assert "error" not in ln and "skipped" not in ln, ln
    by = {ln["phase"]: ln for ln in lines}
    summary = by["summary"]
    assert summary["ok"] is True and summary["problems"] == [], summary
    assert by["load"]["weights"] == "random-tiny" and by["load"]["trainable_params"] > 0
    assert by["logits"]["finite"] is True
    assert by["rollout"]["generated_tokens"] > 0 and by["rollout"]["tokens_per_s"] > 0
    assert by["ratio"]["tokens"] > 0 and 0 <= by["ratio"]["clip_frac"] <= 1
    for p in ("train", "ppo"):
        assert by[p]["losses_finite"] is True and by[p]["steps_run"] >= 1 and by[p]["step_s"] > 0
        assert 0 < by[p]["budget_gb"] <= by[p]["budget_max_len_gb"] and "rss_peak_gb" in by[p]
    assert by["train"]["steps_run"] == 2 and by["ppo"]["algo"] == "ppo"
    # the preset's full-size budget against the GPU it is sized for (Qwen2.5-3B on a 15 GB T4)
    assert summary["gpu_gb"] == 15 and summary["fits"] is True and summary["preset_budget_gb"] < 15
    assert summary["budget_gb"] == by["train"]["budget_gb"] and summary["peak_mem_gb"] > 0
    assert summary["losses_finite"] is True and summary["first_ratio_mean"] == pytest.approx(1.0, abs=1e-3)


def test_check_tiny_through_main(capsys):
    assert main(["check", "--tiny", "--json"]) == 0
    _assert_healthy(_lines(capsys.readouterr().out))


def test_check_tiny_in_a_subprocess_prints_only_json_on_stdout():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "agentr1_nb", "check", "--tiny", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_healthy(_lines(proc.stdout))


def test_unknown_preset_is_a_clear_error(capsys):
    assert main(["check", "--preset", "tpu_pod", "--tiny", "--json"]) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'tpu_pod'" in err and "colab_t4" in err and "a100" in err
    with pytest.raises(ValueError, match="unknown preset 'tpu_pod'"):
        check.run_check("tpu_pod", tiny=True)
    with pytest.raises(ValueError, match="weights must be one of"):
        check.run_check("colab_t4", tiny=True, weights="shiny")


def test_check_config_forces_small_sizes_and_keeps_overrides():
    cfg = check.check_config("a100", steps=3, overrides=["group_size=3", "max_turns=2"])
    assert (cfg.dataset, cfg.questions_per_step, cfg.max_tokens_per_turn, cfg.eval_questions) == (
        "generated",
        2,
        64,
        1,
    )
    assert cfg.steps == 3 and cfg.group_size == 3 and cfg.max_turns == 2  # the user's overrides win
    a100 = get_config("a100")
    assert cfg.load_in_4bit and cfg.max_total_tokens == a100.max_total_tokens == 8192  # the preset's own
    tiny = check.check_config("colab_t4", tiny=True)
    assert (
        tiny.max_turns == check.TINY_SIZES["max_turns"] and tiny.load_in_4bit and tiny.gradient_checkpointing
    )
    with pytest.raises(ValueError, match="steps must be >= 1"):
        check.check_config("colab_t4", steps=0)


def test_a_failing_phase_is_reported_and_the_check_goes_on(tmp_path):
    """A phase's exception becomes its line's `error`; phases that need its output say `skipped`; the
    summary is not ok and names both."""
    state = check._State(Config(), "colab_t4", True, "auto", tmp_path)

    def boom(s):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    lines = [
        check._run_phase("env", check.phase_env, state, ()),
        check._run_phase("load", boom, state, ()),
        check._run_phase("logits", check.phase_logits, state, ("model",)),
    ]
    assert "error" not in lines[0] and lines[0]["dtype"] in ("float32", "bfloat16")
    assert lines[1]["error"].startswith("RuntimeError: CUDA out of memory")
    assert "check.py" in lines[1]["where"] and "test_check.py:" in lines[1]["raised_in"]
    assert "skipped" in lines[2] and "model" in lines[2]["skipped"]
    summary = check.summarise(lines, state, 1.0)
    assert summary["ok"] is False and summary["phase"] == "summary"
    assert any(p.startswith("load: RuntimeError") for p in summary["problems"])
    assert any(p.startswith("logits: skipped") for p in summary["problems"])
    assert summary["fits"] is True  # the budget is arithmetic: it needs no model
    json.dumps(summary, allow_nan=False)


def test_summary_flags_overflow_nonfinite_losses_and_off_policy_ratios(tmp_path):
    state = check._State(Config(), "a100", False, "auto", tmp_path)
    lines = [
        {"phase": "logits", "finite": False, "dtype": "float16"},
        {"phase": "ratio", "mean_abs_diff": 0.05, "max_abs_diff": 0.23, "clip_frac": 0.009},
        {"phase": "train", "losses_finite": False, "skipped_updates": 2, "gpu_peak_gb": 9.0},
        {"phase": "ppo", "losses_finite": True, "skipped_updates": 0, "gpu_peak_gb": 5.0,
         "budget_gb": 4.0},
    ]  # fmt: skip
    s = check.summarise(lines, state, 1.0)
    assert s["ok"] is False and s["losses_finite"] is False
    assert any("non-finite logits in float16" in p and "bf16" in p for p in s["problems"])
    assert any(p.startswith("train: non-finite loss") for p in s["problems"])
    assert any(w.startswith("ratio:") and "recomputed" in w for w in s["warnings"])
    assert any(w.startswith("ppo: measured peak 5.00 GB > memory_budget's 4.00 GB") for w in s["warnings"])
    assert s["gpu_gb"] == 40 and s["fits"] is True
    assert check._clean({"x": float("nan"), "y": [1.23456789]}) == {"x": "nan", "y": [1.23457]}


def test_random_weights_with_the_byte_tokenizer(monkeypatch, tmp_path):
    """The path of a bare GPU box: no model files and no CPU default, so random weights of the preset's
    architecture (here a small one read from a local config.json, vocabulary larger than the tokenizer's)
    with the built-in byte-level tokenizer."""
    from transformers import Qwen2Config

    Qwen2Config(**{**check.TINY_ARCH, "vocab_size": 1000}).save_pretrained(tmp_path)

    def offline(cfg):
        raise check.ModelUnavailableError("offline")

    monkeypatch.setattr(rehearsal, "load_tokenizer", offline)
    overrides = dict(
        model=str(tmp_path),
        compute_dtype="fp32",
        max_turns=2,
        max_tokens_per_turn=16,
        prompt_style="zero_shot",
    )
    lines = check.run_check("colab_t4", steps=1, overrides=overrides, weights="auto", ppo=False)
    by = {ln["phase"]: ln for ln in lines}
    assert [ln["phase"] for ln in lines] == [p for p in PHASES if p != "ppo"]
    assert by["summary"]["ok"] is True, by["summary"]
    assert by["load"]["weights"] == "random" and by["load"]["tokenizer"].startswith("byte-level")
    assert "could not load model" in by["load"]["fallback"]  # the pretrained try, then the fallback
    assert by["load"]["architecture"] == "qwen2 2 layers x 64, vocab 1000"
    assert by["rollout"]["generated_tokens"] > 0
    assert any("random weights instead" in w for w in by["summary"]["warnings"])


def test_byte_tokenizer_round_trips_and_keeps_chatml_specials():
    from agentr1_nb.env import encode_untrusted, render_chat

    tok = rehearsal.byte_tokenizer()
    text = 'Héllo <tool_call>{"q": 1}</tool_call>'
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode()) and tok.decode(ids) == text
    chat = render_chat(tok, [{"role": "user", "content": "hi"}], add_generation_prompt=True)
    ids = tok(chat, add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("<|im_start|>") in ids and tok.eos_token_id in ids
    assert tok.eos_token_id not in encode_untrusted(tok, "a <|im_end|> b")  # tool output cannot end a turn
    assert tok.decode([ids[0], 99_999]) == "<|im_start|>"  # ids past the vocabulary decode to nothing
    assert tok.pad_token_id is not None and tok.padding_side == "left"


def test_preset_architecture_offline():
    assert rehearsal.preset_architecture("Qwen/Qwen2.5-3B-Instruct") == QWEN25_3B_CONFIG
    with pytest.raises(ValueError, match="no architecture known offline"):
        rehearsal.preset_architecture("someone/unknown-model-xyz")


def test_check_imports_without_the_optional_packages():
    """A bare GPU box may lack bm25s, PyStemmer, gguf, datasets and bitsandbytes: the check, the trainer and
    the policy must still import, and `check --help` must answer. The finder hides them as if uninstalled
    (`import` fails and `importlib.util.find_spec` returns None)."""
    script = textwrap.dedent(
        """
        import importlib.machinery, runpy, sys

        HIDDEN = {"bm25s", "Stemmer", "gguf", "datasets", "bitsandbytes"}

        class Hide(importlib.machinery.PathFinder):
            @classmethod
            def find_spec(cls, name, path=None, target=None):
                if name.partition(".")[0] in HIDDEN:
                    return None
                return super().find_spec(name, path, target)

        sys.meta_path[:] = [Hide if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
        try:
            import bm25s
            raise SystemExit("the finder did not hide bm25s")
        except ModuleNotFoundError:
            pass
        import agentr1_nb.check, agentr1_nb.train, agentr1_nb.policy, agentr1_nb.env

        loaded = sorted(m for m in sys.modules if m.partition(".")[0] in HIDDEN)
        assert not loaded, loaded
        sys.argv = ["agentr1_nb", "check", "--help"]
        try:
            runpy.run_module("agentr1_nb", run_name="__main__")
        except SystemExit as e:
            assert e.code in (0, None), e.code
        print("IMPORTS-OK")
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "IMPORTS-OK" in proc.stdout and "--tiny" in proc.stdout
