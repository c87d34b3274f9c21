"""The parts of `bench.bench_rollout_account` (`bench rollout-account`): where the wall time of the training
rollout goes, part by part, and how far it is from the decoding ceiling (`bench.decode_ceiling`). The gap
splits into what the rollout's schedule costs (fewer rows decoding as rows stop, contexts growing over turns:
not ours to remove without changing what is sampled) and our overhead per token (timed in `rollout.rollout`'s
stats, `rollout.PARTS`).
"""

from __future__ import annotations

import time

import torch

from .kvcache import cache_kwarg, placeholder_cache
from .rollout import PARTS, inference


def replay_decoding(model, calls: list[tuple]) -> tuple[float, int]:
    """Seconds of the bare decoding forward at the schedule of a rollout's decoding calls, and their tokens.

    `calls` is a rollout's `stats["calls"]` (rows, columns fed, tokens fed, longest row's tokens after
    the call, seconds); the calls that fed one column are its decoding steps. Each is replayed as the model's
    forward alone at the same rows and the longest row's real context, the cache already in place (a
    `placeholder_cache`: no prefill, no holes, no sampling, no bookkeeping between calls): what decoding the
    same tokens would cost at this schedule with no framework work at all. On the CPU the replay keeps the
    rollout's leading hole column (see `kvcache.KVBatch`: without it torch takes a slower attention path).
    """
    runs: list[list[int]] = []  # [rows, context before the run, calls]: consecutive steps of the same rows
    for rows, fed, _, longest, _ in calls:
        if fed != 1:
            continue
        if runs and runs[-1][0] == rows and runs[-1][1] + runs[-1][2] == longest - 1:
            runs[-1][2] += 1
        else:
            runs.append([rows, longest - 1, 1])
    if not runs:
        return 0.0, 0
    device = next(model.parameters()).device
    anchor = int(device.type == "cpu")
    conf = model.config
    heads = conf.num_key_value_heads
    dim = getattr(conf, "head_dim", None) or conf.hidden_size // conf.num_attention_heads
    dtype = model.get_input_embeddings().weight.dtype
    capacity = max(c + k for _, c, k in runs) + anchor
    n_max = max(n for n, _, _ in runs)
    pools = [
        tuple(torch.zeros(n_max, heads, capacity, dim, dtype=dtype, device=device) for _ in "kv")
        for _ in range(conf.num_hidden_layers)
    ]
    name = cache_kwarg(model)
    seconds, tokens = 0.0, 0
    with inference(model):
        for rows, context, k in runs:
            cache = placeholder_cache(model, pools, rows, context + anchor)
            ids = torch.zeros(rows, 1, dtype=torch.long, device=device)
            mask = torch.ones(rows, context + anchor + k, dtype=torch.long, device=device)
            mask[:, 0] = 1 - anchor  # the hole column (CPU)
            for j in range(k):
                width = context + anchor + j + 1
                pos = torch.full((rows, 1), context + j, dtype=torch.long, device=device)
                t0 = time.perf_counter()
                out = model(
                    input_ids=ids,
                    attention_mask=mask[:, :width] if anchor else None,
                    position_ids=pos,
                    use_cache=True,
                    logits_to_keep=1,
                    **{name: cache},
                )
                if out.logits.is_cuda:
                    torch.cuda.synchronize()
                seconds += time.perf_counter() - t0
                tokens += rows
    return seconds, tokens


def rollout_account(stats: dict, replay_s: float, ceiling: float) -> dict:
    """Split a rollout's wall time (`rollout(..., stats=...)`) into parts that add up to it, and its gap to
    the decoding ceiling into the schedule's share and ours. `replay_s`: `replay_decoding`'s seconds for
    the rollout's decoding calls; `ceiling`: `decode_ceiling` tokens/s (all rows decoding at the prompt's
    length). The keys are described in `bench.bench_rollout_account`."""
    calls = stats["calls"]
    decode = [c for c in calls if c[1] == 1]
    prefill = [c for c in calls if c[1] != 1]
    wall, gen = stats["wall_s"], stats["generated_tokens"]
    decode_tokens = sum(c[0] for c in decode)
    decode_fwd = sum(c[4] for c in decode)
    prefill_fwd = sum(c[4] for c in prefill)
    at_schedule = decode_tokens / replay_s if replay_s > 0 else float("nan")  # tokens/s
    parts = {
        "ideal_s": gen / ceiling,
        "schedule_s": gen / at_schedule - gen / ceiling,
        "decode_overhead_s": decode_fwd - replay_s,
        "prefill_s": prefill_fwd - (gen - decode_tokens) / at_schedule,
        **{k: stats[k] for k in PARTS},
    }
    parts["other_s"] = wall - decode_fwd - prefill_fwd - sum(stats[k] for k in PARTS)
    out = {k: round(v, 3) for k, v in parts.items()}
    out.update(
        wall_s=round(wall, 3),
        generated_tokens=gen,
        tokens_per_s=round(gen / wall, 2),
        ceiling_tokens_per_s=round(ceiling, 2),
        schedule_ceiling_tokens_per_s=round(at_schedule, 2),
        decode_forward_tokens_per_s=round(decode_tokens / decode_fwd, 2) if decode_fwd else None,
        rollout_ratio=round(gen / wall / ceiling, 3),
        schedule_ratio=round(at_schedule / ceiling, 3),
        ratio_to_schedule=round(gen / wall / at_schedule, 3),
        decode_forward_s=round(decode_fwd, 3),
        prefill_forward_s=round(prefill_fwd, 3),
        decode_calls=len(decode),
        prefill_calls=len(prefill),
        prefill_columns=sum(c[0] * c[1] for c in prefill),
        prefill_tokens=sum(c[2] for c in prefill),
        mean_decode_rows=round(decode_tokens / max(len(decode), 1), 2),
        mean_decode_context=round(sum(c[0] * c[3] for c in decode) / max(decode_tokens, 1), 1),
        max_decode_context=max((c[3] for c in decode), default=0),
    )
    return out
