"""CI: smoke-test the CLI from an install without extras (`pip install .`), which is what a
user gets: every runtime dependency must be declared (reliability.md T36). Run by .ci/run as
`python .ci/smoke_plain.py PLAIN_BIN FULL_BIN`: PLAIN_BIN is the plain install's bin/ folder,
FULL_BIN the development install's (which has the demo model) for `serve`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def main() -> None:
    plain, full = Path(sys.argv[1]), Path(sys.argv[2])
    tmp = Path(tempfile.mkdtemp(prefix="llmrun-smoke-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMRUN_", "HF_"))}
    env.update(LLMRUN_HOME=str(tmp / "home"), HF_HUB_CACHE=str(tmp / "hub"), NO_COLOR="1",
               HF_HUB_OFFLINE="1")
    failures: list[str] = []

    def run(binary: Path, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(binary / "llmrun"), *args], env=env, capture_output=True,
                              text=True, timeout=600, stdin=subprocess.DEVNULL)
        ok = proc.returncode == code and "Traceback" not in proc.stderr
        print(f"{'ok  ' if ok else 'FAIL'} llmrun {' '.join(args)[:90]} -> {proc.returncode}")
        if not ok:
            failures.append(f"llmrun {' '.join(args)}: exit {proc.returncode}\n{proc.stderr}")
        return proc

    run(plain, "--help")
    run(plain, "--version")
    run(plain, "catalog")
    doctor = run(plain, "doctor", "--json")
    if doctor.returncode == 0 and not json.loads(doctor.stdout)["self_test"]["works"]:
        failures.append("doctor: the engine self-test does not work in the plain install")
    path = run(full, "pull", "-q", "gemma3:270m-base").stdout.strip()
    local = run(plain, "run", path, "--raw", "--temperature", "0", "-n", "4", "Hello")
    if not local.stdout.strip():
        failures.append("run on a local .gguf printed nothing")
    server = subprocess.Popen([str(full / "llmrun"), "serve", "--port", "0"], env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        line = server.stderr.readline()
        match = re.search(r"listening on (http://\S+)", line)
        if not match:
            raise SystemExit(f"serve did not start: {line}")
        url = match.group(1)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("serve did not answer /health") from None
                time.sleep(0.2)  # polling a server that is starting, not synchronisation
        for endpoint in (url, url + "/v1"):
            remote = run(plain, "run", "--endpoint", endpoint, "gemma3:270m-base", "--raw",
                         "--temperature", "0", "-n", "4", "Hello")
            if not remote.stdout.strip():
                failures.append(f"client mode against {endpoint} printed nothing")
    finally:
        server.terminate()
        server.wait(timeout=60)
    if failures:
        print("\n\n".join(failures), file=sys.stderr)
        raise SystemExit(1)
    print("plain install smoke test: all passed")


if __name__ == "__main__":
    main()
