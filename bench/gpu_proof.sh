#!/usr/bin/env bash
# The GPU path end to end, on a CUDA machine with no network (docs/benchmarks.md#gpu):
# build llama-cpp-python for CUDA, then `llmrun doctor`, `run --gpu-layers -1`, `serve` (the
# official openai client) and `bench`, and `bench` against llama.cpp's own loop.
#
#   here (network):   bash bench/gpu_prepare.sh          # makes .gpu/ (wheels, slim sdist)
#   there:            bash bench/gpu_proof.sh            # from the repo root, .gpu/ beside it
#
# The model is a random-weight 1.1B llama in F16 (TinyLlama's shape) written on the spot:
# speed and plumbing, never answers. Everything goes to $OUT (or /tmp/gpu-proof).
# Build facts (H200, CUDA 13, 16 cores): ~5.5 min; CMAKE_CUDA_ARCHITECTURES=90 for Hopper.
set -uo pipefail
OUTDIR=${OUT:-/tmp/gpu-proof}
mkdir -p "$OUTDIR"
exec > >(tee -a "$OUTDIR/gpu_proof.log") 2>&1
T0=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - T0 ))s] $*"; }
PY=${PYTHON:-python3}

stamp "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "cpus: $(nproc)"; $PY --version; nvcc --version | tail -2

if [ -z "${SKIP_SETUP:-}" ]; then  # SKIP_SETUP=1: use the llmrun and llama_cpp on the path
stamp "install the wheels"
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .gpu/whl/*.whl || exit 1
if [ ! -f /tmp/llama/llama_cpp/__init__.py ]; then
  stamp "build llama-cpp-python for CUDA"
  rm -rf /tmp/src && mkdir -p /tmp/src && tar -xJf .gpu/llama_cpp_python-*.tar.xz -C /tmp/src
  CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=OFF" \
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    $PY -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/llama \
    /tmp/src/llama_cpp_python-* || { stamp "BUILD FAILED"; exit 1; }
fi
stamp "built"
export PYTHONPATH=/tmp/llama:/tmp/site:$PWD/src
fi
export LLMRUN_HOME=/tmp/proof/home HF_HUB_CACHE=/tmp/proof/hub HF_HUB_OFFLINE=1 NO_COLOR=1
rm -rf /tmp/proof
LLMRUN="$PY -m llmrun"

stamp "doctor (no LD_PRELOAD: what a user gets)"
$LLMRUN doctor --json > "$OUTDIR/doctor.json"; echo "doctor exit: $?"
$PY - "$OUTDIR/doctor.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
print("build:", r["build"]["gpu_offload"], [d["description"] for d in r["build"]["devices"]])
print("self-test:", [(a["config"], a["outcome"]) for a in r["self_test"]["attempts"]],
      r["self_test"].get("with_ld_preload"))
print("problems:", json.dumps(r["problems"], indent=1))
PYEOF

stamp "write a random-weight 1.1B F16 llama"
$PY -m llmrun.tiny_model /tmp/r1b.gguf ${PROOF_MODEL_ARGS:-F16 --1b} && ls -la /tmp/r1b.gguf
cat > /tmp/timings.py <<'PYEOF'
import json, sys
r = json.load(sys.stdin)
t, u = r["timings"], r["usage"]
n = u["completion_tokens"]
print(f"{n} tokens; prompt {t['prompt_s']:.3f}s; generation {t['generation_s']:.3f}s = "
      f"{(n - 1) / max(t['generation_s'], 1e-9):.1f} tokens/s; load {t['load_s']:.2f}s")
PYEOF
timings() { $PY /tmp/timings.py; }  # llmrun run --json on stdin -> one line of rates
stamp "run --gpu-layers -1 (first run: the engine self-test, then the answer)"
$LLMRUN run /tmp/r1b.gguf --raw --temperature 0 -n 128 --json --gpu-layers -1 \
    "Once upon a time" > /tmp/gpu.json; echo "run exit: $?"; timings < /tmp/gpu.json
cat "$LLMRUN_HOME/state/native-check.json"
stamp "run again (remembered) and on the CPU for comparison"
$LLMRUN run /tmp/r1b.gguf --raw --temperature 0 -n 128 --json --gpu-layers -1 \
    "Once upon a time" > /tmp/gpu2.json; echo "run exit: $?"; timings < /tmp/gpu2.json
$PY -c 'import json,sys; a,b=(json.load(open(f))["text"] for f in sys.argv[1:]); print("same greedy text:", a==b)' /tmp/gpu.json /tmp/gpu2.json
$LLMRUN run /tmp/r1b.gguf --raw --temperature 0 -n 32 --json --gpu-layers 0 \
    "Once upon a time" > /tmp/cpu.json; echo "cpu run exit: $?"; timings < /tmp/cpu.json

stamp "serve + the official openai client"
$LLMRUN import /tmp/r1b.gguf --name rand1b --link
$LLMRUN serve --port 8765 --gpu-layers -1 2> /tmp/serve.log &
SERVE=$!
$PY - <<'PYEOF'
import time, httpx, openai
for _ in range(600):
    try:
        if httpx.get("http://127.0.0.1:8765/health", timeout=2).status_code == 200:
            break
    except httpx.TransportError:
        time.sleep(0.1)
c = openai.OpenAI(base_url="http://127.0.0.1:8765/v1", api_key="none")
c.completions.create(model="rand1b", prompt="warm", max_tokens=4, temperature=0)
for stream in (False, True):
    t = time.perf_counter()
    if stream:
        n = sum(1 for ch in c.completions.create(model="rand1b", prompt="Once upon a time",
                max_tokens=256, temperature=0, stream=True) if ch.choices and ch.choices[0].text)
    else:
        r = c.completions.create(model="rand1b", prompt="Once upon a time", max_tokens=256,
                                 temperature=0)
        n = r.usage.completion_tokens
    dt = time.perf_counter() - t
    what = "stream, chunks with text" if stream else "plain, completion tokens"
    print(f"serve ({what}): {n} in {dt:.2f}s = {n / dt:.1f}/s")
PYEOF
echo "client exit: $?"
kill $SERVE; wait $SERVE; echo "serve exit: $?"; tail -5 /tmp/serve.log

stamp "bench"
$LLMRUN bench /tmp/r1b.gguf --gpu-layers -1 -r 3 ${BENCH_ARGS:-} | tee "$OUTDIR/bench.txt"
$LLMRUN bench /tmp/r1b.gguf --gpu-layers -1 -r 3 ${BENCH_ARGS:-} --json > "$OUTDIR/bench.json"
stamp "bench against llama.cpp's own loop"
$PY bench/bench_vs_raw.py /tmp/r1b.gguf --gpu-layers -1 --rounds 3 ${BENCH_ARGS:-} \
    --label "random-weight 1.1B F16 llama, $(nvidia-smi --query-gpu=name --format=csv,noheader)"
stamp "concurrent streams: serve --parallel beside llama.cpp's batched loop (issue 14)"
# (last, and light: one round each, so that it ends within the command's 10 minutes)
$PY bench/bench_batch.py --model /tmp/r1b.gguf --tokens 128 --ctx 1024 --counts 1 4 8 16 \
    --rounds 1 --single-rounds 1 | tee "$OUTDIR/batch.txt"
stamp "done"
