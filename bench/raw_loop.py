"""llama.cpp's own pp/tg loop through llama-cpp-python's low-level API, without llmrun: what
`llmrun bench` must agree with (bench/bench_vs_raw.py runs both in the same run).

    python bench/raw_loop.py MODEL [-p 512] [-n 128] [-r 3] [--gpu-layers N] [--threads N]
                             [--ctx N] [--no-extra-bufts]

Prints one JSON line: {"pp": [tokens/s per run], "tg": [...], "load_s": ...}. The loop is
llama-bench's: random tokens from an empty cache, a warm-up first, the prompt in batches of
512, generation one token per decode, timed up to llama_synchronize.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import time

import llama_cpp as lc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("--gpu-layers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--ctx", type=int, default=0)
    ap.add_argument("--no-extra-bufts", action="store_true")
    a = ap.parse_args()

    @lc.llama_log_callback  # type: ignore[misc]
    def quiet(level: int, text: bytes, data: ctypes.c_void_p) -> None:
        pass

    lc.llama_log_set(quiet, ctypes.c_void_p(0))
    lc.llama_backend_init()
    import psutil

    threads = a.threads or psutil.cpu_count(logical=False) or os.cpu_count() or 1
    mp = lc.llama_model_default_params()
    mp.n_gpu_layers = 0x7FFFFFFF if a.gpu_layers == -1 else a.gpu_layers
    mp.use_extra_bufts = not a.no_extra_bufts
    start = time.perf_counter()
    model = lc.llama_model_load_from_file(a.model.encode(), mp)
    assert model, "load failed"
    cp = lc.llama_context_default_params()
    cp.n_ctx = a.ctx or max(a.p + 1, a.n + 1, 512)
    cp.n_batch = cp.n_ubatch = 512
    cp.n_threads = cp.n_threads_batch = threads
    cp.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED
    ctx = lc.llama_init_from_model(model, cp)
    assert ctx, "context failed"
    load_s = time.perf_counter() - start
    n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))
    rng = random.Random(0)
    mem = lc.llama_get_memory(ctx)

    def run(n: int, step: int) -> float:
        lc.llama_memory_clear(mem, True)
        tokens = [rng.randrange(n_vocab) for _ in range(n)]
        arrays = [(lc.llama_token * len(tokens[i:i + step]))(*tokens[i:i + step])
                  for i in range(0, n, step)]
        t0 = time.perf_counter()
        for arr in arrays:
            assert lc.llama_decode(ctx, lc.llama_batch_get_one(arr, len(arr))) == 0
        lc.llama_synchronize(ctx)
        return time.perf_counter() - t0

    run(min(a.p or 16, 32), 512)
    if a.n:
        run(1, 1)
    out = {"pp": [a.p / run(a.p, 512) for _ in range(a.r)] if a.p else [],
           "tg": [a.n / run(a.n, 1) for _ in range(a.r)] if a.n else [],
           "load_s": load_s, "threads": threads}
    print(json.dumps(out))
    lc.llama_free(ctx)
    lc.llama_model_free(model)


if __name__ == "__main__":
    main()
