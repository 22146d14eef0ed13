"""The word lists of the word games (package data, from SCOWL size 10; see ``data/LICENSE-SCOWL.txt``).

>>> from metarl_jax.envs.words import load_words
>>> len(load_words(3)), len(load_words(5))
(158, 595)
"""

from __future__ import annotations

import functools
from importlib import resources

AVAILABLE_LENGTHS = (3, 5)


@functools.lru_cache(maxsize=None)
def _load(length: int) -> tuple[str, ...]:
    if length not in AVAILABLE_LENGTHS:
        raise ValueError(f"no word list of length {length}; shipped lengths: {AVAILABLE_LENGTHS}")
    text = resources.files("metarl_jax.envs.data").joinpath(f"words_{length}.txt").read_text(encoding="utf-8")
    words = tuple(w for w in text.split("\n") if w)
    bad = [w for w in words if len(w) != length or not (w.isascii() and w.isalpha() and w.islower())]
    if bad:
        raise ValueError(f"words_{length}.txt holds malformed entries, e.g. {bad[:3]}")
    return words


def load_words(length: int) -> list[str]:
    """The sorted lower-case words of ``length`` letters (3 or 5). Cached; returns a fresh list each call."""
    return list(_load(int(length)))
