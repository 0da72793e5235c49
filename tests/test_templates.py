"""Chat templates: golden prompts (T22), hostile templates (T19, T20), errors (T21), and
template selection (R14). See docs/reliability.md."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jinja2
import pytest

from llmrun.errors import TemplateError
from llmrun.templates import (
    BUILTIN_STOPS,
    BUILTIN_TEMPLATES,
    render,
    resolve_template,
    stop_strings,
)

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hi! How can I help?"},
    {"role": "user", "content": "What is 2+2?"},
]

GGUF = "GGUF metadata"

# --------------------------------------------------------------------------------------------
# T22: golden prompts. The expected strings are written out by hand from each model's published
# prompt format (model cards / official tokenizer_config.json templates), not produced by the
# code under test.
# --------------------------------------------------------------------------------------------

GOLDEN = {
    # ChatML (OpenAI ChatML spec; Qwen / OpenHermes model cards). No BOS in the text.
    "chatml": (
        "",
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHello!<|im_end|>\n"
        "<|im_start|>assistant\nHi! How can I help?<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n",
    ),
    # Meta Llama 3 model card, "Prompt format".
    "llama-3": (
        "<|begin_of_text|>",
        "<|begin_of_text|>"
        "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHi! How can I help?<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    # Google "Gemma formatting and system instructions": no system role, so the system text
    # opens the first user turn, separated by a blank line.
    "gemma": (
        "<bos>",
        "<bos><start_of_turn>user\nYou are a helpful assistant.\n\nHello!<end_of_turn>\n"
        "<start_of_turn>model\nHi! How can I help?<end_of_turn>\n"
        "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n"
        "<start_of_turn>model\n",
    ),
    # Mistral "v1" tokenizer format (Mistral-7B-Instruct-v0.1/v0.2): " [INST] ... [/INST]",
    # system prompt at the head of the first instruction, assistant turns end with </s>.
    "mistral-instruct": (
        "<s>",
        "<s> [INST] You are a helpful assistant.\n\nHello! [/INST]"
        " Hi! How can I help?</s>"
        " [INST] What is 2+2? [/INST]",
    ),
    # Llama 2 chat (Meta reference chat_completion): <<SYS>> inside the first [INST].
    "llama-2": (
        "<s>",
        "<s>[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nHello! [/INST]"
        " Hi! How can I help? </s>"
        "<s>[INST] What is 2+2? [/INST]",
    ),
    # Vicuna v1.1 (FastChat).
    "vicuna": (
        "<s>",
        "<s>You are a helpful assistant. USER: Hello! ASSISTANT: Hi! How can I help?</s>"
        "USER: What is 2+2? ASSISTANT:",
    ),
    # Zephyr-7B-beta model card.
    "zephyr": (
        "<s>",
        "<s><|system|>\nYou are a helpful assistant.</s>\n"
        "<|user|>\nHello!</s>\n"
        "<|assistant|>\nHi! How can I help?</s>\n"
        "<|user|>\nWhat is 2+2?</s>\n"
        "<|assistant|>\n",
    ),
    # Phi-3 instruct model card.
    "phi-3": (
        "<s>",
        "<s><|system|>\nYou are a helpful assistant.<|end|>\n"
        "<|user|>\nHello!<|end|>\n"
        "<|assistant|>\nHi! How can I help?<|end|>\n"
        "<|user|>\nWhat is 2+2?<|end|>\n"
        "<|assistant|>\n",
    ),
}

EOS = {
    "chatml": "<|im_end|>",
    "llama-3": "<|eot_id|>",
    "gemma": "<eos>",
    "phi-3": "<|endoftext|>",
}


def test_every_registry_format_has_a_template_and_stops() -> None:
    formats = {"gemma", "llama-2", "llama-3", "chatml", "mistral-instruct", "vicuna", "zephyr",
               "phi-3"}
    assert set(BUILTIN_TEMPLATES) == formats
    assert set(BUILTIN_STOPS) == formats
    assert set(GOLDEN) == formats


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_prompt(name: str) -> None:
    bos, expected = GOLDEN[name]
    template, source = resolve_template(None, name)
    assert source == f"registry format {name}"
    prompt = render(template, CONVERSATION, bos_token=bos, eos_token=EOS.get(name, "</s>"),
                    add_generation_prompt=True, source=source)
    assert prompt == expected


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_builtin_stop_strings_end_the_turn(name: str) -> None:
    """T22: the end-of-turn marker the template writes is a stop string."""
    template = BUILTIN_TEMPLATES[name]
    stops = stop_strings(template, EOS.get(name, "</s>"))
    assert BUILTIN_STOPS[name][0] in stops
    assert BUILTIN_STOPS[name][0] in template


def test_chatml_without_generation_prompt() -> None:
    prompt = render(BUILTIN_TEMPLATES["chatml"], CONVERSATION[:2], add_generation_prompt=False)
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHello!<|im_end|>\n"
    )


def test_gemma_without_system_message() -> None:
    prompt = render(BUILTIN_TEMPLATES["gemma"], [{"role": "user", "content": " Hi "}],
                    bos_token="<bos>")
    assert prompt == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"


def test_gemma_rejects_roles_out_of_order() -> None:
    messages = [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]
    with pytest.raises(TemplateError) as info:
        render(BUILTIN_TEMPLATES["gemma"], messages, source="registry format gemma")
    assert "registry format gemma" in info.value.message
    assert "alternate" in info.value.message


# --------------------------------------------------------------------------------------------
# Realistic templates must keep working under the budgets.
# --------------------------------------------------------------------------------------------

# In the style of Qwen2.5-Instruct's tokenizer_config.json template (tools, tool calls,
# tool responses, namespace-free), written out with the whitespace control real ones use.
QWEN_STYLE = """\
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n\
You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and \
arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \
\\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) \
or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# In the style of Llama-3.1-Instruct's template: strftime_now, namespace-free defaults,
# tools in the first user message, tojson(indent=4), raise_exception.
LLAMA31_STYLE = """\
{{- bos_token }}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- if tools_in_user_message and not tools is none %}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first \
user message!") }}
    {%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}
{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'\
+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city <b>& more</b>",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
                "required": ["city"],
            },
        },
    }
]

TOOL_CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"type": "function",
             "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
        ],
    },
    {"role": "tool", "content": '{"temp": 21}'},
]


def long_conversation(turns: int, size: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"question {i} " + "q" * size})
        messages.append({"role": "assistant", "content": f"answer {i} " + "a" * size})
    messages.append({"role": "user", "content": "last"})
    return messages


@pytest.mark.timeout(60)
def test_qwen_style_template_with_tools() -> None:
    prompt = render(QWEN_STYLE, TOOL_CONVERSATION, tools=TOOLS, source=GGUF)
    assert prompt.startswith("<|im_start|>system\nYou are a helpful assistant.\n\n# Tools")
    # tojson does not HTML-escape, and keeps non-ASCII as is
    assert '"description": "Current weather for a city <b>& more</b>"' in prompt
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' \
        in prompt
    assert '<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response><|im_end|>\n' \
        in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    assert stop_strings(QWEN_STYLE, "<|im_end|>") == ["<|im_end|>"]


@pytest.mark.timeout(60)
def test_llama31_style_template_with_tools() -> None:
    prompt = render(LLAMA31_STYLE, TOOL_CONVERSATION[:2], tools=TOOLS,
                    bos_token="<|begin_of_text|>", source=GGUF)
    assert prompt.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                             "Environment: ipython\n")
    assert re.search(r"Today Date: \d{2} \w{3} \d{4}\n", prompt)
    assert '    "type": "function",\n' in prompt  # tojson(indent=4)
    assert prompt.endswith("Weather in Paris?<|eot_id|>"
                           "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert stop_strings(LLAMA31_STYLE, "<|eot_id|>") == ["<|eot_id|>"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("template", [QWEN_STYLE, LLAMA31_STYLE], ids=["qwen", "llama31"])
def test_large_conversation_renders_within_budget(template: str) -> None:
    """A long chat (~1.2 MB of text, 400 messages) with tools stays within the default budgets."""
    messages = long_conversation(200, 3000)
    prompt = render(template, messages, tools=TOOLS, source=GGUF)
    assert len(prompt) > 200 * 2 * 3000
    assert "answer 199 " in prompt


def test_hf_extras_work() -> None:
    """loopcontrols, {% generation %}, namespace, str methods and filters used by real
    templates."""
    template = (
        "{% set ns = namespace(n=0) %}"
        "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}"
        "{% set ns.n = ns.n + 1 %}{% generation %}{{ m.content.split(' ')[0] | upper }}"
        "{% endgeneration %}{% endfor %}|{{ ns.n }}|{{ '<x>' | tojson }}"
        "|{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content')"
        " | join(', ') }}|{{ '%s=%d' % ('a', 1) }}|{{ '{}!'.format('b') }}"
        "|{{ [1, 2] + [3] }}|{{ 'ab' * 2 }}|{{ 2 ** 10 }}"
    )
    assert render(template, CONVERSATION) == (
        "YOUHELLO!|2|\"<x>\"|Hello!, What is 2+2?|a=1|b!|[1, 2, 3]|abab|1024"
    )


# --------------------------------------------------------------------------------------------
# T19: malicious templates (sandbox escapes) fail closed and run nothing.
# --------------------------------------------------------------------------------------------


def test_jinja2_is_at_least_3_1_6() -> None:
    """S2: CVE-2024-56326, CVE-2024-56201 and CVE-2025-27516 are fixed in 3.1.5/3.1.6."""
    version = tuple(int(part) for part in jinja2.__version__.split(".")[:3])
    assert version >= (3, 1, 6)


MALICIOUS = {
    "subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "cycler-globals-popen": "{{ cycler.__init__.__globals__.os.popen('touch MARKER') }}",
    "attr-format-cve-2025-27516":
        "{{ '{0.__init__.__globals__[os].popen}'|attr('format')(cycler) }}",
    "attr-chain": "{{ (cycler|attr('__init__')|attr('__globals__'))['os'].popen("
                  "'touch MARKER').read() }}",
    "template-reference-context": "{{ self._TemplateReference__context }}",
    "popen-subclass-loop":
        "{% for c in ''.__class__.__mro__[1].__subclasses__() %}"
        "{% if c.__name__ == 'Popen' %}{{ c(['touch', 'MARKER']) }}{% endif %}{% endfor %}",
    "joiner-globals": "{{ joiner.__init__.__globals__['os'].system('touch MARKER') }}",
    "namespace-globals": "{{ namespace.__init__.__globals__ }}",
    "helper-globals": "{{ raise_exception.__globals__ }}",
    "str-format-field": "{{ '{0.__class__.__base__.__subclasses__}'.format(messages) }}",
    "mutate-messages": "{{ messages.append({'role': 'user', 'content': 'x'}) }}",
    "format-map": "{{ '{m.__class__}'.format_map({'m': messages}) }}",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(MALICIOUS))
def test_malicious_template_is_refused(name: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    template = MALICIOUS[name].replace("MARKER", str(marker))
    with pytest.raises(TemplateError) as info:
        render(template, CONVERSATION, source=GGUF)
    assert f"chat template from {GGUF} tried unsafe operation" in info.value.message
    assert not marker.exists()


def test_malicious_template_refused_every_time(tmp_path: Path) -> None:
    """Compiled templates are cached; the checks are not."""
    marker = tmp_path / "pwned"
    template = MALICIOUS["cycler-globals-popen"].replace("MARKER", str(marker))
    for _ in range(2):
        with pytest.raises(TemplateError):
            render(template, CONVERSATION, source=GGUF)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# T20: resource exhaustion. Each must return (with an error) quickly; the timeout marker only
# catches a hang, and the tests make no timing assertions.
# --------------------------------------------------------------------------------------------

DOS = {
    "string-repeat": "{{ 'x' * 10**10 }}",
    "nested-range-loops":
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
    "recursive-macro": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "tilde-doubling":
        "{% set ns = namespace(s='ab' ~ 'cd') %}{% for i in range(100) %}"
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "plus-doubling":
        "{% set ns = namespace(s='ab') %}{% for i in range(100) %}"
        "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}",
    "list-repeat": "{{ [0] * 10**10 }}",
    "big-power": "{{ 9 ** (9 ** 9) }}",
    "huge-range": "{{ range(10**12)|length }}",
    "branching-macro":
        "{% macro f(n) %}{% if n < 60 %}{{ f(n + 1) }}{{ f(n + 1) }}{% endif %}{% endmacro %}"
        "{{ f(0) }}",
    "recursive-loop":
        "{% for x in [1] recursive %}{{ loop([x]) }}{% endfor %}",
    "loops-over-strings":
        "{% set s = 'x' * 1000000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
    "center-filter": "{{ 'x' | center(10**12) }}",
    "indent-filter": "{{ ('a\\n' * 500000) | indent(1000000) }}",
    "format-filter": "{{ '%*d' | format(10**10, 1) }}",
    "percent-width": "{{ '%999999999999d' % 1 }}",
    "str-format-width": "{{ '{:>999999999999}'.format(1) }}",
    "str-ljust": "{{ 'x'.ljust(10**12) }}",
    "replace-growth":
        "{% set ns = namespace(s='x' * 1000) %}{% for i in range(40) %}"
        "{% set ns.s = ns.s.replace('x', 'xx') %}{% endfor %}",
    "join-references": "{% set s = 'x' * 1000000 %}{{ [s, s, s] | join }}",
    "literal-tower":
        "{% set a = 'x' * 100000 %}{% set b = [a, a, a, a, a, a, a, a, a, a] %}"
        "{% set c = [b, b, b, b, b, b, b, b, b, b] %}{{ c }}",
    "set-block-accumulation":
        "{% set s %}{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}{% endset %}",
    "output-too-large": "{% for i in range(100000) %}{{ 'y' * 100 }}{% endfor %}",
    "to-bytes": "{{ (1).to_bytes(10**12, 'big') }}",
    "dict-fromkeys": "{{ dict.fromkeys(range(100000), 'x' * 100000) }}",
    "map-center-join": "{{ range(100000) | map('center', 100000) | join }}",
    "namespace-in-list":
        "{% set ns = namespace(a='') %}{% set l = [ns] * 1000 %}{% set ns.a = 'x' * 100000 %}"
        "{{ l | map(attribute='a') | join }}",
    "tojson-indent": "{{ [[[[1]]]] | tojson(indent=10**9) }}",
}


@pytest.mark.slow  # each waits for the time budget
@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(DOS))
def test_resource_exhaustion_is_stopped(name: str) -> None:
    with pytest.raises(TemplateError) as info:
        render(DOS[name], CONVERSATION, source=GGUF)
    assert f"chat template from {GGUF}" in info.value.message


@pytest.mark.timeout(60)
def test_time_budget_is_configurable() -> None:
    with pytest.raises(TemplateError, match=r"time budget of 0\.2 s"):
        render(DOS["nested-range-loops"], CONVERSATION, time_budget_s=0.2)


def test_output_limit_is_configurable() -> None:
    with pytest.raises(TemplateError, match=r"\(limit 100\)"):
        render(BUILTIN_TEMPLATES["chatml"], [{"role": "user", "content": "x" * 200}],
               max_output_chars=100)


def test_oversized_template_text_is_refused() -> None:
    with pytest.raises(TemplateError, match="too large"):
        render("x" * 1_000_000, CONVERSATION, source=GGUF)


# --------------------------------------------------------------------------------------------
# T21: templates that fail, and models without a template.
# --------------------------------------------------------------------------------------------


def test_raise_exception_names_the_source() -> None:
    with pytest.raises(TemplateError) as info:
        render("{{ raise_exception('nope') }}", CONVERSATION, source=GGUF)
    assert GGUF in info.value.message
    assert "nope" in info.value.message


def test_error_text_from_template_is_sanitized() -> None:
    with pytest.raises(TemplateError) as info:
        render("{{ raise_exception('\x1b]0;owned\x07' ~ 'z' * 5000) }}", CONVERSATION)
    assert "\x1b" not in info.value.message
    assert "\x07" not in info.value.message
    assert len(info.value.message) < 1000


@pytest.mark.parametrize(
    "template",
    [
        "{{ foo.bar }}",
        "{% for m in 5 %}{% endfor %}",  # "Expected iterable" (containers/ramalama#2422)
        "{% if %}",
        "{% for m in messages %}",
        "{% include 'other.jinja' %}",
        "{{ messages[0].content + 1 }}",
    ],
    ids=["undefined", "not-iterable", "syntax", "unclosed", "include", "type-error"],
)
def test_broken_template_names_the_source(template: str) -> None:
    with pytest.raises(TemplateError) as info:
        render(template, CONVERSATION, source=GGUF)
    assert f"chat template from {GGUF}" in info.value.message


def test_syntax_error_reports_line() -> None:
    with pytest.raises(TemplateError, match=r"not valid Jinja.*line 2"):
        render("ok\n{% if %}", CONVERSATION)


def test_missing_template_is_an_error_not_llama2() -> None:
    for gguf in (None, "", "  \n"):
        with pytest.raises(TemplateError) as info:
            resolve_template(gguf, None)
        assert info.value.message == "model has no chat template"
        assert info.value.hint is not None
        assert "--raw" in info.value.hint
        # not "set chat_format in models.yaml": that changes nothing for an import or a path
        assert "chat_format" not in info.value.hint


def test_unknown_registry_format() -> None:
    with pytest.raises(TemplateError, match="unknown chat format"):
        resolve_template(None, "alpaca")


# --------------------------------------------------------------------------------------------
# R14: precedence, and stop strings.
# --------------------------------------------------------------------------------------------


def test_gguf_template_wins_over_registry() -> None:
    assert resolve_template("{{ 'gguf' }}", "gemma") == ("{{ 'gguf' }}", GGUF)
    assert resolve_template("{{ 'gguf' }}", None) == ("{{ 'gguf' }}", GGUF)


def test_registry_format_when_gguf_has_none() -> None:
    for gguf in (None, "", " "):
        assert resolve_template(gguf, "chatml") == (
            BUILTIN_TEMPLATES["chatml"], "registry format chatml"
        )


def test_stop_strings() -> None:
    assert stop_strings(BUILTIN_TEMPLATES["gemma"], "<eos>") == ["<end_of_turn>", "<eos>"]
    assert stop_strings(BUILTIN_TEMPLATES["chatml"], "<|im_end|>") == ["<|im_end|>"]
    assert stop_strings(BUILTIN_TEMPLATES["llama-3"], "<|end_of_text|>") == [
        "<|eot_id|>", "<|end_of_text|>"
    ]
    assert stop_strings(BUILTIN_TEMPLATES["phi-3"], "") == ["<|end|>"]
    assert stop_strings("{{ messages[0].content }}", "</s>") == ["</s>"]
    assert stop_strings("{{ messages[0].content }}", "") == []
    # every marker the template mentions, once each
    both = "<|im_end|> <end_of_turn> <|im_end|>"
    assert stop_strings(both, "<end_of_turn>") == ["<end_of_turn>", "<|im_end|>"]
