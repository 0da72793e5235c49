"""Write docs/reference.md, the command-line reference, from the Typer app itself.

    python scripts/gen_cli_reference.py            # regenerate docs/reference.md
    python scripts/gen_cli_reference.py --check    # exit 1 if it differs (tests run this)

Every visible command and sub-command gets its usage line, help text, arguments and options
as `llmrun COMMAND --help` shows them (names and aliases, type, default, env var, range,
required), but without wrapping to a terminal: nothing here reads COLUMNS or the terminal, so
the file is the same on every machine. Hidden commands and options are left out.

Typer's own `typer llmrun.cli utils docs` (0.29.2) was tried first and is not used: it
documents hidden commands (`llmrun ls`), renders every command with the `typer` tool's own
context, so `-h` (llmrun's `help_option_names`) is missing everywhere, and it cuts command
summaries at 45 characters. The walk below uses the same objects through their attributes
(`typer.main.get_command`, `typer.Context`, the commands' `get_params`,
`collect_usage_pieces`, the parameters' `get_help_record`), with llmrun's context settings.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "docs" / "reference.md"
REGENERATE = "python scripts/gen_cli_reference.py"
PROG = "llmrun"


class Param(Protocol):
    """What is read of a Typer parameter (an argument or an option)."""

    @property
    def param_type_name(self) -> str: ...

    def get_help_record(self, ctx: Any) -> tuple[str, str] | None: ...


class Command(Protocol):
    """What is read of a Typer command or group."""

    @property
    def help(self) -> str | None: ...
    @property
    def epilog(self) -> str | None: ...
    @property
    def hidden(self) -> bool: ...
    @property
    def context_settings(self) -> Mapping[str, Any]: ...

    def get_params(self, ctx: Any) -> Sequence[Param]: ...

    def collect_usage_pieces(self, ctx: Any) -> Sequence[str]: ...

    def get_short_help_str(self, limit: int = ...) -> str: ...


def _subcommands(cmd: Any, ctx: Any) -> list[tuple[str, Command]]:
    """A group's visible sub-commands in the order `--help` lists them; none for a command."""
    if not hasattr(cmd, "list_commands"):
        return []
    found = ((name, cmd.get_command(ctx, name)) for name in cmd.list_commands(ctx))
    return [(name, sub) for name, sub in found if sub is not None and not sub.hidden]


def _walk(cmd: Command, ctx: Any) -> list[tuple[Command, Any]]:
    """The command and every visible command below it, depth first, each with its context."""
    import typer

    out: list[tuple[Command, Any]] = [(cmd, ctx)]
    for name, sub in _subcommands(cmd, ctx):
        sub_ctx = typer.Context(sub, parent=ctx, info_name=name,  # type: ignore[arg-type]
                                **sub.context_settings)
        out += _walk(sub, sub_ctx)
    return out


_CODE = re.compile(r"(`[^`\n]*`)")
_LONE_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
_TAG = re.compile(r"<(?=[A-Za-z/!?])")  # what could open an HTML tag or an autolink
_BLOCK_START = re.compile(r"^(\s*[0-9]*)([#>+=.)-])")  # a heading, quote, list, rule


def _md(text: str) -> str:
    """Help text as Markdown: code spans kept, characters Markdown would act on escaped."""
    parts = _CODE.split(text)
    for i in range(0, len(parts), 2):  # outside code spans
        part = parts[i].replace("\\", "\\\\").replace("*", "\\*")
        part = _TAG.sub(r"\\<", part)
        parts[i] = _LONE_UNDERSCORE.sub(r"\\_", part)
    return _BLOCK_START.sub(lambda m: m.group(1) + "\\" + m.group(2), "".join(parts), count=1)


def _paragraphs(text: str) -> list[str]:
    """Click's help paragraphs: text before a form feed; `\\b` paragraphs keep their lines."""
    import inspect

    out = []
    for para in inspect.cleandoc(text).partition("\f")[0].split("\n\n"):
        lines = [line for line in para.splitlines() if line.strip()]
        if lines and lines[0].strip() == "\b":
            out.append("```\n" + "\n".join(lines[1:]) + "\n```")
        elif lines:
            out.append(_md(" ".join(line.strip() for line in lines)))
    return out


def _deprecated(cmd: Command) -> str:
    value = getattr(cmd, "deprecated", False)
    if not value:
        return ""
    return f"(DEPRECATED: {value})" if isinstance(value, str) else "(DEPRECATED)"


def _anchor(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


def _section(cmd: Command, ctx: Any) -> list[str]:
    path = ctx.command_path
    lines = [f"{'#' * min(max(2, 1 + path.count(' ')), 4)} `{path}`", ""]
    help_text = cmd.help or ""
    for para in _paragraphs(help_text):
        lines += [para, ""]
    if note := _deprecated(cmd):
        lines += [note, ""]
    lines += ["```", " ".join([path, *cmd.collect_usage_pieces(ctx)]), "```", ""]
    records: dict[str, list[tuple[str, str]]] = {"argument": [], "option": []}
    for param in cmd.get_params(ctx):
        record = param.get_help_record(ctx)  # None for a hidden parameter
        if record is not None and param.param_type_name in records:
            records[param.param_type_name].append(record)
    for kind, title in (("argument", "Arguments"), ("option", "Options")):
        if records[kind]:
            lines += [f"**{title}**", ""]
            lines += [f"- `{names}`" + (f": {_md(' '.join(text.split()))}" if text else "")
                      for names, text in records[kind]]
            lines.append("")
    subs = _subcommands(cmd, ctx)
    if subs:
        lines += ["**Commands**", ""]
        lines += [f"- [`{name}`](#{_anchor(f'{path} {name}')}): "
                  f"{_md(sub.get_short_help_str(limit=10_000))}" for name, sub in subs]
        lines.append("")
    for para in _paragraphs(cmd.epilog or ""):
        lines += [para, ""]
    return lines


def render() -> str:
    """The reference, from the app as it is now."""
    import os

    # Typer's tests switch the completion options to another form with this variable.
    os.environ.pop("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", None)
    import typer

    from llmrun.cli import app

    root: Command = typer.main.get_command(app)
    ctx = typer.Context(root, info_name=PROG, **root.context_settings)  # type: ignore[arg-type]
    lines = [
        f"# {PROG} command reference",
        "",
        "Generated from the command-line app by `python scripts/gen_cli_reference.py`; do not",
        "edit by hand (`pytest` fails when this file differs from what the app says). It is",
        f"what `{PROG} COMMAND --help` prints. Why the commands behave as they do, exit codes",
        "and examples: [cli.md](cli.md).",
        "",
    ]
    for cmd, cmd_ctx in _walk(root, ctx):
        lines += _section(cmd, cmd_ctx)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the file differs from what the app says; write nothing")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, metavar="FILE",
                        help="the file (default: docs/reference.md)")
    args = parser.parse_args(argv)
    output: Path = args.output.resolve()
    shown = output.relative_to(REPO).as_posix() if output.is_relative_to(REPO) else str(output)
    command = REGENERATE if output == DEFAULT_OUTPUT else f"{REGENERATE} --output {shown}"
    text = render()
    if args.check:
        try:
            current = output.read_text(encoding="utf-8")
        except FileNotFoundError:
            print(f"{shown} does not exist: run {command}", file=sys.stderr)
            return 1
        if current != text:
            print(f"{shown} is stale: run {command}", file=sys.stderr)
            return 1
        return 0
    output.write_text(text, encoding="utf-8")
    print(f"wrote {shown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
