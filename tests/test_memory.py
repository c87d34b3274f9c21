"""Sizing arithmetic: parameter counts against real models, and the Qwen2.5-3B budget of the design notes."""

from __future__ import annotations

import pytest

from agentr1_nb.config import PRESETS, Config, get_config
from agentr1_nb.memory import (
    GB,
    NF4_BYTES_PER_PARAM,
    PRESET_GPU_GB,
    QWEN25_3B_CONFIG,
    T4,
    budget_peak_gb,
    forward_flops_per_token,
    fp32_module_params,
    layer_saved_bytes_per_token,
    linear_shapes,
    lora_param_count,
    memory_budget,
    param_counts,
    step_tokens,
    time_plan,
    training_passes,
    weight_terms,
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
    # NF4 with the embedding in 16 bit: 2.0-2.2 GB; the preset's four fp32 MLPs add 0.94 GB
    assert (
        2.0
        < memory_budget(QWEN25_3B_CONFIG, get_config("colab_t4", {"fp32_modules": ""}))["weights_gb"]
        < 2.2
    )
    assert b["weights_fp32_gb"] - b["params_fp32"] * NF4_BYTES_PER_PARAM / GB == pytest.approx(
        0.94, abs=0.005
    )
    assert 2.9 < b["weights_gb"] < 3.1
    assert b["kv_bytes_per_token"] == 36 * 1024  # 16 bit
    assert b["logit_bytes_per_token"] == 151936 * 4
    assert b["logits_naive_gb"] > 10 * b["logits_chunked_gb"]
    assert b["train_peak_gb"] < 15 < b["train_peak_naive_gb"]
    assert b["activations_no_ckpt_gb"] > 15
    assert b["rollout_peak_gb"] < 15
    assert set(b["phases"]) == {
        "rollout, prefill",
        "rollout, merge",
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
    moments = [sum(b["phases"][p].values()) for p in ("rollout, prefill", "rollout, merge")]
    assert b["rollout_peak_gb"] == pytest.approx(max(moments))
    for name in ("train, chunked logits", "train, naive logits"):
        assert b["phases"][name]["weights"] == pytest.approx(b["weights_gb"])
    assert b["train_peak_naive_gb"] == pytest.approx(sum(b["phases"]["train, naive logits"].values()))


@pytest.mark.parametrize("preset", sorted(PRESET_GPU_GB))
def test_gpu_presets_fit_their_gpu(preset):
    """Every GPU preset's rollout, evaluation and training peaks fit the GPU it is sized for, with room for
    the CUDA context and fragmentation (which the budget leaves out)."""
    assert preset in PRESETS
    gpu = PRESET_GPU_GB[preset]
    b = memory_budget(QWEN25_3B_CONFIG, get_config(preset))
    assert b["rollout_peak_gb"] < gpu and b["train_peak_gb"] < gpu and b["eval_rollout_peak_gb"] < gpu
    assert budget_peak_gb(b) < 0.9 * gpu
    cfg = get_config(preset)
    assert cfg.group_size == 5 and cfg.max_turns == 5  # the paper's group size and turn limit


def test_second_kv_cache_of_split_and_merge():
    """`KVBatch.split` / `merge` copy the cache while the old one is alive: one more KV cache, which scales
    with the rollout batch and the trajectory length like the cache itself."""
    cfg = get_config("colab_t4")
    b = memory_budget(QWEN25_3B_CONFIG, cfg)
    rows = cfg.questions_per_step * cfg.group_size
    assert b["kv_copy_gb"] == pytest.approx(b["kv_cache_gb"])
    assert b["kv_cache_gb"] == pytest.approx(rows * cfg.max_total_tokens * 36 * 1024 / GB)
    merge = b["phases"]["rollout, merge"]
    assert merge["KV copy (split/merge)"] == pytest.approx(b["kv_copy_gb"])
    assert b["rollout_peak_gb"] >= b["weights_gb"] + b["lora_state_gb"] + 2 * b["kv_cache_gb"] - 1e-9
    doubled = memory_budget(QWEN25_3B_CONFIG, cfg.replace(questions_per_step=2 * cfg.questions_per_step))
    assert doubled["kv_copy_gb"] == pytest.approx(2 * b["kv_copy_gb"])
    longer = memory_budget(QWEN25_3B_CONFIG, cfg.replace(max_total_tokens=2 * cfg.max_total_tokens))
    assert longer["kv_copy_gb"] == pytest.approx(2 * b["kv_copy_gb"])


def test_repeat_kv_of_the_grouped_query_prefill():
    """One layer's K and V expanded from kv_heads to heads over the whole cached length (16 / 2 for
    Qwen2.5-3B); zero without grouped-query attention; in the prefill moment of the rollout only."""
    cfg = get_config("colab_t4")
    b = memory_budget(QWEN25_3B_CONFIG, cfg)
    rows = cfg.questions_per_step * cfg.group_size
    assert b["repeat_kv_gb"] == pytest.approx(2 * rows * cfg.max_total_tokens * 16 * 128 * 2 / GB)
    # 8x the cache's per-layer K/V (16 heads for 2 kv heads)
    assert b["repeat_kv_gb"] == pytest.approx(8 * b["kv_cache_gb"] / 36)
    assert b["phases"]["rollout, prefill"]["repeat_kv (prefill)"] == pytest.approx(b["repeat_kv_gb"])
    assert "repeat_kv (prefill)" not in b["phases"]["rollout, merge"]
    mha = memory_budget({**QWEN25_3B_CONFIG, "num_key_value_heads": 16}, cfg)
    assert mha["repeat_kv_gb"] == 0
    fewer = memory_budget(QWEN25_3B_CONFIG, cfg.replace(group_size=cfg.group_size - 1))
    assert fewer["repeat_kv_gb"] == pytest.approx(b["repeat_kv_gb"] * (rows - cfg.questions_per_step) / rows)


def test_repeat_kv_runs_on_a_masked_prefill_not_on_decoding(monkeypatch):
    """The assumption behind the repeat_kv term, on the installed transformers: with a padding mask, a
    prefill of several tokens expands K/V to every head; decoding one token does not."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.integrations import sdpa_attention

    from agentr1_nb.kvcache import cache_kwarg

    calls = []
    real = sdpa_attention.repeat_kv

    def counting(x, n_rep):
        calls.append((tuple(x.shape), n_rep))
        return real(x, n_rep)

    monkeypatch.setattr(sdpa_attention, "repeat_kv", counting)
    torch.manual_seed(0)
    mc = Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_implementation="sdpa",
    )
    model = Qwen2ForCausalLM(mc).eval()
    ids = torch.randint(64, (2, 6))
    mask = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
        assert calls and calls[0][1] == 2  # the prefill: K and V of every cached column, 2 -> 4 heads
        calls.clear()
        mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1)
        kw = {cache_kwarg(model): out.past_key_values}
        model(input_ids=ids[:, :1], attention_mask=mask, use_cache=True, **kw)
    assert not calls


def test_entropy_tensors_only_with_an_entropy_bonus():
    """`token_logprobs(with_entropy=True)` runs only when entropy_coef > 0; it holds two more fp32
    vocabulary-sized tensors per chunk of logits."""
    cfg = get_config("colab_t4")
    off = memory_budget(QWEN25_3B_CONFIG, cfg)
    on = memory_budget(QWEN25_3B_CONFIG, cfg.replace(entropy_coef=0.01))
    assert off["entropy_gb"] == 0 and "entropy" not in off["phases"]["train, chunked logits"]
    chunk_tokens = cfg.micro_batch_size * cfg.logprob_chunk
    assert on["entropy_gb"] == pytest.approx(2 * chunk_tokens * 151936 * 4 / GB)
    assert on["entropy_gb"] == pytest.approx(2 / 3 * on["logits_chunked_gb"])
    assert on["train_peak_gb"] == pytest.approx(off["train_peak_gb"] + on["entropy_gb"])
    assert on["phases"]["train, chunked logits"]["entropy"] == pytest.approx(on["entropy_gb"])
    assert on["rollout_peak_gb"] == pytest.approx(off["rollout_peak_gb"])
    bigger = memory_budget(QWEN25_3B_CONFIG, cfg.replace(entropy_coef=0.01, logprob_chunk=256))
    assert bigger["entropy_gb"] == pytest.approx(2 * on["entropy_gb"])


def test_fp32_modules_are_counted_out_of_4bit():
    """`fp32_modules` names modules as bitsandbytes' skip list does; their weights and biases are fp32 and
    the rest of the linear weights NF4; the three storages add up to every parameter."""
    h, i = 2048, 11008
    mlps = ",".join(f"model.layers.{k}.mlp" for k in range(4))
    assert fp32_module_params(QWEN25_3B_CONFIG, mlps) == (4 * 3 * h * i, 0)
    assert fp32_module_params(QWEN25_3B_CONFIG, "model.layers.0.self_attn.q_proj") == (h * h, h)  # + bias
    assert fp32_module_params(QWEN25_3B_CONFIG, "down_proj") == (36 * h * i, 0)  # a suffix matches
    assert fp32_module_params(QWEN25_3B_CONFIG, "") == (0, 0)
    assert fp32_module_params(QWEN25_3B_CONFIG, "model.layers.1") == (sum(linear_shapes_sizes()), 2048 + 512)
    for cfg in (get_config("colab_t4"), Config(), get_config("colab_t4", {"load_in_4bit": False})):
        w = weight_terms(QWEN25_3B_CONFIG, cfg)
        total = param_counts(QWEN25_3B_CONFIG)["total"]
        assert w["params_quantized"] + w["params_fp32"] + w["params_16bit"] == total
    w = weight_terms(QWEN25_3B_CONFIG, get_config("colab_t4"))
    assert w["fp32 modules"] == 4 * w["params_fp32"] and w["16-bit"] == 2 * w["params_16bit"]
    assert w["4-bit"] == pytest.approx(w["params_quantized"] * NF4_BYTES_PER_PARAM)


def linear_shapes_sizes():
    return [a * b for a, b in linear_shapes(QWEN25_3B_CONFIG).values()]


def test_step_tokens_by_hand():
    """Upper bounds: every turn full, every tool response max_tool_chars long, cut at max_total_tokens."""
    cfg = Config(
        questions_per_step=2, group_size=3, max_turns=3, max_tokens_per_turn=100, max_total_tokens=4096
    )
    t = step_tokens(cfg, prompt_tokens=500)
    obs = cfg.max_tool_chars // 4 + 20
    assert t["rows"] == 6 and t["decode_steps"] == 300 and t["decoded"] == 6 * 300
    assert t["trajectory_tokens"] == 500 + 300 + 2 * obs
    assert t["prefilled"] == 6 * (500 + 2 * obs) and t["trained"] == 6 * t["trajectory_tokens"]
    cut = step_tokens(cfg.replace(max_total_tokens=1000), prompt_tokens=500)
    assert cut["trajectory_tokens"] == 1000 and cut["decode_steps"] == 300  # observations cut first
    assert step_tokens(cfg.replace(max_total_tokens=600), prompt_tokens=500)["decode_steps"] == 100


def test_time_plan_arithmetic():
    """Each piece of the plan from its stated model: FLOPs over peak x utilisation, decoding over bandwidth
    x utilisation plus overhead, the run = steps x step + two evaluations; doubling the group doubles the
    compute-bound pieces."""
    cfg = get_config("colab_t4")
    p = time_plan(QWEN25_3B_CONFIG, cfg)
    t = p["tokens"]
    assert t == step_tokens(cfg)
    per_tok = forward_flops_per_token(QWEN25_3B_CONFIG, t["trajectory_tokens"] / 2)
    n = param_counts(QWEN25_3B_CONFIG)
    assert forward_flops_per_token(QWEN25_3B_CONFIG, 0) == 2 * (n["linear"] + n["embedding"])
    assert training_passes(cfg) == {"old_logprobs": 1.0, "reference": 1.0, "update": 3.0}
    rate = T4["peak_flops"] * T4["flops_utilisation"]
    assert p["seconds"]["train"] == pytest.approx(5 * t["trained"] * per_tok / rate)
    assert p["seconds"]["prefill"] == pytest.approx(t["prefilled"] * per_tok / rate)
    b = memory_budget(QWEN25_3B_CONFIG, cfg)
    read = b["weights_gb"] * GB + t["rows"] * t["trajectory_tokens"] / 2 * b["kv_bytes_per_token"]
    per_step = read / (T4["bandwidth"] * T4["bandwidth_utilisation"]) + T4["decode_overhead_s"]
    assert p["seconds"]["decode"] == pytest.approx(t["decode_steps"] * per_step)
    assert p["step_min"] == pytest.approx(sum(p["seconds"].values()) / 60)
    assert p["run_hours"] == pytest.approx((cfg.steps * p["step_min"] + p["eval_min"]) / 60)
    assert p["fits_one_session"] == (p["run_hours"] <= 12)
    assert p["steps_per_session"] * p["step_min"] + p["eval_min"] <= 12 * 60
    assert any("/content/drive" in a for a in p["advice"])
    double = time_plan(QWEN25_3B_CONFIG, cfg.replace(group_size=10))
    assert double["seconds"]["train"] == pytest.approx(2 * p["seconds"]["train"])
    fast = time_plan(QWEN25_3B_CONFIG, cfg, gpu={"flops_utilisation": 0.5})
    assert fast["seconds"]["train"] == pytest.approx(p["seconds"]["train"] / 2)
    no_ckpt = training_passes(cfg.replace(gradient_checkpointing=False, kl_coef=0.0, ppo_epochs=2))
    assert no_ckpt == {"old_logprobs": 1.0, "reference": 0.0, "update": 4.0}
    fp32 = Config(load_in_4bit=False, compute_dtype="fp32")
    assert training_passes(fp32)["old_logprobs"] == 0.0


def test_a_run_that_fits_one_session_gets_no_advice_to_shrink():
    p = time_plan(QWEN25_3B_CONFIG, get_config("colab_t4", {"steps": 10}))
    assert p["fits_one_session"] is True and len(p["advice"]) == 1
    long = time_plan(QWEN25_3B_CONFIG, get_config("colab_t4", {"steps": 1000}))
    assert long["fits_one_session"] is False and f"steps={long['steps_per_session']}" in long["advice"][1]


def test_one_layers_saved_tensors_by_hand():
    """What one Qwen2.5-3B layer saves for its backward per token, as `check --full-size` counted it tensor
    by tensor on a CPU (185,608 bytes in bf16, K and V at their 2 heads); the budget counts K and V expanded
    to 16 heads (a padding mask), so it lies a few per cent above. Checkpointed: 36 layer inputs, the final
    norm's fp32 input, and one layer with its gradients."""
    cfg = get_config("colab_t4")
    h, i, q, r = 2048, 11008, 2048, 16
    per_token = (4 * q + 3 * i) * 2 + (8 * h + i) * 4 + 7 * r * 4
    assert layer_saved_bytes_per_token(QWEN25_3B_CONFIG, cfg) == per_token == 192_448
    assert 0.95 < 185_608 / per_token < 1.0
    assert (
        layer_saved_bytes_per_token(QWEN25_3B_CONFIG, cfg.replace(compute_dtype="fp32"))
        == per_token + (4 * q + 3 * i) * 2
    )
    b = memory_budget(QWEN25_3B_CONFIG, cfg)
    tokens = cfg.micro_batch_size * cfg.max_total_tokens
    assert b["layer_saved_gb"] == pytest.approx(tokens * per_token / GB)
    assert b["outside_layers_gb"] == pytest.approx(tokens * h * 4 / GB)
    assert b["ckpt_inputs_gb"] == pytest.approx(36 * tokens * h * 2 / GB)
    total = b["ckpt_inputs_gb"] + b["outside_layers_gb"] + 2 * b["layer_saved_gb"]
    assert b["activations_ckpt_gb"] == pytest.approx(total)
