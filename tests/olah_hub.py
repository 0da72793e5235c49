"""Run a real olah server (a self-hosted Hub mirror) on loopback, serving local git repos.

Layout and behaviour follow /work/shared/docs/local-hub.md: each repo ``ORG/NAME`` is a git
repository at ``<tmp>/mirrors/models/ORG/NAME`` (branch ``main``); large files are committed as
Git-LFS pointer files with their content under ``.git/lfs/objects/<aa>/<bb>/<sha256>`` so that
olah reports the sha256 as ETag, as the real Hub does.

    with OlahHub(tmp_path, {"org/name": {"model.gguf": Path(...), "README.md": b"hi"}}) as hub:
        HfApi(endpoint=hub.url).model_info("org/name")

Known olah limits (see the doc): Range is ignored (200, whole body, chunked), and
``model_info(files_metadata=True)`` has no sizes.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

__all__ = ["DEFAULT_LFS_PATTERNS", "OlahHub", "free_port", "lfs_pointer"]

# Subset of the default .gitattributes the Hub creates for a new repo.
DEFAULT_LFS_PATTERNS: tuple[str, ...] = (
    "*.gguf", "*.bin", "*.safetensors", "*.pt", "*.pth", "*.ckpt", "*.onnx", "*.h5",
    "*.msgpack", "*.npy", "*.npz", "*.pkl", "*.pickle", "*.model", "*.tflite", "*.zip",
    "*.gz", "*.tar", "*.tgz", "*.xz", "*.zst", "*.7z", "*.parquet", "*.arrow",
)  # fmt: skip

_GIT_DATE = "2024-01-01T00:00:00+00:00"  # fixed => deterministic commit hashes
_CHUNK = 1 << 20


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The Git-LFS pointer file for a blob (what the Hub stores in git for an LFS file)."""
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


def _sha256_of(source: Path | bytes) -> tuple[str, int]:
    if isinstance(source, bytes):
        return hashlib.sha256(source).hexdigest(), len(source)
    h = hashlib.sha256()
    size = 0
    with open(source, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _git_env(home: Path) -> dict[str, str]:
    """Environment that makes git independent of the machine's and user's configuration."""
    env = dict(os.environ)
    for key in list(env):
        if key.startswith("GIT_"):
            del env[key]
    env.update(
        {
            "HOME": str(home),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_AUTHOR_NAME": "llmrun tests",
            "GIT_AUTHOR_EMAIL": "tests@llmrun.invalid",
            "GIT_COMMITTER_NAME": "llmrun tests",
            "GIT_COMMITTER_EMAIL": "tests@llmrun.invalid",
            "GIT_AUTHOR_DATE": _GIT_DATE,
            "GIT_COMMITTER_DATE": _GIT_DATE,
            "GIT_TERMINAL_PROMPT": "0",
        }
    )
    return env


class OlahHub:
    """A real olah server on 127.0.0.1 serving the given model repos from local git mirrors.

    Args:
        tmp_path: a scratch directory (pytest's ``tmp_path``); everything goes under
            ``tmp_path / "olah"``.
        repos: ``{"org/name": {"path/in/repo": Path | bytes}}``.
        is_lfs: decides which files are stored as LFS (``(path, size) -> bool``); by default the
            Hub's default .gitattributes patterns (``*.gguf``, ``*.bin``, ...) or size >= 10 MiB.
        start_timeout: seconds to wait for the server to listen.
    """

    def __init__(
        self,
        tmp_path: Path,
        repos: Mapping[str, Mapping[str, Path | bytes]],
        *,
        is_lfs: Callable[[str, int], bool] | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.root = Path(tmp_path) / "olah"
        self.repos = {k: dict(v) for k, v in repos.items()}
        self.is_lfs = is_lfs or _default_is_lfs
        self.start_timeout = start_timeout
        self.port = 0
        self.url = ""
        self.commits: dict[str, str] = {}  # repo_id -> commit sha of main
        self.sha256: dict[tuple[str, str], str] = {}  # (repo_id, path) -> sha256 of content
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_file = self.root / "olah.out"

    # -- repo building -------------------------------------------------------------------------

    def _git(self, cwd: Path, *args: str) -> str:
        out = subprocess.run(
            ["git", "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false", *args],
            cwd=cwd,
            env=_git_env(self.root),
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip()

    def _build_repo(self, repo_id: str, files: Mapping[str, Path | bytes]) -> None:
        org, _, name = repo_id.partition("/")
        if not org or not name or "/" in name:
            raise ValueError(f"repo_id must be ORG/NAME, got {repo_id!r}")
        repo_dir = self.root / "mirrors" / "models" / org / name
        repo_dir.mkdir(parents=True)
        self._git(repo_dir, "init", "-q", "-b", "main")
        for rel, source in files.items():
            dest = repo_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            sha, size = _sha256_of(source)
            self.sha256[(repo_id, rel)] = sha
            if self.is_lfs(rel, size):
                dest.write_bytes(lfs_pointer(sha, size))
                obj = repo_dir / ".git" / "lfs" / "objects" / sha[:2] / sha[2:4] / sha
                obj.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(source, bytes):
                    obj.write_bytes(source)
                elif not obj.exists():
                    try:
                        os.link(source, obj)
                    except OSError:
                        shutil.copyfile(source, obj)
            elif isinstance(source, bytes):
                dest.write_bytes(source)
            else:
                shutil.copyfile(source, dest)
        self._git(repo_dir, "add", "-A")
        self._git(repo_dir, "commit", "-q", "--no-verify", "-m", "Upload files")
        self.commits[repo_id] = self._git(repo_dir, "rev-parse", "HEAD")

    # -- server --------------------------------------------------------------------------------

    def start(self) -> OlahHub:
        self.root.mkdir(parents=True, exist_ok=True)
        for repo_id, files in self.repos.items():
            self._build_repo(repo_id, files)
        (self.root / "olah-cache").mkdir(exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        self.port = free_port()
        config = self.root / "olah.toml"
        config.write_text(
            "[basic]\n"
            'host = "127.0.0.1"\n'
            f"port = {self.port}\n"
            f"repos-path = {str(self.root / 'olah-cache')!r}\n"
            f"mirrors-path = [{str(self.root / 'mirrors')!r}]\n"
            "[accessibility]\n"
            "offline = true\n"
        )
        env = dict(os.environ)
        for key in ("HF_ENDPOINT", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            env.pop(key, None)
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        with open(self.log_file, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "olah.server", "-c", str(config),
                 "--log-path", str(self.root / "logs")],
                cwd=self.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        try:
            self._wait_listening()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_listening(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"olah exited with {self.proc.returncode} before listening:\n{self.log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)  # poll interval
        raise TimeoutError(
            f"olah did not listen on {self.port} within {self.start_timeout}s:\n{self.log_tail()}"
        )

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def __enter__(self) -> OlahHub:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _default_is_lfs(path: str, size: int) -> bool:
    name = path.rsplit("/", 1)[-1]
    return size >= 10 * 1024 * 1024 or any(fnmatch.fnmatch(name, p) for p in DEFAULT_LFS_PATTERNS)
