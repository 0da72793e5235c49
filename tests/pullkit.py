"""What the pull tests share: a tiny GGUF repo on the Hub double, its deterministic file
contents, and where a pulled file lands in the Hugging Face cache layout."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hubdouble import HubDouble

REPO = "test-org/tiny-GGUF"
Q4 = "tiny-model-Q4_K_M.gguf"
Q8 = "tiny-model-Q8_0.gguf"
MMPROJ = "mmproj-tiny-F16.gguf"  # the repo's vision projector, pulled with a model
SIZE = 3 * 1024 * 1024 + 17
REPO_DIR = f"models--{REPO.replace('/', '--')}"


def data(seed: int, size: int = SIZE) -> bytes:
    """``size`` pseudo-random bytes, the same for the same seed."""
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:size])


@contextmanager
def tiny_repo_hub() -> Iterator[HubDouble]:
    """The Hub double serving REPO: two quants, a projector and a README."""
    with HubDouble() as h:
        h.add_file(REPO, Q4, data(1))
        h.add_file(REPO, Q8, data(2))
        h.add_file(REPO, MMPROJ, data(3, 1000))
        h.add_file(REPO, "README.md", b"# tiny\n")
        yield h


def gets(hub: HubDouble, name: str) -> list[dict[str, str]]:
    """The headers of every file download (GET …/resolve/…) of ``name``."""
    return [r.headers for r in hub.requests if r.method == "GET" and "/resolve/" in r.path
            and r.path.endswith(name)]


def blob_in(cache: Path, content: bytes) -> Path:
    """Where a pulled file with ``content`` lives in the Hugging Face cache at ``cache``."""
    return cache / REPO_DIR / "blobs" / hashlib.sha256(content).hexdigest()


def blob(root: Path, content: bytes) -> Path:
    """The same, for a test whose cache is ``root / "hub"`` (conftest.make_env)."""
    return blob_in(root / "hub", content)
