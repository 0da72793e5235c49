"""``GGUFInfo``: what a validated GGUF header says, as typed properties (architecture, context
length, attention shape, quant label, split position). gguf_file.read_info builds it; nothing
here reads a file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import gguf

Scalar = int | float | bool | str
MetaValue = Scalar | list[Scalar]

_FILE_TYPES = {
    int(t): "F32" if t.name == "ALL_F32" else t.name.removeprefix("MOSTLY_")
    for t in gguf.LlamaFileType
    if t.name != "GUESSED"
}


@dataclass(frozen=True)
class GGUFInfo:
    """What a validated GGUF header says. ``metadata`` holds scalars, arrays of at most
    ``SMALL_ARRAY`` elements (per-layer attention head counts: ``MAX_BLOCK_COUNT``) and strings
    up to ``MAX_KEPT_STRING`` bytes; ``array_lengths`` has the length of every array
    (``tokenizer.ggml.tokens`` is never kept)."""

    path: Path
    file_size: int
    version: int
    n_tensors: int
    metadata: Mapping[str, MetaValue]
    array_lengths: Mapping[str, int] = field(default_factory=dict)
    parameter_count: int = 0  # sum of tensor element counts (of this file/shard)
    tensor_types: Mapping[str, int] = field(default_factory=dict)  # ggml type -> elements
    alignment: int = 32
    data_offset: int = 0
    bos_token: str | None = None
    eos_token: str | None = None
    # ggml type -> (file offset, bytes) of the first matrix of that type: what the engine
    # self-test copies blocks from to exercise the same kernels (native_check.py)
    matrix_samples: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    def _str(self, key: str) -> str | None:
        v = self.metadata.get(key)
        return v if isinstance(v, str) else None

    def _int(self, key: str) -> int | None:
        v = self.metadata.get(key)
        return v if type(v) is int else None

    @property
    def architecture(self) -> str | None:
        return self._str("general.architecture")

    @property
    def name(self) -> str | None:
        return self._str("general.name")

    @property
    def license(self) -> str | None:
        return self._str("general.license")

    @property
    def chat_template(self) -> str | None:
        return self._str("tokenizer.chat_template")

    def _arch_int(self, suffix: str) -> int | None:
        return self._int(f"{self.architecture}.{suffix}") if self.architecture else None

    @property
    def context_length(self) -> int | None:
        return self._arch_int("context_length")

    @property
    def block_count(self) -> int | None:
        return self._arch_int("block_count")

    @property
    def embedding_length(self) -> int | None:
        return self._arch_int("embedding_length")

    def _per_layer(self, suffix: str) -> list[int] | None:
        """A per-layer attention number: one value repeated ``block_count`` times, or the
        array as the file gives it (its length and range were checked by read_info)."""
        value = self.metadata.get(f"{self.architecture}{suffix}") if self.architecture else None
        if isinstance(value, list):
            return [v for v in value if type(v) is int]
        if type(value) is not int:
            return None
        return [value] * (self.block_count or 1)

    @property
    def head_count(self) -> list[int] | None:
        """``attention.head_count`` for each layer."""
        return self._per_layer(".attention.head_count")

    @property
    def head_count_kv(self) -> list[int] | None:
        """``attention.head_count_kv`` for each layer; llama.cpp's default is head_count."""
        return self._per_layer(".attention.head_count_kv") or self.head_count

    @property
    def key_length(self) -> int | None:
        """Per-head key length; llama.cpp's default is embedding_length / head_count."""
        return self._arch_int("attention.key_length") or self._head_dim()

    @property
    def value_length(self) -> int | None:
        """Per-head value length; llama.cpp's default is embedding_length / head_count."""
        return self._arch_int("attention.value_length") or self._head_dim()

    def _head_dim(self) -> int | None:
        heads, embd = self.head_count, self.embedding_length
        return embd // heads[0] if heads and heads[0] and embd else None

    @property
    def file_type(self) -> str | None:
        """A quant label such as ``Q4_K_M``: from ``general.file_type``, else the ggml type
        that holds the most elements."""
        ft = self._int("general.file_type")
        label = _FILE_TYPES.get(ft) if ft is not None else None
        if label is not None:
            return label
        if not self.tensor_types:
            return None
        return max(self.tensor_types.items(), key=lambda kv: kv[1])[0]

    @property
    def split_count(self) -> int:
        """``split.count``; 0 when the model is not split."""
        return self._int("split.count") or 0

    @property
    def split_no(self) -> int:
        return self._int("split.no") or 0
