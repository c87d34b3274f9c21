"""The full-size rehearsal (`check --full-size`): its logic on the tiny model, the measured-vs-predicted
arithmetic, and the shipped rehearsal of `colab_t4` (measured at full size on a CPU)."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch

from agentr1_nb import check, rehearsal
from agentr1_nb.__main__ import main
from agentr1_nb.config import Config, get_config
from agentr1_nb.memory import GB, QWEN25_3B_CONFIG, memory_budget

FULL_PHASES = ["env", "load", "logits", "rollout", "ratio", "measure", "train", "plan", "summary"]
TERMS = [
    "4-bit base",
    "fp32 modules",
    "16-bit (embedding, norms, biases)",
    "LoRA weights",
    "optimizer state (AdamW)",
    "activations: checkpointed layer inputs",
    "activations: one layer recomputed",
    "activations: saved outside the layers",
]
SHIPPED = "rehearsal_colab_t4.json"


def _lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_full_size_logic_on_the_tiny_model(capsys):
    """`check --tiny --full-size`: the rehearsal's phases, one GRPO step and no PPO, every term measured
    beside its prediction, the settings it changed (each with a reason) and the preset's time plan."""
    assert main(["check", "--tiny", "--full-size", "--json"]) == 0
    lines = _lines(capsys.readouterr().out)
    assert [ln["phase"] for ln in lines] == FULL_PHASES
    by = {ln["phase"]: ln for ln in lines}
    s = by["summary"]
    assert s["ok"] is True and s["full_size"] is True and s["losses_finite"] is True
    assert by["train"]["steps_run"] == 1 and "ppo" in s["not_run"]
    terms = s["measured_vs_predicted"]
    assert list(terms) == TERMS
    for name, t in terms.items():
        assert t["measured_bytes"] > 0, name
        if t["predicted_bytes"]:
            assert t["ratio"] == pytest.approx(t["measured_bytes"] / t["predicted_bytes"], rel=1e-5)
    # what is exact at any size: the parameter counts, the fp32 and 16-bit storage, LoRA and Adam
    for name in TERMS[:4]:
        assert terms[name]["measured_params"] == terms[name]["predicted_params"], name
    for name in ("fp32 modules", "LoRA weights", "activations: checkpointed layer inputs"):
        assert terms[name]["ratio"] == pytest.approx(1.0), name
    assert terms["optimizer state (AdamW)"]["ratio"] == pytest.approx(1.0, abs=0.01)
    changed = {c["field"]: c for c in s["changed"]}
    assert {"compute_dtype", "max_turns", "max_tokens_per_turn", "group_size", "steps"} <= set(changed)
    assert changed["max_turns"]["preset"] == 5 and changed["max_turns"]["rehearsal"] == 2
    assert all(c["why"] for c in s["changed"])
    assert "gradient_checkpointing" not in changed and "micro_batch_size" not in changed  # kept as preset
    plan = by["plan"]
    assert plan["measured_on_gpu"] is False and plan["assumed_gpu"]["peak_flops"] == 65e12
    assert plan["time_plan"]["steps"] == get_config("colab_t4").steps == s["time_plan"]["steps"]
    assert s["time_plan"]["step_min"] == plan["time_plan"]["step_min"] > 0


def test_full_size_config_on_a_cpu_keeps_the_preset_but_turns_tokens_and_dtype():
    cfg = check.check_config("colab_t4", steps=1, full_size=True)
    preset = get_config("colab_t4")
    if torch.cuda.is_available():
        pytest.skip("on a GPU the check is already full size")
    assert (cfg.max_turns, cfg.max_tokens_per_turn, cfg.compute_dtype) == (2, 8, "auto")
    assert (cfg.questions_per_step, cfg.group_size) == (1, 2)
    for name in ("load_in_4bit", "lora_r", "lora_target_modules", "gradient_checkpointing", "micro_batch_size",
                 "fp32_modules", "max_total_tokens", "logprob_chunk", "prompt_style"):  # fmt: skip
        assert getattr(cfg, name) == getattr(preset, name), name
    # the user's overrides still win
    assert check.check_config("colab_t4", 1, ["max_turns=3"], full_size=True).max_turns == 3
    names = [c["field"] for c in rehearsal.changes(preset, cfg)]
    assert "lora_r" not in names and "max_turns" in names


def test_measured_vs_predicted_arithmetic():
    """Each term: the measured bytes against `memory_budget`'s term at the micro-batch's own size; ratio
    and the 10 % flag follow."""
    cfg = get_config("colab_t4")
    b = memory_budget(QWEN25_3B_CONFIG, cfg.replace(micro_batch_size=2, max_total_tokens=500))
    weights = {
        "4-bit base": {"params": b["params_quantized"], "bytes": b["weights_4bit_gb"] * GB * 1.05},
        "fp32 modules": {"params": b["params_fp32"], "bytes": b["weights_fp32_gb"] * GB},
        "16-bit": {"params": b["params_16bit"], "bytes": b["weights_16bit_gb"] * GB * 0.8},
        "LoRA weights": {"params": b["lora_params"], "bytes": b["lora_weights_gb"] * GB},
    }
    act = {"rows": 2, "tokens": 500, "checkpoint_inputs": 36 * 1000 * 2048 * 2, "saved_outside_layers": 10,
           "one_layer_recomputed": int(b["layer_saved_gb"] * GB * 1.2)}  # fmt: skip
    m = {"weights": weights, "activations": act, "optimizer_bytes": int(b["adam_gb"] * GB)}
    out = rehearsal.measured_vs_predicted(QWEN25_3B_CONFIG, cfg, m)
    assert list(out) == TERMS
    assert out["4-bit base"]["ratio"] == pytest.approx(1.05) and out["4-bit base"]["within_10pct"]
    assert out["16-bit (embedding, norms, biases)"]["ratio"] == pytest.approx(0.8)
    assert not out["16-bit (embedding, norms, biases)"]["within_10pct"]
    assert out["activations: checkpointed layer inputs"]["ratio"] == pytest.approx(1.0)
    assert out["activations: one layer recomputed"]["ratio"] == pytest.approx(1.2, rel=1e-6)
    assert out["optimizer state (AdamW)"]["predicted_bytes"] == 8 * b["lora_params"]
    outside = out["activations: saved outside the layers"]
    assert outside["predicted_bytes"] == 2 * 500 * 2048 * 4  # the final norm's fp32 input
    assert outside["ratio"] == pytest.approx(10 / (2 * 500 * 2048 * 4)) and outside["within_10pct"] is False
    assert (
        out["LoRA weights"]["measured_params"] == out["LoRA weights"]["predicted_params"] == b["lora_params"]
    )


def test_model_tensors_count_a_4bit_lora_model_by_storage():
    """On the tiny 4-bit model: every parameter lands in exactly one term, the fp32 modules are fp32, and
    a tied embedding counts once."""
    from agentr1_nb.policy import load_policy

    tok, _ = rehearsal.offline_tokenizer(Config(), try_preset=False)
    arch = {**check.TINY_ARCH, "vocab_size": len(tok)}
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        folder = rehearsal.build_random_model(arch, tok, torch.float32, Path(tmp) / "m")
        cfg = get_config("colab_t4", {"model": str(folder), "compute_dtype": "fp32",
                                      "fp32_modules": "model.layers.0.mlp"})  # fmt: skip
        model, _ = load_policy(cfg)
        terms, seen = rehearsal.model_tensors(model, cfg)
    total = sum(p.numel() for p in model.parameters())
    quantized = sum(int(torch.Size(p.quant_state.shape).numel()) for p in model.parameters()
                    if getattr(p, "quant_state", None) is not None)  # fmt: skip
    packed = sum(p.numel() for p in model.parameters() if getattr(p, "quant_state", None) is not None)
    assert sum(t["params"] for t in terms.values()) == total - packed + quantized
    assert (
        terms["fp32 modules"]["params"] == 3 * 64 * 128 and terms["fp32 modules"]["bytes"] == 4 * 3 * 64 * 128
    )
    assert terms["LoRA weights"]["params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert terms["16-bit"]["params"] >= len(tok) * 64  # the embedding, once though tied to the head
    assert terms["4-bit base"]["bytes"] > quantized / 2  # packed codes plus their quantisation state
    assert len(seen) > 0


def _shipped() -> dict:
    path = resources.files("agentr1_nb") / "results" / SHIPPED
    if not path.is_file():
        pytest.skip(f"{SHIPPED} is not shipped yet")
    return json.loads(path.read_text())


def test_shipped_rehearsal_has_every_term_and_consistent_ratios():
    """The rehearsal measured at full size on a CPU (what notebook 07 shows): every term, each ratio what
    its bytes say, the GRPO step finite, the model the preset's, and the settings it changed."""
    r = _shipped()
    s = r["lines"][-1]
    assert s["phase"] == "summary" and s["full_size"] is True and s["tiny"] is False
    assert s["losses_finite"] is True
    by = {ln["phase"]: ln for ln in r["lines"]}
    assert by["load"]["architecture"] == "qwen2 36 layers x 2048, vocab 151936"
    assert (
        by["load"]["trainable_params"]
        == by["measure"]["measured_vs_predicted"]["LoRA weights"]["measured_params"]
    )
    terms = r["measured_vs_predicted"]  # redone with today's memory_budget
    assert list(terms) == TERMS
    for name, t in terms.items():
        if t["predicted_bytes"]:
            assert t["ratio"] == pytest.approx(t["measured_bytes"] / t["predicted_bytes"], rel=1e-4), name
            assert t["within_10pct"] == (abs(t["ratio"] - 1) <= 0.10), name
        else:
            assert t["ratio"] is None
    off = [k for k, t in terms.items() if not t["within_10pct"]]
    assert set(off) == set(r["why_off"]) and "?" not in r["why_off"].values(), (
        "each term off by > 10 % says why"
    )
    assert r["measured_vs_predicted"] == rehearsal.repredict(r["lines"]), (
        "re-pack the file: memory.py changed"
    )
    rows = rehearsal.terms_table(terms, r["why_off"])  # what notebook 07 shows
    assert [row["term"] for row in rows] == TERMS
    assert all(
        row["why off"] == ("" if terms[row["term"]]["within_10pct"] else r["why_off"][row["term"]])
        for row in rows
    )
    assert r["wall_s"] > 0 and r["peak_rss_gb"] > 0 and r["command"].startswith("python -m agentr1_nb check")
