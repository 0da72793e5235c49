"""OpenAI chat-API messages turned into the messages chat templates expect.

A server receives messages in the OpenAI wire format; published chat templates were written
for what Hugging Face ``transformers`` users pass to ``apply_chat_template``. The two differ
(tool-call arguments are a JSON string on the wire but a dict for templates; content may be a
list of parts; a past trace travels in a side field), and templates fail, or worse render
something subtly different from what the model was trained on, when fed the wire format.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from . import ReplyFormat

__all__ = ["for_template"]

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_MISTRAL_ID_LENGTH = 9


def for_template(
    messages: Sequence[Mapping[str, Any]], fmt: ReplyFormat, *, arguments_as_text: bool = False
) -> list[dict[str, Any]]:
    """Convert OpenAI chat-API ``messages`` into the dicts chat templates expect, following
    the conventions of Hugging Face ``transformers`` (what the templates were tested with).

    Every message:

    * ``role``: ``developer`` becomes ``system`` (no published template knows ``developer``
      except gpt-oss's, which treats a leading ``system`` the same way); other roles must be
      ``system``, ``user``, ``assistant`` or ``tool`` (:class:`ValueError` otherwise).
    * ``content``: a string stays; ``None`` or missing becomes ``""`` (templates concatenate
      it: ``'<|im_start|>' + message.content``); a list of ``{"type": "text", "text": ...}``
      parts is joined with ``"\\n"``, as llama.cpp's server and vLLM do for templates that
      take plain strings. Other part types (images, audio) raise :class:`ValueError`: llmrun
      runs text models. One exception: with DeepSeek-R1 tool syntax, an assistant message
      with tool calls and no text keeps ``content: None``, because both R1 distill templates
      test ``content is none`` to decide how to write the turn (the Llama distill writes the
      calls only then; the Qwen distill otherwise adds an empty assistant turn after them).

    Assistant messages:

    * ``tool_calls`` is present only when there are calls (Llama 3.x and gpt-oss test
      ``'tool_calls' in message``; Mistral tests ``is defined and is not none``, so even an
      empty list would open a ``[TOOL_CALLS]`` block). Each call is
      ``{"id", "type": "function", "function": {"name", "arguments"}}`` with ``arguments``
      decoded from the wire's JSON string into a dict: Llama 3.1, Mistral Nemo, gpt-oss,
      Qwen2.5 and the R1 Qwen distill print ``arguments | tojson`` and would otherwise print
      a quoted string. Every listed template reads ``function.name``/``function.arguments``
      (Qwen, Hermes and gpt-oss unwrap ``tool_call.function`` when it is there), so no
      top-level ``name``/``arguments`` copies are added; a template that serialises whole
      calls would print them. Arguments that are empty mean ``{}``; arguments that are not a
      JSON object raise :class:`ValueError`. (DeepSeek-R1-Distill-Llama's template
      concatenates ``arguments`` as a string and so cannot render a tool-call turn with
      dict arguments, in ``transformers`` either.)
    * ``id``: kept. With Mistral tool syntax the templates require ids of exactly 9
      characters (``raise_exception`` otherwise); an id that is not 9 letters or digits is
      replaced, in the call and in its results alike, by 9 hex digits of its SHA-256, as vLLM
      shortens OpenAI-style ids for Mistral models.
    * Past reasoning (``reasoning_content``, the DeepSeek/vLLM field, or ``reasoning``) goes
      where the template reads it: ``reasoning_content`` for ``<think>`` templates (Qwen3
      reads it and keeps or drops it per its own rules; the R1 distills ignore it),
      ``thinking`` for harmony (gpt-oss reads ``message.thinking``, and renders it only
      before a tool call with no later final answer). Templates with no trace syntax get no
      trace at all, and a trace is never written into ``content``: a template that strips
      ``<think>...</think>`` from content would otherwise treat it as the answer, or keep it.
      An empty trace counts as none.

    ``arguments_as_text`` (detect.arguments_as_text): the template concatenates the
    arguments as a string (DeepSeek-R1-Distill-Llama's, and the original R1 templates inside
    most R1 GGUFs: ``... + tool['function']['arguments'] + ...``), which a dict would break;
    they then stay the JSON text the API sent (re-serialised, so always valid JSON).

    Tool messages keep ``tool_call_id`` and ``name`` when given. Other fields (``name`` on
    user messages, ``refusal``, ``audio``...) are dropped: no listed template reads them.
    """
    mistral = fmt.tools == "mistral"
    converted: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        role = message.get("role")
        if role not in _ROLES:
            raise ValueError(f"message {index}: unsupported role {role!r}")
        if role == "developer":
            role = "system"
        out: dict[str, Any] = {"role": role, "content": _content(message.get("content"), index)}
        if role == "assistant":
            calls = message.get("tool_calls") or []
            if not isinstance(calls, Sequence) or isinstance(calls, (str, bytes)):
                raise ValueError(f"message {index}: tool_calls must be a list")
            if calls:
                out["tool_calls"] = [_tool_call(call, index, mistral, arguments_as_text)
                                     for call in calls]
                if fmt.tools == "deepseek-r1" and out["content"] == "":
                    out["content"] = None
            trace = _reasoning(message)
            if trace and fmt.reasoning == "think":
                out["reasoning_content"] = trace
            elif trace and fmt.reasoning == "harmony":
                out["thinking"] = trace
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if call_id is not None:
                out["tool_call_id"] = _call_id(call_id, index, mistral)
            name = message.get("name")
            if name is not None:
                if not isinstance(name, str):
                    raise ValueError(f"message {index}: tool name must be a string")
                out["name"] = name
        converted.append(out)
    return converted


def _content(content: Any, index: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and not isinstance(content, bytes):
        texts: list[str] = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise ValueError(f"message {index}: only text content parts are supported,"
                                 f" not {kind!r}")
            text = part.get("text")
            if not isinstance(text, str):
                raise ValueError(f"message {index}: a text part needs a string 'text'")
            texts.append(text)
        return "\n".join(texts)
    raise ValueError(f"message {index}: content must be a string, a list of parts, or null")


def _reasoning(message: Mapping[str, Any]) -> str:
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _tool_call(call: Any, index: int, mistral: bool, as_text: bool) -> dict[str, Any]:
    if not isinstance(call, Mapping):
        raise ValueError(f"message {index}: each tool call must be an object")
    function = call.get("function")
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise ValueError(f"message {index}: a tool call needs function.name")
    out: dict[str, Any] = {}
    if call.get("id") is not None:
        out["id"] = _call_id(call["id"], index, mistral)
    out["type"] = call.get("type") or "function"
    arguments = _arguments(function.get("arguments"), index)
    out["function"] = {
        "name": function["name"],
        "arguments": json.dumps(arguments, ensure_ascii=False) if as_text else arguments,
    }
    return out


def _arguments(arguments: Any, index: int) -> dict[str, Any]:
    if isinstance(arguments, Mapping):  # some clients send the object itself
        return dict(arguments)
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    if isinstance(arguments, str):
        try:
            decoded = json.loads(arguments)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"message {index}: tool call arguments are not valid JSON ({exc.msg})"
            ) from None
        if isinstance(decoded, dict):
            return decoded
    raise ValueError(f"message {index}: tool call arguments must be a JSON object")


def _call_id(call_id: Any, index: int, mistral: bool) -> str:
    if not isinstance(call_id, str):
        raise ValueError(f"message {index}: a tool call id must be a string")
    if mistral and not (len(call_id) == _MISTRAL_ID_LENGTH and call_id.isascii()
                        and call_id.isalnum()):
        return hashlib.sha256(call_id.encode()).hexdigest()[:_MISTRAL_ID_LENGTH]
    return call_id
