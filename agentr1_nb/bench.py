"""Benchmarks and the environment report: what the notebooks and `python -m agentr1_nb bench / info` measure.

- `bench_logprobs`: peak memory and time of the naive (full (B, T, V) logits) against the chunked token
  log-probs (`logprobs.token_logprobs`), each variant in a fresh process.
- `bench_rollout`: tokens per second of `rollout.rollout` on the generated world, against plain
  `model.generate` and `naive_rollout`, the re-encode-every-turn loop of Search-R1-like code.
- `bench_step`: where the time of one training step goes (rollout, old/ref log-probs, update), against the
  model's own decoding forward at the same batch (the framework-overhead ceiling), and the peak RSS.
- `bench_rollout_account` (its parts: `bench_rollout.py`): the rollout's wall time part by part, and its gap
  to the decoding ceiling split into the schedule's share and ours.
- `bench_trainers`: our trainer against TRL's GRPOTrainer, with and without our rollout (its parts:
  `bench_trainers.py`).
- `info`: versions, device, bf16 and bitsandbytes support, the CPU default model folder.
- `token_logprobs_naive`: the reference the chunked log-probs are checked against.

Nothing in the training path imports this module.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from transformers import Qwen2ForCausalLM

from . import __version__
from .actions import STOP_STRINGS, parse_action
from .bench_rollout import replay_decoding, rollout_account
from .bench_trainers import TRAINER_VARIANTS, run_worker, summarize_trainers
from .common import maxrss_bytes, rss_bytes, set_seed
from .config import Config
from .env import Task, build_task
from .kvcache import cache_kwarg, left_pad
from .logprobs import (
    MIN_SHARED_PREFIX,
    micro_batches,
    position_ids_from_mask,
    shared_prefix_len,
    token_logprobs,
    trunk_layer,
    valid_targets,
)
from .policy import cpu_default_model_dir, cpu_has_bf16, gpu_has_bf16, load_policy, tiny_model_config
from .rollout import eos_ids, inference, rollout
from .sft import sft_warmup
from .train import add_old_and_reference, build_batch, make_accelerator, setup, train, update
from .trl_backend import require_trl

# ----------------------------------------------------------------------------- token log-probs


def token_logprobs_naive(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    with_entropy: bool = False,
):
    """Same result as `token_logprobs` from the full (B, T, V) logits: the reference for tests and bench."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    ).logits.float()  # (B, T, V)
    if temperature > 0 and temperature != 1.0:  # as token_logprobs: <= 0 is greedy, undivided
        logits = logits / temperature
    # Slicing off the last position after the log-softmax, not before: a sliced (non-contiguous) input
    # would make log_softmax copy the whole logits tensor once more.
    logp_all = torch.log_softmax(logits, dim=-1)[:, :-1]  # (B, T-1, V)
    del logits
    valid = valid_targets(attention_mask)
    logp = torch.where(valid, logp_all.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1), 0.0)
    if not with_entropy:
        return logp
    return logp, torch.where(valid, -(logp_all.exp() * logp_all).sum(-1), 0.0)


# ----------------------------------------------------------------------------- log-prob benchmark


def _bench_model(vocab: int, device: str):
    torch.manual_seed(0)
    cfg = tiny_model_config(vocab, max_position_embeddings=4096)
    return Qwen2ForCausalLM(cfg).to(device).train()


def _bench_worker(
    variant: str, batch: int, seq: int, vocab: int, chunk: int, backward: bool, out: str
) -> None:
    """One measurement in a fresh process (so the peak is this variant's alone); writes JSON + log-probs."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = _bench_model(vocab, device)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(vocab, (batch, seq), generator=g).to(device)

    def run(x):
        logp = token_logprobs_naive(model, x) if variant == "naive" else token_logprobs(model, x, chunk=chunk)
        if backward:
            logp.sum().backward()
        return logp

    run(ids[:1, :8])  # warm-up: lazy imports and one-off buffers must not count as this variant's peak
    model.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_bytes()
    t0 = time.perf_counter()
    logp = run(ids)
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = maxrss_bytes() - base
    seconds = time.perf_counter() - t0
    grad = model.get_output_embeddings().weight.grad
    torch.save({"logp": logp.detach().cpu(), "grad": None if grad is None else grad.cpu()}, out)
    print(json.dumps({"peak_bytes": peak, "seconds": seconds, "device": device}))


def bench_logprobs(
    batch: int = 8, seq: int = 1024, vocab: int = 151_936, chunk: int = 128, backward: bool = False
) -> dict:
    """Peak memory of naive vs chunked token log-probs (`token_logprobs_naive` vs `token_logprobs`).

    Measures the forward pass with gradients enabled (what a training step holds before its backward);
    `backward=True` adds the backward of `logp.sum()`. The default size, 8 x 1,024 tokens with Qwen2.5's
    151,936-token vocabulary, needs about 10 GB of host memory for the naive forward (fp32 logits plus
    their log-softmax) and 15 GB with the backward, so the default leaves the backward to smaller sizes
    (the memory notebook shows both). A tiny random Qwen2 (hidden 64, 2 layers, fp32) keeps everything
    else negligible. Each variant runs in a fresh Python process: on CUDA the peak is
    `torch.cuda.max_memory_allocated`, on the CPU the growth of the peak resident set size over the
    resident size just before the call. `max_abs_diff` compares the log-probs, `grad_max_abs_diff` the
    gradient of the output head (None without backward).
    """
    results, tensors = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("naive", "chunked"):
            out = str(Path(tmp) / f"{variant}.pt")
            kw = dict(
                variant=variant, batch=batch, seq=seq, vocab=vocab, chunk=chunk, backward=backward, out=out
            )
            code = f"from agentr1_nb.bench import _bench_worker; _bench_worker(**{kw!r})"
            # A fixed glibc mmap threshold: every tensor over 1 MiB gets its own mapping, returned to the OS
            # when freed, so the resident set follows the live tensors instead of heap fragmentation.
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)}
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise RuntimeError(
                    f"bench_logprobs {variant} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}"
                )
            results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
            tensors[variant] = torch.load(out)
    mb = 2**20
    naive, chunked = results["naive"], results["chunked"]
    grad_diff = None
    if backward:
        grad_diff = (tensors["naive"]["grad"] - tensors["chunked"]["grad"]).abs().max().item()
    return {
        "naive_peak_mb": round(naive["peak_bytes"] / mb, 1),
        "chunked_peak_mb": round(chunked["peak_bytes"] / mb, 1),
        "ratio": round(chunked["peak_bytes"] / naive["peak_bytes"], 4),
        "max_abs_diff": (tensors["naive"]["logp"] - tensors["chunked"]["logp"]).abs().max().item(),
        "grad_max_abs_diff": grad_diff,
        "naive_s": round(naive["seconds"], 2),
        "chunked_s": round(chunked["seconds"], 2),
        "vocab": vocab,
        "tokens": batch * seq,
        "batch": batch,
        "seq": seq,
        "chunk": chunk,
        "backward": backward,
        "device": naive["device"],
    }


# ----------------------------------------------------------------------------- environment report


def info(cfg: Config) -> dict:
    """Versions, device, bf16 and bitsandbytes support, and the resolved CPU default model folder."""
    cuda = torch.cuda.is_available()
    if cuda:
        device, bf16 = f"cuda:{torch.cuda.get_device_name(0)}", gpu_has_bf16()
    else:  # bf16 always runs on a CPU; it is fast (2.5-3x fp32) only with these instructions
        device, bf16 = "cpu", cpu_has_bf16()
    try:
        import bitsandbytes

        bnb: str | bool = bitsandbytes.__version__
    except Exception:  # noqa: BLE001 - a broken install (missing CUDA libs, ...) is reported, not raised
        bnb = False
    try:
        cpu_default: str = str(cpu_default_model_dir(cfg.cache_dir))
    except Exception as e:  # noqa: BLE001
        cpu_default = f"unavailable: {e}"
    return {
        "version": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": importlib.metadata.version("peft"),  # importing peft takes ~10 s here
        "device": device,
        "cuda": torch.version.cuda if cuda else None,
        "bf16_supported": bf16,
        "bitsandbytes": bnb,
        "cpu_threads": torch.get_num_threads(),
        "model": cfg.model,
        "cpu_default_model_path": cpu_default,
    }


# ----------------------------------------------------------------------------- rollout speed


def naive_rollout(model, tokenizer, examples, make_env, cfg: Config, group_size: int = 1) -> dict:
    """THE BASELINE OF THE BENCHMARK, not for training: the re-encode-every-turn loop of Search-R1-like code.

    Each turn decodes every running episode's history to text, re-tokenises it and calls `model.generate`
    (a fresh prefill of the whole history, no cache kept across turns; rows that hit a stop string stay in
    the batch as padding until every row has stopped), then cuts the text at the stop string and re-encodes
    the action for the env. Returns {"generated_tokens", "wall_s"}: tokens the model generated up to each
    row's stop.
    """
    t0 = time.perf_counter()
    envs, histories = [], []
    for example in examples:
        for _ in range(group_size):
            env = make_env()
            envs.append(env)
            histories.append(list(env.reset(example)))
    stops = list(STOP_STRINGS)
    eos = eos_ids(tokenizer, model)
    running = list(range(len(envs)))
    generated = 0
    with inference(model):
        for _ in range(cfg.max_turns):
            if not running:
                break
            texts = [tokenizer.decode(histories[i], skip_special_tokens=False) for i in running]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(next(model.parameters()).device) for k, v in enc.items()}
            out = model.generate(
                **enc,
                max_new_tokens=cfg.max_tokens_per_turn,
                do_sample=cfg.temperature > 0,
                temperature=cfg.temperature if cfg.temperature > 0 else None,
                top_p=cfg.top_p,
                top_k=0,
                stop_strings=stops,
                tokenizer=tokenizer,
                eos_token_id=sorted(eos),
                pad_token_id=tokenizer.pad_token_id,
            )
            still = []
            for row, i in enumerate(running):
                new = out[row, enc["input_ids"].shape[1] :].tolist()
                # generate pads a row once it stops: its tokens end at the first pad or eos (eos included)
                k = next(
                    (j for j, tok in enumerate(new) if tok in eos or tok == tokenizer.pad_token_id), len(new)
                )
                text = tokenizer.decode(new[:k], skip_special_tokens=False)
                cuts = [text.index(s) + len(s) for s in stops if s in text]
                if cuts:
                    text, n = text[: min(cuts)], k
                else:
                    n = min(k + 1, len(new))
                    text = tokenizer.decode(new[:n], skip_special_tokens=False)
                generated += n
                action = tokenizer.encode(text, add_special_tokens=False)  # re-encoded: the peers' bug
                res = envs[i].step(action)
                if not res.done:
                    histories[i] += action + list(res.obs_ids)
                    still.append(i)
            running = still
    return {"generated_tokens": generated, "wall_s": time.perf_counter() - t0}


def bench_rollout(cfg: Config, questions: int = 4, group_size: int = 4, max_turns: int = 4) -> dict:
    """Tokens per second of `rollout` on the generated world, against `model.generate` and the naive loop.

    - tokens_per_s: model-generated tokens per second of wall time of our rollout;
    - generate_tokens_per_s: plain `model.generate` on the same prompts (same batch size), sampling the mean
      number of tokens our rows generated (the reference for raw decoding speed);
    - overhead_ratio: share of our rollout's wall time spent inside model forward passes;
    - naive_tokens_per_s, speedup_vs_naive: the re-encode-every-turn baseline (`naive_rollout`).
    """
    cfg = cfg.replace(dataset="generated", max_turns=max_turns)
    model, tokenizer = load_policy(cfg)
    task = build_task(cfg, tokenizer)
    examples = task.train[:questions]
    rows = len(examples) * group_size

    set_seed(cfg.seed)  # warm-up: one-time kernel set-up must not count against anyone
    rollout(model, tokenizer, examples[:1], task.make_env, cfg.replace(max_turns=1, max_tokens_per_turn=4), 2)

    set_seed(cfg.seed)
    stats: dict = {}
    trajs = rollout(model, tokenizer, examples, task.make_env, cfg, group_size, stats=stats)
    tokens_per_s = stats["generated_tokens"] / stats["wall_s"]

    set_seed(cfg.seed)
    new_tokens = max(1, round(stats["generated_tokens"] / rows))
    prompts = [t.token_ids[: t.prompt_len] for t in trajs]
    ids, mask = left_pad(prompts, tokenizer.pad_token_id, next(model.parameters()).device)
    with inference(model):
        t0 = time.perf_counter()
        model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=True,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=0,
            pad_token_id=tokenizer.pad_token_id,
        )
        generate_s = time.perf_counter() - t0

    set_seed(cfg.seed)
    naive = naive_rollout(model, tokenizer, examples, task.make_env, cfg, group_size)
    naive_tokens_per_s = naive["generated_tokens"] / naive["wall_s"]
    return {
        "tokens_per_s": round(tokens_per_s, 2),
        "generate_tokens_per_s": round(rows * new_tokens / generate_s, 2),
        "overhead_ratio": round(stats["forward_s"] / stats["wall_s"], 3),
        "naive_tokens_per_s": round(naive_tokens_per_s, 2),
        "speedup_vs_naive": round(tokens_per_s / naive_tokens_per_s, 2),
        "rows": rows,
        "generated_tokens": stats["generated_tokens"],
        "rollout_s": round(stats["wall_s"], 2),
        "naive_s": round(naive["wall_s"], 2),
        "naive_generated_tokens": naive["generated_tokens"],
        "mean_turns": round(sum(len(t.turns) for t in trajs) / rows, 2),
    }


# ----------------------------------------------------------------------------- one training step


def decode_ceiling(model, rows: int, context: int, new_tokens: int = 16) -> float:
    """Tokens per second of the model's bare decoding forward (KV cache, one token per row per call,
    `logits_to_keep=1`) at `rows` rows after a `context`-token prefill: what a rollout could reach with no
    framework work at all (no sampling, stop checks, tools or cache bookkeeping)."""
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (rows, context), device=device)
    name = cache_kwarg(model)  # `cache` from transformers 5.24, `past_key_values` before
    with inference(model):
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        cache, nxt = getattr(out, name), out.logits[:, -1].argmax(-1, keepdim=True)  # (rows, 1)
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            out = model(input_ids=nxt, **{name: cache}, use_cache=True, logits_to_keep=1)
            cache, nxt = getattr(out, name), out.logits[:, -1].argmax(-1, keepdim=True)
        if nxt.is_cuda:
            torch.cuda.synchronize()
        return rows * new_tokens / (time.perf_counter() - t0)


def bench_step(cfg: Config, steps: int = 2) -> dict:
    """Where the time of one training step of `cfg` goes (the `cpu_demo` step by default).

    Loads the policy, runs the configured supervised warm-up (so the rollouts have the length of the demo's:
    a warm-started agent searches), then `steps` training steps in a temporary folder. Reports the mean over
    the steps after the first (the first pays one-time set-up) of the step's breakdown as `train` logs it:
    `rollout_s`, `logprob_s` (old/ref passes), `update_s`, `step_s`, `rollout_tokens_per_s` (generated
    tokens per second of rollout), `first_ratio_mean` / `first_ratio_max` / `first_clip_frac` (the first
    minibatch's ratios on fresh data: 1 when the training pass reproduces the sampler); then
    `forward_ceiling_tokens_per_s` (`decode_ceiling` at the rollout's batch and the prompt's length),
    `rollout_ratio` (rollout tokens/s over that ceiling; `bench rollout-account` splits the gap part by part),
    `peak_rss_mb` (the whole process, warm-up and training included) and `update_from_layer` (the layer
    the update started at: `trunk_layer` with `reuse_trunk`, else 0). `reuse_trunk=false` times the update
    that recomputes every layer.
    """
    set_seed(cfg.seed)
    model, tokenizer = load_policy(cfg)
    task = build_task(cfg, tokenizer)
    sft_warmup(model, tokenizer, task, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        hist = train(
            cfg.replace(steps=steps, save_every=steps), tmp, model=model, tokenizer=tokenizer, task=task
        )
    timed = hist[1:] or hist

    def avg(key: str) -> float:
        return round(sum(m[key] for m in timed) / len(timed), 4)

    rows = cfg.questions_per_step * cfg.group_size
    context = len(task.make_env().reset(task.train[0]))
    out = {k: avg(k) for k in ("rollout_s", "logprob_s", "update_s", "step_s")}
    out["rollout_tokens_per_s"] = avg("tokens_per_s")
    out["forward_ceiling_tokens_per_s"] = round(decode_ceiling(model, rows, context), 2)
    out["rollout_ratio"] = round(out["rollout_tokens_per_s"] / out["forward_ceiling_tokens_per_s"], 3)
    out.update(
        {k: avg(k) for k in ("first_ratio_mean", "first_ratio_max", "first_clip_frac") if k in timed[0]}
    )
    out.update(
        peak_rss_mb=round(maxrss_bytes() / 2**20, 1),
        steps_timed=len(timed),
        rollout_rows=rows,
        mean_searches=avg("searches"),
        mean_turns=avg("turns"),
        dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
        threads=torch.get_num_threads(),
        update_from_layer=(trunk_layer(model) if cfg.reuse_trunk else None) or 0,
    )
    return out


def bench_rollout_account(cfg: Config, rollouts: int = 2) -> dict:
    """Where the wall time of the training rollout goes, part by part, and how far it is from the ceiling.

    As `bench_step`: loads the policy and runs the configured supervised warm-up (`sft_warmup_steps=N` to
    shorten it), then `rollouts` training rollouts of `questions_per_step` x `group_size` episodes as
    `train` runs them (sampling, the trunk kept with `reuse_trunk`), after one tiny rollout that pays the
    one-time set-up; their timers are summed. The parts add up to `wall_s`:

    - `ideal_s`: the generated tokens at `ceiling_tokens_per_s` (`decode_ceiling`: every row of the batch
      decoding at the prompt's length, `bench step`'s `forward_ceiling_tokens_per_s`);
    - `schedule_s`: what the rollout's schedule adds (fewer rows decode at once as rows stop, at contexts
      that grow over turns): the same tokens at `schedule_ceiling_tokens_per_s` (the bare forward replayed
      at each decoding call's rows and context, `replay_decoding`) minus `ideal_s`. Not ours to remove
      without changing what is sampled;
    - `decode_overhead_s`: our decoding forwards minus the bare replay (holes in the cache, the probe hook,
      mask and position ids);
    - `prefill_s`: the observation (and prompt) prefills beyond one decoding step each;
    - `sample_s` (softmax, draw, log-prob), `stop_s` (appending, stop strings, limits), `cache_s` (compact,
      split, select, merge), `env_s` (detokenising actions, the tool, tokenising observations), `start_s`
      (env resets, prompts), `probe_s` (dealing out the trunk's hidden states), `other_s` (the rest).

    Ratios: `rollout_ratio` = tokens_per_s / ceiling_tokens_per_s = `schedule_ratio` (schedule ceiling /
    ceiling) x `ratio_to_schedule` (tokens_per_s / schedule ceiling, the part that is ours). Also the
    schedule: decode_calls, mean_decode_rows, mean/max_decode_context (tokens per row, row-weighted),
    prefill_calls, prefill_columns (rows x columns fed, padding included) and prefill_tokens (without).
    """
    set_seed(cfg.seed)
    model, tokenizer = load_policy(cfg)
    task = build_task(cfg, tokenizer)
    sft_warmup(model, tokenizer, task, cfg)
    trunk_at = trunk_layer(model) if cfg.reuse_trunk else None
    q = cfg.questions_per_step
    rollout(
        model, tokenizer, task.train[:1], task.make_env, cfg.replace(max_turns=1, max_tokens_per_turn=4), 2
    )
    total: dict = {}
    for i in range(rollouts):
        stats: dict = {}
        examples = [task.train[(i * q + j) % len(task.train)] for j in range(q)]
        rollout(
            model,
            tokenizer,
            examples,
            task.make_env,
            cfg,
            cfg.group_size,
            stats=stats,
            keep_hidden_at=trunk_at,
        )
        for k, v in stats.items():
            total[k] = total.get(k, 0) + v if not isinstance(v, list) else total.get(k, []) + v
    replay_s, _ = replay_decoding(model, total["calls"])
    context = len(task.make_env().reset(task.train[0]))
    ceiling = decode_ceiling(model, q * cfg.group_size, context)
    out = rollout_account(total, replay_s, ceiling)
    out.update(rollouts=rollouts, rows=q * cfg.group_size, sft_warmup_steps=cfg.sft_warmup_steps)
    out["threads"] = torch.get_num_threads()
    return out


# ----------------------------------------------------------------------------- the action parser


def adversarial_outputs(n: int) -> dict[str, str]:
    """Model outputs of about `n` characters, by name, each built to be slow for a backtracking parser."""
    half = n // 2
    return {
        "fence_spaces": "<tool_call>```" + " " * n + "x</tool_call>",
        "fence_json_spaces_unclosed": "<tool_call>```json" + " \n\t" * (n // 3),
        "backticks": "<tool_call>" + "`" * n + "</tool_call>",
        "backticks_spaces": "<tool_call>" + "` " * half + "</tool_call>",
        "open_braces": "<tool_call>" + "{" * n + "</tool_call>",
        "brace_pairs": "<tool_call>" + "{}" * half + "</tool_call>",
        "quotes": '<tool_call>{"name": "' + '"' * n + "</tool_call>",
        "escaped_quotes": '<tool_call>{"name": "' + '\\"' * half + '"}</tool_call>',
        "nested_open_tags": "<tool_call>" * (n // 11),
        "nested_tags": ("<tool_call>" * (n // 22)) + ("</tool_call>" * (n // 24)),
        "answer_tags": "<answer>" * (n // 8),
        "markup_answer": "<answer>" + "</a" * (n // 3) + "</answer>",
        "whitespace": " \n\t" * (n // 3),
    }


def bench_parser(sizes: tuple[int, ...] = (1_000, 10_000, 100_000), repeat: int = 3) -> dict:
    """Worst seconds of `parse_action` over the adversarial outputs, per size (best of `repeat` runs each).

    Returns {"sizes": [...], "worst_s": {size: seconds}, "worst_case": {size: name}, "per_case_s": {...}}.
    """
    worst, worst_case, per_case = {}, {}, {}
    for n in sizes:
        times = {}
        for name, text in adversarial_outputs(n).items():
            best = float("inf")
            for _ in range(max(1, repeat)):
                t0 = time.perf_counter()
                parse_action(text)
                best = min(best, time.perf_counter() - t0)
            times[name] = round(best, 6)
        per_case[n] = times
        worst_case[n] = max(times, key=times.get)
        worst[n] = times[worst_case[n]]
    return {"sizes": list(sizes), "worst_s": worst, "worst_case": worst_case, "per_case_s": per_case}


# ----------------------------------------------------------------------------- trainers side by side


def bench_trainers(cfg: Config, steps: int = 2) -> dict:
    """The same tiny configuration trained three ways, each in a fresh process (`TRAINER_VARIANTS`): our
    trainer, TRL's GRPOTrainer with its own multi-turn tool loop (what a TRL user would write), and TRL's
    GRPOTrainer with our rollout func.

    Same model, questions, group size, turn and token limits, learning rate and steps; one optimiser step per
    step (minibatch = questions_per_step x group_size). Each worker first runs the config's supervised
    warm-up (`sft_warmup_steps`, the same seed: the same weights in all three), so that the model writes
    tool calls and episodes have several turns; `sft_warmup_steps=0` measures the untrained model.
    `*_step_s` is the mean wall time of a step after the first (the first pays one-off costs; it is
    `*_first_step_s`), rollout and update included; `*_peak_mb` the process's peak resident memory (model, libraries and training: TRL's import
    is part of what a TRL user pays); `*_gen_tokens_per_step` the tokens the model generated per step, since
    the two tool loops stop turns differently (ours at </tool_call> or </answer>, TRL's at eos only).
    `*_step_cpu_s` is the CPU time of the same steps (all threads of the process), which other load on a
    shared machine disturbs less than wall time. `speed_ratio` = trl_native_step_s / ours_step_s (> 1: ours
    is faster) and `rollout_func_ratio` = trl_rollout_func_step_s / ours_step_s; `cpu_speed_ratio` is
    speed_ratio on CPU time. When the model's chat template cannot drive TRL's tool loop
    (SmolLM2's cannot), TRL's native run uses Qwen2.5's template on the same tokens
    (`native_tool_calling_template` is then True).
    """
    require_trl()
    B = cfg.questions_per_step * cfg.group_size
    micro = cfg.micro_batch_size if B % cfg.micro_batch_size == 0 else B
    cfg = cfg.replace(steps=steps, minibatch_size=B, micro_batch_size=micro, ppo_epochs=1, save_every=10**6)
    with tempfile.TemporaryDirectory() as tmp:
        results = {v: run_worker(v, cfg, Path(tmp) / v) for v in TRAINER_VARIANTS}
    return summarize_trainers(results, cfg)


# ----------------------------------------------------------------------------- the update, sharing each group's prompt
# `bench update`: the update of one training step with and without `share_prompt`, A/B in one process. One batch
# is rolled out once (after the config's supervised warm-up, so that the episodes have the demo's length); then
# the update runs on it alternately with `share_prompt` off and on, from the same LoRA weights and the same
# random minibatch order each time, so a machine shared with other jobs disturbs both arms alike: the ratio of
# their medians is the number to read. Beside it: how much of the update's token work the prompt is, which
# bounds what sharing it can save.


def bench_update(
    cfg: Config,
    repeats: int = 3,
    adapter: str | Path | None = None,
    model=None,
    tokenizer=None,
    task: Task | None = None,
) -> dict:
    """Seconds of `train.update` on one rolled-out batch of `cfg` (the cpu_demo step by default), with
    `share_prompt` off (`update_s_default`: a prompt shared only inside a micro-batch whose rows all begin
    with it) and on (`update_s_shared`), medians over `repeats` alternated runs, and
    `update_s_shared_over_default` (their ratio; < 1: sharing is faster); `logprob_s_*` the same for the
    old-log-prob pass that a 4-bit or 16-bit run recomputes before the update (forward only);
    `max_lora_diff` the largest difference of a LoRA weight after one update each way (rounding only),
    beside `max_lora_step`, the largest change one update made. The token accounting (`prompt_share`...,
    `prompt_tokens`) says how much of the work the prompt is: `token_passes_*` count the token positions
    the decoder runs per update (every row alone, as the default shares, as `share_prompt` shares), and
    `token_saving_bound` = 1 - shared / default is the share of the update's per-token work that sharing
    removes (attention over the prompt stays). `adapter`: a saved adapter instead of the warm-up (the
    shipped `agentr1_nb/adapters/cpu_demo`: the trained agent's episodes, in seconds instead of the warm-up's
    minutes); a model given is used as it is."""
    set_seed(cfg.seed)
    if model is None:
        model, tokenizer = load_policy(cfg, adapter)
        task = build_task(cfg, tokenizer)
        if adapter is None:
            sft_warmup(model, tokenizer, task, cfg)
    elif task is None:
        task = build_task(cfg, tokenizer)
    acc = make_accelerator(cfg)
    state, tokenizer, task = setup(acc, cfg, model, tokenizer, task)
    trunk_at = trunk_layer(model) if cfg.reuse_trunk else None
    batch, trajs, _ = build_batch(acc, cfg, state, tokenizer, task, trunk_at)
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    times: dict[str, list[float]] = {}
    after: dict[bool, list[torch.Tensor]] = {}  # the LoRA weights after each arm's first update
    for r in range(repeats):
        for share in (False, True) if r % 2 else (True, False):
            arm = cfg.replace(share_prompt=share)
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in start:
                        p.copy_(start[n])
                t0 = time.perf_counter()  # the old / reference pass, as a 4-bit or 16-bit run recomputes it
                add_old_and_reference(
                    dict(batch), model, None, arm.replace(old_logprobs="recompute"), trunk_at
                )
                times.setdefault(f"logprob_s_{share}", []).append(time.perf_counter() - t0)
            torch.manual_seed(cfg.seed + r)  # the same minibatch order for both arms
            t0 = time.perf_counter()
            update(acc, arm, state, batch, trunk_at)
            times.setdefault(f"update_s_{share}", []).append(time.perf_counter() - t0)
            after.setdefault(share, [p.detach().clone() for n, p in model.named_parameters() if n in start])
    out = {}
    for part in ("update_s", "logprob_s"):
        default, shared = (statistics.median(times[f"{part}_{s}"]) for s in (False, True))
        out.update({f"{part}_default": round(default, 3), f"{part}_shared": round(shared, 3)})
        out[f"{part}_shared_over_default"] = round(shared / default, 3)
        out[f"{part}_all"] = {
            k: [round(t, 3) for t in times[f"{part}_{s}"]] for k, s in (("default", False), ("shared", True))
        }
    out["max_lora_diff"] = max(float((a - b).abs().max()) for a, b in zip(after[False], after[True]))
    out["max_lora_step"] = max(float((a - b).abs().max()) for a, b in zip(after[False], start.values()))
    out["repeats"] = repeats
    out.update(token_accounting(batch, cfg, [t.prompt_len for t in trajs]))
    out.update(update_from_layer=trunk_at or 0, threads=torch.get_num_threads())
    return out


def token_accounting(batch: dict, cfg: Config, prompt_lens: list[int]) -> dict:
    """The prompt's share of the batch's tokens, and the token positions one update's decoder passes run:
    every row alone, shared inside micro-batches (`share_prompt` off), shared per group (on)."""
    lengths = batch["attention_mask"].sum(1)  # (B,)
    rows = torch.argsort(batch["group"], stable=True)  # the update's order within a minibatch
    total = int(lengths.sum())

    def passes(by_group: bool, size: int) -> int:
        saved = 0
        for part in micro_batches(batch["group"], rows, size, by_group):
            ids, am = batch["input_ids"][part], batch["attention_mask"][part]
            P = min(shared_prefix_len(ids, am), int(am.sum(1).min()) - (1 if by_group else 0))
            saved += (len(part) - 1) * P if P >= MIN_SHARED_PREFIX else 0
        return total - saved

    default = passes(False, cfg.micro_batch_size)
    shared = passes(True, len(rows))  # one prompt pass per group (micro-batches only split the rest)
    return {
        "rows": len(prompt_lens),
        "prompt_tokens": round(statistics.mean(prompt_lens), 1),
        "row_tokens": round(float(lengths.float().mean()), 1),
        "prompt_share": round(sum(prompt_lens) / total, 3),
        "token_passes_unshared": total,
        "token_passes_default": default,
        "token_passes_shared": shared,
        "token_saving_bound": round(1 - shared / default, 3),
    }
