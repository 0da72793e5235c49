"""Settings from the environment (prefix LLMRUN_). Built once per invocation, never at import."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import platformdirs
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import UsageError


def _default_home() -> Path:
    return Path(platformdirs.user_data_dir("llmrun", appauthor=False))


class Settings(BaseSettings):
    """Precedence: command-line flag > LLMRUN_* environment > registry entry > these defaults."""

    model_config = SettingsConfigDict(env_prefix="LLMRUN_", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="llmrun's own state")
    ctx: int | None = Field(None, ge=16, description="context size; default min(4096, trained)")
    gpu_layers: int | None = Field(None, ge=-1, description="-1 = all; default all if offload")
    threads: int | None = Field(None, ge=1, description="default: physical cores")
    flash_attn: bool | None = Field(None, description="flash attention; default on (see "
                                    "docs/benchmarks.md for the trade-off on CPUs)")
    debug: bool = Field(False, description="tracebacks and llama.cpp logs")
    cpu_extra_buffers: Literal["auto", "on", "off"] = Field(
        "auto", description="llama.cpp's extra CPU buffer types (AMX, repacked weights): auto "
        "= on unless the engine self-test crashes with them (docs/install.md)")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    parallel: int = Field(0, ge=0, le=64, description="serve: requests per model decoded "
                          "together; 0 = auto (up to 4 where memory allows; 1 for a model "
                          "served with its vision projector)")
    api_key: str | None = Field(None, repr=False)
    endpoint: str | None = None
    prefix_cache: str = Field("2G", pattern=r"^(?i:0|off|\d+(\.\d+)?\s*[kmgt]?i?b?)$",
                              description="room for prompt prefixes kept on disk across "
                              "runs (0 or off: none)")
    stall_timeout: float = Field(30.0, gt=0, description="seconds without bytes before retrying")
    retries: int = Field(5, ge=0, description="download retries per file")
    retry_backoff: float = Field(1.0, ge=0, description="first retry delay (s), doubling")
    registry_repo: str = Field("llmrun/registry", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/"
                               r"[A-Za-z0-9][A-Za-z0-9._-]*$", description="Hub repo that "
                               "publishes the registry `catalog --refresh` fetches")
    registry_file: str = Field("models.yaml", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*"
                               r"(/[A-Za-z0-9][A-Za-z0-9._-]*)*\.ya?ml$",
                               description="the registry's file in that repo")
    registry_revision: str = Field("main", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
                                   description="branch, tag or commit to fetch it at")

    @property
    def state_dir(self) -> Path:
        return self.home / "state"

    @property
    def user_registry(self) -> Path:
        return self.home / "models.yaml"

    @property
    def refreshed_registry(self) -> Path:
        """What `catalog --refresh` applied: the fetched entries that differ from the shipped
        ones and that llmrun took (registry_update.py)."""
        return self.state_dir / "registry-refreshed.yaml"


@dataclass(frozen=True)
class Remote:
    """Where `run`/`chat` send a conversation instead of loading a model, and why."""

    url: str
    api_key: str | None
    source: str  # "--endpoint", "LLMRUN_ENDPOINT" or "OPENAI_BASE_URL"


OPENAI_HOST = "api.openai.com"


def remote(settings: Settings, endpoint: str | None = None, api_key: str | None = None,
           environ: Mapping[str, str] = os.environ) -> Remote | None:
    """The server to use, or None to run locally. ``endpoint`` and ``api_key`` are the flags.

    llmrun's own settings come first; with none, the OpenAI SDK's ``OPENAI_BASE_URL`` is
    honoured (``LLMRUN_ENDPOINT=`` set empty keeps a run local). ``OPENAI_API_KEY`` is sent
    only where the OpenAI SDK would send it, to ``OPENAI_BASE_URL`` or to OpenAI's own API,
    never to a server named some other way."""
    url, source = endpoint, "--endpoint"
    if not url:
        url, source = settings.endpoint, "LLMRUN_ENDPOINT"
        if url is None:
            url, source = environ.get("OPENAI_BASE_URL") or None, "OPENAI_BASE_URL"
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{source} must be an http(s) URL, got {url!r}",
                         hint="for example --endpoint http://127.0.0.1:8000/v1")
    key = api_key or settings.api_key
    if not key and (source == "OPENAI_BASE_URL" or parts.hostname == OPENAI_HOST):
        key = environ.get("OPENAI_API_KEY") or None
    return Remote(url, key, source)


def size_bytes(text: str) -> int:
    """A size as LLMRUN_PREFIX_CACHE takes it ("2G", "512M", "1.5GiB", "0", "off") in bytes."""
    import re

    text = text.strip().lower()
    if text in ("0", "off"):
        return 0
    found = re.match(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)", text)
    if found is None:
        raise UsageError(f"not a size: {text!r}", hint="for example 2G, 512M or 0")
    scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[found.group(2)]
    return int(float(found.group(1)) * scale)
