"""Actions: parsing a turn of model output into a tool call or an answer, and writing a tool call.

`parse_action(text)` finds the answer or the ``<tool_call>`` blocks of one turn and never raises: every
problem of a call (empty, invalid JSON, not an object, no name, arguments not an object, extra keys) is
kept in `ParsedCall.error` for the env to report to the model. `validate_call` checks a parsed call against
the known tools and their JSON schemas; `answer_well_formed` is the answer-format check of the paper's
format score. `format_call` writes a call exactly as Qwen2.5 does (prompts, few-shot examples and the SFT
demonstrations use it, so they match what the parser reads). Parsing is linear in the text's length.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import jsonschema

from .tools import Tool

STOP_STRINGS = ("</tool_call>", "</answer>")
"""The rollout stops a turn at these strings (and at eos)."""

MAX_ANSWER_CHARS = 100
"""A well-formed answer is shorter than this (the answer-format check of the paper's format score)."""


def format_call(name: str, arguments: dict) -> str:
    """A tool call exactly as Qwen2.5 writes one."""
    return (
        "<tool_call>\n"
        + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
        + "\n</tool_call>"
    )


@dataclass
class ParsedCall:
    """One ``<tool_call>`` block: its raw text and, when the JSON is good, name and arguments."""

    raw: str
    name: str | None = None
    arguments: dict | None = None
    error: str | None = None
    closed: bool = True


@dataclass
class ParsedAction:
    kind: str
    """"tool_call" | "answer" | "no_action" | "empty"."""
    calls: list[ParsedCall] = field(default_factory=list)
    answer: str | None = None
    answer_closed: bool = False
    ignored_answer: bool = False
    """An answer came after a tool call in the same turn (the call wins)."""


CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_ANS_OPEN, _ANS_CLOSE = "<answer>", "</answer>"
_FENCE = "```"


def strip_fence(body: str) -> str:
    """The inside of a Markdown code fence (```` ```json ... ``` ````) around a whole stripped body, else the
    body. String methods only: the backtracking regex this replaces took seconds on a fence followed by a
    few thousand spaces (issue #14), and every model output must parse in time linear in its length."""
    if len(body) >= 2 * len(_FENCE) and body.startswith(_FENCE) and body.endswith(_FENCE):
        inner = body[len(_FENCE) : -len(_FENCE)]
        return inner.removeprefix("json").strip()
    return body


def parse_call_json(raw: str) -> ParsedCall:
    """Parse the JSON inside one ``<tool_call>`` block. Never raises; problems go to `.error`."""
    body = strip_fence(raw.strip())
    if not body:
        return ParsedCall(raw, error="the tool call is empty")
    try:
        obj, end = json.JSONDecoder().raw_decode(body)
    except json.JSONDecodeError as e:
        hint = " (use double quotes for keys and strings)" if "'" in body else ""
        return ParsedCall(raw, error=f"invalid JSON in tool call{hint}: {e.msg} at position {e.pos}")
    except (RecursionError, ValueError) as e:
        return ParsedCall(raw, error=f"invalid JSON in tool call: {type(e).__name__}")
    if body[end:].strip():
        return ParsedCall(raw, error="extra text after the JSON object in the tool call")
    if not isinstance(obj, dict):
        return ParsedCall(raw, error='the tool call must be a JSON object {"name": ..., "arguments": {...}}')
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return ParsedCall(raw, error='the tool call needs a "name" string')
    if "arguments" not in obj:
        return ParsedCall(raw, name=name, error='the tool call needs an "arguments" object')
    args = obj["arguments"]
    if isinstance(args, str):  # OpenAI style: arguments as a JSON string
        try:
            args = json.loads(args)
        except (ValueError, RecursionError):
            pass
    if not isinstance(args, dict):
        return ParsedCall(raw, name=name, error='"arguments" must be a JSON object')
    extra = sorted(set(obj) - {"name", "arguments"})
    if extra:
        return ParsedCall(raw, name=name, error=f"unexpected keys {extra} in the tool call")
    return ParsedCall(raw, name=name, arguments=args)


def parse_action(text: str) -> ParsedAction:
    """Find the answer or the tool calls in one turn's text. Never raises.

    Calls are ``<tool_call>...</tool_call>`` blocks; an unclosed last block (the turn was cut) is parsed too.
    """
    if not text.strip():
        return ParsedAction("empty")
    a = text.find(_ANS_OPEN)
    c = text.find(CALL_OPEN)
    if a >= 0 and (c < 0 or a < c):
        start = a + len(_ANS_OPEN)
        end = text.find(_ANS_CLOSE, start)
        if end < 0:
            return ParsedAction("answer", answer=text[start:].strip(), answer_closed=False)
        return ParsedAction("answer", answer=text[start:end].strip(), answer_closed=True)
    if c < 0:
        return ParsedAction("no_action")
    calls = []
    pos = c
    while pos >= 0:
        start = pos + len(CALL_OPEN)
        end = text.find(CALL_CLOSE, start)
        if end < 0:
            call = parse_call_json(text[start:])
            call.closed = False
            calls.append(call)
            break
        calls.append(parse_call_json(text[start:end]))
        pos = text.find(CALL_OPEN, end + len(CALL_CLOSE))
    return ParsedAction("tool_call", calls=calls, ignored_answer=a > c)


def validate_call(call: ParsedCall, tools: dict[str, Tool]) -> str | None:
    """The error of a parsed call against the known tools and their schemas, or None when it is valid."""
    if call.error:
        return call.error
    if call.name not in tools:
        return f"unknown tool {call.name!r}; available tools: {', '.join(tools) or 'none'}"
    try:
        jsonschema.validate(call.arguments, tools[call.name].parameters)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.path)
        return f"invalid arguments for {call.name}: {e.message}" + (f" (at {where})" if where else "")
    except Exception as e:  # a broken schema or pathological arguments
        return f"invalid arguments for {call.name}: {type(e).__name__}"
    return None


def answer_well_formed(answer: str | None, closed: bool) -> bool:
    """The answer-format check: a closed <answer> tag with a short, non-empty answer and no markup."""
    return (
        answer is not None
        and closed
        and 0 < len(answer) < MAX_ANSWER_CHARS
        and re.search(r"</?[A-Za-z_]+>", answer) is None
    )
