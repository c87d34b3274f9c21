"""Benchmarks and the environment report: they run at a tiny size and measure what they claim."""

from __future__ import annotations

import pytest
import torch
from test_rollout import EnvFactory, cfg, examples

from agentr1_nb import bench
from agentr1_nb.config import Config
from agentr1_nb.logprobs import token_logprobs


def test_info_reports_versions_and_device(cpu_default_dir):
    out = bench.info(Config(cache_dir=str(cpu_default_dir.parent)))
    assert out["device"] == "cpu" or out["device"].startswith("cuda:")
    assert out["torch"] == torch.__version__
    assert out["cpu_default_model_path"] == str(cpu_default_dir)
    assert isinstance(out["bf16_supported"], bool)
    assert out["bitsandbytes"] is False or isinstance(out["bitsandbytes"], str)


def test_naive_logprobs_are_the_full_logits_reference(tiny_model, tokenizer):
    ids = torch.randint(3, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with torch.no_grad():
        naive, ent = bench.token_logprobs_naive(tiny_model, ids, mask, temperature=0.5, with_entropy=True)
        logits = tiny_model(input_ids=ids[:1]).logits[0].float() / 0.5  # row 0 has no padding
        want = torch.log_softmax(logits, -1)[:-1].gather(-1, ids[0, 1:, None]).squeeze(-1)
        chunked = token_logprobs(tiny_model, ids, mask, chunk=4, temperature=0.5)
    torch.testing.assert_close(naive[0], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(naive, chunked, atol=1e-5, rtol=1e-5)
    assert (naive[1, :3] == 0).all() and (ent[1, :3] == 0).all() and (ent[0] > 0).all()


def test_bench_logprobs_small():
    """Two fresh processes at a tiny size: same log-probs and head gradient, chunked peak below naive."""
    out = bench.bench_logprobs(batch=2, seq=128, vocab=32768, chunk=16, backward=True)
    assert out["tokens"] == 256 and out["vocab"] == 32768 and out["backward"] is True
    assert out["max_abs_diff"] < 1e-3 and out["grad_max_abs_diff"] < 1e-3
    assert 0 < out["chunked_peak_mb"] < out["naive_peak_mb"]


def test_naive_baseline_runs(tiny_model, tokenizer):
    torch.manual_seed(0)
    make_env = EnvFactory(tokenizer)
    out = bench.naive_rollout(
        tiny_model, tokenizer, examples(2), make_env, cfg(max_turns=2, max_tokens_per_turn=6), 2
    )
    assert 0 < out["generated_tokens"] <= 4 * 2 * 6 and out["wall_s"] > 0
    assert all(len(env.received) == 2 for env in make_env.envs)


def test_bench_rollout_on_a_tiny_model(tiny_model, tokenizer, monkeypatch):
    """The whole benchmark (rollout, generate, naive loop) on the generated world, with a tiny model."""
    monkeypatch.setattr(bench, "load_policy", lambda c: (tiny_model, tokenizer))
    c = Config(max_tokens_per_turn=6, max_total_tokens=2048, temperature=1.0, top_p=1.0)
    out = bench.bench_rollout(c, questions=2, group_size=2, max_turns=2)
    assert out["rows"] == 4 and out["generated_tokens"] > 0 and out["naive_generated_tokens"] > 0
    assert 0 < out["overhead_ratio"] <= 1 and 1 <= out["mean_turns"] <= 2
    for key in ("tokens_per_s", "generate_tokens_per_s", "naive_tokens_per_s", "speedup_vs_naive"):
        assert out[key] > 0, key


@pytest.mark.parametrize("name", ["bench_logprobs", "bench_rollout", "info", "naive_rollout"])
def test_benchmarks_live_outside_the_stage_modules(name):
    from agentr1_nb import policy, rollout

    assert hasattr(bench, name) and not hasattr(policy, name) and not hasattr(rollout, name)


def test_bench_parser_reports_the_worst_case_per_size():
    from agentr1_nb.bench import adversarial_outputs, bench_parser

    out = bench_parser(sizes=(200, 2000), repeat=1)
    assert out["sizes"] == [200, 2000]
    assert set(out["per_case_s"][2000]) == set(adversarial_outputs(2000))
    assert out["worst_s"][2000] == max(out["per_case_s"][2000].values())


def tiny_step_config(tmp_path, tokenizer, monkeypatch) -> Config:
    """A `cpu_demo`-shaped step at a tiny size, `bench.load_policy` giving a 2-layer model with LoRA on its
    top layer."""
    from conftest import tiny_lora_policy

    monkeypatch.setattr(
        bench,
        "load_policy",
        lambda cfg, adapter=None: (tiny_lora_policy(tokenizer, layers=2, top_layers=1), tokenizer),
    )
    return Config(
        questions_per_step=2,
        group_size=2,
        max_turns=2,
        max_tokens_per_turn=8,
        minibatch_size=4,
        micro_batch_size=2,
        sft_warmup_steps=1,
        compute_dtype="fp32",
        cache_dir=str(tmp_path),
    )


def test_bench_step_breaks_a_step_down(tmp_path, tokenizer, monkeypatch):
    """`bench step` on a tiny model with LoRA on its top layer: the breakdown adds up, the ceiling is
    measured, the update starts at the adapted layer, fp32 is on-policy."""
    out = bench.bench_step(tiny_step_config(tmp_path, tokenizer, monkeypatch), steps=2)
    for key in ("rollout_s", "logprob_s", "update_s", "step_s", "rollout_tokens_per_s"):
        assert out[key] >= 0, key
    assert out["rollout_s"] + out["update_s"] <= out["step_s"] + 1e-3
    assert out["forward_ceiling_tokens_per_s"] > 0 and out["steps_timed"] == 1 and out["rollout_rows"] == 4
    assert out["first_ratio_mean"] == pytest.approx(1.0, abs=1e-3) and out["peak_rss_mb"] > 100
    assert out["update_from_layer"] == 1
    assert out["rollout_ratio"] == pytest.approx(
        out["rollout_tokens_per_s"] / out["forward_ceiling_tokens_per_s"], abs=2e-3
    )


def test_rollout_account_adds_up_to_the_wall_time(tmp_path, tokenizer, monkeypatch):
    """`bench rollout-account` on a tiny model: the parts add up to the rollout's wall time, the ratio is
    the schedule's share times ours, and the replayed schedule decodes as many tokens as the rollout fed."""
    from agentr1_nb.rollout import PARTS

    out = bench.bench_rollout_account(tiny_step_config(tmp_path, tokenizer, monkeypatch), rollouts=1)
    parts = ("ideal_s", "schedule_s", "decode_overhead_s", "prefill_s", *PARTS, "other_s")
    assert sum(out[k] for k in parts) == pytest.approx(out["wall_s"], abs=0.01 + 1e-3 * len(parts))
    assert out["rollout_ratio"] == pytest.approx(out["schedule_ratio"] * out["ratio_to_schedule"], rel=0.02)
    assert out["decode_calls"] > 0 and out["generated_tokens"] > 0 and out["rows"] == 4
    assert all(out[k] >= 0 for k in PARTS)


def test_replay_decoding_counts_the_schedule_tokens(tiny_model):
    """Each run of one-column calls is replayed at its rows and context: the tokens are the rows summed."""
    from agentr1_nb.bench_rollout import replay_decoding

    calls = [(4, 12, 40, 12, 0.1), (4, 1, 4, 13, 0.01), (4, 1, 4, 14, 0.01), (2, 1, 2, 15, 0.01)]
    seconds, tokens = replay_decoding(tiny_model, calls)
    assert tokens == 4 + 4 + 2 and seconds > 0
    assert replay_decoding(tiny_model, calls[:1]) == (0.0, 0)
