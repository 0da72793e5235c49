"""Which model files running llmrun processes have loaded.

A process that loads a model holds a shared flock(2) on each of its files for as long as the
model stays loaded; `llmrun rm` and `llmrun prune` ask for an exclusive lock without waiting and
leave the files alone when they cannot get it. The lock lives on the file itself (advisory, so
llama.cpp's mmap and other tools are unaffected), and the kernel drops it when the process
exits or is killed, so there is nothing to go stale and nothing to clean up.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable, Iterator
from pathlib import Path


class Hold:
    """Shared locks on a loaded model's files; ``release()`` (or process exit) drops them."""

    def __init__(self, paths: Iterable[Path]) -> None:
        self._fds: list[int] = []
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue  # the load itself reports a missing or unreadable file
            try:  # blocks only while an `rm` is deciding, which takes milliseconds
                fcntl.flock(fd, fcntl.LOCK_SH)
            except OSError:  # a filesystem without flock: nothing to announce with
                os.close(fd)
                continue
            self._fds.append(fd)

    def release(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the only descriptor drops the lock

    def __del__(self) -> None:
        self.release()


@contextlib.contextmanager
def exclusive(paths: Iterable[Path]) -> Iterator[list[Path]]:
    """Lock ``paths`` exclusively without waiting, for as long as the block runs (deleting
    them inside it is safe: nobody can start using them meanwhile). Yields the paths that are
    in use by another process, which were not locked; the caller must leave those alone."""
    busy: list[Path] = []
    fds: list[int] = []
    try:
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                busy.append(path)
                continue
            except OSError:
                pass  # no flock here: nobody else can hold one either
            fds.append(fd)
        yield busy
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def holders(path: Path) -> list[int]:
    """Process ids holding a lock on ``path``, from /proc/locks (Linux); [] elsewhere."""
    try:
        st = os.stat(path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  READ  1234 fd:01:5678 0 EOF" (a blocked waiter has "->")
        if "->" not in fields and len(fields) >= 6 and fields[5] == want:
            with contextlib.suppress(ValueError):
                pids.append(int(fields[4]))
    return sorted(set(pids) - {os.getpid()})
