"""Helpers shared by the command modules: settings, registry and model lookup."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:  # imported lazily: pydantic and yaml are not needed for --help
    from ..refs import Ref
    from ..registry import Entry, Registry
    from ..resolve import Resolver
    from ..settings import Settings
    from ..store import Manifest, Store


class _Partial:
    """Settings with some LLMRUN_* values invalid: the valid ones read as usual, a bad one
    raises its one-line UsageError when a command reads it (so `LLMRUN_PORT=abc` stops
    `serve`, not `list`)."""

    def __init__(self, good: Settings, bad: dict[str, str]) -> None:
        self._good, self._bad = good, bad

    def __getattr__(self, name: str) -> object:
        if name in self._bad:
            raise UsageError(self._bad[name])
        return getattr(self._good, name)


@lru_cache(maxsize=1)
def settings() -> Settings:
    import os
    from typing import cast

    from pydantic import ValidationError

    from ..settings import Settings

    try:
        return Settings()
    except ValidationError as exc:  # a bad LLMRUN_* value
        bad: dict[str, str] = {}
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            var = f"LLMRUN_{field.upper()}"
            bad[field] = (f"invalid {var}={os.environ.get(var, '')!r}: "
                          + " ".join(str(err["msg"]).split()))
        saved = {f"LLMRUN_{f.upper()}": os.environ.pop(f"LLMRUN_{f.upper()}", None)
                 for f in bad}
        try:
            good = Settings()
        except ValidationError:
            raise UsageError(next(iter(bad.values()))) from None
        finally:
            os.environ.update({k: v for k, v in saved.items() if v is not None})
        return cast("Settings", _Partial(good, bad))


@lru_cache(maxsize=1)
def registry() -> Registry:
    from ..registry import Registry

    return Registry.load(settings().user_registry)


def store() -> Store:
    from ..store import Store

    return Store(settings().home)


def resolver() -> Resolver:
    from ..resolve import Resolver

    return Resolver(registry(), store())


def parse_ref(text: str) -> Ref:
    return resolver().parse(text)


def _pull(ref: Ref) -> Manifest:
    """Pull a missing model with progress on stderr, like `ollama run`."""
    from ..pull import pull
    from .progress import PullEvents

    events = PullEvents(quiet=False)
    try:
        return pull(ref, settings(), events)
    except KeyboardInterrupt:
        events.close()
        from . import output

        output.info(f"interrupted: what was downloaded is kept; `llmrun pull {ref.display}` "
                    "resumes it")
        raise
    finally:
        events.close()


def ensure_local(text: str, *, no_pull: bool) -> tuple[Path, str, Entry | None]:
    """(model file, display name, registry entry) for a reference; pulls it first when it
    is missing, unless no_pull (resolve.Resolver.local)."""
    found = resolver().local(text, pull=None if no_pull else _pull)
    if found.note:
        from . import output

        output.info(found.note)
    return found.path, found.name, found.entry
