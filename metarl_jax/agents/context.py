"""The token budget of a multi-episode trial: how long one observation and one whole transcript can get.

The codec renders an observation into ``codec.max_len`` slots, the sum of every layout slot's longest piece.
That over-counts a trial: the wrapper's layout holds the finished episode's terminal observation *and* the
current one, the intro, the reflection prompt and the header, which never all show at once. Here the bound is
taken per *view* (what a trial observation shows; :data:`metarl_jax.envs.multi_episode.VIEW_START` ...), from
the codec's per-slot widths, so it is tight per view and still a guarantee:

* ``chunk_len``: the longest single observation (real tokens come first in a rendered observation, so the
  rollout keeps only its first ``chunk_len`` slots);
* ``step_len``: the game text of an ordinary turn inside an episode (no opening, no episode boundary, no
  slot that shows only on an episode's last turn, ``final_slots``, no status message such as a format error):
  what most turns show. Not a bound (a status message can add to it);
  it only sizes the rollout's prefill calls;
* ``turns``: decisions in a trial: the env steps of the cap, plus a reflection turn between episodes;
* ``worst_case``: the longest possible transcript: the opening observation, then every later turn at its
  longest view, each followed by the longest action.

The rollout writes tokens contiguously (padding is overwritten), so a context of ``worst_case`` tokens never
overflows. A config whose context is shorter is refused before compiling.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ContextBudget:
    """Token bounds of one trial (see the module docstring)."""

    chunk_len: int
    action_len: int
    turns: int
    worst_case: int
    step_len: int = 0


def context_budget(env, codec, action_len: int, per_turn: int = 0) -> ContextBudget:
    """The :class:`ContextBudget` of ``env`` (a :class:`~metarl_jax.envs.MultiEpisode`) rendered by ``codec``.

    ``action_len`` is the longest action in tokens (``ActionTable.max_len``, or the free-text budget);
    ``per_turn`` the tokens a chat format adds per turn (:attr:`metarl_jax.text.chat.ChatWrap.per_turn`).
    """
    w = codec.slot_widths
    game = env.env
    n = len(game.layout)
    if len(w) != 3 + n + 2 + 3 + n:
        raise ValueError(f"context_budget expects a MultiEpisode layout, got {len(w)} slots for {env.name}")
    intro = sum(w[0:3]) if env.intro else 0
    prev = sum(w[3:3 + n])  # the finished episode's terminal observation (no opening slots)
    newline, reflect = w[3 + n], w[4 + n]
    header = sum(w[5 + n:8 + n])
    inner = w[8 + n:]
    opening = set(game.opening_slots)
    later = sum(x for i, x in enumerate(inner) if i not in opening)
    not_ordinary = opening | set(game.final_slots)
    game_later = sum(x for i, x in enumerate(inner[:len(game.game_layout)]) if i not in not_ordinary)
    first = sum(inner)  # time 0: the opening, plus whatever else the game shows then
    next_first = first if env.repeat_opening else later
    views = {
        "start": intro + header + first,
        "step": later,
        "boundary": prev + newline + header + next_first,
    }
    if env.reflection:
        views["reflect"] = prev + newline + reflect
        views["after_reflect"] = header + next_first
    turns = env.total_step_cap + (env.total_step_cap - 1 if env.reflection else 0)
    longest_later = max(v for k, v in views.items() if k != "start")
    worst = views["start"] + action_len + (turns - 1) * (longest_later + action_len) + turns * per_turn
    return ContextBudget(chunk_len=max(views.values()), action_len=int(action_len), turns=turns, worst_case=worst,
                         step_len=game_later)
