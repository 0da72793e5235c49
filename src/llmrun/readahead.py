"""A background thread that evaluates the latest guess of the next chat prompt into the KV cache.

Chat hands it jobs while the user is at the prompt: first the history and the template's opening
of the next turn, then, as the message is typed, the prompt the message so far would make.
Each job is a function returning the tokens to evaluate, called in the thread (templating and
tokenizing stay off the keyboard's thread). A newer offer replaces every job not yet started; a
job runs only once its due time has passed, so a burst of keystrokes costs one evaluation.
A job offered with no delay is committed: finish() still runs it, so that a chat fed from a pipe
splits its prompts into the same decodes on every run (llama.cpp's numbers depend slightly on
the split) and stays reproducible with a fixed seed. Any other job is told, through the
``cancelled`` callable it is evaluated with, when a newer offer or finish() has made it stale,
so that Enter waits at most for the decode in progress of a guess nobody needs (a long paste,
deleted again). abort() calls off committed jobs too (Ctrl-C, the end of the chat).

Evaluation is purely a head start: the model keeps only the cached prefix that really matches
the prompt it is finally asked, so a wrong guess costs idle time and nothing else.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

Job = Callable[[], list[int]]
Offer = tuple[float, str, Job]  # (seconds from now, what it reads ahead, for the log; job)
Cancelled = Callable[[], bool]
# (tokens, cancelled, committed) -> how many it evaluated
Evaluate = Callable[[list[int], Cancelled, bool], int]
log = logging.getLogger("llmrun")


class ReadAhead:
    def __init__(self, evaluate: Evaluate) -> None:
        self._evaluate = evaluate
        self._offers = 0  # a job is stale once a newer offer has come
        self._cond = threading.Condition()
        # (due, what, job, committed), in due order
        self._jobs: list[tuple[float, str, Job, bool]] = []
        self._stopping = False
        self._aborted = False
        self._busy = False
        self._thread = threading.Thread(target=self._loop, name="llmrun-readahead", daemon=True)
        self._thread.start()

    def offer(self, *jobs: Offer) -> None:
        """Replace the pending jobs with ``jobs``."""
        now = time.monotonic()
        with self._cond:
            self._offers += 1
            self._jobs = sorted(((now + max(delay, 0.0), what, job, delay <= 0)
                                 for delay, what, job in jobs), key=lambda entry: entry[0])
            self._cond.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every job offered so far has run (tests and benchmarks use this)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._jobs or self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def finish(self) -> None:
        """Drop the delayed jobs not yet started, and wait for the running one and the committed
        ones: after this, the caller owns the model again."""
        with self._cond:
            self._stopping = True
            self._jobs = [entry for entry in self._jobs if entry[3]]
            self._cond.notify_all()
        self._thread.join()

    def abort(self) -> None:
        """Like finish(), but committed jobs are dropped or called off too: returns once the
        decode in progress is done."""
        with self._cond:
            self._stopping = self._aborted = True
            self._jobs = []
            self._cond.notify_all()
        self._thread.join()

    def _next(self) -> tuple[str, Job, Cancelled, bool] | None:
        with self._cond:
            while True:
                if self._stopping and not self._jobs:
                    return None
                if self._jobs:
                    due, what, job, committed = self._jobs[0]
                    wait = due - time.monotonic()
                    if wait <= 0 or self._stopping:  # finish() kept only committed jobs
                        self._jobs.pop(0)
                        self._busy = True
                        stale = self._aborted_check if committed else self._stale_after(
                            self._offers)
                        return what, job, stale, committed
                    self._cond.wait(wait)
                else:
                    self._cond.wait()

    def _stale_after(self, offers: int) -> Cancelled:
        return lambda: self._stopping or self._offers != offers

    def _aborted_check(self) -> bool:
        return self._aborted

    def _loop(self) -> None:
        while (entry := self._next()) is not None:
            what, job, cancelled, committed = entry
            try:
                tokens = job()
                if tokens:
                    done = self._evaluate(tokens, cancelled, committed)
                    log.debug("read ahead %s: %d new of %d tokens", what, done, len(tokens))
            except Exception as exc:  # an optimisation only: the real ask() evaluates it all
                log.debug("read ahead %s failed: %s", what, exc)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
