"""The compiled GRPO meta-training step: rollout, group advantages, PPO-clip loss, optax update, one jit.

``make_train_step(graphdef, tasks, optimizer, hp)`` returns ``train_step(train_state, key) -> (train_state,
metrics)``. For every :class:`~metarl_jax.tasks.TaskSet` of the task mix, in one program:

1. draw ``hp.num_tasks`` tasks from its training set and replicate each ``hp.group_size`` times (the GRPO
   group: same task, same trial start, independent sampling). A mixture of games
   (:func:`metarl_jax.tasks.build_mixture`) is one such task list: its draws mix the games at random, as ORBIT's
   shuffled mix does, and its rollout and update are one program whatever the number of games; its rollout
   metrics are logged per game;
2. :func:`metarl_jax.agents.rollout.rollout` plays every trial to its step cap;
3. the trial return (successful episodes) gives group-relative advantages ``(R - mean) / (std + eps)`` on
   every action token; with a cross-episode discount (LaMer) the return-to-go of each turn is normalised
   instead over the group's turns that share its key (``hp.advantage_groups``: :func:`~metarl_jax.algos.losses.turn_keys`);
4. a teacher-forced forward gives the log-probabilities; the PPO-clip loss (asymmetric clip,
   seq-mean-token-mean over action tokens only), plus the optional k3 KL to a frozen reference, entropy
   bonus and auxiliary observation-prediction loss, is differentiated and applied with optax.

Non-finite updates are skipped: the optimizer runs inside ``optax.apply_if_finite`` (:func:`~metarl_jax.algos.optim.guard_non_finite`), so
an update whose gradients are not all finite (NaN or inf) leaves ``params`` and the inner optimizer state unchanged,
and the step reports ``metrics["skipped"] = 1``; ``step`` still advances, and the guard's state counts the skipped
updates (``notfinite_count`` in a row, ``total_notfinite`` in all). For tests,
``GRPOHyper.inject_nan_step`` / ``inject_nan_count`` corrupt the gradient with NaN in the steps numbered
``inject_nan_step .. inject_nan_step + inject_nan_count - 1``, counted from 1 as in the logs and checkpoints
(step ``n`` is the call that sees ``state.step == n - 1``; selected from the traced counter, so the step is
traced once). The training loop counts skips and stops after ``max_consecutive_skips``.

Rows of all envs count equally in the loss. On-policy with one update per batch (ORBIT), so the ratio is 1 at
the update; the clip matters once several updates reuse a batch. Metrics are small: scalars and
per-episode-index success rates per env, never a stacked history.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from metarl_jax import sharding
from metarl_jax.agents.rollout import rollout
from metarl_jax.agents.sampler import Sampling
from metarl_jax.algos.losses import (discounted_returns, group_advantages, kl_to_reference, normalise_over_groups,
                                     normalise_over_keys, ppo_clip_loss, turn_keys)
from metarl_jax.algos.optim import accumulate_over_rows, guard_non_finite
from metarl_jax.algos.scoring import (answer_turns, hindsight_answers, observation_targets, on_used_prefix, teacher_forced,
                                      teacher_forced_logp)
from metarl_jax.models.transformer import with_row_constraint


@struct.dataclass
class TrainState:
    """params: the trained part of the model's nnx.State (all of it unless some is frozen); opt_state: optax state
    of ``params`` only; step: int32[]; ref_params: the whole model's reference for the KL term (None without one);
    frozen: the model's frozen part (e.g. the base weights under LoRA; None when everything trains).
    :func:`model_state` is the whole model's state."""

    params: nnx.State
    opt_state: optax.OptState
    step: jax.Array
    ref_params: nnx.State | None = None
    frozen: nnx.State | None = None


def init_train_state(model_state, optimizer: optax.GradientTransformation, keep_reference: bool = False,
                     trainable=None) -> TrainState:
    """The train state of ``model_state``: ``trainable`` (an nnx filter, e.g. ``LoRAParam``; None: every variable)
    selects the variables that train and get optimizer state; the rest is kept in ``frozen``."""
    ref = jax.tree.map(jnp.copy, model_state) if keep_reference else None
    params, frozen = (model_state, None) if trainable is None else nnx.split_state(model_state, trainable, ...)
    return TrainState(params=params, opt_state=guard_non_finite(optimizer).init(params), step=jnp.zeros((), jnp.int32),
                      ref_params=ref, frozen=frozen)


def model_state(state: TrainState, params=None) -> nnx.State:
    """The whole model's nnx.State of ``state`` (its ``params``, or the given ones, with its frozen part)."""
    params = state.params if params is None else params
    return params if state.frozen is None else nnx.merge_state(params, state.frozen)


# The update's metrics that a step with update_epochs > 1 also reports for every epoch.
PER_EPOCH_KEYS = ("approx_kl", "clip_fraction", "ratio_mean")


@dataclasses.dataclass(frozen=True)
class GRPOHyper:
    """Hyperparameters of the step. The defaults are the README main run's (``configs/default.py``: ORBIT's values
    where it has them, plus LaMer's discount and the two auxiliary losses a from-scratch model needs);
    :meth:`orbit` gives ORBIT's loss alone."""

    num_tasks: int = 4  # tasks per env (or per mixture of games) per step
    group_size: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    clip_low: float = 0.2
    clip_high: float = 0.28
    dual_clip: float = 3.0  # bound -c A on negative advantages' token loss (verl's clip_ratio_c); 0: off
    advantage_std_ddof: int = 0  # the group std: 0 population, 1 sample (ORBIT's, through verl's torch.std)
    kl_coef: float = 0.0
    entropy_coef: float = 0.0
    policy_coef: float = 1.0  # weight of the PPO-clip policy-gradient term (0: only the auxiliary losses train)
    observation_coef: float = 1.0  # auxiliary next-token loss on observation tokens (not in ORBIT; see teacher_forced)
    answer_coef: float = 0.0  # auxiliary loss: -log-prob of an answer action at every turn (not in ORBIT)
    # The answer loss's target: "hindsight" (the action that won the row's first won episode, from its own
    # transcript; rows that never won are not scored: scoring.hindsight_answers) or "task" (env.answer_action of the
    # row's task: privileged information).
    answer_from: str = "hindsight"
    gamma_step: float | None = 0.95  # LaMer discount inside an episode; None: the plain trial return
    gamma_traj: float | None = 0.6  # LaMer discount across an episode boundary
    # With the discount, the group's turns a turn's return-to-go is normalised against: losses.turn_keys' groups.
    advantage_groups: str = "turn"
    # What a trial whose context filled up returns: "keep" (the rewards it earned before the cut) or "zero" (ORBIT's
    # released code: its return is 0; its successes still count in the metrics).
    truncated_return: str = "keep"
    # How a step's tasks are drawn from an env's task set: "replacement" (independently each step) or "epochs"
    # (ORBIT, through verl's shuffled sampler: each epoch visits every task once, in an order drawn from
    # order_seed and the epoch; a last partial batch of an epoch is dropped).
    task_sampling: str = "replacement"
    order_seed: int = 0
    num_episodes_logged: int = 3
    update_epochs: int = 1  # gradient updates per batch (ORBIT: 1, fully on-policy)
    rollout_rows: int = 0  # rows per rollout micro-batch (a divisor of num_tasks * group_size; 0: all at once)
    update_rows: int = 0  # rows per gradient micro-batch, accumulated (a divisor of num_tasks * group_size; 0: all)
    inject_nan_step: int = -1  # testing: NaN gradients in this step (1-based, as logged; -1: never) ...
    inject_nan_count: int = 1  # ... and the inject_nan_count - 1 steps after it

    @classmethod
    def orbit(cls, **overrides) -> "GRPOHyper":
        """ORBIT's loss alone: the PPO-clip policy gradient on each trial's undiscounted return, with no auxiliary
        loss (``overrides`` set other fields)."""
        return cls(**{**dict(observation_coef=0.0, answer_coef=0.0, gamma_step=None, gamma_traj=None), **overrides})


def episode_success_rates(transcript, num_episodes: int, rows=None) -> jax.Array:
    """float32[num_episodes]: share of rows (of those where ``rows``, bool[B], holds) whose k-th episode
    (0-based) ended in success."""
    return jnp.stack([row_mean((transcript.success & (transcript.episode_index == k)).any(axis=1), rows)
                      for k in range(num_episodes)])


def row_mean(values, rows=None) -> jax.Array:
    """Mean of ``values`` [B] over the rows where ``rows`` (bool[B]) holds (all when None); 0 over no rows."""
    values = jnp.asarray(values, jnp.float32)
    if rows is None:
        return values.mean()
    return jnp.where(rows, values, 0.0).sum() / jnp.maximum(rows.sum(), 1)


def rollout_metrics(transcript, context_len, num_episodes: int, rows=None) -> dict:
    """The per-env rollout metrics of a step (over the rows where ``rows`` holds: one game of a mixture)."""
    out = {
        "mean_return": row_mean(transcript.rewards.sum(axis=1), rows),
        "episode_success": episode_success_rates(transcript, num_episodes, rows),
        "context_used": row_mean(transcript.context_length, rows) / context_len,
        "truncated": row_mean(transcript.truncated, rows),
    }
    if rows is not None:
        out["rows"] = rows.sum()
    return out


def draw_tasks(key, set_size: int, hp: GRPOHyper, step, index: int = 0) -> jax.Array:
    """int32[hp.num_tasks]: a step's task indices into an env's set of ``set_size`` tasks.

    ``hp.task_sampling`` "replacement": independent uniform draws from ``key``. "epochs": step ``step`` (0-based)
    takes the next ``num_tasks`` of a random order of the whole set, drawn once per epoch from ``hp.order_seed``,
    the task list entry ``index`` and the epoch, so each epoch of ``set_size // num_tasks`` steps visits every
    task at most once (the remainder of the order is dropped, as verl's sampler with ``drop_last`` does)."""
    if hp.task_sampling == "replacement":
        return jax.random.randint(key, (hp.num_tasks,), 0, set_size)
    per_epoch = set_size // hp.num_tasks
    if per_epoch < 1:
        raise ValueError(f"task_sampling='epochs' needs at least num_tasks={hp.num_tasks} tasks in a set, got "
                         f"{set_size}")
    order_key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(hp.order_seed), index), step // per_epoch)
    order = jax.random.permutation(order_key, set_size)
    return jax.lax.dynamic_slice_in_dim(order, (step % per_epoch) * hp.num_tasks, hp.num_tasks).astype(jnp.int32)


def turn_advantages(transcript, group_size: int, hp: GRPOHyper) -> jax.Array:
    """float32[B, T]: the advantage of each turn's action tokens."""
    rewards = transcript.rewards
    if hp.truncated_return == "zero":
        rewards = jnp.where(transcript.truncated[:, None], 0.0, rewards)
    if hp.gamma_step is None:
        adv = group_advantages(rewards.sum(axis=1), group_size, ddof=hp.advantage_std_ddof)
        return jnp.broadcast_to(adv[:, None], rewards.shape)
    env_steps = transcript.taken & ~transcript.reflection
    ret = discounted_returns(rewards, transcript.episode_done, hp.gamma_step, hp.gamma_traj)
    ret = jnp.where(env_steps, ret, 0.0)
    if hp.advantage_groups == "turn":
        return normalise_over_groups(ret, group_size, ddof=hp.advantage_std_ddof)
    keys = turn_keys(transcript.episode_index, transcript.success, transcript.episode_done, env_steps,
                     hp.advantage_groups)
    return normalise_over_keys(ret, keys, group_size, ddof=hp.advantage_std_ddof)


class LossTotals(NamedTuple):
    """One env's whole-batch denominators of the loss terms (float32[] each; they do not depend on the
    parameters): rows, sequences with an action token, action tokens, scored observation tokens, scored answer
    turns."""

    rows: jax.Array
    sequences: jax.Array
    tokens: jax.Array
    observation: jax.Array
    answer: jax.Array


def loss_totals(transcript, task, answers, hp: GRPOHyper) -> LossTotals:
    """The :class:`LossTotals` of one env's transcript (``answers``: int32[B] or None)."""
    mask = transcript.action_mask.reshape(transcript.action_mask.shape[0], -1)
    zero = jnp.zeros((), jnp.float32)
    observation = answer = zero
    if hp.observation_coef:
        observation = observation_targets(transcript, task.observation_vocab, task.table.vocab_size)[1].sum()
    if answers is not None:
        answer = answer_turns(transcript, answers).sum()
    return LossTotals(rows=jnp.asarray(mask.shape[0], jnp.float32), sequences=mask.any(axis=1).sum().astype(jnp.float32),
                      tokens=mask.sum().astype(jnp.float32), observation=jnp.asarray(observation, jnp.float32),
                      answer=jnp.asarray(answer, jnp.float32))


def make_train_step(graphdef, tasks, optimizer: optax.GradientTransformation, hp: GRPOHyper, constrain_batch=None,
                    constrain_rows=None, players=None):
    """Builds the un-jitted train step (wrap it in ``jax.jit(..., donate_argnums=0)``).

    ``constrain_batch`` (optional) is applied to each env's trial batch and transcript, e.g. a sharding
    constraint that puts the rows on the mesh's data axis (:func:`make_sharded_train_step`).

    ``players`` (optional, one ``player(key, trial_state)`` per task; :mod:`metarl_jax.baselines.players`) makes
    it an imitation step: the players choose every action and the rollout runs no model
    (:func:`~metarl_jax.agents.rollout.rollout`); the
    policy-gradient term is replaced by the next-token loss of their action tokens (``imitation_nll``), beside
    the observation loss; no reward enters the loss.
    """
    constrain = constrain_batch or (lambda tree: tree)
    on_rows = constrain_rows or (lambda tree, axis=0: tree)
    g = hp.group_size
    guarded = guard_non_finite(optimizer)

    task_players = players or [None] * len(tasks)

    def play(params, task, key, step, index):
        """The env's transcript, its rows' answer actions (int32[B]; None without the answer loss) and, for a
        mixture of games, each row's game (int32[B]; else None). ``step``: the step's 0-based number; ``index``:
        the task list entry's."""
        k_pick, k_reset, k_roll = jax.random.split(key, 3)
        picks = draw_tasks(k_pick, task.task_keys.shape[0], hp, step, index)
        sample = jax.vmap(lambda k: task.env.sample_task(k, task.env_params))
        tasks_b = jax.tree.map(lambda x: jnp.repeat(x, g, axis=0), sample(task.task_keys[picks]))
        batch = hp.num_tasks * g
        _, trials = jax.vmap(task.env.reset_to_task, in_axes=(0, 0, None))(jax.random.split(k_reset, batch), tasks_b, task.env_params)
        transcript = constrain(rollout(graphdef, params, task, k_roll, constrain(trials), Sampling(hp.temperature, hp.top_p),
                                       rows_per_chunk=hp.rollout_rows, constrain=on_rows, player=task_players[index],
                                       row_context_len=task.row_context_len(tasks_b.game) if task.games else None))
        answers = None
        if hp.answer_coef and not players:
            answers = (hindsight_answers(transcript) if hp.answer_from == "hindsight"
                       else jax.vmap(task.env.answer_action)(tasks_b))
        return transcript, answers, (tasks_b.game if task.games else None)

    def train_step(state: TrainState, key):
        keys = jax.random.split(key, len(tasks))
        transcripts, answers, games = zip(*[play(model_state(state), task, k, state.step, i)
                                            for i, (task, k) in enumerate(zip(tasks, keys))])
        advantages = [turn_advantages(tr, g, hp) for tr in transcripts]

        total_rows = sum(tr.action_tokens.shape[0] for tr in transcripts)

        totals = [loss_totals(tr, task, answer, hp) for task, tr, answer in zip(tasks, transcripts, answers)]

        def task_loss(params, task, tr, adv, answer, total: LossTotals):
            """One env's loss and metrics on some of its rows (``tr`` cut to its used prefix; see
            ``loss_and_grad``), each term divided by the env's whole-batch ``total``: the losses and metrics of
            row micro-batches add up to the whole batch's."""
            rows, turns, act_len = tr.action_tokens.shape
            free = task.free_tokens > 0
            # Imitation fits the players' moves with the plain next-token loss (temperature 1, top-p 1), as a
            # language model is pretrained: the prior must not depend on the RL phase's sampling settings.
            temperature, top_p = (1.0, 1.0) if players else (hp.temperature, hp.top_p)
            scored = teacher_forced(
                graphdef, model_state(state, params), tr, task.table, temperature, top_p, free=free,
                observation_vocab=task.observation_vocab if hp.observation_coef else None, answers=answer,
                cut_to_used=False)
            flat = lambda x: x.reshape(rows, turns * act_len)
            mask = flat(tr.action_mask)
            tok_adv = flat(jnp.broadcast_to(adv[:, :, None], tr.action_tokens.shape))
            if players:  # imitation: the players' action tokens, whatever they earned
                m = {"imitation_nll": -(flat(scored.logp) * mask).sum() / jnp.maximum(total.tokens, 1)}
                loss = m["imitation_nll"]
            else:
                loss, m = ppo_clip_loss(flat(scored.logp), flat(tr.logp), tok_adv, mask, clip_low=hp.clip_low,
                                        clip_high=hp.clip_high, num_sequences=total.sequences,
                                        num_tokens=total.tokens, dual_clip=hp.dual_clip)
            m["entropy"] = (flat(scored.entropy) * mask).sum() / jnp.maximum(total.tokens, 1)
            if not players:
                loss = hp.policy_coef * loss - hp.entropy_coef * m["entropy"]
            if hp.observation_coef:
                m["observation_nll"] = scored.observation_nll * scored.observation_count / jnp.maximum(total.observation, 1)
                loss = loss + hp.observation_coef * m["observation_nll"]
            if answer is not None:
                m["answer_nll"] = -scored.answer_logp.sum() / jnp.maximum(total.answer, 1)
                loss = loss + hp.answer_coef * m["answer_nll"]
            if hp.kl_coef:
                ref_logp = teacher_forced_logp(graphdef, state.ref_params, tr, task.table, temperature, top_p,
                                               free=free, cut_to_used=False)
                m["kl"] = kl_to_reference(flat(scored.logp), flat(ref_logp), mask, num_sequences=total.sequences)
                loss = loss + hp.kl_coef * m["kl"]
            return loss * (total.rows / total_rows), m  # rows of all envs count equally

        def loss_and_grad(params):
            """The loss (summed over envs), its gradient, and the per-env metrics. Each env's loss and gradient
            run together on its transcript cut to the used prefix (``on_used_prefix`` around the whole
            ``value_and_grad``, which keeps the switch out of the differentiated function), over row
            micro-batches of ``hp.update_rows`` whose gradients are summed (:func:`~metarl_jax.algos.optim.accumulate_over_rows`)."""
            loss, grads, parts = 0.0, None, []
            for task, tr, adv, answer, total in zip(tasks, transcripts, advantages, answers, totals):
                def rows_value_and_grad(rows, task=task, total=total):
                    tr, adv, answer = on_rows(rows)  # a micro-batch stays spread over the data axis

                    def on_cut(cut):
                        return jax.value_and_grad(lambda p: task_loss(p, task, cut, adv, answer, total),
                                                  has_aux=True)(params)

                    return on_used_prefix(tr, on_cut)

                (part_loss, m), part_grads = accumulate_over_rows(rows_value_and_grad, (tr, adv, answer), hp.update_rows)
                loss = loss + part_loss
                grads = part_grads if grads is None else jax.tree.map(jnp.add, grads, part_grads)
                parts.append(m)
            return (loss, parts), grads

        def update(params, opt_state):
            """One optax update; a zero one, the optimizer state kept, when a gradient is not finite."""
            (loss, parts), grads = loss_and_grad(params)
            if hp.inject_nan_step > 0:  # testing hook: corrupt the gradient in the chosen steps
                number = state.step + 1  # this step's number as logged
                hit = (number >= hp.inject_nan_step) & (number < hp.inject_nan_step + hp.inject_nan_count)
                grads = jax.tree.map(lambda x: jnp.where(hit, jnp.nan, x) if jnp.issubdtype(x.dtype, jnp.inexact) else x,
                                     grads)
            updates, opt_state = guarded.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state,
                    (loss, parts, optax.tree.norm(grads), ~opt_state.last_finite))

        params, opt_state, (loss, parts, grad_norm, skipped) = update(state.params, state.opt_state)
        per_epoch = () if players else PER_EPOCH_KEYS  # imitation has no sampler to drift from
        if hp.update_epochs > 1:  # reuse the batch: later updates are off-policy, which the PPO clip bounds
            def again(carry, _):
                params, opt_state, skipped = carry
                params, opt_state, (_, later, _, bad) = update(params, opt_state)
                return (params, opt_state, skipped | bad), [{k: m[k] for k in per_epoch} for m in later]

            (params, opt_state, skipped), later = jax.lax.scan(again, (params, opt_state, skipped), None,
                                                               length=hp.update_epochs - 1)
            # Every update's drift from the sampler (<key>_per_epoch, float32[update_epochs], measured before that
            # update; the first is the on-policy one, the un-suffixed key).
            parts = [{**m, **{f"{k}_per_epoch": jnp.concatenate([m[k][None], l[k]]) for k in per_epoch}}
                     for m, l in zip(parts, later)]
        # loss and grad_norm of the first (on-policy) update; skipped: 1 when any update of the batch was dropped;
        # transcript_tokens: the real tokens of all envs' transcripts (the loop's tokens_per_second)
        metrics = {"loss": loss, "grad_norm": grad_norm, "skipped": skipped.astype(jnp.int32),
                   "transcript_tokens": sum(tr.length.sum() for tr in transcripts)}
        for task, tr, m, game in zip(tasks, transcripts, parts, games):
            if not task.games:
                metrics[task.name] = {**rollout_metrics(tr, task.context_len, hp.num_episodes_logged), **m}
                continue
            metrics[task.name] = m  # a mixture: the loss terms of its whole batch, the rollout metrics per game
            for index, member in enumerate(task.games):
                metrics[member.name] = rollout_metrics(tr, member.context_len, hp.num_episodes_logged, game == index)
        new = state.replace(params=params, opt_state=opt_state, step=state.step + 1)
        return new, metrics

    if players:  # its own name: trace counters (chex.assert_max_traces) tell the two steps apart
        train_step.__name__ = train_step.__qualname__ = "imitation_step"
    return train_step


def make_sharded_train_step(graphdef, tasks, optimizer: optax.GradientTransformation, hp: GRPOHyper, state, mesh,
                            mode: str, *, donate: bool = True, min_size: int = sharding.MIN_SHARD_SIZE, wrap=None,
                            players=None):
    """The train step jitted on ``mesh`` (:func:`metarl_jax.sharding.jit_on_mesh`): ``step(state, key) ->
    (state, metrics)``, the rollout batch constrained to the mesh's data axis. ``state`` (a TrainState, concrete
    or abstract) fixes the in/out shardings per ``mode``; one device is a 1 x 1 mesh in mode ``"none"``.
    ``wrap`` (optional) wraps the traced Python function, e.g. a trace counter or ``chex.assert_max_traces``;
    ``players``: an imitation step (:func:`make_train_step`)."""
    sharding.check_batch(hp, mesh, mode)
    rows = hp.num_tasks * hp.group_size
    on_rows = sharding.row_constraint(mesh, mode)
    if sharding.mesh_spec(mode).mode != "none":  # the update's layers keep their rows on the data axis
        graphdef = with_row_constraint(graphdef, model_state(state), on_rows)
    step = make_train_step(graphdef, tasks, optimizer, hp, constrain_batch=sharding.batch_constraint(mesh, mode, rows),
                           constrain_rows=on_rows, players=players)
    if wrap is not None:
        step = wrap(step)
    return sharding.jit_on_mesh(step, state, mesh, mode, donate=donate, min_size=min_size)
