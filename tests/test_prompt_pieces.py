"""Chat prompts tokenized piece by piece (prompt_pieces.py): the cut rules on their own, and on
the real model that the pieces always give exactly llama.cpp's tokens for the whole text."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmrun.engine import LoadOptions, Model, Sampling
from llmrun.prompt_pieces import PieceTokenizer, straddles, usable_markers
from llmrun.session import Session


def test_a_token_straddles_a_cut_when_its_tail_starts_the_marker() -> None:
    assert straddles("\n\n", "\n")
    assert straddles("x<start", "<start_of_turn>")  # ends inside the marker
    assert straddles("a<b>c", "<b>")  # holds the marker inside it
    assert not straddles("<start_of_turn>x", "<start_of_turn>")  # begins with it: same cut
    assert not straddles("<unused12>", "<start_of_turn>")
    assert not straddles("\n\n\n", "<end_of_turn>")


def test_only_markers_nothing_can_reach_across_are_used() -> None:
    specials = [("<start_of_turn>", False), ("<end_of_turn>", False), ("\n", False),
                ("\n\n", False), ("<sep>", True), ("<eot>", False), ("<<eot>", False),
                ("<im>", False), ("m>--", False)]
    found = usable_markers(["<start_of_turn>", "<end_of_turn>", "\n", "<sep>", "<eot>", "<im>",
                            ""], specials)
    # "\n" sits inside "\n\n"; <sep> strips the space before it; "<<eot>" ends with "<eot>";
    # "m>--" starts inside "<im>"
    assert found == ["<start_of_turn>", "<end_of_turn>"]


class _Counting:
    """A stand-in tokenizer: one token per character, a leading 0 for BOS."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, text: str, add_bos: bool) -> list[int]:
        self.calls.append(text)
        return ([0] if add_bos else []) + [ord(c) for c in text]


def test_a_prompt_is_cut_before_each_marker_and_pieces_are_remembered() -> None:
    tok = _Counting()
    pieces = PieceTokenizer(tok, ["<s>", "<e>"])
    first = "<s>user\nhi<e>\n<s>model\n"
    assert pieces.pieces(first) == ["<s>user\nhi", "<e>\n", "<s>model\n"]
    assert pieces(first, True) == tok(first, True)
    tok.calls.clear()
    longer = first + "hello<e>\n<s>user\nmore<e>\n"
    assert pieces(longer, True) == tok(longer, True)
    # only the new pieces went to the tokenizer (the last call above is the comparison's)
    assert tok.calls[:-1] == ["<s>model\nhello", "<s>user\nmore"]
    assert pieces(longer, False) == tok(longer, False)  # BOS only ever on the first piece
    assert pieces("", True) == [0] and pieces("", False) == []


def test_the_last_piece_is_not_remembered() -> None:
    """A prompt's last piece is where it is still growing (the message being typed, read
    ahead at every pause): remembering each draft would push the history out."""
    tok = _Counting()
    pieces = PieceTokenizer(tok, ["<s>"])
    for draft in ("<s>user\nhi<s>user\nTell", "<s>user\nhi<s>user\nTell me"):
        pieces(draft, False)
    tok.calls.clear()
    pieces("<s>user\nhi<s>user\nTell", False)
    assert tok.calls == ["<s>user\nTell"]


def test_the_cache_forgets_the_least_recently_used_pieces() -> None:
    tok = _Counting()
    pieces = PieceTokenizer(tok, ["|"], max_chars=10)
    pieces("|aaaa|bbbb|", False)
    pieces("|cccc|", False)  # 15 characters would be held: |aaaa goes
    tok.calls.clear()
    pieces("|bbbb|cccc|", False)
    assert tok.calls == ["|"]
    pieces("|aaaa|", False)
    assert tok.calls == ["|", "|aaaa", "|"]
    tok.calls.clear()
    pieces("x" * 20 + "|", False)  # longer than the whole cache: tokenized, never kept
    pieces("x" * 20 + "|", False)
    assert tok.calls == ["x" * 20, "|"] * 2


@pytest.fixture(scope="module")
def model(gemma_file: Path) -> Iterator[Model]:
    loaded = Model(gemma_file, LoadOptions(n_ctx=2048), chat_format="gemma")
    loaded.remember_prompt_pieces()
    yield loaded
    loaded.close()


def _whole(model: Model, text: str) -> list[int]:
    bos = model.info.bos_token
    return list(model.llama.tokenize(text.encode("utf-8", "replace"),
                                     add_bos=not (bos and text.startswith(bos)), special=True))


def test_gemma_prompts_are_cut_at_its_turn_markers(model: Model) -> None:
    pieces = model.wait_prompt_pieces()
    assert pieces is not None
    cut = set(pieces.pieces("<bos><start_of_turn>user\nhi\n\n<end_of_turn>\n<start_of_turn>"))
    assert cut == {"<bos>", "<start_of_turn>user\nhi\n\n", "<end_of_turn>\n", "<start_of_turn>"}


ATOMS = ["<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<start_of", "_turn>", "<", ">",
         "\n", "\n\n", "\n\n\n", " ", "  ", "\t", "user", "model", "Hello", " world", "é", "日本",
         "🙂", "<unused3>", "<table>", "123", "'s", "\ud800"]


def test_pieces_give_exactly_the_whole_texts_tokens(model: Model) -> None:
    assert model.wait_prompt_pieces() is not None
    rng = random.Random(1234)

    def text() -> str:
        return "".join(rng.choice(ATOMS) for _ in range(rng.randint(0, 12)))

    for _ in range(150):  # rendered conversations, with markers and whitespace in messages
        messages = [{"role": ("user", "assistant")[i % 2], "content": text()}
                    for i in range(rng.randint(1, 6))]
        prompt = model.format_chat(messages)
        assert model.tokenize(prompt, templated=True) == _whole(model, prompt), prompt
    for _ in range(300):  # and any text at all
        raw = text() + text()
        assert model.tokenize(raw, templated=True) == _whole(model, raw), repr(raw)


def test_a_chat_turn_tokenizes_only_its_new_text(model: Model) -> None:
    s = Session(model, Sampling(temperature=0, max_tokens=8), trim=True)
    for question in ("What is the capital of France?", "And of Italy?", "And of Spain?"):
        s.prepare()
        s.wait_read_ahead()
        s.settle()
        "".join(s.ask(question))
    pieces = model.wait_prompt_pieces()
    assert pieces is not None
    s.prepare()
    s.wait_read_ahead()
    s.settle()
    before = pieces.tokenized
    turn = s.ask("Name a river there.")
    "".join(turn)
    whole = len(model.format_chat(s.messages[:-1]))
    new = pieces.tokenized - before
    assert 0 < new < len("Name a river there.") + 60 < whole // 3
    assert turn.result.prompt_tokens == len(_whole(model, model.format_chat(s.messages[:-1])))


def test_closing_a_model_stops_reading_its_vocabulary(gemma_file: Path) -> None:
    loaded = Model(gemma_file, LoadOptions(n_ctx=256), chat_format="gemma")
    loaded.remember_prompt_pieces()
    loaded.close()  # at once, while the vocabulary is being read
    assert loaded.wait_prompt_pieces() is None
