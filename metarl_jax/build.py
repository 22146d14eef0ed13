"""Building a run from its config, host side only (nothing is compiled): the tokenizer, the model, the training
and validation task sets, the optimizer and its schedule, the step's hyperparameters and the micro-batch plan
(:func:`build_run`), each part also on its own (:func:`build_model`, :func:`build_tasks`, :func:`build_optimizer`,
:func:`hyper_from_config`). :mod:`metarl_jax.train` runs what this builds.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from metarl_jax import config_check, sharding
from metarl_jax.algos.grpo import GRPOHyper
from metarl_jax.algos.optim import make_optimizer, make_schedule
from metarl_jax.baselines.players import episode_player
from metarl_jax.evaluate import make_evaluator
from metarl_jax.memory import (MicroBatches, check_memory_estimate, device_memory_bytes, eval_records_need,
                               plan_micro_batches, refuse_far_beyond, tree_bytes)
from metarl_jax.models.prompt import prompt_length
from metarl_jax.tasks import TaskSet, build_mixture, build_task, task_keys


@dataclasses.dataclass
class Run:
    """Everything a run builds from its config before compiling."""

    tokenizer: object
    graphdef: object
    model_state: object
    train_tasks: list[TaskSet]
    eval_tasks: list[TaskSet]
    optimizer: optax.GradientTransformation
    schedule: optax.ScalarOrSchedule  # the optimizer's learning rate (see :func:`build_schedule`)
    hyper: GRPOHyper
    micro_batches: MicroBatches
    # The imitation phase's tasks: the train tasks as multi-episode trials (for the single-episode baseline too,
    # so both runs imitate the same corpus) with one scripted player each; None when config.pretrain.steps is 0.
    pretrain_tasks: list[TaskSet] | None = None
    players: list | None = None
    # The imitation step's hyperparameters: ``hyper`` with the phase's own observation-loss weight
    # (config.pretrain.observation_coef); None when config.pretrain.steps is 0.
    pretrain_hyper: GRPOHyper | None = None


def build_model(config, tokenizer):
    """``(graphdef, state)`` of the configured model: a local pretrained directory or a from-scratch preset, with
    LoRA adapters when ``config.trainable == "lora"`` and ``config.prompt.length`` prompt vectors when it is
    ``"prompt"`` (unless the pretrained directory brought its own, which then go on training)."""
    if config.model.pretrained_dir:
        from metarl_jax.models.hf_io import load_pretrained

        model = load_pretrained(config.model.pretrained_dir, dtype=config.model.dtype,
                                param_dtype=config.model.param_dtype, remat=config.model.remat)
        if model.config.vocab_size < tokenizer.vocab_size:
            raise config_check.ConfigError(
                f"config.model.pretrained_dir: the model's vocabulary ({model.config.vocab_size}) is smaller than the "
                f"tokenizer's ({tokenizer.vocab_size}); use the tokenizer saved with the model")
    else:
        from metarl_jax.models.config import preset
        from metarl_jax.models.transformer import Transformer

        cfg = preset(config.model.preset, tokenizer.vocab_size)  # overrides were checked by config_check
        model = Transformer(cfg.replace(**dict(config.model.overrides)), rngs=nnx.Rngs(config.seed),
                            param_dtype=jnp.dtype(config.model.param_dtype), dtype=jnp.dtype(config.model.dtype),
                            remat=config.model.remat)
    if config.trainable == "lora":
        from metarl_jax.models.lora import add_lora

        lora = config.lora
        add_lora(model, lora.rank, lora.alpha, nnx.Rngs(config.seed + 1), targets=tuple(lora.targets))
    if config.trainable == "prompt" and model.prompt is None:
        from metarl_jax.models.prompt import add_prompt

        add_prompt(model, config.prompt.length, nnx.Rngs(config.seed + 1))
    elif config.trainable == "prompt" and model.prompt.shape[0] != config.prompt.length:
        raise config_check.ConfigError(
            f"config.prompt.length: the model in {config.model.pretrained_dir} brings {model.prompt.shape[0]} prompt "
            f"vectors, not {config.prompt.length}; set config.prompt.length={model.prompt.shape[0]}")
    return nnx.split(model)


def trainable_filter(config):
    """The nnx filter of the variables that ``config.trainable`` trains (None: every variable)."""
    if config.trainable == "lora":
        from metarl_jax.models.lora import LoRAParam

        return LoRAParam
    if config.trainable == "prompt":
        from metarl_jax.models.prompt import PromptParam

        return PromptParam
    return None


def _imitation(config) -> dict:
    """The imitation phase's share of the schedule: its updates and its learning rate."""
    return dict(imitation_steps=config.pretrain.steps * config.update_epochs,
                imitation_rate=config.pretrain.learning_rate)


def build_schedule(config) -> optax.ScalarOrSchedule:
    """The learning rate of :func:`build_optimizer` (:func:`metarl_jax.algos.optim.make_schedule`)."""
    return make_schedule(config.optimizer.learning_rate, config.optimizer.warmup_steps, **_imitation(config))


def build_optimizer(config) -> optax.GradientTransformation:
    """:func:`metarl_jax.algos.optim.make_optimizer` with ``config.optimizer``'s fields and the imitation phase's
    rate (``config.pretrain``)."""
    return make_optimizer(**config.optimizer, **_imitation(config))


def learning_rate(schedule: optax.ScalarOrSchedule, opt_state) -> float:
    """The rate the optimizer's next update uses: ``schedule`` at the update count in ``opt_state`` (optax's
    ``ScaleByScheduleState.count``, which skipped updates do not advance); a constant rate as is."""
    if not callable(schedule):
        return float(schedule)
    count = optax.tree_utils.tree_get(
        opt_state, "count", filtering=lambda path, _: getattr(path[-1], "tuple_name", None) == "ScaleByScheduleState")
    return float(schedule(jax.device_get(count)))


def build_tasks(config, tokenizer, split: str, prompt_len: int = 0,
                single_episode: bool | None = None, new_task_each_episode: bool = False) -> list[TaskSet]:
    """The :class:`TaskSet` list of ``train_tasks`` or ``eval_tasks``, contexts checked; with
    ``config.mix_games`` several envs become one mixture (:func:`metarl_jax.tasks.build_mixture`). ``prompt_len``:
    the model's prompt vectors (:func:`metarl_jax.models.prompt.prompt_length`), which open every trial.
    ``single_episode``: whether train trials have one episode (default: ``config.single_episode``);
    ``new_task_each_episode``: whether each episode draws its own task (the imitation phase's corpus)."""
    single_episode = config.single_episode if single_episode is None else single_episode
    entries = config.train_tasks if split == "train" else config.eval_tasks
    field = "train_tasks" if split == "train" else "eval_tasks"
    task_split = "train" if split == "train" else "validation"
    num_tasks = config.train_set_size if split == "train" else config.eval_trials
    budget = memory_budget(config) if split == "eval" else 0
    out = []
    for i, entry in enumerate(entries):
        entry = dict(entry)
        own = entry.pop("context_len", 0)
        ctx = own or config.context_len
        task = build_task(
            entry, tokenizer, split=task_split, seed=config.seed, num_tasks=1,  # the keys come once checked, below
            single_episode=single_episode and split == "train", intro=config.intro,
            repeat_opening=config.repeat_opening, reflection=config.reflection, context_len=ctx,
            free_tokens=config.free_tokens if config.decoding == "free" else 0, chat=config.chat_format,
            text=config.text, free_stop=config.free_stop, free_budget=config.free_budget, thinking=config.thinking,
            lamer_gamma=config.lamer_gamma if config.lamer_trial else 0.0, remark_reward=config.lamer_remark_reward,
            prompt_len=prompt_len, new_task_each_episode=new_task_each_episode,
            max_episodes=config.train_max_episodes if split == "train" and not new_task_each_episode else 0,
        )
        if task.free_tokens and task.free_tokens < task.table.max_len:
            raise config_check.ConfigError(
                f"config.free_tokens: {task.free_tokens} tokens cannot hold an action of {task.name} "
                f"({task.table.max_len} tokens); raise it")
        config_check.check_context(task, f"{field}[{i}].context_len" if own else "context_len",
                                   config.allow_truncation)
        if split == "eval":  # an eval_trials far beyond memory is refused before its keys are drawn
            refuse_far_beyond(config, *eval_records_need(config, [task]), budget)
        out.append(dataclasses.replace(task, task_keys=task_keys(task.name, task_split, config.seed, num_tasks)))
    return [build_mixture(out, tokenizer)] if config.mix_games and len(out) > 1 else out


def build_run(config) -> Run:
    """Checks the config and builds the run's parts (host side only: nothing is compiled)."""
    from metarl_jax.text.tokenizers import load_tokenizer

    config_check.check_config(config)
    tokenizer = load_tokenizer(config.tokenizer)
    graphdef, model_state = build_model(config, tokenizer)
    prompt_len = prompt_length(nnx.merge(graphdef, model_state))
    train_tasks, eval_tasks = (build_tasks(config, tokenizer, split, prompt_len) for split in ("train", "eval"))
    optimizer, schedule = build_optimizer(config), build_schedule(config)
    micro = micro_batches(config, nnx.merge(graphdef, model_state), model_state, optimizer, train_tasks, eval_tasks)
    hyper = hyper_from_config(config, micro)
    pretrain_tasks = players = pretrain_hyper = None
    if config.pretrain.steps:
        pretrain_hyper = dataclasses.replace(hyper, observation_coef=config.pretrain.observation_coef)
        independent = config.pretrain.new_task_each_episode
        pretrain_tasks = (build_tasks(config, tokenizer, "train", prompt_len, single_episode=False,
                                      new_task_each_episode=independent)
                          if config.single_episode or independent else train_tasks)
        players = [episode_player(task.env, config.pretrain.noise) for task in pretrain_tasks]
    return Run(tokenizer, graphdef, model_state, train_tasks, eval_tasks, optimizer, schedule, hyper, micro,
               pretrain_tasks, players, pretrain_hyper)


def hyper_from_config(config, micro: MicroBatches | None = None) -> GRPOHyper:
    """The step's :class:`GRPOHyper`: each of its fields from the config field of the same name, except the
    discount (``gamma_step`` / ``gamma_traj`` only with ``config.discount``), ``order_seed`` (``config.seed``),
    ``num_episodes_logged`` (``config.num_episodes_reported``) and the micro-batch rows (``micro``'s, the planned ones;
    without it, the config's)."""
    derived = dict(gamma_step=config.gamma_step if config.discount else None,
                   gamma_traj=config.gamma_traj if config.discount else None, order_seed=config.seed,
                   num_episodes_logged=config.num_episodes_reported,
                   rollout_rows=micro.rollout if micro else config.rollout_rows,
                   update_rows=micro.update if micro else config.update_rows)
    named = {f.name: config[f.name] for f in dataclasses.fields(GRPOHyper) if f.name not in derived}
    return GRPOHyper(**named, **derived)


def micro_batches(config, model, model_state, optimizer, train_tasks, eval_tasks) -> MicroBatches:
    """Rows per rollout, update and evaluation micro-batch: ``config.rollout_rows`` / ``update_rows`` where
    set, the rest from the memory budget (``config.memory_budget_gb``, 0: the device's memory; see
    :func:`metarl_jax.memory.plan_micro_batches`). Warns when even the smallest micro-batches look too big."""
    spec = sharding.mesh_spec(config.mesh)
    data = sharding.mesh_from_config(spec).shape["data"]
    trainable = trainable_filter(config)
    trained = model_state if trainable is None else nnx.split_state(model_state, trainable, ...)[0]
    state = tree_bytes(model_state) * (2 if config.kl_coef > 0 else 1) + tree_bytes(
        jax.eval_shape(optimizer.init, trained))
    if spec.mode == "fsdp":
        state //= data
    budget = memory_budget(config)
    rows = config.num_tasks * config.group_size
    plan = plan_micro_batches(model.config, train_tasks, eval_tasks, rows, config.eval_trials, budget_bytes=budget,
                              state_bytes=state, cache_dtype=model.dtype, data_devices=data, remat=config.model.remat)
    if not plan.fits and not (config.rollout_rows and config.update_rows):
        warnings.warn(f"the step may not fit in {budget / 2**30:.1f} GiB per device even in micro-batches of "
                      f"{plan.rollout} rollout and {plan.update} update rows (of {rows}); lower each task's "
                      "context_len or the model size, raise config.memory_budget_gb if the device has more, or "
                      "set config.rollout_rows / config.update_rows", stacklevel=3)
    return dataclasses.replace(plan, rollout=config.rollout_rows or plan.rollout,
                               update=config.update_rows or plan.update)


def memory_budget(config) -> int:
    """Bytes per device the run may use: ``config.memory_budget_gb``, or the device's memory for 0."""
    return int(config.memory_budget_gb * 2**30) or device_memory_bytes()


def check_run_memory(run: Run, config, devices: int) -> None:
    """:func:`metarl_jax.memory.check_memory_estimate` of a built run on ``devices`` devices, before compiling."""
    check_memory_estimate(config, nnx.merge(run.graphdef, run.model_state).config, run.train_tasks, run.eval_tasks,
                          memory_budget(config), devices, run.hyper.update_rows)


def run_label(config) -> str:
    """The default label of a run's rows."""
    return "single-episode" if config.single_episode else "orbit"


def run_evaluator(run: Run, config, mesh=None):
    """:func:`make_evaluator` of a built run with ``config``'s evaluation settings (on ``mesh`` under
    ``config.mesh.mode`` when given)."""
    return make_evaluator(run.graphdef, run.eval_tasks, config.eval_temperature, config.eval_top_p,
                          run.micro_batches.evaluate, mesh=mesh, mode=config.mesh.mode)
