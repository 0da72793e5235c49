"""What `serve` accepts and refuses about tools and reasoning, at validation (before any model
is involved): each refusal is a 400 naming the problem."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llmrun.server.schemas import ApiError, ChatRequest, parse

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}
ASK = [{"role": "user", "content": "hi"}]


def _req(**fields: Any) -> ChatRequest:
    body = {"model": "m", "messages": ASK, **fields}
    return parse(ChatRequest, json.dumps(body).encode())  # type: ignore[no-any-return]


def test_tools_and_choices_are_accepted() -> None:
    req = _req(tools=[TOOL], tool_choice={"type": "function",
                                          "function": {"name": "get_weather"}},
               parallel_tool_calls=False)
    assert req.choice() == "get_weather" and req.tool_list()[0]["function"]["name"] == (
        "get_weather")
    assert _req(tools=[TOOL]).choice() == "auto"
    assert _req(tools=[TOOL], tool_choice="none").choice() == "none"
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather",
                                                      "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "21"}]
    assert len(_req(tools=[TOOL], messages=history).messages) == 3


@pytest.mark.parametrize(("fields", "says"), [
    ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "not among the tools"),
    ({"tools": [TOOL, TOOL]}, "must be unique"),
    ({"tool_choice": "required"}, "needs tools"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "should match"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "string"}}}]}, "schema of an object"),
    ({"tools": [TOOL], "response_format": {"type": "json_object"}}, "cannot be combined"),
    ({"messages": [*ASK, {"role": "tool", "content": "x"}]}, "needs tool_call_id"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]},
     "only assistant"),
    ({"reasoning_effort": "extreme"}, "reasoning_effort"),
])
def test_refusals_are_400s(fields: dict[str, Any], says: str) -> None:
    with pytest.raises(ApiError) as caught:
        _req(**fields)
    assert caught.value.status == 400 and says in caught.value.message


@pytest.mark.parametrize(("fields", "thinking"), [
    ({}, None), ({"think": False}, False), ({"reasoning_effort": "none"}, False),
    ({"chat_template_kwargs": {"enable_thinking": False}}, False),
    ({"chat_template_kwargs": {"enable_thinking": True}}, True),
    ({"reasoning_effort": "high"}, "high"), ({"think": True}, True)])
def test_the_ways_clients_say_thinking(fields: dict[str, Any], thinking: Any) -> None:
    assert _req(**fields).thinking() == thinking
