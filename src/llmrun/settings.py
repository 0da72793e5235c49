"""Settings from the environment (prefix LLMRUN_). Built once per invocation, never at import."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    api_key: str | None = Field(None, repr=False)
    endpoint: str | None = None
    stall_timeout: float = Field(30.0, gt=0, description="seconds without bytes before retrying")
    retries: int = Field(5, ge=0, description="download retries per file")
    retry_backoff: float = Field(1.0, ge=0, description="first retry delay (s), doubling")

    @property
    def state_dir(self) -> Path:
        return self.home / "state"

    @property
    def user_registry(self) -> Path:
        return self.home / "models.yaml"
