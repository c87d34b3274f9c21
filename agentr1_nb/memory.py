"""Sizing arithmetic: parameters, LoRA size and the GPU memory of one GRPO step with (Q)LoRA.

No model is loaded: everything follows from a model's config (a dict such as its config.json) and the run's
`Config`. `QWEN25_3B_CONFIG` is Qwen2.5-3B-Instruct's architecture, so the notebook runs without the hub.
Shapes and bytes, in the spirit of nanoGPT's `transformer_sizing.ipynb`.
"""

from __future__ import annotations

from .config import Config
from .policy import compute_dtype

GB = 1e9
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)
"""4-bit codes, plus double quantisation: an 8-bit absmax per 64 weights and an fp32 scale per 256 blocks."""


QWEN25_3B_CONFIG = dict(
    model_type="qwen2",
    hidden_size=2048,
    num_hidden_layers=36,
    num_attention_heads=16,
    num_key_value_heads=2,
    head_dim=128,
    intermediate_size=11008,
    vocab_size=151936,
    tie_word_embeddings=True,
)
"""Qwen2.5-3B-Instruct's architecture (its config.json), for the memory arithmetic without hub access."""


def _dims(mc: dict) -> dict:
    heads = mc["num_attention_heads"]
    return {
        "hidden": mc["hidden_size"],
        "layers": mc["num_hidden_layers"],
        "heads": heads,
        "kv_heads": mc.get("num_key_value_heads") or heads,
        "head_dim": mc.get("head_dim") or mc["hidden_size"] // heads,
        "inter": mc["intermediate_size"],
        "vocab": mc["vocab_size"],
        "tied": bool(mc.get("tie_word_embeddings", False)),
        # Qwen2 always has q/k/v biases; Llama-style configs say so with attention_bias
        "qkv_bias": bool(mc.get("attention_bias", mc.get("model_type") == "qwen2")),
    }


def linear_shapes(model_config: dict) -> dict[str, tuple[int, int]]:
    """(in, out) of each linear projection of one decoder layer (Llama / Qwen2 family)."""
    d = _dims(model_config)
    q, kv = d["heads"] * d["head_dim"], d["kv_heads"] * d["head_dim"]
    h, i = d["hidden"], d["inter"]
    return {
        "q_proj": (h, q),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (q, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
    }


def param_counts(model_config: dict) -> dict[str, int]:
    """Parameters by kind: the linear layers (quantised by QLoRA) and everything kept in 16 bit."""
    d = _dims(model_config)
    shapes = linear_shapes(model_config)
    linear = d["layers"] * sum(i * o for i, o in shapes.values())
    bias = d["layers"] * sum(shapes[n][1] for n in ("q_proj", "k_proj", "v_proj")) if d["qkv_bias"] else 0
    norms = (2 * d["layers"] + 1) * d["hidden"]
    embedding = d["vocab"] * d["hidden"]
    head = 0 if d["tied"] else embedding
    return {
        "linear": linear,
        "embedding": embedding,
        "lm_head": head,
        "bias_and_norms": bias + norms,
        "total": linear + embedding + head + bias + norms,
    }


def lora_param_count(
    model_config: dict, r: int, target_modules: str = "all-linear", top_layers: int = 0
) -> int:
    """r * (in + out) for every targeted projection of every adapted layer (the top `top_layers`; 0: all)."""
    shapes = linear_shapes(model_config)
    names = list(shapes) if target_modules == "all-linear" else [m.strip() for m in target_modules.split(",")]
    layers = _dims(model_config)["layers"]
    layers = min(top_layers, layers) if top_layers > 0 else layers
    return layers * sum(r * sum(shapes[n]) for n in names if n in shapes)


PRESET_GPU_GB: dict[str, float] = {"colab_t4": 15, "a100": 40, "a100_80gb": 80}
"""Usable memory (GB) of the GPU each GPU preset is sized for: a 16 GB T4 leaves about 15 GB after the CUDA
context; A100s come with 40 or 80 GB. `tests/test_memory.py` checks every preset's budget against these."""


def memory_budget(model_config: dict, cfg: Config) -> dict:
    """GPU memory of one GRPO step with (Q)LoRA, from the model config and the run config, in GB (1e9 bytes).

    Rollout, two moments (the peak is the larger), for a batch of questions_per_step x group_size rows of
    max_total_tokens each: both hold the weights, the LoRA training state and the KV cache, plus
    - prefill: the observation prefill's working set (one layer, `max_tokens_per_turn` tokens per row) and
      the grouped-query expansion: with a padding mask, transformers' SDPA path runs `repeat_kv` on the
      layer's whole cached K and V, from kv_heads to heads (decoding one token packs the query instead);
    - merge: a second KV cache, since `KVBatch.split` and `KVBatch.merge` (rows that stopped at different
      steps of a turn) build the new cache while the old one is alive (an upper bound: every row copied).
    Evaluation is the same with eval_batch_size greedy rows (`eval_rollout_peak_gb`).
    Training, per micro-batch of micro_batch_size x max_total_tokens tokens: weights + LoRA state
    + activations + logits (+ the entropy's tensors when entropy_coef > 0).
    Assumptions (an estimate to within some tens of per cent, not a measurement):
    - NF4 with double quantisation for every linear layer; embedding, norms and biases in the compute dtype
      (`load_policy` keeps them 16-bit); LoRA weights fp32 with fp32 gradients and two Adam moments.
    - Checkpointing keeps each layer's 16-bit input; the backward recomputes one layer, whose saved tensors
      are ~7 hidden-sized and 4 intermediate-sized 16-bit tensors per token plus the fp32 copies of their
      inputs that peft's LoRA layers make (6 hidden + 1 intermediate), doubled for their gradients.
      Attention is SDPA (no T x T matrix).
    - Logits: naive = the fp32 logits, their log-softmax and its gradient at once (3 x 4 bytes per token and
      vocabulary entry; `bench_logprobs` measures 2 of them in the forward); chunked = the same for
      `logprob_chunk` time steps. The entropy (`with_entropy`, only when entropy_coef > 0) adds two more
      vocabulary-sized fp32 tensors per chunk: the probabilities and their product with the log-probs.
    - The 16-bit output of the head before the fp32 cast, the 4D attention mask of a prefill (a byte per
      query and key), the CUDA context (~0.3-0.5 GB) and allocator fragmentation are left out.
    """
    d = _dims(model_config)
    counts = param_counts(model_config)
    wbytes = compute_dtype(cfg).itemsize
    h, i, V = d["hidden"], d["inter"], d["vocab"]
    q_bytes = NF4_BYTES_PER_PARAM if cfg.load_in_4bit else wbytes
    weights = counts["linear"] * q_bytes + (counts["total"] - counts["linear"]) * wbytes
    lora = lora_param_count(model_config, cfg.lora_r, cfg.lora_target_modules, cfg.lora_top_layers)
    lora_state = lora * (4 + 4 + 8)  # fp32 weights, gradients, Adam m and v
    static = {"weights": weights / GB, "LoRA + Adam": lora_state / GB}

    kv_per_token = 2 * d["layers"] * d["kv_heads"] * d["head_dim"] * wbytes
    layer_per_token = (7 * h + 4 * i) * wbytes + (6 * h + i) * 4  # saved tensors of one layer
    rollout_batch = cfg.questions_per_step * cfg.group_size
    roll = _rollout_moments(d, cfg, rollout_batch, kv_per_token, layer_per_token, wbytes)
    eval_roll = _rollout_moments(d, cfg, cfg.eval_batch_size, kv_per_token, layer_per_token, wbytes)

    tokens = cfg.micro_batch_size * cfg.max_total_tokens
    ckpt_inputs = d["layers"] * tokens * h * wbytes
    one_layer = 2 * tokens * layer_per_token
    act_ckpt = ckpt_inputs + one_layer
    act_full = d["layers"] * tokens * layer_per_token * 2
    logit_bytes = V * 4  # one token's fp32 logits
    chunk_tokens = cfg.micro_batch_size * min(cfg.logprob_chunk, cfg.max_total_tokens)
    logits_naive = 3 * tokens * logit_bytes
    logits_chunked = 3 * chunk_tokens * logit_bytes
    entropy = 2 * chunk_tokens * logit_bytes if cfg.entropy_coef > 0 else 0
    entropy_naive = 2 * tokens * logit_bytes if cfg.entropy_coef > 0 else 0

    activations = act_ckpt if cfg.gradient_checkpointing else act_full
    phases = {
        "rollout, prefill": {**static, **_gb(roll["prefill"])},
        "rollout, merge": {**static, **_gb(roll["merge"])},
        "train, chunked logits": {**static, **_gb({"activations": act_ckpt, "logits": logits_chunked})},
        "train, naive logits": {**static, **_gb({"activations": act_ckpt, "logits": logits_naive})},
        "train, no checkpointing": {**static, **_gb({"activations": act_full, "logits": logits_chunked})},
    }
    if entropy:
        phases["train, chunked logits"]["entropy"] = entropy / GB
        phases["train, naive logits"]["entropy"] = entropy_naive / GB
        phases["train, no checkpointing"]["entropy"] = entropy / GB
    rollout_peak = max(sum(phases["rollout, prefill"].values()), sum(phases["rollout, merge"].values()))
    return {
        "params_total": counts["total"],
        "params_quantized": counts["linear"] if cfg.load_in_4bit else 0,
        "params_16bit": counts["total"] - (counts["linear"] if cfg.load_in_4bit else 0),
        "lora_params": lora,
        "weights_gb": weights / GB,
        "lora_state_gb": lora_state / GB,
        "kv_bytes_per_token": kv_per_token,
        "rollout_batch": rollout_batch,
        "kv_cache_gb": roll["merge"]["KV cache"] / GB,
        "kv_copy_gb": roll["merge"]["KV copy (split/merge)"] / GB,
        "prefill_gb": roll["prefill"]["prefill activations"] / GB,
        "repeat_kv_gb": roll["prefill"]["repeat_kv (prefill)"] / GB,
        "train_tokens": tokens,
        "logit_bytes_per_token": logit_bytes,
        "logits_naive_gb": logits_naive / GB,
        "logits_chunked_gb": logits_chunked / GB,
        "entropy_gb": entropy / GB,
        "activations_ckpt_gb": act_ckpt / GB,
        "activations_no_ckpt_gb": act_full / GB,
        "rollout_peak_gb": rollout_peak,
        "eval_rollout_peak_gb": sum(static.values()) + max(sum(m.values()) for m in eval_roll.values()) / GB,
        "train_peak_gb": sum(static.values()) + (activations + logits_chunked + entropy) / GB,
        "train_peak_naive_gb": sum(phases["train, naive logits"].values()),
        "phases": phases,
    }


def _rollout_moments(d: dict, cfg: Config, rows: int, kv_per_token: int, layer_per_token: int, wbytes: int):
    """Bytes of the two rollout moments for `rows` rows: the observation prefill and a cache split/merge."""
    kv_cache = rows * cfg.max_total_tokens * kv_per_token
    prefill = rows * cfg.max_tokens_per_turn * layer_per_token / 2  # no grad: about half is live
    # repeat_kv: one layer's K and V, (rows, heads, L, head_dim) each, expanded from kv_heads (none without GQA)
    gqa = d["heads"] > d["kv_heads"]
    repeat = 2 * rows * cfg.max_total_tokens * d["heads"] * d["head_dim"] * wbytes if gqa else 0
    return {
        "prefill": {"KV cache": kv_cache, "prefill activations": prefill, "repeat_kv (prefill)": repeat},
        "merge": {"KV cache": kv_cache, "KV copy (split/merge)": kv_cache},
    }


def _gb(parts: dict[str, float]) -> dict[str, float]:
    return {k: v / GB for k, v in parts.items()}


def budget_peak_gb(b: dict) -> float:
    """The largest of a budget's rollout, evaluation and training peaks: what the GPU must hold."""
    return max(b["rollout_peak_gb"], b["eval_rollout_peak_gb"], b["train_peak_gb"])
