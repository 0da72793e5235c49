"""One reply of a chat model, as the user sees it: the model's raw output split into its
reasoning trace, its answer and its tool calls (formats/parse.py), with tool calls constrained
to their schemas (formats/grammar.py) and an optional budget for the trace.

Used the same way by `run`/`chat` (session.py, a model in this process) and by `serve` (the
worker thread, a model in a child process): both hand in an engine with ``tokenize`` and
``generate``. Generation may run in phases: when the trace goes over its budget, or when
``tool_choice`` is ``auto`` and the model opens a call, the generation stops there, the
raw text is fixed (plus a closing marker for an over-long trace) and generation goes on under
a new grammar from exactly that text. llama-cpp-python reuses the cached prefix, so a phase
costs a few tokens of evaluation, not the prompt again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from .datatypes import Result, Sampling
from .formats import Delta, Reply, ReplyFormat, ToolCall
from .formats.grammar import ToolGrammar
from .formats.parse import ReplyParser

ToolChoice = Literal["auto", "none", "required"] | str  # a str other than those: that function

# what closes a trace that ran over its budget, per syntax
_CLOSE_TRACE = {"think": "\n</think>\n\n",
                "harmony": "<|start|>assistant<|channel|>final<|message|>"}


class ReplyEngine(Protocol):
    def tokenize(self, text: str, *, templated: bool) -> list[int]: ...
    def generate(self, tokens: list[int], sampling: Sampling,
                 result: Result | None = None) -> Iterator[str]: ...


@dataclass
class ReplySpec:
    """How to read and steer one reply."""

    fmt: ReplyFormat = field(default_factory=ReplyFormat)
    tools: Sequence[Mapping[str, Any]] = ()  # OpenAI tools offered
    tool_choice: ToolChoice = "auto"
    parallel: bool = True
    in_reasoning: bool = False  # the prompt opened the trace (formats.detect.opens_reasoning)
    thinking: bool = True  # False: the request turned thinking off (no trace allowed)
    budget: int | None = None  # at most this many tokens of trace, then it is closed
    mistral_args: bool = False
    new_id: Callable[[], str] | None = None

    @property
    def names(self) -> list[str]:
        return [str(t["function"]["name"]) for t in self.tools]

    @property
    def calls_allowed(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none" and self.fmt.tools is not None

    @property
    def forced(self) -> bool:
        return self.calls_allowed and self.tool_choice != "auto"

    def offered(self) -> list[Mapping[str, Any]]:
        if self.tool_choice in ("auto", "none", "required"):
            return list(self.tools)
        return [t for t in self.tools if t["function"]["name"] == self.tool_choice]


@dataclass
class _Phase:
    cut: int  # raw text kept
    forced: str = ""  # then this text, as if the model had written it
    grammar: ToolGrammar | None = None


@dataclass
class ReplyStream:
    """Iterate for Deltas; ``result`` (and ``reply``) are complete afterwards."""

    engine: ReplyEngine
    prompt: str  # the rendered prompt (text), for re-tokenizing with a fixed continuation
    tokens: list[int]
    sampling: Sampling
    spec: ReplySpec
    result: Result = field(default_factory=Result)
    raw: str = ""

    def __post_init__(self) -> None:
        self.parser = self._parser()
        self._emitted = Reply()
        self._trace_tokens = 0

    def _parser(self) -> ReplyParser:
        s = self.spec
        return ReplyParser(s.fmt, tools=s.calls_allowed, in_reasoning=s.in_reasoning,
                           names=[str(t["function"]["name"]) for t in s.offered()] or None,
                           new_id=s.new_id)

    def _grammar(self, shape: Literal["whole", "rest"], *, trace: str = "none",
                 name: str | None = None) -> ToolGrammar:
        s = self.spec
        assert s.fmt.tools is not None
        return ToolGrammar(syntax=s.fmt.tools, tools=s.offered(), shape=shape,
                           parallel=s.parallel, trace=trace,  # type: ignore[arg-type]
                           name=name, mistral_args=s.mistral_args)

    def _first_grammar(self) -> ToolGrammar | None:
        s = self.spec
        if not s.forced:
            return None
        trace = "none"
        if s.fmt.reasoning is not None and s.thinking:
            trace = "open" if s.in_reasoning else "optional"
        return self._grammar("whole", trace=trace)

    def __iter__(self) -> Iterator[Delta]:
        grammar = self._first_grammar()
        tokens = self.tokens
        constrained = grammar is not None
        s = self.spec
        if s.budget == 0 and s.in_reasoning and s.fmt.reasoning is not None:
            # no trace at all: closed before the first token
            self.raw = _CLOSE_TRACE[s.fmt.reasoning]
            self.parser.feed(self.raw)
            if s.forced:
                grammar = self._grammar("whole")
            tokens = self.engine.tokenize(self.prompt + self.raw, templated=True)
        total = Result()
        try:
            yield from self._phases(tokens, grammar, constrained, total)
        finally:  # also when the reply is stopped early (Ctrl-C, a client gone): its numbers
            res = self.result  # as far as it got
            for name in ("prompt_tokens", "completion_tokens", "load_s", "prompt_s", "gen_s",
                         "prompt_evaluated", "finish_reason"):
                setattr(res, name, getattr(total, name))
        reply = self.parser.reply
        res.text, res.reasoning = reply.content, reply.reasoning
        res.tool_calls = [_openai_call(c) for c in reply.tool_calls]
        if reply.tool_calls and res.finish_reason in ("stop", None):
            res.finish_reason = "tool_calls"

    def _phases(self, tokens: list[int], grammar: Any, constrained: bool, total: Result
                ) -> Iterator[Delta]:
        """Generation phase after phase (a trace closed over budget, a call under its
        grammar), their numbers added up in ``total``."""
        first = True
        limit = self.sampling.max_tokens
        while True:
            left: int | None = limit
            if limit is not None and limit > 0:  # the reply's limit, over all its phases
                left = limit - total.completion_tokens
                if left <= 0:  # spent before a new phase could start
                    total.finish_reason = "length"
                    break
            sampling = replace(self.sampling, max_tokens=left,
                               tool_grammar=grammar.as_dict() if grammar else None,
                               json_trace=self._json_trace() if first else None)
            part = Result()
            pieces = self.engine.generate(tokens, sampling, part)
            nxt: _Phase | None = None
            try:
                for piece in pieces:
                    self.raw += piece
                    if self.parser.in_trace:  # a token of the trace (not its opening)
                        self._trace_tokens += 1
                    self.parser.feed(piece)
                    delta = self._new()
                    if delta:
                        yield delta
                    nxt = self._next_phase(constrained)
                    if nxt is not None:
                        break
            finally:
                close = getattr(pieces, "close", None)
                if close is not None:
                    close()
                _add(total, part, first)
                first = False
            if nxt is None:
                break
            self.raw = self.raw[: nxt.cut] + nxt.forced
            self.parser = self._parser()
            self.parser.feed(self.raw)
            delta = self._new()
            if delta:
                yield delta
            grammar, constrained = nxt.grammar, constrained or nxt.grammar is not None
            tokens = self.engine.tokenize(self.prompt + self.raw, templated=True)
        self.parser.finish()
        delta = self._new()
        if delta:
            yield delta

    def _json_trace(self) -> str | None:
        """A reasoning model asked for JSON: its trace first, then the JSON (only the first
        phase; after a trace over budget is closed, the JSON alone)."""
        s, sm = self.spec, self.sampling
        if (sm.json_schema is None and not sm.json_any) or s.fmt.reasoning is None or (
                not s.thinking) or self.raw:
            return None
        return f"{s.fmt.reasoning}:{'open' if s.in_reasoning else 'optional'}"

    def _next_phase(self, constrained: bool) -> _Phase | None:
        """Whether to stop this generation here, and what comes next."""
        s, p = self.spec, self.parser
        if (s.budget is not None and s.fmt.reasoning is not None and p.in_trace
                and self._trace_tokens >= s.budget):
            grammar = None
            if s.forced:  # the trace is closed: now the call, from its opening marker
                grammar = self._grammar("whole")
            return _Phase(len(self.raw), _CLOSE_TRACE[s.fmt.reasoning], grammar)
        if not constrained and s.calls_allowed and p.call_opened is not None:
            return _Phase(p.call_opened, "", self._grammar("rest", name=p.opened_name))
        return None

    def _new(self) -> Delta:
        """What the parser's reply holds that was not handed out yet."""
        now, sent = self.parser.reply, self._emitted
        delta = Delta(reasoning=now.reasoning[len(sent.reasoning):],
                      content=now.content[len(sent.content):],
                      tool_calls=list(now.tool_calls[len(sent.tool_calls):]))
        self._emitted = Reply(now.reasoning, now.content, list(now.tool_calls))
        self.result.text, self.result.reasoning = now.content, now.reasoning  # as far as it got
        return delta


def _add(total: Result, part: Result, first: bool) -> None:
    """Numbers of several generation phases as one reply's."""
    if first:
        total.prompt_tokens, total.load_s = part.prompt_tokens, part.load_s
    total.completion_tokens += part.completion_tokens
    total.prompt_s += part.prompt_s
    total.gen_s += part.gen_s
    total.prompt_evaluated += part.prompt_evaluated
    total.finish_reason = part.finish_reason


def _openai_call(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function",
            "function": {"name": call.name, "arguments": call.arguments}}


Think = bool | Literal["low", "medium", "high"] | None  # None: the model's own default


class ChatEngine(ReplyEngine, Protocol):
    def format_chat(self, messages: list[dict[str, Any]], *,
                    tools: list[dict[str, Any]] | None = None,
                    variables: dict[str, Any] | None = None) -> str: ...
    def template_text(self) -> str | None: ...
    def chat_stops(self) -> list[str]: ...


def reply_format(engine: ChatEngine, reasoning: str | None = None) -> ReplyFormat:
    """What the engine's template says about replies; ``reasoning``, the registry's, wins
    over what the template text suggests (a GGUF whose template hides its think tags)."""
    from .formats.detect import detect

    text = engine.template_text()
    fmt = detect(text) if text else ReplyFormat()
    if reasoning in ("think", "harmony") and fmt.reasoning != reasoning:
        fmt = replace(fmt, reasoning=reasoning)  # type: ignore[arg-type]
    return fmt


def thinking_variables(fmt: ReplyFormat, think: Think, model: str) -> dict[str, Any]:
    """The template variables that carry ``think`` to a model, or a UsageError saying what
    this model can do instead."""
    from .errors import UsageError

    if think is None:
        return {}
    if fmt.reasoning is None:
        if think is False:
            return {}
        raise UsageError(f"{model} does not reason (its template has no reasoning trace)",
                         hint="drop --think")
    if fmt.switch == "enable_thinking":
        if isinstance(think, str):
            raise UsageError(f"{model} turns thinking on or off but takes no effort level",
                             hint="use --think or --no-think")
        return {"enable_thinking": think}
    if fmt.switch == "reasoning_effort":
        if think is False:
            raise UsageError(f"{model} always reasons; its least effort is 'low'",
                             hint="use --think low")
        return {"reasoning_effort": "medium" if think is True else think}
    if think is False:
        raise UsageError(f"{model} always reasons: its template cannot turn thinking off",
                         hint="drop --no-think (the trace stays off stdout anyway)")
    if isinstance(think, str):
        raise UsageError(f"{model} takes no reasoning effort level", hint="drop the level")
    return {}


@dataclass
class ChatPlan:
    prompt: str
    tokens: list[int]
    stops: list[str]
    spec: ReplySpec


def plan_chat(engine: ChatEngine, messages: Sequence[Mapping[str, Any]], *, model: str,
              tools: Sequence[Mapping[str, Any]] = (), tool_choice: ToolChoice = "auto",
              parallel: bool = True, think: Think = None, budget: int | None = None,
              reasoning: str | None = None, fmt: ReplyFormat | None = None,
              new_id: Callable[[], str] | None = None) -> ChatPlan:
    """Render and tokenize one chat request and say how its reply is read and steered.
    ``messages`` are OpenAI-style (formats.messages.for_template turns them into what the
    template expects)."""
    from .errors import UsageError
    from .formats.detect import arguments_as_text, opens_reasoning
    from .formats.messages import for_template

    fmt = fmt or reply_format(engine, reasoning)
    if tools and fmt.tools is None and tool_choice != "none":
        raise UsageError(f"{model}'s chat template has no tool calling",
                         hint="use a model whose template takes tools (docs/serve.md#tools)")
    variables = thinking_variables(fmt, think, model)
    try:
        converted = for_template(messages, fmt, arguments_as_text=arguments_as_text(
            engine.template_text() or ""))
    except ValueError as exc:
        raise UsageError(f"messages: {exc}") from None
    prompt = engine.format_chat(converted, tools=[dict(t) for t in tools] or None,
                                variables=variables or None)
    tokens = engine.tokenize(prompt, templated=True)
    spec = ReplySpec(fmt=fmt, tools=list(tools), tool_choice=tool_choice, parallel=parallel,
                     in_reasoning=opens_reasoning(prompt, fmt), thinking=think is not False,
                     budget=budget, new_id=new_id,
                     mistral_args="[ARGS]" in (engine.template_text() or ""))
    return ChatPlan(prompt, tokens, engine.chat_stops(), spec)
