"""Training and validation task sets: one :class:`TaskSet` per env of a config's task list.

A *task* is one hidden instance of a game (GuessTheNumber's secret number, Wordle's word): what a trial's
episodes share and what the in-context learner must infer. A :class:`TaskSet` is an env with a fixed set of
tasks; ``num_tasks`` counts tasks.

A config lists tasks in ORBIT's format, one entry per env::

    dict(env_id="game:GuessTheNumber-v0-hard", max_turns_per_episode=7, total_step_cap=21)

``max_turns_per_episode`` and ``total_step_cap`` default to the registry's ORBIT values. Each entry becomes a
:class:`TaskSet`: the multi-episode env, its codec and action table for the run's tokenizer, the context
budget, and a fixed set of task keys (ORBIT draws 512 training and 256 validation tasks per env from the
config's seed). Training samples its batches from the training set; evaluation plays the validation set,
which is drawn from a separate key, so it is held out (for envs with few distinct tasks, such as
GuessTheNumber's 50 secrets, the same *secret* can appear in both sets; the trial seeds differ).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from metarl_jax import envs
from metarl_jax.agents.actions import ActionTable
from metarl_jax.agents.context import ContextBudget, context_budget
from metarl_jax.agents.rollout import RolloutSpec
from metarl_jax.envs.mixture import GameMixture, MixtureKey
from metarl_jax.text.chat import chat_wrap
from metarl_jax.text.codec import Codec, MixtureCodec

SPLIT_SALT = {"train": 0, "validation": 1}


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskSet(RolloutSpec):
    """An env with a fixed set of tasks, ready to roll out: a :class:`~metarl_jax.agents.rollout.RolloutSpec` (the
    env, its codec and action table for the run's tokenizer, the context and the decoding; see its attributes)
    that also has a name and the tasks' keys.

    Attributes:
      name: the env id.
      task_keys: uint32[N, 2] keys of the fixed task set (``env.sample_task`` of each gives a task); a mixture's
        are a :class:`~metarl_jax.envs.mixture.MixtureKey` (each key with its game).
      games: a mixture's member task sets, in game-index order (empty for one env; see :func:`build_mixture`).
    """

    name: str
    task_keys: jax.Array
    games: tuple = ()

    @property
    def decoding(self) -> dict:
        """This task's free-decoding fields and its prompt length (the games of a mixture share them)."""
        return dict(end_of_turn=self.end_of_turn, remaining_budget=self.remaining_budget,
                    remark_tags=self.remark_tags, remark_reward=self.remark_reward, think_end=self.think_end,
                    think_skip=self.think_skip, prompt_len=self.prompt_len)

    @property
    def transcript_len(self) -> int:
        """Slots of a rollout's transcript: the context, plus what stripped thinking may hide (each turn's response
        stays in the stream; see :class:`~metarl_jax.agents.rollout.RolloutSpec`'s ``think_end``)."""
        return self.context_len + (self.budget.turns * self.free_tokens if self.think_end >= 0 else 0)

    @property
    def context_limits(self) -> np.ndarray:
        """int32[G]: a mixture's context limit of each game's rows (see :func:`build_mixture`)."""
        extra = self.budget.action_len - np.array([g.budget.action_len for g in self.games], np.int32)
        return np.array([g.context_len for g in self.games], np.int32) + extra

    def row_context_len(self, game):
        """int32[B]: the context limit of each row of a mixture's batch (``game``: int32[B]); None for one env."""
        return jnp.asarray(self.context_limits)[game] if self.games else None

    @property
    def observation_vocab(self) -> np.ndarray:
        """int32[K]: the sorted token ids the env's observation text can contain (padding excluded)."""
        return self.codec.token_ids


def task_entry(entry) -> dict:
    """A task entry (mapping or bare env id) with the registry's defaults filled in."""
    entry = {"env_id": entry} if isinstance(entry, str) else dict(entry)
    spec = envs.spec(entry["env_id"])
    entry.setdefault("max_turns_per_episode", spec.max_turns)
    entry.setdefault("total_step_cap", spec.total_step_cap)
    return entry


def build_task(entry, tokenizer, *, split: str, seed: int, num_tasks: int, single_episode: bool = False,
               intro: bool = True, repeat_opening: bool = True, reflection: bool = False,
               context_len: int = 0, free_tokens: int = 0, chat: bool = False, text: str = "gem",
               free_stop: str = "action", free_budget: str = "fixed", lamer_gamma: float = 0.0,
               remark_reward: float = 0.0, thinking: str = "keep", prompt_len: int = 0,
               new_task_each_episode: bool = False, max_episodes: int = 0) -> TaskSet:
    """A :class:`TaskSet` for one task entry.

    ``single_episode`` makes every trial one episode (cap = turns per episode, and the trial ends with its first
    episode even when it is won early): the standard RL baseline. ``new_task_each_episode`` draws a fresh task for
    every episode (independent games back to back: the imitation phase's corpus). ``max_episodes`` > 0 ends a
    multi-episode trial when that many episodes have ended (0: when its step cap is reached, ORBIT's trial).
    ``context_len`` 0 takes the budget's worst case. ``free_tokens`` > 0 selects free decoding with that many
    tokens per action (else constrained decoding). ``chat`` wraps turns in the tokenizer's chat template.
    ``text`` is the env's text style (``"gem"``, or ``"terse"`` where the env has it; see
    :mod:`metarl_jax.envs.base`). Free decoding: ``free_stop`` ``"action"`` ends a turn at its first action
    text, ``"end_of_turn"`` at the end-of-turn token (the chat end's first token, else the tokenizer's end of
    sequence), parsing the last action text (ORBIT); ``free_budget`` ``"fixed"`` gives every turn
    ``free_tokens``, ``"remaining"`` the context's remaining room, at most ``free_tokens`` (ORBIT).
    ``lamer_gamma`` > 0 plays LaMer's variant of the trial (:class:`~metarl_jax.envs.multi_episode.MultiEpisode`);
    ``remark_reward`` is then what a free-decoded reflection turn with ``<remark> ... </remark>`` earns.
    ``thinking`` ``"strip"`` (free decoding) removes earlier turns' thinking from the context
    (:func:`thinking_fields`); ``"keep"`` leaves it. ``prompt_len`` (the model's prompt vectors,
    :mod:`metarl_jax.models.prompt`) opens every trial with that many virtual tokens; the context holds them in
    addition to ``context_len``.
    """
    entry = task_entry(entry)
    turns = int(entry["max_turns_per_episode"])
    cap = turns if single_episode else int(entry["total_step_cap"])
    env, params = envs.make_trial(entry["env_id"], total_step_cap=cap, reflection=reflection and not single_episode,
                                  intro=intro, repeat_opening=repeat_opening, max_turns=turns, text=text,
                                  lamer_gamma=lamer_gamma, max_episodes=1 if single_episode else max_episodes,
                                  new_task_each_episode=new_task_each_episode)
    codec, table = Codec(env, tokenizer), ActionTable(env, tokenizer)
    wrap = chat_wrap(tokenizer) if chat else None
    budget = context_budget(env, codec, free_tokens or table.max_len, wrap.per_turn if wrap else 0)
    budget = dataclasses.replace(budget, worst_case=budget.worst_case + prompt_len)
    end_of_turn = -1
    if free_tokens and free_stop == "end_of_turn":
        end_of_turn = wrap.end[0] if wrap and wrap.end else getattr(tokenizer, "eos_id", None)
        if end_of_turn is None:
            raise ValueError(f"{tokenizer!r} has no end-of-sequence token to end a turn with; use free_stop='action'")
    return TaskSet(
        name=entry["env_id"], env=env, env_params=params, codec=codec, table=table, budget=budget,
        context_len=int(context_len) + prompt_len if context_len else budget.worst_case,
        task_keys=task_keys(entry["env_id"], split, seed, num_tasks),
        free_tokens=int(free_tokens), chat=wrap, end_of_turn=int(end_of_turn),
        remaining_budget=bool(free_tokens) and free_budget == "remaining", prompt_len=int(prompt_len),
        **remark_fields(tokenizer, remark_reward if lamer_gamma and env.reflection and free_tokens else 0.0),
        **(thinking_fields(tokenizer) if free_tokens and thinking == "strip" else {}),
    )


def task_keys(env_id: str, split: str, seed: int, num_tasks: int) -> jax.Array:
    """uint32[num_tasks, 2]: the keys of ``env_id``'s ``split`` task set for ``seed``."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), SPLIT_SALT[split]), _stable_hash(env_id))
    return jax.random.split(key, num_tasks)


def thinking_fields(tokenizer) -> dict:
    """The TaskSet fields that strip earlier thinking: the id of the tokenizer's ``</think>`` token (it must be
    one token, as in Qwen3's vocabulary) and the ids of the newline runs that are single tokens (dropped after
    it, as Qwen3's chat template strips the answer's leading newlines)."""
    ids = tokenizer.encode("</think>")
    if len(ids) != 1:
        raise ValueError(f"thinking='strip' needs a tokenizer with '</think>' as one token; {tokenizer!r} splits it "
                         f"into {len(ids)} tokens. Use thinking='keep'")
    newlines = [tokenizer.encode("\n" * k) for k in range(1, 5)]
    return dict(think_end=int(ids[0]), think_skip=tuple(int(n[0]) for n in newlines if len(n) == 1))


def remark_fields(tokenizer, reward: float) -> dict:
    """The TaskSet fields of the remark reward (none when ``reward`` is 0)."""
    if not reward:
        return {}

    def spellings(tag):  # alone, and after a space (which a tokenizer may merge into the tag's first token)
        return tuple(dict.fromkeys((tuple(tokenizer.encode(tag)), tuple(tokenizer.encode(" " + tag)))))

    return dict(remark_tags=(spellings("<remark>"), spellings("</remark>")), remark_reward=float(reward))


def build_mixture(tasks: list[TaskSet], tokenizer, name: str = "mixture") -> TaskSet:
    """One :class:`TaskSet` that plays ``tasks`` (built by :func:`build_task` with one tokenizer and the same
    decoding) as a :class:`~metarl_jax.envs.mixture.GameMixture`: a batch drawn from its task set (the union of
    the members' sets) mixes the games at random, as ORBIT's shuffled mix does, in one compiled program.

    The action table covers the union of the games' actions; a row keeps its own game's context: its limit is
    the member's ``context_len`` plus the slots by which the mixture's longest action exceeds the member's
    (the rollout reserves a whole action's slots before each turn), so a row stops exactly where its game
    alone would."""
    if len({(t.free_tokens, t.chat, *t.decoding.values()) for t in tasks}) > 1:
        raise ValueError("the games of a mixture must share the decoding (free_tokens, free_stop, free_budget, thinking, "
                         "the remark reward), the chat format and the prompt")
    mixture = GameMixture([t.env for t in tasks], names=[t.name for t in tasks])
    codec = MixtureCodec(mixture, tokenizer, [t.codec for t in tasks])
    table = ActionTable(mixture, tokenizer)
    free = tasks[0].free_tokens
    budgets = [t.budget for t in tasks]
    budget = ContextBudget(chunk_len=max(b.chunk_len for b in budgets), action_len=free or table.max_len,
                           turns=max(b.turns for b in budgets), worst_case=max(b.worst_case for b in budgets),
                           step_len=max(b.step_len for b in budgets))
    keys = MixtureKey(key=jnp.concatenate([t.task_keys for t in tasks]),
                      game=jnp.concatenate([jnp.full((t.task_keys.shape[0],), g, jnp.int32) for g, t in enumerate(tasks)]))
    longest = max(t.context_len + budget.action_len - t.budget.action_len for t in tasks)  # see context_limits
    return TaskSet(name=name, env=mixture, env_params=tuple(t.env_params for t in tasks), codec=codec, table=table,
                    budget=budget, context_len=longest, task_keys=keys, free_tokens=free, chat=tasks[0].chat,
                    games=tuple(tasks), **tasks[0].decoding)


def _stable_hash(text: str) -> int:
    """A process-independent 31-bit hash (Python's ``hash`` of str is salted per process)."""
    h = 0
    for ch in text.encode():
        h = (h * 131 + ch) % (2**31 - 1)
    return h
