"""Prompt and few-shot texts: the agent's (`env.build_prompt_messages`) and Naive RAG's (`baselines`).

Texts only, so that a reader can see everything a model is told in one place. The worked examples are
invented (names appear in no data set) so that no evaluation question leaks into a prompt.

- Agent: `AGENT_INSTRUCTIONS` (system prompt), `AGENT_FEW_SHOT_QUESTION` + `AGENT_FEW_SHOT_EPISODE` (one
  two-hop episode: search, result, search, result, answer), and Qwen2.5's tool-block text
  (`QWEN_TOOLS_HEAD` / `QWEN_TOOLS_TAIL`) for chat templates without tool support.
- Naive RAG: `NAIVE_RAG_SYSTEM`, and one worked example `RAG_FEW_SHOT_PASSAGES` / `RAG_FEW_SHOT_QUESTION` /
  `RAG_FEW_SHOT_ANSWER`.
- `PROMPT_STYLES` ("zero_shot", "few_shot": with the worked example) and `check_prompt_style`.
"""

from __future__ import annotations

from .config import PROMPT_STYLES

# ---------------------------------------------------------------------------------------------- the agent

AGENT_INSTRUCTIONS = (
    "Answer the question by searching an encyclopedia, one tool call per turn. When you know the answer, "
    "reply with only <answer>short answer</answer>."
)
"""The agent's system prompt (followed by the tool block when the chat template does not add it)."""

AGENT_FEW_SHOT_QUESTION = "In which country was the founder of Velmora Textiles born?"
"""The question of the agent's worked example (an invented two-hop episode)."""
AGENT_FEW_SHOT_EPISODE = [
    ("call", "Velmora Textiles founder"),
    (
        "result",
        "Doc 1 (Title: Velmora Textiles) Velmora Textiles was founded by Ilse Brandt.",
    ),
    ("call", "Ilse Brandt"),
    ("result", "Doc 1 (Title: Ilse Brandt) Ilse Brandt was born in Kessary, Orlavia."),
    ("answer", "Orlavia"),
]
"""The worked episode as (kind, text): "call" = a search query, "result" = the tool's reply, "answer"."""

LAST_TURN_NOTE = "Your next turn is your last: reply with only <answer>short answer</answer>."
"""What the env tells the model before its last turn when `Config.last_turn_note` is on."""

REPEAT_SEARCH_NOTE = (
    "You have seen these passages before. Search for a name in them that you have not searched."
)
"""What the env tells the model after a search that showed nothing new when `Config.repeat_search_note` is
on."""

QWEN_TOOLS_HEAD = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
QWEN_TOOLS_TAIL = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
    "<args-json-object>}\n</tool_call>"
)
"""Qwen2.5's chat template writes HEAD, one JSON schema per line, then TAIL into the system prompt;
`env.tools_system_text` does the same for templates without tool support, byte for byte."""

# ---------------------------------------------------------------------------------------------- Naive RAG

NAIVE_RAG_SYSTEM = (
    "Answer the question using the passages given. Reply with the final answer only, as short as possible "
    "(a name, a date, a number, or yes / no), between <answer> and </answer>."
)

# An invented two-hop example (not from any evaluation set) that shows the reply format. Its answer is a name:
# with a year as the example answer, SmolLM2-135M answered nearly every question with a year.
RAG_FEW_SHOT_PASSAGES = (
    "Doc 1 (Title: Orla Vennick) Orla Vennick is a glass sculptor born in Tarsby. Her best-known work is "
    "the Lantern Hall.\n"
    "Doc 2 (Title: Tarsby) Tarsby is a fishing town in Hollinia, on the Wend estuary.\n"
    "Doc 3 (Title: Lantern Hall) The Lantern Hall is an exhibition space made of coloured glass."
)
RAG_FEW_SHOT_QUESTION = "In which country is the birthplace of Orla Vennick?"
RAG_FEW_SHOT_ANSWER = "<answer>Hollinia</answer>"

# ---------------------------------------------------------------------------------------------- styles


def check_prompt_style(style: str) -> str:
    """`style` when it is one of `PROMPT_STYLES` (the agent's and both baselines' prompts), else a ValueError."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt_style {style!r}; use {' or '.join(repr(s) for s in PROMPT_STYLES)}")
    return style
