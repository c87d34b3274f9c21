"""Tools: what the agent can do. `Tool.execute(args)` performs the action and reports what happened.

A tool knows nothing about the episode, the tokenizer or rewards: it returns a `ToolResult` (raw text plus
structured data). What the result *means* for the agent and the task (observation tokens, process reward,
done) is decided by `env.ToolEnv`.

Tool schemas use the OpenAI / Qwen function format, so the same schema can be handed to a chat template
(`apply_chat_template(..., tools=[tool.schema()])`) and used to validate the model's arguments.
"""

from __future__ import annotations

import ast
import math
import operator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ToolResult:
    """What happened when a tool ran."""

    ok: bool
    content: str
    """Raw text of the result (what the model will read, before the env wraps it)."""
    data: dict = field(default_factory=dict)
    """Structured result for the env, e.g. {"titles": [...], "passages": [...]} for a search."""
    error: str | None = None


class Tool:
    """A named action with a JSON-schema for its arguments."""

    name: str = ""
    description: str = ""
    parameters: dict = {"type": "object", "properties": {}}

    def execute(self, args: dict) -> ToolResult:
        raise NotImplementedError

    def schema(self) -> dict:
        """The function schema in OpenAI / Qwen format (what chat templates take as `tools=`)."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


def cut(text: str, max_chars: int) -> str:
    """Cut `text` to at most `max_chars` characters, marking the cut with '...'."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    if max_chars <= 3:
        return text[:max_chars]
    return text[: max_chars - 3] + "..."


class SearchTool(Tool):
    """Search the knowledge base: top-k passages with their titles, cut to `max_chars` characters in all.

    The content follows Search-R1's layout, one passage per line: ``Doc 1 (Title: X) text``. `data["titles"]`
    lists only the titles whose passage header survived the cut (the ones the model can actually see);
    `data["all_titles"]` lists every retrieved title.
    """

    name = "search"
    description = "Search an encyclopedia for passages."
    parameters = {
        "type": "object",
        "properties": {"query": {"type": "string", "description": "Search query.", "minLength": 1}},
        "required": ["query"],
        "additionalProperties": False,
    }

    def __init__(self, retriever: Any, k: int = 3, max_chars: int = 2048):
        self.retriever = retriever
        self.k = k
        self.max_chars = max_chars

    def execute(self, args: dict) -> ToolResult:
        query = str(args.get("query", "")).strip()
        if not query:
            return ToolResult(ok=False, content="Error: the query is empty.", error="empty query")
        hits = list(self.retriever.search(query, self.k))[: self.k]
        if not hits:
            return ToolResult(ok=True, content="No passages found.", data={"titles": [], "passages": []})
        lines = [f"Doc {i + 1} (Title: {h.passage.title}) {h.passage.text}" for i, h in enumerate(hits)]
        full = "\n".join(lines)
        content = cut(full, self.max_chars)
        visible, pos = [], 0
        for h, line in zip(hits, lines):
            header = line[: line.index(")") + 1]
            if pos + len(header) <= len(content):
                visible.append(h.passage.title)
            pos += len(line) + 1
        return ToolResult(
            ok=True,
            content=content,
            data={
                "titles": visible,
                "all_titles": [h.passage.title for h in hits],
                "passages": [h.passage.id for h in hits],
                "scores": [float(h.score) for h in hits],
                "truncated": len(content) < len(full),
            },
        )


_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class CalculatorTool(Tool):
    """Safe arithmetic (+ - * / // % ** and parentheses) by walking the AST; no `eval`.

    It exists to show the abstraction is general; training does not use it.
    """

    name = "calculator"
    description = "Evaluate an arithmetic expression, e.g. (3 + 4) * 2 / 7."
    parameters = {
        "type": "object",
        "properties": {
            "expression": {"type": "string", "description": "Arithmetic expression.", "minLength": 1}
        },
        "required": ["expression"],
        "additionalProperties": False,
    }
    max_len = 200
    max_exponent = 100
    max_magnitude = 1e100

    def execute(self, args: dict) -> ToolResult:
        expr = str(args.get("expression", "")).strip()
        if len(expr) > self.max_len:
            return self._error(f"expression longer than {self.max_len} characters")
        try:
            value = self._eval(ast.parse(expr, mode="eval").body)
        except ZeroDivisionError:
            return self._error("division by zero")
        except (SyntaxError, ValueError, TypeError, OverflowError, RecursionError, MemoryError) as e:
            return self._error(str(e) or type(e).__name__)
        if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
            value = int(value)
        return ToolResult(ok=True, content=str(value), data={"value": value})

    def _error(self, msg: str) -> ToolResult:
        return ToolResult(ok=False, content=f"Error: {msg}.", error=msg)

    def _eval(self, node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            # `1e999` parses as inf: a number out of range is an error result, never "inf" or "nan"
            if not math.isfinite(node.value) or abs(node.value) > self.max_magnitude:
                raise ValueError(f"number out of range (|x| <= {self.max_magnitude:g})")
            return node.value
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](self._eval(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left, right = self._eval(node.left), self._eval(node.right)
            if isinstance(node.op, ast.Pow) and (abs(right) > self.max_exponent or abs(left) > 1e6):
                raise ValueError(f"exponent or base too large (|exponent| <= {self.max_exponent})")
            value = _BINOPS[type(node.op)](left, right)
            if isinstance(value, complex) or (
                isinstance(value, float) and not math.isfinite(value) or abs(value) > self.max_magnitude
            ):
                raise ValueError(f"result out of range (|x| <= {self.max_magnitude:g})")
            return value
        raise ValueError(f"unsupported expression element {type(node).__name__}; use numbers and + - * / ( )")


def make_tools(cfg: Any, retriever: Any) -> list[Tool]:
    """The tools of an episode: the search tool over `retriever` (k = cfg.top_k, cut to cfg.max_tool_chars)."""
    return [SearchTool(retriever, k=cfg.top_k, max_chars=cfg.max_tool_chars)]
