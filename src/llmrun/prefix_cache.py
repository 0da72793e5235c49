"""A prompt prefix evaluated once, reused across invocations (`run` in a shell loop, `chat
--continue`): the KV state of a prefix is kept on disk and the next prompt that starts the
same way loads it and evaluates only the rest.

Trust nothing on disk. An entry is one file: a magic line, a JSON header (the prefix's tokens,
the payload's size and sha256, the key) and llama.cpp's sequence state. It is used only when
its key matches (the model file's sha256, every option that changes the KV cache, and the
llama.cpp build), its size and sha256 check out and llama.cpp accepts it; anything else is
deleted and replaced, never loaded. Entries are written to a temporary file and renamed, so two
processes writing the same prefix leave one whole file. The directory is bounded: least
recently used entries go first (a hit touches its file).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAGIC = b"LLMRUN-KV-1\n"
MAX_HEADER = 1 << 22  # a header longer than this is not ours
# Below this many tokens, loading a prefix does not pay (bench/bench_prefix_cache.py)
MIN_TOKENS = 64


def cache_key(fields: Mapping[str, Any]) -> str:
    """What an entry is valid for: the model's sha256, the KV-changing load options, the
    build. Any difference is a different key, so a foreign entry is never even looked at."""
    text = json.dumps(dict(fields), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def common_prefix(a: Sequence[int] | Any, b: Sequence[int]) -> int:
    """How many tokens ``a`` and ``b`` share from the start (``a`` may be a numpy array:
    llama-cpp-python's input_ids)."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass
class Hit:
    tokens: list[int]  # the entry's prefix
    usable: int  # how many of them the prompt shares
    payload: bytes
    path: Path


@dataclass
class PrefixCache:
    root: Path  # $LLMRUN_HOME/cache/prefix
    limit: int  # bytes the directory may hold

    def _dir(self, key: str) -> Path:
        return self.root / key

    def lookup(self, key: str, tokens: Sequence[int]) -> Hit | None:
        """The entry sharing the longest prefix (at least MIN_TOKENS) with ``tokens``, its
        payload checked; a damaged entry is deleted on the way."""
        best: tuple[int, Path, list[int]] | None = None
        for path in self._entries(key):
            header = _read_header(path)
            if header is None:
                _unlink(path)
                continue
            shared = common_prefix(header["tokens"], tokens)
            if shared >= MIN_TOKENS and (best is None or (shared, -len(header["tokens"])) > (
                    best[0], -len(best[2]))):  # on a tie, the entry with nothing to cut
                best = (shared, path, header["tokens"])
        if best is None:
            return None
        shared, path, prefix = best
        payload = _read_payload(path, key)
        if payload is None:
            _unlink(path)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used
        return Hit(prefix, shared, payload, path)

    def covered(self, key: str, tokens: Sequence[int]) -> bool:
        """Whether an entry already holds exactly this prefix."""
        return (self._dir(key) / _name(tokens)).is_file()

    def store(self, key: str, tokens: Sequence[int], payload: bytes) -> Path:
        """Write an entry (atomically) and keep the directory within its limit."""
        folder = self._dir(key)
        folder.mkdir(parents=True, exist_ok=True)
        header = json.dumps({"key": key, "tokens": list(tokens), "size": len(payload),
                             "sha256": hashlib.sha256(payload).hexdigest()}).encode()
        target = folder / _name(tokens)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".kv")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(MAGIC + len(header).to_bytes(8, "little") + header + payload)
            os.replace(tmp, target)
        except BaseException:
            _unlink(Path(tmp))
            raise
        self.prune()
        return target

    def entries(self) -> list[dict[str, Any]]:
        """Every entry: key, path, bytes, tokens, last used (for `llmrun cache ls`)."""
        found = []
        if self.root.is_dir():
            for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
                for path in self._entries(folder.name):
                    header = _read_header(path)
                    with contextlib.suppress(OSError):
                        st = path.stat()
                        found.append({"key": folder.name, "path": str(path), "size": st.st_size,
                                      "tokens": len(header["tokens"]) if header else None,
                                      "used": st.st_mtime})
        return found

    def prune(self, limit: int | None = None) -> list[Path]:
        """Delete least recently used entries (and stale temporary files) until the
        directory holds at most ``limit`` bytes (default: the cache's own limit)."""
        limit = self.limit if limit is None else limit
        files: list[tuple[float, int, Path]] = []
        if not self.root.is_dir():
            return []
        removed = []
        for path in self.root.glob("*/*"):
            with contextlib.suppress(OSError):
                st = path.stat()
                if path.name.startswith(".tmp-"):
                    import time

                    if time.time() - st.st_mtime > 3600:  # a writer that died long ago
                        _unlink(path)
                        removed.append(path)
                    continue
                files.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= limit:
                break
            _unlink(path)
            removed.append(path)
            total -= size
        return removed

    def _entries(self, key: str) -> list[Path]:
        try:  # (an unreadable cache is an empty one: the cache is an extra, never an error)
            return [p for p in self._dir(key).iterdir()
                    if p.suffix == ".kv" and not p.name.startswith(".")]
        except OSError:
            return []


def _name(tokens: Sequence[int]) -> str:
    return hashlib.sha256(json.dumps(list(tokens)).encode()).hexdigest()[:40] + ".kv"


def _read_header(path: Path) -> dict[str, Any] | None:
    try:
        with path.open("rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                return None
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size <= MAX_HEADER:
                return None
            header = json.loads(f.read(size))
    except (OSError, ValueError):
        return None
    tokens = header.get("tokens") if isinstance(header, dict) else None
    if not (isinstance(tokens, list) and all(isinstance(t, int) for t in tokens)
            and isinstance(header.get("size"), int) and isinstance(header.get("sha256"), str)):
        return None
    return dict(header)


def _read_payload(path: Path, key: str) -> bytes | None:
    header = _read_header(path)
    if header is None or header.get("key") != key:
        return None
    try:
        with path.open("rb") as f:
            f.seek(len(MAGIC))
            f.seek(len(MAGIC) + 8 + int.from_bytes(f.read(8), "little"))
            payload = f.read(header["size"] + 1)
    except OSError:
        return None
    if len(payload) != header["size"] or (
            hashlib.sha256(payload).hexdigest() != header["sha256"]):
        return None
    return payload


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def file_sha256(path: Path, memo: Path) -> str:
    """A model file's sha256, computed once per version of the file (remembered in ``memo``
    by device, inode, size and modification time)."""
    st = path.stat()
    ident = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if isinstance(known.get(ident), str):
        return str(known[ident])
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    known = {k: v for k, v in list(known.items())[-63:]}  # a few files' worth
    known[ident] = digest.hexdigest()
    with contextlib.suppress(OSError):
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, memo)
    return str(known[ident])
