"""A conversation with a loaded model: history, system prompt, context trimming, transcripts.

Trimming policy (chat): when the next prompt would not leave ``reserve`` tokens for the reply,
the oldest user/assistant turns are dropped, the system prompt is kept, and the caller is told
how many turns went. A single message that cannot fit is an error, never silently cut.

Prefill (chat): while the user types, ``prepare()`` evaluates in a background thread what the
next prompt will start with: the history so far and the template's opening of the next user
turn (with a system prompt, all of it at the start). Only the new message is left to evaluate
after Enter. Everything else that uses the model waits for that thread first (``settle()``).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .engine import Model, Result, Sampling
from .errors import ContextOverflow, LlmrunError, UsageError

Message = dict[str, str]
_NEXT = "\ue000llmrun-next-message\ue000"  # stands in for the message not typed yet


@dataclass
class Turn:
    """One generation: iterate it for text pieces; ``result`` is complete afterwards."""

    pieces: Iterator[str]
    result: Result
    dropped: int = 0  # turns trimmed from the front to make room

    def __iter__(self) -> Iterator[str]:
        return self.pieces


@dataclass
class Session:
    model: Model
    sampling: Sampling
    system: str | None = None
    raw: bool = False
    trim: bool = True  # chat trims old turns; run fails instead
    messages: list[Message] = field(default_factory=list)
    last: Result | None = None  # the latest reply's numbers, for /stats
    _prefill: threading.Thread | None = field(default=None, init=False, repr=False)

    @property
    def reserve(self) -> int:
        want = self.sampling.max_tokens or 256
        return max(1, min(want, self.model.n_ctx // 4))

    def _all_messages(self) -> list[Message]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages

    def _tokens(self) -> list[int]:
        text = self.model.format_chat(self._all_messages())
        return self.model.tokenize(text, templated=True)

    def _fit(self) -> tuple[list[int], int]:
        dropped = 0
        tokens = self._tokens()
        while self.trim and len(tokens) + self.reserve > self.model.n_ctx and len(
                self.messages) > 1:
            # drop the oldest exchange (user + assistant), keep the system prompt
            cut = 2 if len(self.messages) > 2 and self.messages[1]["role"] == "assistant" else 1
            del self.messages[:cut]
            dropped += 1
            tokens = self._tokens()
        return tokens, dropped

    def prepare(self) -> None:
        """Start evaluating the next prompt's known beginning in the background (chat calls
        this before it waits for input). Purely a head start: a mismatch costs nothing but the
        idle time, since generate() keeps only the prefix that really matches."""
        self.settle()
        if self.raw:
            return
        try:
            # the last token before the message may merge with its first characters
            tokens = self._opening()[:-1]
        except LlmrunError:
            return  # the real ask() reports template problems
        if not tokens or len(tokens) + self.reserve > self.model.n_ctx:
            return  # empty, or the next ask() trims the history first
        self._prefill = threading.Thread(target=self._run_prefill, args=(tokens,),
                                         name="llmrun-prefill")
        self._prefill.start()

    def _run_prefill(self, tokens: list[int]) -> None:
        try:
            self.model.prefill(tokens)
        except Exception as exc:  # an optimisation only: the next ask() evaluates it all
            logging.getLogger("llmrun").debug("prefill failed: %s", exc)

    def settle(self) -> None:
        """Wait for a background prefill; call before anything else uses the model."""
        if self._prefill is not None:
            self._prefill.join()
            self._prefill = None

    def _opening(self) -> list[int]:
        """The tokens the next prompt starts with: everything before the next user message
        (a template may place the system prompt inside the first user turn)."""
        text = self.model.format_chat([*self._all_messages(), {"role": "user", "content": _NEXT}])
        cut = text.find(_NEXT)
        return self.model.tokenize(text[:cut], templated=True) if cut > 0 else []

    def context_used(self) -> int:
        """Tokens the conversation takes up before the next message."""
        self.settle()
        return len(self._opening()) if self.messages or self.system else 0

    def ask(self, text: str) -> Turn:
        """Add a user message and start the reply (appended to history when complete)."""
        self.settle()
        result = self.last = Result()
        if self.raw:
            tokens = self.model.tokenize(text, templated=False)
            return Turn(self.model.generate(tokens, self.sampling, result), result)
        self.messages.append({"role": "user", "content": text})
        try:
            tokens, dropped = self._fit()
            self.model.check_fits(len(tokens), self.sampling.max_tokens)
        except ContextOverflow:
            self.messages.pop()
            raise
        sampling = Sampling(**{**self.sampling.__dict__,
                               "stop": self.sampling.stop + self.model.chat_stops()})
        return Turn(self._record(self.model.generate(tokens, sampling, result), result),
                    result, dropped)

    def _record(self, pieces: Iterator[str], result: Result) -> Iterator[str]:
        try:
            yield from pieces
        finally:  # a reply stopped by Ctrl-C is kept as far as it got
            self.messages.append({"role": "assistant", "content": result.text.strip()})

    def clear(self) -> None:
        self.settle()
        self.messages.clear()

    def save(self, path: Path) -> None:
        data: dict[str, Any] = {"model": self.model.name, "system": self.system,
                                "messages": self.messages}
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    def load(self, path: Path) -> None:
        self.system, self.messages = load_transcript(path, self.system)


def load_transcript(path: Path, system: str | None) -> tuple[str | None, list[Message]]:
    """Read a transcript written by /save: (system prompt, messages)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        messages = data["messages"]
        ok = all(isinstance(m, dict) and m.get("role") in ("user", "assistant")
                 and isinstance(m.get("content"), str) for m in messages)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"cannot load transcript {path}: {exc}") from None
    if not ok:
        raise UsageError(f"{path} is not an llmrun transcript")
    return (data.get("system") or system,
            [{"role": m["role"], "content": m["content"]} for m in messages])
