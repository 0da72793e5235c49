"""A GGUF header read from the Hub without downloading the weights: HTTP Range requests for
the first megabytes only (as the Hub's own GGUF viewer and gguf-parser do). What `catalog
--fits` needs to estimate memory before a pull."""

from __future__ import annotations

import io

from .download import Http
from .errors import NetworkError
from .gguf_info import GGUFInfo

BLOCK = 1 << 20  # bytes per request; a header with a 256K-token vocabulary is ~6 MiB


class RangeFile(io.RawIOBase):
    """A read-only, seekable view of a remote file, fetched a block at a time."""

    def __init__(self, http: Http, url: str, size: int, what: str) -> None:
        self.http, self.url, self.size, self.what = http, url, size, what
        self.pos = 0
        self.fetched = 0  # bytes transferred, for tests and -v

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), self.size - self.pos)
        if want <= 0:
            return 0
        end = self.pos + max(want, BLOCK) - 1
        headers = {**self.http.headers, "Range": f"bytes={self.pos}-{min(end, self.size - 1)}"}
        with self.http.client.stream("GET", self.url, headers=headers,
                                     timeout=self.http.timeout, follow_redirects=True) as resp:
            self.http.raise_for_status(resp, self.what)
            if resp.status_code != 206:  # it ignores Range: the whole file, maybe many GB
                raise NetworkError(f"{self.what}: the server does not answer Range requests")
            data = resp.read()
        got = min(want, len(data))
        buffer[:got] = data[:got]
        self.fetched += len(data)
        self.pos += got
        return got


def read(http: Http, url: str, size: int, name: str) -> GGUFInfo:
    """The validated header of the GGUF at ``url`` (``size`` bytes): CorruptModel when it is
    not a GGUF, the Hub's errors (NetworkError, NotFound, AuthError) as hub.py raises them."""
    from .gguf_file import read_info_from

    raw = RangeFile(http, url, size, name)
    return read_info_from(io.BufferedReader(raw, BLOCK), size, name)
