"""The curated model registry (models.yaml): schema, loading, lookup.

The shipped file sits at the repository root and inside the wheel; a user file at
``$LLMRUN_HOME/models.yaml`` adds entries or replaces whole entries of the same name.
"""

from __future__ import annotations

import re
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import RegistryError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*(:[a-z0-9][a-z0-9._-]*)?$")
REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*(/[A-Za-z0-9][A-Za-z0-9._+-]*)*\.gguf$")
SHA_RE = re.compile(r"^[0-9a-f]{64}$")
ENTRY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PackageSource(_Strict):
    """A pip package that carries the weights (spaCy-style). ``entry`` names a callable
    ``module:function`` that writes the file to the path it is given; ``resource`` names a file
    inside an installed package (``module/sub/path``). Exactly one of the two."""

    name: str = Field(description="the distribution name, for the install hint")
    entry: str | None = None
    resource: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> PackageSource:
        if (self.entry is None) == (self.resource is None):
            raise ValueError("give exactly one of 'entry' or 'resource'")
        if self.entry is not None and not ENTRY_RE.match(self.entry):
            raise ValueError("entry must look like 'module.path:function'")
        return self


class ModelFile(_Strict):
    path: str
    size: int | None = Field(None, gt=0, description="bytes; exact")
    sha256: str | None = None
    package: PackageSource | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not FILE_RE.match(v) or ".." in v.split("/"):
            raise ValueError(f"not a safe .gguf file name: {v!r}")
        return v

    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str | None) -> str | None:
        if v is not None and not SHA_RE.match(v):
            raise ValueError("sha256 must be 64 lower-case hex digits")
        return v


class Quant(_Strict):
    files: list[ModelFile] = Field(min_length=1)

    @property
    def size(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)


class SamplingDefaults(_Strict):
    temperature: float | None = Field(None, ge=0, le=2)  # one range: serve takes 0-2
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    repeat_penalty: float | None = Field(None, gt=0, le=5)


Capability = Literal["thinking", "tools", "vision", "embedding"]
ChatFormat = Literal["gemma", "llama-2", "llama-3", "chatml", "mistral-instruct", "vicuna",
                     "zephyr", "phi-3"]
Pooling = Literal["mean", "cls", "last"]


class EmbedPrompts(_Strict):
    """Prefixes an embedding model's card asks for, by task (`llmrun embed --task`)."""

    query: str = Field("", max_length=1024)
    document: str = Field("", max_length=1024)


class Entry(_Strict):
    title: str
    description: str = ""
    family: str
    params: str = Field(pattern=r"^[0-9.]+[MB](x[0-9.]+[MB])?$")
    license: str
    repo: str
    revision: str | None = Field(None, pattern=r"^[0-9a-f]{40}$")
    context_length: int | None = Field(None, gt=0)
    default_quant: str
    quants: dict[str, Quant] = Field(min_length=1)
    chat_format: ChatFormat | None = Field(
        None, description="template used when the GGUF has none (never the silent llama-2)")
    instruct: bool = True
    capabilities: list[Capability] = Field(
        default_factory=list, description="what the model can do beyond plain chat")
    reasoning: Literal["think", "harmony"] | None = Field(
        None, description="how it writes a reasoning trace (think tags, gpt-oss's harmony)")
    ctx: int | None = Field(None, ge=512, description="default context for run/chat/serve "
                            "(reasoning traces overflow 4096), lowered when memory is short")
    defaults: SamplingDefaults = SamplingDefaults()
    # embedding models (capability "embedding"): llmrun embed and serve's /v1/embeddings
    pooling: Pooling | None = Field(
        None, description="how token vectors become one, when the GGUF does not say")
    embedding_dim: int | None = Field(None, gt=0, description="the vector's length")
    dims: list[int] = Field(default_factory=list, description="Matryoshka sizes the vector "
                            "may be cut to (--dims, `dimensions`)")
    normalize: bool | None = Field(None, description="L2-normalize vectors (default true)")
    prompts: EmbedPrompts | None = Field(None, description="prefixes by task (--task)")
    mmproj: ModelFile | None = Field(None, description="the vision projector, one file for "
                                     "every quant, pulled with the model (implies 'vision')")
    notes: str = ""

    @field_validator("repo")
    @classmethod
    def _repo(cls, v: str) -> str:
        if not REPO_RE.match(v) or ".." in v:
            raise ValueError(f"not an ORG/REPO name: {v!r}")
        return v

    @model_validator(mode="after")
    def _default_quant_exists(self) -> Entry:
        if self.default_quant not in self.quants:
            raise ValueError(f"default_quant {self.default_quant!r} is not among the quants")
        return self

    @model_validator(mode="before")
    @classmethod
    def _mmproj_means_vision(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("mmproj") is not None:
            caps = list(data.get("capabilities") or [])
            if "vision" not in caps:
                data = {**data, "capabilities": [*caps, "vision"]}
        return data

    @model_validator(mode="after")
    def _vision_needs_mmproj(self) -> Entry:
        if "vision" in self.capabilities and self.mmproj is None:
            raise ValueError("an entry with the 'vision' capability must name its mmproj")
        return self

    @model_validator(mode="after")
    def _reasoning_means_thinking(self) -> Entry:
        if self.reasoning is not None and "thinking" not in self.capabilities:
            raise ValueError("an entry with a reasoning format must list the 'thinking' "
                             "capability")
        return self

    @model_validator(mode="after")
    def _embedding_fields(self) -> Entry:
        given = [k for k in ("pooling", "embedding_dim", "normalize", "prompts")
                 if getattr(self, k) is not None] + (["dims"] if self.dims else [])
        if given and "embedding" not in self.capabilities:
            raise ValueError(f"{', '.join(given)}: only for an entry with the 'embedding' "
                             "capability")
        if any(d <= 0 for d in self.dims) or len(set(self.dims)) != len(self.dims):
            raise ValueError("dims must be distinct positive sizes")
        if self.embedding_dim is not None and any(d > self.embedding_dim for d in self.dims):
            raise ValueError(f"dims cannot exceed embedding_dim ({self.embedding_dim})")
        return self

    @property
    def param_count(self) -> float:
        """Parameters as a number (8x7B → 56e9), for sorting and RAM estimates."""
        total = 1.0
        for part in self.params.split("x"):
            total *= float(part[:-1]) * (1e6 if part.endswith("M") else 1e9)
        return total


class RegistryFile(_Strict):
    schema_: int = Field(alias="schema")
    aliases: dict[str, str] = {}
    models: dict[str, Entry] = {}

    @field_validator("models", "aliases")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = [k for k in v if not NAME_RE.match(k)]
        if bad:
            raise ValueError(f"invalid model names: {', '.join(map(repr, bad))}")
        return v


def _format_validation(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: {len(exc.errors())} problem(s)"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        lines.append(f"  {loc}: {err['msg']}")
    return "\n".join(lines)


def parse_registry(text: str, source: str) -> RegistryFile:
    """Parse and validate one registry file; a bad file raises one line per bad field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RegistryError(f"{source}: not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise RegistryError(f"{source}: expected a mapping with 'schema' and 'models'")
    try:
        return RegistryFile.model_validate(data)
    except ValidationError as exc:
        raise RegistryError(_format_validation(source, exc)) from None


def shipped_text() -> str:
    return resources.files("llmrun").joinpath("models.yaml").read_text(encoding="utf-8")


class Registry:
    """The merged registry: shipped entries overlaid by the user's file, if any."""

    def __init__(self, files: list[RegistryFile]) -> None:
        self.models: dict[str, Entry] = {}
        self.aliases: dict[str, str] = {}
        for f in files:
            self.models.update(f.models)
            self.aliases.update(f.aliases)
        dangling = {a: t for a, t in self.aliases.items() if t not in self.models}
        if dangling:
            a, t = next(iter(dangling.items()))
            raise RegistryError(f"registry alias {a!r} points at unknown model {t!r}")

    @classmethod
    def load(cls, user_file: Path | None = None) -> Registry:
        files = [parse_registry(shipped_text(), "models.yaml (shipped)")]
        if user_file is not None and user_file.is_file():
            files.append(parse_registry(user_file.read_text(encoding="utf-8"), str(user_file)))
        return cls(files)

    @cached_property
    def names(self) -> list[str]:
        return sorted(set(self.models) | set(self.aliases))

    def get(self, name: str) -> tuple[str, Entry] | None:
        """Look a name up case-insensitively; aliases resolve to their target."""
        key = name.lower()
        key = self.aliases.get(key, key)
        entry = self.models.get(key)
        return (key, entry) if entry is not None else None

    def by_repo_file(self, repo: str, path: str) -> tuple[str, Entry] | None:
        for name, entry in self.models.items():
            if entry.repo.lower() == repo.lower() and any(
                f.path == path for q in entry.quants.values() for f in q.files
            ):
                return name, entry
        return None
