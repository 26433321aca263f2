"""The server's stop strings: cut at the first one completed, across token boundaries, holding
back only what may still become one (scheduler.StopStrings)."""

from __future__ import annotations

import random

import pytest

from clm_local.server.scheduler import StopStrings


def stream(stops: tuple[str, ...], pieces: list[str]) -> tuple[str, bool]:
    matcher = StopStrings(stops)
    sent = []
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        sent.append(text)
        if stopped:
            return "".join(sent), True
    return "".join(sent) + matcher.flush(), False


def reference(stops: tuple[str, ...], text: str) -> tuple[str, bool]:
    """The text up to the stop string that is completed first (the longest, on a tie)."""
    ends = [(text.find(stop) + len(stop), -len(stop)) for stop in stops if stop in text]
    if not ends:
        return text, False
    end, minus_length = min(ends)
    return text[: end + minus_length], True


@pytest.mark.parametrize(
    ("stops", "pieces", "expected"),
    [
        (("END",), ["the ", "E", "N", "D", " more"], ("the ", True)),
        (("END",), ["the EN", "d"], ("the ENd", False)),
        (("aab",), ["a", "a", "a", "b"], ("a", True)),  # a failed partial match falls back, not to zero
        (("abc", "b"), ["abc"], ("a", True)),  # "b" is completed first
        (("\n\n",), ["one\n", "\ntwo"], ("one", True)),
        (("é✓",), ["caf", "é", "✓!"], ("caf", True)),
    ],
)
def test_cases(stops, pieces, expected) -> None:
    assert stream(stops, pieces) == expected


def test_only_a_possible_start_is_held_back() -> None:
    matcher = StopStrings(("STOP",))
    assert matcher.feed("go ST") == ("go ", False)
    assert matcher.feed("ART") == ("START", False)


def test_random_streams_match_the_reference() -> None:
    rng = random.Random(5)
    for _ in range(3000):
        alphabet = "ab\n"
        stops = tuple(
            "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 4))
        )
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        cuts = sorted(rng.sample(range(len(text) + 1), rng.randint(0, min(5, len(text)))))
        pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert stream(stops, pieces) == reference(stops, text), (stops, pieces)
