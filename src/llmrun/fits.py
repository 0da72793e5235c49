"""Which registry models fit this machine (`llmrun catalog --fits`): llmrun's own memory
estimate (memory.py: weights + KV cache at the context `run` would use), from each model's
GGUF header. The header comes from the pulled file, else from a copy kept in llmrun's state,
else from the Hub by Range requests (the first megabytes, not the weights)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import memory
from .gguf_info import GGUFInfo
from .store import atomic_write_text

if TYPE_CHECKING:
    from .registry import Entry
    from .settings import Settings
    from .store import Store

DEFAULT_CTX = 4096  # engine.model's default (not imported: that loads llama.cpp)
log = logging.getLogger("llmrun")


@dataclass(frozen=True)
class Fit:
    weights: int | None  # bytes of the quant's files
    ctx: int | None  # the context `run` would use here (the entry's, halved to fit)
    need: int | None  # bytes resident at that context: weights + KV cache
    fits_ram: bool | None  # None: not known (no header, or memory unknown)
    fits_vram: bool | None  # all layers offloaded; None without a GPU build
    header: str  # where the header came from: pulled, cached, hub; "" when unknown


def _kept(info: GGUFInfo) -> dict[str, Any]:
    """What the estimate reads from a header: the architecture's own keys, not the vocabulary
    or the chat template."""
    arch = info.architecture or ""
    meta = {k: v for k, v in info.metadata.items()
            if k == "general.architecture" or (arch and k.startswith(f"{arch}."))}
    return {"file_size": info.file_size, "version": info.version, "metadata": meta,
            "array_lengths": dict(info.array_lengths)}


def _from_kept(data: Mapping[str, Any], name: str) -> GGUFInfo:
    return GGUFInfo(path=Path(name), file_size=int(data["file_size"]),
                    version=int(data["version"]), n_tensors=0, metadata=data["metadata"],
                    array_lengths=data["array_lengths"])


class Headers:
    """GGUF headers of registry files, kept in ``state/headers`` (a few KB each)."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings, self.store = settings, store
        self.dir = settings.state_dir / "headers"

    def _file(self, entry: Entry, quant: str) -> Path:
        first = entry.quants[quant].files[0]
        key = first.sha256 or f"{entry.repo}@{entry.revision or 'main'}/{first.path}"
        return self.dir / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"

    def get(self, name: str, entry: Entry, quant: str, *, online: bool
            ) -> tuple[GGUFInfo | None, str]:
        pulled = self.store.get(name)
        if pulled is not None and pulled.quant == quant and pulled.files:
            from .gguf_file import read_info

            try:
                return read_info(pulled.model_path), "pulled"
            except Exception as exc:  # a damaged pull: `verify` says so
                log.debug("header of pulled %s unreadable: %s", name, exc)
        path = self._file(entry, quant)
        try:
            return _from_kept(json.loads(path.read_text(encoding="utf-8")), name), "cached"
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if not online:
            return None, ""
        info = self._fetch(entry, quant)
        if info is None:
            return None, ""
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(_kept(info)))
        return info, "hub"

    def _fetch(self, entry: Entry, quant: str) -> GGUFInfo | None:
        from . import hub, remote_header

        first = entry.quants[quant].files[0]
        if first.package is not None or first.size is None:
            return None  # a pip package's file, or no exact size to read ranges of
        try:
            url = hub.url(entry.repo, first.path, entry.revision or "main")
            return remote_header.read(hub.http(self.settings.stall_timeout), url, first.size,
                                      f"hf.co/{entry.repo}/{first.path}")
        except Exception as exc:  # offline, gated, gone: that row is unknown
            log.debug("header of %s/%s not read: %s", entry.repo, first.path, exc)
            return None


def assess(entry: Entry, quant: str, info: GGUFInfo | None, *, available: int | None,
           vram: int | None, source: str = "") -> Fit:
    """The context `run` would pick for ``entry`` here and what it would need at it."""
    weights = entry.quants[quant].size
    if info is None:
        # no header: only the weights are known, a lower bound
        too_big = weights is not None and available is not None and weights > available
        return Fit(weights, None, None, False if too_big else None, None, "")
    weights = weights or info.file_size
    trained = info.context_length or DEFAULT_CTX
    preferred = min(entry.ctx or DEFAULT_CTX, trained)
    ctx = memory.affordable_ctx(info, preferred, weights=weights, n_batch=memory.DEFAULT_BATCH,
                                floor=DEFAULT_CTX, available=available, limit=None)
    need = memory.estimate(info, ctx, weights=weights).resident
    return Fit(weights, ctx, need, None if available is None else need <= available,
               None if vram is None else need <= vram, source)


def bench_path(settings: Settings, name: str) -> Path:
    from urllib.parse import quote

    return settings.state_dir / "bench" / f"{quote(name, safe='')}.json"


def measured(settings: Settings, name: str) -> dict[str, float]:
    """The last `llmrun bench NAME` on this machine: {"pp512": t/s, "tg128": t/s, ...}."""
    try:
        data = json.loads(bench_path(settings, name).read_text(encoding="utf-8"))
        return {r["test"]: float(r["tokens_per_s"]["mean"]) for r in data["results"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def gpu_memory() -> int | None:
    """Free memory of the first NVIDIA GPU when this llama.cpp build can offload to it; None
    otherwise (a CPU build, no nvidia-smi, or Metal's unified memory, which RAM covers)."""
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return None
    from .engine.native import gpu_offload_supported

    if not gpu_offload_supported():
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,"
                              "nounits"], capture_output=True, text=True, timeout=10).stdout
        return int(out.split()[0]) << 20
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None
