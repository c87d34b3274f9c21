"""Sizing arithmetic: parameter counts against real models, and the Qwen2.5-3B budget of the design notes."""

from __future__ import annotations

import pytest

from agentr1_nb.config import Config, get_config
from agentr1_nb.memory import (
    GB,
    QWEN25_3B_CONFIG,
    linear_shapes,
    lora_param_count,
    memory_budget,
    param_counts,
)


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_param_counts_match_real_models(family):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    kw = dict(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=family == "qwen2",
    )
    cfg = Qwen2Config(**kw) if family == "qwen2" else LlamaConfig(**kw)
    model = (Qwen2ForCausalLM if family == "qwen2" else LlamaForCausalLM)(cfg)
    counts = param_counts(cfg.to_dict())
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    linear = sum(m.weight.numel() for n, m in model.named_modules() if n.split(".")[-1] in linear_shapes(kw))
    assert counts["linear"] == linear


def test_memory_budget_of_qwen25_3b_on_a_t4():
    """The arithmetic reproduces the facts in the design notes (GUIDE.md)."""
    b = memory_budget(QWEN25_3B_CONFIG, get_config("colab_t4"))
    assert b["params_total"] == 3_085_938_688  # Qwen2.5-3B's published 3.09B
    assert 29e6 < b["lora_params"] < 31e6
    assert 2.0 < b["weights_gb"] < 2.2
    assert b["kv_bytes_per_token"] == 36 * 1024  # 16 bit
    assert b["logit_bytes_per_token"] == 151936 * 4
    assert b["logits_naive_gb"] > 10 * b["logits_chunked_gb"]
    assert b["train_peak_gb"] < 15 < b["train_peak_naive_gb"]
    assert b["activations_no_ckpt_gb"] > 15
    assert b["rollout_peak_gb"] < 15
    assert set(b["phases"]) == {
        "rollout",
        "train, chunked logits",
        "train, naive logits",
        "train, no checkpointing",
    }


def test_lora_count_of_named_targets_and_phase_totals():
    """Named targets count only those projections; each phase's total is the sum of its parts."""
    shapes = linear_shapes(QWEN25_3B_CONFIG)
    qv = lora_param_count(QWEN25_3B_CONFIG, 8, "q_proj, v_proj")
    assert qv == 36 * 8 * (sum(shapes["q_proj"]) + sum(shapes["v_proj"]))
    assert lora_param_count(QWEN25_3B_CONFIG, 8, "q_proj,not_a_layer") == 36 * 8 * sum(shapes["q_proj"])
    b = memory_budget(QWEN25_3B_CONFIG, Config(load_in_4bit=False, compute_dtype="bf16"))
    assert b["params_quantized"] == 0 and b["params_16bit"] == b["params_total"]
    assert b["weights_gb"] == pytest.approx(2 * b["params_total"] / GB)
    assert b["rollout_peak_gb"] == pytest.approx(sum(b["phases"]["rollout"].values()))
