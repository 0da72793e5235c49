"""The read-ahead thread's own logic, with a stand-in for the model (the real model's read-ahead
is tested in test_session.py and, through a terminal, in test_chat.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from llmrun.readahead import ReadAhead

LATER = 3600.0  # a delay no test waits out


class Evaluations:
    def __init__(self) -> None:
        self.seen: list[list[int]] = []
        self.committed: list[bool] = []

    def __call__(self, tokens: list[int], cancelled: Callable[[], bool], committed: bool) -> int:
        self.seen.append(tokens)
        self.committed.append(committed)
        return len(tokens)


@pytest.fixture
def evaluated() -> Evaluations:
    return Evaluations()


@pytest.fixture
def ahead(evaluated: Evaluations) -> Iterator[ReadAhead]:
    thread = ReadAhead(evaluated)
    yield thread
    thread.finish()


def test_a_newer_offer_replaces_the_pending_jobs(ahead: ReadAhead, evaluated: Evaluations) -> None:
    ahead.offer((LATER, "stale", lambda: [1]), (LATER, "stale too", lambda: [2]))
    ahead.offer((0.0, "fresh", lambda: [3, 4]))
    assert ahead.wait_idle(timeout=30)
    assert evaluated.seen == [[3, 4]]


def test_jobs_run_in_due_order(ahead: ReadAhead, evaluated: Evaluations) -> None:
    ahead.offer((0.2, "second", lambda: [2]), (0.0, "first", lambda: [1]))
    assert ahead.wait_idle(timeout=30)
    assert evaluated.seen == [[1], [2]]


def test_a_burst_of_offers_costs_one_evaluation(ahead: ReadAhead,
                                                evaluated: Evaluations) -> None:
    for i in range(20):  # keystrokes: each offer replaces the last before it is due
        ahead.offer((0.5, "typed", lambda i=i: [i]))
    assert ahead.wait_idle(timeout=30)
    assert evaluated.seen == [[19]]


def test_wait_idle_times_out_while_a_job_is_pending(ahead: ReadAhead) -> None:
    ahead.offer((LATER, "later", lambda: [1]))
    assert not ahead.wait_idle(timeout=0.01)


def test_finish_runs_committed_jobs_drops_delayed_ones_and_waits(evaluated: Evaluations) -> None:
    started, release = threading.Event(), threading.Event()

    def slow() -> list[int]:
        started.set()
        release.wait(30)
        return [1]

    ahead = ReadAhead(evaluated)
    ahead.offer((0.0, "running", slow))
    assert started.wait(30)
    ahead.offer((0.0, "committed", lambda: [2]), (LATER, "delayed", lambda: [3]))
    release.set()
    ahead.finish()  # returns only when the thread is done with the model
    assert evaluated.seen == [[1], [2]]
    assert not ahead._thread.is_alive()


def test_a_failing_job_does_not_stop_the_thread(ahead: ReadAhead,
                                                evaluated: Evaluations) -> None:
    def broken() -> list[int]:
        raise RuntimeError("template error")

    ahead.offer((0.0, "broken", broken))
    assert ahead.wait_idle(timeout=30)
    ahead.offer((0.0, "fine", lambda: [7]))
    assert ahead.wait_idle(timeout=30)
    assert evaluated.seen == [[7]]


def test_an_empty_job_evaluates_nothing(ahead: ReadAhead, evaluated: Evaluations) -> None:
    ahead.offer((0.0, "does not fit", lambda: []))
    assert ahead.wait_idle(timeout=30)
    assert evaluated.seen == []


def test_jobs_offered_without_delay_are_committed(ahead: ReadAhead,
                                                   evaluated: Evaluations) -> None:
    ahead.offer((0.0, "committed", lambda: [1]), (0.01, "delayed", lambda: [2]))
    assert ahead.wait_idle(timeout=30)
    assert evaluated.seen == [[1], [2]] and evaluated.committed == [True, False]


def _blocking(started: threading.Event, release: threading.Event,
              verdicts: list[bool]) -> ReadAhead:
    """A ReadAhead whose evaluation waits for ``release``, then notes whether it was called
    off: (called off when it started, called off when released)."""
    def evaluate(tokens: list[int], cancelled: Callable[[], bool], committed: bool) -> int:
        verdicts.append(cancelled())
        started.set()
        release.wait(30)
        verdicts.append(cancelled())
        return 0
    return ReadAhead(evaluate)


def _while_stopping(ahead: ReadAhead, stop: Callable[[], None],
                    release: threading.Event) -> None:
    """Run ``stop`` (finish or abort) in a thread; release the running evaluation once the
    stop is flagged, as a keystroke or Ctrl-C arrives mid-decode."""
    stopper = threading.Thread(target=stop)
    stopper.start()
    while not ahead._stopping:  # flagged before it waits for the thread
        stopper.join(0.001)
    release.set()
    stopper.join(30)
    assert not stopper.is_alive() and not ahead._thread.is_alive()


@pytest.mark.parametrize("then", ["a newer offer", "finish", "abort"])
def test_a_running_guess_learns_it_is_stale(then: str) -> None:
    started, release, verdicts = threading.Event(), threading.Event(), []
    ahead = _blocking(started, release, verdicts)
    ahead.offer((0.001, "guess", lambda: [1, 2, 3]))
    assert started.wait(30)
    if then == "a newer offer":
        ahead.offer((LATER, "newer", lambda: [4]))
        release.set()
        ahead.finish()
    else:
        _while_stopping(ahead, ahead.finish if then == "finish" else ahead.abort, release)
    assert verdicts == [False, True]


@pytest.mark.parametrize("then", ["finish", "abort"])
def test_only_abort_calls_off_a_committed_job(then: str) -> None:
    """finish() lets the opening complete (a piped chat stays reproducible); abort() (Ctrl-C,
    the end of the chat) calls it off too."""
    started, release, verdicts = threading.Event(), threading.Event(), []
    ahead = _blocking(started, release, verdicts)
    ahead.offer((0.0, "the opening", lambda: [1, 2, 3]), (0.0, "also committed", lambda: [4]))
    assert started.wait(30)
    _while_stopping(ahead, ahead.finish if then == "finish" else ahead.abort, release)
    if then == "finish":  # both ran, neither called off
        assert verdicts == [False, False, False, False]
    else:  # the running one called off, the other dropped
        assert verdicts == [False, True]
