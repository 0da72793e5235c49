"""Token bytes to streamed text in O(1) per token: an incremental UTF-8 decoder (a character
split across byte tokens is held until it is whole) and stop strings matched on the new text
only (the held-back tail is never longer than the longest stop string).

llama-cpp-python's own streaming re-detokenizes the growing tail of the output while its
bytes are not valid UTF-8, so a model writing byte tokens (SentencePiece byte fallback:
Chinese or emoji from Llama 2, Mistral, TinyLlama) cost O(N^2): 512 tokens took 40x what
128 did. This does not.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class TextStream:
    """Feed each token's bytes; get the text that is safe to show now."""

    def __init__(self, stops: Sequence[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = [s for s in stops if s]
        self._keep = max((len(s) for s in self._stops), default=1) - 1
        self._held = ""  # decoded text that may be the start of a stop string
        self.stopped = False  # a stop string was found: nothing more comes out

    def add(self, data: bytes) -> str:
        """The text that ``data`` completes, minus anything that may start a stop string."""
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(data)
        if not self._stops:
            self._held = ""
            return text
        cut = self._first_stop(text)
        if cut is not None:
            self.stopped, self._held = True, ""
            return text[:cut]
        hold = self._partial(text)
        self._held = text[len(text) - hold:] if hold else ""
        return text[: len(text) - hold]

    def flush(self) -> str:
        """The end of the output: what was held back (a partial character becomes U+FFFD)."""
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        cut = self._first_stop(text)
        if cut is not None:
            self.stopped = True
            return text[:cut]
        return text

    def _first_stop(self, text: str) -> int | None:
        found = [i for i in (text.find(s) for s in self._stops) if i >= 0]
        return min(found) if found else None

    def _partial(self, text: str) -> int:
        """Length of the longest end of ``text`` that is the start of some stop string."""
        for n in range(min(self._keep, len(text)), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self._stops):
                return n
        return 0
