"""Reply formats without the network: detect() on small template snippets, opens_reasoning()
on rendered prompt endings, for_template()'s message conventions, and render()'s extra
template variables. The published templates themselves are in test_published_templates.py."""

from __future__ import annotations

import collections
import json
from typing import Any

import pytest

from llmrun.formats import ReplyFormat
from llmrun.formats.detect import detect, opens_reasoning
from llmrun.formats.messages import for_template
from llmrun.templates import render

# --------------------------------------------------------------------------------------------
# detect()
# --------------------------------------------------------------------------------------------

QWEN3_LIKE = (
    "{% for m in messages %}{% if m.tool_calls %}{% for c in m.tool_calls %}"
    "<tool_call>{{ c.function.name }}</tool_call>{% endfor %}{% endif %}"
    "{% if m.reasoning_content %}<think>{{ m.reasoning_content }}</think>{% endif %}"
    "{% endfor %}{% if tools %}{{ tools | tojson }}{% endif %}"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "<think>\n\n</think>\n\n{% endif %}"
)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (QWEN3_LIKE, ReplyFormat("think", "hermes", "enable_thinking")),
        # Qwen2.5: tool calls, no trace
        ("{% for t in tools %}{{ t | tojson }}{% endfor %}<tool_call>",
         ReplyFormat(None, "hermes")),
        # Mistral
        ("{% if message.tool_calls is defined %}[TOOL_CALLS]{% endif %}",
         ReplyFormat(None, "mistral")),
        # DeepSeek-R1: reads message['tool_calls'] by key, never `tools`
        ("{% if message['tool_calls'] %}<｜tool▁calls▁begin｜>{% endif %}"
         "{{ '<｜Assistant｜><think>\\n' }}",
         ReplyFormat("think", "deepseek-r1")),
        # Llama 3.1: the python tag
        ("{% if tools is not none %}{{ '<|python_tag|>' }}{% endif %}",
         ReplyFormat(None, "llama3")),
        # Llama 3.2: no python tag, the "parameters" instruction and the ipython role
        ("{% if tools is not none %}{{ 'Respond in the format {\"name\": function name,"
         " \"parameters\": dictionary}' }}{% endif %}"
         "{% if message.role == 'ipython' %}x{% endif %}",
         ReplyFormat(None, "llama3")),
        # gpt-oss harmony
        ("{{ 'Reasoning: ' + reasoning_effort }}{% if tools %}x{% endif %}"
         "<|start|>assistant<|channel|>final<|message|>",
         ReplyFormat("harmony", "harmony", "reasoning_effort")),
        # gemma-2: nothing
        ("{% for m in messages %}<start_of_turn>{{ m.content }}<end_of_turn>{% endfor %}",
         ReplyFormat()),
    ],
)
def test_detect_rules(template: str, expected: ReplyFormat) -> None:
    assert detect(template) == expected


def test_tool_marker_without_tool_handling_is_not_tool_support() -> None:
    """A marker quoted in prose, by a template that never reads tools or tool_calls."""
    template = "{{ 'Never write <tool_call> or [TOOL_CALLS] yourself.' }}{{ messages[0].content }}"
    assert detect(template) == ReplyFormat()


def test_switch_only_when_the_code_reads_it() -> None:
    """enable_thinking in a comment or inside prose is not reading the variable."""
    assert detect("{# enable_thinking #}{{ 'set enable_thinking to false' }}").switch is None
    assert detect("{% if not enable_thinking %}</think>{% endif %}").switch == "enable_thinking"
    assert detect("{{ kwargs['enable_thinking'] }}").switch == "enable_thinking"
    assert detect("{% if reasoning_effort %}x{% endif %}").switch == "reasoning_effort"


def test_harmony_wins_over_think_markers() -> None:
    fmt = detect("<|channel|>analysis<|message|><think>{{ tools }}")
    assert fmt.reasoning == "harmony" and fmt.tools == "harmony"


def test_detect_survives_a_template_that_does_not_lex() -> None:
    assert detect("{{ 'unclosed <tool_call> }}") == ReplyFormat()


# --------------------------------------------------------------------------------------------
# opens_reasoning()
# --------------------------------------------------------------------------------------------

THINK = ReplyFormat(reasoning="think")


@pytest.mark.parametrize(
    ("ending", "fmt", "expected"),
    [
        ("<｜Assistant｜><think>\n", THINK, True),  # R1 distills
        ("<｜Assistant｜><think>", THINK, True),
        ("<|im_start|>assistant\n<think>\n\n", THINK, True),
        ("<|im_start|>assistant\n", THINK, False),  # Qwen3: the model opens it
        ("<|im_start|>assistant\n<think>\n\n</think>\n\n", THINK, False),  # enable_thinking=False
        ("<｜Assistant｜><think>\n</think>", THINK, False),  # R1 Qwen distill, thinking off
        ("<｜Assistant｜><think>\n", ReplyFormat(), False),  # no trace syntax: never
        ("<|start|>assistant", ReplyFormat("harmony", "harmony"), False),
        ("<|start|>assistant<|channel|>analysis<|message|>", ReplyFormat("harmony"), True),
    ],
)
def test_opens_reasoning(ending: str, fmt: ReplyFormat, expected: bool) -> None:
    assert opens_reasoning("<|im_start|>user\nhi<|im_end|>\n" + ending, fmt) is expected


# --------------------------------------------------------------------------------------------
# for_template()
# --------------------------------------------------------------------------------------------

HERMES_THINK = ReplyFormat("think", "hermes", "enable_thinking")


def _call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_for_template_basic_conventions() -> None:
    wire: list[dict[str, Any]] = [
        {"role": "developer", "content": [{"type": "text", "text": "Be"},
                                          {"type": "text", "text": "brief."}]},
        {"role": "user", "content": "Weather?", "name": "ann"},
        {"role": "assistant", "content": None, "reasoning_content": "Need a tool.",
         "tool_calls": [_call("call_1", "get_weather", '{"city": "Paris", "n": [1, 2]}')]},
        {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "Sunny"},
        {"role": "assistant", "content": "Sunny.", "tool_calls": []},
    ]
    assert for_template(wire, HERMES_THINK) == [
        {"role": "system", "content": "Be\nbrief."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "reasoning_content": "Need a tool.",
         "tool_calls": [{"id": "call_1", "type": "function", "function": {
             "name": "get_weather", "arguments": {"city": "Paris", "n": [1, 2]}}}]},
        {"role": "tool", "content": "Sunny", "tool_call_id": "call_1", "name": "get_weather"},
        {"role": "assistant", "content": "Sunny."},  # no empty tool_calls key
    ]


def test_for_template_does_not_modify_its_input() -> None:
    wire: list[dict[str, Any]] = [{"role": "assistant", "content": None,
                                   "tool_calls": [_call("c", "f", '{"a": 1}')]}]
    before = json.dumps(wire)
    for_template(wire, HERMES_THINK)
    assert json.dumps(wire) == before


@pytest.mark.parametrize(
    ("fmt", "key"),
    [
        (ReplyFormat("think", "hermes"), "reasoning_content"),
        (ReplyFormat("harmony", "harmony", "reasoning_effort"), "thinking"),
    ],
)
def test_trace_goes_where_the_template_reads_it(fmt: ReplyFormat, key: str) -> None:
    out = for_template([{"role": "assistant", "content": "4", "reasoning": "2+2"}], fmt)
    assert out == [{"role": "assistant", "content": "4", key: "2+2"}]


@pytest.mark.parametrize("fmt", [ReplyFormat(), ReplyFormat(None, "hermes"),
                                 ReplyFormat(None, "llama3")])
def test_no_trace_for_templates_without_trace_syntax(fmt: ReplyFormat) -> None:
    out = for_template([{"role": "assistant", "content": "4", "reasoning_content": "2+2"}], fmt)
    assert out == [{"role": "assistant", "content": "4"}]  # and never inside content


def test_empty_trace_is_no_trace() -> None:
    out = for_template([{"role": "assistant", "content": "4", "reasoning_content": ""}],
                       HERMES_THINK)
    assert "reasoning_content" not in out[0]


def test_deepseek_keeps_none_content_for_tool_call_turns() -> None:
    fmt = ReplyFormat("think", "deepseek-r1")
    wire: list[dict[str, Any]] = [
        {"role": "assistant", "content": None, "tool_calls": [_call("c", "f", "{}")]},
            {"role": "assistant", "content": None}]
    out = for_template(wire, fmt)
    assert out[0]["content"] is None
    assert out[1]["content"] == ""  # no tool calls: the general rule


def test_mistral_ids_are_made_nine_characters_consistently() -> None:
    fmt = ReplyFormat(None, "mistral")
    wire: list[dict[str, Any]] = [
            {"role": "assistant", "content": None,
             "tool_calls": [_call("call_0123456789abcdef", "f", "{}"),
                            _call("abcDEF123", "g", "{}")]},
            {"role": "tool", "tool_call_id": "call_0123456789abcdef", "content": "1"},
            {"role": "tool", "tool_call_id": "abcDEF123", "content": "2"}]
    out = for_template(wire, fmt)
    first, second = (call["id"] for call in out[0]["tool_calls"])
    assert len(first) == 9 and first.isalnum() and out[1]["tool_call_id"] == first
    assert second == "abcDEF123" and out[2]["tool_call_id"] == "abcDEF123"  # valid ids kept
    # other families keep ids as they are
    assert for_template(wire, HERMES_THINK)[1]["tool_call_id"] == "call_0123456789abcdef"


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [("", {}), ("  ", {}), (None, {}), ({"a": 1}, {"a": 1}), ('{"x": {"y": [true]}}',
                                                              {"x": {"y": [True]}})],
)
def test_arguments_decoding(arguments: Any, expected: dict[str, Any]) -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
    out = for_template([{"role": "assistant", "content": "", "tool_calls": [call]}],
                       HERMES_THINK)
    assert out[0]["tool_calls"][0]["function"]["arguments"] == expected


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"role": "function", "content": "x"}, "unsupported role"),
        ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
         "only text content parts"),
        ({"role": "user", "content": 3}, "content must be"),
        ({"role": "assistant", "content": "", "tool_calls": [_call("c", "f", "[1]")]},
         "must be a JSON object"),
        ({"role": "assistant", "content": "", "tool_calls": [_call("c", "f", "{bad")]},
         "not valid JSON"),
        ({"role": "assistant", "content": "", "tool_calls": [{"id": "c", "function": {}}]},
         "function.name"),
    ],
)
def test_for_template_rejects_what_it_cannot_convert(message: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        for_template([message], HERMES_THINK)


# --------------------------------------------------------------------------------------------
# render(..., variables=...)
# --------------------------------------------------------------------------------------------

USER = [{"role": "user", "content": "hi"}]


def test_variables_reach_the_template() -> None:
    template = (
        "{% if enable_thinking is defined and enable_thinking is false %}off{% endif %}"
        "|{{ reasoning_effort | default('medium') }}|"
        "{% if opts is defined %}{{ opts.tags | join(',') }}{% endif %}"
    )
    assert render(template, USER) == "|medium|"
    assert render(
        template, USER,
        variables={"enable_thinking": False, "reasoning_effort": "low",
                   "opts": {"tags": ["a", "b"]}},
    ) == "off|low|a,b"


@pytest.mark.parametrize(
    "name",
    ["messages", "tools", "bos_token", "eos_token", "add_generation_prompt",
     "raise_exception", "strftime_now", "range", "namespace", "not-a-name", "for", ""],
)
def test_variables_cannot_replace_builtins(name: str) -> None:
    with pytest.raises(ValueError):
        render("x", USER, variables={name: 1})


class _Text(str):
    """A str subclass: it could carry methods and attributes a template should not see."""


@pytest.mark.parametrize(
    "value",
    [object(), len, b"bytes", {1: "x"}, [{"ok": [set()]}], ReplyFormat(),
     collections.defaultdict(list), collections.OrderedDict(), _Text("x")],
)
def test_variables_must_be_plain_data(value: Any) -> None:
    """Anything but plain data would give a hostile template new objects to inspect."""
    with pytest.raises(ValueError, match="template variable"):
        render("{{ v }}", USER, variables={"v": value})


def test_self_nesting_variable_is_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="nested too deeply"):
        render("x", USER, variables={"v": loop})
