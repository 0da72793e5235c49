"""One invocation's context: its settings, registry, store and resolver, made when first asked
for and dropped at the start of the next invocation (httpie's Environment is the model). It
replaces process-wide caches, so the CLI can run many times in one process (the in-process
tests do) and each run sees its own environment."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    from ..registry import Registry
    from ..resolve import Resolver
    from ..settings import Settings
    from ..store import Store


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


def load_settings() -> Settings:
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


class Context:
    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._registry: Registry | None = None

    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    def registry(self) -> Registry:
        """Shipped < what `catalog --refresh` applied < the user's models.yaml; no network."""
        if self._registry is None:
            from ..registry_update import load

            settings = self.settings()
            self._registry, warning = load(settings.user_registry,
                                           settings.refreshed_registry)
            if warning:
                from . import output

                output.warn(warning)
        return self._registry

    def forget_registry(self) -> None:
        """The registry changed on disk (`catalog --refresh`): read it again when next asked."""
        self._registry = None

    def store(self) -> Store:
        from ..store import Store

        return Store(self.settings().home)

    def resolver(self) -> Resolver:
        from ..resolve import Resolver

        return Resolver(self.registry(), self.store())


_current: Context | None = None


def current() -> Context:
    global _current
    if _current is None:
        _current = Context()
    return _current


def fresh() -> Context:
    """A new context for a new invocation (main() calls this first)."""
    global _current
    from . import output

    output.reset()
    _current = Context()
    return _current
