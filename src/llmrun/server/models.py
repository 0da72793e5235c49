"""The model pool: models load on first use, unload after ``keep_alive`` idle seconds, and at
most ``max_loaded`` are loaded at once (the least recently used idle one goes first).

Each loaded model has one worker thread that owns it (worker.py). Requests wait in a bounded
queue per model; a full queue is :class:`Busy` (503). A running generation is never cut short
for a newer request (R2). Cancelling a job (the client went away) sets a flag the worker checks
between tokens (R3, T29).

Bookkeeping (queue lengths, LRU order) lives on the event loop; worker threads report back
with ``call_soon_threadsafe`` only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any

from .worker import (
    Busy,
    Done,
    EmbedEngine,
    Engine,
    Event,
    Failed,
    Job,
    Loader,
    ModelSpec,
    Piece,
    Prepare,
    Slot,
    engine_loader,
)

__all__ = ["Busy", "Done", "EmbedEngine", "Engine", "Event", "Failed", "Job", "Loader",
           "ModelSpec", "Piece", "Pool", "Prepare", "engine_loader"]
log = logging.getLogger("llmrun.server")


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
        slot = self._slots.get(spec.key)
        if slot is None:
            if self._opening >= self.queue_size:
                raise Busy
            self._opening += 1
            try:
                slot = await self.open(spec)
            finally:
                self._opening -= 1
        # queue_size wait beyond those a free sequence takes at once: a job counts as waiting
        # until the worker's "started" reaches the loop, and a burst of requests could fill
        # the queue before the first of them started
        free = max(0, slot.parallel - slot.running)
        if slot.waiting - free >= self.queue_size or self.closing:
            raise Busy
        job = Job(slot, prepare, asyncio.get_running_loop())
        self._jobs.add(job)
        slot.waiting += 1
        slot.active += 1
        self._slots.move_to_end(spec.key)
        slot.jobs.put(job)
        return job

    def cancel(self, job: Job, reason: str | None = None) -> None:
        """The client went away (or the model is being stopped: ``reason``): a queued job is
        dropped, a running one stops at the next token."""
        if reason is not None:
            job.reason = reason
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
            slot = self._slots.get(spec.key)
            if slot is not None:
                return slot
            if len(self._slots) < self.max_loaded:
                slot = self._slots[spec.key] = Slot(self, spec, loop)
                slot.thread.start()
                return slot
            idle = next((s for s in self._slots.values() if s.active == 0), None)
            if idle is not None:
                await self._close(idle)
                continue
            await self._wait_change()

    def loaded_spec(self, name: str) -> ModelSpec | None:
        """The spec of a model that is loading or loaded under this canonical name (for
        generation: the embeddings endpoint sets its own mode)."""
        from dataclasses import replace

        spec = next((s.spec for s in self._slots.values() if s.spec.name == name), None)
        return replace(spec, mode="generate") if spec is not None else None

    def status(self) -> list[dict[str, Any]]:
        return [{"name": s.spec.key, "loaded": s.loaded, "running": int(s.running),
                 "waiting": s.waiting} for s in self._slots.values()]

    def details(self) -> list[dict[str, Any]]:
        """What `llmrun ps` shows: per loaded model, its state, requests running and queued,
        the memory of its process, how long it has been idle and when it unloads."""
        now = time.monotonic()
        found = []
        for s in self._slots.values():
            idle = None if s.active else round(now - s.last_used, 1)
            unload = None
            if idle is not None and self.keep_alive >= 0:
                unload = round(max(0.0, self.keep_alive - idle), 1)
            found.append({"name": s.spec.key, "state": "ready" if s.loaded else "loading",
                          "running": int(s.running), "queued": s.waiting,
                          "parallel": s.parallel,
                          "memory": _rss(s.pid), "pid": s.pid, "idle_s": idle,
                          "unloads_in_s": unload})
        return found

    async def stop(self, name: str) -> bool:
        """Unload a model now (`llmrun stop`): its queued and running requests end with a
        503 that says so. False when it is not loaded."""
        slots = [s for key, s in self._slots.items() if name in (key, s.spec.name)]
        for slot in slots:  # a name stops its loads for generation and for embeddings
            for job in list(self._jobs):
                if job.slot is slot:
                    self.cancel(job, reason=f"{name} was unloaded (llmrun stop)")
            await self._close(slot, timeout=30.0)
        return bool(slots)

    async def shutdown(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for slot in list(self._slots.values()):
            await self._close(slot, timeout=10.0)

    # ---- worker.SlotEvents: what a slot's thread reports (on the loop) ---------------
    def loaded(self, slot: Slot, seconds: float) -> None:
        slot.loaded = True
        log.info("loaded %s in %.2fs", slot.spec.key, seconds)

    def load_failed(self, slot: Slot, error: BaseException) -> None:
        log.warning("could not load %s: %s", slot.spec.key, error)
        self._forget(slot)

    def crashed(self, slot: Slot, error: BaseException) -> None:
        log.error("%s", getattr(error, "message", error))
        self._forget(slot)  # jobs already queued fail fast; new ones load the model afresh

    def started(self, slot: Slot, job: Job) -> None:
        slot.running += 1
        job.started = True
        if job.state == "queued":
            job.state = "running"
            slot.waiting -= 1

    def finished(self, slot: Slot, job: Job) -> None:
        if job.state == "queued":
            slot.waiting -= 1
        if job.started:
            slot.running -= 1
        job.state = "finished"
        job.finished.set()
        self._jobs.discard(job)
        slot.active -= 1
        slot.last_used = time.monotonic()
        if slot.active == 0:
            self._notify()
            if self.keep_alive == 0 and self._slots.get(slot.spec.key) is slot:
                task = asyncio.get_running_loop().create_task(self._close(slot))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    # ---- internals -------------------------------------------------------------------
    def _forget(self, slot: Slot) -> None:
        if self._slots.get(slot.spec.key) is slot:
            del self._slots[slot.spec.key]
            slot.jobs.put(None)  # after every job admitted so far
            self._notify()

    async def _close(self, slot: Slot, timeout: float | None = None) -> None:
        self._forget(slot)
        await asyncio.to_thread(slot.thread.join, timeout)
        if slot.loaded:
            log.info("unloaded %s", slot.spec.key)

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


def _rss(pid: int | None) -> int | None:
    """Resident memory of a model's process, in bytes; None when unknown."""
    if pid is None:
        return None
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)
    except Exception:  # gone, or not allowed: ps shows "-"
        return None
