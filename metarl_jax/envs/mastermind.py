"""Mastermind (GEM's ``game:Mastermind-v0-random``, ORBIT's held-out settings), JAX-native.

Rules: a secret code of ``code_length`` *distinct* digits, each in ``1..num_digits``, is drawn per task
(uniformly over the ``num_digits! / (num_digits - code_length)!`` codes; 120 for ORBIT's 3 digits of 1..6).
Each turn the agent guesses any ``code_length`` digits of ``1..num_digits`` (repeats allowed in a guess) and
is told its black pegs (right digit, right place) and white pegs (a digit of the guess that also occurs in
the code at another place, counted with multiplicity, as in GEM: white = sum over digits of
``min(count in guess, count in code)`` minus black). A guess already made this episode costs a turn and says
so. The episode is won when all ``code_length`` pegs are black; it is truncated after ``max_turns`` turns
(ORBIT: 3 turns per episode, 9 steps per trial).

``text="terse"`` shows a one-line rule at the start and then the pegs after each guess (``\\boxed{1 2 3} 1 black
2 white``; ``correct`` on a win, ``already guessed`` on a repeat): the same information as GEM's sentences in
about a third of the tokens.

Actions: the ``num_digits ** code_length`` guesses in lexicographic order (216 for ORBIT), text
``\\boxed{1 2 3}``. Action ``i`` has digits ``1 + (i // num_digits ** (code_length - 1 - k)) % num_digits``.

Differences from GEM: GEM's reward is shaped (new black pegs / code length); ours is 1 on a win, else 0 (the
multi-episode wrapper uses success only). GEM sets both ``terminated`` and ``truncated`` at the turn limit; we
set only ``truncated``. GEM also accepts malformed guesses (wrong length, digits out of range) as wasted turns;
our action set holds only well-formed guesses, anything else is a format error. The wording is ours; the
content of the feedback (guess, black and white peg counts, repeated guess, turn limit) is GEM's.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from metarl_jax.envs.base import RUNNING, WON, TextEnv, TextEnvState
from metarl_jax.envs.pieces import EMPTY, slot


@struct.dataclass
class MastermindGame:
    guessed: jax.Array  # bool[num_actions], guesses made this episode
    black: jax.Array  # int32[], black pegs of the last guess
    white: jax.Array  # int32[], white pegs of the last guess
    repeated: jax.Array  # bool[], the last guess had been made before (no pegs given)


def pegs(guess: jax.Array, code: jax.Array, num_digits: int) -> tuple[jax.Array, jax.Array]:
    """Black and white pegs of ``guess`` against ``code``: int32[..., L] digits in 1..num_digits -> (int32[...], int32[...])."""
    black = jnp.sum(guess == code, axis=-1)
    count_guess = jax.nn.one_hot(guess - 1, num_digits, dtype=jnp.int32).sum(-2)
    count_code = jax.nn.one_hot(code - 1, num_digits, dtype=jnp.int32).sum(-2)
    common = jnp.minimum(count_guess, count_code).sum(-1)
    return black.astype(jnp.int32), (common - black).astype(jnp.int32)


class Mastermind(TextEnv):
    """Find a code of distinct digits from black/white peg feedback.

    Task: ``int32[]`` index of the secret in ``self.codes`` (``int32[num_codes, code_length]``, the admissible
    codes in lexicographic order). Actions: index into ``self.guesses`` (``int32[num_actions, code_length]``).
    """

    text_styles = ("gem", "terse")

    def __init__(self, code_length: int = 3, num_digits: int = 6, max_turns: int = 3,
                 env_id: str = "game:Mastermind-v0-random", text: str = "gem"):
        super().__init__(max_turns, text)
        if not 1 <= code_length <= num_digits <= 9:
            raise ValueError(f"Mastermind needs 1 <= code_length <= num_digits <= 9, got {code_length}, {num_digits}")
        if num_digits ** code_length > 10_000:
            raise ValueError(f"{num_digits}**{code_length} guesses is too many actions (at most 10000)")
        self.env_id = env_id
        self.code_length, self.num_digits = code_length, num_digits
        guesses = np.array(list(itertools.product(range(1, num_digits + 1), repeat=code_length)), np.int32)
        distinct = np.array([len(set(g)) == code_length for g in guesses.tolist()])
        self.guesses = guesses  # int32[num_actions, L]
        self.code_actions = np.flatnonzero(distinct).astype(np.int32)  # int32[num_codes]: action index of each code
        self.codes = guesses[self.code_actions]  # int32[num_codes, L]
        self.action_contents = [" ".join(str(d) for d in g) for g in guesses.tolist()]
        if self.terse:
            self._rules = self.book.add(f"A secret code of {code_length} different digits from 1 to {num_digits}. "
                                        "You have ", " turns.\n")
            # one piece per peg count: black b, white w at index b * (code_length + 1) + w; then repeat and win
            self._pegs = self.book.add(*[f" {b} black {w} white\n" for b in range(code_length + 1)
                                         for w in range(code_length + 1)], " already guessed\n", " correct\n")
            self.game_layout = [slot(self._rules), slot(self.num), slot(self._rules), slot(self._pegs)]
            self.opening_slots = (0, 1, 2)
            return

        example = " ".join(str(d) for d in range(1, code_length + 1))
        self._rules = self.book.add(
            "You are playing Mastermind.\n"
            f"A secret code of {code_length} different digits, each from 1 to {num_digits}, is hidden. You have ",
            " turns to find it.\nEach guess is any "
            f"{code_length} digits from 1 to {num_digits} (repeats allowed). For each guess you get black and white "
            "pegs: one black peg per digit in the right place, and one white peg per other digit of your guess that "
            "the code holds in another place. Answer with your guess inside \\boxed{}, digits separated by spaces, "
            "for example \\boxed{" + example + "}.\n",
        )
        self._guess = self.book.add(*self.action_contents)
        self._head = self.book.add("At turn ", "Correct! The secret code is ")
        self._you = self.book.add_one(", you guessed ")
        self._tail = self.book.add(". Black pegs: ", ", which you already guessed before.", ". You cracked it in ")
        self._tail2 = self.book.add(", white pegs: ", " turns.")
        self._dot = self.book.add_one(".")
        self.game_layout = [
            slot(self._rules), slot(self.num), slot(self._rules),  # opening
            slot(self._head), slot(self.num), slot(self._you), slot(self._guess), slot(self._tail),
            slot(self.num), slot(self._tail2), slot(self.num), slot(self._dot),
        ]
        self.opening_slots = (0, 1, 2)

    @property
    def num_codes(self) -> int:
        return len(self.codes)

    def sample_task(self, key, params):
        return jax.random.randint(key, (), 0, self.num_codes, dtype=jnp.int32)

    def init_game(self, key, task, params):
        zero = jnp.zeros((), jnp.int32)
        return MastermindGame(guessed=jnp.zeros((self.num_actions,), bool), black=zero, white=zero,
                              repeated=jnp.zeros((), bool))

    def game_step(self, key, state: TextEnvState, action, params):
        black, white = pegs(jnp.asarray(self.guesses)[action], jnp.asarray(self.codes)[state.task], self.num_digits)
        game = MastermindGame(
            guessed=state.game.guessed.at[action].set(True),
            black=black, white=white, repeated=state.game.guessed[action],
        )
        won = ~game.repeated & (black == self.code_length)
        return game, jnp.where(won, WON, RUNNING)

    def valid_actions(self, state):
        return ~state.game.guessed

    def answer_action(self, task):
        return jnp.asarray(self.code_actions)[task]

    def consistent_codes(self, state: TextEnvState) -> jax.Array:
        """``bool[num_codes]``: the codes that give every guess of this episode the pegs it got (reads the task).

        The history is read from ``state.game.guessed`` (at most ``default_max_turns`` guesses are used, the
        constructor's turn limit, so shapes stay static).
        """
        guesses, codes = jnp.asarray(self.guesses), jnp.asarray(self.codes)
        k = self.default_max_turns
        hist = guesses[jnp.nonzero(state.game.guessed, size=k, fill_value=0)[0]]  # [k, L]
        used = jnp.arange(k) < jnp.sum(state.game.guessed)
        b_true, w_true = pegs(hist, codes[state.task], self.num_digits)  # [k]
        b_all, w_all = pegs(hist[:, None, :], codes[None, :, :], self.num_digits)  # [k, C]
        agrees = (b_all == b_true[:, None]) & (w_all == w_true[:, None])
        return jnp.all(agrees | ~used[:, None], axis=0)

    def oracle_action(self, key, state: TextEnvState) -> jax.Array:
        """The first admissible code consistent with every guess of this episode (int32[]; reads the task)."""
        return jnp.asarray(self.code_actions)[jnp.argmax(self.consistent_codes(state))].astype(jnp.int32)

    def consistent_actions(self, state: TextEnvState) -> jax.Array:
        """The guesses of a code that this episode's pegs allow and that were not made this episode."""
        codes = jnp.zeros((self.num_actions,), bool).at[jnp.asarray(self.code_actions)]
        return codes.set(self.consistent_codes(state)) & ~state.game.guessed

    def game_pieces(self, state: TextEnvState):
        g = state.game
        won = ~g.repeated & (g.black == self.code_length)
        if self.terse:
            n = (self.code_length + 1) ** 2
            counts = g.black * (self.code_length + 1) + g.white
            pegs_piece = self._pegs[jnp.select([g.repeated, won], [n, n + 1], counts)]
            rules = jnp.stack([self._rules[0], self.number(state.max_turns), self._rules[1], EMPTY])
            return jnp.where(state.time == 0, rules, jnp.stack([EMPTY, EMPTY, EMPTY, pegs_piece]))
        normal = ~g.repeated & ~won
        turn = self.number(state.time)
        opening = jnp.stack([self._rules[0], self.number(state.max_turns), self._rules[1]] + [EMPTY] * 9)
        step = jnp.stack([
            EMPTY, EMPTY, EMPTY,
            jnp.where(won, self._head[1], self._head[0]),
            jnp.where(won, EMPTY, turn),
            jnp.where(won, EMPTY, self._you[0]),
            self._guess[jnp.maximum(state.last_action, 0)],
            jnp.select([won, g.repeated], [self._tail[2], self._tail[1]], self._tail[0]),
            jnp.select([won, g.repeated], [turn, EMPTY], self.number(g.black)),
            jnp.select([won, g.repeated], [self._tail2[1], EMPTY], self._tail2[0]),
            jnp.where(normal, self.number(g.white), EMPTY),
            jnp.where(normal, self._dot[0], EMPTY),
        ])
        return jnp.where(state.time == 0, opening, step)

    def render_game_text(self, state):
        t = int(state.time)
        L, D = self.code_length, self.num_digits
        g = state.game
        if self.terse:
            if t == 0:
                return f"A secret code of {L} different digits from 1 to {D}. You have {int(state.max_turns)} turns.\n"
            if bool(g.repeated):
                return " already guessed\n"
            return " correct\n" if int(g.black) == L else f" {int(g.black)} black {int(g.white)} white\n"
        if t == 0:
            example = " ".join(str(d) for d in range(1, L + 1))
            return (
                "You are playing Mastermind.\n"
                f"A secret code of {L} different digits, each from 1 to {D}, is hidden. You have "
                f"{int(state.max_turns)} turns to find it.\nEach guess is any {L} digits from 1 to {D} (repeats "
                "allowed). For each guess you get black and white pegs: one black peg per digit in the right place, "
                "and one white peg per other digit of your guess that the code holds in another place. Answer with "
                f"your guess inside \\boxed{{}}, digits separated by spaces, for example \\boxed{{{example}}}.\n"
            )
        guess = " ".join(str(int(d)) for d in self.guesses[int(state.last_action)])
        if bool(g.repeated):
            return f"At turn {t}, you guessed {guess}, which you already guessed before."
        if int(g.black) == L:
            return f"Correct! The secret code is {guess}. You cracked it in {t} turns."
        return f"At turn {t}, you guessed {guess}. Black pegs: {int(g.black)}, white pegs: {int(g.white)}."
