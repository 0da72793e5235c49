"""The reply driver (reply.py) on a scripted engine: phases (a trace over its budget, a call
opened under tool_choice auto), what each phase is asked to generate, and what the user gets.
Narrow unit tests of llmrun's own logic; the real model runs the same paths in
test_tools_e2e.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from llmrun.datatypes import Result, Sampling
from llmrun.formats import Delta, ReplyFormat
from llmrun.formats.grammar import ToolGrammar, build
from llmrun.reply import ReplySpec, ReplyStream, thinking_variables

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"]}}}]
QWEN = ReplyFormat(reasoning="think", tools="hermes", switch="enable_thinking")


class Scripted:
    """An engine that writes what each phase's script says and records what it was asked."""

    def __init__(self, *scripts: list[str]) -> None:
        self.scripts = list(scripts)
        self.calls: list[tuple[str, Sampling]] = []

    def tokenize(self, text: str, *, templated: bool) -> list[int]:
        return [ord(c) for c in text]

    def generate(self, tokens: list[int], sampling: Sampling,
                 result: Result | None = None) -> Iterator[str]:
        res = result if result is not None else Result()
        self.calls.append(("".join(map(chr, tokens)), sampling))
        script = self.scripts.pop(0)
        res.prompt_tokens = len(tokens)
        try:
            for piece in script:
                res.completion_tokens += 1
                yield piece
            res.finish_reason = "stop"
        finally:
            res.finish_reason = res.finish_reason or "cancelled"


def _run(engine: Scripted, spec: ReplySpec, max_tokens: int | None = None
         ) -> tuple[list[Delta], Result]:
    result = Result()
    stream = ReplyStream(engine, "PROMPT", engine.tokenize("PROMPT", templated=True),
                         Sampling(max_tokens=max_tokens), spec, result)
    return list(stream), result


def _ids() -> Any:
    n = iter(range(100))
    return lambda: f"call_{next(n)}"


def test_trace_and_answer_are_apart() -> None:
    engine = Scripted(["<think>", "\nweighing", " it\n", "</think>", "\n\n", "Paris", "."])
    deltas, result = _run(engine, ReplySpec(fmt=QWEN))
    assert "".join(d.reasoning for d in deltas) == "weighing it" == result.reasoning
    assert "".join(d.content for d in deltas) == "Paris." == result.text
    assert result.finish_reason == "stop" and len(engine.calls) == 1


def test_a_trace_over_its_budget_is_closed_and_the_answer_follows() -> None:
    engine = Scripted(["<think>", "a", " b", " c", " d", " e"], ["Paris"])
    _, result = _run(engine, ReplySpec(fmt=QWEN, budget=2))
    assert result.reasoning == "a b" and result.text == "Paris"
    prompt, sampling = engine.calls[1]
    assert prompt == "PROMPT<think>a b\n</think>\n\n"  # the trace so far, closed
    assert sampling.tool_grammar is None


def test_auto_restarts_under_a_grammar_once_a_call_opens() -> None:
    call = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    engine = Scripted(["Let me check.", "<tool_call>", "\n{\"na", "me\": oops"],
                      ["\n" + call[:20], call[20:], "\n</tool_call>"])
    deltas, result = _run(engine, ReplySpec(fmt=QWEN, tools=TOOLS, new_id=_ids()))
    first, second = engine.calls
    assert first[1].tool_grammar is None  # free until the call opens
    assert second[0] == "PROMPT" + "Let me check.<tool_call>"  # nothing after the marker kept
    grammar = ToolGrammar.from_dict(second[1].tool_grammar or {})
    assert (grammar.syntax, grammar.shape) == ("hermes", "rest")
    assert result.text == "Let me check."
    assert result.tool_calls == [{"id": "call_0", "type": "function", "function": {
        "name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]
    assert result.finish_reason == "tool_calls"
    streamed = [c for d in deltas for c in d.tool_calls]
    assert len(streamed) == 1 and json.loads(streamed[0].arguments) == {"city": "Paris"}


@pytest.mark.parametrize(("choice", "names"), [("required", {"get_weather", "add"}),
                                               ("add", {"add"})])
def test_required_and_named_constrain_from_the_first_token(choice: str, names: set[str]
                                                           ) -> None:
    engine = Scripted(['<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n'
                       "</tool_call>"])
    _, result = _run(engine, ReplySpec(fmt=QWEN, tools=TOOLS, tool_choice=choice,
                                       in_reasoning=False))
    grammar = ToolGrammar.from_dict(engine.calls[0][1].tool_grammar or {})
    assert grammar.shape == "whole" and grammar.trace == "optional"
    assert {t["function"]["name"] for t in grammar.tools} == names
    assert [c["function"]["name"] for c in result.tool_calls] == ["add"]


def test_required_with_an_open_trace_over_budget_then_the_call() -> None:
    engine = Scripted(["mm", "mm", "mm"],
                      ['<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'])
    _, result = _run(engine, ReplySpec(fmt=QWEN, tools=TOOLS, tool_choice="required",
                                       in_reasoning=True, budget=2))
    first, second = (ToolGrammar.from_dict(c[1].tool_grammar or {}) for c in engine.calls)
    assert first.trace == "open" and second.trace == "none"
    assert result.reasoning == "mmmm" and result.tool_calls


def test_the_token_limit_covers_every_phase() -> None:
    engine = Scripted(["<think>", "a", "b", "c"], ["x", "y"])
    _run(engine, ReplySpec(fmt=QWEN, budget=2), max_tokens=10)
    assert engine.calls[0][1].max_tokens == 10
    assert engine.calls[1][1].max_tokens == 10 - 3  # three tokens were generated first


def test_no_format_passes_text_through_untouched() -> None:
    engine = Scripted(["  <think>x</think>", " <tool_call>{}</tool_call>\n"])
    _, result = _run(engine, ReplySpec(tools=TOOLS))
    assert result.text == "  <think>x</think> <tool_call>{}</tool_call>\n"
    assert result.reasoning == "" and result.tool_calls == []


@pytest.mark.parametrize(("fmt", "think", "expected"), [
    (QWEN, False, {"enable_thinking": False}), (QWEN, None, {}),
    (ReplyFormat("harmony", "harmony", "reasoning_effort"), "high", {"reasoning_effort": "high"}),
    (ReplyFormat("harmony", "harmony", "reasoning_effort"), True, {"reasoning_effort": "medium"}),
    (ReplyFormat(), False, {})])
def test_thinking_switches(fmt: ReplyFormat, think: Any, expected: dict[str, Any]) -> None:
    assert thinking_variables(fmt, think, "m") == expected


@pytest.mark.parametrize(("fmt", "think", "says"), [
    (QWEN, "high", "takes no effort level"),
    (ReplyFormat("harmony", "harmony", "reasoning_effort"), False, "least effort is 'low'"),
    (ReplyFormat("think", None, None), False, "cannot turn thinking off"),
    (ReplyFormat(), True, "does not reason")])
def test_what_a_model_cannot_do_is_refused(fmt: ReplyFormat, think: Any, says: str) -> None:
    from llmrun.errors import UsageError

    with pytest.raises(UsageError, match=says):
        thinking_variables(fmt, think, "m")


@pytest.mark.parametrize("syntax", ["hermes", "llama3", "mistral", "deepseek-r1", "harmony"])
@pytest.mark.parametrize("shape", ["whole", "rest"])
def test_grammars_build_for_every_syntax(syntax: Any, shape: Any) -> None:
    from llama_cpp import llama_grammar

    converter = llama_grammar.SchemaConverter(prop_order={}, allow_fetch=False, dotall=False,
                                              raw_pattern=False)
    spec = ToolGrammar(syntax=syntax, tools=TOOLS, shape=shape, trace="optional",
                       name="add" if shape == "rest" and syntax == "harmony" else None)
    text = build(spec, converter)
    assert text.startswith("root ::= ") and "space ::=" in text
    if spec.name:  # the header with the name is written: only add's arguments are left
        assert '\\"a\\"' in text and "city" not in text
    else:
        assert '"add"' in text or '\\"add\\"' in text


def test_json_for_a_reasoning_model_lets_it_think_first() -> None:
    engine = Scripted(["<think>", "hmm", "</think>", '{"n": 1}'])
    _, result = _run_json(engine, ReplySpec(fmt=QWEN))
    assert engine.calls[0][1].json_trace == "think:optional"
    assert (result.reasoning, result.text) == ("hmm", '{"n": 1}')
    engine = Scripted(["a", "b", "c"], ['{"n": 1}'])
    _, result = _run_json(engine, ReplySpec(fmt=QWEN, in_reasoning=True, budget=2))
    assert [c[1].json_trace for c in engine.calls] == ["think:open", None]  # then JSON alone
    engine = Scripted(['{"n": 1}'])
    _run_json(engine, ReplySpec(fmt=QWEN, thinking=False))
    assert engine.calls[0][1].json_trace is None


def _run_json(engine: Scripted, spec: ReplySpec) -> tuple[list[Delta], Result]:
    result = Result()
    stream = ReplyStream(engine, "P", [1], Sampling(json_schema={"type": "object"}), spec, result)
    return list(stream), result


@pytest.mark.parametrize("trace", ["think:open", "think:optional", "harmony:optional"])
def test_json_after_trace_grammars_build(trace: str) -> None:
    from llmrun.formats.grammar import json_after_trace

    text = json_after_trace("answer", trace)
    assert text.startswith("root ::= ") and "answer" in text.splitlines()[0]
    assert ("<|channel|>final<|message|>" in text) is trace.startswith("harmony")


def test_a_limit_spent_by_the_trace_starts_no_new_phase() -> None:
    engine = Scripted(["<think>", "a", "b"], ["never"])
    _, result = _run(engine, ReplySpec(fmt=QWEN, budget=2), max_tokens=3)
    assert len(engine.calls) == 1 and result.finish_reason == "length"
    assert result.reasoning == "ab" and result.text == ""
