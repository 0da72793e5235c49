"""Published chat templates, rendered through llmrun's path (``for_template`` then the sandboxed
``templates.render``), must give exactly what Hugging Face ``apply_chat_template`` gives for
the same conversation written the way its users write it.

The templates are third-party files and are not committed: a session fixture downloads the
sdist of the installed llama-cpp-python (its ``vendor/llama.cpp/models/templates`` holds
copies llama.cpp tests against) and extracts only those ``.jinja`` files. If that fails the
tests fail; they never skip, so a broken download cannot pass silently.

The reference renderer is HF's: a plain ``ImmutableSandboxedEnvironment`` with
``trim_blocks``, ``lstrip_blocks``, ``loopcontrols``, ``raise_exception``, ``strftime_now``
and HF's ``tojson``. Both renders see the same fixed date. The HF-side messages are written
by hand here, not produced by ``for_template``: that is what is under test.

One prompt per family is also committed as ``tests/fixtures/rendered/<family>.txt`` (our own
rendering, not the template), so a change in either renderer shows up as a diff;
``LLMRUN_REGEN_FIXTURES=1`` rewrites them.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import jinja2
import jinja2.sandbox
import pytest

import llmrun.templates.sandbox as sandbox_module
from llmrun import templates
from llmrun.formats import ReplyFormat
from llmrun.formats.detect import arguments_as_text, detect, opens_reasoning
from llmrun.formats.messages import for_template

FIXTURES = Path(__file__).parent / "fixtures" / "rendered"
TEMPLATE_MEMBERS = "*/vendor/llama.cpp/models/templates/*.jinja"
FIXED_NOW = datetime(2025, 3, 14, 15, 9, 26)


# --------------------------------------------------------------------------------------------
# The templates: downloaded, never committed
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def published(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """``{file name: template text}`` from the installed llama-cpp-python version's sdist."""
    version = importlib.metadata.version("llama_cpp_python")
    download = tmp_path_factory.mktemp("sdist")
    command = [sys.executable, "-m", "pip", "download", f"llama-cpp-python=={version}",
               "--no-deps", "--no-binary=:all:", "-d", str(download)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _download_failed(version, repr(exc))
    archives = sorted(download.glob("*.tar.gz"))
    if result.returncode != 0 or not archives:
        _download_failed(version, (result.stdout + result.stderr)[-2000:])
    target = tmp_path_factory.mktemp("templates")
    with tarfile.open(archives[0], "r:gz") as tar:
        members = [
            m for m in tar.getmembers()
            if m.isfile() and fnmatch.fnmatch(m.name, TEMPLATE_MEMBERS)
            and ".." not in Path(m.name).parts and not m.name.startswith("/")
        ]
        if hasattr(tarfile, "data_filter"):
            tar.extractall(target, members=members, filter="data")
        else:  # a Python without extraction filters: read the selected files ourselves
            for member in members:
                source = tar.extractfile(member)
                assert source is not None
                (target / member.name).parent.mkdir(parents=True, exist_ok=True)
                (target / member.name).write_bytes(source.read())
    found = {path.name: path.read_text(encoding="utf-8") for path in target.rglob("*.jinja")}
    if not found:
        pytest.fail(f"llama-cpp-python {version}'s sdist has no {TEMPLATE_MEMBERS} files")
    return found


def _download_failed(version: str, detail: str) -> NoReturn:
    pytest.fail(
        f"could not download the llama-cpp-python {version} sdist from PyPI, which holds the"
        f" published chat templates these tests need (they are not committed):\n{detail}",
        pytrace=False,
    )


@pytest.fixture(autouse=True)
def _fixed_date(monkeypatch: pytest.MonkeyPatch) -> None:
    """llmrun's ``strftime_now`` is ``datetime.now().strftime(fmt)``, like HF's; pin now()."""

    class _Fixed(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> _Fixed:
            return cls.combine(FIXED_NOW.date(), FIXED_NOW.time(), tz)

    monkeypatch.setattr(sandbox_module, "datetime", _Fixed)


# --------------------------------------------------------------------------------------------
# The reference: Hugging Face transformers' apply_chat_template
# --------------------------------------------------------------------------------------------


def _hf_raise(message: str) -> NoReturn:
    raise jinja2.exceptions.TemplateError(message)


def _hf_tojson(
    x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def hf_render(
    template: str, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None,
    variables: dict[str, Any], bos_token: str, eos_token: str,
) -> str:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = _hf_tojson
    env.globals["raise_exception"] = _hf_raise
    env.globals["strftime_now"] = lambda fmt: FIXED_NOW.strftime(fmt)
    return env.from_string(template).render(
        messages=messages, tools=tools, bos_token=bos_token, eos_token=eos_token,
        add_generation_prompt=True, **variables,
    )


# --------------------------------------------------------------------------------------------
# Conversations: the OpenAI wire form and, written separately by hand, the HF form
# --------------------------------------------------------------------------------------------

TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"],
                         "description": "Temperature unit"},
            },
            "required": ["city"],
        },
    }},
    {"type": "function", "function": {
        "name": "plan_trip",
        "description": "Plan a trip through several cities.",
        "parameters": {
            "type": "object",
            "properties": {
                "stops": {
                    "type": "array",
                    "description": "The cities, in order",
                    "items": {
                        "type": "object",
                        "properties": {"city": {"type": "string"},
                                       "days": {"type": "integer"}},
                        "required": ["city", "days"],
                    },
                },
                "options": {
                    "type": "object",
                    "description": "Preferences",
                    "properties": {"budget": {"type": "number"},
                                   "tags": {"type": "array", "items": {"type": "string"}}},
                },
            },
            "required": ["stops"],
        },
    }},
]

SYSTEM = "You are a travel assistant. Café prices are in €."
ASK = "What's the weather in Paris?"
WEATHER = '{"temperature": 21, "sky": "sunny"}'
TRIP = '{"ok": true, "nights": 3}'
TRACE_1 = "The user wants the weather, so I should call get_weather."
TRACE_2 = "The tool says sunny and 21 degrees."
ANSWER = "It is sunny and 21 °C in Paris."
LAST = "Plan two days in Lyon\nand one in Nice."
PLAN_ARGS = {"stops": [{"city": "Lyon", "days": 2}, {"city": "Nice", "days": 1}],
             "options": {"budget": 900.5, "tags": ["food", "museums"]}}


@dataclass(frozen=True)
class Style:
    """How a family's HF users write the same conversation."""

    trace: str | None = None  # the key the template reads a past trace from, if any
    ids: tuple[str, str] = ("call_7f3a", "call_9b2c")  # Mistral: exactly 9 characters
    none_content: bool = False  # DeepSeek-R1: a tool-call turn's content is None
    system_role: str = "system"  # the wire role of the system prompt (developer for gpt-oss)


@dataclass
class Case:
    wire: list[dict[str, Any]]
    hf: list[dict[str, Any]]


def _wire_call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)}}


def _hf_call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _hf_assistant(style: Style, content: str | None, trace: str,
                  calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    if style.trace is not None:
        message[style.trace] = trace
    return message


def _head(style: Style) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    wire = [{"role": style.system_role, "content": SYSTEM}, {"role": "user", "content": ASK}]
    hf = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ASK}]
    return wire, hf


def full(style: Style) -> Case:
    """A tool round trip, its answer, and a new question: past traces are history now."""
    wire, hf = _head(style)
    first = style.ids[0]
    wire += [
        {"role": "assistant", "content": None, "reasoning_content": TRACE_1,
         "tool_calls": [_wire_call(first, "get_weather", {"city": "Paris"})]},
        {"role": "tool", "tool_call_id": first, "content": WEATHER},
        {"role": "assistant", "content": ANSWER, "reasoning_content": TRACE_2},
        {"role": "user", "content": [{"type": "text", "text": "Plan two days in Lyon"},
                                     {"type": "text", "text": "and one in Nice."}]},
    ]
    hf += [
        _hf_assistant(style, None if style.none_content else "", TRACE_1,
                      [_hf_call(first, "get_weather", {"city": "Paris"})]),
        {"role": "tool", "tool_call_id": first, "content": WEATHER},
        _hf_assistant(style, ANSWER, TRACE_2),
        {"role": "user", "content": LAST},
    ]
    return Case(wire, hf)


def in_loop(style: Style) -> Case:
    """Mid tool loop: the prompt ends on a tool result, the current turn's trace matters."""
    wire, hf = _head(style)
    first = style.ids[0]
    wire += [
        {"role": "assistant", "content": None, "reasoning_content": TRACE_1,
         "tool_calls": [_wire_call(first, "plan_trip", PLAN_ARGS)]},
        {"role": "tool", "tool_call_id": first, "content": TRIP},
    ]
    hf += [
        _hf_assistant(style, None if style.none_content else "", TRACE_1,
                      [_hf_call(first, "plan_trip", PLAN_ARGS)]),
        {"role": "tool", "tool_call_id": first, "content": TRIP},
    ]
    return Case(wire, hf)


def parallel(style: Style) -> Case:
    """Two calls in one turn, two results, then the answer is pending."""
    wire, hf = _head(style)
    a, b = style.ids
    wire += [
        {"role": "assistant", "content": "Checking both.", "reasoning_content": TRACE_1,
         "tool_calls": [_wire_call(a, "get_weather", {"city": "Paris"}),
                        _wire_call(b, "get_weather", {"city": "Nice", "unit": "celsius"})]},
        {"role": "tool", "tool_call_id": a, "content": WEATHER},
        {"role": "tool", "tool_call_id": b, "content": "22"},
    ]
    hf += [
        _hf_assistant(style, "Checking both.", TRACE_1,
                      [_hf_call(a, "get_weather", {"city": "Paris"}),
                       _hf_call(b, "get_weather", {"city": "Nice", "unit": "celsius"})]),
        {"role": "tool", "tool_call_id": a, "content": WEATHER},
        {"role": "tool", "tool_call_id": b, "content": "22"},
    ]
    return Case(wire, hf)


def chat(style: Style, *, system: bool = True) -> Case:
    """No tool calls in the history: for templates that cannot render them."""
    wire, hf = _head(style)
    if not system:
        wire, hf = wire[1:], hf[1:]
    wire += [{"role": "assistant", "content": ANSWER, "reasoning_content": TRACE_2},
             {"role": "user", "content": LAST}]
    hf += [_hf_assistant(style, ANSWER, TRACE_2), {"role": "user", "content": LAST}]
    return Case(wire, hf)


# --------------------------------------------------------------------------------------------
# The families
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    file: str
    fmt: ReplyFormat
    style: Style
    bos: str
    eos: str
    conversations: tuple[str, ...]  # names in CONVERSATIONS
    tools_optional: bool = True  # also render without tools
    variable_sets: tuple[dict[str, Any], ...] = ({},)
    fixture: str = "full"  # the conversation whose prompt is committed


def chat_no_system(style: Style) -> Case:
    return chat(style, system=False)


CONVERSATIONS: dict[str, Callable[[Style], Case]] = {
    "full": full,
    "in_loop": in_loop,
    "parallel": parallel,
    "chat": chat,
    "chat_no_system": chat_no_system,
}

THINK = Style(trace="reasoning_content")
NO_TRACE = Style()
MISTRAL_IDS = ("call00001", "Zz9Yy8Xx7")

FAMILIES: dict[str, Family] = {
    "qwen3": Family(
        "Qwen-Qwen3-0.6B.jinja", ReplyFormat("think", "hermes", "enable_thinking"), THINK,
        "", "<|im_end|>", ("full", "in_loop", "parallel", "chat"),
        variable_sets=({}, {"enable_thinking": False}, {"enable_thinking": True}),
    ),
    "qwen2.5": Family(
        "Qwen-Qwen2.5-7B-Instruct.jinja", ReplyFormat(None, "hermes"), NO_TRACE,
        "", "<|im_end|>", ("full", "in_loop", "parallel", "chat"),
    ),
    "hermes3": Family(
        # the template iterates `tools` unconditionally: it needs tools
        "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja", ReplyFormat(None, "hermes"),
        NO_TRACE, "<|begin_of_text|>", "<|im_end|>", ("full", "in_loop", "parallel", "chat"),
        tools_optional=False,
    ),
    "llama3.1": Family(
        # one tool call per turn ("This model only supports single tool-calls at once!")
        "meta-llama-Llama-3.1-8B-Instruct.jinja", ReplyFormat(None, "llama3"), NO_TRACE,
        "<|begin_of_text|>", "<|eot_id|>", ("full", "in_loop", "chat"),
    ),
    "llama3.2": Family(
        "meta-llama-Llama-3.2-3B-Instruct.jinja", ReplyFormat(None, "llama3"), NO_TRACE,
        "<|begin_of_text|>", "<|eot_id|>", ("full", "in_loop", "chat"),
    ),
    "mistral-nemo": Family(
        "mistralai-Mistral-Nemo-Instruct-2407.jinja", ReplyFormat(None, "mistral"),
        Style(ids=MISTRAL_IDS), "<s>", "</s>", ("full", "in_loop", "parallel", "chat"),
    ),
    "devstral": Family(
        "unsloth-mistral-Devstral-Small-2507.jinja", ReplyFormat(None, "mistral"),
        Style(ids=MISTRAL_IDS), "<s>", "</s>", ("full", "in_loop", "parallel", "chat"),
    ),
    "r1-qwen": Family(
        "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
        ReplyFormat("think", "deepseek-r1", "enable_thinking"),
        Style(trace="reasoning_content", none_content=True),
        "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", ("full", "in_loop", "parallel", "chat"),
        variable_sets=({}, {"enable_thinking": True}, {"enable_thinking": False}),
    ),
    "r1-llama": Family(
        # its template concatenates arguments as a string: no tool-call history (see below)
        "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja", ReplyFormat("think", "deepseek-r1"),
        Style(trace="reasoning_content", none_content=True),
        "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", ("chat", "chat_no_system"),
        fixture="chat",
    ),
    "gpt-oss": Family(
        # one tool call per turn (it reads tool_calls[0] only)
        "openai-gpt-oss-120b.jinja", ReplyFormat("harmony", "harmony", "reasoning_effort"),
        Style(trace="thinking", system_role="developer"), "<|startoftext|>", "<|return|>",
        ("full", "in_loop", "chat"),
        variable_sets=({}, {"reasoning_effort": "low"}, {"reasoning_effort": "high"}),
    ),
    "gemma2": Family(
        # no system role, strict user/assistant alternation, no tools
        "google-gemma-2-2b-it.jinja", ReplyFormat(), NO_TRACE, "<bos>", "<eos>",
        ("chat_no_system",), fixture="chat_no_system",
    ),
}


def _cases() -> list[Any]:
    return list(_iter_cases())


def _iter_cases() -> Iterator[Any]:
    for family_name, family in FAMILIES.items():
        for conversation in family.conversations:
            tool_sets = (True, False) if family.tools_optional else (True,)
            for with_tools in tool_sets:
                for variables in family.variable_sets:
                    label = "-".join(f"{k}={v}" for k, v in variables.items()) or "default"
                    yield pytest.param(
                        family_name, conversation, with_tools, variables,
                        id=f"{family_name}-{conversation}-{'tools' if with_tools else 'notools'}"
                           f"-{label}",
                    )


def render_both(
    published: dict[str, str], family_name: str, conversation: str, *, with_tools: bool = True,
    variables: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """(llmrun's prompt, HF's prompt) for one family and conversation."""
    family = FAMILIES[family_name]
    template = published[family.file]
    case = CONVERSATIONS[conversation](family.style)
    tools = TOOLS if with_tools else None
    variables = variables or {}
    ours = templates.render(
        template, for_template(case.wire, family.fmt,
                               arguments_as_text=arguments_as_text(template)),
        bos_token=family.bos,
        eos_token=family.eos, source=family.file, tools=tools, variables=variables,
    )
    theirs = hf_render(template, case.hf, tools=tools, variables=variables,
                       bos_token=family.bos, eos_token=family.eos)
    return ours, theirs


# --------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family_name", FAMILIES)
def test_detect(published: dict[str, str], family_name: str) -> None:
    family = FAMILIES[family_name]
    assert detect(published[family.file]) == family.fmt


@pytest.mark.parametrize(("family_name", "conversation", "with_tools", "variables"), _cases())
def test_renders_like_transformers(
    published: dict[str, str], family_name: str, conversation: str, with_tools: bool,
    variables: dict[str, Any],
) -> None:
    ours, theirs = render_both(published, family_name, conversation, with_tools=with_tools,
                               variables=variables)
    assert ours == theirs


@pytest.mark.parametrize("family_name", FAMILIES)
def test_committed_prompt(published: dict[str, str], family_name: str) -> None:
    family = FAMILIES[family_name]
    ours, _ = render_both(published, family_name, family.fixture,
                          with_tools=family.fmt.tools is not None)
    path = FIXTURES / f"{family_name}.txt"
    if os.environ.get("LLMRUN_REGEN_FIXTURES") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(ours.encode("utf-8"))  # bytes: no newline translation
    assert path.read_bytes().decode("utf-8") == ours


# ---- what the prompts must contain, family by family ---------------------------------------


def test_qwen3(published: dict[str, str]) -> None:
    prompt, _ = render_both(published, "qwen3", "full")
    assert ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
            in prompt)
    assert f"<|im_start|>user\n<tool_response>\n{WEATHER}\n</tool_response><|im_end|>" in prompt
    assert '{"type": "function", "function": {"name": "plan_trip"' in prompt  # the tools
    # the traces came before the last user question: Qwen3 drops them
    assert TRACE_1 not in prompt and TRACE_2 not in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    assert not opens_reasoning(prompt, FAMILIES["qwen3"].fmt)

    # mid tool loop the current turn's trace is kept
    prompt, _ = render_both(published, "qwen3", "in_loop")
    assert f"<|im_start|>assistant\n<think>\n{TRACE_1}\n</think>\n\n<tool_call>" in prompt
    assert json.dumps(PLAN_ARGS) in prompt

    prompt, _ = render_both(published, "qwen3", "full", variables={"enable_thinking": False})
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not opens_reasoning(prompt, FAMILIES["qwen3"].fmt)


def test_qwen25_and_hermes3(published: dict[str, str]) -> None:
    for family in ("qwen2.5", "hermes3"):
        prompt, _ = render_both(published, family, "full")
        assert ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
                "</tool_call>") in prompt
        assert f"<tool_response>\n{WEATHER}\n</tool_response>" in prompt
        assert TRACE_1 not in prompt and TRACE_2 not in prompt
    prompt, _ = render_both(published, "qwen2.5", "parallel")
    assert prompt.count("<tool_call>\n") == 3  # two calls, plus the format instruction


@pytest.mark.parametrize("family_name", ["llama3.1", "llama3.2"])
def test_llama3(published: dict[str, str], family_name: str) -> None:
    prompt, _ = render_both(published, family_name, "full")
    # the tool definitions go in the first user message (tools_in_user_message defaults true)
    user = prompt.index("<|start_header_id|>user<|end_header_id|>\n\nGiven the following")
    assert prompt.index('    "type": "function",\n    "function": {\n        "name": "get_weather"'
                        ) > user
    assert prompt.index(ASK) > user
    assert ('<|start_header_id|>assistant<|end_header_id|>\n\n'
            '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>') in prompt
    assert f"<|start_header_id|>ipython<|end_header_id|>\n\n{json.dumps(WEATHER)}" in prompt
    assert "Environment: ipython" in prompt
    if family_name == "llama3.2":
        assert "Today Date: 14 Mar 2025" in prompt  # strftime_now, pinned


def test_mistral(published: dict[str, str]) -> None:
    prompt, _ = render_both(published, "mistral-nemo", "full")
    assert ('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"},'
            ' "id": "call00001"}]</s>') in prompt
    assert f'[TOOL_RESULTS]{{"content": {WEATHER}, "call_id": "call00001"}}[/TOOL_RESULTS]' in (
        prompt)
    assert prompt.index("[AVAILABLE_TOOLS]") < prompt.index("[INST]" + SYSTEM + "\n\n" + LAST)

    prompt, _ = render_both(published, "devstral", "full")
    assert '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}</s>' in prompt
    assert f"[TOOL_RESULTS]{WEATHER}[/TOOL_RESULTS]" in prompt
    assert prompt.startswith(f"<s>[SYSTEM_PROMPT]{SYSTEM}[/SYSTEM_PROMPT][AVAILABLE_TOOLS]")


def test_mistral_rejects_ids_it_was_not_given_right(published: dict[str, str]) -> None:
    """HF users must pass 9-character ids; llmrun shortens OpenAI-style ones itself."""
    family = FAMILIES["mistral-nemo"]
    long_ids = full(Style(ids=("call_abcdef0123", "call_x")))
    with pytest.raises(jinja2.exceptions.TemplateError, match="length 9"):
        hf_render(published[family.file], long_ids.hf, tools=TOOLS, variables={},
                  bos_token="<s>", eos_token="</s>")
    prompt = templates.render(published[family.file], for_template(long_ids.wire, family.fmt),
                              bos_token="<s>", eos_token="</s>", tools=TOOLS)
    assert '"call_id": "call_abcdef0123"' not in prompt and "[TOOL_RESULTS]" in prompt


def test_deepseek_r1(published: dict[str, str]) -> None:
    fmt = FAMILIES["r1-qwen"].fmt
    prompt, _ = render_both(published, "r1-qwen", "full")
    assert ("<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>"
            'get_weather\n```json\n{"city": "Paris"}\n```<｜tool▁call▁end｜>'
            "<｜tool▁calls▁end｜><｜end▁of▁sentence｜>") in prompt
    assert (f"<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>{WEATHER}<｜tool▁output▁end｜>"
            in prompt)
    assert TRACE_1 not in prompt and TRACE_2 not in prompt
    # llama.cpp's copy closes the trace unless enable_thinking is set
    assert prompt.endswith("<｜Assistant｜><think>\n</think>")
    assert not opens_reasoning(prompt, fmt)
    prompt, _ = render_both(published, "r1-qwen", "full", variables={"enable_thinking": True})
    assert prompt.endswith("<｜Assistant｜><think>\n") and opens_reasoning(prompt, fmt)

    prompt, _ = render_both(published, "r1-llama", "chat")
    assert prompt.endswith("<｜Assistant｜><think>\n")
    assert opens_reasoning(prompt, FAMILIES["r1-llama"].fmt)
    assert TRACE_2 not in prompt and f"<｜Assistant｜>{ANSWER}<｜end▁of▁sentence｜>" in prompt


def test_r1_llama_gets_its_arguments_as_text(published: dict[str, str]) -> None:
    """Its template does ``'...' + tool['function']['arguments'] + '...'``: with arguments as
    a dict, as transformers documents them, it fails in transformers too. llmrun sees the
    concatenation and passes the JSON text, which renders what the template's authors meant."""
    import copy
    import json

    family = FAMILIES["r1-llama"]
    template = published[family.file]
    assert arguments_as_text(template)
    assert not arguments_as_text(published[FAMILIES["r1-qwen"].file])  # it uses tojson
    case = full(family.style)
    with pytest.raises(TypeError):
        hf_render(template, case.hf, tools=TOOLS, variables={},
                  bos_token=family.bos, eos_token=family.eos)
    as_text = copy.deepcopy(case.hf)
    for message in as_text:
        for call in message.get("tool_calls") or []:
            call["function"]["arguments"] = json.dumps(call["function"]["arguments"],
                                                       ensure_ascii=False)
    theirs = hf_render(template, as_text, tools=TOOLS, variables={}, bos_token=family.bos,
                       eos_token=family.eos)
    ours = templates.render(template, for_template(case.wire, family.fmt,
                                                   arguments_as_text=True),
                            bos_token=family.bos, eos_token=family.eos, tools=TOOLS)
    assert ours == theirs
    assert 'get_weather\n```json\n{"city": "Paris"}\n```' in ours


def test_gpt_oss(published: dict[str, str]) -> None:
    fmt = FAMILIES["gpt-oss"].fmt
    prompt, _ = render_both(published, "gpt-oss", "full", variables={"reasoning_effort": "low"})
    assert "Reasoning: low\n\n" in prompt and "Current date: 2025-03-14\n\n" in prompt
    assert f"<|start|>developer<|message|># Instructions\n\n{SYSTEM}\n\n# Tools" in prompt
    assert "type get_weather = (_: {\n// The city name\ncity: string," in prompt
    assert ("<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>"
            '{"city": "Paris"}<|call|>') in prompt
    assert ("<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>"
            f"{json.dumps(WEATHER)}<|end|>") in prompt
    # a final answer came later: both traces are dropped
    assert TRACE_1 not in prompt and TRACE_2 not in prompt
    assert prompt.endswith("<|start|>assistant") and not opens_reasoning(prompt, fmt)

    prompt, _ = render_both(published, "gpt-oss", "in_loop")
    assert "Reasoning: medium" in prompt
    assert (f"<|start|>assistant<|channel|>analysis<|message|>{TRACE_1}<|end|>"
            "<|start|>assistant to=functions.plan_trip") in prompt


def test_gemma2(published: dict[str, str]) -> None:
    prompt, _ = render_both(published, "gemma2", "chat_no_system", with_tools=False)
    assert prompt == (
        f"<bos><start_of_turn>user\n{ASK}<end_of_turn>\n<start_of_turn>model\n{ANSWER}"
        f"<end_of_turn>\n<start_of_turn>user\n{LAST}<end_of_turn>\n<start_of_turn>model\n"
    )
