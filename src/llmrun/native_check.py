"""The engine self-test (reliability.md T34, T35): before llmrun first runs a model of some
weight types on a machine, a child process loads a tiny model of the same types (tiny_model.py,
with the model's own blocks) and decodes with it. If the child dies by a signal, the next
configuration is tried: llama.cpp's extra CPU buffer types off (its AMX and repacked-weight
kernels: an AMX Xeon segfaults in them, llama.cpp#20824), then the system libstdc++ loaded
first (a CUDA build that resolved libstdc++ symbols into libggml-cuda crashed at every load).
What works is remembered in ``state_dir/native-check.json``, keyed by a fingerprint of the
llama-cpp-python build, the CPU and the GPU driver, so a rebuild or another machine checks
again; a machine where the first configuration works pays for one check per set of types.

Nothing here imports llama_cpp: the parent must not load the native libraries before it knows
how (a preload has to come first); native_probe.py is the child.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .errors import ModelError

CHECK_VERSION = 1  # bump when what the self-test exercises changes
STATE_FILE = "native-check.json"
CHILD_TIMEOUT = 180.0  # a first CUDA load may JIT-compile kernels; a hang is not a crash
FAULT_ENV = "LLMRUN_TEST_NATIVE_FAULT"  # test hook, see native_probe.py
MODES = ("auto", "on", "off")
log = logging.getLogger("llmrun")


@dataclass(frozen=True)
class Config:
    """How the engine is loaded: llama.cpp's extra CPU buffer types on or off, and a library
    to load before llama.cpp's own (None: none)."""

    extra_bufts: bool = True
    preload: str | None = None


@dataclass
class Attempt:
    config: Config
    outcome: str  # "ok", a signal name ("SIGSEGV"), "exit N", "timeout"
    seconds: float = 0.0
    detail: str = ""  # the child's last stderr line when it failed


@dataclass
class Outcome:
    config: Config
    notice: str | None = None  # one line for the user when the configuration is not the default
    offload: bool | None = None  # whether the build offloaded to a GPU in the self-test
    attempts: list[Attempt] = field(default_factory=list)
    seconds: float = 0.0


def signal_name(returncode: int) -> str | None:
    if returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def system_libstdcxx() -> str | None:
    """The system's libstdc++ (Linux), which a CUDA build of llama.cpp may need loaded first."""
    if not sys.platform.startswith("linux"):
        return None
    machine = platform.machine()
    for path in (f"/usr/lib/{machine}-linux-gnu/libstdc++.so.6", "/usr/lib64/libstdc++.so.6",
                 "/usr/lib/libstdc++.so.6"):
        if os.path.exists(path):
            return path
    return None


def _read(path: str, limit: int = 1 << 16) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(limit)
    except OSError:
        return ""


def cpu_summary() -> dict[str, str]:
    """The CPU's model name and feature flags (Linux), else what platform says."""
    info = {"model": platform.processor() or platform.machine(), "flags": ""}
    for line in _read("/proc/cpuinfo").splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and info["model"] in ("", platform.machine(), "x86_64"):
            info["model"] = value.strip()
        elif key in ("flags", "Features") and not info["flags"]:
            info["flags"] = value.strip()
    return info


def llama_cpp_build() -> dict[str, Any]:
    """llama-cpp-python's version and its native libraries (name, size, mtime), found without
    importing it."""
    try:
        version = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        version = None
    libs: list[list[Any]] = []
    spec = importlib.util.find_spec("llama_cpp")
    if spec is not None and spec.origin:
        lib_dir = Path(spec.origin).parent / "lib"
        for p in sorted(lib_dir.glob("*")) if lib_dir.is_dir() else []:
            try:
                st = p.stat()
            except OSError:
                continue
            libs.append([p.name, st.st_size, st.st_mtime_ns])
    return {"version": version, "package": str(Path(spec.origin).parent) if spec and spec.origin
            else None, "libraries": libs}


def fingerprint() -> str:
    """Changes when llama-cpp-python, its build, the CPU, the GPU driver, Python, llmrun or the
    environment that decides how native code loads changes."""
    parts = {
        "check": CHECK_VERSION, "llmrun": __version__, "python": sys.version,
        "machine": platform.machine(), "cpu": cpu_summary(), "build": llama_cpp_build(),
        "nvidia": _read("/proc/driver/nvidia/version", 4096),
        "env": {k: os.environ.get(k) for k in ("LD_PRELOAD", "LD_LIBRARY_PATH",
                                               "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES",
                                               "GGML_CUDA_NO_PINNED", FAULT_ENV)},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def candidates(mode: str) -> list[Config]:
    """Configurations in the order they are tried."""
    bufts = {"auto": [True, False], "on": [True], "off": [False]}[mode]
    found = [Config(extra_bufts=b) for b in bufts]
    lib = system_libstdcxx()
    if lib is not None:
        found += [Config(extra_bufts=b, preload=lib) for b in bufts]
    return found


def matrix_types(samples: Mapping[str, tuple[int, int]]) -> list[str]:
    """The weight-matrix types the self-test can reproduce, sorted."""
    from . import tiny_model

    return sorted(t for t in samples if tiny_model.can_write(t, samples)) or ["F32"]


def run_child(args: list[str], *, timeout: float = CHILD_TIMEOUT,
              env: Mapping[str, str] | None = None) -> tuple[str, float, str, dict[str, Any]]:
    """``python -m llmrun.native_probe ARGS``: (outcome, seconds, the child's last stderr line
    when it failed, its JSON report). Outcome: "ok", a signal name ("SIGSEGV"), "exit N",
    "timeout" or "no report"."""
    cmd = [sys.executable, "-m", "llmrun.native_probe", *args]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              env=dict(env) if env is not None else None)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - start, "", {}
    took = time.perf_counter() - start
    lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    detail = lines[-1][:300] if lines else ""
    if proc.returncode != 0:
        return signal_name(proc.returncode) or f"exit {proc.returncode}", took, detail, {}
    try:
        report = json.loads(proc.stdout.decode("utf-8", "replace").strip().splitlines()[-1])
    except (ValueError, IndexError):
        return "no report", took, detail, {}
    return "ok", took, "", report


def run_probe(model: Path, config: Config, *, gpu: bool, threads: int | None,
              flash_attn: bool | None, timeout: float = CHILD_TIMEOUT,
              env: Mapping[str, str] | None = None) -> tuple[Attempt, dict[str, Any]]:
    """One child: load ``model`` with ``config`` and decode. (attempt, the child's report)."""
    args = [str(model), "--extra-bufts", "1" if config.extra_bufts else "0",
            "--gpu-layers", "-1" if gpu else "0", "--threads", str(threads or 0),
            "--flash-attn", "" if flash_attn is None else str(int(flash_attn))]
    if config.preload:
        args += ["--preload", config.preload]
    outcome, took, detail, report = run_child(args, timeout=timeout, env=env)
    return Attempt(config, outcome, took, detail), report


def self_test(model: Path, types: Iterable[str], samples: Mapping[str, tuple[int, int]], *,
              mode: str, gpu: bool, threads: int | None, flash_attn: bool | None,
              env: Mapping[str, str] | None = None) -> Outcome:
    """Try the candidates for ``mode`` in order on a tiny model of ``types``; the first that
    works wins. Outcome.config is the default when nothing crashed by a signal."""
    from . import tiny_model

    start = time.perf_counter()
    out = Outcome(Config(extra_bufts=mode != "off"))
    with tempfile.TemporaryDirectory(prefix="llmrun-selftest-") as tmp:
        tiny = Path(tmp) / "selftest.gguf"
        tiny_model.write(tiny, list(types), source=model, samples=samples)
        for config in candidates(mode):
            attempt, report = run_probe(tiny, config, gpu=gpu, threads=threads,
                                        flash_attn=flash_attn, env=env)
            out.attempts.append(attempt)
            if attempt.outcome == "ok":
                out.config, out.offload = config, bool(report.get("offload"))
                break
            if not is_crash(attempt.outcome):
                # not a crash (a timeout, an error exit): nothing more to learn; load as this
                # attempt did (after a crash, not as the configuration that crashed)
                out.config = attempt.config
                break
    out.seconds = time.perf_counter() - start
    return out


def is_crash(outcome: str) -> bool:
    return outcome.startswith(("SIG", "signal "))


def crashed(out: Outcome) -> bool:
    """Every configuration tried died by a signal."""
    return bool(out.attempts) and all(is_crash(a.outcome) for a in out.attempts)


def describe(config: Config) -> str:
    parts = [f"llama.cpp's extra CPU buffer types {'on' if config.extra_bufts else 'off'}"]
    if config.preload:
        parts.append(f"{config.preload} loaded first")
    return ", ".join(parts)


def _notice(out: Outcome) -> str | None:
    first, chosen = out.attempts[0], out.config
    if chosen == first.config:
        return None
    changes = []
    if first.config.extra_bufts and not chosen.extra_bufts:
        changes.append("without its extra CPU buffer types (AMX, repacked weights)")
    if chosen.preload:
        changes.append(f"with {chosen.preload} loaded first")
    knob = "LLMRUN_CPU_EXTRA_BUFFERS=on|off to choose; " if changes[0].startswith("without") \
        else ""
    return (f"llama.cpp crashed ({first.outcome}) in llmrun's engine self-test on this machine; "
            f"llmrun runs it {' and '.join(changes)} from now on "
            f"({knob}`llmrun doctor` for details)")


class _State:
    """native-check.json: the fingerprint it was made for and a result per check key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self, fp: str) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("fingerprint") != fp:
            return {}
        checks = data.get("checks")
        return checks if isinstance(checks, dict) else {}

    def outcome(self, fp: str, key: str) -> Outcome | None:
        """The remembered result of check ``key``, if there is a readable one."""
        known = self.load(fp).get(key)
        if isinstance(known, dict) and isinstance(known.get("config"), dict):
            try:
                return Outcome(Config(**known["config"]), offload=known.get("offload"))
            except TypeError:
                pass
        return None

    def save(self, fp: str, checks: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"fingerprint": fp, "checks": checks}, indent=1),
                       encoding="utf-8")
        os.replace(tmp, self.path)


def check_key(mode: str, gpu: bool, types: Iterable[str]) -> str:
    return f"{mode}|gpu={int(gpu)}|{','.join(sorted(types))}"


def remembered(state_dir: Path) -> dict[str, Any]:
    """The results remembered for this machine's current fingerprint (for doctor)."""
    return _State(state_dir / STATE_FILE).load(fingerprint())


def ensure(model: Path, samples: Mapping[str, tuple[int, int]], *, mode: str, gpu: bool,
           threads: int | None, flash_attn: bool | None, state_dir: Path | None,
           name: str) -> Outcome:
    """The configuration to load ``model`` with: remembered, or found by a self-test now.
    Raises ModelError (exit 5) when every configuration crashed."""
    if mode not in MODES:
        raise ModelError(f"LLMRUN_CPU_EXTRA_BUFFERS must be one of {', '.join(MODES)}")
    types = matrix_types(samples)
    key = check_key(mode, gpu, types)
    fp = fingerprint()
    state = _State(state_dir / STATE_FILE) if state_dir is not None else None
    if state is not None and (known := state.outcome(fp, key)) is not None:
        return known
    lock = None
    if state is not None and state_dir is not None:
        from filelock import FileLock

        state_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(state_dir / (STATE_FILE + ".lock")))
        lock.acquire(timeout=len(candidates(mode)) * CHILD_TIMEOUT + 60)
    try:
        # another process may have finished the same check meanwhile
        if state is not None and (known := state.outcome(fp, key)) is not None:
            return known
        out = self_test(model, types, samples, mode=mode, gpu=gpu, threads=threads,
                        flash_attn=flash_attn)
        log.debug("engine self-test for %s: %s in %.2fs", key,
                  [(describe(a.config), a.outcome) for a in out.attempts], out.seconds)
        if crashed(out):
            sig = out.attempts[0].outcome
            raise ModelError(
                f"the native engine (llama.cpp) crashed ({sig}) in its self-test for {name}, "
                f"in every configuration tried ({len(out.attempts)})",
                hint="run `llmrun doctor` for the cause and the fix")
        if out.attempts and out.attempts[-1].outcome != "ok":
            # not a crash (a timeout, an error exit): nothing learned; load as usual, and let
            # the real load say what is wrong
            log.debug("engine self-test inconclusive: %s %s", out.attempts[-1].outcome,
                      out.attempts[-1].detail)
            return out
        if state is not None:
            checks = state.load(fp)
            checks[key] = {"config": asdict(out.config), "offload": out.offload,
                           "attempts": [{"config": asdict(a.config), "outcome": a.outcome,
                                         "seconds": round(a.seconds, 3)}
                                        for a in out.attempts],
                           "seconds": round(out.seconds, 3),
                           "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            state.save(fp, checks)
        out.notice = _notice(out)
        return out
    finally:
        if lock is not None:
            lock.release()
