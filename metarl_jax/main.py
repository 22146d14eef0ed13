"""Command-line entry point: meta-train and evaluate (a thin wrapper around :mod:`metarl_jax.train`).

    python -m metarl_jax.main --workdir=/tmp/metarl_run [--config=configs/default.py:compare] [--config.num_steps=1500]

``--config`` names an ml_collections config file (``path.py:variant``); ``--config.a.b=value`` overrides a field.
``--compare`` (the default when the config's variant is ``compare``, the default config's default) trains the
ORBIT run and the single-episode baseline with the same budget, in ``<workdir>/orbit`` and
``<workdir>/single_episode`` (after the imitation prior they share, in ``<workdir>/imitation``, when the config has
one), and prints their held-out per-episode success side by side (also
``<workdir>/comparison.md`` and ``comparison.json``). Rerunning the same
command resumes from the last checkpoints.

``--mode=evaluate`` trains nothing: it evaluates the run's latest checkpoint (or ``--step``'s) on the held-out
trials with the given config's evaluation settings (e.g. ``--config.eval_trials=1024``) and writes a fresh
report; a finished run rerun with changed settings is evaluated again too, never reported stale.
``--baselines`` plays the random and oracle policies instead (no training), on the trials of the config's
``eval_tasks`` (their turns per episode and step caps). Compiled programs are cached in
``<workdir>/xla_cache`` (``--nocompile_cache`` turns that off).
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading

from absl import app, flags, logging
from ml_collections import config_flags

from metarl_jax import configs

_DEFAULT_CONFIG = configs.path("default")  # shipped with the package: found from an installed copy too


def config_error(e: BaseException) -> SystemExit:
    """A one-paragraph command-line error for a ``--config`` file that cannot load or an override that does not
    apply, instead of ml_collections' traceback (exit status 1, the message on stderr)."""
    if isinstance(e, SyntaxError):
        where = f"{e.filename} line {e.lineno}" if e.filename else "the config file"
        return SystemExit(f"error: --config: {where} is not valid Python ({e.msg}); fix the file and rerun")
    text = str(e.args[0]) if e.args else str(e)
    unknown = re.match(r"""\W*'?([^'\\]+)""", text)
    if isinstance(e, (AttributeError, KeyError)) and unknown:  # an override naming no field of the config
        from metarl_jax.config_check import REMOVED_FIELDS

        field = unknown.group(1)
        close = re.search(r'Did you mean "([^"]+)"', text)
        hint = (f" {field} is no longer a config field: {REMOVED_FIELDS[field]}." if field in REMOVED_FIELDS
                else f" Did you mean {close.group(1)!r}?" if close else "")
        return SystemExit(f"error: --config: the config has no field {field!r} to override.{hint}")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    cause = next((line for line in reversed(lines) if "Errno" in line or "Error" in line), lines[-1] if lines else "")
    return SystemExit(f"error: --config: cannot load the config file: {cause} (give a config file as "
                      "path.py[:variant])")


try:  # ml_collections applies --config.<field>=... overrides as it defines the flag
    _CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Run config file (path.py[:variant]).")
except (AttributeError, KeyError, ValueError, TypeError) as e:
    raise config_error(e) from None
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/metarl_run", "Where checkpoints, logs and results go.")
_COMPILE_CACHE = flags.DEFINE_boolean(
    "compile_cache", True, "Keep compiled XLA programs in <workdir>/xla_cache (JAX's persistent compilation cache): a "
    "resumed or repeated run, and the second run of a comparison for the programs both share (the held-out "
    "evaluation), load them instead of compiling again.")
_BASELINES = flags.DEFINE_boolean("baselines", False, "Play the random and oracle baselines on the eval tasks instead.")
_COMPARE = flags.DEFINE_boolean(
    "compare", None, "Train the ORBIT run and the single-episode baseline with the same budget and print their "
    "held-out success side by side (in <workdir>/orbit and <workdir>/single_episode). Default: when the --config "
    "variant is 'compare' (the default config's default); --nocompare trains the config's run alone.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "evaluate"], "train: train (resuming) and evaluate; evaluate: "
                          "only evaluate a trained run's checkpoint with the config's evaluation settings.")
_STEP = flags.DEFINE_integer("step", 0, "With --mode=evaluate: the checkpoint step to evaluate (0: the latest).")
_TRACEBACK = flags.DEFINE_boolean("traceback", False, "Show the full traceback of a configuration, memory, workdir "
                                  "or checkpoint error instead of its one-line message.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Several processes (one per host): host:port of process 0's coordinator. With "
    "--num_processes and --process_id it starts jax.distributed; without it they come from JAX_COORDINATOR_ADDRESS, "
    "JAX_NUM_PROCESSES and JAX_PROCESS_ID, or from SLURM or a Cloud TPU slice (docs/multi_host.md).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "With --coordinator_address: the number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "With --coordinator_address: this process's index, from 0.")


def run_one(config, workdir: str, label: str | None = None):
    """Trains and evaluates, or (``--mode=evaluate``) only evaluates, one run; returns its rows."""
    from metarl_jax.train import evaluate_checkpoint, train_and_evaluate

    if _MODE.value == "evaluate":
        return evaluate_checkpoint(config, workdir, _STEP.value, label=label)
    return train_and_evaluate(config, workdir, label=label).rows


def compare(config, workdir: str):
    """Trains (or evaluates) the ORBIT run and the single-episode baseline; returns and writes the comparison.

    With an imitation phase (``config.pretrain.steps``), the phase runs once in ``<workdir>/imitation``
    (:func:`metarl_jax.prior.train_prior`) and both runs start from its exported weights for their remaining
    ``num_steps - pretrain.steps`` RL steps, with a fresh optimizer: the same start, as ORBIT starts both from one
    pretrained LM. The comparison then reports the prior too."""
    from metarl_jax.evaluate import success_table
    from metarl_jax.build import build_run
    from metarl_jax.prior import rl_phase, train_prior

    runs = {}
    for name, single in (("orbit", False), ("single_episode", True)):
        cfg = config.copy_and_resolve_references()
        cfg.single_episode = single
        build_run(cfg)  # both configs are checked before either run compiles anything
        runs[name] = cfg
    rows = []
    if config.pretrain.steps:
        model_dir, rows = train_prior(config, os.path.join(workdir, "imitation"), run=run_one)
        runs = {name: rl_phase(cfg, model_dir) for name, cfg in runs.items()}
    results = {
        name: run_one(cfg, os.path.join(workdir, name),
                      label="single-episode RL" if cfg.single_episode else "ORBIT (multi-episode)")
        for name, cfg in runs.items()
    }
    rows = rows + results["orbit"] + results["single_episode"]
    rows.sort(key=lambda r: r.env_id)
    lines = [success_table(rows), ""]
    summary = {}
    for r in rows:
        if len(r.episode_rates) >= 3:
            gain = r.episode_rates[2] - r.episode_rates[0]
            summary.setdefault(r.env_id, {})[r.policy] = {"episode_rates": r.episode_rates, "episode3_minus_episode1": gain}
            lines.append(f"{r.env_id} | {r.policy}: episode 3 - episode 1 = {gain:+.3f}")
    text = "\n".join(lines)
    from metarl_jax.multihost import is_primary

    if not is_primary():  # several processes: process 0 writes the comparison
        return text
    with open(os.path.join(workdir, "comparison.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(workdir, "comparison.json"), "w") as f:
        json.dump({"summary": summary, "rows": [r.as_dict() for r in rows]}, f, indent=2)
    return text


def start_distributed(config) -> None:
    """Starts ``jax.distributed`` for a multi-process job: from the --coordinator_address flags when given, else
    as ``config.mesh.distributed`` says (None: when the environment shows a multi-process launch)."""
    from metarl_jax.multihost import maybe_initialize_distributed

    if _COORDINATOR.value is None:
        if _NUM_PROCESSES.value is not None or _PROCESS_ID.value is not None:
            raise SystemExit("error: --num_processes and --process_id need --coordinator_address=host:port")
        flag = config.mesh.get("distributed")
        if flag is not None and not isinstance(flag, bool):
            raise SystemExit(f"error: --config.mesh.distributed={flag!r}: expected True, False or None")
        maybe_initialize_distributed(flag)
        return
    if _NUM_PROCESSES.value is None or _PROCESS_ID.value is None:
        raise SystemExit("error: --coordinator_address needs --num_processes and --process_id (this process's "
                         "index, 0 to num_processes - 1)")
    if not 0 <= _PROCESS_ID.value < _NUM_PROCESSES.value:
        raise SystemExit(f"error: --process_id={_PROCESS_ID.value} is not in 0 .. --num_processes - 1 = "
                         f"{_NUM_PROCESSES.value - 1}")
    maybe_initialize_distributed(True, coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                                 process_id=_PROCESS_ID.value)


def quiet_write_failure_echoes() -> None:
    """Drops the echoes of a failed checkpoint write from the command line's output. After a write fails (a full
    disk), orbax logs the failure from each of its background threads with a traceback, and tensorstore's late
    callbacks find orbax's asyncio loop closed ("Event loop is closed", reported as unraisable), a hundred times
    or more; a writer thread or an exit handler may print the failure once more. The run reports the failure
    once, as ``UnwritableError`` naming the directory and the step; ``--traceback`` keeps the echoes."""
    import logging as std_logging

    from metarl_jax.checkpoints import IO_MESSAGE, is_io_error

    def keep(record) -> bool:
        if "orbax" not in record.pathname:
            return True
        failure = record.exc_info[1] if record.exc_info else None
        return not (is_io_error(failure) or IO_MESSAGE.search(record.getMessage()))

    def echo(e) -> bool:
        return is_io_error(e) or (isinstance(e, RuntimeError) and str(e) == "Event loop is closed")

    std_logging.getLogger("absl").addFilter(keep)
    previous_unraisable, previous_thread = sys.unraisablehook, threading.excepthook

    def unraisable(report):  # also what an atexit callback or a finalizer raises
        if not echo(report.exc_value):
            previous_unraisable(report)

    def thread_error(report):  # a background writer thread's own copy of the failure
        if not echo(report.exc_value):
            previous_thread(report)

    sys.unraisablehook, threading.excepthook = unraisable, thread_error


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    try:
        config = _CONFIG.value
        config.keys()  # a file that failed to load gives a placeholder that raises here
    except (OSError, ImportError, AttributeError, KeyError, ValueError, TypeError) as e:
        raise config_error(e) from None
    start_distributed(config)  # before anything starts JAX's backend (importing the envs does)
    from metarl_jax import checkpoints, config_check, memory, workdir

    if not _TRACEBACK.value:
        quiet_write_failure_echoes()

    # Errors whose message says what to change: one line on stderr, no traceback (unless --traceback).
    user_errors = (config_check.ConfigError, memory.MemoryEstimateError, workdir.WorkdirBusyError,
                   workdir.UnwritableError, checkpoints.ResumeError, checkpoints.CheckpointMismatchError)
    try:
        run_command(config, _WORKDIR.value)
    except user_errors as e:
        if _TRACEBACK.value:
            raise
        raise SystemExit(f"error: {e}") from None


def run_command(config, workdir: str):
    """What ``main`` does once the config is loaded and jax.distributed is up."""
    from metarl_jax.config_check import check_config
    from metarl_jax.workdir import check_writable

    check_config(config)  # a bad field fails here, before any compile
    try:
        check_writable(workdir, "workdir")  # a clear error (not a raw OSError) for a read-only or missing parent
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: --workdir: {e}") from None
    if _COMPILE_CACHE.value:
        import jax

        jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "xla_cache"))
    if _BASELINES.value:
        from metarl_jax.baselines.table import play_baselines

        _, table = play_baselines([t.to_dict() for t in config.eval_tasks], ["random", "oracle"], config.eval_trials,
                                  config.seed, config.num_episodes_reported,
                                  config.lamer_gamma if config.lamer_trial else 0.0)
        print(table)
        return
    compare_runs = _COMPARE.value
    if compare_runs is None:
        compare_runs = configs.requested_variant(flags.FLAGS["config"].config_filename) == "compare"
    from metarl_jax.multihost import is_primary

    if compare_runs:
        table = compare(config, workdir)
    else:
        from metarl_jax.evaluate import success_table

        table = success_table(run_one(config, workdir))
    if is_primary():  # several processes: process 0 prints
        print("\nHeld-out success per episode (95% intervals):\n" + table)


if __name__ == "__main__":
    try:
        app.run(main)
    except SyntaxError as e:  # a --config file that is not valid Python, met while absl parses the flags
        raise config_error(e) from None
