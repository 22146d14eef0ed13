"""Config validation: every mistake is reported before anything is compiled, naming the field and the fix.

:func:`check_config` checks every field of a run config: its names and value types against the locked, type-safe
default config (ml_collections refuses an unknown field, naming the closest one, and a value of another type),
numbers against their allowed ranges, the choices (decoding, mesh, text, ...), the model (preset, pretrained
directory, ``model.overrides``) and the task lists (env ids with the closest registered id suggested, turns per
episode, step caps). :func:`check_context` runs once the codecs are built and compares each task's context length
with the worst-case transcript (:mod:`metarl_jax.agents.context`). Both raise :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os

import ml_collections

from metarl_jax.algos.losses import ADVANTAGE_GROUPS
from metarl_jax.envs import registry
from metarl_jax.envs.base import implements_answer_action, implements_consistent_actions


class ConfigError(ValueError):
    """A config field has a bad value; the message names the field and the fix."""


def _fail(field: str, message: str):
    raise ConfigError(f"config.{field}: {message}")


def _need(cond: bool, field: str, message: str):
    if not cond:
        _fail(field, message)


MAX_INT = 2**31 - 1  # the largest count or size a config may give

# (field, predicate, what is allowed); a float must also be finite and an int at most MAX_INT
_RANGES = [
    ("seed", lambda v: isinstance(v, int) and v >= 0, "an int >= 0"),
    ("num_steps", lambda v: isinstance(v, int) and v >= 0, "an int >= 0"),
    ("num_tasks", lambda v: isinstance(v, int) and v >= 1, "an int >= 1 (tasks per env per step)"),
    ("update_epochs", lambda v: isinstance(v, int) and v >= 1, "an int >= 1 (gradient updates per batch; ORBIT: 1)"),
    ("group_size", lambda v: isinstance(v, int) and v >= 2, "an int >= 2 (GRPO compares rollouts within a group)"),
    ("temperature", lambda v: v > 0, "> 0 (sampling temperature of the training rollouts; greedy is for evaluation: eval_temperature=0)"),
    ("top_p", lambda v: 0 < v <= 1, "in (0, 1] (nucleus sampling; 1 keeps every token)"),
    ("eval_temperature", lambda v: v >= 0, ">= 0 (0 is greedy)"),
    ("eval_top_p", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("clip_low", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("clip_high", lambda v: v >= 0, ">= 0"),
    ("dual_clip", lambda v: v == 0 or v > 1, "0 (off) or > 1 (the bound c of dual-clip PPO; ORBIT / verl: 3.0)"),
    ("advantage_std_ddof", lambda v: v in (0, 1) and isinstance(v, int), "0 (population std) or 1 (sample std: ORBIT's)"),
    ("kl_coef", lambda v: v >= 0, ">= 0"),
    ("entropy_coef", lambda v: v >= 0, ">= 0"),
    ("observation_coef", lambda v: v >= 0, ">= 0"),
    ("answer_coef", lambda v: v >= 0, ">= 0 (0: off)"),
    ("policy_coef", lambda v: v >= 0, ">= 0 (1: ORBIT's policy gradient; 0: off, only the auxiliary losses train)"),
    ("gamma_step", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("gamma_traj", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("lamer_gamma", lambda v: 0 < v <= 1, "in (0, 1] (a success in episode k earns lamer_gamma ** k; LaMer: 0.6)"),
    ("lamer_remark_reward", lambda v: v >= 0, ">= 0 (what a reflection with <remark> ... </remark> earns; LaMer: 1.0)"),
    ("train_set_size", lambda v: isinstance(v, int) and v >= 1, "an int >= 1"),
    ("eval_trials", lambda v: isinstance(v, int) and v >= 1, "an int >= 1"),
    ("num_episodes_reported", lambda v: isinstance(v, int) and v >= 1, "an int >= 1"),
    ("train_max_episodes", lambda v: isinstance(v, int) and v >= 0, "an int >= 0 (0: as many as the step cap holds)"),
    ("eval_every", lambda v: isinstance(v, int) and v >= 0, "an int >= 0 (0: evaluate only at the end)"),
    ("log_every", lambda v: isinstance(v, int) and v >= 1, "an int >= 1"),
    ("checkpoint_every", lambda v: isinstance(v, int) and v >= 0, "an int >= 0 (0: only at the end)"),
    ("keep_checkpoints", lambda v: isinstance(v, int) and v >= 1, "an int >= 1"),
    ("free_tokens", lambda v: isinstance(v, int) and v >= 1, "an int >= 1 (tokens per action in free decoding)"),
    ("context_len", lambda v: isinstance(v, int) and v >= 0, "an int >= 0 (0: the worst case)"),
    ("rollout_rows", lambda v: isinstance(v, int) and v >= 0,
     "an int >= 0 (rows per rollout micro-batch, dividing num_tasks * group_size; 0: from memory_budget_gb)"),
    ("update_rows", lambda v: isinstance(v, int) and v >= 0,
     "an int >= 0 (rows per gradient micro-batch, dividing num_tasks * group_size; 0: from memory_budget_gb)"),
    ("memory_budget_gb", lambda v: v >= 0, ">= 0 (GiB per device the step may use; 0: the device's memory)"),
    ("lora.rank", lambda v: isinstance(v, int) and v >= 1, "an int >= 1 (the adapters' rank)"),
    ("lora.alpha", lambda v: v > 0, "> 0 (the adapters' output is scaled by lora.alpha / lora.rank)"),
    ("prompt.length", lambda v: isinstance(v, int) and v >= 1, "an int >= 1 (the prompt vectors opening every trial)"),
    ("pretrain.steps", lambda v: isinstance(v, int) and v >= 0,
     "an int >= 0 (the first steps of num_steps that imitate the scripted player; 0: no imitation phase)"),
    ("pretrain.noise", lambda v: 0 <= v <= 1, "in [0, 1] (the scripted player's share of uniformly random guesses)"),
    ("pretrain.learning_rate", lambda v: v > 0, "> 0 (the imitation phase's learning rate)"),
    ("pretrain.observation_coef", lambda v: v >= 0, ">= 0 (the imitation phase's observation-loss weight)"),
    ("optimizer.learning_rate", lambda v: v > 0, "> 0"),
    ("optimizer.warmup_steps", lambda v: isinstance(v, int) and v >= 0, "an int >= 0"),
    ("optimizer.grad_clip", lambda v: v >= 0, ">= 0 (0: no clipping)"),
    ("optimizer.b1", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optimizer.b2", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optimizer.weight_decay", lambda v: v >= 0, ">= 0"),
    ("max_consecutive_skips", lambda v: isinstance(v, int) and v >= 1,
     "an int >= 1 (skipped non-finite steps in a row before the run stops)"),
    ("inject_nan_step", lambda v: isinstance(v, int) and (v == -1 or v >= 1),
     "-1 (off) or an int >= 1 (testing: the first step whose gradient is made NaN, numbered from 1)"),
    ("inject_nan_count", lambda v: isinstance(v, int) and v >= 1, "an int >= 1 (testing: steps made NaN in a row)"),
]

# Fields that are gone, with what replaces them.
REMOVED_FIELDS = {
    "variant": "the variant is the config file's argument (--config=configs/default.py:single trains the "
               "single-episode baseline, i.e. single_episode=True); main.py's --compare trains ORBIT and the "
               "baseline side by side",
}


def _get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        if part not in node:
            _fail(dotted, "is missing; start from a built-in config (metarl_jax/configs/, for example default.py)")
        node = node[part]
    return node


DECODINGS = ("constrained", "free")
FREE_STOPS = ("action", "end_of_turn")
FREE_BUDGETS = ("fixed", "remaining")
TEXT_STYLES = ("gem", "terse")
MESH_MODES = ("none", "data", "fsdp", "tensor")
MODEL_DTYPES = ("float32", "bfloat16")
WANDB_MODES = ("offline", "online")
TRAINABLES = ("full", "lora", "prompt")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _suggest(name: str, names) -> str:
    close = difflib.get_close_matches(name, sorted(names), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def _check_schema(config) -> None:
    """The config's field names and value types, checked by ml_collections: every field is set on the locked,
    type-safe default config (:func:`metarl_jax.configs.default.get_config`, the one schema of a run config), which
    refuses a field it lacks (naming the closest one) and a value its field's type cannot take."""
    from metarl_jax.configs import default

    _copy_into(default.get_config(), config, "")


def _copy_into(schema, config, prefix: str) -> None:
    for key in config.keys():
        field, value = f"{prefix}{key}", config[key]
        if not prefix and key in REMOVED_FIELDS:
            _fail(key, f"is no longer a config field: {REMOVED_FIELDS[key]}")
        if key in schema and isinstance(schema[key], ml_collections.ConfigDict) and hasattr(value, "keys"):
            _copy_into(schema[key], value, f"{field}.")
            continue
        try:
            setattr(schema, key, value)
        except (AttributeError, KeyError):  # the locked schema has no such field
            where = f"config.{prefix[:-1]}" if prefix else "the config"
            _fail(field, f"is not a field of {where}; {_suggest(str(key), schema.keys())}known fields: "
                  f"{sorted(schema.keys())}")
        except TypeError:  # ml_collections' type safety: the default's type cannot take the value
            default, kind = schema[key], schema.get_ref(key).get_type()
            kind = {bool: "True or False", int: "an int", float: "a number", str: "a string"}.get(
                kind, f"a {kind.__name__}")
            kind += " (or None)" if default is None else ""
            _fail(field, f"must be {kind} like the default {default!r}, got {value!r} ({type(value).__name__})")


def _is_axis(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and (v == -1 or v >= 1)


def _check_mesh(config) -> None:
    mode = _get(config, "mesh.mode")
    _need(mode in MESH_MODES, "mesh.mode", f"must be one of {MESH_MODES} ('none': one device), got {mode!r}")
    data, model = _get(config, "mesh.data"), _get(config, "mesh.model")
    for field, value in (("mesh.data", data), ("mesh.model", model)):
        _need(_is_axis(value), field, f"must be -1 (all remaining devices) or an int >= 1 (a mesh axis size), got {value!r}")
    _need(not (data == -1 and model == -1), "mesh.model", "and mesh.data are both -1; at most one axis may take all "
          "remaining devices (for example mesh.model=1)")
    rows = config.num_tasks * config.group_size
    if mode != "none":
        _need(data == -1 or rows % data == 0, "mesh.data",
              f"must be -1 (all devices) or an int >= 1 dividing num_tasks * group_size = {rows}, got {data!r}")
    for field in ("rollout_rows", "update_rows"):
        value = _get(config, field)
        _need(value == 0 or rows % value == 0, field,
              f"must divide num_tasks * group_size = {rows} (the rows of one env's batch), got {value}; divisors: "
              f"{[d for d in range(1, rows + 1) if rows % d == 0]} (0: chosen from memory_budget_gb)")
        if mode != "none" and data != -1 and value:
            _need(value % data == 0, field, f"must be a multiple of mesh.data={data} (each data-parallel device "
                  f"takes an equal share of a micro-batch), got {value}")


def _check_wandb(config) -> None:
    mode = _get(config, "wandb.mode")
    _need(mode in WANDB_MODES, "wandb.mode", f"must be one of {WANDB_MODES} ('offline' needs no network; "
          f"upload later with `wandb sync`), got {mode!r}")
    if _get(config, "wandb.project"):
        import importlib.util

        _need(importlib.util.find_spec("wandb") is not None, "wandb.project",
              "is set but wandb is not installed: pip install wandb (or the package's [wandb] extra), or set "
              "wandb.project='' to log to TensorBoard and the JSONL / CSV files only")


def _check_model(config) -> None:
    from metarl_jax.models.config import PRESETS, ModelConfig

    for field in ("model.dtype", "model.param_dtype"):
        value = _get(config, field)
        _need(value in MODEL_DTYPES, field, f"must be one of {MODEL_DTYPES} (model.dtype: the compute dtype; "
              f"model.param_dtype: the weights' storage dtype), got {value!r}")
    from metarl_jax.models.transformer import REMAT_POLICIES

    _need(config.model.remat in REMAT_POLICIES, "model.remat", f"must be one of {sorted(REMAT_POLICIES)} (the "
          f"rematerialisation of the update: 'nested' keeps least memory, then 'full'), got {config.model.remat!r}")
    pretrained = config.model.pretrained_dir
    _need(pretrained == "" or isinstance(pretrained, str) and os.path.isdir(pretrained), "model.pretrained_dir",
          f"{pretrained!r} is not a directory; give a local Hugging Face model directory (config.json and "
          "*.safetensors; nothing is downloaded) or '' for a from-scratch preset")
    if not pretrained:
        _need(config.model.preset in PRESETS, "model.preset",
              f"unknown preset {config.model.preset!r}; {_suggest(config.model.preset, PRESETS)}presets: {sorted(PRESETS)}")
    overrides = _get(config, "model.overrides")
    _need(hasattr(overrides, "keys"), "model.overrides", f"must be a dict of ModelConfig fields, got {overrides!r}")
    overrides = dict(overrides)
    if not overrides:
        return
    _need(not pretrained, "model.overrides", "only change a from-scratch preset; a pretrained model's shape comes "
          "from its config.json. Set model.overrides={} or model.pretrained_dir=''")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    defaults = ModelConfig()
    for key, value in overrides.items():
        field = f"model.overrides.{key}"
        _need(key in fields, field, f"is not a ModelConfig field; {_suggest(key, fields)}fields: {sorted(fields)}")
        _need(key != "vocab_size", field, "is taken from the tokenizer (config.tokenizer); remove it")
        default = getattr(defaults, key)
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "True or False"
        elif isinstance(default, int):
            ok, kind = isinstance(value, int) and not isinstance(value, bool), "an int"
        elif isinstance(default, float):
            ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        else:
            ok, kind = isinstance(value, str), "a string"
        _need(ok, field, f"must be {kind} like the default {default!r}, got {value!r}")
    try:
        PRESETS[config.model.preset].replace(**overrides)
    except (ValueError, TypeError) as e:
        _fail("model.overrides", f"{overrides} do not make a valid model: {e}")


def check_config(config) -> None:
    """Checks every field of a run config before anything is built; raises :class:`ConfigError` on the first problem.

    Covers the field names and types (:func:`_check_schema`: typos, with the closest known name), the numbers of the
    range table, the choices (decoding, mesh, text, ...), the model (preset, pretrained directory, ``model.overrides``),
    the tokenizer and the task lists (:func:`check_task`); the context lengths once the codecs exist (check_context).
    """
    _check_schema(config)
    for field, ok, allowed in _RANGES:
        value = _get(config, field)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(field, f"must be a number ({allowed}), got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            _fail(field, f"must be a finite number ({allowed}), got {value!r}")
        if isinstance(value, int) and abs(value) > MAX_INT:
            _fail(field, f"must be at most {MAX_INT:,} (2**31 - 1: counts and sizes are int32 on the device), got "
                  f"{value:,}")
        if not ok(value):
            _fail(field, f"must be {allowed}, got {value!r}")
    _need(config.decoding in DECODINGS, "decoding",
          f"must be 'constrained' or 'free' (constrained: only valid action texts; free: free text, then "
          f"\\boxed{{...}} parsed), got {config.decoding!r}")
    _need(config.free_stop in FREE_STOPS, "free_stop",
          f"must be 'action' (a turn ends at its first action text) or 'end_of_turn' (ORBIT: it ends at the "
          f"end-of-turn token and the last \\boxed{{...}} is parsed), got {config.free_stop!r}")
    _need(config.free_budget in FREE_BUDGETS, "free_budget",
          f"must be 'fixed' (free_tokens per turn) or 'remaining' (ORBIT: the context's remaining room, at most "
          f"free_tokens), got {config.free_budget!r}")
    _need(config.thinking in ("keep", "strip"), "thinking",
          f"must be 'keep' (ORBIT's paper run: earlier turns' thinking stays in the context) or 'strip' (rLLM's "
          f"accumulate_reasoning=False: only what follows an earlier response's '</think>' stays), "
          f"got {config.thinking!r}")
    _need(config.thinking == "keep" or config.decoding == "free", "thinking",
          "'strip' needs decoding='free' (constrained decoding writes no thinking)")
    _need(config.truncated_return in ("keep", "zero"), "truncated_return", f"must be 'keep' (a trial cut by the full "
          f"context keeps the rewards it earned) or 'zero' (ORBIT: its return is 0), got {config.truncated_return!r}")
    _need(config.advantage_groups in ADVANTAGE_GROUPS, "advantage_groups", f"must be one of {ADVANTAGE_GROUPS} (the "
          f"turns each return-to-go is normalised over: losses.turn_keys), got {config.advantage_groups!r}")
    _need(config.task_sampling in ("replacement", "epochs"), "task_sampling", f"must be 'replacement' (independent "
          f"draws each step) or 'epochs' (ORBIT: each epoch visits every task once), got {config.task_sampling!r}")
    if config.task_sampling == "epochs":
        _need(config.train_set_size >= config.num_tasks, "task_sampling",
              f"'epochs' needs train_set_size ({config.train_set_size}) >= num_tasks ({config.num_tasks})")
    _need(config.text in TEXT_STYLES, "text",
          f"must be 'gem' (GEM's sentences, as ORBIT) or 'terse' (the bare feedback per turn, where the env has "
          f"it), got {config.text!r}")
    _check_mesh(config)
    _need(config.trainable in TRAINABLES, "trainable", f"must be one of {TRAINABLES} ('full': every weight; 'lora': "
          f"low-rank adapters, the base frozen; 'prompt': prompt vectors opening every trial, the model frozen), got "
          f"{config.trainable!r}")
    targets = _get(config, "lora.targets")
    _need(isinstance(targets, (tuple, list)) and targets and set(targets) <= set(LORA_TARGETS)
          and len(set(targets)) == len(targets), "lora.targets",
          f"must be a non-empty list of distinct projections among {LORA_TARGETS}, got {targets!r}")
    _check_model(config)
    _check_wandb(config)
    _need(config.tokenizer == "word" or isinstance(config.tokenizer, str) and os.path.isdir(config.tokenizer),
          "tokenizer",
          f"{config.tokenizer!r} is neither 'word' (the built-in vocabulary) nor a local tokenizer directory "
          "(one holding tokenizer.json or tokenizer_config.json; nothing is downloaded)")
    _need(not config.chat_format or config.tokenizer != "word", "chat_format",
          "needs a Hugging Face tokenizer directory with a chat template (config.tokenizer); the built-in word "
          "vocabulary has none. Set chat_format=False or point config.tokenizer at such a directory")
    _need(config.answer_from in ("task", "hindsight"), "answer_from",
          f"must be 'task' (the task's answer, privileged) or 'hindsight' (the winning action of the row's own "
          f"transcript), got {config.answer_from!r}")
    if config.answer_coef:
        _need(config.decoding == "constrained", "answer_coef",
              "needs decoding='constrained' (the answer's log-probability is read on the action trie); set "
              "answer_coef=0 or decoding='constrained'")
    if config.pretrain.steps:
        _need(config.pretrain.steps <= config.num_steps, "pretrain.steps",
              f"is {config.pretrain.steps}, more than num_steps={config.num_steps} (the imitation phase is the first "
              "pretrain.steps of the num_steps steps); raise num_steps or lower pretrain.steps")
        _need(config.decoding == "constrained" and not config.mix_games, "pretrain.steps",
              "needs decoding='constrained' (the player's moves are forced on the action trie) and mix_games=False "
              "(one player per env); set pretrain.steps=0 or change those fields")
    for name in ("train_tasks", "eval_tasks"):
        tasks = _get(config, name)
        _need(isinstance(tasks, (list, tuple)), name, f"must be a list of task dicts, got {tasks!r}")
        _need(len(tasks) > 0, name, "lists no task; add at least one dict(env_id=..., max_turns_per_episode=..., total_step_cap=...)")
        for i, entry in enumerate(tasks):
            check_task(entry, f"{name}[{i}]")
            env_id = entry if isinstance(entry, str) else entry["env_id"]
            styles = registry.env_class(env_id).text_styles
            _need(config.text in styles, "text",
                  f"is {config.text!r}, which {name}[{i}] ({env_id}) cannot render (it has {list(styles)}); use "
                  f"text='gem' or drop that task")
            if (name == "train_tasks" and config.pretrain.steps
                    and not implements_consistent_actions(registry.env_class(env_id))):
                played = [e for e in registry.registered() if implements_consistent_actions(registry.env_class(e))]
                _fail("pretrain.steps", f"is {config.pretrain.steps}, but {name}[{i}] ({env_id}) has no scripted "
                      f"player (envs with one: {', '.join(played)}); set pretrain.steps=0 or drop that task")
            if (name == "train_tasks" and config.answer_coef
                    and not implements_answer_action(registry.env_class(env_id))):
                answered = [e for e in registry.registered() if implements_answer_action(registry.env_class(e))]
                _fail("answer_coef", f"is {config.answer_coef}, but {name}[{i}] ({env_id}) has no single answer action "
                      f"(envs with one: {', '.join(answered)}); set answer_coef=0 or drop that task")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


TASK_KEYS = ("env_id", "max_turns_per_episode", "total_step_cap", "context_len")


def check_task(entry, field: str) -> None:
    """Checks one task entry: a bare env id or a dict with known keys, the env id registered (else the closest
    id is suggested), ``max_turns_per_episode`` >= 1, ``total_step_cap`` >= the turns, ``context_len`` >= 0."""
    if isinstance(entry, str):
        entry = {"env_id": entry}
    _need(hasattr(entry, "keys"), field, f"must be an env id or a dict(env_id=..., max_turns_per_episode=..., "
          f"total_step_cap=...), got {entry!r}")
    unknown = sorted(set(entry.keys()) - set(TASK_KEYS))
    if unknown:
        _fail(f"{field}.{unknown[0]}", f"is not a task key; {_suggest(str(unknown[0]), TASK_KEYS)}allowed keys: {list(TASK_KEYS)}")
    _need("env_id" in entry, f"{field}.env_id", "is missing; name a registered env, e.g. env_id='maze'")
    env_id = entry["env_id"]
    try:
        spec = registry.spec(env_id)
    except KeyError as e:
        _fail(f"{field}.env_id", str(e.args[0]))
    turns = entry.get("max_turns_per_episode", spec.max_turns)
    cap = entry.get("total_step_cap", spec.total_step_cap)
    _need(_is_int(turns) and turns >= 1, f"{field}.max_turns_per_episode",
          f"must be an int >= 1 (ORBIT's value for {env_id}: {spec.max_turns}), got {turns!r}")
    _need(_is_int(cap), f"{field}.total_step_cap", f"must be an int >= max_turns_per_episode={turns}, got {cap!r}")
    _need(cap >= turns, f"{field}.total_step_cap",
          f"is {cap!r}, below max_turns_per_episode={turns}: a trial could not hold one episode. Use at least {turns} "
          f"(ORBIT uses 3 x turns = {3 * turns})")
    ctx = entry.get("context_len", 0)
    _need(_is_int(ctx) and ctx >= 0, f"{field}.context_len", f"must be an int >= 0 (0: the config's context_len), got {ctx!r}")
    for key, value in (("max_turns_per_episode", turns), ("total_step_cap", cap), ("context_len", ctx)):
        _need(value <= MAX_INT, f"{field}.{key}", f"must be at most {MAX_INT:,} (2**31 - 1), got {value:,}")


def check_context(task, field: str, allow_truncation: bool) -> None:
    """Refuses a context shorter than the task's worst-case transcript unless truncation is allowed.

    Even with truncation the context must hold the opening observation and one action.
    """
    budget = task.budget
    least = budget.chunk_len + budget.action_len
    if task.context_len < least:
        _fail(field, f"is {task.context_len} tokens, too short for even the first observation and action of "
                     f"{task.name} ({least} tokens); raise it")
    if task.context_len < budget.worst_case and not allow_truncation:
        _fail(field, f"is {task.context_len} tokens, shorter than the worst-case transcript of {task.name} "
                     f"({budget.worst_case} tokens over {budget.turns} turns). Raise it to {budget.worst_case} (or 0 "
                     "for the worst case), or set config.allow_truncation=True to stop a trial when its context is "
                     "full (ORBIT's behaviour)")
