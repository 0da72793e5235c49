"""A tiny llama that llmrun writes itself: two (or more) layers of 512, a 512-token byte
vocabulary, and one matrix per weight of the types asked for, so that a decode runs the same
ggml kernels as a real model of those types (native_check.py's engine self-test).

Matrices of a type the source model holds are filled with that model's own blocks (copied from
its first matrix of the type, repeated as needed), so K-quants and the other types that gguf-py
cannot quantize are real data with sane scales; other quantized types are random weights
quantized by gguf-py; F32/F16/BF16 are random. Every shape is a multiple of 256 wide, and the
output width a multiple of 32, as llama.cpp's repacked and AMX kernels require.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

EMBD, FF, VOCAB, HEADS = 512, 1024, 512, 8
_PER_LAYER = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
FLOAT_TYPES = ("F32", "F16", "BF16")


def can_write(qtype: str, samples: Mapping[str, tuple[int, int]]) -> bool:
    """Whether a matrix of ``qtype`` can be written: from the source's own blocks, as floats,
    or quantized by gguf-py."""
    if qtype in samples or qtype in FLOAT_TYPES:
        return True
    try:
        gguf.quants.quantize(np.zeros((1, 256), dtype=np.float32),
                             gguf.GGMLQuantizationType[qtype])
    except (KeyError, NotImplementedError, ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class Shape:
    """A llama's dimensions (the defaults: the self-test's tiny model; bench/ writes a 1.1B
    one with TinyLlama's shape)."""

    embd: int = EMBD
    ff: int = FF
    vocab: int = VOCAB
    heads: int = HEADS
    kv_heads: int = HEADS
    layers: int = 2
    ctx: int = 256

    def matrix(self, role: str) -> tuple[int, int]:
        """(rows, columns) of a weight matrix: rows are outputs."""
        kv = self.embd // self.heads * self.kv_heads
        return {"ffn_gate": (self.ff, self.embd), "ffn_up": (self.ff, self.embd),
                "ffn_down": (self.embd, self.ff), "attn_k": (kv, self.embd),
                "attn_v": (kv, self.embd), "output": (self.vocab, self.embd)}.get(
                    role, (self.embd, self.embd))


TINYLLAMA_1B = Shape(embd=2048, ff=5632, vocab=32000, heads=32, kv_heads=4, layers=22, ctx=2048)


def _matrix(qtype: str, rows: int, cols: int, rng: np.random.Generator,
            source: Path | None, samples: Mapping[str, tuple[int, int]]) -> tuple[np.ndarray,
                                                                                  int | None]:
    """(array, raw ggml type or None) for GGUFWriter.add_tensor."""
    values = (rng.random((rows, cols), dtype=np.float32) - 0.5) * 0.06
    if qtype == "F32":
        return values, None
    if qtype == "F16":
        return values.astype(np.float16), None
    gtype = gguf.GGMLQuantizationType[qtype]
    block, type_size = gguf.GGML_QUANT_SIZES[gtype]
    row_bytes = cols // block * type_size
    if qtype in samples and source is not None:
        offset, nbytes = samples[qtype]
        want = min(nbytes, rows * row_bytes)
        with open(source, "rb") as f:
            f.seek(offset)
            data = np.frombuffer(f.read(want - want % type_size), dtype=np.uint8)
        if data.size == 0:
            raise ValueError(f"no {qtype} blocks could be read from {source}")
        return np.resize(data, rows * row_bytes).reshape(rows, row_bytes), int(gtype)
    return gguf.quants.quantize(values, gtype), int(gtype)


def write(path: Path, types: Sequence[str], *, source: Path | None = None,
          samples: Mapping[str, tuple[int, int]] | None = None, seed: int = 0,
          shape: Shape = Shape()) -> None:
    """Write a loadable llama to ``path`` whose weight matrices use each of ``types`` at least
    once (in turn; more layers when there are more types than matrices)."""
    samples = samples or {}
    kinds = list(dict.fromkeys(types)) or ["F32"]
    layers = max(shape.layers, math.ceil((len(kinds) - 1) / len(_PER_LAYER)))
    roles = [f"blk.{i}.{r}" for i in range(layers) for r in _PER_LAYER] + ["output"]
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("llmrun random-weight llama")
    w.add_context_length(shape.ctx)
    w.add_embedding_length(shape.embd)
    w.add_block_count(layers)
    w.add_feed_forward_length(shape.ff)
    w.add_head_count(shape.heads)
    w.add_head_count_kv(shape.kv_heads)
    w.add_rope_dimension_count(shape.embd // shape.heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    n_filler = shape.vocab - 259
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    w.add_token_list(tokens + [f"\u2581w{i}" for i in range(n_filler)])
    w.add_token_scores([0.0] * 3 + [-1000.0] * 256 + [-float(i) for i in range(n_filler)])
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * n_filler)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    ones = np.ones(shape.embd, dtype=np.float32)
    embd = (rng.random((shape.vocab, shape.embd), dtype=np.float32) - 0.5) * 0.06
    w.add_tensor("token_embd.weight", embd.astype(np.float16) if kinds == ["F16"] else embd)
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", ones)
    w.add_tensor("output_norm.weight", ones)
    for n, role in enumerate(roles):
        qtype = kinds[n % len(kinds)]
        rows, cols = shape.matrix(role.rsplit(".", 1)[-1])
        array, raw = _matrix(qtype, rows, cols, rng, source, samples)
        if raw is None:
            w.add_tensor(f"{role}.weight", array)
        else:
            w.add_tensor(f"{role}.weight", array, raw_dtype=gguf.GGMLQuantizationType(raw))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    """``python -m llmrun.tiny_model OUT.gguf [TYPE ...] [--1b]``: a random-weight llama for
    plumbing and speed tests (never for answers)."""
    import sys

    args = [a for a in sys.argv[1:] if a != "--1b"]
    if not args or any(a.startswith("-") for a in args):  # --help is not a file to write
        print("usage: python -m llmrun.tiny_model OUT.gguf [TYPE ...] [--1b]", file=sys.stderr)
        sys.exit(2)
    write(Path(args[0]), args[1:] or ["F16"],
          shape=TINYLLAMA_1B if "--1b" in sys.argv else Shape())


if __name__ == "__main__":
    main()
