"""Rock Paper Scissors against a biased opponent (ORBIT's ``rockpaperscissors``), JAX-native.

Rules (``rules="orbit"``, the id ``rockpaperscissors``; ORBIT: XiaofengLin7/ORBIT envs/rps_env_adapter.py). Each
turn is a round: the agent plays ``\\boxed{rock}``, ``\\boxed{paper}`` or ``\\boxed{scissors}`` and the opponent
draws a move from its hidden mixed strategy (with the step key, so the env is not deterministic). Rock beats
scissors, scissors beat paper, paper beats rock; equal moves draw. Every match lasts ``max_turns`` (5) rounds,
and it is WON iff the agent won at least ``wins_needed`` (3) of them (ORBIT: reward 1 iff wins / max_turns >=
1/2). After each round the agent is told only the round's result: "You win this round.", "You lose this
round." or "This round is a draw." (ORBIT: "You win" / "You lose" / "You draw"). Neither the opponent's move
nor the score is shown, and the last round does not announce the match's result: the agent has to keep count
(the opponent's move still follows from its own move and the result).

Task distribution (ORBIT): the opponent's dominant move is uniform over the 3 moves, with probability
``p_dom = 0.4 + 0.6 * Beta(2, 2)`` (mean 0.7; ORBIT's ``min_dom`` 0.4 of its training config); the remaining
``1 - p_dom`` is split over the two other moves by ``Dirichlet(1, 1)``. The strategy is fixed for the trial;
only the draws change from round to round.

Variant ``rules="verbose"`` (the id ``rockpaperscissors-verbose``: this env's rules before ORBIT's became the
default). The feedback names both moves and gives the running score ("Round 2: you played rock, the opponent
played paper. You lose this round. Score: you 1, opponent 1, draws 0."), and the match stops as soon as it is
decided: WON at the ``wins_needed``-th win, LOST as soon as that many wins are out of reach (wins + rounds left
< wins_needed), which the feedback announces. Whether a match is won is the same as under ORBIT's rules; a
decided match leaves more of the trial's step budget for later episodes.

Differences from ORBIT (both rule sets): the wording is ours, and the rules paragraph states the number of
rounds and the win condition (ORBIT's prompt asks to maximise the chance of winning each turn). An answer that
is not one of the three moves is a format error that ends the episode, as in every env here (ORBIT counts it as
a lost round). Under either rule set the match is decided by its last round at the latest, so the turn-limit
truncation never happens.

``oracle_action`` reads the task and plays the counter to the dominant move (it wins with probability
``P(Binomial(max_turns, p_dom) >= wins_needed)`` under both rule sets).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from metarl_jax.envs.base import LOST, RUNNING, WON, TextEnv, TextEnvState
from metarl_jax.envs.pieces import EMPTY, slot

MOVES = ["rock", "paper", "scissors"]  # move m is beaten by (m + 1) % 3
_WIN, _LOSS, _DRAW = range(3)
RULES = ("orbit", "verbose")
_RESULTS = ["You win this round.", "You lose this round.", "This round is a draw."]


@struct.dataclass
class RockPaperScissorsTask:
    """The opponent's hidden mixed strategy.

    Attributes:
      dominant: int32[], the opponent's dominant move.
      probs: float32[3], the opponent's move probabilities (``probs[dominant] = p_dom``).
    """

    dominant: jax.Array
    probs: jax.Array


@struct.dataclass
class RockPaperScissorsGame:
    """Per-episode state.

    Attributes:
      wins, losses, draws: int32[], the running score.
      opponent: int32[], the opponent's move in the last round (-1 before the first).
      result: int32[], the last round's result for the agent (_WIN, _LOSS, _DRAW).
    """

    wins: jax.Array
    losses: jax.Array
    draws: jax.Array
    opponent: jax.Array
    result: jax.Array


def opponent_move(action: jax.Array, result: jax.Array) -> jax.Array:
    """int32[]: the opponent's move implied by the agent's ``action`` and the round's ``result`` (_WIN/_LOSS/_DRAW).

    A win means the opponent played the move ``action`` beats, a loss the move that beats ``action``.
    """
    return ((action + jnp.asarray([-1, 1, 0], jnp.int32)[result]) % 3).astype(jnp.int32)


class RockPaperScissors(TextEnv):
    """Rounds of Rock Paper Scissors against a fixed biased opponent (see the module docstring).

    Task: :class:`RockPaperScissorsTask`. Actions: 0 rock, 1 paper, 2 scissors. ``rules``: ``"orbit"`` (only
    the round's result is shown, all rounds are played) or ``"verbose"`` (moves and score shown, early stop).
    """

    deterministic = False

    def __init__(self, wins_needed: int = 3, max_turns: int = 5, rules: str = "orbit",
                 env_id: str = "rockpaperscissors", text: str = "gem"):
        super().__init__(max_turns, text)
        if not 1 <= wins_needed <= max_turns:
            raise ValueError(f"RockPaperScissors needs 1 <= wins_needed <= max_turns, got {wins_needed}, {max_turns}")
        if rules not in RULES:
            raise ValueError(f"RockPaperScissors rules must be one of {RULES}, got {rules!r}")
        self.env_id = env_id
        self.wins_needed = wins_needed
        self.verbose = rules == "verbose"
        self.action_contents = list(MOVES)
        self._rules = self.book.add(*self._rules_text())
        if self.verbose:
            self._add_verbose_pieces()
        else:
            self._result = self.book.add(*(r + "\n" for r in _RESULTS))
            self.game_layout = [slot(self._rules), slot(self.num), slot(self._rules), slot(self._result)]
        self.opening_slots = (0, 1, 2)

    def _rules_text(self) -> tuple[str, str]:
        """The opening's two pieces, around the number of rounds."""
        n = self.wins_needed
        if self.verbose:
            outcome = (f"You win the match as soon as you have won {n} rounds, and you lose it as soon as {n} wins "
                       "are out of reach. ")
            first = "You are playing Rock Paper Scissors against an opponent, for at most "
        else:
            outcome = (f"You win the match if you win at least {n} of the rounds. Each round you are told only "
                       "whether you win, lose or draw it. ")
            first = "You are playing Rock Paper Scissors against an opponent, for "
        return first, (
            " rounds. Rock beats scissors, scissors beat paper and paper beats rock; equal moves are a draw. "
            + outcome + "The opponent picks its moves at random, but with preferences that never change. "
            "Answer with \\boxed{rock}, \\boxed{paper} or \\boxed{scissors}.\n"
        )

    def _add_verbose_pieces(self) -> None:
        """Pieces and layout of the verbose feedback: round, both moves, result, score, match end."""
        n = self.wins_needed
        self._moves = self.book.add(*MOVES)
        self._round = self.book.add("Round ", ": you played ", ", the opponent played ", ". ")
        self._result = self.book.add(*_RESULTS)
        self._score = self.book.add(" Score: you ", ", opponent ", ", draws ", ".\n")
        self._end = self.book.add(f"You have {n} wins: you win the match!\n",
                                  f"{n} wins are now out of reach: you lose the match.\n")
        self.game_layout = [
            slot(self._rules), slot(self.num), slot(self._rules),  # opening
            slot(self._round), slot(self.num), slot(self._round), slot(self._moves), slot(self._round),
            slot(self._moves), slot(self._round), slot(self._result),
            slot(self._score), slot(self.num), slot(self._score), slot(self.num), slot(self._score), slot(self.num),
            slot(self._score), slot(self._end),
        ]

    def sample_task(self, key, params):
        k_dom, k_beta, k_split = jax.random.split(key, 3)
        dominant = jax.random.randint(k_dom, (), 0, 3, dtype=jnp.int32)
        p_dom = 0.4 + 0.6 * jax.random.beta(k_beta, 2.0, 2.0)
        split = jax.random.dirichlet(k_split, jnp.ones((2,)))
        others = (dominant + jnp.arange(1, 3)) % 3
        probs = jnp.zeros((3,)).at[dominant].set(p_dom).at[others].set((1.0 - p_dom) * split)
        return RockPaperScissorsTask(dominant=dominant, probs=probs.astype(jnp.float32))

    def init_game(self, key, task, params):
        zero = jnp.zeros((), jnp.int32)
        return RockPaperScissorsGame(wins=zero, losses=zero, draws=zero, opponent=jnp.full((), -1, jnp.int32),
                                     result=zero)

    def _decided(self, wins, rounds_left):
        """(won bool[], lost bool[]): the match's end after a round, with ``rounds_left`` rounds still to play."""
        if self.verbose:  # stop as soon as the match is decided
            won = wins >= self.wins_needed
            return won, ~won & (wins + rounds_left < self.wins_needed)
        last = rounds_left <= 0  # ORBIT: every round is played, the match is scored after the last
        return last & (wins >= self.wins_needed), last & (wins < self.wins_needed)

    def game_step(self, key, state: TextEnvState, action, params):
        g = state.game
        opponent = jax.random.categorical(key, jnp.log(state.task.probs)).astype(jnp.int32)
        result = jnp.select([action == (opponent + 1) % 3, action == opponent], [_WIN, _DRAW], _LOSS)
        game = RockPaperScissorsGame(
            wins=g.wins + (result == _WIN), losses=g.losses + (result == _LOSS), draws=g.draws + (result == _DRAW),
            opponent=opponent, result=result.astype(jnp.int32),
        )
        won, lost = self._decided(game.wins, state.max_turns - (state.time + 1))
        return game, jnp.select([won, lost], [WON, LOST], RUNNING).astype(jnp.int32)

    def oracle_action(self, key, state: TextEnvState):
        """The move that beats the opponent's dominant move."""
        return ((state.task.dominant + 1) % 3).astype(jnp.int32)

    # ------------------------------------------------------------------ text
    def game_pieces(self, state: TextEnvState):
        rules = jnp.stack([self._rules[0], self.number(state.max_turns), self._rules[1]])
        feedback = self._verbose_feedback(state) if self.verbose else jnp.stack([self._result[state.game.result]])
        blank = lambda n: jnp.full((n,), EMPTY)  # noqa: E731
        return jnp.where(
            state.time == 0,
            jnp.concatenate([rules, blank(feedback.shape[0])]),
            jnp.concatenate([blank(3), feedback]),
        ).astype(jnp.int32)

    def _verbose_feedback(self, state: TextEnvState) -> jax.Array:
        """int32[16]: the verbose feedback's pieces (round, moves, result, score, match end)."""
        g = state.game
        won, lost = self._decided(g.wins, state.max_turns - state.time)
        return jnp.stack([
            self._round[0], self.number(state.time), self._round[1],
            self._moves[jnp.clip(state.last_action, 0, 2)], self._round[2], self._moves[jnp.maximum(g.opponent, 0)],
            self._round[3], self._result[g.result],
            self._score[0], self.number(g.wins), self._score[1], self.number(g.losses), self._score[2],
            self.number(g.draws), self._score[3],
            jnp.select([won, lost], [self._end[0], self._end[1]], EMPTY),
        ])

    def render_game_text(self, state):
        t = int(state.time)
        if t == 0:
            first, rest = self._rules_text()
            return f"{first}{int(state.max_turns)}{rest}"
        g = state.game
        result = _RESULTS[int(g.result)]
        if not self.verbose:
            return result + "\n"
        n = self.wins_needed
        wins, losses, draws = int(g.wins), int(g.losses), int(g.draws)
        text = (
            f"Round {t}: you played {MOVES[int(state.last_action)]}, the opponent played {MOVES[int(g.opponent)]}. "
            f"{result} Score: you {wins}, opponent {losses}, draws {draws}.\n"
        )
        if wins >= n:
            text += f"You have {n} wins: you win the match!\n"
        elif wins + int(state.max_turns) - t < n:
            text += f"{n} wins are now out of reach: you lose the match.\n"
        return text
