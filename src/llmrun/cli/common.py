"""Helpers shared by the command modules: settings, registry and model lookup."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelNotPulled, UsageError

if TYPE_CHECKING:  # imported lazily: pydantic and yaml are not needed for --help
    from ..refs import Ref
    from ..registry import Entry, Registry
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


def parse_ref(text: str) -> Ref:
    from ..refs import parse

    return parse(text, registry())


def imported(text: str) -> Manifest | None:
    """A model imported under a name of the user's (checked before registry lookup)."""
    from ..registry import NAME_RE

    if not NAME_RE.match(text.lower()):
        return None
    manifest = store().get(text.lower())
    return manifest if manifest is not None and manifest.kind == "import" else None


def find_pulled(ref: Ref) -> Manifest | None:
    """The manifest for a reference, if it was pulled."""
    return store().find(ref)


def ensure_local(text: str, *, no_pull: bool) -> tuple[Path, str, Entry | None]:
    """(model file, display name, registry entry) for a reference; pulls it first when it
    is missing, like `ollama run`, unless no_pull."""
    from ..refs import LocalRef, RegistryRef

    manifest = imported(text)
    ref: Ref | None = None
    if manifest is None:
        ref = parse_ref(text)
        if isinstance(ref, LocalRef):
            return ref.path, ref.path.name, None
        manifest = find_pulled(ref)
        from ..refs import HubRef

        if manifest is not None and isinstance(ref, HubRef) and ref.quant is None:
            from . import output

            output.info(f"using {manifest.name}, the quant of {ref.display} that is pulled "
                        f"(`llmrun pull {ref.display}` fetches the default one)")
    if manifest is None:
        assert ref is not None
        if no_pull:
            raise ModelNotPulled(f"model {text!r} is not pulled", hint=f"llmrun pull {text}")
        from ..pull import pull
        from .progress import PullEvents

        events = PullEvents(quiet=False)
        try:
            manifest = pull(ref, settings(), events)
        finally:
            events.close()
    entry = ref.entry if isinstance(ref, RegistryRef) else None
    if entry is None and manifest.repo:
        found = registry().by_repo_file(manifest.repo, manifest.files[0].path)
        entry = found[1] if found else None
    return store().checked_path(manifest), manifest.name, entry
