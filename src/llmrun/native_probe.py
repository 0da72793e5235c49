"""The engine self-test's child (native_check.py): ``python -m llmrun.native_probe MODEL
--extra-bufts 0|1 --gpu-layers N --threads N --flash-attn 0|1| [--preload LIB]`` loads MODEL the
way engine.Model does, evaluates a prompt in one batch, decodes a few tokens one at a time, and
prints one JSON line (what the build offloaded, llama.cpp's system info). A native crash kills
this process, not llmrun.

Test hook: ``LLMRUN_TEST_NATIVE_FAULT`` makes this child die by SIGSEGV after the load, as an
AMX Xeon's does at its first decode: ``extra-bufts`` (only with the extra buffer types on),
``always``, or ``unless-preload`` (unless a library was preloaded). Tests use it to prove the
fallback on machines that do not crash.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys


def _fault(extra_bufts: bool, preload: str | None) -> None:
    fault = os.environ.get("LLMRUN_TEST_NATIVE_FAULT", "")
    if ((fault == "extra-bufts" and extra_bufts) or fault == "always"
            or (fault == "unless-preload" and not preload)):
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGSEGV)


def main() -> None:
    ap = argparse.ArgumentParser(prog="llmrun.native_probe")
    ap.add_argument("model", nargs="?", help="omit with --info")
    ap.add_argument("--info", action="store_true",
                    help="report the build and its devices without loading a model")
    ap.add_argument("--extra-bufts", type=int, default=1)
    ap.add_argument("--gpu-layers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--flash-attn", default="")
    ap.add_argument("--preload")
    a = ap.parse_args()
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")  # a crash is reported by its signal
    from . import engine

    if a.preload:
        engine.preload_library(a.preload)
    if a.info or not a.model:
        sys.stdout.write(json.dumps(engine.build_info()) + "\n")
        return
    report = engine.probe(a.model, extra_bufts=bool(a.extra_bufts), gpu_layers=a.gpu_layers,
                          threads=a.threads or None,
                          flash_attn=None if a.flash_attn == "" else bool(int(a.flash_attn)),
                          after_load=lambda: _fault(bool(a.extra_bufts), a.preload))
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
