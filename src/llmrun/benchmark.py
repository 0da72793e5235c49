"""`llmrun bench`: what this machine does with a model, measured the way llama-bench measures
it (random tokens from an empty cache: ``pp`` prompt tokens decoded a batch at a time, ``tg``
tokens decoded one at a time; a warm-up first; mean and standard deviation over repetitions),
plus the time to first token through llmrun's own generation path and the peak memory.
Library code: returns a dict; cli/bench.py prints it."""

from __future__ import annotations

import random
import resource
import statistics
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import Model


def _stats(values: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "runs": [round(v, 4) for v in values]}


def peak_rss() -> int:
    """This process's peak resident memory in bytes (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def run(model: Model, *, pp: int, tg: int, reps: int, seed: int = 0) -> dict[str, Any]:
    """pp/tg tokens per second and time to first token (a ``pp``-token prompt, or 16 tokens
    when pp is 0) over ``reps`` repetitions after one warm-up."""
    from .datatypes import Result, Sampling

    rng = random.Random(seed)
    n_vocab = model.llama.n_vocab()

    def tokens(n: int) -> list[int]:
        return [rng.randrange(n_vocab) for _ in range(n)]

    batch = model.llama.n_batch
    model.bench_decode(tokens(min(pp or 16, 32)), batch)  # warm-up, as llama-bench does
    if tg:
        model.bench_decode(tokens(1), 1)
    results: list[dict[str, Any]] = []
    if pp:
        rates = [pp / model.bench_decode(tokens(pp), batch) for _ in range(reps)]
        results.append({"test": f"pp{pp}", "tokens": pp, "tokens_per_s": _stats(rates)})
    if tg:
        rates = [tg / model.bench_decode(tokens(tg), 1) for _ in range(reps)]
        results.append({"test": f"tg{tg}", "tokens": tg, "tokens_per_s": _stats(rates)})
    first = pp or 16
    ttft = []
    for _ in range(reps):  # through llmrun's generation path: prompt in, one token sampled
        model.clear_cache()
        prompt = tokens(first)
        start = time.perf_counter()
        for _piece in model.generate(prompt, Sampling(temperature=0.0, max_tokens=1), Result()):
            break
        ttft.append(time.perf_counter() - start)
    model.clear_cache()
    from .engine import devices

    gpus = [{"name": d["name"], "description": d["description"],
             "memory_used": d["memory_total"] - d["memory_free"],
             "memory_total": d["memory_total"]} for d in devices() if d["type"] in ("gpu", "igpu")]
    return {"results": results, "ttft_s": {**_stats(ttft), "prompt_tokens": first},
            "peak_rss": peak_rss(), "gpu_memory": gpus}
