"""Config validation: every mistake is reported before anything is compiled, naming the field and the fix.

:func:`check_config` checks the plain fields (types and ranges) and the task lists (env ids, turns per episode,
step caps). :func:`check_context` runs once the codecs are built and compares each task's context length with
the worst-case transcript (:mod:`metarl_jax.agents.context`). Both raise :class:`ConfigError`.
"""

from __future__ import annotations

import os

from metarl_jax.envs import registry


class ConfigError(ValueError):
    """A config field has a bad value; the message names the field and the fix."""


def _fail(field: str, message: str):
    raise ConfigError(f"config.{field}: {message}")


def _need(cond: bool, field: str, message: str):
    if not cond:
        _fail(field, message)


# (field, predicate, what is allowed)
_RANGES = [
    ("seed", lambda v: isinstance(v, int) and v >= 0, "an int >= 0"),
    ("num_steps", lambda v: isinstance(v, int) and v >= 0, "an int >= 0"),
    ("num_tasks", lambda v: isinstance(v, int) and v >= 1, "an int >= 1 (tasks per env per step)"),
    ("update_epochs", lambda v: isinstance(v, int) and v >= 1, "an int >= 1 (gradient updates per batch; ORBIT: 1)"),
    ("group_size", lambda v: isinstance(v, int) and v >= 2, "an int >= 2 (GRPO compares rollouts within a group)"),
    ("temperature", lambda v: v > 0, "> 0"),
    ("top_p", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("eval_temperature", lambda v: v >= 0, ">= 0 (0 is greedy)"),
    ("eval_top_p", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("clip_low", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("clip_high", lambda v: v >= 0, ">= 0"),
    ("kl_coef", lambda v: v >= 0, ">= 0"),
    ("entropy_coef", lambda v: v >= 0, ">= 0"),
    ("observation_coef", lambda v: v >= 0, ">= 0"),
    ("gamma_step", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("gamma_traj", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("train_set_size", lambda v: isinstance(v, int) and v >= 1, "an int >= 1"),
    ("eval_trials", lambda v: isinstance(v, int) and v >= 1, "an int >= 1"),
    ("num_episodes_reported", lambda v: isinstance(v, int) and v >= 1, "an int >= 1"),
    ("eval_every", lambda v: isinstance(v, int) and v >= 0, "an int >= 0 (0: evaluate only at the end)"),
    ("log_every", lambda v: isinstance(v, int) and v >= 1, "an int >= 1"),
    ("checkpoint_every", lambda v: isinstance(v, int) and v >= 0, "an int >= 0 (0: only at the end)"),
    ("keep_checkpoints", lambda v: isinstance(v, int) and v >= 1, "an int >= 1"),
    ("free_tokens", lambda v: isinstance(v, int) and v >= 1, "an int >= 1 (tokens per action in free decoding)"),
    ("context_len", lambda v: isinstance(v, int) and v >= 0, "an int >= 0 (0: the worst case)"),
    ("optimizer.learning_rate", lambda v: v > 0, "> 0"),
    ("optimizer.warmup_steps", lambda v: isinstance(v, int) and v >= 0, "an int >= 0"),
    ("optimizer.grad_clip", lambda v: v >= 0, ">= 0 (0: no clipping)"),
    ("optimizer.b1", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optimizer.b2", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optimizer.weight_decay", lambda v: v >= 0, ">= 0"),
]

VARIANTS = ("orbit", "single", "compare")


def _get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        if part not in node:
            _fail(dotted, "is missing; start from a file in configs/ (for example configs/default.py)")
        node = node[part]
    return node


def check_config(config) -> None:
    """Checks the fields and task lists of a run config; raises :class:`ConfigError` on the first problem."""
    for field, ok, allowed in _RANGES:
        value = _get(config, field)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(field, f"must be a number ({allowed}), got {value!r}")
        if not ok(value):
            _fail(field, f"must be {allowed}, got {value!r}")
    _need(config.decoding in ("constrained", "free"), "decoding", f"must be 'constrained' or 'free', got {config.decoding!r}")
    mode = _get(config, "mesh.mode")
    _need(mode in ("none", "data", "fsdp", "tensor"), "mesh.mode", f"must be 'none', 'data', 'fsdp' or 'tensor', got {mode!r}")
    if mode != "none":
        rows = config.num_tasks * config.group_size
        data = _get(config, "mesh.data")
        _need(data == -1 or (isinstance(data, int) and data >= 1 and rows % data == 0), "mesh.data",
              f"must be -1 (all devices) or an int >= 1 dividing num_tasks * group_size = {rows}, got {data!r}")
    _need(not config.chat_format or config.tokenizer != "word", "chat_format",
          "needs a Hugging Face tokenizer directory with a chat template (config.tokenizer); the built-in word "
          "vocabulary has none")
    _need(config.variant in VARIANTS, "variant", f"must be one of {VARIANTS}, got {config.variant!r}")
    _need(config.model.pretrained_dir == "" or os.path.isdir(config.model.pretrained_dir), "model.pretrained_dir",
          f"{config.model.pretrained_dir!r} is not a directory; give a local Hugging Face model directory or ''")
    if not config.model.pretrained_dir:
        from metarl_jax.models.config import PRESETS

        _need(config.model.preset in PRESETS, "model.preset", f"unknown preset {config.model.preset!r}; presets: {sorted(PRESETS)}")
    _need(config.tokenizer == "word" or os.path.isdir(config.tokenizer), "tokenizer",
          f"{config.tokenizer!r} is neither 'word' (the built-in vocabulary) nor a local tokenizer directory")
    for name in ("train_tasks", "eval_tasks"):
        tasks = _get(config, name)
        _need(len(tasks) > 0, name, "lists no task; add at least one dict(env_id=..., max_turns_per_episode=..., total_step_cap=...)")
        for i, entry in enumerate(tasks):
            check_task(entry, f"{name}[{i}]")


def check_task(entry, field: str) -> None:
    """Checks one task entry (env id known, turns >= 1, cap >= turns, context_len >= 0)."""
    if isinstance(entry, str):
        entry = {"env_id": entry}
    _need("env_id" in entry, f"{field}.env_id", "is missing")
    env_id = entry["env_id"]
    try:
        spec = registry.spec(env_id)
    except KeyError as e:
        _fail(f"{field}.env_id", str(e.args[0]))
    allowed = {"env_id", "max_turns_per_episode", "total_step_cap", "context_len"}
    unknown = set(entry) - allowed
    _need(not unknown, field, f"has unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    turns = entry.get("max_turns_per_episode", spec.max_turns)
    cap = entry.get("total_step_cap", spec.total_step_cap)
    _need(isinstance(turns, int) and turns >= 1, f"{field}.max_turns_per_episode", f"must be an int >= 1, got {turns!r}")
    _need(isinstance(cap, int) and cap >= turns, f"{field}.total_step_cap",
          f"is {cap!r}, below max_turns_per_episode={turns}: a trial could not hold one episode. Use at least {turns} "
          f"(ORBIT uses 3 x turns = {3 * turns})")
    ctx = entry.get("context_len", 0)
    _need(isinstance(ctx, int) and ctx >= 0, f"{field}.context_len", f"must be an int >= 0 (0: the config's context_len), got {ctx!r}")


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
