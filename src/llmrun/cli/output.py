"""Terminal output rules: stdout carries only the product, everything else goes to stderr;
colour and progress only on a terminal (Rich honours NO_COLOR); model text is written
plainly, never parsed by Rich."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

_err: Console | None = None


def err() -> Console:
    """Rich console on stderr, created on first use (Rich costs start-up time)."""
    global _err
    if _err is None:
        from rich.console import Console

        _err = Console(stderr=True, highlight=False, soft_wrap=True)
    return _err


def reset() -> None:
    """Forget the stderr console: the next one is made on the streams of the moment."""
    global _err
    _err = None


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()


def info(message: str) -> None:
    err().print(message, markup=False)


def warn(message: str) -> None:
    err().print(f"[yellow]Warning:[/yellow] {_escape(message)}")


def notice(message: str) -> None:
    """Something llmrun did on the user's behalf that they should know about, once."""
    err().print(f"[cyan]Notice:[/cyan] {_escape(message)}")


def error(message: str, hint: str | None = None) -> None:
    err().print(f"[bold red]Error:[/bold red] {_escape(message)}")
    if hint:
        err().print(f"[dim]Hint: {_escape(hint)}[/dim]")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


class OutputClosed(Exception):
    """stdout's reader went away (`| head`). Not an OSError, so the parser's own EPIPE
    handling (exit 1) never sees it; main() ends quietly instead."""


def write(text: str, *, flush: bool = False) -> None:
    """Product text on stdout, exactly as given."""
    try:
        sys.stdout.write(text)
        if flush:
            sys.stdout.flush()
    except BrokenPipeError:
        raise OutputClosed() from None


def write_json(data: Any) -> None:
    write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def table(columns: list[str], rows: list[list[str]], *, right: set[int] | None = None) -> None:
    """A Rich table on a terminal; tab-separated lines with a header when piped."""
    if stdout_is_tty():
        from rich.table import Table

        t = Table(box=None, header_style="bold", pad_edge=False)
        for i, c in enumerate(columns):
            t.add_column(c, justify="right" if right and i in right else "left")
        for r in rows:
            t.add_row(*r)
        from rich.console import Console

        Console(highlight=False).print(t)
    else:
        write("".join("\t".join(r) + "\n" for r in [columns, *rows]))


def human_size(n: int | None) -> str:
    from ..units import human_size as size

    return size(n)


def color_allowed() -> bool:
    """NO_COLOR (https://no-color.org) turns colour off; so does TERM=dumb."""
    import os

    return not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def trace(text: str, *, dim: bool) -> None:
    """A piece of a model's reasoning trace on stderr (dimmed when asked), as it streams."""
    import re

    text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", text)
    data = f"\x1b[2m{text}\x1b[0m" if dim else text  # (model text cannot drive the terminal)
    try:
        sys.stderr.write(data)
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):  # stderr closed: the trace is not the product
        pass
