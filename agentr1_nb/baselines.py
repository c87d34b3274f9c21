"""The paper's two baselines: Naive RAG and Base Tool Call.

Naive RAG (`naive_rag`)
    Retrieve the top `cfg.top_k` passages for the question once, put them in the prompt, and generate the
    answer in one greedy turn. The passages are formatted and cut exactly as the search tool returns them
    (`tools.SearchTool`: ``Doc i (Title: X) text`` lines, `cfg.max_tool_chars` characters in all), so the
    only difference from the agent's first search is who writes the query: here it is the question itself.

Base Tool Call (`tool_call`)
    The untrained policy (LoRA adapter disabled, i.e. the base model) in the same multi-turn `env.ToolEnv`
    as the agent: the same search tool, retriever, `top_k`, `max_tool_chars`, `max_turns`,
    `max_tokens_per_turn` and greedy decoding. Tools reach the model through its chat template
    (`apply_chat_template(tools=...)`) where the template supports them (Qwen2.5); for templates without
    tool support (SmolLM2) the env writes the same schema into the system prompt.

What differs between "tool_call" and "agent" (`runs.run_eval`), and nothing else does:

    =================  ================================  ==========================================
                       tool_call                         agent
    =================  ================================  ==========================================
    weights            base model (adapter disabled)     base model + the trained LoRA adapter
    prompt             zero-shot (instructions + tool    the prompt style the adapter was trained
                       schema only), as in the paper,    with (`prompt_style` of the run's
                       unless `prompt_style="few_shot"`  config.json when found beside the adapter,
                                                         else `cfg.prompt_style`)
    =================  ================================  ==========================================

Naive RAG's prompt follows `cfg.prompt_style` (the `cpu_demo` preset: zero-shot). SmolLM2-135M follows
neither baseline's answer format from instructions alone, so notebook 06 also reports both baselines with
one worked example ("1-shot"): measured on the 100 generated questions, Naive RAG scores EM 0.00 zero-shot
and 0.16 with the example.

Departures from the paper: the paper's Naive RAG retrieves with bge-large-en-v1.5 over Wikipedia abstracts;
here it uses whatever `cfg.retriever` builds over the evaluation corpus (BM25 by default). The answer is
parsed from ``<answer>...</answer>`` for every method; a generation without the tags scores 0, as an agent
episode without an answer does.
"""

from __future__ import annotations

import torch

from .actions import answer_well_formed, parse_action
from .config import Config
from .env import ToolEnv
from .evaluate import evaluate_agent, trajectory_record
from .policy import reference
from .prompts import (
    NAIVE_RAG_SYSTEM,
    RAG_FEW_SHOT_ANSWER,
    RAG_FEW_SHOT_PASSAGES,
    RAG_FEW_SHOT_QUESTION,
    check_prompt_style,
)
from .rewards import score_trajectory
from .rollout import Trajectory
from .tools import SearchTool


def parse_answer(text: str) -> tuple[str | None, bool]:
    """`(answer, answer_ok)` read exactly as the agent's env reads a final turn (`actions.parse_action`).

    The answer is the text after ``<answer>`` (up to ``</answer>`` when present; an unclosed answer still
    counts as the prediction, as in the env) or None; `answer_ok` is the env's answer-format check.
    """
    parsed = parse_action(text)
    if parsed.kind != "answer":
        return None, False
    return parsed.answer, answer_well_formed(parsed.answer, parsed.answer_closed)


def _user_message(passages: str, question: str) -> str:
    return f"Passages:\n{passages}\n\nQuestion: {question}"


def naive_rag_messages(question: str, passages: str, cfg: Config) -> list[dict]:
    """Chat messages of one Naive RAG prompt (a worked example first when `cfg.prompt_style == "few_shot"`)."""
    msgs = [{"role": "system", "content": NAIVE_RAG_SYSTEM}]
    if check_prompt_style(cfg.prompt_style) == "few_shot":
        msgs += [
            {"role": "user", "content": _user_message(RAG_FEW_SHOT_PASSAGES, RAG_FEW_SHOT_QUESTION)},
            {"role": "assistant", "content": RAG_FEW_SHOT_ANSWER},
        ]
    msgs.append({"role": "user", "content": _user_message(passages, question)})
    return msgs


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def generate_batch(model, tokenizer, prompts: list[str], cfg: Config) -> tuple[list[str], list[str]]:
    """Greedy generation for a batch of rendered prompts (left padding), stopping at </answer> or eos.

    Returns `(texts, stop_reasons)` with stop reason "answer", "eos" or "max_tokens".
    """
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(_device(model))
    out = model.generate(
        **enc,
        max_new_tokens=cfg.max_tokens_per_turn,
        do_sample=False,
        stop_strings=["</answer>"],
        tokenizer=tokenizer,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    new = out[:, enc["input_ids"].shape[1] :]  # (B, T_new)
    texts, reasons = [], []
    for row in new.tolist():
        text = tokenizer.decode(row, skip_special_tokens=True)
        if "</answer>" in text:
            text = text[: text.index("</answer>") + len("</answer>")]
            reasons.append("answer")
        elif tokenizer.eos_token_id in row:
            reasons.append("eos")
        else:
            reasons.append("max_tokens")
        texts.append(text)
    return texts, reasons


def naive_rag(model, tokenizer, examples: list, retriever, cfg: Config) -> list[dict]:
    """Naive RAG over `examples`: one retrieval with the question, one greedy answer per question.

    Each answer is scored and recorded exactly as an agent episode is (`naive_rag_episode`, then
    `rewards.score_trajectory` and `evaluate.trajectory_record`), plus `prompt_passages`, the passage text the
    model read; so `evaluate.summarize` applies unchanged: turns = 1, searches = 0, passages_seen = titles
    of the retrieved passages whose header survived the cut, actions = [the raw generation].
    """
    search = SearchTool(retriever, k=cfg.top_k, max_chars=cfg.max_tool_chars)
    was_training = model.training
    model.eval()
    records = []
    for i in range(0, len(examples), cfg.eval_batch_size):
        batch = examples[i : i + cfg.eval_batch_size]
        results = [search.execute({"query": ex.question}) for ex in batch]
        prompts = [
            tokenizer.apply_chat_template(
                naive_rag_messages(ex.question, res.content, cfg), add_generation_prompt=True, tokenize=False
            )
            for ex, res in zip(batch, results)
        ]
        texts, reasons = generate_batch(model, tokenizer, prompts, cfg)
        for ex, res, text, reason in zip(batch, results, texts, reasons):
            traj = naive_rag_episode(ex, text, res.data.get("titles", []), reason)
            score_trajectory(traj, cfg)
            records.append({**trajectory_record(traj), "prompt_passages": res.content})
    if was_training:
        model.train()
    return records


def naive_rag_episode(example, text: str, titles: list[str], stop_reason: str) -> Trajectory:
    """A Naive RAG answer as a one-turn episode, so that it is scored and recorded by the agent's code.

    No tool was called, so the tool-syntax half of the format score holds trivially (`tool_ok`); the
    passages the model read are the turn's `titles`. The token fields stay empty: nothing is trained on it.
    """
    answer, answer_ok = parse_answer(text)
    return Trajectory(
        example=example,
        group=0,
        prompt_len=0,
        token_ids=[],
        action_mask=[],
        logprobs=[],
        turns=[{"action_text": text, "observation": "", "reward": 0.0, "info": {"titles": list(titles)}}],
        answer=answer,
        answer_ok=answer_ok,
        tool_ok=True,
        num_searches=0,
        stop_reason=stop_reason,
    )


def tool_call(
    model,
    tokenizer,
    examples: list,
    tools: list,
    cfg: Config,
    prompt_style: str = "zero_shot",
    desc: str = "Base Tool Call",
) -> list[dict]:
    """Base Tool Call: the untrained policy, multi-turn, in the agent's `ToolEnv`, zero-shot prompt.

    The adapter is disabled for the whole evaluation (`policy.reference`), so a model with a trained
    adapter still gives the base model's numbers. Returns per-question records (`evaluate.trajectory_record`).
    `prompt_style` is the paper's "zero_shot" unless asked otherwise, whatever `cfg.prompt_style` says;
    "few_shot" adds the env's worked example episode (a 1-shot Base Tool Call: a small model that cannot
    follow the format from instructions alone sees it once). `desc` labels the progress bar.
    """
    cfg0 = cfg.replace(prompt_style=check_prompt_style(prompt_style))
    with reference(model):
        _, records = evaluate_agent(
            model, tokenizer, examples, lambda: ToolEnv(tools, tokenizer, cfg0), cfg0, desc=desc
        )
    return records
