"""GBNF grammars that make tool calls valid by construction: the call's syntax in the model's
own format, a function name among those offered, and arguments that match that function's
JSON schema.

Two shapes, as llama.cpp's tool-call support has them:

- ``whole`` (``tool_choice`` ``required`` or a named function): from the first token, an
  optional reasoning trace (where the format has one and thinking is on), then the call(s);
- ``rest`` (``tool_choice`` ``auto``): generation runs free until the model opens a call
  (parse.ReplyParser.call_opened), then continues under this grammar from just past the
  opening marker: llama.cpp's "lazy grammar", done by restarting the generation at that point
  (the KV cache holds the prefix, so nothing is evaluated twice).

Once the grammar is complete llama.cpp allows only end-of-generation tokens, so nothing
follows the last call. The JSON-schema rules come from llama-cpp-python's own converter
(``llama_cpp.llama_grammar.SchemaConverter``), handed in by the engine so that this module
imports nothing native.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from . import ToolSyntax

Shape = Literal["whole", "rest"]

# a trace's text: anything up to its closing marker
_THOUGHT = {"think": '( [^<] | "<" [^/] | "</" [^t] )*',
            "harmony": '( [^<] | "<" [^|] )*'}


class Converter(Protocol):
    """What this module uses of llama-cpp-python's SchemaConverter."""

    def resolve_refs(self, schema: dict[str, Any], url: str) -> Any: ...
    def visit(self, schema: Any, name: str) -> str: ...
    def format_grammar(self) -> str: ...


@dataclass(frozen=True)
class ToolGrammar:
    """Everything needed to build the grammar, as plain data (it crosses the pipe to a
    model's process in `serve`)."""

    syntax: ToolSyntax
    tools: Sequence[Mapping[str, Any]]  # OpenAI tools: {"type": "function", "function": {...}}
    shape: Shape = "whole"
    parallel: bool = True  # more than one call allowed
    trace: Literal["none", "optional", "open"] = "none"  # whole: may start one / inside one
    name: str | None = None  # rest, harmony: the function the opened call names
    mistral_args: bool = False  # Mistral's newer NAME[ARGS]{...} form instead of a JSON array

    def as_dict(self) -> dict[str, Any]:
        return {"syntax": self.syntax, "tools": list(self.tools), "shape": self.shape,
                "parallel": self.parallel, "trace": self.trace, "name": self.name,
                "mistral_args": self.mistral_args}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ToolGrammar:
        return cls(syntax=data["syntax"], tools=data["tools"], shape=data["shape"],
                   parallel=data["parallel"], trace=data["trace"], name=data.get("name"),
                   mistral_args=bool(data.get("mistral_args")))


def lit(text: str) -> str:
    """A GBNF string literal."""
    out = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + out.replace("\r", "\\r").replace("\t", "\\t") + '"'


def _functions(tools: Sequence[Mapping[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for tool in tools:
        fn = tool.get("function") or {}
        params = fn.get("parameters") or {"type": "object"}
        found.append((str(fn["name"]), dict(params)))
    return found


def build(spec: ToolGrammar, converter: Converter) -> str:
    """The GBNF text for ``spec``; its start rule is ``root``."""
    fns = _functions(spec.tools)
    if spec.name is not None:
        fns = [(n, p) for n, p in fns if n == spec.name] or fns
    rules: list[str] = []
    args = {}
    for i, (name, params) in enumerate(fns):
        schema = converter.resolve_refs(params, f"tool-{i}")
        args[name] = converter.visit(schema, f"args-{i}")
    syntax = spec.syntax
    if syntax == "hermes":
        key_args = '"\\"arguments\\"" space ":" space'
        calls = [f'"{{" space "\\"name\\"" space ":" space {lit(json.dumps(n))} space "," space '
                 f'{key_args} {a} space "}}"' for n, a in args.items()]
        rules.append("call ::= " + " | ".join(calls))
        one = 'space call space "</tool_call>"'
        more = ' ( space "<tool_call>" space call space "</tool_call>" )*' if spec.parallel else ""
        rest = one + more
        opening = '"<tool_call>" '
    elif syntax == "llama3":
        calls = [f'"{{" space "\\"name\\"" space ":" space {lit(json.dumps(n))} space "," space '
                 f'"\\"parameters\\"" space ":" space {a} space "}}"' for n, a in args.items()]
        rules.append("call ::= " + " | ".join(calls))
        rest = "space call" + (' ( ";" space call )*' if spec.parallel else "")
        opening = ""
    elif syntax == "mistral":
        if spec.mistral_args:
            calls = [f'{lit(n)} "[ARGS]" {a}' for n, a in args.items()]
            rules.append("call ::= " + " | ".join(calls))
            rest = "call" + (' ( "[TOOL_CALLS]" call )*' if spec.parallel else "")
        else:
            calls = [f'"{{" space "\\"name\\"" space ":" space {lit(json.dumps(n))} space "," '
                     f'space "\\"arguments\\"" space ":" space {a} space "}}"'
                     for n, a in args.items()]
            rules.append("call ::= " + " | ".join(calls))
            rest = ('"[" space call' + (' ( "," space call )*' if spec.parallel else "")
                    + ' space "]"')
        opening = '"[TOOL_CALLS]" '
    elif syntax == "deepseek-r1":
        calls = [f'"<｜tool▁call▁begin｜>function<｜tool▁sep｜>" {lit(n)} "\\n```json\\n" {a} '
                 f'"\\n```<｜tool▁call▁end｜>"' for n, a in args.items()]
        rules.append("call ::= " + " | ".join(calls))
        rest = ("call" + (' ( "\\n"? call )*' if spec.parallel else "")
                + ' "<｜tool▁calls▁end｜>"')
        opening = '"<｜tool▁calls▁begin｜>" '
    elif syntax == "harmony":
        if spec.shape == "rest":  # the header, with the name, is written: the arguments
            rest = next(iter(args.values()))
            opening = ""
        else:
            heads = [f'"<|channel|>commentary to=functions." {lit(n)} " <|constrain|>json'
                     f'<|message|>" {a}' for n, a in args.items()]
            rules.append("call ::= " + " | ".join(heads))
            rest = "call"
            opening = ""
    else:  # pragma: no cover - ToolSyntax is closed
        raise ValueError(f"no grammar for tool syntax {syntax!r}")
    if spec.shape == "rest":
        root = rest
    else:
        root = opening + rest
        trace = _trace(syntax, spec.trace)
        if trace:
            rules.append(f"thought ::= {_THOUGHT['harmony' if syntax == 'harmony' else 'think']}")
            root = trace + " " + root
    rules.insert(0, f"root ::= {root}")
    return "\n".join(rules) + "\n" + converter.format_grammar() + "\n"


def _trace(syntax: ToolSyntax, trace: str) -> str:
    """The grammar's part for a reasoning trace before the call(s)."""
    if trace == "none":
        return ""
    if syntax == "harmony":
        part = '"<|channel|>analysis<|message|>" thought "<|start|>assistant"'
        return f"( {part} )?" if trace == "optional" else part.split(" ", 1)[1]
    if trace == "open":  # the prompt opened the trace: finish it, then the call
        return 'thought "</think>" space'
    return '( "<think>" thought "</think>" space )?'


def json_after_trace(answer: str, trace: str) -> str:
    """The start rules for a JSON answer (rule ``answer``, made by the converter) that a
    reasoning trace may precede: ``trace`` is ``SYNTAX:open`` (the prompt opened the trace)
    or ``SYNTAX:optional``. A reasoning model asked for JSON thinks first, then answers in JSON,
    instead of being forced to skip its trace."""
    syntax, _, mode = trace.partition(":")
    if syntax not in _THOUGHT or mode not in ("open", "optional"):
        raise ValueError(f"unknown trace {trace!r}")
    if syntax == "harmony":
        head = _trace("harmony", mode) + ' "<|channel|>final<|message|>"'
    else:
        head = _trace("hermes", mode)
    return f"root ::= {head} {answer}\nthought ::= {_THOUGHT[syntax]}\n"
