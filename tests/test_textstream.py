"""Token bytes to text (engine/textstream.py): characters split across tokens, stop strings
split across tokens, invalid bytes, and the held-back tail bounded by the stop strings."""

from __future__ import annotations

import pytest

from llmrun.engine.textstream import TextStream


def _run(pieces: list[bytes], stops: list[str] = []) -> tuple[str, bool, list[str]]:  # noqa: B006
    stream = TextStream(stops)
    out = [stream.add(p) for p in pieces]
    out.append(stream.flush())
    return "".join(out), stream.stopped, out


def test_a_character_split_across_byte_tokens_comes_out_whole() -> None:
    data = "héllo 世界 🙂".encode()
    text, _, out = _run([data[i:i + 1] for i in range(len(data))])
    assert text == "héllo 世界 🙂"
    assert all("\ufffd" not in piece for piece in out)  # never half a character


def test_invalid_bytes_become_replacement_characters_not_errors() -> None:
    text, _, _ = _run([b"ok \xff", b" then \xe4\xb8"])  # a stray byte, then a cut character
    assert text == "ok \ufffd then \ufffd"


@pytest.mark.parametrize("split", range(1, 12))
def test_a_stop_string_split_anywhere_stops_before_it(split: int) -> None:
    data = b"Answer: 42<|im_end|>more"
    text, stopped, _ = _run([data[:split], data[split:]], ["<|im_end|>"])
    assert (text, stopped) == ("Answer: 42", True)


def test_text_that_only_looked_like_a_stop_is_released() -> None:
    text, stopped, out = _run([b"a <|im", b"_start|> b"], ["<|im_end|>"])
    assert (text, stopped) == ("a <|im_start|> b", False)
    assert out[0] == "a "  # the possible start of a stop was held back, then released


def test_the_earliest_of_several_stops_wins() -> None:
    text, stopped, _ = _run([b"x STOP2 y STOP1"], ["STOP1", "STOP2"])
    assert (text, stopped) == ("x ", True)


def test_held_back_text_is_bounded_by_the_longest_stop() -> None:
    stream = TextStream(["<end>"])
    for _ in range(1000):
        assert stream.add(b"<") in ("", "<")  # each "<" is held until the next shows
    assert len(stream._held) <= len("<end>") - 1


@pytest.mark.slow  # loads a model: its native probe is another process
def test_the_engine_streams_what_llama_cpp_writes_whole(tmp_path: object) -> None:
    """On a model writing byte tokens, the streamed text equals llama-cpp-python's own
    non-streamed completion of the same greedy tokens (its linear path), except that bytes
    that are not UTF-8 show as U+FFFD where llama-cpp-python drops them silently."""
    from pathlib import Path

    from llmrun import tiny_model
    from llmrun.datatypes import LoadOptions, Sampling
    from llmrun.engine import Model

    path = Path(str(tmp_path)) / "bytes.gguf"
    tiny_model.write(path, ["F16"], shape=tiny_model.Shape(vocab=300, ctx=1024))
    model = Model(path, LoadOptions(n_ctx=1024))
    try:
        tokens = model.tokenize("xyz q", templated=False)
        pieces = list(model.generate(tokens, Sampling(temperature=0, max_tokens=200)))
        whole = model.llama.create_completion(tokens, max_tokens=200, temperature=0)
        expected = whole["choices"][0]["text"]  # type: ignore[index]
        ours = "".join(pieces)
        assert "\ufffd" in ours and ours.replace("\ufffd", "") == expected
        assert len(pieces) > 20  # and it streamed
        stop = ours[40:46]
        cut = "".join(model.generate(tokens, Sampling(temperature=0, max_tokens=200,
                                                      stop=[stop])))
        assert cut == ours[: ours.find(stop)]
    finally:
        model.close()

