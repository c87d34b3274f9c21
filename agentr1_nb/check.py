"""The self-check of a machine: does the package run here end to end, how fast, and in how much memory?

`python -m agentr1_nb check --preset colab_t4 --json` runs the phases below one after another and prints
one JSON line per phase as it ends, then a summary line (`ok`, `problems`, and the headline numbers)::

    env      versions (or "missing"), device, compute capability, the dtype `compute_dtype` picks, bf16
    load     `load_policy` as the preset says (4-bit, LoRA, checkpointing, dtype): seconds, memory after it
    logits   one forward pass on a short prompt: finite or not, dtype, largest |logit|
    rollout  `rollout.rollout` on 2 generated questions x group 2: tokens, tokens/s, longest trajectory
    ratio    the sampler's recorded log-probs against `token_logprobs` recomputed on the same ids:
             mean and max |diff|, ratio_mean, ratio_min/max, clip_frac at clip_eps (on-policy: all ratios 1)
    train    `train.train` for `steps` steps of the preset's algorithm: seconds per step, peak memory, the
             `memory.memory_budget` prediction for the same config, reward, losses finite, first ratios
    ppo      one PPO step (value head, GAE) the same way
    summary  ok, problems, warnings, and whether the preset's full-size budget fits its GPU

`--full-size` (`full_size=True`) is the rehearsal of the preset at its real size; on a CPU it also sets
`FULL_SIZE_CPU` (one group of 2, 2 turns of 8 tokens, bf16 where the CPU has it) and leaves out the PPO step:

    measure  the model's tensors by term and one micro-batch's activations, each beside `memory_budget`'s
             term (`rehearsal.measured_vs_predicted`), with `why_off` for a term off by more than 10 %
    plan     the preset's own run on its GPU: `memory.time_plan` and the memory plan (arithmetic)
    summary  also `changed` (each setting it moved from the preset, and why), `measured_vs_predicted`,
             `time_plan`; every line has `cpu_s` beside `seconds` (others' jobs slow a shared CPU)

Each phase catches its own exception and reports it in its line (`error`, `where`); a phase whose inputs
are missing (the model did not load) says `skipped`. Nothing needs the hub: the data set is forced to the
generated world, and sizes are forced small (questions_per_step 2, group_size 2, max_tokens_per_turn 64,
eval_questions 1; `key=value` overrides still apply on top) so that a 3B model on a T4 finishes in minutes.

Weights (`weights=`): "pretrained" loads the preset's model (from the hub or its local cache); "random"
builds the preset's architecture with random weights (Qwen2.5-3B: `memory.QWEN25_3B_CONFIG`), saves it
and loads it with `load_policy` like a pretrained one, so load path, speed and memory are the real ones (but
not the rewards); "auto" tries pretrained and falls back to random on a machine without the hub. A random
model needs a tokenizer: the preset's own when cached, else the CPU default's (SmolLM2), else a byte-level
ChatML tokenizer built here (`byte_tokenizer`), so a bare GPU box without internet can run the check.
`tiny=True` builds a tiny random Qwen2 instead (2 layers, hidden 64) and keeps the preset's loading
settings, so the same code runs on a CPU in seconds (the tests).

Memory figures are `torch.cuda.max_memory_allocated` on a GPU (comparable with `memory_budget`, which also
leaves out the CUDA context), the process's peak RSS on a CPU (not comparable: it includes Python, torch
and the host copies). The `measure` phase counts tensors' bytes instead, comparable on either.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import algos
from .common import peak_memory_mb
from .config import Config, get_config, parse_overrides
from .env import build_task
from .logprobs import token_logprobs
from .memory import GB, PRESET_GPU_GB, QWEN25_3B_CONFIG, budget_peak_gb, memory_budget, time_plan
from .policy import (
    TINY_ARCH,
    ModelUnavailableError,
    compute_dtype,
    cpu_has_bf16,
    gpu_has_bf16,
    load_policy,
)
from .rehearsal import (
    NOT_RUN,
    WHY_OFF,
    activation_bytes,
    build_random_model,
    changes,
    measured_vs_predicted,
    micro_batch,
    model_tensors,
    offline_tokenizer,
    optimizer_state_bytes,
    preset_architecture,
)
from .rollout import rollout
from .train import train

CHECK_SIZES: dict[str, Any] = dict(
    dataset="generated",
    data_path="",
    corpus_path="",
    questions_per_step=2,
    group_size=2,
    max_tokens_per_turn=64,
    eval_questions=1,
)
"""What the check forces on top of the preset (before the user's overrides): no hub, small batches."""

TINY_SIZES: dict[str, Any] = dict(max_turns=2, max_tokens_per_turn=16, prompt_style="zero_shot")
"""And with `tiny`: fewer, shorter turns, so the CPU check (twice in the tests) takes seconds, not minutes.
On a CPU `tiny` also computes in the dtype "auto" picks there: a CPU's fp16 is emulated, 5x slower."""

FULL_SIZE_CPU: dict[str, Any] = dict(
    questions_per_step=1, group_size=2, max_turns=2, max_tokens_per_turn=8, compute_dtype="auto"
)
"""And with `full_size` on a CPU (on a GPU the check is already full size): one group of 2 (one micro-batch of
the preset's size), 2 turns of 8 tokens, computing in what the CPU does fast: one GRPO step of the 3B model
in minutes on 2 cores (why each: `rehearsal.WHY`)."""

PACKAGES = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "bm25s", "PyStemmer", "datasets")
WEIGHTS = ("auto", "pretrained", "random")
PROMPT = "Question: Which city is the capital of the country whose capital is Paris?"


@dataclass
class _State:
    """What the phases hand on to each other (None: not produced, e.g. the model did not load)."""

    cfg: Config
    preset: str
    tiny: bool
    weights: str
    workdir: Path
    model: Any = None
    tokenizer: Any = None
    model_config: dict | None = None
    task: Any = None
    trajs: list | None = None
    notes: list[str] = field(default_factory=list)
    full_size: bool = False


# ----------------------------------------------------------------------------- the entry point


def check_config(
    preset: str,
    steps: int = 2,
    overrides: list[str] | dict | None = None,
    tiny: bool = False,
    full_size: bool = False,
) -> Config:
    """The preset with the check's forced sizes (and the tiny or the full-size CPU ones), then the user's
    overrides (`["key=value", ...]` or a dict)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    user = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    forced = {**CHECK_SIZES, "steps": steps}
    if full_size and not torch.cuda.is_available():
        forced.update(FULL_SIZE_CPU)
    if tiny:
        forced.update(TINY_SIZES)
        if not torch.cuda.is_available():
            forced["compute_dtype"] = "auto"
    return get_config(preset, {**forced, **user})


def run_check(
    preset: str = "colab_t4",
    tiny: bool = False,
    steps: int = 2,
    overrides: list[str] | dict | None = None,
    weights: str = "auto",
    ppo: bool = True,
    emit: Callable[[dict], None] | None = None,
    full_size: bool = False,
) -> list[dict]:
    """Run every phase; return their lines (the last is the summary). `emit(line)` is called as each phase
    ends (the command line prints it at once, so a run cut by a timeout still shows what it reached).

    `full_size`: the rehearsal of the preset at its real size (`FULL_SIZE_CPU` on a CPU; no PPO step): a
    `measure` phase sets the model's tensors and one micro-batch's activations beside `memory_budget`
    (`rehearsal.measured_vs_predicted`), a `plan` phase gives the preset's time plan (`memory.time_plan`)
    and memory plan on its GPU, and the summary says which settings it changed and why.

    A bad preset, override or `weights` raises ValueError before anything runs; after that nothing raises
    (except Ctrl-C): failures are reported in the lines. Library output meant for stdout goes to stderr,
    so that stdout carries the JSON lines only.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}; got {weights!r}")
    cfg = check_config(preset, steps, overrides, tiny, full_size)
    t0 = time.perf_counter()
    phases: list[tuple[str, Callable[[_State], dict], tuple[str, ...]]] = [
        ("env", phase_env, ()),
        ("load", phase_load, ()),
        ("logits", phase_logits, ("model",)),
        ("rollout", phase_rollout, ("model",)),
        ("ratio", phase_ratio, ("model", "trajs")),
        ("train", lambda s: phase_train(s, s.cfg.algo, steps), ("model", "task")),
    ]
    if full_size:
        phases.insert(5, ("measure", phase_measure, ("model", "trajs")))
        phases.append(("plan", phase_plan, ()))
    elif ppo:
        phases.append(("ppo", lambda s: phase_train(s, "ppo", 1), ("model", "task")))
    lines: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="agentr1_check_") as tmp:
        state = _State(cfg, preset, tiny, weights, Path(tmp), full_size=full_size)
        for name, fn, needs in phases:
            with contextlib.redirect_stdout(sys.stderr):
                line = _run_phase(name, fn, state, needs)
            lines.append(line)
            if emit is not None:
                emit(line)
        summary = summarise(lines, state, time.perf_counter() - t0)
        state.model = state.task = None
    lines.append(summary)
    if emit is not None:
        emit(summary)
    return lines


def _run_phase(name: str, fn: Callable[[_State], dict], state: _State, needs: tuple[str, ...]) -> dict:
    line: dict[str, Any] = {"phase": name}
    missing = [n for n in needs if getattr(state, n) is None]
    if missing:
        line["skipped"] = f"no {', '.join(missing)}: an earlier phase failed"
        return line
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        line.update(fn(state))
    except Exception as e:  # noqa: BLE001 - a phase reports its failure and the check goes on
        line["error"] = f"{type(e).__name__}: {str(e).strip()[:600]}"
        line.update(_where(e))
        traceback.print_exc(file=sys.stderr)  # the whole story, for the log
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # after an OOM, let the next phase start clean
    line["seconds"] = time.perf_counter() - t0
    line["cpu_s"] = time.process_time() - c0  # all threads: below 2 x seconds when others share the cores
    return _clean(line)


def _where(e: BaseException) -> dict:
    """The innermost frame of this package (`where`) and the innermost of all (`raised_in`), as file:line."""
    frames = traceback.extract_tb(e.__traceback__)
    ours = [f for f in frames if Path(f.filename).parent.name == Path(__file__).parent.name]
    out = {}
    for key, f in (("where", ours[-1] if ours else None), ("raised_in", frames[-1] if frames else None)):
        if f is not None:
            out[key] = f"{Path(f.filename).name}:{f.lineno} in {f.name}"
    return out


# ----------------------------------------------------------------------------- phases


def phase_env(state: _State) -> dict:
    """Versions, the device, and the dtype the policy will compute in."""
    out: dict[str, Any] = {"preset": state.preset, "tiny": state.tiny, "python": platform.python_version()}
    out.update(versions())
    cuda = torch.cuda.is_available()
    out["cuda"] = cuda
    if cuda:
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        out["device"] = props.name
        out["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
        out["gpu_total_gb"] = props.total_memory / GB
        out["cuda_version"] = torch.version.cuda
    else:
        out["device"] = f"cpu ({platform.processor() or platform.machine()})"
        out["cpu_has_bf16"] = cpu_has_bf16()
    out["gpu_has_bf16"] = gpu_has_bf16()
    out["cpu_count"], out["load_avg_1m"] = os.cpu_count(), os.getloadavg()[0]  # others' load slows a CPU run
    out["dtype"] = _dtype_name(compute_dtype(state.cfg))
    out["load_in_4bit"] = state.cfg.load_in_4bit
    return out


def versions() -> dict[str, str]:
    """Installed versions of the libraries the check depends on, "missing" where absent (none imported)."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def phase_load(state: _State) -> dict:
    """`load_policy` with the preset's settings, on the weights `state.weights` / `state.tiny` ask for."""
    out: dict[str, Any] = {"model": state.cfg.model}
    cfg = state.cfg
    if state.tiny or state.weights == "random":
        cfg = _with_random_weights(state, out)
    elif state.weights == "auto":
        try:
            return _load(state, cfg, out, "pretrained")
        except ModelUnavailableError as e:
            state.notes.append(f"pretrained weights unavailable ({str(e)[:160]}); random weights instead")
            out["fallback"] = str(e).splitlines()[0][:300]
            cfg = _with_random_weights(state, out)
    return _load(state, cfg, out, "random-tiny" if state.tiny else out.get("weights", "pretrained"))


def _with_random_weights(state: _State, out: dict) -> Config:
    """Build and save the random model (tiny or the preset's architecture); the config that loads it."""
    t0 = time.perf_counter()
    tok, tok_name = offline_tokenizer(state.cfg, try_preset=not state.tiny)
    arch = dict(TINY_ARCH) if state.tiny else preset_architecture(state.cfg.model)
    arch["vocab_size"] = max(int(arch.get("vocab_size", 0)), len(tok))
    folder = build_random_model(arch, tok, compute_dtype(state.cfg), state.workdir / "model")
    out.update(weights="random", tokenizer=tok_name, build_s=time.perf_counter() - t0)
    return state.cfg.replace(model=str(folder))


def _load(state: _State, cfg: Config, out: dict, weights: str) -> dict:
    _reset_peak()
    t0 = time.perf_counter()
    model, tok = load_policy(cfg)
    out["load_s"] = time.perf_counter() - t0
    state.cfg, state.model, state.tokenizer = cfg, model, tok
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    state.model_config = base.config.to_dict()
    mc = state.model_config
    out.update(
        weights=weights,
        path=cfg.model,
        architecture=f"{mc.get('model_type')} {mc.get('num_hidden_layers')} layers x {mc.get('hidden_size')}, "
        f"vocab {mc.get('vocab_size')}",
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        model_device=str(next(model.parameters()).device),
        tokenizer_size=len(tok),
        **_memory(),
    )
    return out


def phase_logits(state: _State) -> dict:
    """One forward pass on a short prompt: are the logits finite in this dtype?"""
    model, tok = state.model, state.tokenizer
    device = next(model.parameters()).device
    ids = torch.tensor([tok(PROMPT, add_special_tokens=False)["input_ids"]], device=device)  # (1, T)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits  # (1, T, V)
    finite = torch.isfinite(logits)
    return {
        "tokens": ids.shape[1],
        "dtype": _dtype_name(logits.dtype),
        "finite": bool(finite.all()),
        "nonfinite_frac": float((~finite).float().mean()),
        "max_abs_logit": float(logits.float().nan_to_num(0.0, 0.0, 0.0).abs().max()),
    }


def phase_rollout(state: _State) -> dict:
    """One batched multi-turn rollout on the first questions of the generated world."""
    cfg = state.cfg
    t0 = time.perf_counter()
    state.task = build_task(cfg, state.tokenizer)
    task_s = time.perf_counter() - t0
    examples = state.task.train[: cfg.questions_per_step]
    stats: dict[str, Any] = {}
    _reset_peak()
    trajs = rollout(
        state.model,
        state.tokenizer,
        examples,
        state.task.make_env,
        cfg,
        group_size=cfg.group_size,
        stats=stats,
    )
    state.trajs = trajs
    lengths = [len(t.token_ids) for t in trajs]
    return {
        "task_s": task_s,
        "trajectories": len(trajs),
        "generated_tokens": stats["generated_tokens"],
        "wall_s": stats["wall_s"],
        "tokens_per_s": stats["generated_tokens"] / max(stats["wall_s"], 1e-9),
        "forward_calls": stats["forward_calls"],
        "turns_mean": sum(len(t.turns) for t in trajs) / len(trajs),
        "max_len": max(lengths),
        "mean_len": sum(lengths) / len(lengths),
        "stop_reasons": sorted({t.stop_reason for t in trajs}),
        **_memory(),
    }


def phase_ratio(state: _State) -> dict:
    """pi_new / pi_old on the rollout's action tokens before any update: the sampler's recorded log-probs
    against a full forward pass (`token_logprobs`, as training computes them). Should be 1 everywhere."""
    cfg, model = state.cfg, state.model
    device = next(model.parameters()).device
    batch = algos.batch_from_trajectories(state.trajs, state.tokenizer.pad_token_id)
    ids, am = batch["input_ids"].to(device), batch["attention_mask"].to(device)  # (B, T)
    old = batch["old_logprobs"].to(device)  # (B, T-1)
    act = batch["action_mask"].to(device) > 0  # (B, T-1)
    model.eval()
    with torch.no_grad():
        new = token_logprobs(model, ids, am, chunk=cfg.logprob_chunk, temperature=cfg.temperature)
    out = {"tokens": int(act.sum()), **_ratio_stats(new, old, act, cfg.clip_eps)}
    dtype = compute_dtype(cfg)
    if device.type == "cuda" and dtype != torch.float32:  # the training pass runs under autocast
        with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
            new = token_logprobs(model, ids, am, chunk=cfg.logprob_chunk, temperature=cfg.temperature)
        out.update({f"autocast_{k}": v for k, v in _ratio_stats(new, old, act, cfg.clip_eps).items()})
    return out


def _ratio_stats(new: torch.Tensor, old: torch.Tensor, act: torch.Tensor, clip_eps: float) -> dict:
    """Statistics of new - old (B, T-1) over the action tokens `act` (B, T-1)."""
    diff = (new.float() - old.float())[act]  # (N,)
    if not diff.numel():
        return {"mean_abs_diff": 0.0, "max_abs_diff": 0.0, "ratio_mean": 1.0, "clip_frac": 0.0}
    ratio = diff.clamp(-20, 20).exp()
    return {
        "mean_abs_diff": float(diff.abs().mean()),
        "max_abs_diff": float(diff.abs().max()),
        "ratio_mean": float(ratio.mean()),
        "ratio_min": float(ratio.min()),
        "ratio_max": float(ratio.max()),
        "clip_frac": float(((ratio - 1).abs() > clip_eps).float().mean()),
    }


def phase_measure(state: _State) -> dict:
    """Full size: the model's tensors by term and one micro-batch's activations, beside `memory_budget`."""
    cfg, model = state.cfg, state.model
    batch = micro_batch(state.trajs, state.tokenizer.pad_token_id, cfg.micro_batch_size)
    weights, seen = model_tensors(model, cfg)
    act = activation_bytes(model, batch, cfg, seen)
    act.update(rows=batch["input_ids"].shape[0], tokens=batch["input_ids"].shape[1])
    measured = {"weights": weights, "activations": act, "optimizer_bytes": optimizer_state_bytes(model, cfg)}
    terms = measured_vs_predicted(state.model_config, cfg, measured)
    return {
        "micro_batch": f"{act['rows']} x {act['tokens']} tokens",
        "probe_layer": act["probe_layer"],
        "logprobs_finite": act["logprobs_finite"],
        "measured_vs_predicted": terms,
        "why_off": {k: WHY_OFF[k] for k, v in terms.items() if not v["within_10pct"] and k in WHY_OFF},
        "measured": measured,  # raw, so that the prediction can be redone when the arithmetic changes
        "off_by_more_than_10pct": [k for k, v in terms.items() if not v["within_10pct"]],
        **_memory(),
    }


def phase_plan(state: _State) -> dict:
    """Full size: the preset's own run (its sizes, not the check's) on its GPU: time and memory arithmetic."""
    preset_cfg = get_config(state.preset)
    arch = state.model_config if not state.tiny else dict(QWEN25_3B_CONFIG)
    plan = time_plan(arch, preset_cfg)
    b = memory_budget(arch, preset_cfg)
    keys = ("rollout_peak_gb", "eval_rollout_peak_gb", "train_peak_gb", "weights_gb", "kv_cache_gb")
    return {
        "measured_on_gpu": torch.cuda.is_available(),
        "time_plan": {k: v for k, v in plan.items() if k != "gpu"},
        "assumed_gpu": plan["gpu"],
        "memory_plan": {**{k: b[k] for k in keys}, "gpu_gb": PRESET_GPU_GB.get(state.preset)},
    }


def phase_train(state: _State, algo: str, steps: int) -> dict:
    """`train.train` for `steps` steps with `algo` on the loaded model; measured against `memory_budget`."""
    cfg = state.cfg.replace(algo=algo, steps=steps)
    _reset_peak()
    t0 = time.perf_counter()
    out_dir = state.workdir / f"run_{algo}"
    history = train(cfg, out_dir, resume=False, model=state.model, tokenizer=state.tokenizer, task=state.task)
    wall = time.perf_counter() - t0
    if not history:
        raise RuntimeError("train() returned no steps")
    first = history[0]
    losses = [m.get(k) for m in history for k in ("loss", "pg_loss", "value_loss", "grad_norm") if k in m]
    out: dict[str, Any] = {
        "algo": algo,
        "steps_run": len(history),
        "wall_s": wall,
        "step_s": sum(m["step_s"] for m in history) / len(history),
        "step_s_first": first["step_s"],
        "rollout_s": sum(m["rollout_s"] for m in history) / len(history),
        "update_s": sum(m["update_s"] for m in history) / len(history),
        "tokens_per_s": sum(m["tokens_per_s"] for m in history) / len(history),
        "reward": history[-1]["reward"],
        "loss": history[-1].get("loss"),
        "losses_finite": all(v is not None and math.isfinite(v) for v in losses),
        "skipped_updates": sum(int(m.get("skipped_updates", 0)) for m in history),
        **{k: first[k] for k in ("first_ratio_mean", "first_ratio_max", "clip_frac") if k in first},
        **_memory(),
    }
    out.update(_budget_for(state, cfg))
    return out


def _budget_for(state: _State, cfg: Config) -> dict:
    """`memory_budget` for the run just measured: `budget_gb` with max_total_tokens set to the longest
    trajectory of the rollout phase (what the measured peak compares with), `budget_max_len_gb` at the
    config's max_total_tokens (every trajectory that long: an upper bound)."""
    if state.model_config is None:
        return {}
    b = memory_budget(state.model_config, cfg)
    out: dict[str, Any] = {"budget_max_len_gb": max(b["rollout_peak_gb"], b["train_peak_gb"])}
    if state.trajs:
        seen = min(cfg.max_total_tokens, max(len(t.token_ids) for t in state.trajs))
        bs = memory_budget(state.model_config, cfg.replace(max_total_tokens=seen))
        out.update(budget_gb=max(bs["rollout_peak_gb"], bs["train_peak_gb"]), seen_len=seen)
    return out


# ----------------------------------------------------------------------------- the summary


def summarise(lines: list[dict], state: _State, seconds: float) -> dict:
    """ok (no problem), the problems and warnings, and the headline numbers of the run."""
    by = {ln["phase"]: ln for ln in lines}
    problems, warnings = _problems(by), list(state.notes)
    train_line = by.get("train", {})
    finite = [by[p]["losses_finite"] for p in ("train", "ppo") if "losses_finite" in by.get(p, {})]
    out: dict[str, Any] = {
        "phase": "summary",
        "preset": state.preset,
        "tiny": state.tiny,
        "device": by.get("env", {}).get("device"),
        "dtype": by.get("env", {}).get("dtype"),
        "weights": by.get("load", {}).get("weights"),
        "rollout_tokens_per_s": by.get("rollout", {}).get("tokens_per_s"),
        "step_s": train_line.get("step_s"),
        "peak_mem_gb": train_line.get("gpu_peak_gb", train_line.get("rss_peak_gb")),
        "budget_gb": train_line.get("budget_gb"),
        "losses_finite": all(finite) if finite else None,
        "first_ratio_mean": train_line.get("first_ratio_mean"),
        "ratio_clip_frac": by.get("ratio", {}).get("clip_frac"),
    }
    out.update(_preset_fit(state, problems))
    if state.full_size:
        out.update(_full_size_summary(by, state))
    warnings += _warnings(by)
    out.update(ok=not problems, problems=problems, warnings=warnings, seconds=seconds)
    out.update(cpu_s=sum(ln.get("cpu_s", 0.0) for ln in lines), load_avg_1m=os.getloadavg()[0])
    return _clean(out)


def _full_size_summary(by: dict[str, dict], state: _State) -> dict:
    """The rehearsal's settings against the preset's, its measured-vs-predicted terms and the time plan."""
    plan = by.get("plan", {}).get("time_plan", {})
    return {
        "full_size": True,
        "changed": changes(get_config(state.preset), state.cfg),
        "not_run": NOT_RUN,
        "measured_vs_predicted": by.get("measure", {}).get("measured_vs_predicted"),
        "time_plan": {k: plan.get(k) for k in ("step_min", "run_hours", "steps", "fits_one_session")},
    }


def _problems(by: dict[str, dict]) -> list[str]:
    problems = [f"{p}: {ln['error']}" for p, ln in by.items() if "error" in ln]
    problems += [f"{p}: skipped ({ln['skipped']})" for p, ln in by.items() if "skipped" in ln]
    logits = by.get("logits", {})
    if logits.get("finite") is False:
        problems.append(
            f"logits: non-finite logits in {logits.get('dtype')} (the model overflows): use compute_dtype=bf16 "
            "on a GPU with compute capability >= 8, or fp32"
        )
    ratio = by.get("ratio", {})
    if "max_abs_diff" in ratio and not math.isfinite(float(ratio["max_abs_diff"])):
        problems.append("ratio: non-finite log-probs in the training pass")
    for p in ("train", "ppo"):
        ln = by.get(p, {})
        if ln.get("losses_finite") is False or ln.get("skipped_updates"):
            problems.append(
                f"{p}: non-finite loss or gradient ({ln.get('skipped_updates', 0)} skipped updates)"
            )
    return problems


def _warnings(by: dict[str, dict]) -> list[str]:
    out = []
    ratio = by.get("ratio", {})
    if ratio.get("clip_frac", 0) > 0 or ratio.get("max_abs_diff", 0) > 1e-3:
        out.append(
            f"ratio: the sampler's and the training pass's log-probs differ (mean |diff| "
            f"{ratio['mean_abs_diff']:.3g}, max {ratio['max_abs_diff']:.3g}, clip_frac {ratio['clip_frac']:.3g} "
            "before any update): old_logprobs should be recomputed with this dtype / quantisation"
        )
    for p in ("train", "ppo"):
        ln = by.get(p, {})
        measured, budget = ln.get("gpu_peak_gb"), ln.get("budget_gb")
        if measured is not None and budget and measured > budget:
            out.append(
                f"{p}: measured peak {measured:.2f} GB > memory_budget's {budget:.2f} GB at the same size"
            )
    return out


def _preset_fit(state: _State, problems: list[str]) -> dict:
    """The preset's full-size budget (its own sizes, not the check's) against the GPU it is sized for."""
    preset_cfg = get_config(state.preset)
    arch = state.model_config if not state.tiny else None
    if arch is None:
        try:
            arch = preset_architecture(preset_cfg.model)
        except ValueError:
            return {"preset_budget_gb": None, "gpu_gb": None, "fits": None}
    b = memory_budget(arch, preset_cfg)
    gpu = PRESET_GPU_GB.get(state.preset)
    if gpu is None and torch.cuda.is_available():
        gpu = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / GB
    peak = budget_peak_gb(b)
    fits = None if gpu is None else peak <= gpu
    if fits is False:
        problems.append(
            f"budget: preset {state.preset} needs {peak:.1f} GB by memory_budget; its GPU has {gpu} GB"
        )
    return {"preset_budget_gb": peak, "gpu_gb": gpu, "fits": fits}


# ----------------------------------------------------------------------------- small helpers


def _reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _memory() -> dict:
    """GPU memory allocated now and at its peak since `_reset_peak` (GB), or the process's peak RSS."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        return {
            "gpu_allocated_gb": torch.cuda.memory_allocated() / GB,
            "gpu_peak_gb": torch.cuda.max_memory_allocated() / GB,
        }
    return {"rss_peak_gb": peak_memory_mb() * 2**20 / GB}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _clean(x: Any) -> Any:
    """JSON-safe values: floats rounded to 6 significant digits, non-finite floats as strings."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, float):
        return float(f"{x:.6g}") if math.isfinite(x) else str(x)
    return x
