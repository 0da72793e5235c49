"""The model pool: models load on first use, unload after ``keep_alive`` idle seconds, and at
most ``max_loaded`` are loaded at once (the least recently used idle one goes first).

Each loaded model has one worker thread that owns it: loading, tokenizing, templating and
generating all happen there, one request at a time, so a llama context is never used from two
threads (R1). Requests wait in a bounded queue per model; a full queue is :class:`Busy` (503).
A running generation is never cut short for a newer request (R2). Cancelling a job (the client
went away) sets a flag the worker checks between tokens (R3, T29).

Bookkeeping (queue lengths, LRU order) lives on the event loop; worker threads report back
with ``call_soon_threadsafe`` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..engine import LoadOptions, Result, Sampling
from ..errors import LlmrunError, ModelError

log = logging.getLogger("llmrun.server")
_LOAD_LOCK = threading.Lock()  # one native model load at a time, process-wide


class Engine(Protocol):
    """What the pool needs from a loaded model (engine.Model; fakes in tests)."""

    n_ctx: int

    def format_chat(self, messages: list[dict[str, str]]) -> str: ...
    def tokenize(self, text: str, *, templated: bool) -> list[int]: ...
    def chat_stops(self) -> list[str]: ...
    def check_fits(self, n_prompt: int, max_tokens: int | None) -> None: ...
    def generate(self, tokens: list[int], sampling: Sampling,
                 result: Result | None = None) -> Iterator[str]: ...


@dataclass(frozen=True)
class ModelSpec:
    name: str  # canonical name: the pool's key and the API's model id
    path: Path
    chat_format: str | None = None
    defaults: dict[str, float | int] = field(default_factory=dict)  # registry defaults


Loader = Callable[[ModelSpec], Engine]
Prepare = Callable[[Engine], tuple[list[int], Sampling]]  # runs on the worker thread


def engine_loader(opts: LoadOptions, *, debug: bool = False) -> Loader:
    """Load models with llmrun's engine (in the worker thread that will own them)."""

    def load(spec: ModelSpec) -> Engine:
        from ..engine import Model

        return Model(spec.path, opts, chat_format=spec.chat_format, debug=debug, name=spec.name)

    return load


class Busy(Exception):
    """The queue is full (or the server is stopping); answer 503 with Retry-After."""


@dataclass
class Piece:
    text: str


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

    def post(self, event: Event) -> None:
        """From the worker thread: hand an event to the request handler."""
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is gone (shutdown): nobody is listening
            self.cancelled.set()


class Slot:
    """One model, the thread that owns it, and its queue."""

    def __init__(self, pool: Pool, spec: ModelSpec, loop: asyncio.AbstractEventLoop) -> None:
        self.pool, self.spec, self._loop = pool, spec, loop
        self.jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.waiting = 0  # admitted, not started
        self.active = 0  # admitted, not finished
        self.running = False
        self.loaded = False
        self.last_used = time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f"llmrun-model-{spec.name}")

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(fn, *args)

    def _run(self) -> None:
        start = time.perf_counter()
        try:
            with _LOAD_LOCK:
                engine = self.pool.load(self.spec)
        except Exception as exc:
            error = exc if isinstance(exc, LlmrunError) else ModelError(
                f"could not load {self.spec.name}: {exc}")
            self._call(self.pool._load_failed, self, error)
            while (job := self.jobs.get()) is not None:
                job.post(Failed(error))
                self._call(self.pool._finished, self, job)
            return
        self._call(self.pool._loaded, self, time.perf_counter() - start)
        while (job := self.jobs.get()) is not None:
            if job.cancelled.is_set():
                job.post(Done(Result(), cancelled=True))
            else:
                self._call(self.pool._started, self, job)
                try:
                    self._execute(engine, job)
                except Exception as exc:
                    job.post(Failed(exc))
            self._call(self.pool._finished, self, job)
        close = getattr(engine, "close", None)
        del engine
        if callable(close):
            close()
        del close
        gc.collect()  # llama_cpp.Llama frees its native memory in __del__

    @staticmethod
    def _execute(engine: Engine, job: Job) -> None:
        tokens, sampling = job.prepare(engine)
        result = job.result = Result()
        pieces = engine.generate(tokens, sampling, result)
        cancelled = job.cancelled.is_set()
        try:
            if not cancelled:
                for piece in pieces:
                    if job.cancelled.is_set():
                        cancelled = True
                        break
                    job.post(Piece(piece))
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()  # stops llama.cpp here, in the owning thread
        job.post(Done(result, cancelled))


class Pool:
    def __init__(self, load: Loader, *, max_loaded: int = 1, queue_size: int = 64,
                 keep_alive: float = 300.0) -> None:
        self.load = load
        self.max_loaded, self.queue_size, self.keep_alive = max_loaded, queue_size, keep_alive
        self._slots: OrderedDict[str, Slot] = OrderedDict()  # least recently used first
        self._opening = 0  # requests waiting for a free slot
        self._changed: asyncio.Event | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # keep background closes referenced
        self._jobs: set[Job] = set()  # admitted, not finished
        self.closing = False

    # ---- requests --------------------------------------------------------------------
    async def submit(self, spec: ModelSpec, prepare: Prepare) -> Job:
        """Queue a generation; raises Busy when the queue is full."""
        if self.closing:
            raise Busy("the server is shutting down")
        slot = self._slots.get(spec.name)
        if slot is None:
            if self._opening >= self.queue_size:
                raise Busy
            self._opening += 1
            try:
                slot = await self.open(spec)
            finally:
                self._opening -= 1
        if slot.waiting >= self.queue_size or self.closing:
            raise Busy
        job = Job(slot, prepare, asyncio.get_running_loop())
        self._jobs.add(job)
        slot.waiting += 1
        slot.active += 1
        self._slots.move_to_end(spec.name)
        slot.jobs.put(job)
        return job

    def cancel(self, job: Job) -> None:
        """The client went away: a queued job is dropped, a running one stops at the next
        token."""
        job.cancelled.set()
        if job.state == "queued":
            job.state = "cancelled"
            job.slot.waiting -= 1

    def cancel_all(self) -> None:
        """The server is stopping: end every generation at its next token, admit no more."""
        self.closing = True
        for job in list(self._jobs):
            self.cancel(job)

    async def open(self, spec: ModelSpec) -> Slot:
        """The slot for a model, started (loading) if needed; evicts LRU idle models."""
        loop = asyncio.get_running_loop()
        self._start_reaper()
        while True:
            slot = self._slots.get(spec.name)
            if slot is not None:
                return slot
            if len(self._slots) < self.max_loaded:
                slot = self._slots[spec.name] = Slot(self, spec, loop)
                slot.thread.start()
                return slot
            idle = next((s for s in self._slots.values() if s.active == 0), None)
            if idle is not None:
                await self._close(idle)
                continue
            await self._wait_change()

    def status(self) -> list[dict[str, Any]]:
        return [{"name": s.spec.name, "loaded": s.loaded, "running": int(s.running),
                 "waiting": s.waiting} for s in self._slots.values()]

    async def shutdown(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for slot in list(self._slots.values()):
            await self._close(slot, timeout=10.0)

    # ---- worker callbacks (on the loop) ----------------------------------------------
    def _loaded(self, slot: Slot, seconds: float) -> None:
        slot.loaded = True
        log.info("loaded %s in %.2fs", slot.spec.name, seconds)

    def _load_failed(self, slot: Slot, error: BaseException) -> None:
        log.warning("could not load %s: %s", slot.spec.name, error)
        self._forget(slot)

    def _started(self, slot: Slot, job: Job) -> None:
        slot.running = True
        if job.state == "queued":
            job.state = "running"
            slot.waiting -= 1

    def _finished(self, slot: Slot, job: Job) -> None:
        if job.state == "queued":
            slot.waiting -= 1
        job.state = "finished"
        job.finished.set()
        self._jobs.discard(job)
        slot.running = False
        slot.active -= 1
        slot.last_used = time.monotonic()
        if slot.active == 0:
            self._notify()
            if self.keep_alive == 0 and self._slots.get(slot.spec.name) is slot:
                task = asyncio.get_running_loop().create_task(self._close(slot))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    # ---- internals -------------------------------------------------------------------
    def _forget(self, slot: Slot) -> None:
        if self._slots.get(slot.spec.name) is slot:
            del self._slots[slot.spec.name]
            slot.jobs.put(None)  # after every job admitted so far
            self._notify()

    async def _close(self, slot: Slot, timeout: float | None = None) -> None:
        self._forget(slot)
        await asyncio.to_thread(slot.thread.join, timeout)
        if slot.loaded:
            log.info("unloaded %s", slot.spec.name)

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def _wait_change(self) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        await self._changed.wait()

    def _start_reaper(self) -> None:
        if self._reaper is None and self.keep_alive > 0:
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        tick = min(max(self.keep_alive / 4, 0.05), 5.0)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for slot in list(self._slots.values()):
                if slot.active == 0 and now - slot.last_used >= self.keep_alive:
                    await self._close(slot)
