"""What a fetched registry may change, decided before anything is applied (pure: no disk, no
network). A registry fetched from the Hub is untrusted input:

- it may not name a pip ``package`` source (a callable llmrun would run) unless the shipped
  registry names the same one for the same file; such an entry is refused whatever is accepted;
- it may not point a name that is pulled, or pinned (a sha256 or a commit), at other bytes
  (another repo, commit, file or sha256) without the user's explicit consent: that entry is
  held back, the previous one stays, and the report says how to accept it;
- an alias may not shadow a model name, and retargeting an existing alias is held back too.

Everything else (new names, metadata, entries nobody pulled and nothing pinned) is applied.
The result is the overlay: the fetched entries that differ from the shipped ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .registry import Entry, RegistryFile

PACKAGE_REFUSED = "names a pip package source (code llmrun would run), which only the shipped " \
                  "registry and your own models.yaml may do"


@dataclass
class Decision:
    models: dict[str, Entry] = field(default_factory=dict)  # the new overlay
    aliases: dict[str, str] = field(default_factory=dict)
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    held: dict[str, str] = field(default_factory=dict)  # name -> what it would change
    refused: dict[str, str] = field(default_factory=dict)  # name -> why
    removed: list[str] = field(default_factory=list)  # no longer published: back to shipped
    kept: list[str] = field(default_factory=list)  # no longer published but pulled: kept

    def overlay(self) -> RegistryFile:
        return RegistryFile.model_validate(
            {"schema": 1, "aliases": self.aliases, "models": self.models})


def _short(rev: str | None) -> str:
    return rev[:12] if rev else "main"


def pinned(entry: Entry) -> bool:
    """Whether the entry fixes its bytes: a commit, or a sha256 for some file."""
    return entry.revision is not None or any(
        f.sha256 for q in entry.quants.values() for f in q.files)


def moves(old: Entry, new: Entry) -> list[str]:
    """How ``new`` points the name at other bytes than ``old`` does (empty: it does not).
    A quant that only ``new`` has is no move: nothing of it can be on disk."""
    out = []
    if old.repo.lower() != new.repo.lower():
        out.append(f"repo {old.repo} -> {new.repo}")
    if old.revision != new.revision:
        out.append(f"commit {_short(old.revision)} -> {_short(new.revision)}")
    for name, quant in old.quants.items():
        other = new.quants.get(name)
        if other is None:
            out.append(f"{name} removed")
        elif [(f.path, f.sha256) for f in quant.files] != [(f.path, f.sha256)
                                                           for f in other.files]:
            out.append(f"{name} files or sha256 differ")
    if old.mmproj is not None and (new.mmproj is None or (old.mmproj.path, old.mmproj.sha256)
                                   != (new.mmproj.path, new.mmproj.sha256)):
        out.append("vision projector differs")  # it is loaded with the model: native code
    return out


def untrusted_package(entry: Entry, shipped: Entry | None) -> bool:
    """Whether ``entry`` names a package source the shipped entry does not name for the same
    file (same path, sha256 and package)."""
    trusted = set() if shipped is None else {
        (f.path, f.sha256, f.package) for q in shipped.quants.values() for f in q.files
        if f.package is not None}
    return any(f.package is not None and (f.path, f.sha256, f.package) not in trusted
               for q in entry.quants.values() for f in q.files)


def decide(shipped: RegistryFile, previous: RegistryFile | None, fetched: RegistryFile, *,
           pulled: Iterable[str], accept: Iterable[str] = (), accept_all: bool = False
           ) -> Decision:
    """The overlay to apply over ``shipped`` now that ``fetched`` is published, given the
    overlay applied before (``previous``), the registry names that are pulled and the names
    the user accepted."""
    prev = previous or RegistryFile.model_validate({"schema": 1})
    pulled, accepted = set(pulled), set(accept)
    base = {**shipped.models, **prev.models}
    d = Decision()
    for name, entry in fetched.models.items():
        old = base.get(name)
        if untrusted_package(entry, shipped.models.get(name)):
            d.refused[name] = PACKAGE_REFUSED
        elif old is None:
            d.added.append(name)
        elif old == entry:
            pass
        elif (why := moves(old, entry)) and (name in pulled or pinned(old)) \
                and not (accept_all or name in accepted):
            d.held[name] = ("pulled; " if name in pulled else "pinned; ") + ", ".join(why)
        else:
            d.changed.append(name)
        if name in d.refused or name in d.held:
            if name in prev.models:
                d.models[name] = prev.models[name]
        elif entry != shipped.models.get(name):
            d.models[name] = entry
    for name in prev.models:
        if name not in fetched.models:
            if name in pulled:
                d.models[name] = prev.models[name]
                d.kept.append(name)
            else:
                d.removed.append(name)
    _aliases(d, shipped, prev, fetched, accepted, accept_all)
    return d


def _aliases(d: Decision, shipped: RegistryFile, prev: RegistryFile, fetched: RegistryFile,
             accepted: set[str], accept_all: bool) -> None:
    base = {**shipped.aliases, **prev.aliases}
    models = set(shipped.models) | set(d.models)
    names = models | set(fetched.models) | set(prev.models)
    for alias, target in fetched.aliases.items():
        old = base.get(alias)
        if alias in names:
            d.refused[alias] = "is an alias with the name of a model (it would hide that model)"
        elif target not in models:
            d.refused[alias] = f"points at {target!r}, which is not in the registry llmrun uses"
        elif old is not None and old != target and not (accept_all or alias in accepted):
            d.held[alias] = f"alias {old} -> {target}"
        else:
            if old is None:
                d.added.append(alias)
            elif old != target:
                d.changed.append(alias)
            if shipped.aliases.get(alias) != target:
                d.aliases[alias] = target
            continue
        if alias in prev.aliases and prev.aliases[alias] in models:
            d.aliases[alias] = prev.aliases[alias]
    for alias in prev.aliases:
        if alias not in fetched.aliases and alias not in d.aliases:
            d.removed.append(alias)
