"""`llmrun doctor`: what this machine, this install and this build of llama.cpp are, whether the
engine works here, and for each problem the exact fix. Everything native runs in child
processes (native_check.py, native_probe.py): a crash there is a finding, not a crash of doctor.
Library code: returns a report; cli/doctor.py prints it."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import __version__, native_check

DEFAULT_TYPES = ["F16", "Q4_0", "Q8_0"]  # gguf-py writes these; Q4_0/Q8_0 reach AMX and repack
MIN_LLAMA_CPP = (0, 3, 17)  # reliability.md (c)
HUB_TIMEOUT = 3.0
CUDA_REBUILD = ('CMAKE_ARGS="-DGGML_CUDA=on" {python} -m pip install --force-reinstall '
                '--no-cache-dir --no-deps llama-cpp-python')
CPU_FEATURES = ("avx", "avx2", "avx512f", "avx512_vnni", "avx_vnni", "f16c", "fma",
                "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd", "sve")


def _version_tuple(text: str | None) -> tuple[int, ...]:
    out: list[int] = []
    for part in (text or "").split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def _nvidia_gpus() -> list[str]:
    """NVIDIA GPUs the driver lists (without CUDA): to tell a GPU the build does not use."""
    root = Path("/proc/driver/nvidia/gpus")
    names = []
    for info in sorted(root.glob("*/information")) if root.is_dir() else []:
        for line in native_check._read(str(info)).splitlines():
            if line.startswith("Model:"):
                names.append(line.split(":", 1)[1].strip())
    if not names and shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
            names = [n.strip() for n in out.stdout.splitlines() if n.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    return names


def _build() -> tuple[dict[str, Any] | None, str]:
    """The build's own report (native_probe --info) from a child, or None and why not."""
    outcome, _, detail, report = native_check.run_child(["--info"])
    if outcome != "ok":
        return None, outcome + (f": {detail[:200]}" if detail else "")
    return report, ""


def _disk(path: Path) -> dict[str, Any]:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        usage = shutil.disk_usage(probe)
    except OSError as exc:
        return {"path": str(path), "free": None, "error": str(exc)}
    return {"path": str(path), "free": usage.free, "total": usage.total}


def gather(home: Path, *, mode: str, model: Path | None = None,
           samples: dict[str, tuple[int, int]] | None = None, gpu: bool = True,
           threads: int | None = None, flash_attn: bool | None = None) -> dict[str, Any]:
    """The whole report. ``model``/``samples``: test that model's weight types (else
    DEFAULT_TYPES on random weights)."""
    import psutil

    from . import hub

    problems: list[dict[str, str]] = []
    hub_result: dict[str, Any] = {"endpoint": hub.endpoint()}

    def ping() -> None:
        ok, detail = hub.ping(HUB_TIMEOUT)
        hub_result.update(reachable=ok, detail=detail)

    pinger = threading.Thread(target=ping, daemon=True)
    pinger.start()

    try:
        lcp_version: str | None = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        lcp_version = None
    python = sys.executable
    report: dict[str, Any] = {
        "llmrun": __version__,
        "python": {"version": platform.python_version(), "executable": python},
        "platform": platform.platform(),
        "llama_cpp_python": lcp_version,
    }
    if lcp_version is None:
        problems.append({"problem": "llama-cpp-python is not installed", "severity": "error",
                         "fix": f"{python} -m pip install llama-cpp-python"})
    elif _version_tuple(lcp_version) < MIN_LLAMA_CPP:
        problems.append({"problem": f"llama-cpp-python {lcp_version} is older than 0.3.17 "
                                    "(known crashes and GGUF parsing fixes)",
                         "severity": "warning",
                         "fix": f"{python} -m pip install --upgrade llama-cpp-python"})

    cpu = native_check.cpu_summary()
    flags = set(cpu["flags"].split())
    report["cpu"] = {"model": cpu["model"], "cores": psutil.cpu_count(logical=False),
                     "threads": os.cpu_count(),
                     "features": [f for f in CPU_FEATURES if f in flags],
                     "amx": bool({"amx_int8", "amx_tile"} & flags)}

    build, build_error = _build() if lcp_version else (None, "not installed")
    gpus = _nvidia_gpus()
    report["build"] = {
        "gpu_offload": build.get("offload") if build else None,
        "system_info": build.get("system_info") if build else None,
        "devices": build.get("devices", []) if build else [],
        "error": build_error or None,
    }
    report["gpus_seen_by_driver"] = gpus
    if build and gpus and not build.get("offload"):
        problems.append({
            "problem": f"this llama-cpp-python build has no GPU backend; the driver lists "
                       f"{', '.join(gpus)}",
            "severity": "warning",
            "fix": CUDA_REBUILD.format(python=python) + "   (docs/gpu.md)"})

    report["self_test"] = None
    if lcp_version and build is not None:
        report["self_test"] = _self_test(model, samples or {}, mode=mode, gpu=gpu,
                                         threads=threads, flash_attn=flash_attn,
                                         problems=problems)
    elif lcp_version:
        problems.append(_crash_problem(f"llama.cpp's libraries fail to load ({build_error})"))

    vm = psutil.virtual_memory()
    report["memory"] = {"total": vm.total, "available": vm.available}
    report["gpu_memory"] = [d for d in report["build"]["devices"]
                            if d.get("type") in ("gpu", "igpu")]
    report["paths"] = {"hf_cache": hub.cache_dir(), "llmrun_home": str(home)}
    report["disk"] = _disk(Path(hub.cache_dir()))
    free = report["disk"].get("free")
    if free is not None and free < 2 << 30:
        problems.append({"problem": f"only {free / 2**30:.1f} GiB free for models in "
                                    f"{hub.cache_dir()}", "severity": "warning",
                         "fix": "llmrun prune   (or set HF_HUB_CACHE to a larger disk)"})
    token = hub.token_source()
    report["token"] = {"configured": token is not None, "source": token}
    pinger.join(HUB_TIMEOUT + 2)
    report["hub"] = {**hub_result, "offline": hub.is_offline()}
    report["remembered"] = native_check.remembered(home / "state")
    report["problems"] = problems
    report["ok"] = not any(p["severity"] == "error" for p in problems)
    return report


def _crash_problem(what: str) -> dict[str, str]:
    return {"problem": what, "severity": "error",
            "fix": "reinstall llama-cpp-python so that it is compiled on this machine: "
                   f"{sys.executable} -m pip install --force-reinstall --no-cache-dir --no-deps "
                   "llama-cpp-python   (docs/install.md#troubleshooting)"}


def _self_test(model: Path | None, samples: dict[str, tuple[int, int]], *, mode: str, gpu: bool,
               threads: int | None, flash_attn: bool | None,
               problems: list[dict[str, str]]) -> dict[str, Any]:
    types = native_check.matrix_types(samples) if model is not None else DEFAULT_TYPES
    out = native_check.self_test(model or Path(os.devnull), types, samples, mode=mode, gpu=gpu,
                                 threads=threads, flash_attn=flash_attn)
    result: dict[str, Any] = {
        "types": types, "mode": mode, "seconds": round(out.seconds, 3),
        "attempts": [{"config": asdict(a.config), "outcome": a.outcome,
                      "seconds": round(a.seconds, 3), "detail": a.detail}
                     for a in out.attempts],
        "config": asdict(out.config), "works": bool(out.attempts)
        and out.attempts[-1].outcome == "ok"}
    first = out.attempts[0] if out.attempts else None
    if native_check.crashed(out):
        lib = native_check.system_libstdcxx()
        fix = None
        if lib and not os.environ.get("LD_PRELOAD"):  # does a process-wide preload help?
            env = {**os.environ, "LD_PRELOAD": lib}
            again = native_check.self_test(model or Path(os.devnull), types, samples,
                                           mode=mode, gpu=gpu, threads=threads,
                                           flash_attn=flash_attn, env=env)
            result["with_ld_preload"] = [a.outcome for a in again.attempts]
            if again.attempts and again.attempts[-1].outcome == "ok":
                fix = (f"export LD_PRELOAD={lib}   (the system libstdc++ first: a CUDA build "
                       "resolved C++ symbols into libggml-cuda; docs/install.md#troubleshooting)")
        problem = _crash_problem(
            f"the engine self-test crashed ({first.outcome if first else '?'}) in every "
            f"configuration tried ({len(out.attempts)})")
        if fix:
            problem["fix"] = fix
        problems.append(problem)
    elif first is not None and first.outcome != "ok" and result["works"]:
        chosen = native_check.describe(out.config)
        fix = ("none needed: llmrun does this by itself; to make it explicit, export "
               "LLMRUN_CPU_EXTRA_BUFFERS=off" if not out.config.extra_bufts else
               f"none needed: llmrun loads {out.config.preload} first by itself")
        problems.append({"problem": f"the engine crashes ({first.outcome}) with "
                                    f"{native_check.describe(first.config)}; it works with "
                                    f"{chosen}", "severity": "warning", "fix": fix})
    elif not result["works"] and out.attempts:
        last = out.attempts[-1]
        problems.append({"problem": f"the engine self-test did not finish ({last.outcome}"
                                    f"{': ' + last.detail if last.detail else ''})",
                         "severity": "error", "fix": _crash_problem("")["fix"]})
    return result
