"""The decode loop's text handling, without a model: UTF-8 and stop sequences."""

from __future__ import annotations

from llm_abstractions.providers.llama_engine import _TextAssembler


def feed(
    pieces: list[bytes], stops: tuple[str, ...] = (), counts: list[int] | None = None
) -> tuple[str, list[str], bool]:
    emitted: list[str] = []

    def emit(text: str, tokens: int) -> None:
        emitted.append(text)
        if counts is not None:
            counts.append(tokens)

    assembler = _TextAssembler(stops, emit)
    stopped = any(assembler.add(piece) for piece in pieces)
    return assembler.finish(), emitted, stopped


def test_multibyte_character_split_across_tokens() -> None:
    euro = "€".encode()  # three bytes
    text, emitted, stopped = feed([b"price ", euro[:1], euro[1:2], euro[2:], b"5"])
    assert text == "price €5"
    assert "".join(emitted) == text
    assert not any("\ufffd" in piece for piece in emitted)
    assert not stopped


def test_every_token_is_counted_once_with_the_piece_that_releases_it() -> None:
    euro = "€".encode()
    counts: list[int] = []
    feed([b"a", euro[:1], euro[1:2], euro[2:], b"b"], counts=counts)
    assert counts == [1, 3, 1]  # "€" is emitted after its third token, and counts all three
    counts.clear()
    text, _, _ = feed([b"a", euro[:1], euro[1:2], euro[2:], b"b", b" EN"], ("END",), counts)
    assert text == "a€b EN"
    assert sum(counts) == 6  # text held back for a possible stop is counted when released


def test_stop_sequence_split_across_tokens_is_never_emitted() -> None:
    text, emitted, stopped = feed([b"one two", b" EN", b"D three"], stops=("END",))
    assert stopped
    assert text == "one two "
    assert "".join(emitted) == text
    assert not any("E" in piece for piece in emitted)


def test_partial_match_that_fails_is_released() -> None:
    text, emitted, stopped = feed([b"an EN", b"ding"], stops=("END",))
    assert not stopped
    assert text == "an ENding"
    assert "".join(emitted) == text


def test_earliest_of_several_stops_wins() -> None:
    text, _, stopped = feed([b"a;b.c"], stops=(".", ";"))
    assert stopped and text == "a"


def test_bytes_after_a_stop_are_dropped() -> None:
    # The stop and the first bytes of a character arrive in one token.
    text, _, stopped = feed([b"done." + "€".encode()[:2]], stops=(".",))
    assert stopped
    assert text == "done"


def test_without_a_consumer_nothing_is_emitted() -> None:
    assembler = _TextAssembler((), None)
    assert not assembler.add(b"hello")
    assert assembler.finish() == "hello"
