"""The word lists of the word games (package data, from SCOWL size 10; see ``data/LICENSE-SCOWL.txt``).

>>> from metarl_jax.envs.words import load_words
>>> len(load_words(3)), len(load_words(5))
(158, 595)
"""

from __future__ import annotations

import functools
from importlib import resources

import jax
import jax.numpy as jnp
import numpy as np

from metarl_jax.envs.base import TextEnv

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


class WordGame(TextEnv):
    """Base of the games whose task is a secret word (Hangman, Wordle).

    Task: ``int32[]`` index of the secret in ``self.words`` (:func:`load_words` of ``word_length``).
    ``self.word_letters``: ``int32[num_words, word_length]`` letter codes 0..25; ``self.example_word``: the word the
    rules show as an example.
    """

    def __init__(self, word_length: int, max_turns: int, env_id: str, text: str):
        super().__init__(max_turns, text)
        self.env_id = env_id
        self.word_length = int(word_length)
        self.words = load_words(self.word_length)
        self.word_letters = np.array([[ord(c) - ord("a") for c in w] for w in self.words], np.int32)
        self.example_word = self.words[0]

    @property
    def num_words(self) -> int:
        return len(self.words)

    def sample_task(self, key, params):
        """A uniform word: int32[] index into ``self.words``."""
        return jax.random.randint(key, (), 0, self.num_words, dtype=jnp.int32)
