"""`llmrun bench` against llama.cpp's own loop (bench/raw_loop.py), in the same run, rounds
interleaved so that the machine's drift hits both alike; with ``--extra-bufts`` also both with
llama.cpp's extra CPU buffer types off (what the AMX fallback costs where both work).

    python bench/bench_vs_raw.py MODEL [-p 512] [-n 128] [--rounds 5] [--gpu-layers N]
                                 [--extra-bufts] [--label TEXT]

Prints a Markdown table (medians over the rounds, and llmrun / raw) for docs/benchmarks.md.
MODEL is a path to a .gguf (the raw loop needs a file); llmrun is run on the same path.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def llmrun(model: str, p: int, n: int, gpu: int, off: bool) -> dict[str, float]:
    env = {**os.environ, "LLMRUN_CPU_EXTRA_BUFFERS": "off" if off else "auto"}
    out = subprocess.run([sys.executable, "-m", "llmrun", "bench", model, "-p", str(p), "-n",
                          str(n), "-r", "1", "--gpu-layers", str(gpu), "--json"],
                         capture_output=True, text=True, env=env, check=True).stdout
    data = json.loads(out)
    rates = {r["test"][:2]: r["tokens_per_s"]["mean"] for r in data["results"]}
    return {"pp": rates.get("pp", 0.0), "tg": rates.get("tg", 0.0),
            "ttft_ms": data["ttft_s"]["mean"] * 1000}


def raw(model: str, p: int, n: int, gpu: int, off: bool) -> dict[str, float]:
    cmd = [sys.executable, str(HERE / "raw_loop.py"), model, "-p", str(p), "-n", str(n),
           "-r", "1", "--gpu-layers", str(gpu)] + (["--no-extra-bufts"] if off else [])
    data = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    return {"pp": data["pp"][0] if data["pp"] else 0.0, "tg": data["tg"][0] if data["tg"]
            else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--gpu-layers", type=int, default=0)
    ap.add_argument("--extra-bufts", action="store_true",
                    help="also measure with llama.cpp's extra CPU buffer types off")
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    variants = [("llmrun bench", llmrun, False), ("raw llama.cpp loop", raw, False)]
    if a.extra_bufts:
        variants += [("llmrun bench, extra buffers off", llmrun, True),
                     ("raw loop, extra buffers off", raw, True)]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in variants}
    for i in range(a.rounds):
        for name, fn, off in variants:
            runs[name].append(fn(a.model, a.p, a.n, a.gpu_layers, off))
        print(f"round {i + 1}/{a.rounds} done", file=sys.stderr)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    print(f"\n{a.label or Path(a.model).name}: pp{a.p} / tg{a.n}, gpu layers {a.gpu_layers}, "
          f"medians of {a.rounds} interleaved rounds\n")
    print("| | pp tokens/s | tg tokens/s | pp vs raw | tg vs raw |")
    print("|---|---|---|---|---|")
    for name, _, off in variants:
        base = "raw loop, extra buffers off" if off else "raw llama.cpp loop"
        pp, tg = med(name, "pp"), med(name, "tg")
        rel = (f"{pp / med(base, 'pp'):.3f}x | {tg / med(base, 'tg'):.3f}x"
               if name.startswith("llmrun") else "1 | 1")
        print(f"| {name} | {pp:.1f} | {tg:.1f} | {rel} |")
    if a.extra_bufts:
        off, on = "raw loop, extra buffers off", "raw llama.cpp loop"
        print(f"\nextra buffers off / on (raw loop): pp {med(off, 'pp') / med(on, 'pp'):.3f}x,"
              f" tg {med(off, 'tg') / med(on, 'tg'):.3f}x")


if __name__ == "__main__":
    main()
