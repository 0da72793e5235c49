"""The data that crosses llmrun's seams: how a model is loaded (LoadOptions), how it samples
(Sampling, and the one rule that layers a user's settings over a model's defaults), and what
a generation produced (Result). Imports nothing native: the CLI, the client, the server and
the engine share these."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty")


@dataclass
class LoadOptions:
    n_ctx: int | None = None  # None: ctx_default if memory allows, else DEFAULT_CTX (<= trained)
    ctx_default: int | None = None  # the registry entry's preferred context
    n_gpu_layers: int | None = None  # None: all when the build can offload, else 0
    n_threads: int | None = None  # None: physical cores
    n_batch: int = 512
    flash_attn: bool | None = None  # None: on, as llama.cpp's "auto" is where supported
    use_mmap: bool = True
    extra_buffers: str = "auto"  # llama.cpp's extra CPU buffer types: auto (self-test), on, off
    state_dir: str | None = None  # where the self-test's result is remembered (None: nowhere)


@dataclass
class Sampling:
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int | None = None  # None: until end of turn or the context is full
    stop: list[str] = field(default_factory=list)
    json_schema: dict[str, Any] | None = None
    json_any: bool = False
    tool_grammar: dict[str, Any] | None = None  # formats.grammar.ToolGrammar.as_dict()
    # a reasoning trace allowed before the JSON answer: "think:open", "think:optional",
    # "harmony:open", "harmony:optional" (formats.grammar.json_after_trace)
    json_trace: str | None = None


@dataclass
class Result:
    text: str = ""  # the answer (for a chat model, its trace and tool calls are apart)
    reasoning: str = ""  # the reasoning trace, when the model wrote one
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # OpenAI's shape
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    load_s: float = 0.0
    prompt_s: float = 0.0
    gen_s: float = 0.0
    prompt_evaluated: int = 0  # tokens actually evaluated (fewer when the KV prefix is reused)
    prompt_from_disk: int = 0  # prompt tokens whose state came from the on-disk prefix cache
    usage_known: bool = True  # False: a remote server did not say (client mode)

    def as_dict(self) -> dict[str, Any]:
        known = self.usage_known
        extra: dict[str, Any] = {}
        if self.reasoning:
            extra["reasoning"] = self.reasoning
        if self.tool_calls:
            extra["tool_calls"] = self.tool_calls
        return {
            "text": self.text, **extra, "finish_reason": self.finish_reason,
            "usage": {"prompt_tokens": self.prompt_tokens if known else None,
                      "completion_tokens": self.completion_tokens if known else None,
                      "total_tokens": self.prompt_tokens + self.completion_tokens if known
                      else None},
            "timings": {"load_s": round(self.load_s, 4), "prompt_s": round(self.prompt_s, 4),
                        "generation_s": round(self.gen_s, 4),
                        "prompt_tokens_evaluated": self.prompt_evaluated,
                        "prompt_tokens_from_cache": self.prompt_from_disk},
        }


def layer_sampling(overrides: Mapping[str, Any], defaults: Mapping[str, Any]) -> Sampling:
    """Sampling for one request: what the user set (``overrides``; None means not set) over the
    model's registry defaults over llmrun's built-ins, for SAMPLING_KEYS. run, chat and serve
    all take their sampling from here; client mode sends the overrides alone."""
    s = Sampling()
    for key in SAMPLING_KEYS:
        value = overrides.get(key)
        if value is None:
            value = defaults.get(key)
        if value is not None:
            setattr(s, key, value)
    return s
