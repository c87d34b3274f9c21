"""The command line: JSON output of `info` and `bench logprobs`, and clear errors for bad arguments."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import pytest

from agentr1_nb import policy
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


def test_bench_logprobs_json_small(capsys, monkeypatch):
    """The real benchmark at a small size (two fresh processes); the CLI default is 8 x 1,024 tokens."""
    small = functools.partial(policy.bench_logprobs, batch=2, seq=128, vocab=32768, chunk=16, backward=True)
    monkeypatch.setattr(policy, "bench_logprobs", small)
    assert main(["bench", "logprobs", "--json"]) == 0
    out = _last_json(capsys.readouterr().out)
    assert out["tokens"] == 256 and out["vocab"] == 32768 and out["backward"] is True
    assert out["max_abs_diff"] < 1e-3 and out["grad_max_abs_diff"] < 1e-3
    assert 0 < out["chunked_peak_mb"] < out["naive_peak_mb"]


@pytest.mark.parametrize(
    "argv,match",
    [
        (["info", "--preset", "tpu_pod"], "valid presets: cpu_demo"),
        (["info", "group_sizee=3"], "valid fields"),
        (["info", "group_size=three"], "group_size"),
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
    from agentr1_nb import evaluate

    got = {}

    def fake_run_eval(cfg, method, adapter=None, limit=0, out_dir=None, prompt_style=None):
        got.update(method=method, prompt_style=prompt_style, dataset=cfg.dataset)
        return {"method": method}

    monkeypatch.setattr(evaluate, "run_eval", fake_run_eval)
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
    for command in ("info", "bench", "train", "demo", "eval"):
        assert command in proc.stdout
