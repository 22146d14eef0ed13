"""The env registry: ``make(env_id, **overrides) -> (env, params)`` and ``registered()``.

Every id carries ORBIT's per-episode turn limit and trial step cap (the registrations below), so
``make_trial(env_id)`` builds the multi-episode trial that the paper uses. The ORBIT ids follow ORBIT's rules;
the ``variant`` ids keep this library's earlier rules of some of those games under their own names (each
env module's docstring describes its variant).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """A registered env: where its class lives, its constructor arguments and ORBIT's trial settings."""

    env_id: str
    entry_point: str  # "module:Class"
    kwargs: dict
    max_turns: int
    total_step_cap: int
    split: str  # "train", "held-out", "demo", "classic" or "variant"


_REGISTRY: dict[str, EnvSpec] = {}


def register(env_id: str, entry_point: str, *, max_turns: int, total_step_cap: int, split: str, **kwargs) -> None:
    """Adds an env id. ``kwargs`` go to the class constructor (``max_turns`` included)."""
    if env_id in _REGISTRY:
        raise ValueError(f"env id {env_id!r} is already registered")
    _REGISTRY[env_id] = EnvSpec(env_id, entry_point, {**kwargs, "max_turns": max_turns}, max_turns, total_step_cap, split)


def registered() -> list[str]:
    """All registered env ids, in registration order."""
    return list(_REGISTRY)


class UnknownEnvError(KeyError):
    """An env id that is not registered (a ``KeyError``); the message names the closest registered id.

    ``str(error)`` is the plain message (a bare ``KeyError`` would print it quoted).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def closest_id(env_id, ids=None) -> str | None:
    """The registered id most similar to ``env_id`` (case-insensitive ``difflib`` ratio), or None."""
    ids = list(_REGISTRY) if ids is None else list(ids)
    if not isinstance(env_id, str) or not ids:
        return None
    lowered = {i.lower(): i for i in ids}
    close = difflib.get_close_matches(env_id.lower(), list(lowered), n=1, cutoff=0.3)
    return lowered[close[0]] if close else None


def spec(env_id: str) -> EnvSpec:
    """The :class:`EnvSpec` of an id; an unknown id raises :class:`UnknownEnvError` (a ``KeyError``) whose
    message suggests the closest registered id and lists them all, e.g. ``unknown env id
    'game:GuessTheNumbr-v0-hard'; did you mean 'game:GuessTheNumber-v0-hard'? Registered: ...``."""
    if not isinstance(env_id, str) or env_id not in _REGISTRY:
        close = closest_id(env_id)
        hint = f"; did you mean {close!r}?" if close else "."
        kind = "" if isinstance(env_id, str) else f" (a {type(env_id).__name__}; env ids are strings)"
        raise UnknownEnvError(f"unknown env id {env_id!r}{kind}{hint} Registered: {', '.join(_REGISTRY)}")
    return _REGISTRY[env_id]


def env_class(env_id: str) -> type:
    """The class a registered id builds (imported, not instantiated)."""
    module_name, class_name = spec(env_id).entry_point.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def _check_override(env_id: str, name: str, value, default) -> None:
    """Raises ``TypeError`` when ``value`` is not of the kind of ``default`` (bool, int, float or str; an int is a
    float too) and ``ValueError`` for a non-finite float or an int beyond int32; other kinds are not checked."""
    kind = "bool" if isinstance(default, (bool, np.bool_)) else "str" if isinstance(default, str) else None
    if kind is None and isinstance(default, (int, float, np.ndarray, np.generic, jax.Array)):
        kind = {"b": "bool", "i": "int", "u": "int", "f": "float"}.get(np.asarray(default).dtype.kind)
    is_int = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    ok = {"bool": isinstance(value, (bool, np.bool_)), "str": isinstance(value, str), "int": is_int,
          "float": is_int or isinstance(value, (float, np.floating)), None: True}[kind]
    if not ok:
        raise TypeError(f"make({env_id!r}): {name}={value!r} must be {'an' if kind == 'int' else 'a'} {kind} (like "
                        f"the default, {np.asarray(default).item()!r}), not {type(value).__name__}")
    if kind == "float" and not np.isfinite(value):
        raise ValueError(f"make({env_id!r}): {name}={value!r} must be finite")
    if kind == "int" and abs(int(value)) > 2**31 - 1:
        raise ValueError(f"make({env_id!r}): {name}={value:,} is beyond int32 (at most 2**31 - 1)")


def make(env_id: str, **overrides: Any):
    """Builds a registered env. Returns ``(env, params)``.

    ``overrides`` may name constructor arguments (structure: board size, word length) or fields of the
    env's params (runtime settings such as ``max_turns``); ``max_turns`` sets both the default params and
    the constructor default. Unknown names raise ``TypeError`` listing the accepted ones.
    """
    s = spec(env_id)
    cls = env_class(env_id)
    base = cls(**{**s.kwargs, "env_id": env_id})
    param_fields = {f.name for f in dataclasses.fields(base.default_params)}
    ctor_args = set(inspect.signature(cls.__init__).parameters) - {"self", "env_id"}
    unknown = set(overrides) - param_fields - ctor_args
    if unknown:
        raise TypeError(
            f"make({env_id!r}) got unknown override(s) {sorted(unknown)}; constructor arguments: "
            f"{sorted(ctor_args)}, params fields: {sorted(param_fields)}"
        )
    signature = inspect.signature(cls.__init__).parameters
    for name, value in overrides.items():
        default = getattr(base.default_params, name) if name in param_fields else s.kwargs.get(
            name, signature[name].default)
        _check_override(env_id, name, value, default)
    ctor_over = {k: v for k, v in overrides.items() if k in ctor_args}
    env = cls(**{**s.kwargs, **ctor_over, "env_id": env_id}) if ctor_over else base
    params = env.default_params.replace(**{k: v for k, v in overrides.items() if k in param_fields})
    return env, params


def make_trial(env_id: str, total_step_cap: int | None = None, reflection: bool = False, intro: bool = True,
               repeat_opening: bool = True, lamer_gamma: float = 0.0, max_episodes: int = 0,
               new_task_each_episode: bool = False, **overrides):
    """``make`` plus the :class:`~metarl_jax.envs.multi_episode.MultiEpisode` wrapper with ORBIT's step cap
    (``lamer_gamma`` > 0: LaMer's variant of the trial; ``max_episodes`` and ``new_task_each_episode`` as there).

    Returns ``(trial_env, params)``.
    """
    from metarl_jax.envs.multi_episode import MultiEpisode

    env, params = make(env_id, **overrides)
    cap = spec(env_id).total_step_cap if total_step_cap is None else total_step_cap
    if int(params.max_turns) != env.default_max_turns:
        env, params = make(env_id, **{**overrides, "max_turns": int(params.max_turns)})
    return MultiEpisode(env, cap, reflection=reflection, intro=intro, repeat_opening=repeat_opening,
                        lamer_gamma=lamer_gamma, max_episodes=max_episodes,
                        new_task_each_episode=new_task_each_episode), params


# ---------------------------------------------------------------- the ORBIT suite
_G = "metarl_jax.envs."
register("rockpaperscissors", _G + "rock_paper_scissors:RockPaperScissors", max_turns=5, total_step_cap=15, split="train")
register("game:Minesweeper-v0-only-reveal", _G + "minesweeper:Minesweeper", max_turns=8, total_step_cap=24, split="train")
register("game:Hangman-v0-easy", _G + "hangman:Hangman", max_turns=10, total_step_cap=30, split="train")
register("game:Wordle-v0-hard", _G + "wordle:Wordle", max_turns=10, total_step_cap=30, split="train")
register("game:Blackjack-v0", _G + "blackjack:Blackjack", max_turns=4, total_step_cap=12, split="train")
register("maze", _G + "maze:Maze", max_turns=9, total_step_cap=27, split="held-out")
register("game:Mastermind-v0-random", _G + "mastermind:Mastermind", max_turns=3, total_step_cap=9, split="held-out")
register("game:GuessTheNumber-v0-easy", _G + "guess_the_number:GuessTheNumber", max_turns=4, total_step_cap=12, split="demo", low=1, high=10)
register("game:GuessTheNumber-v0-hard", _G + "guess_the_number:GuessTheNumber", max_turns=7, total_step_cap=21, split="demo", low=1, high=50)
register("BernoulliBandit-misc", _G + "bandit:BernoulliBanditText", max_turns=1, total_step_cap=20, split="classic")
register("FrozenLake-misc", _G + "frozen_lake:FrozenLakeText", max_turns=8, total_step_cap=24, split="classic")

# ---------------------------------------------------------------- earlier rules of ORBIT games, kept as variants
register("rockpaperscissors-verbose", _G + "rock_paper_scissors:RockPaperScissors", max_turns=5, total_step_cap=15,
         split="variant", rules="verbose")
register("maze-goal-shown", _G + "maze:Maze", max_turns=9, total_step_cap=27, split="variant", rules="goal-shown")
register("game:Blackjack-v0-table10", _G + "blackjack:Blackjack", max_turns=4, total_step_cap=12, split="variant",
         rules="table10")

# ---------------------------------------------------------------- smaller games for a from-scratch model on CPU
# Mastermind with a code of 2 distinct digits from 1..6 (30 codes, 36 guesses): a player who guesses among the codes
# its pegs allow wins an episode of 3 turns about half the time (ORBIT's 3 digits: a third).
register("game:Mastermind-v0-two-digits", _G + "mastermind:Mastermind", max_turns=3, total_step_cap=9, split="variant",
         code_length=2, num_digits=6)
