"""Chat templates: choosing one and rendering it. The only place llmrun renders Jinja.

A GGUF file carries its chat template in ``tokenizer.chat_template``; that text comes from
whoever made the file, so it is treated as hostile (reliability.md S1-S3, T19-T22):

* It runs in :class:`jinja2.sandbox.ImmutableSandboxedEnvironment` (jinja2 >= 3.1.6), set up
  as Hugging Face's ``apply_chat_template`` does (``trim_blocks``, ``lstrip_blocks``, the
  ``loopcontrols`` extension, ``raise_exception``, ``strftime_now``, a ``tojson`` that does not
  escape HTML), and any access to an unsafe attribute fails at once instead of quietly
  becoming an empty string.
* It runs under a budget, with no subprocess: a time limit checked on every loop iteration,
  call, filter and operator; a cap on the size of every string or list it builds (``*``,
  ``**``, ``+``, ``%``, ``~``, filters, string methods, ``{% set %}`` blocks, macro output);
  a cap on the total text it may build; ``range()`` and call nesting caps; and a cap on the
  final prompt. Going over any of them raises :class:`~llmrun.errors.TemplateError`.

Every failure, including a template that calls ``raise_exception``, becomes a
:class:`~llmrun.errors.TemplateError` whose message names the template's source.

Builtin templates (:data:`BUILTIN_TEMPLATES`) follow the Hugging Face convention: they emit
``bos_token`` themselves where the model family uses one (every format except ``chatml``), so
render with the model's BOS string and tokenize without adding a second BOS.
"""

from __future__ import annotations

import contextvars
import functools
import json
import re
import string
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from types import BuiltinMethodType, TracebackType
from typing import Any, NoReturn

from jinja2 import Template, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError, TemplateSyntaxError
from jinja2.ext import Extension, LoopControlExtension
from jinja2.parser import Parser
from jinja2.runtime import Context, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

from .errors import TemplateError

__all__ = [
    "BUILTIN_STOPS",
    "BUILTIN_TEMPLATES",
    "MAX_RANGE",
    "MAX_TEMPLATE_CHARS",
    "render",
    "resolve_template",
    "stop_strings",
]

# --------------------------------------------------------------------------------------------
# Builtin templates
# --------------------------------------------------------------------------------------------

_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

#: Chat templates for models whose GGUF has none, by the registry's ``chat_format`` name.
BUILTIN_TEMPLATES: dict[str, str] = {
    # google/gemma-3-*-it: no system role; a system message is folded into the first user turn.
    "gemma": (
        "{{ bos_token }}"
        "{% if messages and messages[0]['role'] == 'system' %}"
        "{% set first_user_prefix = messages[0]['content'] + '\\n\\n' %}"
        "{% set loop_messages = messages[1:] %}"
        "{% else %}"
        "{% set first_user_prefix = '' %}"
        "{% set loop_messages = messages %}"
        "{% endif %}"
        "{% for message in loop_messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate"
        " user/assistant/user/assistant/...') }}"
        "{% endif %}"
        "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
        "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
        "{{ message['content'] | trim }}"
        "{{ '<end_of_turn>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
    ),
    # meta-llama/Llama-2-*-chat-hf: <<SYS>> block inside the first [INST].
    "llama-2": (
        "{% if messages and messages[0]['role'] == 'system' %}"
        "{% set loop_messages = messages[1:] %}"
        "{% set system_message = messages[0]['content'] %}"
        "{% else %}"
        "{% set loop_messages = messages %}"
        "{% set system_message = false %}"
        "{% endif %}"
        "{% for message in loop_messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate"
        " user/assistant/user/assistant/...') }}"
        "{% endif %}"
        "{% if loop.index0 == 0 and system_message != false %}"
        "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n'"
        " + message['content'] %}"
        "{% else %}"
        "{% set content = message['content'] %}"
        "{% endif %}"
        "{% if message['role'] == 'user' %}"
        "{{ bos_token + '[INST] ' + content | trim + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}"
        "{{ ' ' + content | trim + ' ' + (eos_token or '</s>') }}"
        "{% endif %}"
        "{% endfor %}"
    ),
    # meta-llama/Meta-Llama-3-8B-Instruct.
    "llama-3": (
        "{% for message in messages %}"
        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
        " + message['content'] | trim + '<|eot_id|>' %}"
        "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
        "{{ content }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
        "{% endif %}"
    ),
    # teknium/OpenHermes-2.5-Mistral-7B, Qwen: no BOS in the text.
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    # mistralai/Mistral-7B-Instruct-v0.2 ("v1" tokenizer template, system prompt in the first
    # [INST]); same text as llama.cpp's LLM_CHAT_TEMPLATE_MISTRAL_V1.
    "mistral-instruct": (
        "{% if messages and messages[0]['role'] == 'system' %}"
        "{% set system_message = messages[0]['content'] %}"
        "{% set loop_messages = messages[1:] %}"
        "{% else %}"
        "{% set loop_messages = messages %}"
        "{% endif %}"
        "{{ bos_token }}"
        "{% for message in loop_messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('After the optional system message, conversation roles must"
        " alternate user/assistant/user/assistant/...') }}"
        "{% endif %}"
        "{% if message['role'] == 'user' %}"
        "{% if loop.first and system_message is defined %}"
        "{{ ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}"
        "{% else %}"
        "{{ ' [INST] ' + message['content'] + ' [/INST]' }}"
        "{% endif %}"
        "{% elif message['role'] == 'assistant' %}"
        "{{ ' ' + message['content'] + (eos_token or '</s>') }}"
        "{% else %}"
        "{{ raise_exception('Only user and assistant roles are supported, with the exception"
        " of an initial optional system message!') }}"
        "{% endif %}"
        "{% endfor %}"
    ),
    # lmsys Vicuna v1.1 (FastChat "vicuna_v1.1"; llama-cpp-python "vicuna").
    "vicuna": (
        "{% if messages and messages[0]['role'] == 'system' %}"
        "{% set system_message = messages[0]['content'] %}"
        "{% set loop_messages = messages[1:] %}"
        "{% else %}"
        '{% set system_message = "' + _VICUNA_SYSTEM + '" %}'
        "{% set loop_messages = messages %}"
        "{% endif %}"
        "{{ bos_token }}"
        "{% if system_message %}{{ system_message + ' ' }}{% endif %}"
        "{% for message in loop_messages %}"
        "{% if message['role'] == 'user' %}"
        "{{ 'USER: ' + message['content'] + ' ' }}"
        "{% elif message['role'] == 'assistant' %}"
        "{{ 'ASSISTANT: ' + message['content'] + (eos_token or '</s>') }}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
    ),
    # HuggingFaceH4/zephyr-7b-beta.
    "zephyr": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{% if message['role'] in ['system', 'user', 'assistant'] %}"
        "{{ '<|' + message['role'] + '|>\\n' + message['content']"
        " + (eos_token or '</s>') + '\\n' }}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    ),
    # microsoft/Phi-3-*-instruct; same text as llama.cpp's LLM_CHAT_TEMPLATE_PHI_3.
    "phi-3": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
    ),
}

#: End-of-turn strings per format: generation stops when the model writes one.
BUILTIN_STOPS: dict[str, list[str]] = {
    "gemma": ["<end_of_turn>"],
    "llama-2": ["</s>"],
    "llama-3": ["<|eot_id|>", "<|eom_id|>"],
    "chatml": ["<|im_end|>"],
    "mistral-instruct": ["</s>"],
    "vicuna": ["</s>"],
    "zephyr": ["</s>"],
    "phi-3": ["<|end|>", "<|endoftext|>"],
}

_NO_TEMPLATE_HINT = (
    "use --raw for plain completion, or set chat_format for it in $LLMRUN_HOME/models.yaml"
)


def resolve_template(gguf_template: str | None, registry_format: str | None) -> tuple[str, str]:
    """Pick the chat template: the GGUF's own first, else the registry's builtin format.

    Returns ``(template_text, source_label)``; the label is for messages ("GGUF metadata" or
    "registry format NAME"). There is no silent fallback: without either, this raises.
    """
    if gguf_template is not None and gguf_template.strip():
        return gguf_template, "GGUF metadata"
    if registry_format is not None:
        try:
            return BUILTIN_TEMPLATES[registry_format], f"registry format {registry_format}"
        except KeyError:
            raise TemplateError(
                f"unknown chat format {_clip(registry_format)!r}",
                hint="known formats: " + ", ".join(sorted(BUILTIN_TEMPLATES)),
            ) from None
    raise TemplateError("model has no chat template", hint=_NO_TEMPLATE_HINT)


def stop_strings(template_text: str, eos_token: str) -> list[str]:
    """The end-of-turn markers (from :data:`BUILTIN_STOPS`) that occur in ``template_text``,
    then ``eos_token`` if it is not empty; no duplicates, in a stable order."""
    found: list[str] = []
    for markers in BUILTIN_STOPS.values():
        for marker in markers:
            if marker in template_text and marker not in found:
                found.append(marker)
    if eos_token and eos_token not in found:
        found.append(eos_token)
    return found


# --------------------------------------------------------------------------------------------
# Budget
# --------------------------------------------------------------------------------------------

#: Longest template text accepted (real ones are well under 64 KiB); bounds compile time.
MAX_TEMPLATE_CHARS = 256 * 1024
#: Most items one ``range()`` call may produce (jinja2's own sandbox limit).
MAX_RANGE = 100_000
#: Deepest nesting of calls (macros, ``loop()`` recursion, methods) a template may reach.
MAX_CALL_DEPTH = 64
#: Largest integer, in bits, that ``*`` and ``**`` may produce.
MAX_INT_BITS = 4096
#: Total text a render may build, as a multiple of ``max_output_chars``.
WORK_FACTOR = 64
_MAX_JSON_INDENT = 32
_MAX_STRFTIME_FORMAT = 256
_MESSAGE_CLIP = 300


class _BudgetExceeded(Exception):
    """A template went over one of its limits."""


class _RaisedByTemplate(Exception):
    """The template called ``raise_exception``."""


class _Budget:
    __slots__ = ("deadline", "depth", "max_chars", "time_budget_s", "work_left")

    def __init__(self, time_budget_s: float, max_chars: int) -> None:
        self.time_budget_s = time_budget_s
        self.deadline = time.monotonic() + time_budget_s
        self.max_chars = max_chars
        self.work_left = WORK_FACTOR * max_chars
        self.depth = 0

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise _BudgetExceeded(f"rendering ran past its time budget of {self.time_budget_s:g} s")

    def check_size(self, size: int, what: str) -> None:
        if size > self.max_chars:
            raise _BudgetExceeded(
                f"{what} would be about {size:,} characters (limit {self.max_chars:,})"
            )

    def check_weight(self, value: object, what: str) -> int:
        weight = _weight(value, self.max_chars)
        self.check_size(weight, what)
        return weight

    def charge(self, result: object) -> None:
        """Count a value the template just built against the size and total-work limits."""
        if isinstance(result, (str, bytes, list, tuple, dict)):
            size = len(result)
            self.check_size(size, "a value built by the template")
            self.spend(size)

    def spend(self, size: int) -> None:
        self.work_left -= size
        if self.work_left < 0:
            raise _BudgetExceeded(
                f"the template built more than {WORK_FACTOR * self.max_chars:,} characters in all"
            )


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "llmrun_template_budget", default=None
)


def _budget() -> _Budget:
    budget = _BUDGET.get()
    if budget is None:  # only render() runs templates, and it always sets one
        raise _BudgetExceeded("template code ran outside render()")
    return budget


def _weight(value: object, limit: int) -> int:
    """About how many characters ``value`` takes as text, counting a shared object once per
    reference (that is what ``str()`` and ``|join`` would produce). Stops once past ``limit``.

    A namespace object stored inside a list, tuple or dict is refused: namespaces are mutable,
    so such containers could grow after their size was checked.
    """
    total = 0
    stack: list[tuple[object, bool]] = [(value, False)]
    while stack:
        item, nested = stack.pop()
        if isinstance(item, (str, bytes)):
            total += len(item)
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += 2 + len(item)
            stack.extend((element, True) for element in item)
        elif isinstance(item, dict):
            total += 2 + 2 * len(item)
            stack.extend((key, True) for key in item)
            stack.extend((element, True) for element in item.values())
        elif isinstance(item, Namespace):
            if nested:
                raise _BudgetExceeded("namespace objects cannot be stored in lists or dicts")
            attrs: dict[str, object] = getattr(item, "_Namespace__attrs", {})
            total += 16 + 2 * len(attrs)
            stack.extend((element, False) for element in attrs.values())
        elif isinstance(item, bool) or item is None:
            total += 5
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 1
        elif isinstance(item, float):
            total += 24
        else:
            total += 32
        if total > limit:
            return total
    return total


def _bounded_int(digits: str) -> int:
    """A decimal field width from a format string, saturating instead of parsing 4000 digits."""
    return int(digits) if len(digits) <= 12 else 10**12


# ---- checks for operations that can multiply sizes ----------------------------------------

_SEQUENCES = (str, bytes, list, tuple)
_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?(.)", re.S)
_DIGITS = re.compile(r"\d+")


def _check_binop(budget: _Budget, operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        if isinstance(left, _SEQUENCES) and isinstance(right, int):
            count, seq = right, left
        elif isinstance(right, _SEQUENCES) and isinstance(left, int):
            count, seq = left, right
        else:
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and left.bit_length() + right.bit_length() > MAX_INT_BITS
            ):
                raise _BudgetExceeded(f"'*' would produce an integer over {MAX_INT_BITS} bits")
            return
        if count > 0:
            weight = _weight(seq, budget.max_chars)
            budget.check_size(weight * count, "a '*' repetition")
    elif operator == "+":
        if isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
            size = _weight(left, budget.max_chars) + _weight(right, budget.max_chars)
            budget.check_size(size, "a '+' concatenation")
    elif operator == "**":
        if (
            isinstance(left, int)
            and isinstance(right, int)
            and right > 0
            and abs(left) > 1
            and abs(left).bit_length() * right > MAX_INT_BITS
        ):
            raise _BudgetExceeded(f"'**' would produce an integer over {MAX_INT_BITS} bits")
    elif operator == "%" and isinstance(left, str):
        _check_printf(budget, left, right)


def _format_values(args: object) -> list[object]:
    if isinstance(args, Mapping):
        return list(args.values())
    if isinstance(args, tuple):
        return list(args)
    return [args]


def _check_printf(budget: _Budget, fmt: str, args: object) -> None:
    """Estimate the size of ``fmt % args`` (the ``%`` operator and the ``format`` filter)."""
    values = _format_values(args)
    conversions = 0
    widest = 0
    star = False
    for match in _PRINTF_SPEC.finditer(fmt):
        if match.group(3) == "%":
            continue
        conversions += 1
        for field in (match.group(1), match.group(2)):
            if field == "*":
                star = True
            elif field:
                widest = max(widest, _bounded_int(field))
    if star:
        ints = [abs(v) for v in values if isinstance(v, int)]
        widest = max([widest, *ints])
    largest = max((_weight(v, budget.max_chars) for v in values), default=0)
    budget.check_size(len(fmt) + conversions * (largest + widest), "a '%' format")


def _check_str_format(
    budget: _Budget, fmt: str, args: Sequence[object], kwargs: Mapping[str, object]
) -> None:
    """Estimate the size of ``fmt.format(*args, **kwargs)`` (also ``format_map``)."""
    fields = 0
    widest = 0
    for _literal, field, spec, _conversion in string.Formatter().parse(fmt):
        if field is None:
            continue
        fields += 1
        if spec:
            if "{" in spec:
                raise _BudgetExceeded("str.format() specs with nested fields are not allowed")
            for digits in _DIGITS.findall(spec):
                widest = max(widest, _bounded_int(digits))
    values = [*args, *kwargs.values()]
    largest = max((_weight(v, budget.max_chars) for v in values), default=0)
    budget.check_size(len(fmt) + fields * (largest + widest), "a str.format() result")


def _arg(
    args: Sequence[Any], kwargs: Mapping[str, Any], index: int, name: str, default: Any
) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _check_replace(budget: _Budget, text: object, old: object, new: object, count: object) -> None:
    if not (isinstance(text, str) and isinstance(old, str) and isinstance(new, str)):
        return
    growth = len(new) - len(old)
    if growth <= 0:
        return
    hits = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    budget.check_size(len(text) + hits * growth, "a replace() result")


def _check_join(budget: _Budget, items: list[Any], separator: object) -> None:
    sep = len(separator) if isinstance(separator, (str, bytes)) else 0
    size = sum(_weight(item, budget.max_chars) for item in items) + sep * max(len(items) - 1, 0)
    budget.check_size(size, "a join() result")


def _check_width(budget: _Budget, text: object, width: object, what: str) -> None:
    if isinstance(width, int) and not isinstance(width, bool):
        base = len(text) if isinstance(text, (str, bytes)) else 0
        budget.check_size(max(base, width), what)


def _check_method_call(
    budget: _Budget, obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, ...]:
    """Pre-check builtin methods that can multiply sizes; returns the (possibly materialized)
    positional arguments to call with."""
    if not isinstance(obj, BuiltinMethodType):
        return args
    owner = obj.__self__
    name = obj.__name__
    if isinstance(owner, (str, bytes)):
        if name in ("center", "ljust", "rjust", "zfill"):
            _check_width(budget, owner, _arg(args, kwargs, 0, "width", 0), f"a {name}() result")
        elif name == "expandtabs":
            tabsize = _arg(args, kwargs, 0, "tabsize", 8)
            if isinstance(tabsize, int):
                tabs = owner.count("\t") if isinstance(owner, str) else owner.count(b"\t")
                budget.check_size(len(owner) + tabs * max(tabsize, 0), "an expandtabs() result")
        elif name == "replace":
            _check_replace(budget, owner, _arg(args, kwargs, 0, "old", ""),
                           _arg(args, kwargs, 1, "new", ""), _arg(args, kwargs, 2, "count", -1))
        elif name == "join" and args:
            items = list(args[0])
            _check_join(budget, items, owner)
            return (items, *args[1:])
        elif name in ("translate", "maketrans"):
            raise _BudgetExceeded(f"str.{name}() is not available in chat templates")
    elif isinstance(owner, int) and name == "to_bytes":
        length = _arg(args, kwargs, 0, "length", 1)
        if isinstance(length, int):
            budget.check_size(length, "a to_bytes() result")
    elif owner is dict and name == "fromkeys" and args:
        keys = list(args[0])
        value = _arg(args, kwargs, 1, "value", None)
        budget.check_size(len(keys) * max(_weight(value, budget.max_chars), 1), "a dict")
        return (keys, *args[1:])
    return args


# ---- filters -------------------------------------------------------------------------------

#: Filters that never turn their input into text, so need no size check of that input.
_NON_STRINGIFYING_FILTERS = frozenset({
    "abs", "attr", "batch", "count", "d", "default", "dictsort", "filesizeformat", "first",
    "float", "groupby", "int", "items", "last", "length", "list", "map", "max", "min",
    "random", "reject", "rejectattr", "reverse", "round", "select", "selectattr", "slice",
    "sort", "sum", "unique",
})

_FilterCheck = Callable[[_Budget, list[Any], dict[str, Any]], None]


def _filter_center(budget: _Budget, args: list[Any], kwargs: dict[str, Any]) -> None:
    _check_width(budget, args[0], _arg(args, kwargs, 1, "width", 80), "a center() result")


def _filter_indent(budget: _Budget, args: list[Any], kwargs: dict[str, Any]) -> None:
    text, width = args[0], _arg(args, kwargs, 1, "width", 4)
    pad = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    if isinstance(text, str):
        budget.check_size(len(text) + (text.count("\n") + 1) * max(pad, 0), "an indent() result")


def _filter_format(budget: _Budget, args: list[Any], kwargs: dict[str, Any]) -> None:
    fmt = args[0]
    if isinstance(fmt, str):
        _check_printf(budget, fmt, kwargs or tuple(args[1:]))


def _filter_replace(budget: _Budget, args: list[Any], kwargs: dict[str, Any]) -> None:
    _check_replace(budget, args[0], _arg(args, kwargs, 1, "old", ""),
                   _arg(args, kwargs, 2, "new", ""), _arg(args, kwargs, 3, "count", None))


def _filter_join(budget: _Budget, args: list[Any], kwargs: dict[str, Any]) -> None:
    if isinstance(args[0], (str, bytes)):
        return
    args[0] = list(args[0])  # a map()/select() generator can only be read once
    _check_join(budget, args[0], _arg(args, kwargs, 1, "d", ""))


def _filter_wordwrap(budget: _Budget, args: list[Any], kwargs: dict[str, Any]) -> None:
    text, wrap = args[0], _arg(args, kwargs, 4, "wrapstring", None)
    if isinstance(text, str) and isinstance(wrap, str):
        budget.check_size(len(text) * (1 + len(wrap)), "a wordwrap() result")


def _filter_batch(budget: _Budget, args: list[Any], kwargs: dict[str, Any]) -> None:
    count, fill = _arg(args, kwargs, 1, "linecount", 0), _arg(args, kwargs, 2, "fill_with", None)
    if isinstance(count, int):
        budget.check_size(count, f"a {count}-item batch")
        if fill is not None:
            budget.check_size(count * _weight(fill, budget.max_chars), "batch() padding")


def _filter_slice(budget: _Budget, args: list[Any], kwargs: dict[str, Any]) -> None:
    count, fill = _arg(args, kwargs, 1, "slices", 0), _arg(args, kwargs, 2, "fill_with", None)
    if isinstance(count, int):
        if count > MAX_RANGE:
            raise _BudgetExceeded(f"slice() into {count:,} parts (limit {MAX_RANGE:,})")
        if fill is not None:
            budget.check_size(count * _weight(fill, budget.max_chars), "slice() padding")


_FILTER_CHECKS: dict[str, _FilterCheck] = {
    "batch": _filter_batch,
    "center": _filter_center,
    "format": _filter_format,
    "indent": _filter_indent,
    "join": _filter_join,
    "replace": _filter_replace,
    "slice": _filter_slice,
    "wordwrap": _filter_wordwrap,
}


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a filter so it checks the budget before running and counts what it returns."""
    # Filters marked @pass_context / @pass_eval_context / @pass_environment get that first.
    offset = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0
    check = _FILTER_CHECKS.get(name)
    stringifies = name not in _NON_STRINGIFYING_FILTERS

    @functools.wraps(func)  # keeps jinja_pass_arg
    def guarded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.tick()
        head, rest = args[:offset], list(args[offset:])
        if rest and stringifies:
            budget.check_weight(rest[0], f"the input of the {name!r} filter")
        if rest and check is not None:
            check(budget, rest, kwargs)
        result = func(*head, *rest, **kwargs)
        budget.charge(result)
        return result

    return guarded


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """Hugging Face's ``tojson``: plain :func:`json.dumps`, no HTML escaping."""
    if indent is not None:
        width = len(indent) if isinstance(indent, str) else indent
        if width > _MAX_JSON_INDENT:
            raise _BudgetExceeded(f"tojson indent of {width} (limit {_MAX_JSON_INDENT})")
    if separators is not None and any(len(s) > _MAX_JSON_INDENT for s in separators):
        raise _BudgetExceeded(f"tojson separators over {_MAX_JSON_INDENT} characters")
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


# ---- globals -------------------------------------------------------------------------------


def _capped_range(*args: int) -> range:
    numbers = range(*args)
    try:
        size = len(numbers)
    except OverflowError:
        size = MAX_RANGE + 1
    if size > MAX_RANGE:
        raise _BudgetExceeded(f"range() of more than {MAX_RANGE:,} items")
    return numbers


def _raise_exception(message: object = "") -> NoReturn:
    if isinstance(message, str):
        text = message
    elif _weight(message, 10_000) <= 10_000:
        text = str(message)
    else:
        text = "<a large non-text value>"
    raise _RaisedByTemplate(text)


def _strftime_now(fmt: str) -> str:
    if len(fmt) > _MAX_STRFTIME_FORMAT:
        raise _BudgetExceeded(f"strftime_now() format over {_MAX_STRFTIME_FORMAT} characters")
    return datetime.now().strftime(fmt)


# --------------------------------------------------------------------------------------------
# The guarded environment
# --------------------------------------------------------------------------------------------


class _GuardedCodeGenerator(CodeGenerator):
    """Emits budget checks for the constructs the sandbox does not intercept: every for-loop
    iteration, ``~`` concatenation, and list/tuple/dict literals."""

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        # jinja2 allows no custom node types, so each loop's iterable becomes a call to
        # environment.guarded_iter(...), which no template can name or remove.
        for loop in node.find_all(nodes.For):
            wrapper = nodes.EnvironmentAttribute("guarded_iter", lineno=loop.iter.lineno)
            loop.iter = nodes.Call(wrapper, [loop.iter], [], None, None, lineno=loop.iter.lineno)
        super().visit_Template(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            join = "markup_join"
        else:
            join = "str_join"
        self.write(f"environment.guarded_concat({join}, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        if node.ctx == "store":  # an assignment target, not a value
            super().visit_Tuple(node, frame)
            return
        self.write("environment.guarded_literal(")
        super().visit_Tuple(node, frame)
        self.write(")")

    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self.write("environment.guarded_literal(")
        super().visit_List(node, frame)
        self.write(")")

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self.write("environment.guarded_literal(")
        super().visit_Dict(node, frame)
        self.write(")")


class _GenerationExtension(Extension):
    """Hugging Face's ``{% generation %}...{% endgeneration %}`` tag, rendered as its body."""

    tags = {"generation"}  # noqa: RUF012 - jinja2's Extension API declares a plain set

    def parse(self, parser: Parser) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _TickingIterable:
    """An iterable that checks the budget before yielding each item; keeps ``len()``."""

    __slots__ = ("_budget", "_items")

    def __init__(self, items: Iterable[Any], budget: _Budget) -> None:
        self._items = items
        self._budget = budget

    def __len__(self) -> int:
        return len(self._items)  # type: ignore[arg-type]  # TypeError tells LoopContext "unsized"

    def __iter__(self) -> Iterator[Any]:
        tick = self._budget.tick
        for item in self._items:
            tick()
            yield item


class _GuardedEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _GuardedCodeGenerator

    def __init__(self) -> None:
        super().__init__(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[LoopControlExtension, _GenerationExtension],
            autoescape=False,
            optimized=False,  # the optimizer would call filters at compile time, unbudgeted
            finalize=self._finalize,
        )
        self.globals.pop("lipsum", None)
        self.globals["range"] = _capped_range
        self.globals["raise_exception"] = _raise_exception
        self.globals["strftime_now"] = _strftime_now
        self.filters.pop("urlize", None)
        self.filters["tojson"] = _tojson
        self.filters = {name: _guard_filter(name, func) for name, func in self.filters.items()}

    # -- sandbox hooks --

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        # The stock sandbox returns an Undefined that fails only when used; some uses (printing
        # it) then silently give "". A hostile template gets no second chance.
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        sandboxed = super().wrap_str_format(value)
        if sandboxed is None:
            return None
        fmt: str = value.__self__
        is_format_map = value.__name__ == "format_map"

        def checked(*args: Any, **kwargs: Any) -> str:
            budget = _budget()
            budget.tick()
            if is_format_map and len(args) == 1 and isinstance(args[0], Mapping):
                _check_str_format(budget, fmt, (), args[0])
            else:
                _check_str_format(budget, fmt, args, kwargs)
            result = sandboxed(*args, **kwargs)
            budget.charge(result)
            return result

        return checked

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        budget.tick()
        _check_binop(budget, operator, left, right)
        result = super().call_binop(context, operator, left, right)
        budget.charge(result)
        return result

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.tick()
        if budget.depth >= MAX_CALL_DEPTH:
            raise _BudgetExceeded(f"calls nested more than {MAX_CALL_DEPTH} deep")
        args = _check_method_call(budget, obj, args, kwargs)
        budget.depth += 1
        try:
            result = super().call(context, obj, *args, **kwargs)
        finally:
            budget.depth -= 1
        if obj is dict or obj is Namespace:
            budget.check_weight(result, "a dict or namespace")
        budget.charge(result)
        return result

    # -- hooks emitted by _GuardedCodeGenerator, or used by jinja2's generated code --

    def concat(self, parts: Iterable[str]) -> str:
        """Joins the output captured by ``{% set %}`` blocks, macros, call and filter blocks."""
        budget = _budget()
        budget.tick()
        pieces = list(parts)
        budget.check_size(sum(len(piece) for piece in pieces), "a captured block")
        result = "".join(pieces)
        budget.spend(len(result))
        return result

    def guarded_iter(self, items: Iterable[Any]) -> _TickingIterable:
        return _TickingIterable(items, _budget())

    def guarded_concat(self, join: Callable[[Iterable[Any]], str], args: tuple[Any, ...]) -> str:
        budget = _budget()
        budget.tick()
        size = sum(_weight(arg, budget.max_chars) for arg in args)
        budget.check_size(size, "a '~' concatenation")
        result = join(args)
        budget.charge(result)
        return result

    def guarded_literal(self, value: Any) -> Any:
        budget = _budget()
        budget.tick()
        budget.check_weight(value, "a list or dict literal")
        budget.charge(value)
        return value

    def _finalize(self, value: Any) -> Any:
        """Runs on every ``{{ ... }}`` value before it is turned into text."""
        budget = _budget()
        budget.tick()
        budget.spend(budget.check_weight(value, "a printed value"))
        return value


_ENV = _GuardedEnvironment()


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> Template:
    return _ENV.from_string(template)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _clip(text: str) -> str:
    """Make untrusted text safe to show: no terminal control characters, bounded length."""
    text = _CONTROL_CHARS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    if len(text) > _MESSAGE_CLIP:
        text = text[:_MESSAGE_CLIP] + "..."
    return text


def _template_line(exc: BaseException) -> int | None:
    if isinstance(exc, TemplateSyntaxError):
        return exc.lineno
    line = None
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _describe(exc: BaseException) -> str:
    line = _template_line(exc)
    where = f" (template line {line})" if line is not None else ""
    return _clip(str(exc) or type(exc).__name__) + where


def render(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    source: str = "template",
    time_budget_s: float = 2.0,
    max_output_chars: int = 2_000_000,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """Render a chat template the way ``transformers``' ``apply_chat_template`` does.

    ``messages`` are ``{"role": ..., "content": ...}`` dicts; ``tools`` (optional, OpenAI
    style) is passed to the template as ``tools``. ``source`` names the template in error
    messages (see :func:`resolve_template`). Raises :class:`~llmrun.errors.TemplateError` if
    the template is invalid, unsafe, raises, or goes over ``time_budget_s`` seconds or
    ``max_output_chars`` characters (or the other budgets described in the module docstring).
    """
    if time_budget_s <= 0 or max_output_chars <= 0:
        raise ValueError("time_budget_s and max_output_chars must be positive")
    label = _clip(source)
    if len(template) > MAX_TEMPLATE_CHARS:
        raise TemplateError(
            f"chat template from {label} is too large ({len(template):,} characters,"
            f" limit {MAX_TEMPLATE_CHARS:,})",
            hint=_NO_TEMPLATE_HINT,
        )
    budget = _Budget(time_budget_s, max_output_chars)
    token = _BUDGET.set(budget)
    try:
        compiled = _compile(template)
        stream = compiled.generate(
            messages=messages,
            tools=tools,
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
        )
        parts: list[str] = []
        total = 0
        try:
            for chunk in stream:
                total += len(chunk)
                if total > max_output_chars:
                    raise _BudgetExceeded(
                        f"the prompt is over {max_output_chars:,} characters"
                    )
                budget.tick()
                parts.append(chunk)
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        return "".join(parts)
    except SecurityError as exc:
        raise TemplateError(
            f"chat template from {label} tried unsafe operation: {_describe(exc)}",
            hint="the model file may be malicious; use --raw for plain completion",
        ) from exc
    except _BudgetExceeded as exc:
        raise TemplateError(
            f"chat template from {label} went over its limits: {_describe(exc)}",
            hint="the template (or the conversation) is too big; use --raw for plain completion",
        ) from exc
    except _RaisedByTemplate as exc:
        raise TemplateError(
            f"chat template from {label} rejected the conversation: {_describe(exc)}",
        ) from exc
    except TemplateSyntaxError as exc:
        raise TemplateError(
            f"chat template from {label} is not valid Jinja: {_describe(exc)}",
            hint=_NO_TEMPLATE_HINT,
        ) from exc
    except Exception as exc:  # any other Jinja or Python error while compiling or rendering
        raise TemplateError(
            f"chat template from {label} failed: {type(exc).__name__}: {_describe(exc)}",
            hint=_NO_TEMPLATE_HINT,
        ) from exc
    finally:
        _BUDGET.reset(token)
