"""The multi-episode wrapper: one *trial* = several episodes of the same task.

Semantics (ORBIT: the paper and its released code, XiaofengLin7/ORBIT; ``docs/differences_from_orbit.md``):

* the task is drawn once per trial; every episode of the trial is reset with that same task (unless
  ``new_task_each_episode``: independent games back to back, a pretraining corpus without cross-episode signal);
* the trial ends only when the total number of steps reaches ``total_step_cap``; an episode that ends early
  leaves room for more episodes, and one still running at the cap is cut off;
* the reward is 1.0 on the step that ends an episode in success (the inner game was won), else 0, so the
  trial return is the number of successful episodes;
* each episode opens with the header ``[Episode k] New episode begins.`` (``[Episode k]`` for a game in the
  ``terse`` text style) followed by the game's opening
  observation (rules included). At a boundary the agent sees the finished episode's terminal observation,
  then the header, then the new opening;
* optional reflection: after an episode ends (and the trial goes on) the agent gets one extra turn with a
  reflection prompt (ORBIT's request in our words: a step-by-step reflection and a new plan inside
  ``<remark>`` tags). That turn's action is ignored, earns 0 and counts no step;
* optional LaMer variant (``lamer_gamma``): the trial stops at its first success, which earns gamma^k;
* ``info`` holds ``episode_index`` (0-based, of the episode the step acted in), ``episode_done``,
  ``episode_success``, ``trial_done``, ``reflection`` (the step was a reflection turn) and ``total_steps``.

The wrapper is a gymnax environment itself: ``step`` auto-resets to a new trial after the last step (gymnax
convention) and ``step_env`` does not. The end of a trial is reported as ``terminated``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment

from metarl_jax.envs.base import TextEnv, TextEnvState, to_host, tree_select
from metarl_jax.envs.pieces import EMPTY, join_pieces, slot

# What the current observation shows (TrialState.view).
VIEW_START, VIEW_STEP, VIEW_BOUNDARY, VIEW_REFLECT, VIEW_AFTER_REFLECT = range(5)


@struct.dataclass
class TrialState:
    """State of a multi-episode trial.

    Attributes:
      inner: the current episode's game state (its ``task`` is the trial's task).
      prev: the last finished episode's terminal state (shown at an episode boundary).
      episode_index: int32[], 0-based index of the current episode.
      total_steps: int32[], env steps taken in the trial (reflection turns excluded).
      successes: int32[], successful episodes so far (the trial return).
      view: int32[], what the observation shows (VIEW_* codes).
      trial_done: bool[], the step cap was reached.
    """

    inner: TextEnvState
    prev: TextEnvState
    episode_index: jax.Array
    total_steps: jax.Array
    successes: jax.Array
    view: jax.Array
    trial_done: jax.Array


class MultiEpisode(environment.Environment):
    """Wraps a :class:`~metarl_jax.envs.base.TextEnv` into multi-episode trials of one task.

    Args:
      env: the game.
      total_step_cap: env steps in a trial, over all its episodes (ORBIT's ``total_step_cap``).
      reflection: add a reflection turn between episodes.
      intro: open the trial with a short text that explains the multi-episode setting.
      repeat_opening: show the game's opening (its rules, ``env.opening_slots``) at the start of every episode,
        as ORBIT does. With ``False`` only the first episode shows it; later episodes open with the header and
        the rest of the game's first observation. The opening depends only on the task, which a trial keeps,
        so nothing is hidden; short episodes then cost far fewer context tokens (useful for small models). With
        ``new_task_each_episode`` the opening is repeated anyway where it shows the task (``env.opening_shows_task``).
      lamer_gamma: > 0 plays the LaMer variant in ORBIT's repository (its ``lamer_multi_episode_env.py``): the
        trial ends at its first successful episode, which earns ``lamer_gamma ** k`` (k its 0-based index;
        LaMer: 0.6) instead of 1, and a reflection turn (with ``reflection``) follows only failed episodes. 0:
        ORBIT's trial. (The remark reward of that variant is paid by the rollout, which sees the text:
        :class:`~metarl_jax.agents.rollout.RolloutSpec`'s ``remark_reward``.)
      max_episodes: > 0 ends the trial when that many episodes have ended, even with steps left under the cap
        (1: the single-episode trial of the standard-RL baseline, which must not see a second episode after an
        early win). 0: as many episodes as the cap holds (ORBIT).
      new_task_each_episode: every episode after the first draws a fresh task (``env.sample_task``) instead of
        keeping the trial's: independent games played back to back in one context, whose earlier episodes say
        nothing about the current one (the imitation phase's corpus, ``config.pretrain.new_task_each_episode``).
        False: ORBIT's trial, one task throughout.
    """

    def __init__(self, env: TextEnv, total_step_cap: int, reflection: bool = False, intro: bool = True,
                 repeat_opening: bool = True, *, lamer_gamma: float = 0.0, max_episodes: int = 0,
                 new_task_each_episode: bool = False):
        if not isinstance(env, TextEnv):
            raise TypeError(f"MultiEpisode wraps a metarl_jax TextEnv, got {type(env).__name__}")
        if int(total_step_cap) < env.default_max_turns:
            raise ValueError(
                f"total_step_cap={total_step_cap} is below max_turns={env.default_max_turns} of {env.name!r}: "
                f"a trial could not hold one full episode. Raise total_step_cap to at least {env.default_max_turns} "
                f"(ORBIT uses 3 x max_turns = {3 * env.default_max_turns})."
            )
        if not 0.0 <= float(lamer_gamma) <= 1.0:
            raise ValueError(f"lamer_gamma={lamer_gamma} must be in [0, 1] (0: ORBIT's trial; LaMer: 0.6)")
        self.env = env
        self.total_step_cap = int(total_step_cap)
        self.lamer_gamma = float(lamer_gamma)
        if int(max_episodes) < 0:
            raise ValueError(f"max_episodes={max_episodes} must be >= 0 (0: as many as total_step_cap holds)")
        self.max_episodes = int(max_episodes)
        self.new_task_each_episode = bool(new_task_each_episode)
        self.reflection, self.intro = bool(reflection), bool(intro)
        # A new task each episode changes an opening that shows the task: hiding it would hide the new task.
        self.repeat_opening = bool(repeat_opening) or (self.new_task_each_episode and env.opening_shows_task)
        self.book = env.book.copy()
        self._num = self.book.add(*[str(i) for i in range(self.total_step_cap + 2)])
        self._intro = self.book.add(
            "You will play the same game for several episodes in a row, with ",
            " steps in total over all episodes. Every episode restarts the game, but the hidden task stays the "
            "same, so use what you learn in earlier episodes to do better in later ones. Give each action inside "
            "\\boxed{}.\n",
        )
        self._header = self.book.add("[Episode ", self._header_tail)
        # Between the finished episode's last observation and the header or the reflection request (ORBIT: a blank
        # line; see docs/differences_from_orbit.md).
        self._newline = self.book.add_one("\n")
        # ORBIT's reflection request, in our words: reason step by step about the strategy and where it failed,
        # plan the actions that should have been taken, and give both inside remark tags.
        self._reflect = self.book.add_one(
            "The episode is over. Before the next one starts, reflect step by step on the strategy you used and "
            "where it went wrong, then make a short new plan that names the actions you should have taken. Give "
            "your reflection and plan inside <remark> </remark> tags.\n"
        )

    @property
    def _header_tail(self) -> str:
        """The header after the episode number (a terse game gets a terse header too)."""
        return "]\n" if self.env.terse else "] New episode begins.\n"

    # ------------------------------------------------------------------ passthroughs
    @property
    def name(self) -> str:
        return f"MultiEpisode({self.env.name}, cap={self.total_step_cap})"

    @property
    def default_params(self):
        return self.env.default_params

    @property
    def num_actions(self) -> int:
        return self.env.num_actions

    def action_space(self, params=None):
        return self.env.action_space(params)

    def action_text(self, i: int) -> str:
        return self.env.action_text(i)

    def parse_action(self, text: str) -> int:
        return self.env.parse_action(text)

    @property
    def deterministic(self) -> bool:
        return self.env.deterministic

    def valid_actions(self, state: TrialState) -> jax.Array:
        return self.env.valid_actions(state.inner)

    def oracle_action(self, key, state: TrialState) -> jax.Array:
        return self.env.oracle_action(key, state.inner)

    def consistent_actions(self, state: TrialState) -> jax.Array:
        return self.env.consistent_actions(state.inner)

    def answer_action(self, task) -> jax.Array:
        return self.env.answer_action(task)

    @property
    def has_answer_action(self) -> bool:
        return self.env.has_answer_action

    def sample_task(self, key, params):
        return self.env.sample_task(key, params)

    # ------------------------------------------------------------------ dynamics
    def reset_env(self, key: jax.Array, params) -> tuple[jax.Array, TrialState]:
        key_task, key_game = jax.random.split(key)
        return self.reset_to_task(key_game, self.env.sample_task(key_task, params), params)

    def reset_to_task(self, key: jax.Array, task: Any, params) -> tuple[jax.Array, TrialState]:
        """Starts a trial of the given task."""
        _, inner = self.env.reset_to_task(key, task, params)
        zero = jnp.zeros((), jnp.int32)
        state = TrialState(
            inner=inner, prev=inner, episode_index=zero, total_steps=zero, successes=zero,
            view=jnp.full((), VIEW_START, jnp.int32), trial_done=jnp.zeros((), bool),
        )
        return self.obs_pieces(state), state

    def step_env(self, key: jax.Array, state: TrialState, action, params):
        key_step, key_reset = jax.random.split(key)
        reflecting = state.view == VIEW_REFLECT
        task = state.inner.task
        if self.new_task_each_episode:
            key_reset, key_task = jax.random.split(key_reset)
            task = self.env.sample_task(key_task, params)
        _, fresh = self.env.reset_to_task(key_reset, task, params)

        # An ordinary env step.
        _, inner, _, terminated, info = self.env.step_env(key_step, state.inner, action, params)
        episode_done = terminated | self.env.is_truncated(inner, params)
        success = info["success"]
        total_steps = state.total_steps + 1
        trial_done = total_steps >= self.total_step_cap
        if self.lamer_gamma:  # LaMer: stop at the first success, worth gamma ** (its 0-based episode index)
            trial_done = trial_done | success
        if self.max_episodes:
            trial_done = trial_done | (episode_done & (state.episode_index + 1 >= self.max_episodes))
        next_episode = episode_done & ~trial_done
        start_now = next_episode & (not self.reflection)
        played = TrialState(
            inner=tree_select(start_now, fresh, inner),
            prev=tree_select(episode_done, inner, state.prev),
            episode_index=state.episode_index + start_now.astype(jnp.int32),
            total_steps=total_steps,
            successes=state.successes + success.astype(jnp.int32),
            view=jnp.where(next_episode, VIEW_REFLECT if self.reflection else VIEW_BOUNDARY, VIEW_STEP).astype(jnp.int32),
            trial_done=trial_done,
        )
        # A reflection turn: the action is ignored, no step is counted, the next episode starts.
        reflected = state.replace(
            inner=fresh, episode_index=state.episode_index + 1, view=jnp.full((), VIEW_AFTER_REFLECT, jnp.int32)
        )
        new_state = tree_select(reflecting, reflected, played)
        # Stepping a finished trial changes nothing.
        new_state = tree_select(state.trial_done, state, new_state)
        live = ~state.trial_done & ~reflecting
        success = success & live
        info = {
            "episode_index": state.episode_index,
            "episode_done": episode_done & live,
            "episode_success": success,
            "success": success,
            "trial_done": new_state.trial_done,
            "reflection": reflecting & ~state.trial_done,
            "total_steps": new_state.total_steps,
        }
        reward = success.astype(jnp.float32)
        if self.lamer_gamma:
            reward = reward * jnp.float32(self.lamer_gamma) ** state.episode_index.astype(jnp.float32)
        return self.obs_pieces(new_state), new_state, reward, new_state.trial_done, info

    def is_truncated(self, state: TrialState, params) -> jax.Array:
        return jnp.zeros((), bool)

    def is_terminated(self, state: TrialState, params) -> jax.Array:
        return state.trial_done

    # ------------------------------------------------------------------ text
    @property
    def pieces(self) -> list[str]:
        return self.book.strings

    @property
    def layout(self):
        """Intro, the finished episode's terminal observation, separator, reflection prompt, header, then the
        current observation."""
        return [
            slot(self._intro), slot(self._num), slot(self._intro),
            *self.env.later_layout, slot(self._newline), slot(self._reflect),
            slot(self._header), slot(self._num), slot(self._header),
            *self.env.layout,
        ]

    def obs_pieces(self, state: TrialState) -> jax.Array:
        """``int32[len(layout)]`` piece ids of the observation of ``state``."""
        view = state.view
        show_intro = (view == VIEW_START) & self.intro
        show_prev = (view == VIEW_BOUNDARY) | (view == VIEW_REFLECT)
        show_header = (view == VIEW_START) | (view == VIEW_BOUNDARY) | (view == VIEW_AFTER_REFLECT)
        show_inner = view != VIEW_REFLECT
        inner = self.env.obs_pieces(state.inner)
        if not self.repeat_opening:
            opening = jnp.zeros(inner.shape, bool).at[jnp.asarray(self.env.opening_slots, jnp.int32)].set(True)
            inner = jnp.where(opening & (state.episode_index > 0), EMPTY, inner)

        def when(cond, ids):
            return jnp.where(cond, jnp.asarray(ids, jnp.int32), EMPTY)

        return jnp.concatenate([
            when(show_intro, jnp.stack([self._intro[0], self._num[self.total_step_cap], self._intro[1]])),
            when(show_prev, self.env.obs_pieces(state.prev)),
            when(show_prev, jnp.stack([self._newline[0]])),
            when(view == VIEW_REFLECT, jnp.stack([self._reflect[0]])),
            when(show_header, jnp.stack([self._header[0], self._num[jnp.minimum(state.episode_index + 1, self.total_step_cap + 1)], self._header[1]])),
            when(show_inner, inner),
        ]).astype(jnp.int32)

    def render_text(self, state: TrialState) -> str:
        """Host-side reference rendering of the observation of a single trial state."""
        state = to_host(state)
        view = int(state.view)
        parts = []
        if view == VIEW_START and self.intro:
            parts.append(self._intro_text())
        if view in (VIEW_BOUNDARY, VIEW_REFLECT):
            parts.append(self.env.render_text(state.prev) + self.pieces[self._newline[0]])
        if view == VIEW_REFLECT:
            parts.append(self.pieces[self._reflect[0]])
        if view in (VIEW_START, VIEW_BOUNDARY, VIEW_AFTER_REFLECT):
            parts.append(f"[Episode {int(state.episode_index) + 1}{self._header_tail}")
        if view != VIEW_REFLECT:
            text = self.env.render_text(state.inner)
            if not self.repeat_opening and int(state.episode_index) > 0 and int(state.inner.time) == 0:
                opening = self._opening_text(state.inner)
                if not text.startswith(opening):
                    raise ValueError(f"{self.env.name}: the opening slots must lead the first observation")
                text = text[len(opening):]
            parts.append(text)
        return "".join(parts)

    def _opening_text(self, inner) -> str:
        """The text of the opening slots of a fresh game state (they lead its first observation)."""
        ids = np.asarray(self.env.obs_pieces(inner))
        return join_pieces(self.pieces, [ids[i] for i in self.env.opening_slots])

    def pieces_text(self, piece_ids) -> str:
        return join_pieces(self.pieces, piece_ids)

    def _intro_text(self) -> str:
        return (
            f"You will play the same game for several episodes in a row, with {self.total_step_cap} steps in total "
            "over all episodes. Every episode restarts the game, but the hidden task stays the same, so use what "
            "you learn in earlier episodes to do better in later ones. Give each action inside \\boxed{}.\n"
        )

    def __repr__(self) -> str:
        return self.name
