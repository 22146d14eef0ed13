"""Rock Paper Scissors against a biased opponent (ORBIT's ``rockpaperscissors``), JAX-native.

Rules. Each turn is a round: the agent plays ``\\boxed{rock}``, ``\\boxed{paper}`` or ``\\boxed{scissors}``
and the opponent draws a move from its hidden mixed strategy (with the step key, so the env is not
deterministic). Rock beats scissors, scissors beat paper, paper beats rock; equal moves draw. The feedback
gives both moves, the round's result and the running score (wins, losses, draws). The episode is WON as soon
as the agent has ``wins_needed`` (3) wins, within ``max_turns`` (5) rounds.

Task distribution (ORBIT): the opponent's dominant move is uniform over the 3 moves, with probability
``p_dom = 0.4 + 0.6 * Beta(2, 2)`` (mean 0.7); the remaining ``1 - p_dom`` is split over the two other moves
by ``Dirichlet(1, 1)``. The strategy is fixed for the trial; only the draws change from round to round.

Difference from ORBIT: the episode ends LOST as soon as ``wins_needed`` wins within ``max_turns`` rounds is
out of reach (wins + rounds left < wins_needed), instead of playing the remaining rounds out. Whether the
episode is won is unchanged, and a decided episode leaves more of the trial's step budget for later episodes.
Because of this early stop every episode is decided by its last round at the latest, so the turn-limit
truncation never happens.

``oracle_action`` reads the task and plays the counter to the dominant move (it wins with probability
``P(Binomial(max_turns, p_dom) >= wins_needed)``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from metarl_jax.envs.base import LOST, RUNNING, WON, TextEnv, TextEnvState
from metarl_jax.envs.pieces import EMPTY, slot

MOVES = ["rock", "paper", "scissors"]  # move m is beaten by (m + 1) % 3
_WIN, _LOSS, _DRAW = range(3)


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


class RockPaperScissors(TextEnv):
    """Best-of rounds of Rock Paper Scissors against a fixed biased opponent (see the module docstring).

    Task: :class:`RockPaperScissorsTask`. Actions: 0 rock, 1 paper, 2 scissors.
    """

    deterministic = False

    def __init__(self, wins_needed: int = 3, max_turns: int = 5, env_id: str = "rockpaperscissors",
                 text: str = "gem"):
        super().__init__(max_turns, text)
        if not 1 <= wins_needed <= max_turns:
            raise ValueError(f"RockPaperScissors needs 1 <= wins_needed <= max_turns, got {wins_needed}, {max_turns}")
        self.env_id = env_id
        self.wins_needed = wins_needed
        self.action_contents = list(MOVES)
        self._rules = self.book.add(
            "You are playing Rock Paper Scissors against an opponent, for at most ",
            f" rounds. Rock beats scissors, scissors beat paper and paper beats rock; equal moves are a draw. You "
            f"win the match as soon as you have won {wins_needed} rounds, and you lose it as soon as {wins_needed} "
            "wins are out of reach. The opponent picks its moves at random, but with preferences that never change. "
            "Answer with \\boxed{rock}, \\boxed{paper} or \\boxed{scissors}.\n",
        )
        self._moves = self.book.add(*MOVES)
        self._round = self.book.add("Round ", ": you played ", ", the opponent played ", ". ")
        self._result = self.book.add("You win this round.", "You lose this round.", "This round is a draw.")
        self._score = self.book.add(" Score: you ", ", opponent ", ", draws ", ".\n")
        self._end = self.book.add(
            f"You have {wins_needed} wins: you win the match!\n",
            f"{wins_needed} wins are now out of reach: you lose the match.\n",
        )
        self.game_layout = [
            slot(self._rules), slot(self.num), slot(self._rules),  # opening
            slot(self._round), slot(self.num), slot(self._round), slot(self._moves), slot(self._round),
            slot(self._moves), slot(self._round), slot(self._result),
            slot(self._score), slot(self.num), slot(self._score), slot(self.num), slot(self._score), slot(self.num),
            slot(self._score), slot(self._end),
        ]
        self.opening_slots = (0, 1, 2)

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

    def game_step(self, key, state: TextEnvState, action, params):
        g = state.game
        opponent = jax.random.categorical(key, jnp.log(state.task.probs)).astype(jnp.int32)
        result = jnp.select([action == (opponent + 1) % 3, action == opponent], [_WIN, _DRAW], _LOSS)
        game = RockPaperScissorsGame(
            wins=g.wins + (result == _WIN), losses=g.losses + (result == _LOSS), draws=g.draws + (result == _DRAW),
            opponent=opponent, result=result.astype(jnp.int32),
        )
        rounds_left = state.max_turns - (state.time + 1)
        outcome = jnp.select([game.wins >= self.wins_needed, game.wins + rounds_left < self.wins_needed],
                             [WON, LOST], RUNNING)
        return game, outcome.astype(jnp.int32)

    def oracle_action(self, key, state: TextEnvState):
        """The move that beats the opponent's dominant move."""
        return ((state.task.dominant + 1) % 3).astype(jnp.int32)

    # ------------------------------------------------------------------ text
    def game_pieces(self, state: TextEnvState):
        g = state.game
        won = g.wins >= self.wins_needed
        lost = ~won & (g.wins + state.max_turns - state.time < self.wins_needed)
        feedback = jnp.stack([
            self._round[0], self.number(state.time), self._round[1],
            self._moves[jnp.clip(state.last_action, 0, 2)], self._round[2], self._moves[jnp.maximum(g.opponent, 0)],
            self._round[3], self._result[g.result],
            self._score[0], self.number(g.wins), self._score[1], self.number(g.losses), self._score[2],
            self.number(g.draws), self._score[3],
            jnp.select([won, lost], [self._end[0], self._end[1]], EMPTY),
        ])
        rules = jnp.stack([self._rules[0], self.number(state.max_turns), self._rules[1]])
        return jnp.where(
            state.time == 0,
            jnp.concatenate([rules, jnp.full((16,), EMPTY)]),
            jnp.concatenate([jnp.full((3,), EMPTY), feedback]),
        ).astype(jnp.int32)

    def render_game_text(self, state):
        t = int(state.time)
        n = self.wins_needed
        if t == 0:
            return (
                f"You are playing Rock Paper Scissors against an opponent, for at most {int(state.max_turns)} rounds. "
                "Rock beats scissors, scissors beat paper and paper beats rock; equal moves are a draw. You win the "
                f"match as soon as you have won {n} rounds, and you lose it as soon as {n} wins are out of reach. "
                "The opponent picks its moves at random, but with preferences that never change. Answer with "
                "\\boxed{rock}, \\boxed{paper} or \\boxed{scissors}.\n"
            )
        g = state.game
        wins, losses, draws = int(g.wins), int(g.losses), int(g.draws)
        result = ["You win this round.", "You lose this round.", "This round is a draw."][int(g.result)]
        text = (
            f"Round {t}: you played {MOVES[int(state.last_action)]}, the opponent played {MOVES[int(g.opponent)]}. "
            f"{result} Score: you {wins}, opponent {losses}, draws {draws}.\n"
        )
        if wins >= n:
            text += f"You have {n} wins: you win the match!\n"
        elif wins + int(state.max_turns) - t < n:
            text += f"{n} wins are now out of reach: you lose the match.\n"
        return text
