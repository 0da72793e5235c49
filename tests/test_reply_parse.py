"""formats/parse.py: the streaming reply parser. Every case is parsed whole, one character at
a time, and split at every position (and at a sample of position pairs): the reply must not
depend on the chunking, and the deltas must add up to it."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from llmrun.formats import Delta, Reply, ReplyFormat, ToolCall
from llmrun.formats.parse import ReplyParser

THINK = ReplyFormat(reasoning="think")
QWEN3 = ReplyFormat(reasoning="think", tools="hermes", switch="enable_thinking")
HERMES = ReplyFormat(tools="hermes")
LLAMA3 = ReplyFormat(tools="llama3")
MISTRAL = ReplyFormat(tools="mistral")
R1 = ReplyFormat(reasoning="think", tools="deepseek-r1")
GPT_OSS = ReplyFormat(reasoning="harmony", tools="harmony", switch="reasoning_effort")

NAMES = ("get_weather", "search")
B, E = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
CB, CE, SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"

# arguments full of what could confuse a parser: markers, braces, escapes, unicode
TRICKY: dict[str, Any] = {
    "q": "</tool_call> [TOOL_CALLS] <|call|> <|end|> <|start|> </think> ```",
    "ds": "<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
    "nested": {"a": [1, -2.5e3, {"b": "}"}, [], {}], "t": True, "f": False, "n": None},
    "esc": 'quote " backslash \\ newline \n tab \t \u00e9',
    "uni": "Zürich 東京 😀",
}


def ids() -> Callable[[], str]:
    n = iter(range(1, 1000))
    return lambda: f"id{next(n)}"


def args(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False)


def call(name: str, obj: dict[str, Any], id_: str = "id1") -> ToolCall:
    return ToolCall(id=id_, name=name, arguments=args(obj))


def chunkings(raw: str) -> Iterator[list[str]]:
    """Whole, one character at a time, two pieces at every position, three pieces at a
    sample of position pairs (every pair near each other), and a few random chunkings."""
    n = len(raw)
    yield [raw]
    yield list(raw)
    for i in range(n + 1):
        yield [raw[:i], raw[i:]]
    rng = random.Random(n)
    pairs = {(i, i + d) for i in range(n) for d in (1, 2, 3) if i + d <= n}
    pairs |= {tuple(sorted(rng.sample(range(n + 1), 2))) for _ in range(min(150, n))}
    for i, j in sorted(pairs):
        yield [raw[:i], raw[i:j], raw[j:]]
    for _ in range(5):
        pieces, i = [], 0
        while i < n:
            k = rng.randint(1, 8)
            pieces.append(raw[i:i + k])
            i += k
        yield pieces


def parse_pieces(fmt: ReplyFormat, pieces: list[str], **kw: Any) -> ReplyParser:
    parser = ReplyParser(fmt, new_id=ids(), **kw)
    deltas = [parser.feed(piece) for piece in pieces] + [parser.finish()]
    total = Delta()
    for d in deltas:
        total.reasoning += d.reasoning
        total.content += d.content
        total.tool_calls += d.tool_calls
    assert Reply(total.reasoning, total.content, total.tool_calls) == parser.reply, pieces
    return parser


def parse(fmt: ReplyFormat, raw: str, **kw: Any) -> ReplyParser:
    """The parser after the whole of raw, checked to be the same for every chunking."""
    ref = parse_pieces(fmt, [raw], **kw)
    for pieces in chunkings(raw):
        p = parse_pieces(fmt, pieces, **kw)
        assert p.reply == ref.reply, pieces
        assert (p.call_opened, p.opened_name) == (ref.call_opened, ref.opened_name), pieces
    return ref


def check(fmt: ReplyFormat, raw: str, reasoning: str = "", content: str = "",
          calls: list[ToolCall] | None = None, **kw: Any) -> ReplyParser:
    kw.setdefault("names", NAMES)
    p = parse(fmt, raw, **kw)
    assert p.reply == Reply(reasoning, content, calls or [])
    return p


def opened_after(p: ReplyParser, raw: str, marker: str) -> None:
    assert p.call_opened is not None
    assert raw[:p.call_opened].endswith(marker)


# -- think ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [THINK, QWEN3, R1])
def test_think_plain_answer(fmt: ReplyFormat) -> None:
    check(fmt, "Hello, world.\n", content="Hello, world.\n", tools=True)
    check(fmt, "\n  Hi <think> there", content="\n  Hi <think> there", tools=True)
    check(fmt, "", tools=True)
    check(fmt, "<thinking is fun", content="<thinking is fun", tools=True)


@pytest.mark.parametrize("fmt", [THINK, QWEN3, R1])
def test_think_trace_then_answer(fmt: ReplyFormat) -> None:
    raw = "\n<think>\n  Let me think.\n\nStill  thinking. \n</think>\n\n The answer is 4.\n"
    p = check(fmt, raw, "Let me think.\n\nStill  thinking.", "The answer is 4.\n", tools=True)
    assert p.call_opened is None
    check(fmt, "<think>\n\n</think>\n\nHi", content="Hi", tools=True)
    check(fmt, "<think>a</think>b</think>c", "a", "b</think>c", tools=True)


@pytest.mark.parametrize("fmt", [THINK, QWEN3, R1])
def test_think_trace_never_closed(fmt: ReplyFormat) -> None:
    check(fmt, "<think>\nhmm, let me see \n\n", "hmm, let me see", tools=True)
    check(fmt, "<think>\nhmm </thin", "hmm </thin", tools=True)


@pytest.mark.parametrize("fmt", [THINK, QWEN3, R1])
def test_think_in_reasoning(fmt: ReplyFormat) -> None:
    raw = "\nOkay, so 2+2.\n</think>\n\nIt is 4."
    check(fmt, raw, "Okay, so 2+2.", "It is 4.", in_reasoning=True, tools=True)
    check(fmt, "still going", "still going", in_reasoning=True)
    check(fmt, "<think>x</think>y", "<think>x", "y", in_reasoning=True)


def test_in_trace() -> None:
    p = ReplyParser(THINK)
    p.feed("<think>a")
    assert p.in_trace
    p.feed("</think>b")
    assert not p.in_trace
    h = ReplyParser(GPT_OSS)
    h.feed("<|channel|>analysis<|message|>x")
    assert h.in_trace
    h.feed("<|start|>assistant<|channel|>final<|message|>y")
    assert not h.in_trace


# -- hermes ---------------------------------------------------------------------------------

W = {"city": "Paris"}


def hermes(name: str, obj: Any, key: str = "arguments") -> str:
    return f'<tool_call>\n{{"name": "{name}", "{key}": {json.dumps(obj)}}}\n</tool_call>'


@pytest.mark.parametrize("fmt", [HERMES, QWEN3])
def test_hermes_one_call(fmt: ReplyFormat) -> None:
    raw = hermes("get_weather", W)
    p = check(fmt, raw, calls=[call("get_weather", W)], tools=True)
    opened_after(p, raw, "<tool_call>")
    assert p.opened_name is None
    check(fmt, raw.replace("\n", ""), calls=[call("get_weather", W)], tools=True)


def test_hermes_trace_then_call() -> None:
    raw = ("<think>\nI need the weather. <tool_call> not yet\n</think>\n\n"
           + hermes("get_weather", W))
    p = check(QWEN3, raw, "I need the weather. <tool_call> not yet",
              calls=[call("get_weather", W)], tools=True)
    opened_after(p, raw, "</think>\n\n<tool_call>")


def test_hermes_two_calls_and_content_before() -> None:
    raw = ("Let me check both.\n\n" + hermes("get_weather", W) + "\n"
           + hermes("search", {"q": "x"}) + "\n")
    p = check(QWEN3, raw, content="Let me check both.",
              calls=[call("get_weather", W), call("search", {"q": "x"}, "id2")], tools=True)
    opened_after(p, raw, "both.\n\n<tool_call>")
    raw = hermes("get_weather", W) + "\n\nDone, see above. "
    check(HERMES, raw, content="Done, see above. ", calls=[call("get_weather", W)], tools=True)


def test_hermes_tricky_arguments() -> None:
    raw = hermes("get_weather", TRICKY)
    check(HERMES, raw, calls=[call("get_weather", TRICKY)], tools=True)
    raw = ('<tool_call>{"arguments": {"q": "</tool_call>"}, "name": "search"}</tool_call>')
    check(HERMES, raw, calls=[call("search", {"q": "</tool_call>"})], tools=True)


def test_hermes_arguments_as_string_parameters_or_missing() -> None:
    raw = hermes("get_weather", json.dumps(TRICKY))
    check(HERMES, raw, calls=[call("get_weather", TRICKY)], tools=True)
    check(HERMES, hermes("get_weather", W, key="parameters"), calls=[call("get_weather", W)],
          tools=True)
    check(HERMES, '<tool_call>{"name": "search"}</tool_call>', calls=[call("search", {})],
          tools=True)


@pytest.mark.parametrize("raw", [
    '<tool_call>\n{"name": "get_weather", "arguments": {city: 1}}\n</tool_call>',
    '<tool_call>\n{"name": "get_weather", "arguments": {"a": tru}}\n</tool_call>',
    '<tool_call>\n{"name": "get_weather", "arguments": [1]}\n</tool_call>',
    '<tool_call>\n{"name": "get_weather", "arguments": "not json"}\n</tool_call>',
    '<tool_call>\n{"name": "", "arguments": {}}\n</tool_call>',
    '<tool_call>\n{"arguments": {}}\n</tool_call>',
    '<tool_call>\n["get_weather"]\n</tool_call>',
    '<tool_call>\n{"name": "get_weather", "arguments": {}} trailing</tool_call>',
    '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>',  # not offered
    '<tool_call>\n{"name": "get_weather", "arguments": {}}\n',  # never closed
    '<tool_call>\n{"name": "get_weather", "arguments": {"q": "</tool_call>',  # never closed
    '<tool_call>',
    '<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_',
])
def test_hermes_bad_call_is_content(raw: str) -> None:
    p = check(QWEN3, "Checking.\n" + raw, content="Checking.\n" + raw, tools=True)
    opened_after(p, "Checking.\n" + raw, "<tool_call>")


def test_hermes_bad_call_then_good_call() -> None:
    bad = '<tool_call>{"name": "nope", "arguments": {}}</tool_call>'
    raw = bad + "\n" + hermes("search", W) + " end"
    check(HERMES, raw, content=bad + "end", calls=[call("search", W)], tools=True)


def test_hermes_names_not_given_accepts_any() -> None:
    raw = hermes("anything", W)
    check(HERMES, raw, calls=[call("anything", W)], tools=True, names=None)


@pytest.mark.parametrize("fmt", [HERMES, QWEN3])
def test_hermes_tools_off_is_content(fmt: ReplyFormat) -> None:
    raw = "Sure.\n" + hermes("get_weather", W)
    p = check(fmt, raw, content=raw, tools=False)
    assert p.call_opened is None


# -- llama3 ---------------------------------------------------------------------------------


def l3(name: str, obj: Any, key: str = "parameters") -> str:
    return json.dumps({"name": name, key: obj})


def test_llama3_plain_answer() -> None:
    p = check(LLAMA3, "The weather is {fine}.", content="The weather is {fine}.", tools=True)
    assert p.call_opened is None
    check(LLAMA3, "\n <|python_ta", content="\n <|python_ta", tools=True)
    check(LLAMA3, "<|pythonista|>", content="<|pythonista|>", tools=True)


def test_llama3_one_call() -> None:
    raw = l3("get_weather", W)
    p = check(LLAMA3, raw, calls=[call("get_weather", W)], tools=True)
    assert p.call_opened == 0
    raw = "<|python_tag|>" + l3("get_weather", W, key="arguments")
    p = check(LLAMA3, raw, calls=[call("get_weather", W)], tools=True)
    opened_after(p, raw, "<|python_tag|>")
    raw = "\n " + l3("get_weather", json.dumps(TRICKY))
    p = check(LLAMA3, raw, calls=[call("get_weather", TRICKY)], tools=True)
    assert p.call_opened == 2


def test_llama3_two_calls() -> None:
    want = [call("get_weather", W), call("search", TRICKY, "id2")]
    for sep in ("; ", "\n", ";\n"):
        raw = l3("get_weather", W) + sep + l3("search", TRICKY)
        check(LLAMA3, raw, calls=want, tools=True)


def test_llama3_trace_then_call() -> None:
    fmt = ReplyFormat(reasoning="think", tools="llama3")
    raw = "<think>{ not a call }</think>\n\n" + l3("get_weather", W)
    p = check(fmt, raw, "{ not a call }", calls=[call("get_weather", W)], tools=True)
    opened_after(p, raw, "</think>\n\n")


@pytest.mark.parametrize("raw", [
    '{"answer": 42}',  # JSON, but not a call
    '{"name": "get_weather", "parameters": {"a": }}',
    '{"name": "rm_rf", "parameters": {}}',
    '{"name": "get_weather", "parameters": {}} and some text',
    '{"name": "get_weather", "parameters": {"q": "never closed',
    '<|python_tag|>brave_search.call(query="x")',
    '<|python_tag|>',
])
def test_llama3_bad_call_is_content(raw: str) -> None:
    p = check(LLAMA3, raw, content=raw, tools=True)
    assert p.call_opened is not None


def test_llama3_tools_off_is_content() -> None:
    raw = l3("get_weather", W)
    p = check(LLAMA3, raw, content=raw, tools=False)
    assert p.call_opened is None


# -- mistral --------------------------------------------------------------------------------


def nemo(*calls_: tuple[str, Any], id_: str | None = None) -> str:
    items = [{"name": n, "arguments": a} | ({"id": id_} if id_ else {}) for n, a in calls_]
    return "[TOOL_CALLS]" + json.dumps(items)


def test_mistral_plain_answer() -> None:
    check(MISTRAL, "Just text [TOOL_CALL", content="Just text [TOOL_CALL", tools=True)


def test_mistral_json_array() -> None:
    raw = nemo(("get_weather", W), id_="abc123XYZ")
    p = check(MISTRAL, raw, calls=[call("get_weather", W, "abc123XYZ")], tools=True)
    opened_after(p, raw, "[TOOL_CALLS]")
    raw = "Let me look.\n" + nemo(("get_weather", W), ("search", TRICKY), id_="bad id")
    p = check(MISTRAL, raw, content="Let me look.",
              calls=[call("get_weather", W), call("search", TRICKY, "id2")], tools=True)
    opened_after(p, raw, "look.\n[TOOL_CALLS]")
    raw = nemo(("get_weather", json.dumps(W)))
    check(MISTRAL, raw, calls=[call("get_weather", W)], tools=True)
    raw = '[TOOL_CALLS] {"name": "search", "arguments": {"q": "]"}}'
    check(MISTRAL, raw, calls=[call("search", {"q": "]"})], tools=True)


def test_mistral_name_args_form() -> None:
    raw = "[TOOL_CALLS]get_weather[ARGS]" + json.dumps(W)
    p = check(MISTRAL, raw, calls=[call("get_weather", W)], tools=True)
    opened_after(p, raw, "[TOOL_CALLS]")
    raw = ("Two calls. [TOOL_CALLS]get_weather[ARGS]" + json.dumps(TRICKY)
           + "[TOOL_CALLS]search[ARGS]" + json.dumps(json.dumps(W)))
    check(MISTRAL, raw, content="Two calls.",
          calls=[call("get_weather", TRICKY), call("search", W, "id2")], tools=True)
    raw = "[TOOL_CALLS]search[CALL_ID]a1b2c3d4e[ARGS]" + json.dumps(W)
    check(MISTRAL, raw, calls=[call("search", W, "a1b2c3d4e")], tools=True)


@pytest.mark.parametrize("raw", [
    '[TOOL_CALLS][{"name": "get_weather", "arguments": {"a": nope}}]',
    '[TOOL_CALLS][{"name": "rm_rf", "arguments": {}}]',
    '[TOOL_CALLS][{"name": "get_weather", "arguments": {}}, {"name": "x", "arguments": {}}]',
    '[TOOL_CALLS][]',
    '[TOOL_CALLS][{"name": "get_weather", "arguments": {"q": "[TOOL_CALLS]',
    '[TOOL_CALLS]get_weather[ARGS]{"q": 1',
    '[TOOL_CALLS]get_weather[ARGS]{"q": 1]',
    '[TOOL_CALLS]get_weather[ARG]{"q": 1}',
    '[TOOL_CALLS]rm_rf[ARGS]{}',
    '[TOOL_CALLS]get weather[ARGS]{}',
    '[TOOL_CALLS]get_weather',
    '[TOOL_CALLS]',
])
def test_mistral_bad_call_is_content(raw: str) -> None:
    check(MISTRAL, raw, content=raw, tools=True)


def test_mistral_tools_off_and_default_ids() -> None:
    raw = nemo(("get_weather", W))
    check(MISTRAL, raw, content=raw, tools=False)
    p = ReplyParser(MISTRAL, tools=True)
    p.feed(raw)
    p.finish()
    assert re.fullmatch(r"[A-Za-z0-9]{9}", p.reply.tool_calls[0].id)
    h = ReplyParser(HERMES, tools=True)
    h.feed(hermes("get_weather", W))
    h.finish()
    assert re.fullmatch(r"call_[a-z0-9]{24}", h.reply.tool_calls[0].id)


# -- deepseek-r1 ----------------------------------------------------------------------------


def ds_call(name: str, obj: Any) -> str:
    return f"{CB}function{SEP}{name}\n```json\n{json.dumps(obj)}\n```{CE}"


def test_deepseek_one_and_two_calls() -> None:
    raw = B + ds_call("get_weather", W) + E
    p = check(R1, raw, calls=[call("get_weather", W)], tools=True)
    opened_after(p, raw, B)
    raw = ("Thinking done.\n\n" + B + ds_call("get_weather", TRICKY) + "\n"
           + ds_call("search", json.dumps(W)) + E + "\n")
    p = check(R1, raw, content="Thinking done.",
              calls=[call("get_weather", TRICKY), call("search", W, "id2")], tools=True)
    opened_after(p, raw, "done.\n\n" + B)


def test_deepseek_in_reasoning_then_call() -> None:
    raw = "Need weather " + B + "</think>\n\n" + B + ds_call("get_weather", W) + E
    p = check(R1, raw, "Need weather " + B, calls=[call("get_weather", W)], tools=True,
              in_reasoning=True)
    opened_after(p, raw, "</think>\n\n" + B)


def test_deepseek_lenient_forms() -> None:
    # the end of output after a complete block; no fence; V3.1's NAME<｜tool▁sep｜>{...}
    raw = B + ds_call("get_weather", W)
    check(R1, raw, calls=[call("get_weather", W)], tools=True)
    raw = f"{B}{CB}function{SEP}search\n{json.dumps(W)}\n{CE}{E}"
    check(R1, raw, calls=[call("search", W)], tools=True)
    raw = f"{B}{CB}search{SEP}{json.dumps(W)}{CE}{E}"
    check(R1, raw, calls=[call("search", W)], tools=True)


@pytest.mark.parametrize("raw", [
    B + ds_call("rm_rf", W) + E,
    B + ds_call("get_weather", W).replace('"city"', "city") + E,
    B + ds_call("get_weather", [1]) + E,
    B + ds_call("get_weather", W)[:-len(CE)],  # the call never closed
    B + ds_call("get_weather", W)[:40],
    B + E,
    B,
    B + "no call here",
])
def test_deepseek_bad_call_is_content(raw: str) -> None:
    check(R1, raw, content=raw, tools=True)


def test_deepseek_bad_block_then_good_block() -> None:
    bad = ds_call("rm_rf", W)
    raw = B + bad + ds_call("search", W) + E
    check(R1, raw, content=B + bad, calls=[call("search", W)], tools=True)


def test_deepseek_tools_off() -> None:
    raw = B + ds_call("get_weather", W) + E
    check(R1, raw, content=raw, tools=False)


# -- harmony --------------------------------------------------------------------------------

A = "<|channel|>analysis<|message|>"
F = "<|start|>assistant<|channel|>final<|message|>"


def test_harmony_plain_and_trace() -> None:
    check(GPT_OSS, "<|channel|>final<|message|>Hi there.", content="Hi there.")
    raw = A + "  Think about it. " + F + "The answer."
    p = check(GPT_OSS, raw, "Think about it.", "The answer.", tools=True)
    assert p.call_opened is None
    raw = A + "Think.<|end|>" + F + "The answer.<|return|>"
    check(GPT_OSS, raw, "Think.", "The answer.", tools=True)
    check(GPT_OSS, A + "Think.<|end|>\n" + F + "Answer.<|end|>", "Think.", "Answer.")
    check(GPT_OSS, "Plain text, no channel.", content="Plain text, no channel.")
    check(ReplyFormat(reasoning="harmony"), raw, "Think.", "The answer.")


def test_harmony_trace_never_closed_and_in_reasoning() -> None:
    check(GPT_OSS, A + "\nStill thinking \n", "Still thinking")
    check(GPT_OSS, "still < thinking<|start|>assistant<|channel|>final<|message|>Done.",
          "still < thinking", "Done.", in_reasoning=True)


def harmony_call(name: str, obj: Any, before: bool = False, constrain: bool = True,
                 end: str = "") -> str:
    c = " <|constrain|>json" if constrain else " json"
    if before:
        head = f"<|start|>assistant to=functions.{name}<|channel|>commentary{c}<|message|>"
    else:
        head = f"<|start|>assistant<|channel|>commentary to=functions.{name}{c}<|message|>"
    return head + json.dumps(obj) + end


@pytest.mark.parametrize("end", ["", "<|call|>", "<|end|>"])
@pytest.mark.parametrize("before", [False, True])
@pytest.mark.parametrize("constrain", [False, True])
def test_harmony_call(end: str, before: bool, constrain: bool) -> None:
    raw = A + "Need the weather." + harmony_call("get_weather", W, before, constrain, end)
    p = check(GPT_OSS, raw, "Need the weather.", calls=[call("get_weather", W)], tools=True)
    opened_after(p, raw, "<|message|>")
    assert p.opened_name == "get_weather"


def test_harmony_call_first_message_and_tricky_arguments() -> None:
    raw = ("<|channel|>commentary to=functions.search <|constrain|>json<|message|>"
           + json.dumps(TRICKY) + "<|call|>")
    p = check(GPT_OSS, raw, calls=[call("search", TRICKY)], tools=True)
    opened_after(p, raw, "json<|message|>")
    assert p.opened_name == "search"
    raw = A + "x" + harmony_call("search", json.dumps(TRICKY))
    check(GPT_OSS, raw, "x", calls=[call("search", TRICKY)], tools=True)


def test_harmony_preamble_and_two_calls() -> None:
    raw = (A + "Plan." + "<|start|>assistant<|channel|>commentary<|message|>Checking now."
           + harmony_call("get_weather", W, end="<|call|>")
           + harmony_call("search", {"q": "x"}, before=True))
    p = check(GPT_OSS, raw, "Plan.", "Checking now.",
              [call("get_weather", W), call("search", {"q": "x"}, "id2")], tools=True)
    assert p.opened_name == "get_weather"


@pytest.mark.parametrize("body", [
    '{"city": nope}',
    '["Paris"]',
    '{"city": "Paris"} extra',
    '{"city": "never closed <|call|>',
    "",
])
def test_harmony_bad_call_is_content(body: str) -> None:
    head = "<|start|>assistant<|channel|>commentary to=functions.get_weather json<|message|>"
    raw = A + "Hmm." + head + body
    p = check(GPT_OSS, raw, "Hmm.", body, tools=True)
    assert p.opened_name == "get_weather"


def test_harmony_unknown_name_and_tools_off() -> None:
    raw = A + "Hmm." + harmony_call("rm_rf", W, end="<|call|>")
    check(GPT_OSS, raw, "Hmm.", json.dumps(W), tools=True)
    raw = A + "Hmm." + harmony_call("get_weather", W, end="<|call|>")
    p = check(GPT_OSS, raw, "Hmm.", json.dumps(W), tools=False)
    assert p.call_opened is None


def test_harmony_long_header_is_text() -> None:
    text = "word " * 80
    raw = "<|start|>" + text + "<|message|>x"
    check(GPT_OSS, raw, content="<|start|>" + text.rstrip() + "x")


# -- streaming ------------------------------------------------------------------------------


def test_text_streams_and_calls_arrive_complete() -> None:
    p = ReplyParser(QWEN3, tools=True, names=NAMES, new_id=ids())
    assert p.feed("<think>\n") == Delta()
    assert p.feed("Hmm, rain? \n") == Delta(reasoning="Hmm, rain?")
    assert p.feed("Yes.\n</th") == Delta(reasoning=" \nYes.")
    assert p.feed("ink>\n\nLet me check") == Delta(content="Let me check")
    assert p.feed(".\n\n<tool_") == Delta(content=".")
    assert p.feed('call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}') == Delta()
    assert p.call_opened == len("<think>\nHmm, rain? \nYes.\n</think>\n\nLet me check.\n\n"
                                "<tool_call>")
    assert p.feed("\n</tool_call>") == Delta(tool_calls=[call("get_weather", W)])
    assert p.finish() == Delta()
    with pytest.raises(RuntimeError):
        p.feed("more")


def test_harmony_streams() -> None:
    p = ReplyParser(GPT_OSS, tools=True, new_id=ids())
    assert p.feed("<|channel|>analysis<|message|>Think") == Delta(reasoning="Think")
    assert p.feed("ing.<|start|>assistant<|channel|>final<|message|>Sun") == Delta(
        reasoning="ing.", content="Sun")
    assert p.feed("ny.") == Delta(content="ny.")
    assert p.finish() == Delta()
    assert p.reply == Reply("Thinking.", "Sunny.")
