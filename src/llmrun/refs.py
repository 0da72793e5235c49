"""Model references: parsed and validated before anything touches the disk or the network.

Forms: a registry name ``NAME[:TAG]`` (``NAME:TAG-QUANT`` picks a quant), a Hub repo
``hf.co/ORG/REPO[:QUANT][@REVISION]`` (also ``huggingface.co/…`` or plain ``ORG/REPO``), or the
path of a local ``.gguf`` file.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidReference, NotFound
from .registry import NAME_RE, REPO_RE, Entry, Registry

MAX_REF_LEN = 256
QUANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
REV_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HUB_PREFIXES = ("hf.co/", "huggingface.co/", "https://huggingface.co/", "https://hf.co/")


@dataclass(frozen=True)
class RegistryRef:
    name: str  # canonical registry name
    entry: Entry
    quant: str

    @property
    def display(self) -> str:
        suffix = "" if self.quant == self.entry.default_quant else f"-{self.quant.lower()}"
        return self.name + suffix


@dataclass(frozen=True)
class HubRef:
    repo: str
    quant: str | None = None
    revision: str | None = None

    @property
    def display(self) -> str:
        return f"hf.co/{self.repo}" + (f":{self.quant}" if self.quant else "")


@dataclass(frozen=True)
class LocalRef:
    path: Path

    @property
    def display(self) -> str:
        return str(self.path)


Ref = RegistryRef | HubRef | LocalRef


def _check_chars(text: str) -> None:
    if not text:
        raise InvalidReference("empty model name")
    if len(text) > MAX_REF_LEN:
        raise InvalidReference(f"model name is too long ({len(text)} characters)")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise InvalidReference("model name contains control characters")
    if "%" in text:
        raise InvalidReference(f"invalid model name {text!r} (percent-encoding is not allowed)")


def _looks_like_path(text: str) -> bool:
    if text.startswith(("/", "./", "../", "~")):
        return True
    return text.lower().endswith(".gguf") and ":" not in text


def parse_hub(text: str) -> HubRef:
    """Parse ``ORG/REPO[:QUANT][@REV]`` (prefix already stripped)."""
    rest, _, revision = text.partition("@")
    repo, _, quant = rest.partition(":")
    if not REPO_RE.match(repo) or ".." in repo:
        raise InvalidReference(f"invalid Hub repository {repo!r}", hint="expected hf.co/ORG/REPO")
    if quant and (not QUANT_RE.match(quant) or ".." in quant):
        raise InvalidReference(f"invalid quant {quant!r}")
    if revision and (not REV_RE.match(revision) or ".." in revision):
        raise InvalidReference(f"invalid revision {revision!r}")
    return HubRef(repo=repo, quant=quant or None, revision=revision or None)


def _registry_lookup(text: str, registry: Registry) -> RegistryRef | None:
    found = registry.get(text)
    if found is not None:
        name, entry = found
        return RegistryRef(name, entry, entry.default_quant)
    # NAME:TAG-QUANT, e.g. llama3.2:3b-q8_0
    base, sep, quant = text.rpartition("-")
    while sep:
        found = registry.get(base)
        if found is not None:
            name, entry = found
            for q in entry.quants:
                if q.lower() == quant.lower():
                    return RegistryRef(name, entry, q)
            close = difflib.get_close_matches(text, registry.names, n=3, cutoff=0.8)
            raise NotFound(
                f"{name} has no quant {quant!r}",
                hint=("did you mean " + ", ".join(close) + "? " if close else "")
                + "quants of " + name + ": " + ", ".join(q.lower() for q in entry.quants),
            )
        base, sep, rest = base.rpartition("-")
        quant = rest + "-" + quant
    return None


def parse(text: str, registry: Registry) -> Ref:
    """Parse and validate a model reference. Raises InvalidReference (exit 2) or NotFound (3)."""
    _check_chars(text)
    if "\\" in text or re.match(r"^[A-Za-z]:", text):
        raise InvalidReference(f"invalid model name {text!r}")
    lowered = text.lower()
    for prefix in _HUB_PREFIXES:
        if lowered.startswith(prefix):
            return parse_hub(text[len(prefix):])
    if _looks_like_path(text):
        if not lowered.endswith(".gguf"):
            raise InvalidReference(f"{text!r} is not a .gguf file")
        return LocalRef(Path(text).expanduser())
    if "/" in text:
        if text.startswith("/") or ".." in text.split("/"):
            raise InvalidReference(f"invalid model name {text!r}",
                                   hint="a local model file must end in .gguf")
        return parse_hub(text)
    if not NAME_RE.match(lowered):
        raise InvalidReference(f"invalid model name {text!r}",
                               hint="names look like llama3.2:3b or hf.co/ORG/REPO:Q4_K_M")
    found = _registry_lookup(lowered, registry)
    if found is None:
        close = difflib.get_close_matches(lowered, registry.names, n=3, cutoff=0.6)
        hint = ("did you mean " + ", ".join(close) + "?") if close else (
            "see `llmrun catalog` for known names, or use hf.co/ORG/REPO")
        raise NotFound(f"unknown model {text!r}", hint=hint)
    return found
