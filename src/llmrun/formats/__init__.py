"""How a model writes its reply: a reasoning trace (``<think>`` tags, gpt-oss's harmony
channels), the answer, and tool calls in the family's own syntax (Hermes/Qwen ``<tool_call>``,
Llama 3.x JSON, Mistral ``[TOOL_CALLS]``, DeepSeek-R1's tool tokens, harmony).

- ``detect``: which syntax a chat template implies (detect.py);
- ``messages``: OpenAI-style messages as the templates expect them (messages.py);
- ``parse``: a streaming parser that splits raw output into trace, answer and tool calls
  (parse.py);
- ``grammar``: GBNF that constrains tool calls to their schemas (grammar.py).

Nothing here imports llama_cpp.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

ReasoningSyntax = Literal["think", "harmony"]
ToolSyntax = Literal["hermes", "llama3", "mistral", "deepseek-r1", "harmony"]
ThinkingSwitch = Literal["enable_thinking", "reasoning_effort"]


@dataclass(frozen=True)
class ReplyFormat:
    """What a model's template says about its replies."""

    reasoning: ReasoningSyntax | None = None  # how a trace is written; None: never
    tools: ToolSyntax | None = None  # how tool calls are written; None: the template has none
    # the template variable that turns thinking on/off (Qwen3, the R1 distills in llama.cpp's
    # copies: enable_thinking) or sets its effort (gpt-oss: reasoning_effort)
    switch: ThinkingSwitch | None = None


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # the JSON text of an object, always valid JSON


@dataclass
class Delta:
    """What one piece of raw output adds to the reply."""

    reasoning: str = ""
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)  # complete calls only

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content or self.tool_calls)


@dataclass
class Reply:
    reasoning: str = ""
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)


def text_deltas(pieces: Iterator[str]) -> Iterator[Delta]:
    """Plain text pieces (no template, so no trace or tool calls) as Deltas; closing this
    closes the generation at once."""
    try:
        for piece in pieces:
            yield Delta(content=piece)
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()
