"""Streaming cost against output length on a byte-heavy model (issue 14's O(N) target).

A random-weight tiny llama whose vocabulary is mostly SentencePiece byte tokens writes long
runs of partial UTF-8, the case where llama-cpp-python's own streaming goes quadratic. This
streams N = 128 and 512 greedy tokens through llmrun's engine (engine/textstream.py) and
through llama-cpp-python's ``create_completion(stream=True)`` in the same process, and prints
seconds and the 512/128 ratio of each, beside llama.cpp's bare decode loop over as many tokens
(whose own ratio is above 4: attention over a longer context costs more per token). The
target is <= 4.5, or the raw loop's ratio where that is higher.

    python bench/bench_stream.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from llmrun import tiny_model
from llmrun.datatypes import LoadOptions, Sampling
from llmrun.engine import Model

PROMPT = "xyz q"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bytes.gguf"
        tiny_model.write(path, ["F16"], shape=tiny_model.Shape(vocab=300, ctx=2048))
        model = Model(path, LoadOptions(n_ctx=2048))
        tokens = model.tokenize(PROMPT, templated=False)

        def ours(n: int) -> float:
            start = time.perf_counter()
            for _ in model.generate(tokens, Sampling(temperature=0, max_tokens=n)):
                pass
            return time.perf_counter() - start

        def theirs(n: int) -> float:
            start = time.perf_counter()
            for _ in model.llama.create_completion(tokens, max_tokens=n, temperature=0,
                                                   stream=True):
                pass
            return time.perf_counter() - start

        def raw(n: int) -> float:  # llama_decode one token at a time, nothing else
            return model.bench_decode(tokens + [3 + i % 256 for i in range(n)], 1)

        print("| path | 128 tokens (s) | 512 tokens (s) | 512/128 |")
        print("|---|---|---|---|")
        for name, run in (("raw llama.cpp decode loop", raw), ("llmrun engine", ours),
                          ("llama-cpp-python stream", theirs)):
            short = statistics.median(run(128) for _ in range(args.runs))
            long = statistics.median(run(512) for _ in range(args.runs))
            print(f"| {name} | {short:.3f} | {long:.3f} | {long / short:.1f}x |")
        model.close()


if __name__ == "__main__":
    main()
