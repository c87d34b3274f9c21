"""ToolEnv: the orchestrator of one episode of the extended MDP.

State = the whole interaction history (`env.messages`, and the token stream the rollout keeps). An action is
the token sequence the policy sampled in one turn. `step(action)` parses it, validates and executes tool
calls (`Tool.execute` says *what happened*), and interprets the result (*what it means*): observation tokens,
a process reward, done.

`build_task(cfg, tokenizer)` is the one env factory: it loads the questions and passages of `cfg.dataset`,
builds the retriever and the tools once, and returns a `Task` whose `make_env()` gives a fresh `ToolEnv` per
episode. Prompt texts live in `prompts.py`.

Parsing the model's text into actions (and writing a tool call) lives in `actions.py`.

Formats (Qwen's native function calling):
- tool call: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``; final answer ``<answer>...</answer>``.
- The tools are offered through the tokenizer's chat template (`tools=`) when the template supports them
  (Qwen); otherwise through a system prompt of our own with the very text Qwen2.5's template produces.
- Tool results go back as the template's tool turn (role "tool"; Qwen renders ``<|im_start|>user\\n
  <tool_response>\\n...\\n</tool_response><|im_end|>``); without template support, as a user turn wrapped in
  ``<tool_response>`` by us. Messages that are not tool results (e.g. "no tool call found") are user turns.

Token-exact rule: the model's action tokens are never decoded and re-tokenised into the trajectory (that
misaligns masks and makes the KL explode, Search-R1 PR #21). The env only *appends* `obs_ids`: the string
that closes the assistant turn (unless the action already ended with eos), the tool turn, and the next
assistant header, all derived from the chat template by rendering the history with and without the new
messages. Tool content is tokenised with special tokens split, so a passage containing ``<|im_end|>`` cannot
end a turn, and nothing the tool returns is ever parsed as an action.

Episode rules (documented choices):
- ``<answer>`` ends the episode. When a turn holds both an answer and a tool call, whichever comes first
  wins (the rollout stops at ``</tool_call>``, so an answer after a call is rarely generated).
- Only the first `cfg.max_calls_per_turn` calls of a turn run; extra calls get a note and a format penalty.
- Malformed actions (empty, neither call nor answer, cut before a call or answer, invalid JSON, unknown tool,
  arguments failing the schema, extra calls) never raise: they give an error observation, reward
  `cfg.format_penalty` and set `env.tool_ok = False` (extra calls only penalise: the calls were valid).
- A tool that raises, exceeds `cfg.tool_timeout_s` or breaks `TOOL_CONTRACT` (a result whose `data` is not
  a dict, or whose titles are not a list of strings) is reported to the model as an error but not
  penalised: it is the tool's failure, not the policy's (a broken contract is also warned about).
- `StepResult.info` is a `StepInfo` (a TypedDict: its keys and what each means are declared there).
- The env counts turns: when turn `cfg.max_turns` ends without an answer it returns done=True with
  info["kind"] = "max_turns" (info["action_kind"] keeps what the action was). Calls in that last turn are
  validated (they count for `tool_ok`) but not executed, since the model could never read the result.
  With `cfg.last_turn_note`, the observation before that last turn ends with a user message saying so
  (`prompts.LAST_TURN_NOTE`).
- Process reward (`cfg.use_process_reward`): `cfg.process_reward_weight` for each supporting passage (title in
  `example.supporting_titles`) that a search shows for the first time in the episode. Only titles whose
  header survived the character cut count.
- Repeated searches: a search that ran and showed no passage title the episode had not seen before (the same
  query again, or one that finds the same passages) is a "repeat" (`CallRecord["repeat"]`); each adds
  `cfg.repeat_search_penalty` (<= 0) to the step reward, and with `cfg.repeat_search_note` the observation
  ends with a user message telling the model so (`prompts.REPEAT_SEARCH_NOTE`), before the last-turn note.
"""

from __future__ import annotations

import json
import re
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypedDict

from .actions import (
    CALL_CLOSE,
    STOP_STRINGS,
    ParsedAction,
    ParsedCall,
    answer_well_formed,
    format_call,
    parse_action,
    validate_call,
)
from .config import Config
from .data import Passage, QAExample
from .prompts import (
    AGENT_FEW_SHOT_EPISODE,
    AGENT_FEW_SHOT_QUESTION,
    AGENT_INSTRUCTIONS,
    LAST_TURN_NOTE,
    QWEN_TOOLS_HEAD,
    QWEN_TOOLS_TAIL,
    REPEAT_SEARCH_NOTE,
    check_prompt_style,
)
from .retrieval import Retriever, build_retriever
from .tools import Tool, ToolResult, cut, make_tools
from .world import load_corpus, load_examples

_ACT = "@@AR1_ACTION@@"
_SLOT = "@@AR1_SLOT{}@@"
_SLOT_RE = re.compile(r"@@AR1_SLOT(\d+)@@")


# ---------------------------------------------------------------------------------------------- prompt
def template_supports_tools(tokenizer) -> bool:
    """True when the tokenizer's chat template renders a `tools=` list (Qwen2.5 does, SmolLM2 does not)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("tool_use") or template.get("default") or ""
    return isinstance(template, str) and "tools" in template


def tools_system_text(tools: list[Tool]) -> str:
    """The tool description Qwen2.5's chat template appends to the system prompt, byte for byte."""
    lines = "".join("\n" + json.dumps(t.schema(), ensure_ascii=False) for t in tools)
    return QWEN_TOOLS_HEAD + lines + QWEN_TOOLS_TAIL


def tool_turn(content: str, native: bool) -> dict:
    """The message that carries a tool result: role "tool" for templates that know it, else a wrapped user turn."""
    if native:
        return {"role": "tool", "content": content}
    return {"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"}


def build_prompt_messages(example: Any, tools: list[Tool], cfg: Any, tokenizer: Any = None) -> list[dict]:
    """Chat messages of the prompt: system instructions (+ tool block), optional worked example, the question.

    With a tools-aware template the tool block is left to the template (pass `tools=[t.schema() ...]` to
    `apply_chat_template`); otherwise it is written into the system prompt here. `cfg.prompt_style` is
    "zero_shot" or "few_shot" (one invented worked episode as prior messages, so a small model sees the exact
    turn structure it has to produce).
    """
    native = tokenizer is not None and template_supports_tools(tokenizer)
    system = AGENT_INSTRUCTIONS if native else AGENT_INSTRUCTIONS + tools_system_text(tools)
    messages = [{"role": "system", "content": system}]
    if check_prompt_style(getattr(cfg, "prompt_style", "zero_shot")) == "few_shot":
        search = tools[0].name if tools else "search"
        messages.append({"role": "user", "content": f"Question: {AGENT_FEW_SHOT_QUESTION}"})
        for kind, text in AGENT_FEW_SHOT_EPISODE:
            if kind == "call":
                messages.append({"role": "assistant", "content": format_call(search, {"query": text})})
            elif kind == "result":
                messages.append(tool_turn(text, native))
            else:
                messages.append({"role": "assistant", "content": f"<answer>{text}</answer>"})
    messages.append({"role": "user", "content": f"Question: {example.question}"})
    return messages


def render_chat(
    tokenizer, messages: list[dict], tools: list[dict] | None = None, add_generation_prompt=False
) -> str:
    """Render messages with the tokenizer's chat template (ChatML when it has none or the template fails)."""
    if getattr(tokenizer, "chat_template", None):
        kw = {"tools": tools} if tools else {}
        try:
            return tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kw
            )
        except Exception as e:  # a template that rejects our roles: fall back to ChatML
            warnings.warn(f"chat template failed ({e}); using ChatML", stacklevel=2)
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def encode_untrusted(tokenizer, text: str) -> list[int]:
    """Tokenise text that must not produce special tokens (tool output, questions): specials are split."""
    special = set(tokenizer.all_special_ids)
    try:
        ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    except TypeError:
        ids = None
    if ids is None or special.intersection(ids):
        # the tokenizer ignored split_special_tokens: break each special string with a zero-width space
        for s in tokenizer.all_special_tokens:
            text = text.replace(s, s[:1] + "\u200b" + s[1:])
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return list(ids)


def encode_with_slots(tokenizer, template_text: str, slots: list[str]) -> list[int]:
    """Tokenise a rendered string whose untrusted parts are `_SLOT` markers filled from `slots`.

    The scaffolding between slots (role headers, <|im_end|>) is tokenised normally, so its special tokens
    are real; the slot contents go through `encode_untrusted`.
    """
    ids: list[int] = []
    pos = 0
    for m in _SLOT_RE.finditer(template_text):
        if m.start() > pos:
            ids += tokenizer(template_text[pos : m.start()], add_special_tokens=False)["input_ids"]
        content = slots[int(m.group(1))]
        if content:
            ids += encode_untrusted(tokenizer, content)
        pos = m.end()
    if pos < len(template_text):
        ids += tokenizer(template_text[pos:], add_special_tokens=False)["input_ids"]
    return ids


def _norm_title(t: str) -> str:
    return " ".join(str(t).lower().split())


# ---------------------------------------------------------------------------------------------- env
class _CallRecordKeys(TypedDict):
    """The keys every `CallRecord` has."""

    tool: str | None
    args: dict | None
    error: str | None
    """Why the call was refused (parse / schema) or failed (tool error, timeout); None when it ran well."""
    titles: list[str]
    """Passage titles the tool showed (the search tool's `data["titles"]`)."""
    new_supporting: list[str]
    """Those titles that are supporting passages seen for the first time in the episode."""


class CallRecord(_CallRecordKeys, total=False):
    """One tool call of a turn, as `StepInfo["calls"]` lists them (`ok` and `repeat` only when the call was
    executed)."""

    ok: bool
    """`ToolResult.ok`."""
    repeat: bool
    """The call ran well and showed no title the episode had not seen (`cfg.repeat_search_penalty`)."""


class _StepInfoKeys(TypedDict):
    """The keys every `StepInfo` has."""

    kind: str
    """"answer" | "tool_call" | "no_action" | "empty" | "too_long" | "max_turns" | "after_done"."""
    tool: str | None
    """The first call's tool name (None when the turn made no call)."""
    args: dict | None
    """The first call's arguments."""
    error: str | None
    """The errors of the turn, joined with "; " (None when there was none)."""
    new_supporting: list[str]
    titles: list[str]
    reward: float
    """The step's reward (= `StepResult.reward`)."""
    calls: list[CallRecord]
    ignored_calls: int
    """Calls past `cfg.max_calls_per_turn`, not run."""


class StepInfo(_StepInfoKeys, total=False):
    """What `ToolEnv.step` reports besides the observation and the reward (`StepResult.info`).

    The rollout copies it into each turn of a trajectory; evaluation, viz and the notebooks read it. The keys
    of `_StepInfoKeys` are always there; the ones below only where they apply.
    """

    cut: bool
    """The turn hit `cfg.max_tokens_per_turn` before a stop string or eos."""
    ended_eos: bool
    """The action's last token was an end-of-turn token."""
    answer: str | None
    """The answer text, when the turn answered."""
    ignored_answer: bool
    """A tool-call turn also held an answer after the call (the call wins)."""
    action_kind: str
    """With kind "max_turns": what the last action was."""
    obs_text: str
    """The observation as rendered text, scaffolding included (when the episode goes on)."""


@dataclass
class StepResult:
    observation: str
    """What the model is told (tool response or error message); "" when done."""
    obs_ids: list[int]
    """Tokens to append after the action: closing of the assistant turn, the tool turn, the next assistant
    header. Empty when done."""
    reward: float
    """Process reward of this step (format penalty included); the outcome reward is computed elsewhere."""
    done: bool
    info: StepInfo


class ToolEnv:
    """One episode: owns the tools (shared objects) and the episode state. See the module docstring."""

    def __init__(self, tools: list[Tool], tokenizer: Any, cfg: Any):
        self.tool_list = list(tools)
        self.tools = {t.name: t for t in self.tool_list}
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.native_tools = template_supports_tools(tokenizer)
        self.schemas = [t.schema() for t in self.tool_list] if self.native_tools else None
        self._pieces: dict[tuple, tuple[str, str]] = {}
        # a turn ends at eos or at the template's end-of-turn token (Qwen: <|im_end|> while eos may differ)
        eos = getattr(tokenizer, "eos_token_id", None)
        self.eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
        closing = self._turn_pieces([{"role": "user", "content": "x"}], None)
        for tok_str in getattr(tokenizer, "all_special_tokens", []):
            if closing.startswith(tok_str):
                self.eos_ids.add(tokenizer.convert_tokens_to_ids(tok_str))
        self.example = None
        self._clear()

    def _clear(self) -> None:
        self.messages: list[dict] = []
        self.turns: list[dict] = []
        self.answer: str | None = None
        self.answer_ok = False
        self.tool_ok = True
        self.num_searches = 0
        self.done = False
        self.prompt_ids: list[int] = []
        self._seen_titles: set[str] = set()

    # ------------------------------------------------------------------ reset
    def reset(self, example: Any) -> list[int]:
        """Start an episode: the prompt token ids (chat template with the generation prompt)."""
        self._clear()
        self.example = example
        self.messages = build_prompt_messages(example, self.tool_list, self.cfg, self.tokenizer)
        self._supporting = {_norm_title(t) for t in (getattr(example, "supporting_titles", None) or [])}
        # the question is untrusted text: render it through a slot so it cannot inject special tokens
        slotted = [dict(m) for m in self.messages]
        slotted[-1]["content"] = _SLOT.format(0)
        text = render_chat(self.tokenizer, slotted, self.schemas, add_generation_prompt=True)
        self.prompt_ids = encode_with_slots(self.tokenizer, text, [self.messages[-1]["content"]])
        return list(self.prompt_ids)

    # ------------------------------------------------------------------ step
    def step(self, action_ids: list[int]) -> StepResult:
        """Parse, validate, execute and interpret one action (the turn's tokens exactly as sampled)."""
        if self.example is None:
            raise RuntimeError("ToolEnv.step called before reset(example)")
        if self.done:
            info = self._info("after_done", error="the episode is over")
            return StepResult("", [], 0.0, True, info)
        ids = [int(i) for i in action_ids]
        ended_with = ids[-1] if ids and ids[-1] in self.eos_ids else None
        ended_eos = ended_with is not None
        while ids and ids[-1] in self.eos_ids:
            ids.pop()
        text = self._decode(ids)
        cut_off = (
            not ended_eos
            and len(action_ids) >= self.cfg.max_tokens_per_turn
            and not text.rstrip().endswith(STOP_STRINGS)
        )
        last_turn = len(self.turns) + 1 >= self.cfg.max_turns
        self.messages.append({"role": "assistant", "content": text})

        parsed = parse_action(text)
        info = self._info(parsed.kind, cut=cut_off, ended_eos=ended_eos)
        new_msgs: list[dict] = []  # the observation turn(s) as chat messages
        contents: list[str] = []  # what the model is told, without the turn scaffolding
        malformed = False
        reward = 0.0

        if parsed.kind == "answer":
            self.answer = parsed.answer
            self.answer_ok = answer_well_formed(parsed.answer, parsed.answer_closed)
            info["answer"] = parsed.answer
            self.done = True
        elif parsed.kind == "tool_call":
            contents, new_msgs, malformed, reward = self._tool_calls(parsed, info, cut_off, last_turn)
        else:
            malformed = True
            info["error"] = err = self._no_action_error(parsed.kind, cut_off, info)
            contents = [self._error_text(err)]
            new_msgs = [{"role": "user", "content": contents[0]}]

        if malformed:
            self.tool_ok = False
            reward += self.cfg.format_penalty
        if self.cfg.use_process_reward:
            reward += self.cfg.process_reward_weight * len(info["new_supporting"])
        reward += self.cfg.repeat_search_penalty * sum(bool(c.get("repeat")) for c in info["calls"])

        if not self.done and last_turn:
            info["action_kind"] = info["kind"]
            info["kind"] = "max_turns"
            self.done = True

        if self.done:
            observation, obs_ids = "", []
        else:
            repeated = self.cfg.repeat_search_note and any(c.get("repeat") for c in info["calls"])
            last_next = self.cfg.last_turn_note and len(self.turns) + 2 == self.cfg.max_turns
            for note, applies in ((REPEAT_SEARCH_NOTE, repeated), (LAST_TURN_NOTE, last_next)):
                if applies:  # the repeat note first, then the last-turn note
                    contents.append(note)
                    new_msgs.append({"role": "user", "content": note})
            observation = "\n\n".join(contents)
            obs_ids, info["obs_text"] = self._observation_ids(new_msgs, ended_with)
            self.messages.extend(new_msgs)
        info["reward"] = reward
        self.turns.append({"action_text": text, "observation": observation, "reward": reward, "info": info})
        return StepResult(observation, obs_ids, reward, self.done, info)

    def _tool_calls(
        self, parsed: ParsedAction, info: StepInfo, cut_off: bool, last_turn: bool
    ) -> tuple[list[str], list[dict], bool, float]:
        """Validate the turn's calls and run the first `cfg.max_calls_per_turn` of them (none in the last
        turn); fill `info`. Returns (contents for the model, observation messages, malformed, reward)."""
        info["ignored_answer"] = parsed.ignored_answer
        n = max(1, int(self.cfg.max_calls_per_turn))
        run, extra = parsed.calls[:n], parsed.calls[n:]
        info["tool"], info["args"] = run[0].name, run[0].arguments
        errors: list[str] = []
        contents: list[str] = []
        reward = 0.0
        for call in run:
            err = validate_call(call, self.tools)
            if err is None and not call.closed and not cut_off:
                err = f"the tool call is missing {CALL_CLOSE}"
            rec = CallRecord(tool=call.name, args=call.arguments, error=err, titles=[], new_supporting=[])
            if err is not None:
                errors.append(err)
                contents.append(self._error_text(err))
            elif not last_turn:
                contents.append(self._execute(call, rec))
            info["calls"].append(rec)
        if extra:
            info["ignored_calls"] = len(extra)
            reward += self.cfg.format_penalty
            note = f"(Only the first {n} tool call(s) per turn are run; {len(extra)} more ignored.)"
            contents = contents[:-1] + [contents[-1] + "\n" + note] if contents else [note]
        info["error"] = "; ".join(errors) or next((c["error"] for c in info["calls"] if c["error"]), None)
        info["titles"] = [t for c in info["calls"] for t in c["titles"]]
        info["new_supporting"] = [t for c in info["calls"] for t in c["new_supporting"]]
        new_msgs = [tool_turn(c, self.native_tools) for c in contents]
        if not self.native_tools and len(new_msgs) > 1:  # one user turn holding every response, as Qwen does
            new_msgs = [{"role": "user", "content": "\n".join(m["content"] for m in new_msgs)}]
        return contents, new_msgs, bool(errors), reward

    def _no_action_error(self, kind: str, cut_off: bool, info: StepInfo) -> str:
        """The error told the model for a turn with neither a call nor an answer."""
        if kind == "no_action" and cut_off:
            info["kind"] = "too_long"
            return (
                f"your reply was cut at {self.cfg.max_tokens_per_turn} tokens before a tool call or an "
                "answer; keep replies short"
            )
        return "empty reply" if kind == "empty" else "no tool call or answer found"

    # ------------------------------------------------------------------ helpers
    def _info(self, kind: str, **kw) -> StepInfo:
        info: StepInfo = {
            "kind": kind,
            "tool": None,
            "args": None,
            "error": None,
            "new_supporting": [],
            "titles": [],
            "reward": 0.0,
            "calls": [],
            "ignored_calls": 0,
        }
        info.update(kw)
        return info

    def _error_text(self, err: str) -> str:
        name = self.tool_list[0].name if self.tool_list else "search"
        example = '{"name": "' + name + '", "arguments": {...}}'
        return f"Error: {err}. Call a tool as <tool_call>{example}</tool_call> or answer as <answer>...</answer>."

    def _execute(self, call: ParsedCall, rec: CallRecord) -> str:
        """Run one validated call with a time limit; fill `rec` and return the content for the model."""
        result, err = run_with_timeout(self.tools[call.name], call.arguments, self.cfg.tool_timeout_s)
        if call.name == "search":
            self.num_searches += 1
        if err is not None:
            rec["error"] = err
            return f"Error: {err}."
        rec["ok"] = result.ok
        if not result.ok:
            rec["error"] = result.error or "the tool failed"
        data = result.data or {}
        titles = [str(t) for t in data.get("titles", [])]
        keys = [_norm_title(t) for t in titles]
        rec["titles"] = titles
        shows = "titles" in data  # a tool that shows passages (search)
        rec["repeat"] = bool(result.ok and shows and all(k in self._seen_titles for k in keys))
        for t, key in zip(titles, keys):
            if key in self._supporting and key not in self._seen_titles:
                rec["new_supporting"].append(t)
            self._seen_titles.add(key)
        return cut(str(result.content), self.cfg.max_tool_chars) or "(empty result)"

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        try:
            return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        except Exception:  # ids outside the vocabulary: decode what can be decoded
            vocab = len(self.tokenizer)
            return self.tokenizer.decode([i for i in ids if 0 <= i < vocab], skip_special_tokens=False)

    def _turn_pieces(self, new_msgs: list[dict], ended_with: int | None) -> str:
        """The rendered text between the end of the action and the next generation, with content slots.

        Rendered from the chat template: history [system, user, assistant] with and without the new messages;
        the suffix is what the template adds. Falls back to ChatML when the template does not extend its own
        prefix (templates that rewrite earlier turns).
        """
        slotted = [{"role": m["role"], "content": _SLOT.format(i)} for i, m in enumerate(new_msgs)]
        if not self.native_tools:  # the <tool_response> wrapper is our scaffolding, not untrusted content
            slotted = [
                {"role": m["role"], "content": _wrap_slot(m["content"], i)} for i, m in enumerate(new_msgs)
            ]
        key = tuple((m["role"], m["content"]) for m in slotted)
        if key not in self._pieces:
            base = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
            base.append({"role": "assistant", "content": _ACT})
            head = render_chat(self.tokenizer, base, self.schemas, add_generation_prompt=False)
            full = render_chat(self.tokenizer, base + slotted, self.schemas, add_generation_prompt=True)
            if full.startswith(head) and _ACT in head:
                closing = head[head.rindex(_ACT) + len(_ACT) :]
                suffix = full[len(head) :]
            else:
                closing = "<|im_end|>\n"
                suffix = render_chat(None, slotted, None, add_generation_prompt=True)
            self._pieces[key] = (closing, suffix)
        closing, suffix = self._pieces[key]
        if ended_with is not None:  # the action already holds the end-of-turn token
            end = self.tokenizer.convert_ids_to_tokens(ended_with)
            if isinstance(end, str) and closing.startswith(end):
                closing = closing[len(end) :]
        return closing + suffix

    def _observation_ids(self, new_msgs: list[dict], ended_with: int | None) -> tuple[list[int], str]:
        template = self._turn_pieces(new_msgs, ended_with)
        slots = [_slot_content(m["content"], self.native_tools) for m in new_msgs]
        ids = encode_with_slots(self.tokenizer, template, slots)
        text = _SLOT_RE.sub(lambda m: slots[int(m.group(1))], template)
        return ids, text


_TR_OPEN, _TR_CLOSE = "<tool_response>\n", "\n</tool_response>"


def _wrap_slot(content: str, i: int) -> str:
    """Keep our own <tool_response> wrapper (or wrappers) as scaffolding; only the inside becomes a slot."""
    if content.startswith(_TR_OPEN) and content.endswith(_TR_CLOSE):
        return _TR_OPEN + _SLOT.format(i) + _TR_CLOSE
    return _SLOT.format(i)


def _slot_content(content: str, native: bool) -> str:
    if not native and content.startswith(_TR_OPEN) and content.endswith(_TR_CLOSE):
        return content[len(_TR_OPEN) : -len(_TR_CLOSE)]
    return content


def run_with_timeout(tool: Tool, args: dict, timeout_s: float) -> tuple[ToolResult | None, str | None]:
    """Run `tool.execute(args)` in a daemon thread; (result, None) or (None, error text). Never raises.

    A thread that runs past the limit cannot be killed; it is left to finish in the background.
    """
    box: dict = {}

    def target():
        try:
            box["result"] = tool.execute(args)
        except BaseException as e:  # the tool's failure is reported, never propagated
            box["exc"] = e

    th = threading.Thread(target=target, daemon=True, name=f"tool-{tool.name}")
    th.start()
    th.join(timeout_s if timeout_s and timeout_s > 0 else None)
    if th.is_alive():
        return None, f"tool {tool.name} timed out after {timeout_s:g} s"
    if "exc" in box:
        e = box["exc"]
        return None, f"tool {tool.name} failed: {type(e).__name__}: {e}"
    result = box.get("result")
    broken = tool_result_error(result)
    if broken is not None:
        msg = f"tool {tool.name!r} broke its contract: {broken}"
        warnings.warn(f"{msg} (the call is reported to the model as a failed tool call)", stacklevel=2)
        return None, msg
    return result, None


TOOL_CONTRACT = (
    "execute(args) returns a ToolResult whose `data` is a dict, and whose data['titles'], when present, "
    "is a list of strings"
)
"""What `ToolEnv` relies on in a tool's result (the search tool's titles feed the process reward)."""


def tool_result_error(result: Any) -> str | None:
    """How `result` breaks `TOOL_CONTRACT`, or None when it keeps it.

    A tool is user code: a result that breaks the contract is reported to the model as a failed call (not
    penalised, like a tool that raises) and warned about, never raised in the middle of a rollout.
    """
    if not isinstance(result, ToolResult):
        return f"it returned {type(result).__name__}, not a ToolResult ({TOOL_CONTRACT})"
    if result.data is not None and not isinstance(result.data, dict):
        return f"ToolResult.data is {type(result.data).__name__}, not a dict ({TOOL_CONTRACT})"
    titles = (result.data or {}).get("titles", [])
    if not isinstance(titles, (list, tuple)) or not all(isinstance(t, str) for t in titles):
        return f"ToolResult.data['titles'] is not a list of strings ({TOOL_CONTRACT})"
    return None


# ---------------------------------------------------------------------------------------------- the task
@dataclass
class Task:
    """Everything a run needs besides the policy: questions, corpus, retriever, tools and the env factory."""

    train: list[QAExample]
    eval: list[QAExample]
    passages: list[Passage]
    retriever: Retriever
    tools: list[Tool]
    make_env: Callable[[], ToolEnv] = field(repr=False, default=None)
    """A fresh `ToolEnv` per call (one per episode); every env shares `tools` (and so the retriever)."""


def build_task(cfg: Config, tokenizer: Any) -> Task:
    """The one env factory: load the questions and corpus named by `cfg.dataset` (`world.load_examples`,
    `world.load_corpus` over train + eval), build the retriever (`cfg.retriever`), the tools once, and
    `make_env`."""
    train_ex = load_examples(cfg, "train")
    eval_ex = load_examples(cfg, "eval")
    passages = load_corpus(cfg, train_ex + eval_ex)
    retriever = build_retriever(cfg, passages)
    tools = make_tools(cfg, retriever)
    return Task(train_ex, eval_ex, passages, retriever, tools, lambda: ToolEnv(tools, tokenizer, cfg))
