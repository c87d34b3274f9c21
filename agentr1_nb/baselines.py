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

What differs between "tool_call" and "agent" (evaluate.run_eval), and nothing else does:

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

from .config import Config
from .env import ToolEnv, answer_well_formed, check_prompt_style, parse_action
from .rewards import exact_match, f1_score, outcome_reward

NAIVE_RAG_SYSTEM = (
    "Answer the question using the passages given. Reply with the final answer only, as short as possible "
    "(a name, a date, a number, or yes / no), between <answer> and </answer>."
)

# An invented two-hop example (not from any evaluation set) that shows the reply format. Its answer is a name:
# with a year as the example answer, SmolLM2-135M answered nearly every question with a year.
FEW_SHOT_PASSAGES = (
    "Doc 1 (Title: Orla Vennick) Orla Vennick is a glass sculptor born in Tarsby. Her best-known work is "
    "the Lantern Hall.\n"
    "Doc 2 (Title: Tarsby) Tarsby is a fishing town in Hollinia, on the Wend estuary.\n"
    "Doc 3 (Title: Lantern Hall) The Lantern Hall is an exhibition space made of coloured glass."
)
FEW_SHOT_QUESTION = "In which country is the birthplace of Orla Vennick?"
FEW_SHOT_ANSWER = "<answer>Hollinia</answer>"


def parse_answer(text: str) -> tuple[str | None, bool]:
    """`(answer, answer_ok)` read exactly as the agent's env reads a final turn (`env.parse_action`).

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
            {"role": "user", "content": _user_message(FEW_SHOT_PASSAGES, FEW_SHOT_QUESTION)},
            {"role": "assistant", "content": FEW_SHOT_ANSWER},
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

    Returns one record per question in the schema of `evaluate.trajectory_record` (plus `prompt_passages`,
    the passage text the model read), so `evaluate.summarize` applies unchanged: turns = 1, searches = 0,
    passages_seen = titles of the retrieved passages whose header survived the cut, actions = [the raw
    generation].
    """
    from .tools import SearchTool

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
            pred, answer_ok = parse_answer(text)
            seen = list(dict.fromkeys(res.data.get("titles", [])))
            records.append(
                {
                    "id": ex.id,
                    "question": ex.question,
                    "gold": ex.answers,
                    "prediction": pred,
                    "em": exact_match(pred, ex.answers),
                    "f1": f1_score(pred, ex.answers),
                    # no tool calls, so the tool-syntax half of the format score holds trivially
                    "reward": outcome_reward(pred, ex.answers, answer_ok, True, cfg),
                    "format_ok": answer_ok,
                    "turns": 1,
                    "searches": 0,
                    "passages_seen": seen,
                    "supporting_found": all(t in seen for t in ex.supporting_titles),
                    "stop_reason": reason,
                    "supporting_titles": list(ex.supporting_titles),
                    "supporting_seen": [t for t in ex.supporting_titles if t in seen],
                    "actions": [text],
                    "prompt_passages": res.content,
                }
            )
    if was_training:
        model.train()
    return records


def tool_call(
    model, tokenizer, examples: list, tools: list, cfg: Config, prompt_style: str = "zero_shot"
) -> list[dict]:
    """Base Tool Call: the untrained policy, multi-turn, in the agent's `ToolEnv`, zero-shot prompt.

    The adapter is disabled for the whole evaluation (`policy.reference`), so a model with a trained
    adapter still gives the base model's numbers. Returns per-question records (`evaluate.trajectory_record`).
    `prompt_style` is the paper's "zero_shot" unless asked otherwise, whatever `cfg.prompt_style` says;
    "few_shot" adds the env's worked example episode (a 1-shot Base Tool Call: a small model that cannot
    follow the format from instructions alone sees it once).
    """
    from .evaluate import evaluate_agent
    from .policy import reference

    cfg0 = cfg.replace(prompt_style=check_prompt_style(prompt_style))
    with reference(model):
        _, records = evaluate_agent(model, tokenizer, examples, lambda: ToolEnv(tools, tokenizer, cfg0), cfg0)
    return records
