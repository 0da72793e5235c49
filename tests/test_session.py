"""Chat sessions on the real model, in-process: KV reuse across turns, and the prefill that
evaluates the next prompt's known beginning (history, system prompt, the template's opening of
the next user turn) while the user is still typing."""

from __future__ import annotations

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
    yield Model(gemma_file, LoadOptions(n_ctx=2048), chat_format="gemma")


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


def test_raw_sessions_do_not_prefill(model: Model) -> None:
    model.llama.reset()
    s = Session(model, Sampling(temperature=0, max_tokens=4), raw=True)
    s.prepare()
    s.settle()
    assert model.llama.n_tokens == 0
