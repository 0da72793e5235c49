"""Embeddings apart from the engine: which pooling a model gets, how large its embedding context
is, the registry's task prefixes and Matryoshka sizes, normalization, and the formats vectors
leave in (JSON lines, raw float32, base64). engine/embed.py computes the vectors; `llmrun embed`
and serve's /v1/embeddings share the rules here. Imports nothing native."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import ModelError, UsageError

if TYPE_CHECKING:
    from .gguf_info import GGUFInfo
    from .registry import Entry

# llama.cpp's enum llama_pooling_type
POOLING_CODES = {"none": 0, "mean": 1, "cls": 2, "last": 3, "rank": 4}
POOLING_NAMES = {code: name for name, code in POOLING_CODES.items()}
ENCODER_DECODER = frozenset({"t5"})  # llama.cpp computes no embeddings for these
TASKS = ("query", "document")
MAX_DEFAULT_CTX = 2048
# llama.cpp's embedding mode still writes every token's vocabulary-sized logits: a batch of
# n tokens holds n * n_vocab floats, twice (a 262k vocabulary: 1 MiB per token)
OUTPUT_BUDGET = 512 << 20
PACK = 512  # tokens per llama_decode: short texts are packed together up to this


@dataclass
class Embedded:
    vectors: np.ndarray  # float32 [n, dim]: as llama.cpp pooled them, or finished
    tokens: int  # input tokens, all texts together (OpenAI's usage.prompt_tokens)


@dataclass(frozen=True)
class EmbedFacts:
    """What a registry entry says about embedding with its model (all optional)."""

    pooling: str | None = None
    dim: int | None = None
    dims: tuple[int, ...] = ()
    normalize: bool | None = None
    query: str = ""
    document: str = ""
    embedding_model: bool = False  # the entry lists the "embedding" capability

    @classmethod
    def of(cls, entry: Entry | None) -> EmbedFacts:
        if entry is None:
            return cls()
        prompts = entry.prompts
        return cls(pooling=entry.pooling, dim=entry.embedding_dim, dims=tuple(entry.dims),
                   normalize=entry.normalize, query=prompts.query if prompts else "",
                   document=prompts.document if prompts else "",
                   embedding_model="embedding" in entry.capabilities)

    def as_dict(self) -> dict[str, object]:
        return {"pooling": self.pooling, "dim": self.dim, "dims": list(self.dims),
                "normalize": self.normalize, "query": self.query, "document": self.document,
                "embedding_model": self.embedding_model}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> EmbedFacts:
        dims = data.get("dims") or []
        assert isinstance(dims, list)
        return cls(**{**data, "dims": tuple(int(d) for d in dims)})  # type: ignore[arg-type]

    @property
    def has_prompts(self) -> bool:
        return bool(self.query or self.document)

    def prefix(self, task: str | None) -> str:
        """The text put before each input for ``task`` (query or document); '' for none."""
        if task is None:
            return ""
        if task not in TASKS:
            raise UsageError(f"unknown task {task!r}", hint="use --task query or --task document")
        return self.query if task == "query" else self.document

    def normalizes(self, asked: bool | None) -> bool:
        """Whether vectors are L2-normalized: as asked, else the registry's word, else yes
        (as llama.cpp's tools, Ollama and OpenAI do)."""
        if asked is not None:
            return asked
        return True if self.normalize is None else self.normalize


def gguf_pooling(info: GGUFInfo) -> int | None:
    """``{arch}.pooling_type`` from the GGUF header, when it is there."""
    value = info.metadata.get(f"{info.architecture}.pooling_type")
    return value if type(value) is int else None


def choose_pooling(info: GGUFInfo, facts: EmbedFacts, name: str) -> tuple[str, str | None]:
    """(pooling, a note for the user or None): the GGUF's own, else the registry's, else mean
    (a generative model used as an embedder). Raises ModelError for a model that cannot embed
    (a reranker; an encoder-decoder model)."""
    arch = info.architecture or "?"
    if arch in ENCODER_DECODER:
        raise ModelError(f"{name} cannot embed: it is an encoder-decoder model ({arch}), and "
                         "llama.cpp computes embeddings only with encoder-only or decoder-only "
                         "models")
    code = gguf_pooling(info)
    if code == POOLING_CODES["rank"]:
        raise ModelError(f"{name} cannot embed: it is a reranker (pooling 'rank' in its GGUF): "
                         "it scores query-document pairs instead")
    if code in (1, 2, 3):
        return POOLING_NAMES[code], None
    if code not in (None, 0):
        raise ModelError(f"{name} cannot embed: unknown pooling type {code} in its GGUF")
    if facts.pooling is not None:
        return facts.pooling, None
    what = "an embedding model" if facts.embedding_model else f"a generative model ({arch})"
    return "mean", (f"{name} is {what} whose GGUF names no pooling: its vectors are the mean of "
                    "its last hidden states")


def default_ctx(trained: int | None, n_vocab: int | None) -> int:
    """The embedding context when --ctx is not given: the longest input, in tokens. At most
    MAX_DEFAULT_CTX and the trained context; smaller for large vocabularies (llama.cpp writes
    every token's logits in embedding mode), never below 512 or the trained context."""
    ctx = min(trained or MAX_DEFAULT_CTX, MAX_DEFAULT_CTX)
    if n_vocab:
        fit = 512
        while fit * 2 * n_vocab * 4 <= OUTPUT_BUDGET:
            fit *= 2
        ctx = min(ctx, fit)
    return max(min(512, trained or 512), ctx)


def check_dims(dims: int | None, dim: int | None, facts: EmbedFacts, name: str) -> int | None:
    """The size vectors are cut to (None: left whole): a Matryoshka size the registry lists
    for the model, below its full size ``dim``. With ``dim`` None (not loaded yet), only what
    can be refused already is refused."""
    full = dim if dim is not None else facts.dim
    if dims is None or dims == full:
        return None
    if dims in facts.dims and (dim is None or dims < dim):
        return dims if dim is not None else None
    if facts.dims:
        sizes = ", ".join(str(d) for d in sorted({*facts.dims, *([full] if full else [])},
                                                   reverse=True))
        raise UsageError(f"{name} cannot give vectors of {dims} dimensions: its sizes are "
                         f"{sizes}")
    has = f"its vectors have {full}, and " if full else ""
    raise UsageError(f"{name} cannot give vectors of {dims} dimensions: {has}its registry entry "
                     "lists no Matryoshka sizes to cut them to")


def finish(vectors: np.ndarray, *, normalize: bool, dims: int | None) -> np.ndarray:
    """Cut to ``dims`` (Matryoshka), then L2-normalize (in float64): float32 rows."""
    out = vectors[:, :dims] if dims is not None else vectors
    if not normalize:
        return np.ascontiguousarray(out, dtype=np.float32)
    wide = out.astype(np.float64)
    norms = np.sqrt(np.sum(wide * wide, axis=1, keepdims=True))
    norms[norms == 0] = 1.0  # a zero vector stays zero
    return np.asarray(wide / norms, dtype=np.float32)


def json_line(index: int, vector: np.ndarray) -> str:
    """``{"index": i, "embedding": [...]}``: each float32 written as the double it is exactly,
    so reading it back as float32 gives the same bits."""
    return json.dumps({"index": index, "embedding": vector.astype(np.float64).tolist()}) + "\n"


def raw_bytes(vectors: np.ndarray) -> bytes:
    """Rows of float32, little-endian, no header: ``numpy.frombuffer(data, "<f4")``."""
    return np.ascontiguousarray(vectors, dtype="<f4").tobytes()


def b64(vector: np.ndarray) -> str:
    """OpenAI's ``encoding_format: base64``: the float32 little-endian bytes, base64."""
    return base64.b64encode(raw_bytes(vector)).decode("ascii")


def from_b64(text: str, rows: int) -> np.ndarray:
    flat = np.frombuffer(base64.b64decode(text), dtype="<f4")
    return np.reshape(flat, (rows, -1))
