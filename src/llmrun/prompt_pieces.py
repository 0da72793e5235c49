"""Tokenizing chat prompts piece by piece, remembering the pieces.

A chat prompt is the whole conversation, rendered and tokenized again on every turn (and on
every request to `serve`). llama.cpp's tokenizer, parsing special tokens, costs ~8 µs a token
on 2 cores: 54 ms for a 7k-token conversation and 0.3 s for 28k, paid again at every Enter.

llama.cpp first cuts the text at every special token it finds (longest first), then tokenizes
each stretch between them on its own. So a prompt cut just before a template marker (a special
token such as ``<start_of_turn>``) tokenizes to the concatenation of its pieces' tokens, and a
piece seen before need not be tokenized again: only the new turn's pieces are. A prompt's last
piece is not remembered: it is where chat's read-ahead sees the message grow keystroke by
keystroke, and remembering every draft would push the conversation out of the cache.

That holds only where no special token can reach across the cut. A special token at least as
long as the marker, whose text runs from before the marker into it or starts inside it, would be
claimed first in the whole text and cut apart in pieces; a marker that strips the whitespace to
its left (LSTRIP) would reach into the piece before. Such markers are not used
(``usable_markers``).
"""

from __future__ import annotations

import itertools
import re
import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable

Tokenize = Callable[[str, bool], list[int]]  # (text, add_bos) -> tokens, special tokens parsed
MAX_CHARS = 1 << 22  # text remembered (4 Mi characters, ~1M tokens at 4 bytes), LRU


def straddles(token: str, marker: str) -> bool:
    """Whether ``token`` could start before a cut made at ``marker`` and end after it: some
    proper suffix of it begins the way the marker does."""
    k = token.find(marker[0], 1)
    while k > 0:
        n = min(len(marker), len(token) - k)
        if token[k : k + n] == marker[:n]:
            return True
        k = token.find(marker[0], k + 1)
    return False


def usable_markers(markers: Iterable[str], specials: Iterable[tuple[str, bool]]) -> list[str]:
    """The markers a prompt can be cut at without changing its tokens. ``specials`` is every
    special token of the vocabulary as (text, strips whitespace to its left)."""
    specials = list(specials)
    lstrip = {text for text, left in specials if left}
    usable = []
    for marker in set(markers):
        if not marker or marker in lstrip:
            continue
        # a token claimed before the marker (as long or longer) that starts before the cut and
        # reaches into it, or starts inside the marker (the marker's head would then join the
        # text before the cut in the whole prompt, but start a piece of its own when cut)
        if any(len(text) >= len(marker) and text != marker
               and (straddles(text, marker) or straddles(marker, text))
               for text, _ in specials):
            continue
        usable.append(marker)
    return sorted(usable, key=len, reverse=True)


class PieceTokenizer:
    """Tokenizes a prompt as the concatenation of its pieces, each cut just before a marker,
    and remembers each piece's tokens. Thread-safe (chat's read-ahead thread uses it too)."""

    def __init__(self, tokenize: Tokenize, markers: list[str], max_chars: int = MAX_CHARS):
        if not markers:
            raise ValueError("no markers to cut at")
        self._tokenize = tokenize
        self._cut = re.compile("|".join(re.escape(m) for m in markers))
        self._max_chars = max_chars
        self._cache: OrderedDict[tuple[bool, str], array[int]] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()
        self.tokenized = 0  # characters actually handed to the tokenizer (tests read it)

    def pieces(self, text: str) -> list[str]:
        starts = [m.start() for m in self._cut.finditer(text) if m.start() > 0]
        bounds = [0, *starts, len(text)]
        return [text[a:b] for a, b in itertools.pairwise(bounds) if b > a]

    def __call__(self, text: str, add_bos: bool) -> list[int]:
        if not text:
            return list(self._tokenize(text, add_bos))
        out: list[int] = []
        with self._lock:
            pieces = self.pieces(text)
            for i, piece in enumerate(pieces):
                key = (add_bos and i == 0, piece)
                tokens = self._cache.get(key)
                if tokens is None:
                    tokens = array("i", self._tokenize(piece, key[0]))
                    self.tokenized += len(piece)
                    if i < len(pieces) - 1:  # the last piece may be a draft still growing
                        self._keep(key, tokens)
                else:
                    self._cache.move_to_end(key)
                out.extend(tokens)
        return out

    def _keep(self, key: tuple[bool, str], tokens: array[int]) -> None:
        if len(key[1]) > self._max_chars:
            return
        self._cache[key] = tokens
        self._chars += len(key[1])
        while self._chars > self._max_chars:
            (_, old), _ = self._cache.popitem(last=False)
            self._chars -= len(old)


# a conversation to find the template's markers in, and to check the cut against
PROBE = [{"role": "user", "content": "Hello there."},
         {"role": "assistant", "content": "Hi! How can I help?"},
         {"role": "user", "content": "Tell me more,\n\n  please."}]


def build(tokenize: Tokenize, specials: dict[int, tuple[str, bool]],
          probe: str) -> PieceTokenizer | None:
    """A PieceTokenizer for prompts made like ``probe`` (PROBE rendered by the chat template),
    cut at the special tokens the template writes; None when none of them can be cut at, or
    when cutting changes the probe's tokens. ``specials``: token id -> (text, LSTRIP)."""
    whole = tokenize(probe, True)
    markers = usable_markers({specials[t][0] for t in whole if t in specials},
                             specials.values())
    if not markers:
        return None
    pieces = PieceTokenizer(tokenize, markers)
    if any(pieces(probe, bos) != tokenize(probe, bos) for bos in (True, False)):
        return None
    return pieces
