"""llmrun benchmarks on the real Gemma 3 270M model; writes docs/benchmarks.md.

    python bench/run_bench.py [--rounds 3]

Compares, in one run on the same model and threads:
1. generation and prompt-processing tokens/s of `llmrun run` against a raw loop over the
   low-level llama_cpp API (llama_decode + greedy argmax)       target >= 0.97x
2. chat: time to first token at turn 10 vs turn 1 (KV reuse)    target <= 1.2x
3. `--each-line` with 20 prompts vs 20 separate `llmrun run`      target >= 5x faster
Timings on a shared 2-core machine are noisy: each figure is the median of --rounds runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = "gemma3:270m-base"
PROMPT = " ".join(f"Sentence {i} says that the weather is fine today." for i in range(24))
GEN_TOKENS = 128

RAW_LOOP = r"""
import json, sys, time, ctypes
import llama_cpp
from llmrun.engine import _route_llama_logs, physical_cores
_route_llama_logs(False)
path, prompt, n_gen = sys.argv[1], sys.argv[2], int(sys.argv[3])
threads = physical_cores()
mparams = llama_cpp.llama_model_default_params()
model = llama_cpp.llama_model_load_from_file(path.encode(), mparams)
cparams = llama_cpp.llama_context_default_params()
cparams.n_ctx = 4096; cparams.n_batch = 512; cparams.n_threads = threads
cparams.n_threads_batch = threads
ctx = llama_cpp.llama_init_from_model(model, cparams)
vocab = llama_cpp.llama_model_get_vocab(model)
n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
buf = (llama_cpp.llama_token * 8192)()
data = prompt.encode()
n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, 8192, True, False)
tokens = list(buf[:n])
t0 = time.perf_counter()
arr = (llama_cpp.llama_token * n)(*tokens)  # keep a reference while the batch uses it
batch = llama_cpp.llama_batch_get_one(arr, n)
assert llama_cpp.llama_decode(ctx, batch) == 0
t1 = time.perf_counter()
import numpy as np
gen = 0
for _ in range(n_gen):
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
    tok = int(logits.argmax())
    gen += 1
    one = (llama_cpp.llama_token * 1)(tok)
    assert llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(one, 1)) == 0
t2 = time.perf_counter()
print(json.dumps({"prompt_tokens": n, "prompt_s": t1 - t0, "gen_tokens": gen, "gen_s": t2 - t1}))
"""

CHAT_TTFT = r"""
import json, sys, time
from llmrun.engine import LoadOptions, Model, Sampling
from llmrun.session import Session
path = sys.argv[1]
model = Model(__import__("pathlib").Path(path), LoadOptions(), chat_format="gemma")
s = Session(model, Sampling(temperature=0, max_tokens=24), trim=True)
out = []
for turn in range(1, 11):
    start = time.perf_counter()
    t = s.ask(f"Turn {turn}: tell me one short fact about the number {turn}.")
    it = iter(t)
    next(it)
    ttft = time.perf_counter() - start
    for _ in it:
        pass
    out.append({"turn": turn, "ttft_s": ttft, "prompt_tokens": t.result.prompt_tokens,
                "evaluated": t.result.prompt_evaluated})
print(json.dumps(out))
"""


def sh(args: list[str], env: dict[str, str], stdin: str | None = None) -> str:
    proc = subprocess.run(args, env=env, input=stdin, capture_output=True, text=True,
                          check=True)
    return proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="llmrun-bench-"))
    env = {**os.environ, "LLMRUN_HOME": str(tmp / "home"), "HF_HUB_CACHE": str(tmp / "hub")}
    llmrun = [sys.executable, "-m", "llmrun"]
    path = sh([*llmrun, "pull", "-q", MODEL], env).strip()

    ours, raw = [], []
    for _ in range(args.rounds):
        r = json.loads(sh([*llmrun, "run", MODEL, "--raw", "--temperature", "0", "-n",
                           str(GEN_TOKENS), "--json", PROMPT], env))
        ours.append((r["usage"]["prompt_tokens"] / r["timings"]["prompt_s"],
                     (r["usage"]["completion_tokens"] - 1) / r["timings"]["generation_s"]))
        b = json.loads(sh([sys.executable, "-c", RAW_LOOP, path, PROMPT, str(GEN_TOKENS)], env))
        raw.append((b["prompt_tokens"] / b["prompt_s"], b["gen_tokens"] / b["gen_s"]))
    pp_ours, tg_ours = (statistics.median(x[i] for x in ours) for i in (0, 1))
    pp_raw, tg_raw = (statistics.median(x[i] for x in raw) for i in (0, 1))

    chats = [json.loads(sh([sys.executable, "-c", CHAT_TTFT, path], env))
             for _ in range(args.rounds)]
    ttft1 = statistics.median(c[0]["ttft_s"] for c in chats)
    ttft10 = statistics.median(c[9]["ttft_s"] for c in chats)
    evaluated10 = chats[0][9]["evaluated"]
    prompt10 = chats[0][9]["prompt_tokens"]

    prompts = "\n".join(f"Fact number {i} about the sea is" for i in range(20)) + "\n"
    batch_s, separate_s = [], []
    for _ in range(args.rounds):
        t = time.perf_counter()
        sh([*llmrun, "run", MODEL, "--raw", "--temperature", "0", "-n", "8", "--each-line"],
           env, stdin=prompts)
        batch_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        for line in prompts.splitlines():
            sh([*llmrun, "run", MODEL, "--raw", "--temperature", "0", "-n", "8", line], env)
        separate_s.append(time.perf_counter() - t)
    b_s, s_s = statistics.median(batch_s), statistics.median(separate_s)

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    rows = [
        ("prompt processing, tokens/s", f"{pp_ours:.1f}", f"{pp_raw:.1f}",
         f"{pp_ours / pp_raw:.3f}x", ">= 0.97x", verdict(pp_ours / pp_raw >= 0.97)),
        ("generation, tokens/s", f"{tg_ours:.1f}", f"{tg_raw:.1f}", f"{tg_ours / tg_raw:.3f}x",
         ">= 0.97x", verdict(tg_ours / tg_raw >= 0.97)),
        ("chat time to first token, turn 10 vs 1", f"{ttft10 * 1000:.0f} ms",
         f"{ttft1 * 1000:.0f} ms", f"{ttft10 / ttft1:.2f}x", "<= 1.2x",
         verdict(ttft10 / ttft1 <= 1.2)),
        ("20 prompts: --each-line vs 20 processes", f"{b_s:.1f} s", f"{s_s:.1f} s",
         f"{s_s / b_s:.1f}x faster", ">= 5x", verdict(s_s / b_s >= 5)),
    ]
    lines = [
        "# Benchmarks", "",
        "Written by `python bench/run_bench.py` (median of "
        f"{args.rounds} rounds; do not edit by hand). Model: `{MODEL}` (Q4_K_M), "
        f"{GEN_TOKENS} generated tokens, greedy. Machine: {platform.machine()}, "
        f"{os.cpu_count()} logical CPUs, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}.", "",
        "Timings on shared 2-core machines are noisy: compare the ratios, which are measured "
        "within one run, rather than absolute numbers.", "",
        "| measure | llmrun | reference | ratio | target | |",
        "|---|---|---|---|---|---|",
        *[f"| {' | '.join(r)} |" for r in rows], "",
        "Reference: for tokens/s, a raw loop over the low-level llama_cpp API "
        "(`llama_decode` + greedy argmax, same model, threads and context); for chat, turn 1 of "
        "the same conversation; for batches, 20 separate `llmrun run` processes.", "",
        f"KV reuse: at turn 10 the prompt is {prompt10} tokens, of which {evaluated10} were "
        "evaluated; the rest came from the cache kept since turn 9.", "",
        "Generation tokens/s for llmrun counts the tokens after the first, over llama.cpp's "
        "own eval time (the first token's time is part of prompt processing).", "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
