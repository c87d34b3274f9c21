"""`share_prompt`: each GRPO group's prompt runs once in the update, its keys and values expanded to the
group's rows across micro-batches; log-probs, losses and LoRA gradients equal the unshared computation."""

from __future__ import annotations

import pytest
import torch
from conftest import LINEARS, TINY_RUN, make_tiny_model, tiny_lora_policy

from agentr1_nb import logprobs
from agentr1_nb import train as train_mod
from agentr1_nb.config import get_config
from agentr1_nb.env import build_task
from agentr1_nb.logprobs import micro_batches
from agentr1_nb.train import train

VOCAB = 300


def _policy(family: str, top_layers: int | None, seed: int = 0):
    """A tiny random Llama or Qwen2 (3 layers) with LoRA on every layer or on the top ones only."""
    from peft import LoraConfig, get_peft_model

    base = make_tiny_model(VOCAB, seed=seed, layers=3)
    if family == "qwen2":
        from transformers import Qwen2ForCausalLM

        from agentr1_nb.policy import tiny_model_config

        torch.manual_seed(seed)
        base = Qwen2ForCausalLM(tiny_model_config(VOCAB, num_hidden_layers=3)).eval()
    torch.manual_seed(seed + 1)
    kw = {} if top_layers is None else {"layers_to_transform": list(range(3 - top_layers, 3))}
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=LINEARS, task_type="CAUSAL_LM", **kw)
    model = get_peft_model(base, lora)
    for n, p in model.named_parameters():  # LoRA's B starts at 0: make every LoRA factor matter
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    return model


def _group(seed: int = 0):
    """One group of 4 rows: a shared 24-token prompt, then rows of different lengths (right padding)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (4, 50), generator=g)
    ids[:, :24] = ids[0, :24]
    ids[1, 24] = ids[0, 24]  # two rows share one more token than the group does
    mask = torch.ones_like(ids)
    for row, n in enumerate([50, 31, 42, 26]):
        mask[row, n:] = 0
        ids[row, n:] = 0
    return ids, mask


def _trunk(model, ids, mask, at: int):
    decoder = model.get_base_model().model
    with torch.no_grad():
        out = decoder(
            input_ids=ids,
            attention_mask=mask,
            position_ids=logprobs.position_ids_from_mask(mask),
            output_hidden_states=True,
        )
    return out.hidden_states[at]  # (B, T, H): the input of layer `at`


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _loss_weights(T: int):
    return torch.linspace(-1, 1, T - 1)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("reuse_trunk", [False, True])
def test_a_shared_prompt_gives_the_unshared_logprobs_and_gradients(family, reuse_trunk):
    """The group's prompt runs once with gradients; micro-batches of 3 + 1 rows run the rest on its
    expanded keys and values; the log-probs (first action token included) and the LoRA gradients equal
    those of every row run alone."""
    model = _policy(family, top_layers=2 if reuse_trunk else None)
    model.train()
    ids, mask = _group()
    trunk_at = logprobs.trunk_layer(model) if reuse_trunk else None
    assert (trunk_at == 1) if reuse_trunk else trunk_at is None
    trunk = _trunk(model, ids, mask, 1) if reuse_trunk else None
    w = _loss_weights(ids.shape[1])

    def rows_logp(rows, prompt=None):
        t = None if trunk is None else trunk[rows]
        logp = logprobs.token_logprobs(
            model, ids[rows], mask[rows], chunk=8, trunk=t, trunk_at=trunk_at, prompt=prompt
        )
        return logp, (logp * w).sum()

    model.zero_grad()
    alone = []
    for r in range(4):  # one row at a time: nothing shared
        logp, loss = rows_logp([r])
        loss.backward()
        alone.append(logp.detach())
    want, want_grads = torch.cat(alone), _grads(model)

    model.zero_grad()
    prompt = logprobs.group_prompt(model, ids, mask, trunk, trunk_at)
    assert prompt.length == 24 and prompt.start == (trunk_at or 0)
    got = []
    for rows in ([0, 1, 2], [3]):
        logp, loss = rows_logp(rows, prompt)
        loss.backward()
        got.append(logp.detach())
    prompt.backward()
    got, got_grads = torch.cat(got), _grads(model)

    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert got[:, 23].abs().min() > 0  # the first token after the prompt: read from the prompt's last state
    for n in want_grads:
        torch.testing.assert_close(got_grads[n], want_grads[n], atol=1e-5, rtol=1e-4, msg=n)
    # the prompt's own backward carries part of the gradient: without it the gradients differ
    model.zero_grad()
    prompt = logprobs.group_prompt(model, ids, mask, trunk, trunk_at)
    rows_logp([0, 1, 2, 3], prompt)[1].backward()
    partial = _grads(model)
    assert any(not torch.allclose(partial[n], want_grads[n], atol=1e-4) for n in want_grads)


def test_a_prompt_pass_runs_once_without_gradients_too():
    """Under no_grad (the old / reference / value passes) the prompt pass gives the same log-probs and its
    backward does nothing; a prompt pass from another layer than the rows' is refused."""
    model = _policy("llama", top_layers=2)
    ids, mask = _group(1)
    with torch.no_grad():
        want = logprobs.token_logprobs(model, ids, mask)
        prompt = logprobs.group_prompt(model, ids, mask)
        got = torch.cat(
            [logprobs.token_logprobs(model, ids[r], mask[r], prompt=prompt) for r in ([0, 1], [2, 3])]
        )
        prompt.backward()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="starts at layer 0"):
        logprobs.final_hidden(model, ids, mask, trunk=_trunk(model, ids, mask, 1), trunk_at=1, prompt=prompt)


def test_nothing_is_shared_when_the_prefix_is_short_or_the_group_one_row():
    ids, mask = _group()
    model = _policy("llama", top_layers=None)
    assert logprobs.group_prompt(model, ids[:1], mask[:1]) is None  # one row
    other = ids.clone()
    other[1, 10] = (other[1, 10] + 1) % VOCAB  # the rows part after 10 tokens: below MIN_SHARED_PREFIX
    assert logprobs.group_prompt(model, other, mask) is None
    same = ids[:2].clone()
    same[1] = same[0]  # identical rows: the prefix stops one token short, so each row keeps a token
    assert logprobs.group_prompt(model, same, torch.ones_like(same)).length == same.shape[1] - 1


def test_micro_batches_keep_a_group_together_only_when_sharing():
    group = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    rows = torch.arange(8)
    assert [m.tolist() for m in micro_batches(group, rows, 3, False)] == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert [m.tolist() for m in micro_batches(group, rows, 3, True)] == [[0, 1, 2], [3], [4, 5, 6], [7]]


def test_share_prompt_is_refused_with_activation_checkpointing():
    with pytest.raises(ValueError, match="share_prompt=true needs gradient_checkpointing=false"):
        get_config("colab_t4", ["share_prompt=true"])
    assert not get_config("cpu_demo").share_prompt  # the shipped runs were drawn without it


# ----------------------------------------------------------------------------- whole training steps

RUN = TINY_RUN + ["questions_per_step=2", "group_size=4", "minibatch_size=8", "log_with=none", "steps=2"]


def _varied(monkeypatch):
    """Rewards that vary between samples (the tiny random model never answers), so advantages are not 0."""
    real = train_mod.score_trajectory

    def varied(traj, cfg):
        real(traj, cfg)
        traj.reward = (sum(traj.token_ids) % 7) / 7.0 - 0.5

    monkeypatch.setattr(train_mod, "score_trajectory", varied)


def _run(tmp_path, tokenizer, overrides, top_layers=None):
    cfg = get_config("cpu_demo", RUN + overrides)
    model = tiny_lora_policy(tokenizer, layers=2, top_layers=top_layers)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(0))
    calls = []
    hook = (
        model.get_base_model()
        .model.layers[-1]
        .register_forward_pre_hook(
            lambda mod, args: calls.append((torch.is_grad_enabled(), args[0].shape[:2]))
        )
    )
    try:
        hist = train(
            cfg,
            tmp_path / "_".join(overrides),
            model=model,
            tokenizer=tokenizer,
            task=build_task(cfg, tokenizer),
        )
    finally:
        hook.remove()
    lora = {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}
    return hist, lora, calls


@pytest.mark.parametrize("micro", [1, 3])
@pytest.mark.parametrize(
    "extra,top_layers",
    [
        (["algo=grpo"], None),
        (["algo=grpo", "reuse_trunk=true"], 1),
        (["algo=ppo", "kl_coef=0.01", "entropy_coef=0.01", "old_logprobs=recompute"], 1),
    ],
    ids=["grpo", "grpo_trunk", "ppo_kl_recompute"],
)
def test_training_with_a_shared_prompt_equals_the_unshared_run(
    tmp_path, tokenizer, monkeypatch, extra, top_layers, micro
):
    """Two steps with share_prompt against micro-batches of one row with nothing shared: the same rollouts,
    gradient norms and LoRA weights after two updates up to fp32 rounding, and with micro-batches of one row
    on both sides (the same partition) the same losses, KL, entropy, values and first ratios. The prompt
    ran once per group in the update: a one-row pass, then the group's micro-batches (3 + 1 rows, or 4 x 1)."""
    _varied(monkeypatch)
    shared, w_shared, calls = _run(
        tmp_path, tokenizer, extra + ["share_prompt=true", f"micro_batch_size={micro}"], top_layers
    )
    plain, w_plain, _ = _run(
        tmp_path, tokenizer, extra + ["share_prompt=false", "micro_batch_size=1"], top_layers
    )
    keys = ["grad_norm"] + (
        ["loss", "pg_loss", "kl", "value_loss", "entropy", "first_ratio_max", "first_ratio_mean"]
        if micro == 1
        else []
    )
    for a, b in zip(shared, plain, strict=True):
        assert a["reward"] == b["reward"] and a["searches"] == b["searches"]  # the same rollouts
        for k in keys:
            if k in b:
                assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), k
    for k in w_plain:
        torch.testing.assert_close(w_shared[k], w_plain[k], atol=1e-5, rtol=1e-4)
    update = [shape[0] for grad, shape in calls if grad]
    assert update == ([1, 3, 1] if micro == 3 else [1, 1, 1, 1, 1]) * 4, update  # 2 steps x 2 groups


def test_token_accounting_counts_the_prompt_once_per_micro_batch_or_per_group():
    """4 rows of one group, a 20-token prompt, 30 tokens each: every row alone runs 120 token positions,
    micro-batches of 2 sharing inside them 80, the group's prompt once 60 (a quarter less than 80)."""
    from agentr1_nb.bench import token_accounting

    ids = torch.arange(120).reshape(4, 30) % VOCAB
    ids[:, :20] = ids[0, :20]
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "group": torch.zeros(4, dtype=torch.long),
    }
    got = token_accounting(batch, get_config("cpu_demo", ["micro_batch_size=2"]), [20] * 4)
    assert got["prompt_share"] == pytest.approx(80 / 120, abs=1e-3)
    assert (got["token_passes_unshared"], got["token_passes_default"], got["token_passes_shared"]) == (
        120,
        80,
        60,
    )
    assert got["token_saving_bound"] == 0.25


def test_bench_update_times_both_arms_on_one_batch(tokenizer, monkeypatch):
    from agentr1_nb.bench import bench_update

    _varied(monkeypatch)

    cfg = get_config("cpu_demo", RUN + ["micro_batch_size=2"])
    model = tiny_lora_policy(tokenizer, layers=2, top_layers=1)
    out = bench_update(cfg, repeats=2, model=model, tokenizer=tokenizer)
    assert len(out["update_s_all"]["default"]) == len(out["logprob_s_all"]["shared"]) == 2
    assert out["update_s_shared_over_default"] > 0 and 0 < out["prompt_share"] < 1
    assert out["max_lora_step"] > 1e-4 and out["max_lora_diff"] < 1e-5  # the same step each way
    assert out["token_passes_shared"] < out["token_passes_default"] < out["token_passes_unshared"]
    assert out["update_from_layer"] == 1 and out["rows"] == 8
