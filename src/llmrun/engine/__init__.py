"""The engine: the only package that imports llama_cpp (model.py: the Model; native.py: the
native helpers and the self-test's work). Names are re-exported here, as the rest of llmrun
and its tests import them."""

from __future__ import annotations

from ..datatypes import LoadOptions, Result, Sampling
from .model import DEFAULT_CTX, PREFILL_PIECE, Model
from .native import (
    _route_llama_logs,
    build_info,
    devices,
    gpu_offload_supported,
    physical_cores,
    preload_library,
    probe,
    system_info,
)

__all__ = ["DEFAULT_CTX", "PREFILL_PIECE", "LoadOptions", "Model", "Result", "Sampling",
           "_route_llama_logs", "build_info", "devices", "gpu_offload_supported",
           "physical_cores", "preload_library", "probe", "system_info"]
