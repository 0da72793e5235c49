"""One loaded model and the thread that owns it: loading, templating, tokenizing and
generating all happen on that thread, one request at a time, so a llama context is never used
from two threads (R1). Every call into llama.cpp also holds one process-wide FIFO lock, so with
several models loaded their workers take turns token by token rather than run natively at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ..datatypes import LoadOptions, Result, Sampling
from ..errors import LlmrunError, ModelError
from ..formats import Delta

if TYPE_CHECKING:
    from ..embeddings import Embedded, EmbedFacts

log = logging.getLogger("llmrun.server")


class _FairLock:
    """A FIFO (ticket) lock: with several models loaded, their workers take turns token by
    token instead of one starving the other."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next = self._serving = 0

    def __enter__(self) -> None:
        with self._cond:
            ticket, self._next = self._next, self._next + 1
            self._cond.wait_for(lambda: self._serving == ticket)

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._serving += 1
            self._cond.notify_all()


_NATIVE = _FairLock()  # held for every call into llama.cpp: never two threads at once


class Engine(Protocol):
    """What the pool needs from a loaded model (engine.Model; fakes in tests)."""

    n_ctx: int

    def format_chat(self, messages: list[dict[str, Any]], *,
                    tools: list[dict[str, Any]] | None = None,
                    variables: dict[str, Any] | None = None) -> str: ...
    def template_text(self) -> str | None: ...
    def tokenize(self, text: str, *, templated: bool) -> list[int]: ...
    def chat_stops(self) -> list[str]: ...
    def check_fits(self, n_prompt: int) -> None: ...
    def generate(self, tokens: list[int], sampling: Sampling,
                 result: Result | None = None) -> Iterator[str]: ...


class EmbedEngine(Protocol):
    """A model loaded for embeddings (engine.embed.Embedder, or child.ChildEngine of one)."""

    n_ctx: int
    dim: int

    def embed(self, texts: list[str], *, truncate: bool = False) -> Embedded: ...


@dataclass(frozen=True)
class ModelSpec:
    name: str  # canonical name: the pool's key and the API's model id
    path: Path
    chat_format: str | None = None
    defaults: dict[str, float | int] = field(default_factory=dict)  # registry defaults
    ctx_default: int | None = None  # the registry's preferred context (LoadOptions)
    reasoning: str | None = None  # the registry's reasoning format, over the template's
    chat_template: str | None = None  # imported with the model, over the GGUF's
    embed: EmbedFacts | None = None  # the registry's word on embedding with it
    mode: Literal["generate", "embed"] = "generate"  # embed: loaded for /v1/embeddings
    mmproj: Path | None = None  # the vision projector pulled with it, loaded with it

    @property
    def key(self) -> str:
        """The pool's key: a model loaded for embeddings is a load of its own."""
        return self.name if self.mode == "generate" else f"{self.name} (embeddings)"


Loader = Callable[[ModelSpec], Engine]
# runs on the worker thread: renders and tokenizes, then returns the reply's pieces (Deltas),
# filling the Result as they go
Prepare = Callable[[Engine, Result], Iterator[Delta]]


def engine_loader(opts: LoadOptions, *, debug: bool = False, isolate: bool = True,
                  parallel: int = 1) -> Loader:
    """Load models with llmrun's engine (called in the worker thread that will own them): in a
    child process each (child.py), or with ``isolate=False`` in this process. With
    ``parallel`` > 1 the child decodes that many requests together (engine/batch.py); images
    are refused then (image_parts.py), so a vision projector is loaded only with 1. With 0
    (auto) a model with a projector gets 1, others as many as memory allows (child.py)."""

    def load(spec: ModelSpec) -> Engine:
        from dataclasses import replace

        opts_for = replace(opts, ctx_default=spec.ctx_default)
        if spec.mode == "embed":
            return _embed_loader(spec, opts_for, debug=debug, isolate=isolate)
        n = 1 if parallel == 0 and spec.mmproj is not None else parallel
        mmproj = spec.mmproj if n == 1 else None
        if isolate:
            from .child import ChildEngine

            return ChildEngine(spec.path, opts_for, chat_format=spec.chat_format, debug=debug,
                               name=spec.name, parallel=n,
                               chat_template=spec.chat_template, mmproj=mmproj)
        from ..engine import Model

        return Model(spec.path, opts_for, chat_format=spec.chat_format, debug=debug,
                     name=spec.name, chat_template=spec.chat_template, mmproj=mmproj)

    return load


def _embed_loader(spec: ModelSpec, opts: LoadOptions, *, debug: bool, isolate: bool) -> Engine:
    """A model loaded in embedding mode (engine/embed.py), in a child process or here."""
    from typing import cast

    from ..embeddings import EmbedFacts

    facts = spec.embed or EmbedFacts()
    if isolate:
        from .child import ChildEngine

        return ChildEngine(spec.path, opts, chat_format=None, debug=debug, name=spec.name,
                           embed=facts.as_dict())
    from ..engine.embed import Embedder

    return cast(Engine, Embedder(spec.path, opts, facts=facts, debug=debug, name=spec.name))


class Busy(Exception):
    """The queue is full (or the server is stopping); answer 503 with Retry-After."""


@dataclass
class Piece:
    delta: Delta


@dataclass
class Done:
    result: Result
    cancelled: bool = False


@dataclass
class Failed:
    error: BaseException


Event = Piece | Done | Failed


class Job:
    def __init__(self, slot: Slot, prepare: Prepare, loop: asyncio.AbstractEventLoop) -> None:
        self.slot, self.prepare, self._loop = slot, prepare, loop
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.state = "queued"  # loop side: queued -> running -> finished (or cancelled)
        self.finished = asyncio.Event()  # set on the loop once the worker is done with it
        self.result: Result | None = None  # the worker's numbers, final once finished is set
        self.reason: str | None = None  # why it was cancelled, when not by its client
        self.started = False  # the worker began it (loop side; ps counts it as running)

    def post(self, event: Event) -> None:
        """From the worker thread: hand an event to the request handler."""
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is gone (shutdown): nobody is listening
            self.cancelled.set()


class SlotEvents(Protocol):
    """What a Slot needs from its owner (the Pool): ``load`` runs on the slot's thread, the
    rest are called on the event loop, in this order: loaded or load_failed, then started and
    finished for each job, crashed when the model process dies."""

    def load(self, spec: ModelSpec) -> Engine: ...
    def loaded(self, slot: Slot, seconds: float) -> None: ...
    def load_failed(self, slot: Slot, error: BaseException) -> None: ...
    def started(self, slot: Slot, job: Job) -> None: ...
    def finished(self, slot: Slot, job: Job) -> None: ...
    def crashed(self, slot: Slot, error: BaseException) -> None: ...


class Slot:
    """One model, the thread that owns it, and its queue."""

    def __init__(self, owner: SlotEvents, spec: ModelSpec,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.owner, self.spec, self._loop = owner, spec, loop
        self.jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.waiting = 0  # admitted, not started
        self.active = 0  # admitted, not finished
        self.running = 0  # started, not finished
        self.loaded = False
        self.parallel = 1  # requests decoded together, once loaded (ps shows it)
        self.pid: int | None = None  # the model's process (ps shows its memory)
        self.last_used = time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f"llmrun-model-{spec.name}")

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(fn, *args)

    def _run(self) -> None:
        start = time.perf_counter()
        try:
            with _NATIVE:
                engine = self.owner.load(self.spec)
        except Exception as exc:
            error = exc if isinstance(exc, LlmrunError) else ModelError(
                f"could not load {self.spec.name}: {exc}")
            self._call(self.owner.load_failed, self, error)
            while (job := self.jobs.get()) is not None:
                job.post(Failed(error))
                self._call(self.owner.finished, self, job)
            return
        proc = getattr(engine, "proc", None)
        self.pid = proc.pid if proc is not None else os.getpid()
        if warning := getattr(engine, "memory_warning", None):
            log.warning("%s", warning)
        if notice := getattr(engine, "notice", None):
            log.warning("%s", notice)
        self._call(self.owner.loaded, self, time.perf_counter() - start)
        parallel = self.parallel = int(getattr(engine, "parallel", 1) or 1)
        if parallel > 1:
            self._run_batched(engine, parallel)
            self._close_engine(engine)
            return
        crashed = False
        while (job := self.jobs.get()) is not None:
            if job.cancelled.is_set():
                job.post(Done(Result(), cancelled=True))
            else:
                self._call(self.owner.started, self, job)
                try:
                    self._execute(engine, job)
                except Exception as exc:
                    job.post(Failed(exc))
                    if getattr(engine, "dead", False) and not crashed:
                        crashed = True  # the model's process is gone: a new request reloads
                        self._call(self.owner.crashed, self, exc)
            self._call(self.owner.finished, self, job)
        self._close_engine(engine)

    @staticmethod
    def _close_engine(engine: Engine) -> None:
        with _NATIVE:
            close = getattr(engine, "close", None)
            del engine
            if callable(close):
                close()
            del close
            gc.collect()  # llama_cpp.Llama frees its native memory in __del__

    def _run_batched(self, engine: Engine, parallel: int) -> None:
        """Up to ``parallel`` jobs at once, their tokens decoded together by the model's
        process: as many threads, each taking the next job from the queue when it is free.
        A job goes straight to a waiting thread: a thread started per job, handed the job by
        this one, cost a new request 3 ms before its first call while streams kept both
        cores busy."""
        crashed = threading.Event()

        def serve_jobs() -> None:
            while (job := self.jobs.get()) is not None:
                if job.cancelled.is_set():
                    job.post(Done(Result(), cancelled=True))
                    self._call(self.owner.finished, self, job)
                    continue
                self._call(self.owner.started, self, job)
                try:
                    self._execute(engine, job, lock=False)
                except Exception as exc:
                    job.post(Failed(exc))
                    if getattr(engine, "dead", False) and not crashed.is_set():
                        crashed.set()  # the model's process is gone: a new request reloads
                        self._call(self.owner.crashed, self, exc)
                finally:
                    self._call(self.owner.finished, self, job)
            self.jobs.put(None)  # the end: for the other threads too

        threads = [threading.Thread(target=serve_jobs, daemon=True,
                                    name=f"llmrun-job-{self.spec.name}")
                   for _ in range(parallel)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    @staticmethod
    def _execute(engine: Engine, job: Job, *, lock: bool = True) -> None:
        """Run one job. ``lock``: hold the process-wide lock for each call into the engine
        (a model in this process, or one request at a time); a batched model's process
        takes calls from several job threads itself."""
        native = _NATIVE if lock else contextlib.nullcontext()
        result = job.result = Result()
        with native:
            pieces = job.prepare(engine, result)
        cancelled = job.cancelled.is_set()
        try:
            while not cancelled:
                with native:  # one token (or a few, when text is held back for stops)
                    piece = next(pieces, None)
                if piece is None:
                    break
                cancelled = job.cancelled.is_set()
                if not cancelled:
                    job.post(Piece(piece))
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                with native:
                    close()  # stops llama.cpp here, in the owning thread
        job.post(Done(result, cancelled))
