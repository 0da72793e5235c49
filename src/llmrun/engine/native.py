"""The engine's native side, apart from the Model: llama.cpp's log routed to llmrun's logger,
loading a library before llama.cpp's own, llama.cpp's extra CPU buffer types switched off, the
build's devices and system info, and the engine self-test's work (native_probe.py runs it in a
child). With model.py, the only code that imports llama_cpp."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import ModelError

_log_callback: Any = None  # keep the ctypes callback alive
_preloaded: set[str] = set()
_params_lock = threading.Lock()  # llama_model_default_params is patched while a Llama loads
log = logging.getLogger("llmrun")


def _route_llama_logs(debug: bool) -> None:
    """Send llama.cpp's log lines to llmrun's logger instead of the user's stderr."""
    global _log_callback
    import llama_cpp

    if _log_callback is not None:
        return

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def _cb(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        if debug:  # LLMRUN_DEBUG=1 or -v: llama.cpp's own log on stderr, as it prints it
            sys.stderr.write(text.decode("utf-8", "replace"))

    _log_callback = _cb
    llama_cpp.llama_log_set(_cb, ctypes.c_void_p(0))


def _fixed_mmap_threshold() -> None:
    """Keep glibc from moving llama-cpp-python's per-token, vocabulary-sized arrays (~1 MiB
    each for a 262k vocabulary) into the heap, where freeing them fragments it: a long chat or
    a busy server grew by ~200 MiB over its first ~80 requests before levelling off. A fixed
    threshold keeps them mmapped (one mmap/munmap per token, microseconds)."""
    if sys.platform != "linux" or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD: glibc's default, but fixed
    except (OSError, AttributeError):  # not glibc (musl): nothing to tune
        pass


def preload_library(path: str) -> None:
    """Load a shared library with global symbols before llama.cpp's own, as LD_PRELOAD would
    (native_check.py finds when a build needs it). Must run before llama_cpp is imported."""
    if path in _preloaded:
        return
    if "llama_cpp" in sys.modules:
        raise ModelError(f"cannot load {path} before llama.cpp: it is loaded already",
                         hint=f"start llmrun with LD_PRELOAD={path}")
    try:
        ctypes.CDLL(path, mode=getattr(os, "RTLD_GLOBAL", 0))
    except OSError as exc:
        raise ModelError(f"cannot load {path}: {exc}") from None
    _preloaded.add(path)


@contextlib.contextmanager
def _model_params(extra_bufts: bool) -> Iterator[None]:
    """While a Llama is built: llama.cpp's extra CPU buffer types (repacked and AMX weights)
    off when asked. llama-cpp-python has no argument for ``use_extra_bufts``; its Llama takes
    the defaults from ``llama_cpp.llama_cpp.llama_model_default_params()``, patched here."""
    import llama_cpp.llama_cpp as native

    with _params_lock:
        if extra_bufts:
            yield
            return
        original = native.llama_model_default_params

        def without_extra_bufts() -> Any:
            params = original()
            params.use_extra_bufts = False
            return params

        native.llama_model_default_params = without_extra_bufts
        try:
            yield
        finally:
            native.llama_model_default_params = original


def devices() -> list[dict[str, Any]]:
    """ggml's backend devices (CPU, GPUs) with their memory, through the backend registry that
    libllama links (llama-cpp-python binds none of it)."""
    import llama_cpp.llama_cpp as native

    lib: Any = native._lib
    try:
        lib.ggml_backend_dev_count.restype = ctypes.c_size_t
        lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
        lib.ggml_backend_dev_get.restype = ctypes.c_void_p
        for fn in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
            getattr(lib, fn).argtypes = [ctypes.c_void_p]
            getattr(lib, fn).restype = ctypes.c_char_p
        lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_dev_type.restype = ctypes.c_int
        lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                                ctypes.POINTER(ctypes.c_size_t)]
        lib.ggml_backend_dev_memory.restype = None
    except AttributeError:  # a build that does not export them
        return []
    kinds = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}
    found = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        found.append({"name": (lib.ggml_backend_dev_name(dev) or b"").decode(errors="replace"),
                      "description": (lib.ggml_backend_dev_description(dev) or b"").decode(
                          errors="replace"),
                      "type": kinds.get(lib.ggml_backend_dev_type(dev), "other"),
                      "memory_free": int(free.value), "memory_total": int(total.value)})
    return found


def system_info() -> str:
    import llama_cpp

    return bytes(llama_cpp.llama_print_system_info()).decode("utf-8", "replace").strip()


def build_info() -> dict[str, Any]:
    """What the installed llama-cpp-python build is and sees: offload support, llama.cpp's
    system info (CPU features, backends) and ggml's devices with their memory."""
    import llama_cpp

    return {"llama_cpp_python": getattr(llama_cpp, "__version__", None),
            "offload": gpu_offload_supported(), "system_info": system_info(),
            "devices": devices()}


def probe(model_path: str, *, extra_bufts: bool, gpu_layers: int, threads: int | None,
          flash_attn: bool | None, after_load: Callable[[], None] | None = None
          ) -> dict[str, Any]:
    """The engine self-test's work (run by native_probe.py in a child): load a model as Model
    does, evaluate a 41-token prompt in one batch and decode 4 tokens one by one."""
    _route_llama_logs(False)
    _fixed_mmap_threshold()
    import llama_cpp
    import numpy as np

    offload = gpu_offload_supported()
    n_threads = threads or physical_cores()
    with _model_params(extra_bufts):
        llama = llama_cpp.Llama(
            model_path=model_path, n_ctx=256, n_batch=64, n_gpu_layers=gpu_layers if offload
            else 0, n_threads=n_threads, n_threads_batch=n_threads,
            flash_attn=flash_attn if flash_attn is not None else True, verbose=False)
    if after_load is not None:
        after_load()
    n_vocab = llama.n_vocab()
    llama.eval([llama.token_bos()] + [3 + i % (n_vocab - 3) for i in range(40)])
    for i in range(4):
        llama.eval([3 + (7 * i) % (n_vocab - 3)])
    llama_cpp.llama_synchronize(llama.ctx)
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(llama.ctx), shape=(n_vocab,))
    finite = bool(np.isfinite(logits).all())
    report = {**build_info(), "gpu_layers": gpu_layers if offload else 0, "finite": finite}
    llama.close()
    return report


def gpu_offload_supported() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def physical_cores() -> int:
    try:
        import psutil

        return int(psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    except Exception:  # pragma: no cover
        return os.cpu_count() or 1
