"""Resumable, verified transfer of one file over HTTP.

huggingface_hub >= 1.18 deletes partial downloads and never resumes across runs, so llmrun
keeps its own partial file (``<blob>.llmrun.part``) and continues it with ``Range`` next time.
A server that ignores Range (200 instead of 206) restarts the file from byte 0. The finished
file is checked (size, sha256, hashed while it streams) before an atomic rename makes it
visible; a mismatch deletes it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ChecksumMismatch, DiskFull, NetworkError

PART_SUFFIX = ".llmrun.part"
CHUNK = 1 << 20
Progress = Callable[[int], None]  # called with the bytes held so far


@dataclass
class Transfer:
    url: str
    dest: Path  # final path (the blob); the partial file sits beside it
    size: int | None
    sha256: str | None
    what: str  # for messages
    _digest: Any = field(default=None, repr=False)
    _hashed: int = 0

    @property
    def part(self) -> Path:
        return self.dest.with_name(self.dest.name + PART_SUFFIX)


@dataclass(frozen=True)
class Http:
    """What fetch needs from the HTTP layer (supplied by hub.py)."""

    client: Any
    headers: dict[str, str]
    raise_for_status: Callable[[Any, str], None]
    transient: tuple[type[BaseException], ...]
    timeout: Any


class _ShortRead(Exception):
    pass


class RetryableStatus(Exception):
    """A 5xx or 429 answer: worth another try after back-off."""


class _Restart(Exception):
    """The server ignored Range, or the partial file is stale: start again from byte 0."""


def fetch(t: Transfer, http: Http, *, retries: int = 5, backoff: float = 1.0,
          progress: Progress | None = None) -> None:
    """Download ``t.url`` into ``t.dest``, resuming a partial file; verify; move into place."""
    t.part.parent.mkdir(parents=True, exist_ok=True)
    failures = 0
    while True:
        try:
            _attempt(t, http, progress)
            break
        except _Restart:
            t.part.unlink(missing_ok=True)
        except (*http.transient, _ShortRead, RetryableStatus) as exc:  # type: ignore[misc]
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise _disk_full(t) from None
            failures += 1
            if failures > retries:
                raise NetworkError(
                    f"download of {t.what} failed after {retries} retries "
                    f"({type(exc).__name__}: {exc})"[:300],
                    hint="re-run `llmrun pull` to resume from the bytes already on disk",
                ) from None
            time.sleep(min(backoff * 2 ** (failures - 1), 30.0))
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise _disk_full(t) from None
            raise
    _verify_and_commit(t)


def _disk_full(t: Transfer) -> DiskFull:
    t.part.unlink(missing_ok=True)
    return DiskFull(f"disk full while downloading {t.what}; the partial file was removed",
                    hint=f"free space on {t.part.parent} and pull again")


def _sync_digest(t: Transfer, have: int) -> None:
    """Make t._digest cover exactly the first ``have`` bytes of the partial file."""
    if t._digest is not None and t._hashed == have:
        return
    digest = hashlib.sha256()
    if have == 0:
        t._digest, t._hashed = digest, 0
        return
    with t.part.open("rb") as fh:
        remaining = have
        while remaining > 0 and (block := fh.read(min(CHUNK, remaining))):
            digest.update(block)
            remaining -= len(block)
    t._digest, t._hashed = digest, have


def _attempt(t: Transfer, http: Http, progress: Progress | None) -> None:
    have = t.part.stat().st_size if t.part.exists() else 0
    if t.size is not None and have > t.size:
        raise _Restart()
    _sync_digest(t, have)
    if t.size is not None and have == t.size:
        return
    headers = dict(http.headers)
    if have:
        headers["Range"] = f"bytes={have}-"
    with http.client.stream("GET", t.url, headers=headers, timeout=http.timeout,
                            follow_redirects=True) as resp:
        if resp.status_code == 416 and have:
            raise _Restart()
        http.raise_for_status(resp, t.what)
        if have and (resp.status_code != 206 or _range_start(resp) != have):
            raise _Restart()
        if progress:
            progress(have)
        with t.part.open("ab" if have else "wb") as out:
            try:
                for block in resp.iter_bytes(64 * 1024):
                    out.write(block)
                    t._digest.update(block)
                    have += len(block)
                    t._hashed = have
                    if progress:
                        progress(have)
            finally:
                out.flush()
                os.fsync(out.fileno())
    if t.size is not None and have < t.size:
        raise _ShortRead(f"connection closed at byte {have} of {t.size}")


def _range_start(resp: Any) -> int | None:
    value = resp.headers.get("Content-Range", "")  # "bytes 100-199/200"
    try:
        return int(value.split(" ", 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return None


def _verify_and_commit(t: Transfer) -> None:
    size = t.part.stat().st_size
    _sync_digest(t, size)
    digest = t._digest.hexdigest()
    if t.size is not None and size != t.size:
        t.part.unlink(missing_ok=True)
        raise ChecksumMismatch(f"{t.what}: got {size} bytes, expected {t.size}; deleted it",
                               hint="pull again")
    if t.sha256 is not None and digest != t.sha256:
        t.part.unlink(missing_ok=True)
        raise ChecksumMismatch(
            f"checksum mismatch for {t.what}: expected sha256 {t.sha256[:12]}…, got "
            f"{digest[:12]}…; the download was deleted",
            hint="pull again; if it repeats, the file on the server differs from the registry")
    t.sha256 = digest
    os.replace(t.part, t.dest)
