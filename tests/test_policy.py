"""Policy loading, LoRA / QLoRA, the reference policy, final hidden states, chunked token log-probs."""

from __future__ import annotations

import re
import shutil
import time
import warnings

import pytest
import torch
from conftest import make_tiny_model, tiny_lora_policy

from agentr1_nb import logprobs, policy
from agentr1_nb.bench import token_logprobs_naive
from agentr1_nb.config import Config, get_config
from agentr1_nb.logprobs import final_hidden, token_logprobs
from agentr1_nb.memory import NF4_BYTES_PER_PARAM, lora_param_count
from agentr1_nb.policy import (
    ModelUnavailableError,
    _folder_is_complete,
    cpu_default_model_dir,
    load_policy,
    reference,
)


def _perturb_lora(model, scale: float = 0.5, seed: int = 0) -> None:
    """LoRA B starts at zero (adapter = identity); make it non-zero so the adapter changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def _lora_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


# ----------------------------------------------------------------------------- the real CPU default


@pytest.fixture(scope="module")
def cpu_policy():
    return load_policy(get_config())


@pytest.mark.slow
def test_cpu_default_loads_and_generates(cpu_policy):
    model, tok = cpu_policy
    assert tok.padding_side == "left" and tok.pad_token is not None
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    batch = tok([text], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    new = out[0, batch["input_ids"].shape[1] :]
    assert 0 < len(new) <= 8
    assert tok.decode(new, skip_special_tokens=True).strip()


@pytest.mark.slow
def test_lora_trainable_parameters_match_formula(cpu_policy):
    model, _ = cpu_policy
    c, top = model.config, get_config().lora_top_layers  # cpu_demo adapts the top layers only
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    h, i, r = c.hidden_size, c.intermediate_size, 16
    per_layer = r * ((h + q) + (h + kv) + (h + kv) + (q + h) + (h + i) + (h + i) + (i + h))
    expected = (top or c.num_hidden_layers) * per_layer
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == expected == lora_param_count(c.to_dict(), r, top_layers=top)
    assert lora_param_count(c.to_dict(), r) == c.num_hidden_layers * per_layer
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- the reference policy


def test_reference_restores_base_logits_exactly():
    from peft import LoraConfig, get_peft_model

    base = make_tiny_model(512)
    ids = torch.randint(512, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base_logits = base(ids).logits.clone()
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    _perturb_lora(model)
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        with reference(model):
            ref = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
    assert not torch.allclose(adapted, base_logits, atol=1e-3)
    assert torch.equal(ref, base_logits)
    assert torch.equal(after, adapted)  # the adapter is back on after the context


# ----------------------------------------------------------------------------- QLoRA on the CPU


@pytest.fixture
def tiny_model_dir(tmp_path, tokenizer):
    """A tiny random Llama with the SmolLM2 vocabulary saved as a normal HF folder (loads like any model)."""
    model = make_tiny_model(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


@pytest.mark.parametrize("dtype,ckpt", [("fp32", False), ("bf16", True)])
def test_qlora_cpu_step_changes_only_lora(tiny_model_dir, dtype, ckpt):
    import bitsandbytes as bnb

    overrides = {"load_in_4bit": True, "compute_dtype": dtype, "gradient_checkpointing": ckpt}
    cfg = get_config(overrides={"model": str(tiny_model_dir), **overrides})
    model, tok = load_policy(cfg)
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert len(quantized) == 7 * model.config.num_hidden_layers
    before_4bit = {n: m.weight.data.clone() for n, m in quantized.items()}
    before_16bit = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in n for n in lora)
    _perturb_lora(model, scale=0.05)  # so that lora_A also gets a gradient
    before_lora = {n: p.detach().clone() for n, p in lora.items()}

    batch = tok(["The capital of France is Paris.", "Two plus two"], return_tensors="pt", padding=True)
    model.train()
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules()) == ckpt
    opt = torch.optim.AdamW(lora.values(), lr=1e-2)
    logp = token_logprobs(model, batch["input_ids"], batch["attention_mask"], chunk=4)
    assert logp.dtype == torch.float32 and torch.isfinite(logp).all()
    (-logp.sum()).backward()
    opt.step()

    for n, m in quantized.items():
        assert m.weight.data.dtype == torch.uint8 and torch.equal(m.weight.data, before_4bit[n]), n
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p.detach(), before_16bit[n]), n
    changed = [n for n, p in lora.items() if not torch.equal(p.detach(), before_lora[n])]
    assert len(changed) == len(lora)


def test_nf4_bytes_match_bitsandbytes(tiny_model_dir):
    """The memory arithmetic's bytes per 4-bit parameter agree with what bitsandbytes stores."""
    import bitsandbytes as bnb

    cfg = get_config(overrides={"model": str(tiny_model_dir), "load_in_4bit": True, "compute_dtype": "fp32"})
    model, _ = load_policy(cfg)
    params = stored = 0
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            qs = m.weight.quant_state
            params += m.in_features * m.out_features
            stored += m.weight.data.numel() + qs.absmax.numel() * qs.absmax.element_size()
            if qs.nested:
                stored += qs.state2.absmax.numel() * 4
    assert stored / params == pytest.approx(NF4_BYTES_PER_PARAM, rel=0.05)


# ----------------------------------------------------------------------------- chunked token log-probs


def _padded_batch(vocab: int):
    """Three sequences of different lengths, left-padded, one with a padding hole in the middle."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, vocab, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding
    mask[2, :2] = 0
    mask[2, 6] = 0  # a hole (e.g. a dropped token)
    return ids, mask


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_chunked_logprobs_equal_naive_with_grad(chunk):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(make_tiny_model(300), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    _perturb_lora(model, scale=0.1)
    ids, mask = _padded_batch(300)

    naive, ent_naive = token_logprobs_naive(model, ids, mask, temperature=0.7, with_entropy=True)
    (naive.sum() + 0.1 * ent_naive.sum()).backward()
    g_naive = _lora_grads(model)
    model.zero_grad()
    chunked, ent = token_logprobs(model, ids, mask, chunk=chunk, temperature=0.7, with_entropy=True)
    (chunked.sum() + 0.1 * ent.sum()).backward()
    g_chunked = _lora_grads(model)

    assert chunked.shape == ent.shape == (3, 10) and chunked.dtype == torch.float32
    assert torch.allclose(chunked, naive, atol=1e-5)
    assert torch.allclose(ent, ent_naive, atol=1e-5)
    assert g_naive.keys() == g_chunked.keys() and len(g_naive) > 0
    for n in g_naive:
        assert torch.allclose(g_chunked[n], g_naive[n], atol=1e-5, rtol=1e-4), n
    # positions whose target or predecessor is padding are exactly 0
    assert (chunked[1, :4] == 0).all() and (chunked[2, 5:7] == 0).all()
    assert (chunked[0] < 0).all()


@pytest.mark.parametrize("chunk", [1, 64])
def test_logprobs_at_positions_equal_the_full_ones_with_grad(chunk):
    """The head run on the wanted steps only gives the same log-probs, entropies and LoRA gradients there,
    and exactly 0 elsewhere (padding included)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(make_tiny_model(300), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    _perturb_lora(model, scale=0.1)
    ids, mask = _padded_batch(300)
    pos = torch.rand(3, 10, generator=torch.Generator().manual_seed(1)) > 0.4  # (B, T-1)
    keep = pos & logprobs.valid_targets(mask)

    full, ent_full = token_logprobs(model, ids, mask, chunk=chunk, temperature=0.7, with_entropy=True)
    ((full * keep).sum() + 0.1 * (ent_full * keep).sum()).backward()
    g_full = _lora_grads(model)
    model.zero_grad()
    part, ent = token_logprobs(
        model, ids, mask, chunk=chunk, temperature=0.7, with_entropy=True, positions=pos
    )
    (part.sum() + 0.1 * ent.sum()).backward()
    g_part = _lora_grads(model)

    assert part.shape == (3, 10) and part.dtype == torch.float32 and keep.any() and (~keep).any()
    assert torch.allclose(part[keep], full[keep], atol=1e-6) and (part[~keep] == 0).all()
    assert torch.allclose(ent[keep], ent_full[keep], atol=1e-6) and (ent[~keep] == 0).all()
    for n in g_full:
        assert torch.allclose(g_part[n], g_full[n], atol=1e-6, rtol=1e-5), n
    none = token_logprobs(model, ids, mask, positions=torch.zeros(3, 10, dtype=torch.bool))
    assert (none == 0).all()


def _group_batch(vocab: int, prompt: int = 20, rows: int = 4, seed: int = 3):
    """A GRPO group: `rows` right-padded rows that begin with the same `prompt` tokens."""
    g = torch.Generator().manual_seed(seed)
    head = torch.randint(0, vocab, (prompt,), generator=g)
    lengths = [prompt + 9, prompt + 5, prompt + 12, prompt + 7][:rows]
    T = max(lengths)
    ids = torch.zeros(rows, T, dtype=torch.long)
    mask = torch.zeros(rows, T, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :prompt] = head
        ids[i, prompt:n] = torch.randint(0, vocab, (n - prompt,), generator=g)
        mask[i, :n] = 1
    ids[1, prompt] = ids[
        0, prompt
    ]  # two rows share a token past the prompt too: the prefix is what is common
    return ids, mask


def test_shared_prompt_gives_the_unshared_logprobs_and_gradients():
    """A group's prompt runs once (one row, its KV cache repeated for the others): log-probs, entropies and
    LoRA gradients are those of the plain batched pass, and the decoder runs on the prefix for one row."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(make_tiny_model(300), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    _perturb_lora(model, scale=0.1)
    ids, mask = _group_batch(300)
    assert logprobs.shared_prefix_len(ids, mask) == 20
    pos = torch.zeros(4, ids.shape[1] - 1, dtype=torch.bool)
    pos[:, 18:] = True  # the last prompt step predicts the first action token

    orig = logprobs.MIN_SHARED_PREFIX
    try:
        logprobs.MIN_SHARED_PREFIX = 10**9  # the plain pass
        full, ent_full = token_logprobs(model, ids, mask, temperature=0.7, with_entropy=True, positions=pos)
        (full.sum() + 0.1 * ent_full.sum()).backward()
        g_full = _lora_grads(model)
        model.zero_grad()
    finally:
        logprobs.MIN_SHARED_PREFIX = orig
    decoder, _ = logprobs.decoder_and_head(model)
    shapes = []
    hook = decoder.register_forward_pre_hook(
        lambda mod, args, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    try:
        shared, ent = token_logprobs(model, ids, mask, temperature=0.7, with_entropy=True, positions=pos)
    finally:
        hook.remove()
    (shared.sum() + 0.1 * ent.sum()).backward()
    g_shared = _lora_grads(model)

    assert shapes == [(1, 20), (4, ids.shape[1] - 20)]
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, ent_full, atol=1e-5, rtol=1e-5)
    assert (shared[~logprobs.valid_targets(mask)] == 0).all()
    assert g_full.keys() == g_shared.keys() and len(g_full) > 0
    for n in g_full:
        torch.testing.assert_close(g_shared[n], g_full[n], atol=1e-5, rtol=1e-4)


def test_no_shared_prompt_without_a_common_prefix():
    """Rows of different questions, a single row or a short common prefix take the plain pass."""
    ids, mask = _group_batch(300)
    assert logprobs.shared_prefix_len(ids[:1], mask[:1]) == 0
    other = ids.clone()
    other[2, 3] = (other[2, 3] + 1) % 300
    assert logprobs.shared_prefix_len(other, mask) == 3
    holes = mask.clone()
    holes[1, 5] = 0  # a padding hole inside the prompt ends the shared prefix
    assert logprobs.shared_prefix_len(ids, holes) == 5
    assert logprobs.shared_prefix_len(ids[:2, :10], mask[:2, :10]) == 10  # identical rows: all of them


def test_lora_on_the_top_layers_only(tiny_model_dir):
    """lora_top_layers=1 adapts the last decoder layer only, on every linear projection of it, and the
    training pass keeps no graph below it (the lower layers get no gradient work)."""
    cfg = get_config(overrides={"model": str(tiny_model_dir), "lora_top_layers": 1})
    model, _ = load_policy(cfg)
    n_layers = model.config.num_hidden_layers
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(f"layers.{n_layers - 1}." in n for n in names)
    assert len(names) == 2 * 7  # lora_A and lora_B of the 7 projections of one layer
    full = get_config(overrides={"model": str(tiny_model_dir)})
    assert sum(p.requires_grad for p in load_policy(full)[0].parameters()) == 2 * 7 * n_layers


def test_logprobs_ignore_padding():
    """A padded sequence gets the same log-probs as the same tokens alone (position ids skip padding)."""
    model = make_tiny_model(300)
    ids, mask = _padded_batch(300)
    with torch.no_grad():
        batch = token_logprobs(model, ids, mask, chunk=4)
        for b in range(3):
            keep = mask[b].bool()
            alone = token_logprobs(model, ids[b][keep][None], chunk=4)[0]
            # the batch row's valid entries, in order, are the targets 1.. of the unpadded sequence,
            # except for the token after the hole, whose predecessor (the hole) is masked out
            row_valid = (mask[b, 1:] * mask[b, :-1]).bool()
            expected = alone.clone()
            if b == 2:  # unpadded targets: drop the one right after the hole
                hole_in_alone = int(mask[2, :6].sum()) - 1  # index in `alone` of the target after the hole
                expected = torch.cat([alone[:hole_in_alone], alone[hole_in_alone + 1 :]])
            assert torch.allclose(batch[b][row_valid], expected, atol=1e-5), b


def test_logprobs_follow_temperature_and_reference():
    from peft import LoraConfig, get_peft_model

    base = make_tiny_model(200)
    ids = torch.randint(200, (2, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        base_logp = token_logprobs(base, ids, chunk=2)
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
        _perturb_lora(model)
        with reference(model):
            ref = token_logprobs(model, ids, chunk=2)
        pol = token_logprobs(model, ids, chunk=2)
        hot = token_logprobs(model, ids, chunk=2, temperature=2.0)
    # not bit-identical: CPU matmul results can depend on the alignment of the (sliced) inputs
    assert torch.allclose(ref, base_logp, atol=1e-6)
    assert not torch.allclose(pol, ref, atol=1e-3)
    assert not torch.allclose(hot, pol, atol=1e-3)
    assert torch.allclose(hot, token_logprobs_naive(model, ids, temperature=2.0).detach(), atol=1e-5)


def test_logprobs_reject_a_model_without_head():
    with pytest.raises(TypeError, match="causal LM"):
        token_logprobs(torch.nn.Linear(2, 2), torch.zeros(1, 3, dtype=torch.long))


def test_final_hidden_is_the_decoders_last_state_without_a_cache():
    """PPO's value features: the final (normed) hidden states, padding-aware, LoRA applied, no KV cache built."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(make_tiny_model(300), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    _perturb_lora(model, scale=0.1)
    ids, mask = _padded_batch(300)
    decoder, head = logprobs.decoder_and_head(model)
    seen = []
    hook = decoder.register_forward_pre_hook(
        lambda mod, args, kw: seen.append(kw.get("use_cache")), with_kwargs=True
    )
    try:
        h = final_hidden(model, ids, mask)
    finally:
        hook.remove()
    assert seen == [False]
    assert h.shape == (3, 11, model.config.hidden_size)
    with torch.no_grad():
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=logprobs.position_ids_from_mask(mask),
            output_hidden_states=True,
            use_cache=False,
        )
        real = mask.bool()
        torch.testing.assert_close(h[real], out.hidden_states[-1][real], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(head(h)[real], out.logits[real], atol=1e-5, rtol=1e-5)
        with reference(model):
            base = final_hidden(model, ids, mask)
    assert not torch.allclose(base[real], h[real], atol=1e-3)  # the adapter changes the features
    assert h.requires_grad  # the value loss reaches the LoRA weights through them


def test_greedy_temperature_leaves_logprobs_undivided():
    """temperature <= 0 means greedy in the sampler, which records log softmax(logits): so does token_logprobs."""
    model = make_tiny_model(200)
    ids = torch.randint(200, (2, 7), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        plain = token_logprobs(model, ids, chunk=3)
        assert torch.equal(token_logprobs(model, ids, chunk=3, temperature=0.0), plain)
        assert torch.equal(token_logprobs(model, ids, chunk=3, temperature=1.0), plain)


# ----------------------------------------------------------------------------- bad input


def test_hub_id_offline_fails_fast_naming_cpu_default(monkeypatch):
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache("Qwen/Qwen2.5-3B-Instruct", "config.json"), str):
        pytest.skip("Qwen2.5-3B-Instruct is in the local HF cache here")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = get_config("colab_t4")
    t0 = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as err:
        load_policy(cfg)
    assert time.perf_counter() - t0 < 20
    msg = str(err.value)
    assert "Qwen/Qwen2.5-3B-Instruct" in msg and "model=smollm2-135m" in msg


def test_missing_local_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelUnavailableError, match="smollm2-135m"):
        load_policy(get_config(overrides={"model": str(tmp_path / "nothing-here")}))


def test_bad_compute_dtype_is_a_clear_error():
    from agentr1_nb.policy import compute_dtype

    with pytest.raises(ValueError, match="auto, bf16, fp16, fp32"):
        compute_dtype(Config(compute_dtype="float8"))


@pytest.mark.parametrize("damage", ["config", "weights_truncated", "weights_deleted", "marker"])
def test_damaged_cache_folder_is_detected(tmp_path, cpu_default_dir, damage):
    folder = tmp_path / cpu_default_dir.name
    shutil.copytree(cpu_default_dir, folder)
    assert _folder_is_complete(folder)
    weights = next(folder.glob("*.safetensors"))
    if damage == "config":
        (folder / "config.json").write_text("{not json")
    elif damage == "weights_truncated":
        with open(weights, "r+b") as f:
            f.truncate(weights.stat().st_size // 2)
    elif damage == "weights_deleted":
        weights.unlink()
    else:
        (folder / ".complete").unlink()
    assert not _folder_is_complete(folder)


@pytest.mark.slow
def test_corrupted_cache_folder_is_rebuilt(tmp_path, cpu_default_dir):
    from transformers import AutoModelForCausalLM

    folder = tmp_path / cpu_default_dir.name
    shutil.copytree(cpu_default_dir, folder)
    (folder / "config.json").write_text("{not json")
    weights = next(folder.glob("*.safetensors"))
    with open(weights, "r+b") as f:
        f.truncate(1000)
    assert cpu_default_model_dir(tmp_path) == folder
    assert _folder_is_complete(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.vocab_size == 49152


def test_hub_offline_is_the_common_hub_check(monkeypatch):
    monkeypatch.setattr(policy, "hub_reachable", lambda: False)
    assert policy.hub_offline()
    monkeypatch.setattr(policy, "hub_reachable", lambda: True)
    assert not policy.hub_offline()


@pytest.mark.parametrize("capability,expected", [((7, 5), torch.float16), ((8, 0), torch.bfloat16)])
def test_auto_dtype_follows_the_gpus_compute_capability(monkeypatch, capability, expected):
    """A T4 (sm75) says is_bf16_supported() through emulation; auto must still pick fp16 there."""
    from agentr1_nb.config import Config
    from agentr1_nb.policy import compute_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    assert compute_dtype(Config(compute_dtype="auto")) == expected


@pytest.mark.parametrize("has_bf16,expected", [(False, torch.float32), (True, torch.bfloat16)])
def test_auto_dtype_on_the_cpu_follows_its_bf16_support(monkeypatch, has_bf16, expected):
    """Emulated bf16 is several times slower than fp32 on a CPU without AVX512-BF16 / AMX."""
    from agentr1_nb import policy
    from agentr1_nb.config import Config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(policy, "cpu_has_bf16", lambda: has_bf16)
    assert policy.compute_dtype(Config(compute_dtype="auto")) == expected


def _top_lora(seed: int = 0):
    """A 4-layer tiny Llama with a LoRA on layers 2 and 3 whose B matrices are not zero (so it matters)."""
    model = tiny_lora_policy(_Vocab(300), seed, layers=4, top_layers=2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    return model


class _Vocab:
    """Stands in for a tokenizer where only its size and pad id matter."""

    def __init__(self, n: int):
        self.n, self.pad_token_id = n, 0

    def __len__(self) -> int:
        return self.n


def test_trunk_layer_is_the_first_adapted_layer_when_nothing_below_trains():
    assert logprobs.trunk_layer(_top_lora()) == 2
    assert logprobs.trunk_layer(tiny_lora_policy(_Vocab(300), layers=4)) is None  # LoRA on layer 0: no trunk
    assert logprobs.trunk_layer(make_tiny_model(300)) is None  # everything trains, the embedding too
    model = _top_lora()
    model.get_base_model().model.embed_tokens.weight.requires_grad_(True)
    assert logprobs.trunk_layer(model) is None  # a trainable embedding lies below every layer


@pytest.mark.parametrize("share_prefix", [False, True])
def test_the_update_from_the_trunk_equals_the_full_pass(share_prefix):
    """final_hidden / token_logprobs from the inputs of the first adapted layer give the full pass's hidden
    states, log-probs and LoRA gradients (rows with a shared prompt, right padding)."""
    model = _top_lora()
    torch.manual_seed(0)
    ids = torch.randint(0, 300, (3, 40))
    ids[1:, :20] = ids[0, :20]  # a shared 20-token prompt
    mask = torch.ones_like(ids)
    mask[2, 33:] = 0
    positions = logprobs.position_ids_from_mask(mask)
    decoder = model.get_base_model().model
    with torch.no_grad():
        trunk = decoder(input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True)
        trunk = trunk.hidden_states[2]  # (B, T, H): the input of layer 2
        trunk[2, 33:] = 0.0  # padding: never read
        full = logprobs.final_hidden(model, ids, mask, share_prefix=share_prefix)
        part = logprobs.final_hidden(model, ids, mask, share_prefix=share_prefix, trunk=trunk, trunk_at=2)
    real = mask.bool()
    torch.testing.assert_close(part[real], full[real], atol=1e-5, rtol=1e-5)
    model.train()
    grads = []
    for kw in ({}, {"trunk": trunk, "trunk_at": 2}):
        model.zero_grad()
        logp = token_logprobs(model, ids, mask, chunk=8, **kw)
        (logp * torch.linspace(-1, 1, logp.shape[1])).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # the embedding and layers 0-1 did not run: a trunk of zeros gives other hidden states than the tokens
    with torch.no_grad():
        other = logprobs.final_hidden(model, ids, mask, trunk=torch.zeros_like(trunk), trunk_at=2)
    assert not torch.allclose(other[real], full[real], atol=1e-2)
    with pytest.raises(ValueError, match="trunk_at"):  # a trunk is the input of some layer: which one?
        logprobs.final_hidden(model, ids, mask, trunk=trunk)


def test_load_policy_hides_peft_deprecation_probe(tiny_model_dir, tmp_path):
    """peft reads transformers' deprecated `is_gradient_checkpointing`; loading a policy (fresh LoRA or a
    saved adapter) must not print that FutureWarning at the user, while other warnings still get through."""
    cfg = get_config(overrides={"model": str(tiny_model_dir), "gradient_checkpointing": True})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, _ = load_policy(cfg)
        model.save_pretrained(tmp_path / "adapter")
        load_policy(cfg, adapter=tmp_path / "adapter")
        warnings.warn("still visible", FutureWarning, stacklevel=1)
    messages = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert "still visible" in messages
    assert not [m for m in messages if "is_gradient_checkpointing" in m]


def test_one_tiny_architecture():
    """Tests, benchmarks and `check --tiny` build the same tiny Qwen2 from `policy.TINY_ARCH`."""
    from transformers import LlamaConfig, Qwen2Config

    from agentr1_nb import check

    assert check.TINY_ARCH == policy.TINY_ARCH and policy.TINY_ARCH["model_type"] == "qwen2"
    cfg = policy.tiny_model_config(100, max_position_embeddings=512)
    assert isinstance(cfg, Qwen2Config) and cfg.vocab_size == 100 and cfg.max_position_embeddings == 512
    sizes = {k: v for k, v in policy.TINY_ARCH.items() if k != "model_type"}
    assert all(getattr(cfg, k) == v for k, v in sizes.items())
    llama = policy.tiny_model_config(100, "llama", num_hidden_layers=3)
    assert isinstance(llama, LlamaConfig) and llama.num_hidden_layers == 3 and llama.hidden_size == 64
    assert make_tiny_model(100).config.model_type == "llama"


# ----------------------------------------------------------------------------- adapters are checked first
def _adapter_folder(tmp_path, config=None, weights=None):
    """A folder with a valid-looking LoRA adapter unless `config` (bytes) / `weights` (bytes) replace parts."""
    import json as _json

    from safetensors.torch import save_file

    folder = tmp_path / "adapter"
    folder.mkdir(exist_ok=True)
    conf = _json.dumps({"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]}).encode()
    (folder / "adapter_config.json").write_bytes(conf if config is None else config)
    if weights is None:
        save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 64)},
                  str(folder / "adapter_model.safetensors"))  # fmt: skip
    else:
        (folder / "adapter_model.safetensors").write_bytes(weights)
    return folder


def _good_weights(tmp_path) -> bytes:
    return (_adapter_folder(tmp_path / "good") / "adapter_model.safetensors").read_bytes()


@pytest.mark.parametrize(
    "config, what",
    [
        (b"", "not valid JSON"),
        (b"\xff\xfe\x00binary", "not a text file"),
        (b"[1, 2]", "a JSON object, not a list"),
        (b'{"r": 8}', 'no "peft_type"'),
        (b'{"peft_type": null}', 'no "peft_type"'),
        (b'{"peft_type": "IA3"}', "not supported"),
        (b"[" * 100000, "not valid JSON"),
    ],
)
def test_bad_adapter_config_is_a_clear_error(tmp_path, config, what):
    (tmp_path / "good").mkdir()
    folder = _adapter_folder(tmp_path, config=config)
    with pytest.raises(policy.AdapterError, match=re.escape(str(folder / "adapter_config.json"))) as e:
        policy.check_adapter(folder)
    assert what in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "cut, what",
    [
        (lambda b: b"", "empty (0 bytes)"),
        (lambda b: b[: len(b) // 2], "truncated"),
        (lambda b: b[:5], "truncated"),
        (lambda b: b"PK\x03\x04 a zip file, not safetensors" * 10, "not a readable safetensors"),
    ],
)
def test_bad_adapter_weights_are_a_clear_error(tmp_path, cut, what):
    (tmp_path / "good").mkdir()
    folder = _adapter_folder(tmp_path, weights=cut(_good_weights(tmp_path)))
    with pytest.raises(policy.AdapterError, match=re.escape(str(folder / "adapter_model.safetensors"))) as e:
        policy.check_adapter(folder)
    assert what in str(e.value)


def test_adapter_without_lora_weights_or_as_a_pickle_is_refused(tmp_path):
    from safetensors.torch import save_file

    folder = _adapter_folder(tmp_path)
    save_file({"model.embed_tokens.weight": torch.zeros(2, 2)}, str(folder / "adapter_model.safetensors"))
    with pytest.raises(policy.AdapterError, match="holds no LoRA weight.*model.embed_tokens.weight"):
        policy.check_adapter(folder)
    (folder / "adapter_model.safetensors").unlink()
    (folder / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(policy.AdapterError, match="adapter_model.bin is a pickle"):
        policy.check_adapter(folder)
    with pytest.raises(policy.AdapterError, match="not found"):
        policy.check_adapter(tmp_path / "nowhere")
    assert issubclass(policy.AdapterError, ValueError)  # the CLI prints it as one `error:` line, exit 2


def test_adapter_that_does_not_fit_the_model_is_refused(tiny_model_dir, tmp_path):
    """A safetensors file of LoRA weights that do not land in the model would leave the untrained base model
    evaluated as the agent: keys it has no place for, missing keys and wrong shapes are each refused."""
    from safetensors.torch import load_file, save_file

    cfg = get_config(overrides={"model": str(tiny_model_dir), "lora_r": 4})
    model, _ = load_policy(cfg)
    good = tmp_path / "good"
    model.save_pretrained(good)
    load_policy(cfg, adapter=good)  # the adapter as saved loads
    tensors = load_file(str(good / "adapter_model.safetensors"))
    keys = sorted(tensors)

    def variant(name, new):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "adapter_config.json").write_bytes((good / "adapter_config.json").read_bytes())
        save_file(new, str(folder / "adapter_model.safetensors"))
        return folder

    other = variant("other", {k.replace("model.layers", "transformer.h"): v for k, v in tensors.items()})
    with pytest.raises(policy.AdapterError, match="other/adapter_model.safetensors: does not fit the model"):
        load_policy(cfg, adapter=other)
    half = variant("half", {k: tensors[k] for k in keys[: len(keys) // 2]})
    with pytest.raises(policy.AdapterError, match="half/adapter_model.safetensors: .*missing"):
        load_policy(cfg, adapter=half)
    wrong = dict(tensors)
    wrong[keys[0]] = torch.zeros(3, 3)
    bad_shape = variant("shape", wrong)
    with pytest.raises(policy.AdapterError, match=r"shape/adapter_"):
        load_policy(cfg, adapter=bad_shape)


def test_cli_answers_a_bad_adapter_with_one_error_line(tmp_path, capsys):
    from agentr1_nb.__main__ import main

    (tmp_path / "good").mkdir()
    folder = _adapter_folder(tmp_path, config=b"[]")
    assert main(["ask", "--adapter", str(folder), "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and str(folder / "adapter_config.json") in err
