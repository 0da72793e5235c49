"""Shell completion of model names, through Typer's own completion (`llmrun
--install-completion`). It runs on every Tab, so it reads only the registry file and the names
of the pulled models' record files: no engine, no network, and never an error."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Callable

from . import common


def _matching(names: list[str], incomplete: str) -> list[str]:
    low = incomplete.lower()
    return sorted({n for n in names if n.lower().startswith(low)})


def _pulled() -> list[str]:
    try:
        return common.store().names()
    except Exception:  # a completion never fails the shell
        return []


def _registry() -> list[str]:
    try:
        return list(common.registry().names)
    except Exception:  # a broken user registry: still complete what is pulled
        return []


def any_model(incomplete: str) -> list[str]:
    """Registry names and aliases, and pulled models (run, chat, pull, show, bench)."""
    return _matching(_registry() + _pulled(), incomplete)


def pulled_model(incomplete: str) -> list[str]:
    """Pulled models only (rm, verify)."""
    return _matching(_pulled(), incomplete)


def bash_colon_head() -> str:
    """bash splits words at ':' (COMP_WORDBREAKS), so Typer's bash script passes `gemma3:2`
    as `gemma3`, `:`, `2`, and bash replaces only the `2`. Join the pieces back into one
    word for Typer (in COMP_WORDS), and return the part before the last ':' that each
    completion must lose, as bash-completion's __ltrim_colon_completions does ('' when
    there is nothing to trim)."""
    if os.environ.get("_LLMRUN_COMPLETE") != "complete_bash":
        return ""
    passed = os.environ.get("COMP_WORDS", "")
    sep = "\n" if "\n" in passed else " "  # the script sets IFS to a newline: its join
    words = passed.split(sep)
    try:
        cword = int(os.environ.get("COMP_CWORD", ""))
    except ValueError:
        return ""
    joined: list[str] = []
    new_cword = cword
    glue = False
    for i, word in enumerate(words):
        if joined and (word == ":" or glue):
            joined[-1] += word
            if i <= cword:
                new_cword -= 1
        else:
            joined.append(word)
        glue = word == ":"
    os.environ["COMP_WORDS"] = sep.join(joined)
    os.environ["COMP_CWORD"] = str(new_cword)
    current = joined[new_cword] if 0 <= new_cword < len(joined) else ""
    return current[:current.rfind(":") + 1]


def trimmed(call: Callable[[], object], head: str) -> None:
    """Run Typer's completion with its output captured, and print each completion less
    `head` (see bash_colon_head)."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            call()
    finally:
        lines = buffer.getvalue().splitlines()
        sys.stdout.write("".join(f"{line.removeprefix(head)}\n" for line in lines))
