"""The training loop: ``train_and_evaluate(config, workdir)``.

One run = one config (see ``metarl_jax/configs/default.py`` for every field). The loop:

1. checks the config (:mod:`metarl_jax.config_check`) and builds the tokenizer, the model, the training and
   validation task sets (:mod:`metarl_jax.tasks`) and the optimizer, then checks every task's context, all
   before compiling anything;
2. restores the latest checkpoint in ``<workdir>/checkpoints`` if there is one (a killed run resumes; the
   checkpointed config must match the current one in shapes);
3. runs the compiled GRPO step (:mod:`metarl_jax.algos.grpo`, traced once) ``config.num_steps`` times. The key
   of step ``i`` is ``fold_in(run_key, i)``, so a resumed run replays exactly the steps of an uninterrupted one;
4. before the first step (``eval_before_training``), every ``eval_every`` steps and at the end, evaluates on the
   held-out validation trials (per-episode success with 95% intervals), and logs metrics to ``metrics.jsonl``,
   ``metrics_<kind>.csv`` and TensorBoard event files under ``<workdir>/tensorboard``; a progress bar shows live
   metrics. Train rows add the step's ``learning_rate`` (the optimizer's schedule at its update count) and the
   wall-clock keys of :func:`timing_metrics` (throughput, ``compile_seconds`` once per process); a fresh run logs
   its config's scalar fields as TensorBoard hyperparameters, and every evaluation logs the first
   ``metarl_jax.evaluate.SAMPLE_TRIALS`` held-out transcripts per env as TensorBoard text;
5. saves checkpoints (params, optimizer, step, key, config) every ``checkpoint_every`` steps and at the end.

Faults:

* the workdir (and ``<workdir>/checkpoints``) must be writable: checked before anything compiles
  (:func:`metarl_jax.workdir.check_writable` raises :class:`~metarl_jax.workdir.UnwritableError`); a
  warning is printed when the free space looks too small for the checkpoints. A save that fails later (disk
  full) raises ``UnwritableError`` naming the directory; the earlier checkpoints are kept.
* the rollout and the update run in row micro-batches sized from a memory budget (:func:`micro_batches`);
  a batch whose update's activations, or an evaluation whose records, still look too big for the device
  (:func:`metarl_jax.memory.check_memory_estimate`) is warned about before compiling, naming the fields to lower,
  and refused (``MemoryEstimateError``) when the estimate is far beyond the device's memory, unless
  ``config.ignore_memory_estimate``.
* a step whose gradients are not finite is skipped inside the compiled step (``optax.apply_if_finite``: weights
  and optimizer moments unchanged, ``skipped=1`` in its metrics). The loop warns, logs that step's metrics with the
  running count ``skipped_total``, and after ``max_consecutive_skips`` skipped steps in a row raises
  ``FloatingPointError`` naming the step, the field and the fix. A checkpoint with non-finite values is never
  written (:meth:`metarl_jax.checkpoints.Checkpointer.save` refuses it). ``inject_nan_step`` /
  ``inject_nan_count`` inject NaN gradients to test this. Counts restart at 0 when a run resumes.

Returns the final evaluation (:class:`metarl_jax.evaluate.SuccessRow` per validation env) and writes it to
``<workdir>/eval.md`` and ``eval.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from typing import NamedTuple

import chex
import jax

from metarl_jax import sharding
from metarl_jax.algos.grpo import TrainState, init_train_state, make_sharded_train_step, model_state
from metarl_jax.build import (build_run, check_run_memory, learning_rate, run_evaluator, run_label,
                              trainable_filter)
from metarl_jax.checkpoints import FROZEN_KEY, Checkpointer, ResumeError
from metarl_jax.evaluate import (SuccessRow, eval_metrics, evaluate_params, render_samples,
                                 success_table)
from metarl_jax.memory import tree_bytes
from metarl_jax.metrics_log import MetricsLog, NoLog, format_postfix, progress, scalar_fields
from metarl_jax.multihost import compile_before_running, is_primary, sync
from metarl_jax.workdir import check_writable, workdir_lock


def saved_config_of(config) -> dict:
    """The config as the JSON dict stored with checkpoints and evaluation reports."""
    return json.loads(config.to_json_best_effort())


EVAL_CONFIG = "eval_config.json"  # beside eval.json: the config its rows were evaluated with


def write_eval(workdir: str, rows: list[SuccessRow], config, name: str = "eval") -> None:
    """Writes ``<name>.md`` (the table), ``<name>.json`` (the rows) and, for the run's own report, the config
    they were evaluated with (:data:`EVAL_CONFIG`); process 0 alone in a multi-process job."""
    if not is_primary():
        return
    with open(os.path.join(workdir, f"{name}.md"), "w") as f:
        f.write(success_table(rows) + "\n")
    with open(os.path.join(workdir, f"{name}.json"), "w") as f:
        json.dump([r.as_dict() for r in rows], f, indent=2)
    if name == "eval":
        with open(os.path.join(workdir, EVAL_CONFIG), "w") as f:
            json.dump(saved_config_of(config), f, indent=2, sort_keys=True)


def finished_eval(workdir: str, config) -> list[SuccessRow] | None:
    """The rows of ``eval.json`` if they were evaluated with ``config``; None if there are none or the config
    changed since (then the run's final weights are evaluated again)."""
    try:
        with open(os.path.join(workdir, EVAL_CONFIG)) as f:
            same = json.load(f) == saved_config_of(config)
        with open(os.path.join(workdir, "eval.json")) as f:
            return [SuccessRow.from_dict(r) for r in json.load(f)] if same else None
    except FileNotFoundError:
        return None


def warn_if_low_disk(directory: str, state, keep: int) -> None:
    """Warns when ``directory``'s free space is below the size of ``keep + 1`` checkpoints of ``state`` (orbax
    writes a new step before it deletes the oldest one)."""
    need = tree_bytes(state) * (keep + 1)
    free = shutil.disk_usage(directory).free
    if free < need:
        warnings.warn(f"{directory} has {free / 2**20:.1f} MiB free, less than the ~{need / 2**20:.1f} MiB that "
                      f"{keep + 1} checkpoints need (keep_checkpoints={keep}, plus the one being written); saves may "
                      "fail with a full disk: free space or use another --workdir", stacklevel=3)


def _skip_error(config, step: int, consecutive: int, latest_checkpoint) -> FloatingPointError:
    o = config.optimizer
    injected = ""
    if config.inject_nan_step > 0:
        injected = (f" (config.inject_nan_step={config.inject_nan_step} and inject_nan_count="
                    f"{config.inject_nan_count} inject NaN gradients on purpose; set inject_nan_step=-1)")
    return FloatingPointError(
        f"step {step}: the last {consecutive} updates were skipped because the gradients were not finite, "
        f"which reaches config.max_consecutive_skips={config.max_consecutive_skips}{injected}. Training stopped "
        f"with the weights of step {step - consecutive} (latest checkpoint: step {latest_checkpoint}). Lower "
        f"config.optimizer.learning_rate (now {o.learning_rate}), keep config.optimizer.grad_clip > 0 (now "
        f"{o.grad_clip}) or raise config.optimizer.warmup_steps (now {o.warmup_steps}), then rerun; raise "
        "config.max_consecutive_skips to tolerate longer runs of bad steps")


# The wall-clock keys of train rows (they differ between otherwise identical runs; see timing_metrics).
TIMING_KEYS = ("seconds", "steps_per_second", "tokens_per_second", "elapsed_seconds", "compile_seconds")


def timing_metrics(seconds: float | None, tokens: int, elapsed: float, compile_seconds: float | None) -> dict:
    """The wall-clock keys of a train row: ``seconds`` (the logged step's own wall time, from its call until its
    outputs are ready), ``steps_per_second`` = 1 / seconds and ``tokens_per_second`` = ``tokens`` (its
    transcripts' real tokens) / seconds, all left out when ``seconds`` is None (this process's first step,
    which also compiled); ``elapsed_seconds`` (since this process's first step started, evaluations and
    checkpoint saves included: 0 again after a resume); ``compile_seconds`` when given (once per process)."""
    out = {"elapsed_seconds": elapsed}
    if seconds is not None:
        out.update(seconds=seconds, steps_per_second=1.0 / seconds, tokens_per_second=tokens / seconds)
    if compile_seconds is not None:
        out["compile_seconds"] = compile_seconds
    return out


class TrainResult(NamedTuple):
    """What :func:`train_and_evaluate` returns. ``nnx.merge(graphdef, model_state(state))`` is the trained model
    (:func:`metarl_jax.algos.grpo.model_state`: the trained parameters with any frozen ones)."""

    rows: list[SuccessRow]  # the final held-out evaluation, one row per validation env
    state: TrainState  # the final train state: params, optimizer state, step (and reference params with a KL term)
    graphdef: object  # the model's nnx graph definition


def train_and_evaluate(config, workdir: str, label: str | None = None, quiet: bool = False) -> TrainResult:
    """Trains per ``config`` in ``workdir`` (resuming from its latest checkpoint) and evaluates on held-out trials.

    Returns the final evaluation rows (one per validation env, also written to ``eval.md`` / ``eval.json``), the
    final train state and the model's graph definition (:class:`TrainResult`).
    """
    run = build_run(config)
    check_writable(workdir, "workdir")  # before compiling: fail in seconds, not after the first steps
    with workdir_lock(workdir):  # one run at a time in a workdir
        return _train_and_evaluate(run, config, workdir, label or run_label(config), quiet)


def _train_and_evaluate(run, config, workdir: str, label: str, quiet: bool) -> TrainResult:
    ckpt_dir = os.path.join(workdir, "checkpoints")
    check_writable(ckpt_dir, "checkpoint directory")
    chex.clear_trace_counter()  # chex counts traces per code location: a new run's step may trace once more
    quiet = quiet or not is_primary()  # several processes: process 0 prints and writes the files
    state = init_train_state(run.model_state, run.optimizer, keep_reference=config.kl_coef > 0,
                             trainable=trainable_filter(config))
    warn_if_low_disk(ckpt_dir, state.replace(frozen=None), config.keep_checkpoints)  # frozen weights are not saved
    mesh = sharding.mesh_from_config(config.mesh)  # one device: a 1 x 1 mesh, the same jitted path
    check_run_memory(run, config, mesh.size)
    state = sharding.shard_train_state(state, mesh, config.mesh.mode)
    train_step = compile_before_running(
        make_sharded_train_step(run.graphdef, run.train_tasks, run.optimizer, run.hyper, state, mesh,
                                config.mesh.mode, wrap=lambda f: chex.assert_max_traces(f, n=1)), "train step")
    imitation_step = None
    if run.players:  # the imitation phase's steps (config.pretrain)
        imitation_step = compile_before_running(
            make_sharded_train_step(run.graphdef, run.pretrain_tasks, run.optimizer, run.pretrain_hyper, state, mesh,
                                    config.mesh.mode, wrap=lambda f: chex.assert_max_traces(f, n=1),
                                    players=run.players), "imitation step")
    evaluator = compile_before_running(run_evaluator(run, config, mesh), "evaluator")
    run_key = jax.random.PRNGKey(config.seed)
    saved_config = saved_config_of(config)

    with Checkpointer(ckpt_dir, max_to_keep=config.keep_checkpoints, clean_unfinished=True) as ckpt:
        restored = ckpt.restore_latest(state, run_key)
        start = 0
        if restored is not None:
            state, run_key, previous, start = restored
            loop_only = ("num_steps", "eval_every", FROZEN_KEY)  # not part of what the weights were trained with
            changed = sorted(k for k in set(previous) | set(saved_config)
                             if previous.get(k) != saved_config.get(k) and k not in loop_only)
            if changed:
                warnings.warn(f"resuming {workdir} with a changed config ({', '.join(changed)}); the checkpoint's "
                              "weights and optimizer state are kept", stacklevel=2)
            if start > config.num_steps:
                raise ResumeError(
                    f"config.num_steps={config.num_steps} but {workdir} holds a checkpoint of step {start}: the run "
                    "went further already. Evaluate an earlier checkpoint with --mode=evaluate --step=N (steps: "
                    f"{ckpt.all_steps()}), or give a fresh --workdir to train {config.num_steps} steps")
            if not quiet:
                print(f"[{label}] resumed from step {start} in {workdir}", flush=True)
        finished = start == config.num_steps and os.path.exists(os.path.join(workdir, "eval.json"))
        if not finished:
            # A fresh start (no checkpoint) replaces any rows a run killed before its first checkpoint logged.
            log = (MetricsLog(workdir, resume_step=start if restored is not None else -1,
                              wandb_project=config.wandb.project, wandb_mode=config.wandb.mode)
                   if is_primary() else NoLog())
            with log:
                if restored is None:  # once per run: a resumed run keeps the hyperparameters of its first start
                    log.hparams(scalar_fields(saved_config))
                state, rows = _train_loop(config, run, state, train_step=train_step, imitation_step=imitation_step,
                                          evaluator=evaluator, ckpt=ckpt,
                                          log=log, run_key=run_key, start=start, label=label, quiet=quiet)
    if finished:
        rows = finished_eval(workdir, config)
        if rows is None:  # its evaluation is stale: evaluate the final weights with this config
            if not quiet:
                print(f"[{label}] the config changed since {workdir}/eval.json was written: evaluating the step-{start} "
                      "weights again", flush=True)
            rows = evaluate_params(evaluator, model_state(state), config, label)[1]
            write_eval(workdir, rows, config)
        return TrainResult(rows, state, run.graphdef)
    write_eval(workdir, rows, config)
    sync("eval written")  # every process returns once the report is on disk
    return TrainResult(rows, state, run.graphdef)


def _train_loop(config, run, state, *, train_step, imitation_step, evaluator, ckpt, log, run_key, start: int,
                label: str, quiet: bool):
    """Steps ``start + 1 .. config.num_steps`` (the first ``config.pretrain.steps`` of them by ``imitation_step``):
    logs, evaluations and checkpoints; returns the final state and the final evaluation's rows."""
    def evaluate(step, state):
        played, rows = evaluate_params(evaluator, model_state(state), config, label)
        log.log("eval", step, eval_metrics(rows, played))
        log.text("eval", step, render_samples(played, run.tokenizer))
        return rows

    if config.eval_before_training and start == 0:  # ORBIT validates the untrained policy too
        rows = evaluate(0, state)
        if not quiet:
            print(f"[{label}] step 0 held-out success\n{success_table(rows)}", flush=True)
    t0 = time.perf_counter()
    compile_seconds = None  # this process's first step, until a train row logs it
    skipped_total = consecutive = 0
    with progress(config.num_steps, initial=start, desc=label, disable=quiet) as bar:
        for step in range(start, config.num_steps):
            rate = learning_rate(run.schedule, state.opt_state)  # before the step: the state is donated to it
            t_step = time.perf_counter()
            step_fn = imitation_step if step < config.pretrain.steps else train_step
            state, metrics = step_fn(state, jax.random.fold_in(run_key, step))
            done = step + 1
            skipped = bool(jax.device_get(metrics["skipped"]))  # one scalar per step: the loop must know now
            seconds = time.perf_counter() - t_step  # the step's outputs are ready: it has run
            if step in (start, max(start, config.pretrain.steps)):  # each step function traced, compiled, run once
                compile_seconds, seconds = seconds, None
            consecutive = consecutive + 1 if skipped else 0
            skipped_total += skipped
            if skipped:
                warnings.warn(f"[{label}] step {done}: non-finite gradients, update skipped (weights and "
                              f"optimizer unchanged; {consecutive} in a row, {skipped_total} in this run; the run "
                              f"stops at config.max_consecutive_skips={config.max_consecutive_skips})",
                              RuntimeWarning, stacklevel=3)
            if done % config.log_every == 0 or done == config.num_steps or skipped:
                metrics = jax.device_get(metrics)
                timing = timing_metrics(seconds, int(metrics["transcript_tokens"]), time.perf_counter() - t0,
                                        compile_seconds)
                compile_seconds = None
                flat = log.log("train", done, {**metrics, "learning_rate": rate, "skipped_total": skipped_total,
                                               **timing})
                bar.set_postfix(format_postfix({k: v for k, v in flat.items() if k.endswith(("loss", "mean_return"))},
                                               limit=4))
            if consecutive >= config.max_consecutive_skips:
                raise _skip_error(config, done, consecutive, ckpt.latest_step())
            bar.update(1)
            if config.eval_every and done % config.eval_every == 0 and done != config.num_steps:
                rows = evaluate(done, state)
                if not quiet:
                    bar.write(f"[{label}] step {done} held-out success\n{success_table(rows)}")
            if (config.checkpoint_every and done % config.checkpoint_every == 0) or done == config.num_steps:
                ckpt.save(done, state, run_key, saved_config_of(config))
    rows = evaluate(config.num_steps, state)
    ckpt.save(config.num_steps, state, run_key, saved_config_of(config))
    return state, rows


def evaluate_checkpoint(config, workdir: str, step: int = 0, label: str | None = None) -> list[SuccessRow]:
    """Evaluates a trained run's checkpoint on its held-out trials with ``config``'s evaluation settings; trains
    nothing. ``step`` 0 takes the latest checkpoint and rewrites the run's report (``eval.md``, ``eval.json``);
    another step writes ``eval_step<step>.md`` / ``.json``. Returns the rows."""
    run = build_run(config)
    label = label or run_label(config)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    mesh = sharding.mesh_from_config(config.mesh)
    check_run_memory(run, config, mesh.size)
    state = init_train_state(run.model_state, run.optimizer, keep_reference=config.kl_coef > 0,
                             trainable=trainable_filter(config))
    state = sharding.shard_train_state(state, mesh, config.mesh.mode)
    run_key = jax.random.PRNGKey(config.seed)
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"{ckpt_dir} does not exist: train the run first (the same command without "
                                "--mode=evaluate)")
    with workdir_lock(workdir), Checkpointer(ckpt_dir, max_to_keep=config.keep_checkpoints) as ckpt:
        newest = ckpt.pick_step(0, "evaluate", "train the run first (the same command without --mode=evaluate)")
        if step:
            state = ckpt.restore(ckpt.pick_step(step, "evaluate", ""), state, run_key)[0]
        else:
            state, _, _, step = ckpt.restore_latest(state, run_key)
        latest = step == newest
        rows = evaluate_params(compile_before_running(run_evaluator(run, config, mesh), "evaluator"),
                               model_state(state), config,
                               label if latest else f"{label} (step {step})")[1]
        write_eval(workdir, rows, config, "eval" if latest else f"eval_step{step}")
    return rows
