"""Piece books: the finite set of text fragments an environment can show.

Observations are rendered inside ``jit`` without strings. Every environment registers, once, each text
fragment it may ever emit (a rules paragraph, the string of a number, a letter, a feedback sentence) in a
:class:`PieceBook`. An observation is then an ``int32[S]`` array of piece ids, one per *slot* of the
environment's fixed layout; id 0 is the empty string, so a slot can be left blank. The codec
(:mod:`metarl_jax.text.codec`) pre-tokenizes every piece once and concatenates the slots' tokens in
``jit``.

A slot declares which groups of pieces it may draw from, so the codec can bound the token length of each
slot tightly (the sum of the per-slot maxima is the observation's token budget).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

EMPTY = 0


@dataclasses.dataclass(frozen=True)
class Group:
    """A contiguous run of piece ids ``[start, start + size)``; ``group[i]`` is the id of its i-th piece.

    Indexing works with Python ints and with traced ``jnp`` integer arrays alike.
    """

    start: int
    size: int

    def __getitem__(self, i):
        return self.start + i

    @property
    def ids(self) -> range:
        return range(self.start, self.start + self.size)


Slot = tuple  # a tuple of Groups that a slot may draw from (the empty piece is always allowed)


class PieceBook:
    """An append-only table of text pieces; id 0 is the empty string."""

    def __init__(self, strings: Sequence[str] = ("",)):
        if not strings or strings[0] != "":
            raise ValueError("a PieceBook's piece 0 must be the empty string")
        self.strings: list[str] = list(strings)

    def add(self, *strings: str) -> Group:
        """Adds the given strings, in order, and returns their group."""
        for s in strings:
            if not isinstance(s, str):
                raise TypeError(f"pieces must be str, got {type(s).__name__}: {s!r}")
        start = len(self.strings)
        self.strings.extend(strings)
        return Group(start, len(strings))

    def add_one(self, string: str) -> Group:
        """Adds one string; ``group[0]`` is its id."""
        return self.add(string)

    def copy(self) -> "PieceBook":
        return PieceBook(self.strings)

    def __len__(self) -> int:
        return len(self.strings)


def slot(*groups: Group) -> Slot:
    """A layout slot that may show any piece of the given groups (or nothing)."""
    return tuple(groups)


def slot_ids(layout_slot: Slot) -> Iterable[int]:
    """All piece ids a slot may show, the empty piece included."""
    yield EMPTY
    for group in layout_slot:
        yield from group.ids


def join_pieces(strings: Sequence[str], piece_ids) -> str:
    """The text of an observation given as piece ids (host side; a debugging aid)."""
    import numpy as np

    return "".join(strings[int(i)] for i in np.asarray(piece_ids).reshape(-1))
