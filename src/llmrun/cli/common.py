"""Helpers shared by the command modules: settings, registry and model lookup."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported lazily: pydantic and yaml are not needed for --help
    from ..refs import Ref
    from ..registry import Entry, Registry
    from ..resolve import Resolver
    from ..settings import Settings
    from ..store import Manifest, Store


def settings() -> Settings:
    """This invocation's settings (cli/context.py)."""
    from .context import current

    return current().settings()


def registry() -> Registry:
    from .context import current

    return current().registry()


def store() -> Store:
    from .context import current

    return current().store()


def resolver() -> Resolver:
    from .context import current

    return current().resolver()


def parse_ref(text: str) -> Ref:
    return resolver().parse(text)


def _pull(ref: Ref) -> Manifest:
    """Pull a missing model with progress on stderr, like `ollama run`."""
    from .progress import pull_with_progress

    return pull_with_progress(ref, settings())


def ensure_local(text: str, *, no_pull: bool) -> tuple[Path, str, Entry | None]:
    """(model file, display name, registry entry) for a reference; pulls it first when it
    is missing, unless no_pull (resolve.Resolver.local)."""
    found = resolver().local(text, pull=None if no_pull else _pull)
    if found.note:
        from . import output

        output.info(found.note)
    return found.path, found.name, found.entry
