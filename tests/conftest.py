"""Shared fixtures: the real CPU-default tokenizer, a tiny random model with its vocabulary, shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from agentr1_nb.config import Config, default_data_dir


@pytest.fixture(scope="session")
def cpu_default_dir() -> Path:
    from agentr1_nb.policy import cpu_default_model_dir

    return cpu_default_model_dir(Config().cache_dir)


@pytest.fixture(scope="session")
def tokenizer(cpu_default_dir):
    """The real SmolLM2 tokenizer (ChatML template), left padding."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cpu_default_dir)
    tok.padding_side = "left"
    return tok


def make_tiny_model(vocab_size: int, seed: int = 0, hidden: int = 64, layers: int = 2, dtype=torch.float32):
    """A tiny random Llama (same architecture family as SmolLM2) for fast unit tests."""
    from transformers import LlamaForCausalLM

    from agentr1_nb.policy import tiny_model_config

    torch.manual_seed(seed)
    cfg = tiny_model_config(
        vocab_size,
        "llama",
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        max_position_embeddings=4096,
    )
    return LlamaForCausalLM(cfg).to(dtype).eval()


TINY_RUN = [
    "prompt_style=zero_shot",
    "world_entities=20",
    "world_questions=40",
    "top_k=2",
    "max_turns=2",
    "max_tokens_per_turn=6",
    "questions_per_step=2",
    "group_size=2",
    "lr=1e-3",
    "compute_dtype=fp32",
]
"""Overrides of a training run small enough for a test: 2 questions x 2 samples, 2 turns of 6 tokens, a
20-person world; each test file adds its batch sizes."""


def merge_overrides(*groups: list[str]) -> list[str]:
    """`key=value` lists as one, a later value replacing an earlier one: for command lines, which refuse a
    key given twice with two values."""
    merged: dict[str, str] = {}
    for group in groups:
        for item in group:
            key, _, value = item.partition("=")
            merged.pop(key, None)
            merged[key] = value
    return [f"{k}={v}" for k, v in merged.items()]


LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_lora_policy(
    tokenizer, seed: int = 0, hidden: int = 64, layers: int = 2, top_layers: int | None = None
):
    """`make_tiny_model` with the tokenizer's vocabulary and a fresh rank-4 LoRA on every linear layer (of
    the top `top_layers` decoder layers only, when given: as `lora_top_layers` does)."""
    from peft import LoraConfig, get_peft_model

    base = make_tiny_model(len(tokenizer), seed=seed, hidden=hidden, layers=layers)
    base.config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    if top_layers is None:
        lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    else:
        top = list(range(layers - top_layers, layers))
        lora = LoraConfig(
            r=4, lora_alpha=8, target_modules=LINEARS, layers_to_transform=top, task_type="CAUSAL_LM"
        )
    return get_peft_model(base, lora)


@pytest.fixture
def tiny_model(tokenizer):
    """A tiny random Llama with the SmolLM2 vocabulary, wrapped with a LoRA adapter (fp32)."""
    from peft import LoraConfig, get_peft_model

    base = make_tiny_model(len(tokenizer))
    base.config.pad_token_id = tokenizer.pad_token_id
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(base, lora)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real dataset samples (../shared/data or $AGENTR1_DATA); tests using it skip when absent."""
    path = Path(os.environ.get("AGENTR1_DATA", default_data_dir()))
    if not path.is_dir():
        pytest.skip(f"shared data directory {path} not found")
    return path
