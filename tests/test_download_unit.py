"""Narrow unit tests of download.fetch's own logic, with a fake HTTP layer (the real-server
tests are in test_pull.py)."""

from __future__ import annotations

import errno
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest

from llmrun import download
from llmrun.errors import DiskFull

DATA = bytes(range(256)) * 4096  # 1 MiB


class _Resp:
    status_code = 200
    headers: ClassVar[dict[str, str]] = {}

    def iter_bytes(self, size: int) -> Iterator[bytes]:
        for i in range(0, len(DATA), size):
            yield DATA[i:i + size]


class _Client:
    @contextmanager
    def stream(self, *args: Any, **kw: Any) -> Iterator[_Resp]:
        yield _Resp()


def _http() -> download.Http:
    return download.Http(client=_Client(), headers={}, raise_for_status=lambda r, w: None,
                         transient=(ConnectionError,), timeout=None)


def test_disk_full_mid_stream_leaves_nothing(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """T06: ENOSPC while writing removes the partial file and gives DiskFull (exit 4); no file
    appears at the final path and other files in the folder are untouched."""
    neighbour = tmp_path / "other-model"
    neighbour.write_bytes(b"keep me")
    dest = tmp_path / "blob"
    t = download.Transfer("http://x/f", dest, len(DATA), hashlib.sha256(DATA).hexdigest(), "f")
    real_open = Path.open
    written = 0

    class FullDisk:
        def __init__(self, fh: Any) -> None:
            self.fh = fh

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()

        def write(self, block: bytes) -> int:
            nonlocal written
            if written > len(DATA) // 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            written += len(block)
            return int(self.fh.write(block))

        def flush(self) -> None:
            self.fh.flush()

        def fileno(self) -> int:
            return int(self.fh.fileno())

    def fake_open(self: Path, mode: str = "r", *a: Any, **kw: Any) -> Any:
        fh = real_open(self, mode, *a, **kw)
        return FullDisk(fh) if (self == t.part and "a" in mode) or "w" in mode else fh

    monkeypatch.setattr(Path, "open", fake_open)
    with pytest.raises(DiskFull, match="disk full"):
        download.fetch(t, _http(), retries=3, backoff=0)
    assert written > 0  # the fault struck mid-stream, not before
    assert not dest.exists() and not t.part.exists()
    assert neighbour.read_bytes() == b"keep me"


def test_fetch_verifies_and_renames(tmp_path: Path) -> None:
    dest = tmp_path / "blob"
    t = download.Transfer("http://x/f", dest, len(DATA), hashlib.sha256(DATA).hexdigest(), "f")
    download.fetch(t, _http(), retries=0, backoff=0)
    assert dest.read_bytes() == DATA and not t.part.exists()
