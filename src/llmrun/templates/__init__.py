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

Extra template variables (``render(..., variables=...)``, like the keyword arguments of
``apply_chat_template``: ``enable_thinking``, ``reasoning_effort``) must be plain data (text,
numbers, booleans, None, lists and dicts of them) under names that shadow nothing the render
itself provides, so they widen neither what a template can reach nor what it can replace.

Every failure, including a template that calls ``raise_exception``, becomes a
:class:`~llmrun.errors.TemplateError` whose message names the template's source.

Builtin templates (:data:`BUILTIN_TEMPLATES`) follow the Hugging Face convention: they emit
``bos_token`` themselves where the model family uses one (every format except ``chatml``), so
render with the model's BOS string and tokenize without adding a second BOS.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from jinja2.exceptions import SecurityError, TemplateSyntaxError

from ..errors import TemplateError
from .budget import _BUDGET, _Budget, _BudgetExceeded, _RaisedByTemplate
from .budget import MAX_CALL_DEPTH as MAX_CALL_DEPTH
from .budget import MAX_INT_BITS as MAX_INT_BITS
from .budget import MAX_RANGE as MAX_RANGE
from .budget import MAX_TEMPLATE_CHARS as MAX_TEMPLATE_CHARS
from .budget import WORK_FACTOR as WORK_FACTOR
from .builtins import BUILTIN_STOPS as BUILTIN_STOPS
from .builtins import BUILTIN_TEMPLATES as BUILTIN_TEMPLATES
from .sandbox import _ENV, _compile

__all__ = [
    "BUILTIN_STOPS",
    "BUILTIN_TEMPLATES",
    "MAX_RANGE",
    "MAX_TEMPLATE_CHARS",
    "render",
    "resolve_template",
    "stop_strings",
]

_NO_TEMPLATE_HINT = "add --raw for plain completion, which needs no template"


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
# Rendering
# --------------------------------------------------------------------------------------------

_MESSAGE_CLIP = 300

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


#: Names ``render`` itself passes to every template; ``variables`` may not replace them.
_RENDER_NAMES = frozenset(
    {"messages", "tools", "bos_token", "eos_token", "add_generation_prompt"}
)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PLAIN_SCALARS = frozenset({str, int, float, bool, type(None)})
_MAX_VARIABLE_DEPTH = 32


def _check_variables(variables: Mapping[str, Any]) -> dict[str, Any]:
    """Validate extra template variables; returns them as a new dict to pass to the template.

    Why so strict: the sandbox's guarantees are about what a template can reach. Plain data
    (text, numbers, booleans, None, lists/tuples and str-keyed dicts of them) gives a template
    nothing new to call or inspect; any other object would. The types must match exactly: a
    subclass can carry more (a ``defaultdict``'s ``default_factory`` is a callable). A
    variable may not shadow what ``render`` passes (``messages``, ``tools``, ...) or the
    environment's globals (``raise_exception``, ``strftime_now``, the capped ``range``,
    ``namespace``...), which are part of the hardening. These are programming errors in
    llmrun, not template failures, so they raise :class:`ValueError`.
    """
    checked: dict[str, Any] = {}
    for name, value in variables.items():
        if not isinstance(name, str) or not _IDENTIFIER.match(name) or keyword.iskeyword(name):
            raise ValueError(f"template variable name {name!r} is not an identifier")
        if name in _RENDER_NAMES or name in _ENV.globals:
            raise ValueError(f"template variable {name!r} would replace a built-in name")
        _check_plain(value, name, 0)
        checked[name] = value
    return checked


def _check_plain(value: object, where: str, depth: int) -> None:
    if depth > _MAX_VARIABLE_DEPTH:
        raise ValueError(f"template variable {where} is nested too deeply")
    kind = type(value)
    if kind in _PLAIN_SCALARS:
        return
    if isinstance(value, (list, tuple)) and kind in (list, tuple):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]", depth + 1)
        return
    if isinstance(value, dict) and kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise ValueError(f"template variable {where} has a non-text key {key!r}")
            _check_plain(item, f"{where}[{key!r}]", depth + 1)
        return
    raise ValueError(
        f"template variable {where} is a {kind.__name__}; only plain data"
        " (str, int, float, bool, None, list, tuple, dict) may be passed to a template"
    )


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
    variables: Mapping[str, Any] | None = None,
) -> str:
    """Render a chat template the way ``transformers``' ``apply_chat_template`` does.

    ``messages`` are ``{"role": ..., "content": ...}`` dicts; ``tools`` (optional, OpenAI
    style) is passed to the template as ``tools``. ``variables`` are extra template variables,
    as ``apply_chat_template(**kwargs)`` passes them (``enable_thinking=False``,
    ``reasoning_effort="low"``); they must be plain data and may not replace the names above
    or the environment's globals (:class:`ValueError` otherwise). ``source`` names the template
    in error messages (see :func:`resolve_template`). Raises
    :class:`~llmrun.errors.TemplateError` if the template is invalid, unsafe, raises, or goes
    over ``time_budget_s`` seconds or ``max_output_chars`` characters (or the other budgets
    described in the module docstring).
    """
    if time_budget_s <= 0 or max_output_chars <= 0:
        raise ValueError("time_budget_s and max_output_chars must be positive")
    extra = _check_variables(variables) if variables else {}
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
            **extra,
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
