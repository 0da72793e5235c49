"""Chat sessions on the real model, in-process: KV reuse across turns, and the prefill that
evaluates the next prompt's known beginning (history, system prompt, the template's opening of
the next user turn) while the user is still typing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmrun.engine import LoadOptions, Model, Sampling
from llmrun.session import Session

QUESTIONS = ["What is the capital of France?", "And of Italy?", "Name a large river.",
             "What colour is the sky?"]
SYSTEM = ("You are a careful assistant. Answer in one short sentence, name your sources when "
          "you can, and say so plainly when you do not know the answer.")


@pytest.fixture(scope="module")
def model(gemma_file: Path) -> Iterator[Model]:
    loaded = Model(gemma_file, LoadOptions(n_ctx=2048), chat_format="gemma")
    yield loaded
    loaded.close()  # and its in-use lock on the shared test file with it


def _talk(model: Model, *, prefill: bool, settle: bool = True,
          system: str | None = None) -> list[tuple[str, int, int]]:
    """One conversation from an empty KV cache: (reply, prompt tokens, tokens evaluated)."""
    model.llama.reset()
    s = Session(model, Sampling(temperature=0, max_tokens=12), system=system, trim=True)
    out = []
    for question in QUESTIONS:
        if prefill:
            s.prepare()
            if settle:  # the user takes a moment to type: the prefill finishes first
                s.settle()
        turn = s.ask(question)
        text = "".join(turn)
        out.append((text, turn.result.prompt_tokens, turn.result.prompt_evaluated))
    s.settle()
    return out


def test_kv_reuse_evaluates_only_the_new_turn(model: Model) -> None:
    turns = _talk(model, prefill=False)
    assert all(text.strip() for text, _, _ in turns)
    prompts = [p for _, p, _ in turns]
    assert prompts == sorted(prompts) and prompts[-1] > 3 * prompts[0]
    # after the first turn only the new message (and the template's joints) is evaluated
    for _, prompt, evaluated in turns[1:]:
        assert evaluated < prompt // 2


def _last_logits(model: Model) -> np.ndarray[Any, Any]:
    import llama_cpp

    row = llama_cpp.llama_get_logits_ith(model.llama.ctx, -1)
    return np.ctypeslib.as_array(row, shape=(model.llama.n_vocab(),)).copy()


def test_a_prefilled_prompt_ends_in_the_same_state(model: Model) -> None:
    """Prefill splits the prompt into two decodes. llama.cpp's numbers depend slightly on how a
    prompt is split into batches (as with any KV reuse), so the next-token distribution must
    agree closely, not bit for bit."""
    text = model.format_chat([{"role": "system", "content": SYSTEM},
                              {"role": "user", "content": QUESTIONS[0]}])
    tokens = model.tokenize(text, templated=True)
    model.llama.reset()
    model.llama.eval(tokens)
    whole = _last_logits(model)
    model.llama.reset()
    assert model.prefill(tokens[:40]) == 40
    model.llama.eval(tokens[40:])
    split = _last_logits(model)
    assert int(split.argmax()) == int(whole.argmax())
    assert float(np.corrcoef(whole, split)[0, 1]) > 0.995


def test_prefill_leaves_less_to_evaluate_after_enter(model: Model) -> None:
    plain = _talk(model, prefill=False)
    ahead = _talk(model, prefill=True)
    assert all(text.strip() for text, _, _ in ahead)
    # the replies may differ where two tokens are nearly tied (see above), so the prompts
    # match only as far as the first reply: compare that turn, and the counts of all turns
    assert ahead[0][1] == plain[0][1]
    for (_, _, before), (_, _, after) in zip(plain, ahead, strict=True):
        assert after < before  # the turn's opening was already in the cache


def test_a_system_prompt_is_evaluated_before_the_first_message(model: Model) -> None:
    system_tokens = len(model.tokenize(SYSTEM, templated=False))
    plain = _talk(model, prefill=False, system=SYSTEM)
    ahead = _talk(model, prefill=True, system=SYSTEM)
    assert ahead[0][1] == plain[0][1]
    assert plain[0][2] > system_tokens  # without a head start turn 1 evaluates the system
    assert ahead[0][2] < plain[0][2] - system_tokens + 8  # with one, hardly more than the question


def test_asking_before_the_prefill_finishes_waits_for_it(model: Model) -> None:
    settled = _talk(model, prefill=True)
    hurried = _talk(model, prefill=True, settle=False)  # Enter pressed at once
    # the same decodes in the same order: bit for bit the same conversation
    assert hurried == settled


def test_prefill_of_what_is_cached_does_nothing(model: Model) -> None:
    model.llama.reset()
    tokens = model.tokenize("The three primary colors are", templated=False)
    assert model.prefill(tokens) == len(tokens)
    assert model.prefill(tokens) == 0
    assert model.prefill(tokens[:-2]) == 0  # a prefix of the cache is already there
    assert model.llama.n_tokens == len(tokens)


def test_a_cancelled_prefill_stops_between_pieces(model: Model) -> None:
    """A stale read-ahead stops after the piece it is in; the cache holds exactly the pieces
    done, and a later prefill carries on from there."""
    from llmrun.engine import PREFILL_PIECE

    model.llama.reset()
    tokens = model.tokenize(SYSTEM * 3, templated=False)
    assert len(tokens) > 2 * PREFILL_PIECE
    asked = []

    def after_one_piece() -> bool:
        asked.append(True)
        return len(asked) > 1

    assert model.prefill(tokens, after_one_piece, PREFILL_PIECE) == PREFILL_PIECE
    assert list(model.llama.input_ids[: model.llama.n_tokens]) == tokens[:PREFILL_PIECE]
    assert model.prefill(tokens, lambda: False, PREFILL_PIECE) == len(tokens) - PREFILL_PIECE
    assert model.llama.n_tokens == len(tokens)
    # called off before it starts: nothing is touched, not even a tail that does not match
    other = model.tokenize("Something else entirely", templated=False)
    assert model.prefill(other, lambda: True) == 0
    assert list(model.llama.input_ids[: model.llama.n_tokens]) == tokens


def test_a_cache_that_cannot_roll_back_only_grows(model: Model,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Recurrent and hybrid models cannot drop a tail: a guess that would need it does
    nothing, one that extends the cache still goes in, and typed drafts are not read ahead."""
    monkeypatch.setattr(Model, "can_roll_back", property(lambda self: False))
    model.llama.reset()
    tokens = model.tokenize("The three primary colors are red, yellow", templated=False)
    assert model.prefill(tokens[:6]) == 6
    assert model.prefill(tokens) == len(tokens) - 6  # extends: fine
    assert model.prefill(tokens[:4] + model.tokenize("blue", templated=False)[1:]) == 0
    assert list(model.llama.input_ids[: model.llama.n_tokens]) == tokens
    s = _typed(model, QUESTION)  # the opening goes in; the typed message does not
    assert model.llama.n_tokens == len(s._opening()) - 1
    s.settle()


def test_raw_sessions_do_not_prefill(model: Model) -> None:
    model.llama.reset()
    s = Session(model, Sampling(temperature=0, max_tokens=4), raw=True)
    s.prepare()
    s.settle()
    assert model.llama.n_tokens == 0


# ---- reading ahead into the message as it is typed ------------------------------------------
QUESTION = "What is the capital of France?"


def _typed(model: Model, *drafts: str) -> Session:
    """A fresh session whose user has typed ``drafts`` in turn, pausing after each."""
    model.llama.reset()
    s = Session(model, Sampling(temperature=0, max_tokens=8), trim=True)
    s.prepare()
    s.wait_read_ahead()  # the opening first, in one decode: the same split on every run
    for draft in drafts:
        s.offer(draft)
        s.wait_read_ahead()
    return s


def _prompt(model: Model, message: str) -> list[int]:
    return model.tokenize(model.format_chat([{"role": "user", "content": message}]),
                          templated=True)


def test_typed_words_are_read_ahead(model: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    """The finished words go in while typing goes on; the pause guess never comes (here)."""
    import llmrun.session

    monkeypatch.setattr(llmrun.session, "PAUSE_S", 3600.0)
    s = _typed(model)
    words = s._opening(s._all_messages(), "What is the capital of")
    s.offer("What is the capital of Fr")
    deadline = time.monotonic() + 60
    while model.llama.n_tokens < len(words):  # the words job's decode, seen in the cache
        assert time.monotonic() < deadline, "the typed words were not read ahead"
        time.sleep(0.01)
    s.settle()  # Enter: the whole-message guess, still waiting for a pause, is dropped
    assert model.llama.n_tokens == len(words)
    assert list(model.llama.input_ids[: len(words)]) == words
    turn = s.ask(QUESTION)
    assert "".join(turn).strip()
    full = _prompt(model, QUESTION)
    assert turn.result.prompt_tokens == len(full)
    # left after Enter: "France?" and the template's close of the turn, nothing before
    assert turn.result.prompt_evaluated == len(full) - len(words)


def test_after_a_pause_enter_only_samples(model: Model) -> None:
    _typed(model, QUESTION).settle()
    full = _prompt(model, QUESTION)
    assert list(model.llama.input_ids[: model.llama.n_tokens]) == full
    ahead = _last_logits(model)
    model.llama.reset()
    model.llama.eval(full)
    whole = _last_logits(model)
    assert int(ahead.argmax()) == int(whole.argmax())  # see the note on splits above
    assert float(np.corrcoef(whole, ahead)[0, 1]) > 0.995
    s = _typed(model, QUESTION)
    turn = s.ask(QUESTION)
    assert "".join(turn).strip()
    assert turn.result.prompt_evaluated == 0  # the whole prompt was in the cache


def test_a_wrong_guess_is_rolled_back(model: Model) -> None:
    s = _typed(model, "What is the capital of Spain?")  # then edited before Enter
    spain, france = _prompt(model, "What is the capital of Spain?"), _prompt(model, QUESTION)
    common = next(i for i, (a, b) in enumerate(zip(spain, france, strict=False)) if a != b)
    turn = s.ask(QUESTION)
    assert "".join(turn).strip()
    assert turn.result.prompt_evaluated == len(france) - common
    assert list(model.llama.input_ids[: len(france)]) == france  # nothing of Spain is left


def test_commands_and_empty_drafts_are_not_read_ahead(model: Model) -> None:
    for draft in ("/show", "   ", '"""'):
        s = _typed(model, draft)
        opening = s._opening()
        assert model.llama.n_tokens == len(opening)  # whole: this cache can drop a token
        s.settle()


def test_closing_a_turns_text_ends_the_turn_at_once(model: Model) -> None:
    """A reply stopped after its first piece is in the history right away, as far as it
    got, so the next turn alternates user and assistant (the template insists)."""
    model.llama.reset()
    s = Session(model, Sampling(temperature=0, max_tokens=24), trim=True)
    turn = s.ask(QUESTIONS[0])
    text = iter(turn)
    first = next(text)
    text.close()
    assert [m["role"] for m in s.messages] == ["user", "assistant"]
    assert s.messages[-1]["content"] == turn.result.text.strip()
    assert first.strip() and first.strip() in turn.result.text
    assert 1 <= turn.result.completion_tokens < 24  # its numbers, as far as it got
    assert turn.result.prompt_evaluated == turn.result.prompt_tokens > 0
    del s.messages[-2:]  # a retake, as the chat benchmark does
    assert "".join(s.ask(QUESTIONS[0]))  # renders: the roles still alternate
