"""A conversation with a loaded model: history, system prompt, context trimming, transcripts.

Trimming policy (chat): when the next prompt would not leave ``reserve`` tokens for the reply,
the oldest user/assistant turns are dropped, the system prompt is kept, and the caller is told
how many turns went. A single message that cannot fit is an error, never silently cut.

Read-ahead (chat): while the user is at the prompt, a background thread (readahead.py)
evaluates what the next prompt will start with: the history so far and the template's opening
of the next user turn (with a system prompt, all of it at the start); then, as the message is
typed, its words up to the last space; and once typing pauses, the whole prompt the message
would make, so that Enter after a pause only samples. Everything else that uses the model
waits for that thread first (``settle()``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .datatypes import Result, Sampling
from .engine import PREFILL_PIECE, Model
from .errors import UsageError
from .formats import Delta, ReplyFormat, text_deltas
from .formats.detect import opens_reasoning
from .formats.messages import for_template
from .images import MEDIA_MARKER, Image, strip_marker, with_images
from .prefix_cache import PrefixCache, common_prefix
from .readahead import ReadAhead
from .reply import ReplySpec, ReplyStream, Think, reply_format, thinking_variables

Message = dict[str, Any]  # role, content; a user message may hold "images" (images.Image)
_NEXT = "\ue000llmrun-next-message\ue000"  # stands in for the message not typed yet
_WORDS = re.compile(r"(.*\S)\s+\S*$", re.DOTALL)  # a draft up to its last whitespace
WORD_DELAY_S = 0.05  # a burst of keystrokes costs one read-ahead of the finished words
PAUSE_S = 0.5  # typing paused this long: the draft may be the message; evaluate all of it


@dataclass
class Turn:
    """One generation: iterate ``deltas`` for what each piece adds (trace, answer, tool
    calls), or the Turn itself for the answer's text alone; ``result`` is complete
    afterwards."""

    deltas: Iterator[Delta]
    result: Result
    dropped: int = 0  # turns trimmed from the front to make room

    def __iter__(self) -> Iterator[str]:
        """The answer's text. Closing this iterator early ends the turn then and there (the
        generation stops, the reply so far joins the history), not whenever the Turn is
        collected."""
        try:
            for delta in self.deltas:
                if delta.content:
                    yield delta.content
        finally:
            close = getattr(self.deltas, "close", None)
            if close is not None:
                close()


@dataclass
class Session:
    model: Model
    sampling: Sampling
    system: str | None = None
    raw: bool = False
    trim: bool = True  # chat trims old turns; run fails instead
    messages: list[Message] = field(default_factory=list)
    last: Result | None = None  # the latest reply's numbers, for /stats
    think: Think = None  # thinking on/off or an effort level; None: the model's default
    budget: int | None = None  # at most this many tokens of reasoning trace
    reasoning: str | None = None  # the registry's reasoning format, over the template's
    prefix_cache: PrefixCache | None = None  # prompt prefixes kept on disk across runs
    model_sha: str = ""  # the model file's sha256 (the prefix cache's key)
    _ahead: ReadAhead | None = field(default=None, init=False, repr=False)
    _from_disk: int = field(default=0, init=False, repr=False)  # the opening, read ahead
    _fmt: tuple[ReplyFormat, dict[str, Any]] | None = field(default=None, init=False,
                                                            repr=False)

    def reply_format(self) -> tuple[ReplyFormat, dict[str, Any]]:
        """How the model writes replies, and the template variables that carry ``think``
        (raises UsageError when the model cannot do what ``think`` asks)."""
        if self._fmt is None:
            fmt = reply_format(self.model, self.reasoning)
            self._fmt = fmt, thinking_variables(fmt, self.think, self.model.name)
        return self._fmt

    def _render(self, messages: list[Message]) -> str:
        fmt, variables = self.reply_format()
        return self.model.format_chat(for_template(messages, fmt), variables=variables or None)

    @property
    def reserve(self) -> int:
        want = self.sampling.max_tokens or 256
        return max(1, min(want, self.model.n_ctx // 4))

    def _all_messages(self) -> list[Message]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages

    def _tokens(self, messages: list[Message] | None = None) -> list[int]:
        """The prompt for ``messages`` (default: the conversation as it stands)."""
        messages = self._all_messages() if messages is None else messages
        tokens: list[int] = self._engine(messages).tokenize(self._render(messages),
                                                             templated=True)
        return tokens

    def _engine(self, messages: list[Message]) -> Any:
        """The Model, or with images in ``messages`` the Model seen through its projector
        (engine/vision.py)."""
        found = _images(messages)
        if not found:
            return self.model
        from .engine.vision import VisionEngine

        return VisionEngine(self.model, found)

    @property
    def has_images(self) -> bool:
        return bool(_images(self.messages))

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
        """Start reading ahead: evaluate the next prompt's known beginning in the background
        (chat calls this before it waits for input), then whatever offer() adds. Purely a head
        start: a mismatch costs nothing but idle time, since generate() keeps only the prefix
        that really matches. The thread lives until settle() or abort(): call one before
        dropping the session, or it keeps the model loaded."""
        self.settle()
        if self.raw or self.has_images:  # (a guess would stop at the first image anyway)
            return
        if self.messages:  # from the second turn on, a turn tokenizes only its new text
            self.model.remember_prompt_pieces()
        self._ahead = ReadAhead(self._evaluate)
        self._ahead.offer((0.0, "the opening", self._job(self._all_messages(), "")))

    def _evaluate(self, tokens: list[int], cancelled: Callable[[], bool],
                  committed: bool) -> int:
        # a committed job goes in the batch-sized decodes generate() would make (the same
        # split on every run); a guess in small ones, so that it can be called off quickly
        if committed:  # the opening (the only committed job), the next prompt's head: from
            # the prefix cache or evaluated and kept, here while the user types, not at Enter
            done, _, disk = self._load_or_evaluate(tokens, cancelled)
            self._from_disk = disk
            return done
        return self.model.prefill(tokens, cancelled, PREFILL_PIECE)

    def offer(self, draft: str) -> None:
        """The message as typed so far (chat's keyboard handler calls this on every change):
        read ahead into its finished words now, and into the whole prompt once typing pauses."""
        if self._ahead is None or not self.model.can_roll_back:
            return  # (a recurrent model could not take back a guess once the text changes)
        text = draft.strip()
        history = self._all_messages()
        if not text or text.startswith(("/", '"""')):  # a command, or no message yet
            self._ahead.offer((0.0, "the opening", self._job(history, "")))
            return
        words = _WORDS.match(draft.lstrip())
        self._ahead.offer(
            (WORD_DELAY_S, "the typed words", self._job(history, words.group(1) if words else "")),
            (PAUSE_S, "the whole message", self._job(history, text, whole=True)))

    def _job(self, history: list[Message], draft: str,
             whole: bool = False) -> Callable[[], list[int]]:
        """The tokens to read ahead for ``draft``, computed later in the read-ahead thread:
        with ``whole``, the complete prompt ask(draft) would make; else the prompt's opening
        and the draft's finished words. Nothing when it would not fit: ask() trims first."""
        def tokens() -> list[int]:
            if whole:
                found = self._tokens([*history, {"role": "user", "content": draft}])
            else:
                found = self._opening(history, draft)
                if not draft and not self.model.can_roll_back:  # the last token before the
                    found = found[:-1]  # message may merge with its start: a cache that cannot
                    # drop it would have to start again (one that can drops it cheaply)
            return found if len(found) + self.reserve <= self.model.n_ctx else []
        return tokens

    def wait_read_ahead(self) -> None:
        """Wait until everything offered so far is read ahead, as if the user paused (tests and
        benchmarks)."""
        if self._ahead is not None:
            self._ahead.wait_idle()
            self.model.wait_prompt_pieces()

    def abort(self) -> None:
        """Stop reading ahead at once, the opening too (Ctrl-C, the end of the chat): returns
        when the decode in progress is done."""
        if self._ahead is not None:
            self._ahead.abort()
            self._ahead = None

    def settle(self) -> None:
        """Stop reading ahead: guesses not started yet are dropped, a running one is called off
        between pieces, and the opening offered by prepare() is finished. Call it before
        anything else uses the model."""
        if self._ahead is not None:
            self._ahead.finish()
            self._ahead = None

    def _opening(self, history: list[Message] | None = None, draft: str = "") -> list[int]:
        """The tokens the next prompt starts with: everything before the next user message
        (a template may place the system prompt inside the first user turn), then ``draft``."""
        history = self._all_messages() if history is None else history
        text = self._render([*history, {"role": "user", "content": _NEXT}])
        cut = text.find(_NEXT)
        return self.model.tokenize(text[:cut] + draft, templated=True) if cut > 0 else []

    def context_used(self) -> int:
        """Tokens the conversation takes up before the next message."""
        self.settle()
        return len(self._opening()) if self.messages or self.system else 0

    def ask(self, text: str, images: list[Image] | None = None) -> Turn:
        """Add a user message (with ``images`` before its text, for a model with a vision
        projector) and start the reply (appended to history when complete)."""
        self.settle()
        result = self.last = Result()
        if images and self.model.projector is None:
            raise UsageError(f"{self.model.name} has no vision projector",
                         hint="use a vision model, e.g. `llmrun run gemma3:4b --image FILE "
                              "\"Describe it\"`")
        if images and self.raw:
            raise UsageError("images need the chat template: drop --raw")
        text = strip_marker(text)  # typed in, the marker would stand for an image
        if self.raw:
            tokens = self.model.tokenize(text, templated=False)
            self.model.check_fits(len(tokens))  # before any of it is evaluated
            head, sep, _ = text.rpartition("\n\n")  # a script's fixed text, then its input
            cut = common_prefix(self.model.tokenize(head + sep, templated=False) if sep else [],
                                tokens)
            ahead = self._head_first(tokens, cut, result)
            pieces = text_deltas(self.model.generate(tokens, self.sampling, result))
            return Turn(_booked(pieces, result, ahead), result)
        fmt, _ = self.reply_format()
        message: Message = {"role": "user", "content": text}
        if images:
            message = {"role": "user", "content": with_images(text, len(images)),
                       "images": list(images)}
        self.messages.append(message)
        try:
            tokens, dropped = self._fit()
            self.model.check_fits(len(tokens))
        except BaseException:
            self.messages.pop()
            raise
        prompt = self._render(self._all_messages())
        engine = self._engine(self._all_messages())
        ahead = (0, 0.0) if engine is not self.model else self._head_first(
            tokens, common_prefix(self._opening(self._all_messages()[:-1]), tokens), result)
        sampling = Sampling(**{**self.sampling.__dict__,
                               "stop": self.sampling.stop + self.model.chat_stops()})
        spec = ReplySpec(fmt=fmt, in_reasoning=opens_reasoning(prompt, fmt),
                         thinking=self.think is not False, budget=self.budget)
        stream = ReplyStream(engine, prompt, tokens, sampling, spec, result)
        return Turn(_booked(self._record(iter(stream), result), result, ahead), result,
                    dropped)

    def _record(self, deltas: Iterator[Delta], result: Result) -> Iterator[Delta]:
        try:
            yield from deltas
        finally:  # a reply stopped by Ctrl-C is kept as far as it got; its trace is not
            # kept (templates drop past traces; a trace is never fed back as the answer)
            self.messages.append({"role": "assistant", "content": result.text.strip()})

    # ---- the on-disk prefix cache (prefix_cache.py) -------------------------------------
    def _cache_key(self) -> str:
        from .prefix_cache import cache_key

        return cache_key({"model": self.model_sha, **self.model.cache_fields()})

    def _head_first(self, tokens: list[int], head: int, result: Result) -> tuple[int, float]:
        """The prompt's reusable head (``head`` tokens: the system prompt and the template
        before the user's message; with --raw, the text up to its last paragraph break) is
        loaded from the on-disk prefix cache when it is there, else evaluated on its own before
        the rest. Either way the rest is evaluated in the same decodes, so a cached run gives
        exactly the tokens an uncached one gives (llama.cpp's numbers depend slightly on how a
        prompt is split into decodes). Returns (tokens evaluated here, seconds) for the
        turn's numbers."""
        from .prefix_cache import MIN_TOKENS

        read_ahead, self._from_disk = self._from_disk, 0
        if head < MIN_TOKENS or head >= len(tokens):
            return 0, 0.0
        if read_ahead and common_prefix(
                list(self.model.llama.input_ids[: self.model.llama.n_tokens]), tokens) >= head:
            result.prompt_from_disk = min(head, read_ahead)  # the read-ahead loaded it
        done, took, disk = self._load_or_evaluate(tokens[:head])
        if disk:
            result.prompt_from_disk = head
        return done, took

    def _load_or_evaluate(self, head: list[int], cancelled: Callable[[], bool] | None = None
                          ) -> tuple[int, float, int]:
        """``head`` into the cache: loaded from the on-disk prefix cache when it is there, else
        evaluated and kept (_keep). Returns (tokens evaluated, seconds, tokens from disk)."""
        import time

        from .prefix_cache import MIN_TOKENS

        llama = self.model.llama
        held = common_prefix(list(llama.input_ids[: llama.n_tokens]), head)
        if (self.prefix_cache is not None and self.model_sha and held < len(head)
                and len(head) >= MIN_TOKENS):
            hit = self.prefix_cache.lookup(self._cache_key(), head)
            if hit is not None and hit.usable >= len(head):
                if self.model.load_prefix_state(hit.tokens, hit.payload, len(head)):
                    return 0, 0.0, len(head)
                hit.path.unlink(missing_ok=True)  # llama.cpp refused it: never again
        start = time.perf_counter()
        done = self.model.prefill(head, cancelled)
        took = time.perf_counter() - start if done else 0.0
        if done:
            self._keep(head)  # now, before anything moves a sliding window on
        return done, took, 0

    def _keep(self, head: list[int]) -> None:
        """The state of ``head`` (all the model's cache holds now): written to the prefix
        cache, and with a sliding-window model also loaded back, cache or not. A loaded
        sliding-window cache holds only the window's cells, laid out anew, and llama.cpp's
        threads then add up attention in another order: continuing from the loaded state in
        every run keeps cached and uncached runs token for token the same. Never fails the
        answer."""
        from .prefix_cache import MIN_TOKENS

        llama = self.model.llama
        writing = self.prefix_cache is not None and bool(self.model_sha)
        if len(head) < MIN_TOKENS or not (writing or self.model.has_swa) or (
                llama.n_tokens != len(head)
                or list(llama.input_ids[: llama.n_tokens]) != head):
            return
        payload = self.model.prefix_state(len(head))
        if payload is None:
            return
        if self.model.has_swa and not self.model.load_prefix_state(head, payload, len(head)):
            self.model.prefill(head)  # (refused: evaluated again, as without a cache)
        if not writing or self.prefix_cache is None:
            return
        try:
            key = self._cache_key()
            if not self.prefix_cache.covered(key, head):
                self.prefix_cache.store(key, head, payload)
        except OSError as exc:  # a full disk or a read-only home: the cache is an extra
            import logging

            logging.getLogger("llmrun").debug("prefix cache not written: %s", exc)

    def remember_prefix(self) -> None:
        """At the end of a conversation (chat): keep the conversation so far, up to the
        opening of the next user turn, for `chat --continue`. (A prompt's head is kept as soon
        as it is evaluated, in _head_first.)"""
        if self.prefix_cache is None or not self.model_sha or not self.trim or self.raw or (
                not self.messages) or self.has_images:
            return
        self.settle()
        head = self._opening()
        llama = self.model.llama
        if common_prefix(list(llama.input_ids[: llama.n_tokens]), head) < llama.n_tokens and (
                not self.model.can_keep(common_prefix(
                    list(llama.input_ids[: llama.n_tokens]), head))):
            return  # a sliding window moved past what the next turn would keep
        self.model.prefill(head)
        self._keep(head)

    def clear(self) -> None:
        self.settle()
        self.messages.clear()

    def save(self, path: Path) -> None:
        """The conversation as JSON; an image is kept as the text "[image]" (its pixels are
        not saved)."""
        messages = [{"role": m["role"], "content": m["content"].replace(
            MEDIA_MARKER, "[image]")} for m in self.messages]
        data: dict[str, Any] = {"model": self.model.name, "system": self.system,
                                "messages": messages}
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


def _images(messages: list[Message]) -> list[Image]:
    """The images of ``messages``, in the order the prompt shows them."""
    return [image for m in messages for image in m.get("images") or ()]


def _booked(deltas: Iterator[Delta], result: Result, ahead: tuple[int, float]
            ) -> Iterator[Delta]:
    """The turn's deltas; at the end, the head evaluated before the rest counts in the
    prompt's numbers too."""
    try:
        yield from deltas
    finally:
        result.prompt_evaluated += ahead[0]
        result.prompt_s += ahead[1]
