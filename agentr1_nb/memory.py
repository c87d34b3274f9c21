"""Sizing arithmetic: parameters, LoRA size and the GPU memory of one GRPO step with (Q)LoRA.

No model is loaded: everything follows from a model's config (a dict such as its config.json) and the run's
`Config`. `QWEN25_3B_CONFIG` is Qwen2.5-3B-Instruct's architecture, so the notebook runs without the hub.
Shapes and bytes, in the spirit of nanoGPT's `transformer_sizing.ipynb`. `time_plan` does the same for time.

`memory_budget`'s assumptions (`check --full-size` measures each term's tensors on a CPU; see `rehearsal`):
- NF4 with double quantisation for every linear layer except `fp32_modules` (fp32 weights and biases:
  `colab_t4`'s first four MLPs, +0.94 GB); embedding, norms and biases in the compute dtype (`load_policy`
  keeps them 16-bit); LoRA weights fp32 with fp32 gradients and two Adam moments.
- Checkpointing keeps each layer's 16-bit input, and outside the layers the final RMSNorm's fp32 input; the
  backward recomputes one layer, doubled for its gradients. What one layer saves per token
  (`layer_saved_bytes_per_token`, counted tensor by tensor by `check --full-size`): 16-bit, the query and the
  attention output, K and V expanded to every head (SDPA's `repeat_kv` with a padding mask; unpadded on a CPU
  they stay at kv_heads, 3.5 % less), and the MLP's gate, SiLU(gate) and up (3 intermediate-sized); fp32,
  the copies of their inputs that peft's LoRA layers make (6 hidden + 1 intermediate: a frozen 4-bit layer
  saves no input of its own), the two RMSNorms' fp32 inputs, and LoRA's rank-r intermediates. (Under fp16 /
  bf16 autocast on a GPU the LoRA inputs are saved as 16-bit casts instead: an upper bound there.)
  Attention is SDPA (no T x T matrix).
- Logits: naive = the fp32 logits, their log-softmax and its gradient at once (3 x 4 bytes per token and
  vocabulary entry; `bench_logprobs` measures 2 of them in the forward); chunked = the same for
  `logprob_chunk` time steps. The entropy (`with_entropy`, only when entropy_coef > 0) adds two more
  vocabulary-sized fp32 tensors per chunk: the probabilities and their product with the log-probs.
- The 16-bit output of the head before the fp32 cast, the 4D attention mask of a prefill (a byte per
  query and key), the CUDA context (~0.3-0.5 GB) and allocator fragmentation are left out.
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


def layer_module_params(model_config: dict) -> dict[str, int]:
    """Parameters of every linear projection of every decoder layer, by its module name in the model
    (`model.layers.{l}.self_attn.q_proj`, `model.layers.{l}.mlp.gate_proj`, ...), biases included."""
    d = _dims(model_config)
    out = {}
    for layer in range(d["layers"]):
        for name, (i, o) in linear_shapes(model_config).items():
            block = "self_attn" if name in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            bias = o if d["qkv_bias"] and name in ("q_proj", "k_proj", "v_proj") else 0
            out[f"model.layers.{layer}.{block}.{name}"] = i * o + bias
    return out


def fp32_module_params(model_config: dict, fp32_modules: str) -> tuple[int, int]:
    """(linear weights, biases) of the projections that `fp32_modules` (comma-separated module names, as in
    `Config.fp32_modules`) keeps out of 4-bit and in fp32. A name matches as bitsandbytes'
    `llm_int8_skip_modules` does: a module equal to it, inside it, or whose name ends with it."""
    patterns = [m.strip() for m in fp32_modules.split(",") if m.strip()]
    shapes = linear_shapes(model_config)
    weights = biases = 0
    for name, n in layer_module_params(model_config).items():
        if any(name == p or name.startswith(p + ".") or name.endswith(p) for p in patterns):
            i, o = shapes[name.rsplit(".", 1)[1]]
            weights, biases = weights + i * o, biases + n - i * o
    return weights, biases


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


def weight_terms(model_config: dict, cfg: Config) -> dict:
    """Parameters and bytes of the base model by storage: NF4 (every linear layer but `fp32_modules`, when
    `load_in_4bit`), fp32 (`fp32_modules`' weights and biases), and the compute dtype (the rest)."""
    counts = param_counts(model_config)
    wbytes = compute_dtype(cfg).itemsize
    fp32_w, fp32_b = fp32_module_params(model_config, cfg.fp32_modules)
    linear = counts["linear"] - fp32_w  # linear weights outside the fp32 modules
    quantized = linear if cfg.load_in_4bit else 0
    sixteen = counts["total"] - counts["linear"] - fp32_b + (linear - quantized)
    return {
        "params_quantized": quantized,
        "params_fp32": fp32_w + fp32_b,
        "params_16bit": sixteen,
        "4-bit": quantized * NF4_BYTES_PER_PARAM,
        "fp32 modules": (fp32_w + fp32_b) * 4,
        "16-bit": sixteen * wbytes,
    }


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
    Its assumptions are listed in the module docstring (an estimate, not a measurement).
    """
    d = _dims(model_config)
    counts = param_counts(model_config)
    wbytes = compute_dtype(cfg).itemsize
    w = weight_terms(model_config, cfg)
    weights = w["4-bit"] + w["fp32 modules"] + w["16-bit"]
    lora = lora_param_count(model_config, cfg.lora_r, cfg.lora_target_modules, cfg.lora_top_layers)
    lora_state = lora * (4 + 4 + 8)  # fp32 weights, gradients, Adam m and v
    static = {"weights": weights / GB, "LoRA + Adam": lora_state / GB}

    kv_per_token = 2 * d["layers"] * d["kv_heads"] * d["head_dim"] * wbytes
    layer_per_token = layer_saved_bytes_per_token(model_config, cfg)
    rollout_batch = cfg.questions_per_step * cfg.group_size
    roll = _rollout_moments(d, cfg, rollout_batch, kv_per_token, layer_per_token, wbytes)
    eval_roll = _rollout_moments(d, cfg, cfg.eval_batch_size, kv_per_token, layer_per_token, wbytes)

    t = _train_bytes(d, cfg, layer_per_token, wbytes)
    tokens, act_ckpt, act_full = t["tokens"], t["act_ckpt"], t["act_full"]
    logits_chunked, logits_naive, entropy = t["logits_chunked"], t["logits_naive"], t["entropy"]
    activations = act_ckpt if cfg.gradient_checkpointing else act_full
    phases = _phases(static, roll, t)
    rollout_peak = max(sum(phases["rollout, prefill"].values()), sum(phases["rollout, merge"].values()))
    return {
        "params_total": counts["total"],
        "params_quantized": w["params_quantized"],
        "params_fp32": w["params_fp32"],
        "params_16bit": w["params_16bit"],
        "lora_params": lora,
        "weights_gb": weights / GB,
        "weights_4bit_gb": w["4-bit"] / GB,
        "weights_fp32_gb": w["fp32 modules"] / GB,
        "weights_16bit_gb": w["16-bit"] / GB,
        "lora_state_gb": lora_state / GB,
        "lora_weights_gb": lora * 4 / GB,
        "adam_gb": lora * 8 / GB,
        "kv_bytes_per_token": kv_per_token,
        "rollout_batch": rollout_batch,
        "kv_cache_gb": roll["merge"]["KV cache"] / GB,
        "kv_copy_gb": roll["merge"]["KV copy (split/merge)"] / GB,
        "prefill_gb": roll["prefill"]["prefill activations"] / GB,
        "repeat_kv_gb": roll["prefill"]["repeat_kv (prefill)"] / GB,
        "train_tokens": tokens,
        "logit_bytes_per_token": t["logit_bytes"],
        "logits_naive_gb": logits_naive / GB,
        "logits_chunked_gb": logits_chunked / GB,
        "entropy_gb": entropy / GB,
        "activations_ckpt_gb": act_ckpt / GB,
        "ckpt_inputs_gb": t["ckpt_inputs"] / GB,
        "layer_saved_gb": t["layer_saved"] / GB,
        "outside_layers_gb": t["outside"] / GB,
        "activations_no_ckpt_gb": act_full / GB,
        "rollout_peak_gb": rollout_peak,
        "eval_rollout_peak_gb": sum(static.values()) + max(sum(m.values()) for m in eval_roll.values()) / GB,
        "train_peak_gb": sum(static.values()) + (activations + logits_chunked + entropy) / GB,
        "train_peak_naive_gb": sum(phases["train, naive logits"].values()),
        "phases": phases,
    }


def _phases(static: dict, roll: dict, t: dict) -> dict[str, dict[str, float]]:
    """GB by item of each moment of a step: the rollout's two, training's three (see `memory_budget`)."""
    phases = {
        "rollout, prefill": {**static, **_gb(roll["prefill"])},
        "rollout, merge": {**static, **_gb(roll["merge"])},
        "train, chunked logits": {
            **static,
            **_gb({"activations": t["act_ckpt"], "logits": t["logits_chunked"]}),
        },
        "train, naive logits": {**static, **_gb({"activations": t["act_ckpt"], "logits": t["logits_naive"]})},
        "train, no checkpointing": {
            **static,
            **_gb({"activations": t["act_full"], "logits": t["logits_chunked"]}),
        },
    }
    if t["entropy"]:
        phases["train, chunked logits"]["entropy"] = t["entropy"] / GB
        phases["train, naive logits"]["entropy"] = t["entropy_naive"] / GB
        phases["train, no checkpointing"]["entropy"] = t["entropy"] / GB
    return phases


def layer_saved_bytes_per_token(model_config: dict, cfg: Config) -> int:
    """Bytes one decoder layer saves for its backward, per token (see the module docstring): 16-bit, the query
    and the attention output, K and V expanded to every head, the MLP's gate, its activation and up; fp32, the
    copies of their inputs that peft's LoRA layers make (a frozen 4-bit layer saves no input), the two
    RMSNorms' fp32 inputs, and LoRA's rank-r intermediates."""
    d = _dims(model_config)
    h, i, q = d["hidden"], d["inter"], d["heads"] * d["head_dim"]
    sixteen = (4 * q + 3 * i) * compute_dtype(cfg).itemsize
    fp32 = (5 * h + q + i) * 4 + 2 * h * 4 + 7 * cfg.lora_r * 4
    return sixteen + fp32


def _train_bytes(d: dict, cfg: Config, layer_per_token: int, wbytes: int) -> dict:
    """Bytes of one micro-batch of micro_batch_size x max_total_tokens tokens in training: activations with
    and without checkpointing (`memory_budget`'s assumptions), logits naive and chunked, the entropy's."""
    tokens = cfg.micro_batch_size * cfg.max_total_tokens
    ckpt_inputs = d["layers"] * tokens * d["hidden"] * wbytes
    outside = tokens * d["hidden"] * 4  # the final RMSNorm's fp32 input
    layer_saved = tokens * layer_per_token
    logit_bytes = d["vocab"] * 4  # one token's fp32 logits
    chunk_tokens = cfg.micro_batch_size * min(cfg.logprob_chunk, cfg.max_total_tokens)
    return {
        "tokens": tokens,
        "ckpt_inputs": ckpt_inputs,
        "layer_saved": layer_saved,
        "outside": outside,
        "act_ckpt": ckpt_inputs + outside + 2 * layer_saved,  # one recomputed layer and its gradients
        "act_full": d["layers"] * layer_saved * 2 + outside,
        "logit_bytes": logit_bytes,
        "logits_naive": 3 * tokens * logit_bytes,
        "logits_chunked": 3 * chunk_tokens * logit_bytes,
        "entropy": 2 * chunk_tokens * logit_bytes if cfg.entropy_coef > 0 else 0,
        "entropy_naive": 2 * tokens * logit_bytes if cfg.entropy_coef > 0 else 0,
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


# ----------------------------------------------------------------------------- the time plan

T4: dict = dict(
    name="NVIDIA T4 (Colab)",
    peak_flops=65e12,
    flops_utilisation=0.25,
    bandwidth=320e9,
    bandwidth_utilisation=0.5,
    decode_overhead_s=0.03,
    session_hours=12.0,
)
"""What `time_plan` assumes of a Colab T4. From NVIDIA's T4 datasheet: 65 TFLOPS fp16 on tensor cores (dense
peak) and 320 GB/s of memory bandwidth. Assumed, not measured (no GPU has been lent to this project): a quarter
of the peak in prefill and training (bitsandbytes dequantises each 4-bit weight before its fp16 matmul, and
eager PyTorch at these shapes rarely passes 30-40 %), half the bandwidth in decoding (4-bit GEMV kernels), and
30 ms of per-token overhead in decoding (eager `transformers`: ~15 kernel launches x 36 layers per token, plus
the loop's Python). Colab's free tier ends a session after at most 12 hours (Colab FAQ), sooner when idle."""

PROMPT_TOKENS = 700
"""Assumed prompt length (system prompt, tool schema, a worked example and the question) for `time_plan`."""

CHARS_PER_TOKEN = 4
"""Assumed characters per token of a tool response (English Wikipedia text): `max_tool_chars` / 4 tokens."""


def step_tokens(cfg: Config, prompt_tokens: int = PROMPT_TOKENS) -> dict:
    """Tokens one training step handles, an upper bound: every turn generates `max_tokens_per_turn` tokens and
    every tool response is `max_tool_chars` long, until `max_total_tokens` cuts the trajectory.

    rows: questions_per_step x group_size trajectories; decode_steps: tokens each row generates (the batch
    decodes together, a turn lasting as long as its longest row); prefill: prompt and observation tokens of all
    rows; train: the whole trajectories, what the log-prob passes and the update run over."""
    rows = cfg.questions_per_step * cfg.group_size
    room = max(cfg.max_total_tokens - prompt_tokens, 0)
    generated = min(cfg.max_turns * cfg.max_tokens_per_turn, room)
    obs_tokens = cfg.max_tool_chars // CHARS_PER_TOKEN + 20  # + the tool-response template
    observed = min((cfg.max_turns - 1) * obs_tokens, room - generated)
    length = prompt_tokens + generated + observed
    return {
        "rows": rows,
        "trajectory_tokens": length,
        "decode_steps": generated,
        "decoded": rows * generated,
        "prefilled": rows * (prompt_tokens + observed),
        "trained": rows * length,
    }


def forward_flops_per_token(model_config: dict, context: float) -> float:
    """FLOPs of one token's forward pass: 2 per weight of every matmul (the linear layers and the output head,
    which Qwen2.5-3B ties to the embedding) plus attention's QK^T and AV over `context` earlier tokens."""
    d = _dims(model_config)
    matmul = param_counts(model_config)["linear"] + d["vocab"] * d["hidden"]
    return 2 * matmul + 4 * d["layers"] * d["heads"] * d["head_dim"] * context


def training_passes(cfg: Config) -> dict[str, float]:
    """Forward-pass equivalents per trained token: the old log-probs (when recomputed: a 4-bit base or 16-bit
    compute, as `train.recompute_old_logprobs` decides for "auto"), the reference (when kl_coef > 0), and per
    epoch the update: forward, its recomputation under checkpointing, and a backward that costs one forward
    (the base is frozen: gradients flow to the activations, not to the 4-bit weights; LoRA's are negligible)."""
    recompute = cfg.old_logprobs == "recompute" or (
        cfg.old_logprobs == "auto" and (cfg.load_in_4bit or compute_dtype(cfg).itemsize < 4)
    )
    update = 3.0 if cfg.gradient_checkpointing else 2.0
    return {
        "old_logprobs": 1.0 if recompute else 0.0,
        "reference": 1.0 if cfg.kl_coef > 0 else 0.0,
        "update": update * cfg.ppo_epochs,
    }


def time_plan(model_config: dict, cfg: Config, gpu: dict | None = None, prompt_tokens: int = PROMPT_TOKENS):
    """Minutes per training step and hours for the run of `cfg` on `gpu` (`T4` by default): arithmetic from
    the tokens a step decodes, prefills and trains on (`step_tokens`, upper bounds), not a measurement.

    Prefill and training are compute-bound: FLOPs (`forward_flops_per_token` at the mean causal context,
    half the trajectory, times `training_passes`) over peak x utilisation. Decoding is memory-bound: each
    decode step reads all weights once (`memory_budget`'s weights) and the rows' KV caches, over bandwidth x
    utilisation, plus a fixed per-step overhead. Evaluation (before and after training) decodes
    `eval_questions` greedy rows in batches of `eval_batch_size`. Returns the pieces and `advice` for a
    Colab session."""
    gpu = {**T4, **(gpu or {})}
    tok = step_tokens(cfg, prompt_tokens)
    budget = memory_budget(model_config, cfg)
    ctx = tok["trajectory_tokens"] / 2
    flops_rate = gpu["peak_flops"] * gpu["flops_utilisation"]
    passes = training_passes(cfg)
    prefill_flops = tok["prefilled"] * forward_flops_per_token(model_config, ctx)
    train_flops = sum(passes.values()) * tok["trained"] * forward_flops_per_token(model_config, ctx)

    def decode_s(rows: int) -> float:
        read = budget["weights_gb"] * GB + rows * ctx * budget["kv_bytes_per_token"]  # bytes per decode step
        per_step = read / (gpu["bandwidth"] * gpu["bandwidth_utilisation"]) + gpu["decode_overhead_s"]
        compute = rows * forward_flops_per_token(model_config, ctx) / flops_rate
        return tok["decode_steps"] * max(per_step, compute)

    seconds = {
        "decode": decode_s(tok["rows"]),
        "prefill": prefill_flops / flops_rate,
        "train": train_flops / flops_rate,
    }
    step_s = sum(seconds.values())
    eval_batches = -(-cfg.eval_questions // cfg.eval_batch_size)
    eval_s = 2 * eval_batches * decode_s(min(cfg.eval_batch_size, cfg.eval_questions))
    run_h = (cfg.steps * step_s + eval_s) / 3600
    session_steps = max(int((gpu["session_hours"] * 3600 - eval_s) // step_s), 0)
    return {
        "gpu": gpu,
        "tokens": tok,
        "passes_per_trained_token": passes,
        "prefill_tflop": prefill_flops / 1e12,
        "train_tflop": train_flops / 1e12,
        "seconds": seconds,
        "step_min": step_s / 60,
        "eval_min": eval_s / 60,
        "steps": cfg.steps,
        "run_hours": run_h,
        "fits_one_session": run_h <= gpu["session_hours"],
        "steps_per_session": session_steps,
        "advice": session_advice(cfg, run_h, step_s, gpu["session_hours"], session_steps),
    }


def session_advice(
    cfg: Config, run_hours: float, step_s: float, session_hours: float, session_steps: int
) -> list[str]:
    """How a run survives a Colab disconnect, and what to change to fit one session (`session_steps`: the
    steps that fit beside the evaluation)."""
    out = [
        "keep the run folder on Google Drive (`--out /content/drive/MyDrive/agentr1_run`): after a disconnect, "
        f"run the same command again and train() resumes from the last checkpoint (every {cfg.save_every} "
        f"steps: at most {cfg.save_every} steps, ~{cfg.save_every * step_s / 60:.0f} min, are redone)"
    ]
    if run_hours > session_hours:
        out.append(
            f"{cfg.steps} steps take ~{run_hours:.1f} h, more than one {session_hours:.0f} h session: resume in "
            f"a second session, or fit one with steps={session_steps} (with both evaluations), or a cheaper step "
            "(group_size=4, or max_turns=3: a step's time is about linear in both)"
        )
    return out
