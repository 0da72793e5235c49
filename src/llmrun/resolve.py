"""From what the user typed to a model on disk: the one resolver that run, chat, bench, show,
doctor, rm, verify and serve use. A name given with `import` first, then a reference
(registry name, hf.co/ORG/REPO[:QUANT], or a .gguf path) validated before anything is touched;
a missing model is pulled only when the caller passes a way to pull. Library code: it never
prints; a note for the user comes back in Resolved.note."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ModelNotPulled, NotFound

if TYPE_CHECKING:
    from .refs import Ref
    from .registry import Entry, Registry
    from .store import Manifest, Store

Puller = Callable[["Ref"], "Manifest"]


@dataclass(frozen=True)
class Resolved:
    path: Path  # the model file (the first shard of a split model)
    name: str  # what to call it: the canonical name, or the file name of a path
    entry: Entry | None  # the registry's entry, when the model is a registry model
    manifest: Manifest | None = None  # None for a .gguf path
    note: str | None = None  # something the user should hear about the choice made


class Resolver:
    def __init__(self, registry: Registry, store: Store) -> None:
        self.registry, self.store = registry, store

    def parse(self, text: str) -> Ref:
        from .refs import parse

        return parse(text, self.registry)

    def imported(self, text: str) -> Manifest | None:
        """A model imported under a name of the user's (checked before registry lookup)."""
        from .registry import NAME_RE

        if not NAME_RE.match(text.lower()):
            return None
        manifest = self.store.get(text.lower())
        return manifest if manifest is not None and manifest.kind == "import" else None

    def pulled(self, text: str) -> Manifest | None:
        """The pulled or imported model ``text`` names, if there is one (a path is none)."""
        from .refs import LocalRef

        manifest = self.imported(text)
        if manifest is None:
            ref = self.parse(text)
            manifest = None if isinstance(ref, LocalRef) else self.store.find(ref)
        return manifest

    def local(self, text: str, *, pull: Puller | None, paths: bool = True) -> Resolved:
        """The model ``text`` names, on disk: pulled first with ``pull`` when it is missing
        (None: NotPulled, exit 3). ``paths=False`` refuses a .gguf path (serve: clients pick
        models, not files)."""
        from .refs import HubRef, LocalRef, RegistryRef

        note = None
        manifest = self.imported(text)
        ref: Ref | None = None
        if manifest is None:
            ref = self.parse(text)
            if isinstance(ref, LocalRef):
                if not paths:
                    raise NotFound(f"model {text!r} is not a pulled model",
                                   hint="see GET /v1/models")
                return Resolved(ref.path, ref.path.name, None)
            manifest = self.store.find(ref)
            if manifest is not None and isinstance(ref, HubRef) and ref.quant is None:
                note = (f"using {manifest.name}, the quant of {ref.display} that is pulled "
                        f"(`llmrun pull {ref.display}` fetches the default one)")
        if manifest is None:
            assert ref is not None
            if pull is None:
                raise ModelNotPulled(f"model {text!r} is not pulled", hint=f"llmrun pull {text}")
            manifest = pull(ref)
        entry = ref.entry if isinstance(ref, RegistryRef) else None
        if entry is None and manifest.repo:
            found = self.registry.by_repo_file(manifest.repo, manifest.files[0].path)
            entry = found[1] if found else None
        return Resolved(self.store.checked_path(manifest), manifest.name, entry, manifest, note)
