"""Which reply syntax a chat template implies, read from the template's text.

A GGUF file says nothing about how its model writes a reasoning trace or a tool call; its chat
template does, because the template has to write past turns back in that same syntax. So the
rules look for the family's own markers in the template text:

* harmony (gpt-oss): ``<|channel|>`` anywhere. Trace and tool calls are both harmony
  channels; the knob is ``reasoning_effort``.
* reasoning ``"think"``: ``<think>`` or ``</think>`` anywhere (Qwen3 writes them, the R1
  distills strip past traces at ``</think>`` and open one in the generation prompt).
* tools, first match wins: ``<tool_call>`` (Hermes, Qwen), ``[TOOL_CALLS]`` (Mistral),
  ``tool▁calls▁begin`` (DeepSeek-R1's special tokens), then Llama 3.x's JSON calls:
  ``<|python_tag|>`` (3.1's built-in tools) or the ``"parameters"`` instruction together with
  the ``ipython`` role (3.2 has no python tag). A marker only counts if the template's code
  actually handles tools (reads ``tools`` or ``tool_calls``), so a template that merely quotes
  a marker in prose does not claim tool support.
* switch: ``enable_thinking`` or ``reasoning_effort`` when the template's code (not its
  text, comments or prose) reads that variable.

Only the template text is read; nothing is rendered, so this is safe on hostile input.
"""

from __future__ import annotations

import functools
import re

import jinja2

from . import ReasoningSyntax, ReplyFormat, ThinkingSwitch, ToolSyntax

__all__ = ["detect", "opens_reasoning"]

_HARMONY_MARKER = "<|channel|>"
_THINK_MARKERS = ("<think>", "</think>")
_TOOL_MARKERS: tuple[tuple[str, ToolSyntax], ...] = (
    ("<tool_call>", "hermes"),
    ("[TOOL_CALLS]", "mistral"),
    ("tool▁calls▁begin", "deepseek-r1"),
    ("<|python_tag|>", "llama3"),
)
# Llama 3.2 has no <|python_tag|>: it asks for {"name": ..., "parameters": ...} JSON and
# returns results in the ipython role.
_LLAMA3_PARAMETERS = '"parameters"'
_LLAMA3_ROLE = re.compile(r"\bipython\b")

# Only lexes (never parses or runs) the template, so hostile text costs linear time.
_LEXER = jinja2.Environment()
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

# A trace is open when the prompt ends right after the opening tag (whitespace allowed).
_OPEN_THINK = re.compile(r"<think>\s*\Z")
_OPEN_ANALYSIS = re.compile(r"<\|channel\|>analysis<\|message\|>\s*\Z")


def _reads(template: str) -> tuple[set[str], set[str]]:
    """The names the template's code uses, and the string literals that are a bare identifier:
    the keys it looks up (``message['tool_calls']``, ``'tool_calls' in message``).

    Lexing, unlike a text search, leaves out the template's text, comments and prose inside
    string literals: a template that mentions ``enable_thinking`` in a comment or a sentence
    does not read it. A template that does not lex reads nothing (it cannot render either).
    """
    names: set[str] = set()
    keys: set[str] = set()
    try:
        for _line, kind, value in _LEXER.lex(template):
            if kind == "name":
                names.add(value)
            elif kind == "string" and _IDENTIFIER.match(value[1:-1]):
                keys.add(value[1:-1])
    except jinja2.TemplateSyntaxError:
        return set(), set()
    return names, keys


def _tool_syntax(template: str) -> ToolSyntax | None:
    for marker, syntax in _TOOL_MARKERS:
        if marker in template:
            return syntax
    if _LLAMA3_PARAMETERS in template and _LLAMA3_ROLE.search(template):
        return "llama3"
    return None


@functools.lru_cache(maxsize=16)  # serve asks once per request; templates are few
def detect(template: str) -> ReplyFormat:
    """The reply syntax ``template`` implies (see the module docstring for the rules).

    A template with none of the markers gets ``ReplyFormat()``: no trace, no tool calls, so
    its output is all answer.
    """
    names, keys = _reads(template)
    switch: ThinkingSwitch | None = None
    if "enable_thinking" in names | keys:
        switch = "enable_thinking"
    elif "reasoning_effort" in names | keys:
        switch = "reasoning_effort"
    handles_tools = bool({"tools", "tool_calls"} & (names | keys))

    if _HARMONY_MARKER in template:
        return ReplyFormat(
            reasoning="harmony",
            tools="harmony" if handles_tools else None,
            switch=switch,
        )
    reasoning: ReasoningSyntax | None = None
    if any(marker in template for marker in _THINK_MARKERS):
        reasoning = "think"
    tools = _tool_syntax(template) if handles_tools else None
    return ReplyFormat(reasoning=reasoning, tools=tools, switch=switch)


def opens_reasoning(prompt: str, fmt: ReplyFormat) -> bool:
    """Whether the rendered ``prompt`` (with its generation prompt) leaves a trace open, so the
    model's first tokens are reasoning even though it never writes the opening tag.

    ``think``: the prompt ends with ``<think>`` and optional whitespace (the R1 distills'
    generation prompt). A prompt that ends with a closed, empty trace (Qwen3 with
    ``enable_thinking=False``: ``<think>\\n\\n</think>\\n\\n``) is not open; neither is one that
    ends at the assistant header (Qwen3 by default: the model writes ``<think>`` itself).
    ``harmony``: the prompt ends inside the analysis channel's message.
    """
    if fmt.reasoning == "think":
        return _OPEN_THINK.search(prompt) is not None
    if fmt.reasoning == "harmony":
        return _OPEN_ANALYSIS.search(prompt) is not None
    return False


_ARGS_CONCATENATED = re.compile(r"""arguments['"]?\]?\s*\+""")


def arguments_as_text(template: str) -> bool:
    """Whether the template concatenates a tool call's arguments as a string
    (``tool['function']['arguments'] + '...'``, as the DeepSeek-R1 distill templates in most
    R1 GGUFs do) rather than serialising an object (``arguments | tojson``)."""
    return bool(_ARGS_CONCATENATED.search(template))
