"""`llmrun doctor [MODEL]`: versions, build, engine self-test, memory, disk, paths, Hub, token;
each problem with its fix. Exit 0 when all is well, 1 when something is broken."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..exit_codes import ExitCode
from . import common, complete, output


def _size(n: int | None) -> str:
    return "?" if n is None else output.human_size(n)


def _lines(r: dict[str, Any]) -> list[tuple[str, str]]:
    py = r["python"]
    build = r["build"]
    cpu = r["cpu"]
    rows = [("llmrun", f"{r['llmrun']} (Python {py['version']}, {py['executable']})"),
            ("llama.cpp", f"llama-cpp-python {r['llama_cpp_python'] or 'not installed'}")]
    if build["error"]:
        rows.append(("build", f"unknown: {build['error']}"))
    else:
        backends = sorted({d["name"] for d in build["devices"] if d["type"] in ("gpu", "igpu")})
        rows.append(("build", ("GPU offload: " + ", ".join(backends or ["yes"]))
                     if build["gpu_offload"] else "CPU only (no GPU backend compiled in)"))
        rows.append(("system info", build["system_info"] or "?"))
    rows.append(("cpu", f"{cpu['model']}, {cpu['cores']} cores, {cpu['threads']} threads"
                 + (f" ({', '.join(cpu['features'])})" if cpu["features"] else "")))
    st = r["self_test"]
    if st is not None:
        tried = "; ".join(f"{_config(a['config'])}: {a['outcome']}" for a in st["attempts"])
        state = "works" if st["works"] else "FAILS"
        rows.append(("engine self-test", f"{state} in {st['seconds']:.2f}s on "
                     f"{', '.join(st['types'])} weights ({tried})"))
    mem = r["memory"]
    rows.append(("memory", f"{_size(mem['total'])} total, {_size(mem['available'])} available"))
    for d in r["gpu_memory"]:
        rows.append(("gpu", f"{d['name']} {d['description']}: {_size(d['memory_free'])} free "
                     f"of {_size(d['memory_total'])}"))
    if not r["gpu_memory"]:
        seen = r["gpus_seen_by_driver"]
        rows.append(("gpu", "none in use" + (f" (the driver lists {', '.join(seen)})"
                                             if seen else "")))
    disk = r["disk"]
    rows.append(("disk", f"{_size(disk.get('free'))} free at {disk['path']}"))
    rows.append(("hf cache", r["paths"]["hf_cache"]))
    rows.append(("llmrun home", r["paths"]["llmrun_home"]))
    hub = r["hub"]
    rows.append(("hub", f"{hub['endpoint']}: "
                 + ("reachable" if hub.get("reachable") else "unreachable")
                 + f" ({hub.get('detail', 'no answer')})"))
    token = r["token"]
    rows.append(("hub token", f"configured ({token['source']})" if token["configured"]
                 else "none (public models only)"))
    return rows


def _config(c: dict[str, Any]) -> str:
    text = "extra buffers " + ("on" if c["extra_bufts"] else "off")
    return text + (f", {c['preload']} first" if c.get("preload") else "")


def doctor_cmd(
    model: Annotated[str | None, typer.Argument(
        autocompletion=complete.any_model,
        help="test the engine with this model's weight types (default: F16, Q4_0, Q8_0)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout")] = False,
    gpu_layers: Annotated[int | None, typer.Option(
        "--gpu-layers", min=-1, help="0: test the engine on the CPU only")] = None,
) -> int:
    """Check this machine and install: versions, build, engine self-test, memory, disk, Hub.
    Exit 0 when all is well, 1 when something is broken."""
    from .. import doctor, gguf_file

    s = common.settings()
    path = samples = None
    if model is not None:
        path, _, _ = common.ensure_local(model, no_pull=True)
        samples = dict(gguf_file.read_info(path).matrix_samples)
    layers = gpu_layers if gpu_layers is not None else s.gpu_layers
    if not as_json and output.stderr_is_tty():
        output.info("checking (the engine self-test runs in a child process)…")
    report = doctor.gather(s.home, mode=s.cpu_extra_buffers, model=path, samples=samples,
                           gpu=layers != 0, threads=s.threads, flash_attn=s.flash_attn)
    if as_json:
        output.write_json(report)
    else:
        rows = _lines(report)
        width = max(len(k) for k, _ in rows) + 2
        output.write("".join(f"{k:<{width}}{v}\n" for k, v in rows))
        problems = report["problems"]
        output.write("\n" + (f"{len(problems)} problem(s):\n" if problems else
                             "No problems found.\n"))
        for p in problems:
            output.write(f"- [{p['severity']}] {p['problem']}\n  fix: {p['fix']}\n")
    return ExitCode.OK if report["ok"] else ExitCode.ERROR
