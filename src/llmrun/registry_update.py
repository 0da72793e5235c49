"""`llmrun catalog --refresh`: a newer registry, published as a file in a Hub repo
(LLMRUN_REGISTRY_REPO / _FILE / _REVISION), fetched into the Hugging Face cache like any Hub
file, validated with the shipped file's schema, checked by registry_trust, and applied as an
overlay: ``$LLMRUN_HOME/state/registry-refreshed.yaml`` holds the fetched entries llmrun took
that differ from the shipped ones. Every invocation layers shipped < overlay < the user's
models.yaml (``load``: two local files, no network)."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import LlmrunError, NetworkError, RegistryError, UsageError
from .registry import Registry, RegistryFile, parse_registry, shipped_text

if TYPE_CHECKING:
    from .registry_trust import Decision
    from .settings import Settings
    from .store import Store

MAX_BYTES = 1 << 20  # the shipped file is ~30 KB
SCHEMA = 1


@dataclass
class Refresh:
    source: str  # hf.co/ORG/REPO/FILE@commit
    from_cache: bool  # HF_HUB_OFFLINE: the copy fetched before was used
    decision: Decision


def _read(path: Path, source: str) -> RegistryFile:
    with path.open("rb") as fh:
        data = fh.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise RegistryError(f"{source}: larger than {MAX_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RegistryError(f"{source}: not UTF-8 text") from None
    parsed = parse_registry(text, source)
    if parsed.schema_ != SCHEMA:
        raise RegistryError(f"{source}: schema {parsed.schema_}; this llmrun reads schema "
                            f"{SCHEMA} (a newer llmrun may read it)")
    return parsed


def load(user_file: Path | None, overlay: Path) -> tuple[Registry, str | None]:
    """The registry of this invocation, and a warning when the overlay had to be ignored
    (unreadable or invalid: the shipped registry is used instead, never a crash)."""
    from .registry_trust import untrusted_package

    shipped = parse_registry(shipped_text(), "models.yaml (shipped)")
    files, warning = [shipped], None
    if overlay.is_file():
        try:
            refreshed = _read(overlay, str(overlay))
            bad = [n for n, e in refreshed.models.items()
                   if untrusted_package(e, shipped.models.get(n))]
            if bad:
                raise RegistryError(f"{bad[0]} names a pip package source")
            Registry([shipped, refreshed])  # its aliases resolve
            files.append(refreshed)
        except (OSError, RegistryError) as exc:
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            warning = (f"ignoring the refreshed registry ({reason}); using the shipped one "
                       "(`llmrun catalog --refresh` fetches it again)")
    if user_file is not None and user_file.is_file():
        files.append(parse_registry(user_file.read_text(encoding="utf-8"), str(user_file)))
    return Registry(files), warning


def _cached(repo: str, path: str, revision: str) -> tuple[str, Path] | None:
    """The copy fetched before, from the cache alone (try_to_load_from_cache's rule)."""
    from .store import repo_dir

    root = repo_dir(repo)
    try:
        commit = revision if len(revision) == 40 else \
            (root / "refs" / revision).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    local = root / "snapshots" / commit / path
    return (commit, local) if local.is_file() else None


def _fetch(settings: Settings) -> tuple[str, Path, bool]:
    from . import hub
    from .store import write_ref

    repo, path, rev = settings.registry_repo, settings.registry_file, settings.registry_revision
    if hub.is_offline():
        cached = _cached(repo, path, rev)
        if cached is None:
            raise NetworkError(f"cannot refresh the registry: HF_HUB_OFFLINE is set and "
                               f"hf.co/{repo}/{path} was never fetched",
                               hint="unset HF_HUB_OFFLINE and run `llmrun catalog --refresh`")
        return cached[0], cached[1], True
    try:
        commit, local = hub.download_small(repo, path, rev, MAX_BYTES)
    except LlmrunError as exc:  # the same type (exit code), said as a refresh
        hint = "; ".join(h for h in (exc.hint, "the registry in use is unchanged") if h)
        raise type(exc)(f"cannot refresh the registry: {exc.message}", hint) from None
    if rev != commit:
        write_ref(repo, rev, commit)  # as hf_hub_download would for a branch
    return commit, Path(local), False


def _pulled_names(store: Store, registry: Registry) -> set[str]:
    from .refs import RegistryRef, parse

    names = set()
    for m in store.all():
        if m.kind != "registry":
            continue
        try:
            ref = parse(m.name, registry)
        except LlmrunError:
            continue
        if isinstance(ref, RegistryRef):
            names.add(ref.name)
    return names


def refresh(settings: Settings, store: Store, current: Registry, *,
            accept: list[str], accept_all: bool) -> Refresh:
    """Fetch, check and apply the published registry. Nothing is written unless every step
    succeeds: on any error the overlay applied before stays in use."""
    from .registry_trust import decide
    from .store import atomic_write_text

    commit, local, from_cache = _fetch(settings)
    source = f"hf.co/{settings.registry_repo}/{settings.registry_file}@{commit[:12]}"
    fetched = _read(local, source)
    unknown = [n for n in accept if n not in fetched.models and n not in fetched.aliases]
    if unknown:
        raise UsageError(f"--accept {unknown[0]}: no such name in {source}",
                         hint="`llmrun catalog --refresh` lists what is held back")
    shipped = parse_registry(shipped_text(), "models.yaml (shipped)")
    overlay = settings.refreshed_registry
    try:
        previous = _read(overlay, str(overlay)) if overlay.is_file() else None
    except (OSError, RegistryError):
        previous = None  # unusable: load() already ignores it
    decision = decide(shipped, previous, fetched, pulled=_pulled_names(store, current),
                      accept=accept, accept_all=accept_all)
    applied = decision.overlay()
    Registry([shipped, applied])  # aliases resolve (a RegistryError here changes nothing)
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    when = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    header = (f"# Written by `llmrun catalog --refresh` on {when}\n# from {source}\n"
              f"# sha256 {digest}\n# The fetched entries that differ from the shipped "
              "registry and were applied.\n# Do not edit: add your own to ../models.yaml.\n")
    atomic_write_text(overlay, header + _dump(applied))
    return Refresh(source, from_cache, decision)


def _dump(registry: RegistryFile) -> str:
    import yaml

    data = {"schema": SCHEMA,
            "aliases": dict(sorted(registry.aliases.items())),
            "models": {name: entry.model_dump(mode="json", exclude_defaults=True)
                       for name, entry in sorted(registry.models.items())}}
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
