"""The base class of every JAX-native text game: the gymnax 1.0 API plus a text interface.

A :class:`TextEnv` splits its state into a *task* (the hidden thing a trial is about: the secret number,
the maze, the deck), drawn by :meth:`TextEnv.sample_task`, and a per-episode *game* state, built from the
task by :meth:`TextEnv.init_game`. The multi-episode wrapper (:mod:`metarl_jax.envs.multi_episode`) uses
that split to reset every episode of a trial with the same task.

Subclasses implement five small pure functions (``sample_task``, ``init_game``, ``game_step``,
``game_pieces``) and one host-side reference renderer (``render_game_text``); this class does the rest:
turn counting, the turn limit, format errors (an action index outside ``[0, num_actions)``, which is what
the free-text decoder emits when it cannot parse ``\\boxed{...}``), the GEM convention that the last
turn's feedback is replaced by a "maximum number of turns" message, action texts and parsing.

Text styles (``text``): ``"gem"`` (every env) renders GEM's sentences, as ORBIT does. ``"terse"`` (envs that
list it in ``text_styles``) renders each turn's bare feedback after the action, e.g.
``\\boxed{25} lower``, and the turn limit as `` out of turns``: about a third of the tokens, for small
from-scratch models whose cost and learning speed depend on the context length.

Episode status codes (``state.status``): ``RUNNING``, ``WON``, ``LOST`` (the game ended in failure, e.g.
a mine), ``OUT_OF_TURNS`` (truncated) and ``FORMAT_ERROR`` (ends the episode, as in GEM).
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment, spaces

from metarl_jax.envs.pieces import EMPTY, Group, PieceBook, Slot, join_pieces, slot

RUNNING, WON, LOST, OUT_OF_TURNS, FORMAT_ERROR = 0, 1, 2, 3, 4

# Numbers 0..MAX_NUMBER are available to every env as pieces (turn counters, coordinates, values).
MAX_NUMBER = 100

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


@struct.dataclass
class TextEnvParams:
    """Runtime settings shared by all text games (vmappable).

    Attributes:
      max_turns: turns allowed in one episode; the episode is truncated when they run out.
    """

    max_turns: int = 10


@struct.dataclass
class TextEnvState:
    """State of a text game.

    Attributes:
      task: the game's task pytree, fixed for a trial.
      game: the game's per-episode pytree.
      time: int32[], turns taken in this episode.
      max_turns: int32[], the episode's turn limit (copied from params at reset, so text renders from state).
      status: int32[], one of RUNNING, WON, LOST, OUT_OF_TURNS, FORMAT_ERROR.
      last_action: int32[], the last action index taken (-1 before the first turn or on a format error).
    """

    task: Any
    game: Any
    time: jax.Array
    max_turns: jax.Array
    status: jax.Array
    last_action: jax.Array


def implements_answer_action(env_class: type) -> bool:
    """Whether an env class overrides :meth:`TextEnv.answer_action` (needed by the answer loss)."""
    return getattr(env_class, "answer_action", TextEnv.answer_action) is not TextEnv.answer_action


def implements_consistent_actions(env_class: type) -> bool:
    """Whether an env class overrides :meth:`TextEnv.consistent_actions` (needed by the scripted episode player)."""
    return getattr(env_class, "consistent_actions", TextEnv.consistent_actions) is not TextEnv.consistent_actions


def tree_select(pred, on_true, on_false):
    """``jnp.where`` over two pytrees of the same structure, with a scalar predicate."""
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def to_host(tree):
    """Converts a (single, unbatched) pytree of arrays to numpy, for host-side rendering."""
    return jax.tree.map(np.asarray, tree)


def normalize_action_text(content: str) -> str:
    """Canonical form of a ``\\boxed{...}`` content: lower case, single spaces, trimmed."""
    return " ".join(content.lower().split())


class TextEnv(environment.Environment):
    """A JAX-native text game with a finite action set (see the module docstring).

    Subclasses set in ``__init__`` (after calling ``super().__init__()``):
      * ``self.action_contents``: list of the canonical strings inside ``\\boxed{}``, one per action;
      * ``self.game_layout``: list of slots (see :mod:`metarl_jax.envs.pieces`) for ``game_pieces``;
      and add their pieces to ``self.book``. ``self.num`` is the group of the numbers ``0..MAX_NUMBER``;
      ``self.number(x)`` clips ``x`` into it.
    """

    env_id: str = "text-env"
    params_cls = TextEnvParams
    # Whether the whole episode is a deterministic function of (task, actions): the step key is unused.
    deterministic: bool = True
    # The text styles this env can render (see the module docstring); "gem" is the default.
    text_styles: tuple[str, ...] = ("gem",)

    def __init__(self, max_turns: int, text: str = "gem"):
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        if text not in self.text_styles:
            raise ValueError(f"{type(self).__name__} renders text styles {list(self.text_styles)}, got text={text!r}")
        self.default_max_turns = int(max_turns)
        self.text = text
        self.book = PieceBook()
        self.num: Group = self.book.add(*[str(i) for i in range(MAX_NUMBER + 1)])
        self._msg_format = self.book.add("At turn ", ", you did not provide a valid action.")
        self._msg_out_of_turns = self.book.add_one(self.out_of_turns_text)
        self.action_contents: list[str] = []
        self.game_layout: list[Slot] = []
        # Indices of game_layout slots that are empty whenever state.time > 0 (the rules of the opening). The
        # multi-episode wrapper drops them from the layout of a finished episode's terminal observation,
        # which keeps the rendered token budget tight. Declaring a slot here that can show text after the
        # opening breaks rendering (the render round-trip tests catch it).
        self.opening_slots: tuple[int, ...] = ()
        # Indices of game_layout slots that show text only on a turn that ends the episode (a win's restated
        # secret). They do not count towards an ordinary turn's length, which sizes the rollout's prefill calls
        # (metarl_jax.agents.context); the token bounds still count them.
        self.final_slots: tuple[int, ...] = ()
        # Whether the opening slots show something of the task (a dealt hand, a goal's position), not only rules.
        # A trial without repeated openings hides them after its first episode, which hides nothing while the task
        # stays; a corpus of independent games (new_task_each_episode) repeats them when this is True.
        self.opening_shows_task = False
        self._action_index: dict[str, int] | None = None

    def number(self, x) -> jax.Array:
        """Piece id of the decimal string of ``x`` (clipped to ``0..MAX_NUMBER``)."""
        return self.num[jnp.clip(jnp.asarray(x, jnp.int32), 0, MAX_NUMBER)]

    # ------------------------------------------------------------------ to implement in a game
    def sample_task(self, key: jax.Array, params) -> Any:
        """Draws the hidden task of a trial (a pytree of arrays)."""
        raise NotImplementedError

    def init_game(self, key: jax.Array, task: Any, params) -> Any:
        """The game state at the start of an episode of ``task``."""
        raise NotImplementedError

    def game_step(self, key: jax.Array, state: TextEnvState, action: jax.Array, params):
        """Applies a well-formed action. Returns ``(game, outcome)``, outcome in RUNNING/WON/LOST."""
        raise NotImplementedError

    def game_pieces(self, state: TextEnvState) -> jax.Array:
        """``int32[len(game_layout)]`` piece ids of the observation for ``state`` (time 0: the opening)."""
        raise NotImplementedError

    def render_game_text(self, state: TextEnvState) -> str:
        """Host-side reference text of the observation (state fields are numpy arrays)."""
        raise NotImplementedError

    def valid_actions(self, state: TextEnvState) -> jax.Array:
        """``bool[num_actions]``: actions that are legal and not pointless (e.g. not a repeated guess).

        Random baselines sample from this mask; the env itself accepts any action index.
        """
        return jnp.ones((self.num_actions,), bool)

    def oracle_action(self, key: jax.Array, state: TextEnvState) -> jax.Array:
        """A strong (usually optimal) action, computed with access to the hidden task; jit/vmap-safe.

        Used as the upper bound of regret and to check that tasks persist across episodes.
        """
        raise NotImplementedError(f"{self.env_id} has no oracle policy")

    def consistent_actions(self, state: TextEnvState) -> jax.Array:
        """``bool[num_actions]``: the valid actions that the feedback shown so far in this episode has not ruled
        out (what a player who reasons within the episode, and remembers nothing from earlier ones, may play);
        jit/vmap-safe. May read the hidden task to compute what the feedback implies."""
        raise NotImplementedError(f"{self.env_id} does not say which actions its feedback rules out")

    def answer_action(self, task: Any) -> jax.Array:
        """``int32[]``: the action that wins an episode of ``task`` on any turn (the secret number, word or
        code); jit/vmap-safe. Games whose task has no single winning action raise ``NotImplementedError``.

        Training uses it as privileged task information for the auxiliary answer loss
        (:func:`metarl_jax.algos.scoring.teacher_forced`); the policy never sees it.
        """
        raise NotImplementedError(f"{self.env_id} has no single answer action")

    @property
    def has_answer_action(self) -> bool:
        """Whether :meth:`answer_action` is implemented."""
        return implements_answer_action(type(self))

    # ------------------------------------------------------------------ gymnax API
    @property
    def default_params(self):
        return self.params_cls(max_turns=self.default_max_turns)

    @property
    def name(self) -> str:
        return self.env_id

    @property
    def num_actions(self) -> int:
        return len(self.action_contents)

    def action_space(self, params=None):
        return spaces.Discrete(self.num_actions)

    def reset_env(self, key: jax.Array, params) -> tuple[jax.Array, TextEnvState]:
        key_task, key_game = jax.random.split(key)
        return self.reset_to_task(key_game, self.sample_task(key_task, params), params)

    def reset_to_task(self, key: jax.Array, task: Any, params) -> tuple[jax.Array, TextEnvState]:
        """Starts a new episode of the given task (used by the multi-episode wrapper)."""
        state = TextEnvState(
            task=task,
            game=self.init_game(key, task, params),
            time=jnp.zeros((), jnp.int32),
            max_turns=jnp.asarray(params.max_turns, jnp.int32),
            status=jnp.full((), RUNNING, jnp.int32),
            last_action=jnp.full((), -1, jnp.int32),
        )
        return self.obs_pieces(state), state

    def step_env(self, key: jax.Array, state: TextEnvState, action, params):
        action = jnp.asarray(action, jnp.int32)
        well_formed = (action >= 0) & (action < self.num_actions)
        safe_action = jnp.clip(action, 0, self.num_actions - 1)
        game, outcome = self.game_step(key, state, safe_action, params)
        game = tree_select(well_formed, game, state.game)
        time = state.time + 1
        status = jnp.select(
            [~well_formed, outcome == WON, outcome == LOST, time >= state.max_turns],
            [FORMAT_ERROR, WON, LOST, OUT_OF_TURNS],
            RUNNING,
        ).astype(jnp.int32)
        stepped = state.replace(
            game=game, time=time, status=status, last_action=jnp.where(well_formed, action, -1)
        )
        # Stepping an episode that already ended changes nothing.
        already_over = state.status != RUNNING
        new_state = tree_select(already_over, state, stepped)
        won = (new_state.status == WON) & ~already_over
        terminated = (new_state.status == WON) | (new_state.status == LOST) | (new_state.status == FORMAT_ERROR)
        info = {"success": won, "status": new_state.status}
        return self.obs_pieces(new_state), new_state, won.astype(jnp.float32), terminated, info

    def is_truncated(self, state: TextEnvState, params) -> jax.Array:
        return state.status == OUT_OF_TURNS

    def is_terminated(self, state: TextEnvState, params) -> jax.Array:
        return (state.status == WON) | (state.status == LOST) | (state.status == FORMAT_ERROR)

    # ------------------------------------------------------------------ text interface
    @property
    def pieces(self) -> list[str]:
        """Every text fragment this env can show; observation arrays index into this list."""
        return self.book.strings

    @property
    def layout(self) -> list[Slot]:
        """The slots of an observation: the game's, then the format-error / out-of-turns message."""
        return [*self.game_layout, slot(self._msg_format, self._msg_out_of_turns), slot(self.num), slot(self._msg_format)]

    @property
    def later_layout(self) -> list[Slot]:
        """The layout of observations after the opening (``state.time > 0``): opening-only slots are empty."""
        return [slot() if i in self.opening_slots else s for i, s in enumerate(self.layout)]

    def obs_pieces(self, state: TextEnvState) -> jax.Array:
        """``int32[len(layout)]``: the observation of ``state`` as piece ids (jit/vmap-safe)."""
        game = jnp.asarray(self.game_pieces(state), jnp.int32)
        fmt = state.status == FORMAT_ERROR
        out = state.status == OUT_OF_TURNS
        game = jnp.where(fmt | out, EMPTY, game)
        status = jnp.stack([
            jnp.where(fmt, self._msg_format[0], jnp.where(out, self._msg_out_of_turns[0], EMPTY)),
            jnp.where(fmt, self.number(state.time), EMPTY),
            jnp.where(fmt, self._msg_format[1], EMPTY),
        ]).astype(jnp.int32)
        return jnp.concatenate([game, status])

    def render_text(self, state: TextEnvState) -> str:
        """Host-side reference rendering of the observation of a single (unbatched) state."""
        state = to_host(state)
        status = int(state.status)
        if status == FORMAT_ERROR:
            return f"At turn {int(state.time)}, you did not provide a valid action."
        if status == OUT_OF_TURNS:
            return self.out_of_turns_text
        return self.render_game_text(state)

    @property
    def terse(self) -> bool:
        return self.text == "terse"

    @property
    def out_of_turns_text(self) -> str:
        return " out of turns\n" if self.terse else "You have reached the maximum number of turns."

    def pieces_text(self, piece_ids) -> str:
        """Joins the strings of an array of piece ids (a debugging aid; the codec is the real renderer)."""
        return join_pieces(self.pieces, piece_ids)

    def action_text(self, i: int) -> str:
        """The canonical text of action ``i``, e.g. ``\\boxed{25}``."""
        if not 0 <= int(i) < self.num_actions:
            raise IndexError(f"action {i} is outside [0, {self.num_actions}) for {self.env_id}")
        return "\\boxed{" + self.action_contents[int(i)] + "}"

    def parse_action(self, text: str) -> int:
        """Index of the action in the last ``\\boxed{...}`` of ``text``; -1 when there is none or it is invalid."""
        if not isinstance(text, str):
            return -1
        matches = _BOXED.findall(text)
        if not matches:
            return -1
        if self._action_index is None:
            self._action_index = {normalize_action_text(c): i for i, c in enumerate(self.action_contents)}
        return self._action_index.get(normalize_action_text(matches[-1]), -1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.env_id!r}, num_actions={self.num_actions})"
