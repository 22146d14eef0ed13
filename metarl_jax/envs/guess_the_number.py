"""Guess The Number (GEM's ``game:GuessTheNumber-v0-{easy,hard}``), JAX-native.

A secret integer in ``[low, high]`` is drawn per task. Each turn the agent guesses a number and is told
whether the secret is higher or lower. Guessing a number twice is allowed but wasted (it costs a turn and
says so). The episode is won by guessing the secret within ``max_turns`` turns.

hard: 1..50 in 7 turns (binary search always wins; uniform random guessing without repeats wins 7/50).
easy: 1..10 in 4 turns.

``text="terse"`` shows a one-line rule at the start and then one feedback word per turn after the guess
(``\\boxed{25} lower``; ``correct:31`` when found, restating the secret as GEM's ``Correct! The secret number is
31.`` does): the same information as GEM's sentences in about a third of the tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from metarl_jax.envs.base import RUNNING, WON, TextEnv, TextEnvState
from metarl_jax.envs.pieces import EMPTY, slot

# feedback codes
_NONE, _HIGHER, _LOWER, _REPEAT, _CORRECT = range(5)
# text="terse", by code - 1; a found secret follows " correct:", then the line ends
TERSE_WORDS = (" higher\n", " lower\n", " already guessed\n", " correct:")
# text="gem": the ends of a turn's sentence: higher / lower than the guess, a repeated guess, a win's " turns.",
# and the full stop after the guess
GEM_TAILS = (". The secret number is higher than ", ". The secret number is lower than ",
             ", which you already guessed before.", " turns.", ".")


@struct.dataclass
class GuessTheNumberGame:
    guessed: jax.Array  # bool[n], numbers guessed this episode
    feedback: jax.Array  # int32[], feedback code of the last turn


class GuessTheNumber(TextEnv):
    """Guess a secret number in ``[low, high]`` with higher/lower hints.

    Task: ``int32[]`` index of the secret (the secret is ``low + task``).
    Actions: ``i`` guesses ``low + i`` (text ``\\boxed{low+i}``).
    """

    text_styles = ("gem", "terse")

    def __init__(self, low: int = 1, high: int = 50, max_turns: int = 7, env_id: str = "game:GuessTheNumber-v0-hard",
                 text: str = "gem"):
        super().__init__(max_turns, text)
        if not 0 <= low < high:
            raise ValueError(f"GuessTheNumber needs 0 <= low < high, got low={low}, high={high}")
        if high > self.num.size - 1:
            raise ValueError(f"GuessTheNumber supports numbers up to {self.num.size - 1}, got high={high}")
        self.env_id = env_id
        self.low, self.high = low, high
        self.action_contents = [str(v) for v in range(low, high + 1)]
        if self.terse:
            self._rules = self.book.add(f"A secret number lies between {low} and {high}. You have ", " turns.\n")
            self._word = self.book.add(*TERSE_WORDS)  # indexed by feedback code - 1
            self._line_end = self.book.add("\n")
            self.game_layout = [slot(self._rules), slot(self.num), slot(self._rules), slot(self._word), slot(self.num),
                                slot(self._line_end)]
            self.opening_slots = (0, 1, 2)
            self.final_slots = (4, 5)  # the restated secret ends the episode
            return
        self._rules = self.book.add(
            "You are playing Guess The Number.\n"
            f"A secret whole number lies between {low} and {high}, inclusive. You have ",
            " turns to find it.\nAfter each guess you are told whether the secret number is higher or lower "
            "than your guess. Answer with your guess inside \\boxed{}, for example \\boxed{"
            f"{(low + high) // 2}" "}.\n",
        )
        self._turn = self.book.add("At turn ", ", you guessed ", "Correct! The secret number is ", ". You found it in ")
        self._tail = self.book.add(*GEM_TAILS)
        self.game_layout = [
            slot(self._rules), slot(self.num), slot(self._rules),  # opening
            slot(self._turn), slot(self.num), slot(self._turn), slot(self.num), slot(self._tail),
            slot(self.num), slot(self._tail),
        ]
        self.opening_slots = (0, 1, 2)

    def sample_task(self, key, params):
        return jax.random.randint(key, (), 0, self.high - self.low + 1, dtype=jnp.int32)

    def init_game(self, key, task, params):
        n = self.high - self.low + 1
        return GuessTheNumberGame(guessed=jnp.zeros((n,), bool), feedback=jnp.full((), _NONE, jnp.int32))

    def game_step(self, key, state: TextEnvState, action, params):
        secret = state.task
        feedback = jnp.select(
            [state.game.guessed[action], action == secret, secret > action],
            [_REPEAT, _CORRECT, _HIGHER],
            _LOWER,
        ).astype(jnp.int32)
        game = GuessTheNumberGame(guessed=state.game.guessed.at[action].set(True), feedback=feedback)
        return game, jnp.where(feedback == _CORRECT, WON, RUNNING)

    def valid_actions(self, state):
        return ~state.game.guessed

    def answer_action(self, task):
        return jnp.asarray(task, jnp.int32)  # action i guesses low + i, the secret is low + task

    def _interval(self, state):
        """``(lo, hi)`` int32[]: the action range consistent with this episode's feedback (each guess so far
        was told higher or lower, which is where it lies against the secret)."""
        idx = jnp.arange(self.high - self.low + 1)
        guessed, secret = state.game.guessed, state.task
        lo = jnp.max(jnp.where(guessed & (idx < secret), idx + 1, 0))
        hi = jnp.min(jnp.where(guessed & (idx > secret), idx - 1, self.high - self.low))
        return lo, hi

    def oracle_action(self, key, state):
        """Binary search: the middle of the interval consistent with this episode's feedback."""
        lo, hi = self._interval(state)
        return ((lo + hi) // 2).astype(jnp.int32)

    def consistent_actions(self, state):
        """The numbers not guessed this episode that this episode's feedback has not ruled out."""
        lo, hi = self._interval(state)
        idx = jnp.arange(self.high - self.low + 1)
        return ~state.game.guessed & (idx >= lo) & (idx <= hi)

    def game_pieces(self, state: TextEnvState):
        opening = state.time == 0
        fb = state.game.feedback
        correct = fb == _CORRECT
        if self.terse:
            rules = jnp.stack([self._rules[0], self.number(state.max_turns), self._rules[1], EMPTY, EMPTY, EMPTY])
            word = jnp.stack([EMPTY, EMPTY, EMPTY, self._word[jnp.maximum(fb - 1, 0)],
                              jnp.where(correct, self.number(self.low + state.task), EMPTY),
                              jnp.where(correct, self._line_end[0], EMPTY)])
            return jnp.where(opening, rules, word)
        guess = self.number(self.low + jnp.maximum(state.last_action, 0))
        turn = self.number(state.time)
        return jnp.where(
            opening,
            jnp.stack([self._rules[0], self.number(state.max_turns), self._rules[1]] + [EMPTY] * 7),
            jnp.stack([
                EMPTY, EMPTY, EMPTY,
                jnp.where(correct, self._turn[2], self._turn[0]),
                jnp.where(correct, self.number(self.low + state.task), turn),
                jnp.where(correct, self._turn[3], self._turn[1]),
                jnp.where(correct, turn, guess),
                jnp.select([correct, fb == _REPEAT, fb == _HIGHER], [self._tail[3], self._tail[2], self._tail[0]], self._tail[1]),
                jnp.where(correct | (fb == _REPEAT), EMPTY, guess),
                jnp.where(correct | (fb == _REPEAT), EMPTY, self._tail[4]),
            ]),
        )

    def render_game_text(self, state):
        t = int(state.time)
        if self.terse:
            if t == 0:
                return f"A secret number lies between {self.low} and {self.high}. You have {int(state.max_turns)} turns.\n"
            fb = int(state.game.feedback)
            restated = f"{self.low + int(state.task)}\n" if fb == _CORRECT else ""
            return TERSE_WORDS[fb - 1] + restated
        if t == 0:
            return (
                f"You are playing Guess The Number.\nA secret whole number lies between {self.low} and {self.high}, "
                f"inclusive. You have {int(state.max_turns)} turns to find it.\nAfter each guess you are told whether "
                "the secret number is higher or lower than your guess. Answer with your guess inside \\boxed{}, "
                f"for example \\boxed{{{(self.low + self.high) // 2}}}.\n"
            )
        fb = int(state.game.feedback)
        guess = self.low + int(state.last_action)
        if fb == _CORRECT:
            return f"Correct! The secret number is {self.low + int(state.task)}. You found it in {t} turns."
        if fb == _REPEAT:
            return f"At turn {t}, you guessed {guess}, which you already guessed before."
        direction = "higher" if fb == _HIGHER else "lower"
        return f"At turn {t}, you guessed {guess}. The secret number is {direction} than {guess}."
