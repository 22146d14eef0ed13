"""Two-armed Bernoulli bandit as a text game (``BernoulliBandit-misc``), wrapping gymnax's BernoulliBandit.

Task: the arms' reward probabilities, float32[2], drawn by gymnax's own ``BernoulliBandit.reset_env`` (Wang et
al. 2017): ``[p, 1 - p]`` with ``p`` uniform over ``{reward_prob, 1 - reward_prob}`` (``reward_prob`` = 0.1 by
default, a field of :class:`BanditParams`, so it can be overridden through ``make`` and vmapped). The task
is fixed for the trial: every episode pulls the same arms.

Rules: an episode is ``max_turns`` pulls (1 by default). Each pull's reward is sampled by gymnax's
``BernoulliBandit.step_env`` with the step key. The episode is a success iff at least ``ceil(max_turns / 2)``
pulls pay 1; it always lasts all ``max_turns`` pulls and is decided (WON or LOST) on the last one.
Actions: ``arm 1``, ``arm 2`` (``\\boxed{arm 1}``). Feedback: the arm pulled and whether it paid; the last
pull also gives the episode's tally. The env is stochastic (``deterministic = False``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments.misc import bernoulli_bandit as gx

from metarl_jax.envs.base import LOST, RUNNING, WON, TextEnv, TextEnvParams, TextEnvState
from metarl_jax.envs.pieces import EMPTY, slot


@struct.dataclass
class BanditParams(TextEnvParams):
    """Text-game params plus gymnax's ``reward_prob`` (the task is ``[p, 1 - p]``, p in {reward_prob, 1 - reward_prob})."""

    reward_prob: float = 0.1


@struct.dataclass
class BanditGame:
    wins: jax.Array  # int32[], pulls that paid this episode
    paid: jax.Array  # bool[], whether the last pull paid


def threshold(max_turns) -> jax.Array:
    """Pulls that must pay for a success: ``ceil(max_turns / 2)``."""
    return (jnp.asarray(max_turns, jnp.int32) + 1) // 2


class BernoulliBanditText(TextEnv):
    """gymnax's Bernoulli bandit as a text game (see the module docstring).

    Task: float32[2] reward probabilities. Game: :class:`BanditGame`. Actions: 0 arm 1, 1 arm 2.
    """

    params_cls = BanditParams
    deterministic = False

    def __init__(self, max_turns: int = 1, env_id: str = "BernoulliBandit-misc", text: str = "gem"):
        super().__init__(max_turns, text)
        self.env_id = env_id
        self.gymnax_env = gx.BernoulliBandit()
        self.action_contents = ["arm 1", "arm 2"]
        self._rules = self.book.add(
            "You are playing a two-armed bandit. Each arm pays 1 with its own hidden probability, and these "
            "probabilities stay the same in every episode. Pulls in this episode: ",
            ". The episode is a success if at least ",
            " of them pay 1. Pull an arm with \\boxed{arm 1} or \\boxed{arm 2}.\n",
        )
        self._turn = self.book.add("At turn ", ", you pulled arm ", " and it paid 1.", " and it paid nothing.")
        self._tally = self.book.add(" In total ", " of ", " pulls paid: the episode is a success.", " pulls paid: the episode is a failure.")
        self.game_layout = [
            slot(self._rules), slot(self.num), slot(self._rules), slot(self.num), slot(self._rules),
            slot(self._turn), slot(self.num), slot(self._turn), slot(self.num), slot(self._turn),
            slot(self._tally), slot(self.num), slot(self._tally), slot(self.num), slot(self._tally),
        ]
        self.opening_slots = (0, 1, 2, 3, 4)

    def _gymnax_params(self, params) -> gx.EnvParams:
        return self.gymnax_env.default_params.replace(reward_prob=params.reward_prob)

    # ------------------------------------------------------------------ dynamics
    def sample_task(self, key, params) -> jax.Array:
        _, gstate = self.gymnax_env.reset_env(key, self._gymnax_params(params))
        return jnp.asarray(gstate.reward_probs, jnp.float32)

    def init_game(self, key, task, params) -> BanditGame:
        return BanditGame(wins=jnp.zeros((), jnp.int32), paid=jnp.zeros((), bool))

    def game_step(self, key, state: TextEnvState, action, params):
        probs = state.task
        gstate = gx.EnvState(
            last_action=jnp.zeros((), jnp.int32), last_reward=jnp.zeros((), jnp.int32),
            exp_reward_best=probs.max(), reward_probs=probs, time=state.time.astype(jnp.float32),
        )
        _, _, reward, _, _ = self.gymnax_env.step_env(key, gstate, action, self._gymnax_params(params))
        paid = reward > 0
        wins = state.game.wins + paid.astype(jnp.int32)
        last = state.time + 1 >= state.max_turns
        outcome = jnp.where(last, jnp.where(wins >= threshold(state.max_turns), WON, LOST), RUNNING)
        return BanditGame(wins=wins, paid=paid), outcome

    def oracle_action(self, key, state: TextEnvState) -> jax.Array:
        """Pull the arm with the higher reward probability."""
        return jnp.argmax(state.task).astype(jnp.int32)

    # ------------------------------------------------------------------ text
    def game_pieces(self, state: TextEnvState):
        n = self.number
        game = state.game
        opening = state.time == 0
        last = state.time >= state.max_turns
        rules = jnp.stack([self._rules[0], n(state.max_turns), self._rules[1], n(threshold(state.max_turns)), self._rules[2]])
        turn = jnp.stack([
            self._turn[0], n(state.time), self._turn[1], n(jnp.maximum(state.last_action, 0) + 1),
            jnp.where(game.paid, self._turn[2], self._turn[3]),
        ])
        won = game.wins >= threshold(state.max_turns)
        tally = jnp.stack([
            self._tally[0], n(game.wins), self._tally[1], n(state.max_turns), jnp.where(won, self._tally[2], self._tally[3]),
        ])
        return jnp.concatenate([
            jnp.where(opening, rules, EMPTY), jnp.where(opening, EMPTY, turn), jnp.where(last, tally, EMPTY),
        ])

    def render_game_text(self, state) -> str:
        t, turns = int(state.time), int(state.max_turns)
        need = (turns + 1) // 2
        if t == 0:
            return (
                "You are playing a two-armed bandit. Each arm pays 1 with its own hidden probability, and these "
                f"probabilities stay the same in every episode. Pulls in this episode: {turns}. The episode is a "
                f"success if at least {need} of them pay 1. Pull an arm with \\boxed{{arm 1}} or \\boxed{{arm 2}}.\n"
            )
        wins = int(state.game.wins)
        text = f"At turn {t}, you pulled arm {int(state.last_action) + 1} and it " + (
            "paid 1." if bool(state.game.paid) else "paid nothing.")
        if t >= turns:
            verdict = "success" if wins >= need else "failure"
            text += f" In total {wins} of {turns} pulls paid: the episode is a {verdict}."
        return text
