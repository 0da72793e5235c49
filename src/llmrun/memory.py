"""Pre-flight memory check (reliability.md T17): before llama.cpp allocates anything, estimate
what a model needs and compare it with what this process can get.

The estimate has three parts, all read from the GGUF header and the load options:

- weights: the model file (every shard of a split model), which llama.cpp maps;
- KV cache: for every layer, ``n_ctx`` cells of ``n_head_kv * (key_length + value_length)``
  f16 values (2 bytes each); llama.cpp rounds ``n_ctx`` up to a multiple of 256, and
  llama-cpp-python keeps llama.cpp's default of a full-size cache for sliding-window layers,
  so every layer counts in full;
- logits buffers: llama.cpp reserves room for ``n_batch`` rows of ``n_vocab`` f32 logits in
  its compute buffer, and llama-cpp-python allocates the same again as a numpy array.

Weights and KV cache are resident once the model runs; the logits buffers are address space
that is mostly never touched. So:

- weights + KV cache + logits buffers above the address-space limit (``RLIMIT_AS``, soft):
  the load cannot succeed, and is refused before it starts, with ModelError (exit 5) and a
  hint. (Measured: a load that runs out of address space inside llama.cpp may abort the
  process, GGML_ASSERT in ggml_init, instead of failing cleanly; refusing first avoids it.)
- weights + KV cache above the RAM available (``psutil.virtual_memory().available``): a
  one-line warning for the caller to print; the model may still run, slowly.

Both are lower bounds: llama.cpp's other compute buffers, threads and the Python process
come on top, and a native allocation failure that still happens is caught by engine.Model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError
from .gguf_file import TOKENS_KEY
from .gguf_info import GGUFInfo
from .units import human_size

KV_BYTES = 2  # llama.cpp's default cache type is f16 for both K and V
LOGIT_BYTES = 4  # f32
CTX_PAD = 256  # llama.cpp pads n_ctx to a multiple of this
DEFAULT_BATCH = 512
HINT = "try a smaller --ctx or a smaller quant"


@dataclass(frozen=True)
class Estimate:
    weights: int  # bytes of model files
    kv_cache: int  # bytes of the KV cache at n_ctx
    n_ctx: int  # the context asked for (the cache holds it rounded up to CTX_PAD)
    buffers: int = 0  # bytes of logits buffers (address space, mostly untouched)

    @property
    def resident(self) -> int:
        """What stays in RAM while the model runs: weights and KV cache."""
        return self.weights + self.kv_cache

    @property
    def address_space(self) -> int:
        return self.resident + self.buffers

    def describe(self, *, buffers: bool = False) -> str:
        total = self.address_space if buffers else self.resident
        extra = f" + logits buffers {human_size(self.buffers)}" if buffers else ""
        return (f"about {human_size(total)} (weights {human_size(self.weights)} + KV cache "
                f"{human_size(self.kv_cache)} at context {self.n_ctx}{extra})")


def kv_cache_bytes(info: GGUFInfo, n_ctx: int) -> int:
    """Bytes of f16 KV cache llama.cpp allocates for ``n_ctx`` tokens; 0 when the header does
    not say (no layers or no attention heads, e.g. a recurrent model), and for multi-head
    latent attention (DeepSeek), whose much smaller cache this formula would overstate."""
    heads_kv = info.head_count_kv
    mla = f"{info.architecture}.attention.kv_lora_rank" in info.metadata
    if not info.block_count or not heads_kv or mla:
        return 0
    key, value = info.key_length or 0, info.value_length or 0
    per_cell = sum(n * (key + value) for n in heads_kv[: info.block_count]) * KV_BYTES
    cells = -(-max(n_ctx, 1) // CTX_PAD) * CTX_PAD
    return cells * per_cell


def logits_bytes(info: GGUFInfo, n_ctx: int, n_batch: int) -> int:
    """llama.cpp's reserve for a batch of logits plus llama-cpp-python's copy of it (both
    ``min(n_ctx, n_batch)`` rows of ``n_vocab`` f32 values)."""
    n_vocab = info.array_lengths.get(TOKENS_KEY, 0)
    return 2 * min(max(n_ctx, 1), max(n_batch, 1)) * n_vocab * LOGIT_BYTES


def estimate(info: GGUFInfo, n_ctx: int, *, n_batch: int = DEFAULT_BATCH,
             weights: int | None = None) -> Estimate:
    """What loading the model described by ``info`` at ``n_ctx`` needs at the least.
    ``weights`` is the size of all its files (default: ``info.file_size``)."""
    return Estimate(info.file_size if weights is None else weights,
                    kv_cache_bytes(info, n_ctx), n_ctx, logits_bytes(info, n_ctx, n_batch))


def check(est: Estimate, *, limit: int | None, available: int | None,
          name: str) -> str | None:
    """The policy, given what the process can get: raises ModelError when ``est`` cannot fit
    under the address-space ``limit``; returns a warning line when what stays resident is
    more than the ``available`` RAM; None when it fits (or nothing is known)."""
    if limit is not None and est.address_space > limit:
        raise ModelError(f"cannot load {name}: it needs {est.describe(buffers=True)}, the "
                         f"memory limit is {human_size(limit)}", hint=HINT)
    if available is not None and est.resident > available:
        return (f"{name} needs {est.describe()} but only {human_size(available)} of memory is "
                f"available: expect swapping or an out-of-memory kill; {HINT}")
    return None


def address_space_limit() -> int | None:
    """The soft RLIMIT_AS in bytes; None when unlimited or unknown."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY or soft < 0 else int(soft)


def available_memory() -> int | None:
    """RAM available without swapping (psutil's estimate); None when unknown."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # pragma: no cover - psutil unsupported here
        return None


def files_size(info: GGUFInfo, parts: Sequence[Path]) -> int:
    """Bytes of every file of the model: ``info``'s own file when it is not split."""
    if len(parts) <= 1:
        return info.file_size
    total = 0
    for part in parts:
        with contextlib.suppress(OSError):  # a vanished shard: the load reports it
            total += part.stat().st_size
    return total


def affordable_ctx(info: GGUFInfo, preferred: int, *, weights: int, n_batch: int,
                   floor: int, available: int | None, limit: int | None) -> int:
    """``preferred`` (a registry entry's default context, e.g. 16384 for a reasoning model
    whose traces overflow 4096), halved until the estimate fits ``available`` RAM and the
    address-space ``limit`` (None: unknown), and never below ``floor`` (or ``preferred``)."""
    ctx = preferred
    while ctx > floor:
        est = estimate(info, ctx, n_batch=n_batch, weights=weights)
        if (available is None or est.resident <= available) and (
                limit is None or est.address_space <= limit):
            break
        ctx //= 2
    return max(ctx, min(preferred, floor))


def preflight(info: GGUFInfo, n_ctx: int, parts: Sequence[Path], *, n_batch: int = DEFAULT_BATCH,
              name: str) -> str | None:
    """Estimate and check against this process's limits (see ``check``)."""
    est = estimate(info, n_ctx, n_batch=n_batch, weights=files_size(info, parts))
    return check(est, limit=address_space_limit(), available=available_memory(), name=name)
