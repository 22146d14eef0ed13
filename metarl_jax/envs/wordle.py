"""Wordle (GEM's ``game:Wordle-v0-hard``, ORBIT's training settings), JAX-native.

Rules: a secret word of ``word_length`` letters is drawn per task, uniformly from the shipped word list
(``words_5.txt``: the 595 five-letter words of SCOWL size 10; see :mod:`metarl_jax.envs.words`). Each turn
the agent guesses a word of the list and gets one mark per letter: ``G`` (right letter, right place), ``Y``
(the letter occurs elsewhere in the word) or ``X`` (it does not, or not that many times). Repeated letters
follow GEM's two-pass rule: greens first; then, left to right, a letter is ``Y`` while the secret still has
unmatched copies of it, else ``X``. A word guessed before costs a turn and says so. The episode is won when
every mark is ``G``; it is truncated after ``max_turns`` turns (ORBIT: 10 per episode, 30 steps per trial).
The guess and its marks are shown letter by letter, space separated (``C R A N E`` / ``G X Y X X``), so a
word-level tokenizer sees single letters.

``text="terse"`` shows a one-line rule at the start and then, after each guess, its letters and their marks
(``\\boxed{crane} C R A N E`` / `` G X Y X X``; ``correct`` on a win, ``already guessed`` on a repeat): the same
information as GEM's sentences in about half the tokens.

Actions: the words of the list (action ``j`` is word ``j``, text ``\\boxed{crane}``; case-insensitive).

Differences from GEM: GEM draws from nltk's ``en-basic`` words, we from SCOWL size 10 (licence-clear, no
download); GEM's reward is shaped (new greens, half credit on the win), ours is 1 on a win, else 0; GEM sets
both ``terminated`` and ``truncated`` at the turn limit, we only ``truncated``; GEM accepts any string of
letters (a wrong length is a wasted turn, non-words are scored as guesses), our action set holds only listed
words (anything else is a format error). The wording is ours; the content of the feedback (the guess, its
G/Y/X marks, repeated guess, win, turn limit) is GEM's.
"""

from __future__ import annotations

import string

import jax
import jax.numpy as jnp
from flax import struct

from metarl_jax.envs.base import RUNNING, WON, TextEnvState
from metarl_jax.envs.pieces import EMPTY, slot
from metarl_jax.envs.words import WordGame

X, Y, G = 0, 1, 2  # marks
MARKS = "XYG"


@struct.dataclass
class WordleGame:
    guessed: jax.Array  # bool[num_words], words guessed this episode
    marks: jax.Array  # int32[word_length], marks of the last guess (X, Y or G)
    repeated: jax.Array  # bool[], the last guess had been made before (no marks given)


def wordle_feedback(guess: jax.Array, secret: jax.Array) -> jax.Array:
    """GEM's two-pass marks: int[..., L] letter codes 0..25 (broadcastable) -> int32[..., L] in {X, Y, G}."""
    guess, secret = jnp.broadcast_arrays(jnp.asarray(guess), jnp.asarray(secret))
    length = guess.shape[-1]
    green = guess == secret
    # Copies of each letter left in the secret once the greens are taken.
    left = jnp.sum(jax.nn.one_hot(secret, 26, dtype=jnp.int32) * (~green)[..., None], axis=-2)  # [..., 26]
    # For each place, the non-green places to its left that hold the same guess letter.
    earlier = jnp.tril(jnp.ones((length, length), bool), k=-1)  # [i, j]: j < i
    same = (guess[..., :, None] == guess[..., None, :]) & earlier & (~green)[..., None, :]
    rank = jnp.sum(same, axis=-1)
    yellow = ~green & (rank < jnp.take_along_axis(left, guess, axis=-1))
    return jnp.where(green, G, jnp.where(yellow, Y, X)).astype(jnp.int32)


class Wordle(WordGame):
    """Find a secret word from per-letter G/Y/X marks (the task: :class:`WordGame`)."""

    text_styles = ("gem", "terse")

    def __init__(self, word_length: int = 5, max_turns: int = 10, env_id: str = "game:Wordle-v0-hard",
                 text: str = "gem"):
        super().__init__(word_length, max_turns, env_id, text)
        L = self.word_length
        self.action_contents = list(self.words)
        if self.terse:
            self._rules = self.book.add(f"A secret word of {L} letters. You have ", " turns.\n")
            self._letter = self.book.add(*[" " + c for c in string.ascii_uppercase])
            self._mark = self.book.add(*[" " + m for m in MARKS])
            self._end = self.book.add("\n", " already guessed\n", " correct\n")
            self.game_layout = [slot(self._rules), slot(self.num), slot(self._rules),
                                *[slot(self._letter)] * L, slot(self._end), *[slot(self._mark)] * L, slot(self._end)]
            self.opening_slots = (0, 1, 2)
            return
        self._rules = self.book.add(
            f"You are playing Wordle.\nA secret word of {L} letters is hidden; you have ",
            f" turns to find it. Each guess must be a word of {L} letters, for example \\boxed{{{self.example_word}}}. "
            "Under the letters of each guess you get one mark per letter: G if the letter is in the right place, "
            "Y if the word holds it in another place, X if the word does not hold it (or not that many times).\n",
        )
        self._head = self.book.add("At turn ", "Correct! The secret word is ")
        self._you = self.book.add_one(", you guessed ")
        self._word = self.book.add(*[w.upper() for w in self.words])
        self._tail = self.book.add(". Feedback:\n", ", which you already guessed before.", ". You found it in ")
        self._turns = self.book.add_one(" turns.")
        self._letter0 = self.book.add(*string.ascii_uppercase)
        self._letter = self.book.add(*[" " + c for c in string.ascii_uppercase])
        self._newline = self.book.add_one("\n")
        self._mark0 = self.book.add(*MARKS)
        self._mark = self.book.add(*[" " + m for m in MARKS])
        self.game_layout = [
            slot(self._rules), slot(self.num), slot(self._rules),  # opening
            slot(self._head), slot(self.num), slot(self._you), slot(self._word), slot(self._tail),
            slot(self.num), slot(self._turns),
            slot(self._letter0), *[slot(self._letter)] * (L - 1), slot(self._newline),
            slot(self._mark0), *[slot(self._mark)] * (L - 1),
        ]
        self.opening_slots = (0, 1, 2)

    def init_game(self, key, task, params):
        return WordleGame(
            guessed=jnp.zeros((self.num_words,), bool),
            marks=jnp.zeros((self.word_length,), jnp.int32),
            repeated=jnp.zeros((), bool),
        )

    def game_step(self, key, state: TextEnvState, action, params):
        letters = jnp.asarray(self.word_letters)
        marks = wordle_feedback(letters[action], letters[state.task])
        game = WordleGame(
            guessed=state.game.guessed.at[action].set(True), marks=marks, repeated=state.game.guessed[action]
        )
        won = ~game.repeated & jnp.all(marks == G)
        return game, jnp.where(won, WON, RUNNING)

    def valid_actions(self, state):
        return ~state.game.guessed

    def answer_action(self, task):
        return jnp.asarray(task, jnp.int32)  # action j is word j

    def oracle_action(self, key, state: TextEnvState) -> jax.Array:
        """The first word of the list consistent with the marks of every guess so far (int32[]; reads the task)."""
        return jnp.argmax(self.consistent_words(state)).astype(jnp.int32)

    def consistent_actions(self, state: TextEnvState) -> jax.Array:
        """The words not guessed this episode that give every guess of this episode the marks it got."""
        return self.consistent_words(state) & ~state.game.guessed

    def consistent_words(self, state: TextEnvState) -> jax.Array:
        """``bool[num_words]``: the words that give every guess of this episode the marks it got (reads the task).

        The history is read from ``state.game.guessed`` (at most ``default_max_turns`` guesses are used, the
        constructor's turn limit, so shapes stay static).
        """
        letters = jnp.asarray(self.word_letters)
        k = self.default_max_turns
        hist = jnp.nonzero(state.game.guessed, size=k, fill_value=0)[0]  # int[k]
        used = jnp.arange(k) < jnp.sum(state.game.guessed)
        true = wordle_feedback(letters[hist], letters[state.task])  # [k, L]
        every = wordle_feedback(letters[hist][:, None, :], letters[None, :, :])  # [k, W, L]
        agrees = jnp.all(every == true[:, None, :], axis=-1) | ~used[:, None]
        return jnp.all(agrees, axis=0)

    def game_pieces(self, state: TextEnvState):
        g = state.game
        won = ~g.repeated & jnp.all(g.marks == G)
        show_grid = ~won & ~g.repeated & (state.time > 0)
        action = jnp.maximum(state.last_action, 0)
        turn = self.number(state.time)
        letters = jnp.asarray(self.word_letters)[action]
        opening = jnp.stack([self._rules[0], self.number(state.max_turns), self._rules[1]])
        if self.terse:
            end = self._end[jnp.where(won, 2, jnp.where(g.repeated, 1, 0))]
            turn = jnp.concatenate([jnp.where(show_grid, self._letter[letters], EMPTY), jnp.stack([end]),
                                    jnp.where(show_grid, self._mark[g.marks], EMPTY),
                                    jnp.stack([jnp.where(show_grid, self._end[0], EMPTY)])])
            first = state.time == 0
            return jnp.concatenate([jnp.where(first, opening, EMPTY), jnp.where(first, EMPTY, turn)])
        head = jnp.stack([
            jnp.where(won, self._head[1], self._head[0]),
            jnp.where(won, EMPTY, turn),
            jnp.where(won, EMPTY, self._you[0]),
            self._word[action],
            self._tail[jnp.where(won, 2, jnp.where(g.repeated, 1, 0))],
            jnp.where(won, turn, EMPTY),
            jnp.where(won, self._turns[0], EMPTY),
        ])
        grid = jnp.concatenate([
            self._letter0[letters[:1]], self._letter[letters[1:]], jnp.stack([self._newline[0]]),
            self._mark0[g.marks[:1]], self._mark[g.marks[1:]],
        ])
        first = state.time == 0
        return jnp.concatenate([
            jnp.where(first, opening, EMPTY), jnp.where(first, EMPTY, head), jnp.where(show_grid, grid, EMPTY)
        ])

    def render_game_text(self, state):
        t = int(state.time)
        L = self.word_length
        if self.terse:
            if t == 0:
                return f"A secret word of {L} letters. You have {int(state.max_turns)} turns.\n"
            marks = [MARKS[int(m)] for m in state.game.marks]
            if bool(state.game.repeated):
                return " already guessed\n"
            if marks == ["G"] * L:
                return " correct\n"
            return "".join(" " + c for c in self.words[int(state.last_action)].upper()) + "\n" + "".join(
                " " + m for m in marks) + "\n"
        if t == 0:
            return (
                f"You are playing Wordle.\nA secret word of {L} letters is hidden; you have {int(state.max_turns)} "
                f"turns to find it. Each guess must be a word of {L} letters, for example \\boxed{{{self.example_word}}}. "
                "Under the letters of each guess you get one mark per letter: G if the letter is in the right place, "
                "Y if the word holds it in another place, X if the word does not hold it (or not that many times).\n"
            )
        guess = self.words[int(state.last_action)].upper()
        marks = "".join(MARKS[int(m)] for m in state.game.marks)
        if bool(state.game.repeated):
            return f"At turn {t}, you guessed {guess}, which you already guessed before."
        if marks == "G" * L:
            return f"Correct! The secret word is {guess}. You found it in {t} turns."
        return f"At turn {t}, you guessed {guess}. Feedback:\n{' '.join(guess)}\n{' '.join(marks)}"
