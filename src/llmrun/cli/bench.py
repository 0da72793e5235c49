"""`llmrun bench MODEL`: prompt processing and generation speed, time to first token and peak
memory on this machine, measured as llama-bench measures (docs/benchmarks.md)."""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import UsageError
from . import common, complete, gen, output


def bench_cmd(
    model: Annotated[str, typer.Argument(
        help="registry name, hf.co/ORG/REPO[:QUANT], or .gguf", autocompletion=complete.any_model)],
    prompt_tokens: Annotated[int, typer.Option(
        "--prompt-tokens", "-p", min=0, help="prompt processing test size (0: skip)")] = 512,
    gen_tokens: Annotated[int, typer.Option(
        "--gen-tokens", "-n", min=0, help="generation test size (0: skip)")] = 128,
    repetitions: Annotated[int, typer.Option(
        "--repetitions", "-r", min=1, max=100, help="runs of each test")] = 3,
    ctx: gen.CtxC = None, gpu_layers: gen.GpuLayers = None, threads: gen.Threads = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout")] = False,
    no_pull: gen.NoPull = False,
) -> None:
    """Measure prompt processing (pp) and generation (tg) tokens/s, time to first token and
    peak memory, like llama-bench: pp512 and tg128 by default, mean ± sd over 3 runs."""
    from .. import benchmark

    if not prompt_tokens and not gen_tokens:
        raise UsageError("nothing to measure: -p and -n are both 0")
    path, name, entry = common.ensure_local(model, no_pull=no_pull)
    need = max(prompt_tokens, 16) + 1
    loaded = gen.load_model(path, name, entry, ctx=ctx or max(need, gen_tokens + 1, 512),
                            gpu_layers=gpu_layers, threads=threads, verbose=False)
    try:
        if prompt_tokens >= loaded.n_ctx:
            raise UsageError(f"-p {prompt_tokens} does not fit the context ({loaded.n_ctx})",
                             hint=f"raise --ctx above {prompt_tokens} or lower -p")
        if output.stderr_is_tty() and not as_json:
            output.info(f"benchmarking {name}: {repetitions} run(s) of each test…")
        measured = benchmark.run(loaded, pp=prompt_tokens, tg=gen_tokens, reps=repetitions)
        data = {
            "model": name, "path": str(path), "quantization": loaded.info.file_type,
            "parameters": loaded.info.parameter_count, "n_ctx": loaded.n_ctx,
            "threads": loaded.threads, "gpu_layers": loaded.gpu_layers,
            "offload_supported": loaded.offload_supported, "load_s": round(loaded.load_s, 4),
            "extra_cpu_buffers": loaded.native.config.extra_bufts, **measured}
    finally:
        loaded.close()
    _keep(name, data)
    if as_json:
        output.write_json(data)
        return
    params = loaded.info.parameter_count
    output.write(f"model: {name} ({data['quantization']}, {params / 1e6:.0f}M parameters), "
                 f"{data['threads']} threads, gpu layers {data['gpu_layers']}, "
                 f"load {data['load_s']:.2f}s\n")
    for r in data["results"]:
        t = r["tokens_per_s"]
        output.write(f"{r['test']:<8}{t['mean']:>10.1f} ± {t['sd']:.1f} tokens/s\n")
    tt = data["ttft_s"]
    output.write(f"{'ttft':<8}{tt['mean'] * 1000:>10.1f} ± {tt['sd'] * 1000:.1f} ms "
                 f"({tt['prompt_tokens']}-token prompt)\n")
    output.write(f"{'memory':<8}{output.human_size(data['peak_rss']):>10} peak resident\n")


def _keep(name: str, data: dict[str, object]) -> None:
    """The last measurement of each model, for `llmrun catalog --fits` to show."""
    import json

    from ..fits import bench_path
    from ..store import atomic_write_text

    path = bench_path(common.settings(), name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    except OSError as exc:
        output.warn(f"could not keep the result in {path}: {exc.strerror or exc}")
