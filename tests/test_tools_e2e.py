"""Reasoning and tool calls end to end with the real Gemma model, given a chat template that
declares both (tests/fixtures/gemma-tools.jinja, written into a copy of the GGUF with gguf's
own gguf_new_metadata): through `serve` with the official openai client, streamed and
not, and through `run`. The model is a tiny base model: generation is constrained (a trace
budget, tool_choice required) so that it must produce a trace and a valid call."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Cli, copy_store, make_env
from test_serve import Server

from llmrun.formats.grammar import ToolGrammar

TEMPLATE = Path(__file__).parent / "fixtures" / "gemma-tools.jinja"
NAME = "gemma-tools"
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 24},
            "unit": {"type": "string", "enum": ["C", "F"]}},
            "required": ["city", "unit"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "schedule", "description": "Book a meeting",
        "parameters": {"type": "object", "properties": {
            "title": {"type": "string", "maxLength": 24},
            "people": {"type": "array", "items": {"type": "string", "maxLength": 12},
                       "minItems": 1, "maxItems": 3},
            "when": {"type": "object", "properties": {"day": {"type": "integer"},
                                                       "hour": {"type": "integer"}},
                     "required": ["day", "hour"]}},
            "required": ["title", "people", "when"]}}}]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def tools_root(gemma_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home holding `gemma-tools`: the real weights with the test template."""
    root = tmp_path_factory.mktemp("tools")
    model = root / "gemma-tools.gguf"
    subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(gemma_file),
                    str(model), "--chat-template-file", str(TEMPLATE), "--force"],
                   check=True, capture_output=True, timeout=300)
    cli = Cli(make_env(root), root)
    proc = cli("import", str(model), "--name", NAME, "--link")
    assert proc.returncode == 0, proc.stderr
    return root


@pytest.fixture(scope="module")
def tools_server(tools_root: Path) -> Iterator[str]:
    srv = Server(tools_root, "--ctx", "2048")
    yield srv.url
    srv.stop()


def _client(url: str) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def _check_call(call: Any) -> dict[str, Any]:
    """A tool call as OpenAI's client parsed it: a known function, arguments that are JSON
    and match that function's schema."""
    import jsonschema

    tool = next(t for t in TOOLS if t["function"]["name"] == call.function.name)
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, tool["function"]["parameters"])
    assert call.type == "function" and call.id
    return dict(args)


def test_required_call_with_a_trace_whole(tools_server: str) -> None:
    reply = _client(tools_server).chat.completions.create(
        model=NAME, messages=ASK, tools=TOOLS, tool_choice="required", temperature=0,
        max_tokens=300, parallel_tool_calls=False, extra_body={"reasoning_budget": 12})
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    message = choice.message
    assert message.tool_calls and len(message.tool_calls) >= 1
    for call in message.tool_calls:
        _check_call(call)
    trace = message.model_extra.get("reasoning_content")
    assert isinstance(trace, str) and trace.strip()  # the trace is apart, never in content
    assert not message.content
    assert "</think>" not in trace and "<tool_call>" not in trace  # (the model may write
    # "<think>" inside its trace: that is text; the markers that end it never are)


def test_named_call_streamed(tools_server: str) -> None:
    stream = _client(tools_server).chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "Book lunch with Ann on day 3."}],
        tools=TOOLS, tool_choice={"type": "function", "function": {"name": "schedule"}},
        temperature=0, max_tokens=300, stream=True, parallel_tool_calls=False,
        extra_body={"reasoning_budget": 8})
    trace, content, finish = "", "", None
    calls: dict[int, dict[str, str]] = {}
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        trace += (delta.model_extra or {}).get("reasoning_content") or ""
        content += delta.content or ""
        for frag in delta.tool_calls or []:  # merged the way clients merge fragments
            got = calls.setdefault(frag.index, {"id": "", "name": "", "arguments": ""})
            got["id"] += frag.id or ""
            got["name"] += frag.function.name or "" if frag.function else ""
            got["arguments"] += frag.function.arguments or "" if frag.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and trace.strip() and not content.strip()
    assert [c["name"] for c in calls.values()] == ["schedule"] * len(calls)
    for got in calls.values():
        args = json.loads(got["arguments"])
        assert set(args) >= {"title", "people", "when"} and args["people"]


def test_tool_results_go_back_through_the_template(tools_server: str) -> None:
    messages: list[dict[str, Any]] = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "C"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'}]
    reply = _client(tools_server).chat.completions.create(
        model=NAME, messages=messages, tools=TOOLS, tool_choice="none", temperature=0,
        max_tokens=16, extra_body={"reasoning_budget": 4})
    choice = reply.choices[0]
    assert choice.finish_reason in ("stop", "length") and not choice.message.tool_calls


def test_thinking_off_means_no_trace(tools_server: str) -> None:
    reply = _client(tools_server).chat.completions.create(
        model=NAME, messages=ASK, temperature=0, max_tokens=12,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    message = reply.choices[0].message
    assert not (message.model_extra or {}).get("reasoning_content")
    assert message.content


def test_a_model_without_tools_in_its_template_refuses_them(pulled_root: Path,
                                                            tmp_path: Path) -> None:
    srv = Server(copy_store(pulled_root, tmp_path / "root"))
    try:
        from openai import BadRequestError

        with pytest.raises(BadRequestError, match="has no tool calling"):
            _client(srv.url).chat.completions.create(
                model="gemma3:270m-base", messages=ASK, tools=TOOLS, max_tokens=4)
    finally:
        srv.stop()


# ---- run: the trace never on stdout --------------------------------------------------------
def test_run_keeps_the_trace_off_stdout(tools_root: Path) -> None:
    cli = Cli(make_env(tools_root), tools_root)
    # all of a short answer is trace (the template opens it): nothing of it reaches stdout
    args = ("run", NAME, "--temperature", "0", "-n", "6", "The capital of France is")
    plain = cli(*args)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == "\n"
    data = json.loads(cli(*args, "--json").stdout)
    assert data["reasoning"].strip() and data["text"] == ""
    assert data["reasoning"] not in plain.stderr  # stderr is not a terminal: hidden
    shown = cli(*args, "--show-thinking")
    assert shown.stdout == "\n" and data["reasoning"].strip() in shown.stderr
    # with a budget, the trace is closed and an answer follows: stdout is exactly the answer
    budget = ("run", NAME, "--temperature", "0", "-n", "40", "--think-budget", "10",
              "The capital of France is")
    data = json.loads(cli(*budget, "--json").stdout)
    assert data["reasoning"].strip() and data["text"].strip()
    assert cli(*budget).stdout == data["text"].strip("\n") + "\n"


def test_run_no_think_and_what_cannot_be_done(tools_root: Path, gemma_cli: Cli) -> None:
    cli = Cli(make_env(tools_root), tools_root)
    args = ("--temperature", "0", "-n", "8", "--json", "Hi")
    assert json.loads(cli("run", NAME, *args).stdout)["reasoning"]  # opened by the template
    data = json.loads(cli("run", NAME, "--no-think", *args).stdout)
    assert "reasoning" not in data  # the template closed it: nothing was trace
    proc = cli("run", NAME, "--think", "high", "Hi")
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0] == (
        f"Error: {NAME} turns thinking on or off but takes no effort level")
    proc = gemma_cli("run", "gemma3:270m-base", "--think", "on", "Hi")
    assert proc.returncode == 2 and "does not reason" in proc.stderr


# ---- every tool syntax: the grammar and the parser agree, on the real model --------------
@pytest.mark.parametrize("syntax", ["hermes", "llama3", "mistral", "deepseek-r1", "harmony"])
def test_grammar_output_always_parses_as_calls(syntax: Any, gemma_file: Path) -> None:
    from llmrun.datatypes import LoadOptions, Sampling
    from llmrun.engine import Model
    from llmrun.formats import ReplyFormat
    from llmrun.formats.parse import ReplyParser

    model = Model(gemma_file, LoadOptions(n_ctx=1024))
    try:
        for seed in (0, 1):  # greedy, then sampled
            spec = ToolGrammar(syntax=syntax, tools=TOOLS, parallel=False)
            sampling = Sampling(temperature=0.7 if seed else 0.0, seed=seed, max_tokens=400,
                                tool_grammar=spec.as_dict())
            tokens = model.tokenize("Call the tools:\n", templated=False)
            text = "".join(model.generate(tokens, sampling))
            reasoning = "harmony" if syntax == "harmony" else "think"
            parser = ReplyParser(ReplyFormat(reasoning=reasoning, tools=syntax), tools=True)
            parser.feed(text)
            parser.finish()
            reply = parser.reply
            assert reply.tool_calls, (syntax, text)
            assert not reply.content.strip(), (syntax, text)
            for call in reply.tool_calls:
                _check_call(_Call(call.id, call.name, call.arguments))
    finally:
        model.close()


class _Call:
    def __init__(self, id: str, name: str, arguments: str) -> None:
        self.id, self.type = id, "function"
        self.function = type("F", (), {"name": name, "arguments": arguments})()


def test_client_mode_keeps_the_servers_trace_apart(tools_server: str, tools_root: Path,
                                                   tmp_path: Path) -> None:
    cli = Cli(make_env(tmp_path), tmp_path)  # no model here: all of it comes from the server
    args = ("run", NAME, "--endpoint", tools_server, "--temperature", "0", "-n", "6",
            "The capital of France is")
    plain = cli(*args)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == "\n"  # all six tokens were trace, which stays off stdout
    data = json.loads(cli(*args, "--json").stdout)
    assert data["reasoning"].strip() and data["text"] == ""
    local = json.loads(Cli(make_env(tools_root), tools_root)(*args[:2], *args[4:],
                                                             "--json").stdout)
    assert local["reasoning"] == data["reasoning"]  # the same trace, locally and remotely
    off = json.loads(cli("run", NAME, "--endpoint", tools_server, "--no-think", "--temperature",
                         "0", "-n", "8", "--json", "Hi").stdout)  # sent as enable_thinking
    assert "reasoning" not in off


def test_an_agent_framework_gets_valid_calls(tools_server: str) -> None:
    """LangChain, the way its docs bind tools to an OpenAI-compatible chat model."""
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str, unit: str) -> str:
        """Current weather in a city; unit is C or F."""
        return f"21 {unit} in {city}"

    llm = ChatOpenAI(base_url=tools_server + "/v1", api_key="unused", model=NAME,
                     temperature=0, max_tokens=200, max_retries=0,
                     extra_body={"reasoning_budget": 8})
    message = llm.bind_tools([get_weather], tool_choice="required").invoke(
        "What is the weather in Paris?")
    assert [c["name"] for c in message.tool_calls] == ["get_weather"] * len(message.tool_calls)
    assert message.tool_calls and not message.invalid_tool_calls
    args = message.tool_calls[0]["args"]
    assert set(args) == {"city", "unit"} and all(isinstance(v, str) for v in args.values())
    assert get_weather.invoke(args)  # the arguments fit the function as LangChain calls it


def test_chat_never_feeds_a_trace_back(tools_root: Path, tmp_path: Path) -> None:
    cli = Cli(make_env(tools_root), tools_root)
    saved = tmp_path / "t.json"
    proc = cli("chat", NAME, "--temperature", "0", "-n", "24", "--think-budget", "6",
               input=f"The capital of France is\nAnd of Spain?\n/save {saved}\n")
    assert proc.returncode == 0, proc.stderr
    replies = [m["content"] for m in json.loads(saved.read_text())["messages"]
               if m["role"] == "assistant"]
    assert len(replies) == 2
    assert all("</think>" not in r for r in replies)  # the trace stayed out of the history
    assert all(r in proc.stdout for r in replies)  # what was said is what is remembered


def test_json_from_a_reasoning_model_comes_after_its_trace(tools_root: Path) -> None:
    cli = Cli(make_env(tools_root), tools_root)
    schema = '{"type":"object","properties":{"city":{"type":"string","maxLength":12}},' \
             '"required":["city"]}'
    proc = cli("run", NAME, "--temperature", "0", "-n", "80", "--think-budget", "6",
               "--schema", schema, "--json", "Which city is the capital of France?")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["reasoning"].strip()  # it was allowed to think ...
    assert set(json.loads(data["text"])) == {"city"}  # ... and then answered in JSON
    plain = cli("run", NAME, "--temperature", "0", "-n", "80", "--think-budget", "6",
                "--schema", schema, "Which city is the capital of France?")
    assert json.loads(plain.stdout) == json.loads(data["text"])  # stdout: the JSON alone


def test_a_broken_tool_call_in_the_history_is_a_400(tools_server: str) -> None:
    import httpx

    messages = [*ASK, {"role": "assistant", "content": None, "tool_calls": [{
        "id": "c1", "type": "function",
        "function": {"name": "get_weather", "arguments": "{not json"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "21"}]
    resp = httpx.post(tools_server + "/v1/chat/completions", timeout=60, json={
        "model": NAME, "messages": messages, "tools": TOOLS, "max_tokens": 4})
    assert resp.status_code == 400
    assert "arguments are not valid JSON" in resp.json()["error"]["message"]


def test_import_with_a_chat_template_of_ones_own(gemma_file: Path, tmp_path: Path) -> None:
    """`import --chat-template FILE`: the same weights, the template from a file (no GGUF
    editing), used by run, show and serve; a template that cannot render is refused."""
    cli = Cli(make_env(tmp_path), tmp_path)
    proc = cli("import", str(gemma_file), "--name", "mine", "--link", "--chat-template",
               str(TEMPLATE))
    assert proc.returncode == 0, proc.stderr
    shown = cli("show", "mine", "--template")
    assert shown.stdout == TEMPLATE.read_text().rstrip("\n") + "\n"
    data = json.loads(cli("run", "mine", "--temperature", "0", "-n", "6", "--json",
                          "The capital of France is").stdout)
    assert data["reasoning"].strip() and data["text"] == ""  # the template opened a trace
    srv = Server(tmp_path, "--ctx", "1024")
    try:
        reply = _client(srv.url).chat.completions.create(
            model="mine", messages=ASK, tools=TOOLS, tool_choice="required", temperature=0,
            max_tokens=200, parallel_tool_calls=False, extra_body={"reasoning_budget": 6})
        assert reply.choices[0].finish_reason == "tool_calls"
        _check_call(reply.choices[0].message.tool_calls[0])
    finally:
        srv.stop()
    broken = tmp_path / "broken.jinja"
    broken.write_text("{{ messages[0]['content'] | no_such_filter }}")
    proc = cli("import", str(gemma_file), "--name", "other", "--link", "--chat-template",
               str(broken))
    assert proc.returncode == 2 and "does not render" in proc.stderr
    assert cli("show", "other").returncode == 3  # nothing was imported
