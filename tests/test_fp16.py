"""fp16 on the CPU: loss scaling (the T4 training path) and the Qwen2.5 fp16 remedy (`fp32_modules`).

A T4 trains in fp16: `train.make_accelerator` asks accelerate for fp16 mixed precision on CUDA, i.e. fp16
autocast plus a GradScaler. accelerate does neither on the CPU (`Accelerator(cpu=True,
mixed_precision="fp16")` has no scaler), so the tests below give the CPU accelerator what CUDA would get
(fp16 autocast and `torch.amp.GradScaler("cpu")`) and run the real training loop through it.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from accelerate import Accelerator
from conftest import TINY_RUN, make_tiny_model, tiny_lora_policy

from agentr1_nb import algos
from agentr1_nb import train as train_mod
from agentr1_nb.config import Config, get_config
from agentr1_nb.env import build_task
from agentr1_nb.logprobs import token_logprobs
from agentr1_nb.policy import _quantization_kwargs, compute_in_fp32, load_policy, tiny_model_config

TINY = TINY_RUN + [
    "minibatch_size=4",
    "micro_batch_size=2",
    "kl_coef=0",
    "old_logprobs=sampler",
    "save_every=10",
]
PER_TOKEN = 1e-7
"""|advantage| / loss tokens of the step: the gradient each action token's log-prob receives. Measured on
the tiny model: below ~3e-7 every LoRA gradient that flows back through fp16 activations is exactly 0."""


def _policy(tokenizer):
    return tiny_lora_policy(tokenizer, hidden=32, layers=1)


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state whose mixed precision cannot change once set."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def _fp16_accelerator(scaled: bool):
    """What `make_accelerator` builds on a T4 (fp16 autocast + a GradScaler), on the CPU."""

    def make(cfg, out=None):
        acc = Accelerator(cpu=True, mixed_precision="fp16")
        acc.native_amp = True  # autocast(fp16) in acc.autocast(), unscale in acc.clip_grad_norm_
        acc.scaler = torch.amp.GradScaler("cpu", enabled=scaled)  # CUDA: GradScaler("cuda"), init scale 2**16
        return acc

    return make


def _small_advantages(real):
    """Advantages of +-PER_TOKEN x (loss tokens), alternating by row, on action tokens: every action token's
    log-prob gets a gradient of PER_TOKEN, as in a long step with a small reward spread."""

    def adv(algo, token_rewards, action_mask, response_mask, *args, **kwargs):
        _, returns = real(algo, token_rewards, action_mask, response_mask, *args, **kwargs)
        n = float(action_mask.sum())
        sign = torch.ones(action_mask.shape[0], 1, device=action_mask.device)
        sign[1::2] = -1.0
        return PER_TOKEN * n * sign * action_mask, returns

    return adv


@pytest.mark.parametrize("scaled", [False, True])
def test_fp16_training_needs_loss_scaling_to_move_lora(
    tmp_path, tokenizer, monkeypatch, fresh_accelerate_state, scaled
):
    """One real training step under fp16 autocast: without loss scaling the gradients underflow to exactly
    zero and no LoRA weight moves (silently: the loss and the grad norm are finite); with accelerate's
    GradScaler they move, and the logged grad norm is the unscaled one (unscaled before clipping)."""
    cfg = get_config("cpu_demo", TINY + ["steps=1"])
    monkeypatch.setattr(train_mod, "make_accelerator", _fp16_accelerator(scaled))
    monkeypatch.setattr(algos, "compute_advantages", _small_advantages(algos.compute_advantages))
    model = _policy(tokenizer)
    before = {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}
    hist = train_mod.train(cfg, tmp_path, model=model, tokenizer=tokenizer, task=build_task(cfg, tokenizer))
    moved = [k for k, v in model.named_parameters() if "lora_" in k and not torch.equal(before[k], v)]
    m = hist[0]
    assert m["skipped_updates"] == 0 and m["loss"] == m["loss"]  # finite: nothing looks wrong
    if scaled:
        assert moved, "scaled fp16 training must move the LoRA weights"
        assert 0 < m["grad_norm"] < 1e-3, m["grad_norm"]  # unscaled before clipping (scaled: x 65,536)
    else:
        assert moved == [], "unscaled fp16 gradients of this size underflow to zero"
        assert m["grad_norm"] == 0.0


def test_fp16_gradients_underflow_without_scaling_and_survive_with_it():
    """The mechanism in isolation: d loss / d log p = w per token, through fp16 activations."""
    from peft import LoraConfig, get_peft_model

    base = make_tiny_model(4096, hidden=32, layers=1)
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    ids = torch.randint(0, 4096, (2, 24), generator=torch.Generator().manual_seed(0))

    def lora_b_grads(w: float, scale: float) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.float16):
            logp = token_logprobs(model, ids, torch.ones_like(ids))  # (2, 23)
        ((logp * w).sum() * scale).backward()
        return torch.cat(
            [p.grad.float().flatten() / scale for n, p in model.named_parameters() if "lora_B" in n]
        )

    fp32 = lora_b_grads(1e-3, 1.0)  # large enough for fp16: the reference direction
    for w in (1e-7, 1e-8):
        assert lora_b_grads(w, 1.0).count_nonzero() == 0, "fp16 activation gradients underflow to zero"
        scaled = lora_b_grads(w, 2.0**16)
        assert scaled.count_nonzero() > 0.9 * scaled.numel()
        cos = torch.nn.functional.cosine_similarity(scaled, fp32 * (w / 1e-3), dim=0)
        assert cos > 0.99, cos


# ----------------------------------------------------------------------------- the Qwen2.5 fp16 remedy


def test_quantization_kwargs_keep_the_fp32_modules_out_of_4bit():
    t4 = get_config("colab_t4")
    assert t4.fp32_modules, "the remedy is on in colab_t4"
    q = _quantization_kwargs(t4, torch.float16)["quantization_config"]
    names = t4.fp32_modules.split(",")
    assert q.llm_int8_skip_modules == ["lm_head", *names]  # a list replaces bitsandbytes' default skips
    assert q.bnb_4bit_compute_dtype == torch.float16 and q.bnb_4bit_quant_type == "nf4"
    off = _quantization_kwargs(t4.replace(fp32_modules=""), torch.float16)["quantization_config"]
    assert off.llm_int8_skip_modules is None  # the default: bitsandbytes skips the output head itself
    assert _quantization_kwargs(Config(), torch.float32) == {}
    for preset in ("cpu_demo", "a100"):
        assert get_config(preset).fp32_modules == ""


def _tiny_qwen2(folder, tokenizer, overflow: bool = False):
    """A tiny random Qwen2 (Qwen2.5's architecture) saved with the SmolLM2 tokenizer. `overflow` scales the
    first MLP so that gate x up passes the fp16 maximum (as Qwen2.5's early MLPs do) while its output, after
    the down projection, stays in range."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = tiny_model_config(len(tokenizer), max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
    model = Qwen2ForCausalLM(cfg)
    if overflow:
        mlp = model.model.layers[0].mlp
        with torch.no_grad():
            mlp.gate_proj.weight.mul_(2000.0)
            mlp.up_proj.weight.mul_(2000.0)
            mlp.down_proj.weight.mul_(1e-4)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _cfg(path: str, **kw) -> Config:
    return Config(model=path, lora_r=4, lora_alpha=8, **kw)


def test_tiny_qwen2_in_4bit_keeps_the_named_modules_in_fp32(tmp_path, tokenizer):
    """bitsandbytes runs NF4 on the CPU: the named MLP is a plain fp32 nn.Linear, the rest Linear4bit."""
    bnb = pytest.importorskip("bitsandbytes")
    path = _tiny_qwen2(tmp_path / "qwen2", tokenizer)
    model, _ = load_policy(
        _cfg(path, load_in_4bit=True, compute_dtype="bf16", fp32_modules="model.layers.0.mlp")
    )
    layers = model.get_base_model().model.layers
    for proj in ("gate_proj", "up_proj", "down_proj"):
        kept = getattr(layers[0].mlp, proj).base_layer  # LoRA wraps it; the base layer is ours
        assert type(kept) is torch.nn.Linear and kept.weight.dtype == torch.float32, (proj, type(kept))
        assert isinstance(getattr(layers[1].mlp, proj).base_layer, bnb.nn.Linear4bit)
    assert isinstance(layers[0].self_attn.q_proj.base_layer, bnb.nn.Linear4bit)
    assert layers[0].input_layernorm.weight.dtype == torch.bfloat16  # the rest stays in the compute dtype
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    out = token_logprobs(model, ids)  # LoRA over the fp32 MLP, the 4-bit rest in bf16
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_4bit_qwen2_trains_after_a_no_grad_rollout(tmp_path, tokenizer):
    """The loop's order: greedy decoding in eval mode without grad, then a training forward and backward.
    bitsandbytes repacks 4-bit weights for AVX512-BF16 cores on such a no-grad forward, and its packed path
    then fails in training (`result += bias`: "a view of a leaf Variable that requires grad is being used in
    an in-place operation", Qwen2's q/k/v projections have biases); `load_policy` switches the repacking off,
    so on every CPU the 4-bit weights stay as loaded and the LoRA weights get gradients."""
    bnb = pytest.importorskip("bitsandbytes")
    path = _tiny_qwen2(tmp_path / "qwen2", tokenizer)
    model, _ = load_policy(_cfg(path, load_in_4bit=True, compute_dtype="bf16"))
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and not any(getattr(m, "support_avx512bf16_for_cpu", False) for m in quantized)
    before = [m.weight.data.clone() for m in quantized]
    ids = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)  # what a rollout does first
    model.train()
    logp = token_logprobs(model, ids)
    (-logp.sum()).backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(torch.equal(m.weight.data, b) for m, b in zip(quantized, before))


def test_importing_bitsandbytes_through_the_package_prints_no_kernel_warning():
    """bitsandbytes 0.50 warns on import, on AVX512-BF16 cores, about an optional kernel of the repacked path
    the package switches off; a user of the package (notebooks 00 and 02, through peft or the dense retriever)
    does not see it."""
    pytest.importorskip("bitsandbytes")
    code = "import agentr1_nb.retrieval, sentence_transformers, peft, bitsandbytes"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "gemm_4bit_forward" not in proc.stderr + proc.stdout


def test_fp32_modules_stop_an_fp16_overflow(tmp_path, tokenizer):
    """fp16 compute overflows in the first MLP (NaN log-probs); with that MLP in fp32 the log-probs are
    finite and match fp32 compute."""
    path = _tiny_qwen2(tmp_path / "qwen2", tokenizer, overflow=True)
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = token_logprobs(load_policy(_cfg(path, compute_dtype="fp32"))[0], ids)
        broken = token_logprobs(load_policy(_cfg(path, compute_dtype="fp16"))[0], ids)
        model, _ = load_policy(_cfg(path, compute_dtype="fp16", fp32_modules="model.layers.0.mlp"))
        fixed = token_logprobs(model, ids)
    assert torch.isfinite(ref).all()
    assert not torch.isfinite(broken).all(), "the tiny model must overflow in fp16 without the remedy"
    assert torch.isfinite(fixed).all()
    assert (fixed - ref).abs().max() < 0.05, (fixed - ref).abs().max()
    layer0 = model.get_base_model().model.layers[0]
    assert layer0.mlp.down_proj.base_layer.weight.dtype == torch.float32
    assert layer0.self_attn.q_proj.base_layer.weight.dtype == torch.float16


def test_fp32_module_output_is_clamped_to_the_compute_range():
    lin = torch.nn.Linear(2, 2, bias=False).half()
    with torch.no_grad():
        lin.weight.fill_(60000.0)
    compute_in_fp32(torch.nn.Sequential(lin), ["0"])
    out = lin(torch.ones(1, 2, dtype=torch.float16))  # 120,000 in fp32
    assert out.dtype == torch.float16 and torch.equal(
        out, torch.full_like(out, torch.finfo(torch.float16).max)
    )


def test_fp32_modules_naming_nothing_is_an_error():
    with pytest.raises(ValueError, match="names no module"):
        compute_in_fp32(make_tiny_model(32, hidden=16, layers=1), ["model.layers.7.mlp"])
