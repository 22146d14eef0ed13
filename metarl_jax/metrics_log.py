"""Metrics logging for training runs: JSONL + per-kind CSV + TensorBoard event files (written with tensorboardX).

Files written by :class:`MetricsLog` under ``workdir``:

* ``metrics.jsonl``: one JSON object per :meth:`MetricsLog.log` call, ``{"step": int, "kind": str, <flat key>: number,
  ...}``. Non-finite floats are written as ``NaN`` / ``Infinity`` (Python's ``json`` reads them back).
* ``metrics_<kind>.csv`` (e.g. ``metrics_train.csv``, ``metrics_eval.csv``): columns ``step`` then the union of the
  kind's flat keys in first-seen order; a row leaves keys it did not log empty. When a new key appears the file is
  rewritten with the wider header (tmp file + ``os.replace``), otherwise rows are appended.
* ``tensorboard/<kind>/events.out.tfevents.<int time>.<hostname>.<time in ns>``: per :meth:`MetricsLog.log` call one
  event with a float32 scalar per flat key (tag = the key, exactly as in the JSONL); :meth:`MetricsLog.text` adds
  TensorBoard text (e.g. rendered transcripts). One file per writer (each resume opens a new one), written by
  tensorboardX's ``SummaryWriter`` from a background thread: events reach the file within :data:`TB_FLUSH_SECS`
  seconds and on :meth:`MetricsLog.close` (the JSONL and CSV rows are written before ``log`` returns).
* ``tensorboard/events.out.tfevents.*``: the run's hyperparameters (:meth:`MetricsLog.hparams`), for TensorBoard's
  HPARAMS tab, which lists the ``train`` and ``eval`` scalars as the run's metrics.

* optionally (``wandb_project``), a Weights & Biases run in ``wandb/``: every :meth:`MetricsLog.log` row with its keys
  prefixed by the kind (``train/loss``), every :meth:`MetricsLog.text` entry as HTML and the hyperparameters as the
  run's config. The run's id is kept in ``wandb_run_id``, so a resumed run continues the same wandb run; wandb keeps
  what it already received, so rows a killed run logged past its last checkpoint stay there (wandb drops later
  rows whose step is not above its last one, with a warning).

Read the event files with TensorBoard (``tensorboard --logdir <workdir>/tensorboard``) or with its
``EventAccumulator`` (``tensorboard.backend.event_processing.event_accumulator``; the ``tensorboard`` package is in
the ``dev`` extra).

Flat keys: nested dicts join their keys with ``"/"``; lists, tuples and arrays are indexed from 1, so
``{"episode_success": [0.1, 0.2], "opt": {"lr": 1e-3}}`` logs ``episode_success/1``, ``episode_success/2`` and
``opt/lr``. Leaves may be Python, numpy or jax numbers/arrays; they are stored as Python ``float`` (floating dtypes)
or ``int`` (integer and bool dtypes).

Resuming: ``MetricsLog(workdir, resume_step=s)`` drops rows with ``step > s`` from the existing JSONL and CSV files
(a killed run may have logged past its last checkpoint) and opens each TensorBoard writer with tensorboardX's
``purge_step=s + 1``, which makes TensorBoard discard the old events (scalars and text) from step ``s + 1`` on. (That
marker is a ``SessionLog START`` event; TensorBoard takes a run's first one as its start, not a restart, so the first
writer of an empty directory writes one at step 0.) With or without ``resume_step`` a final line cut short by a crash
is removed.

Usage::

    log = MetricsLog(workdir, resume_step=restored_step)      # None for a fresh run
    bar = progress(num_steps, initial=start_step, desc="train")
    for step in range(start_step + 1, num_steps + 1):
        metrics = train_step(...)
        log.log("train", step, metrics)
        bar.set_postfix(format_postfix(metrics), refresh=False)
        bar.update()
    bar.close()
    log.close()
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from tqdm import tqdm

# Larger arrays are almost certainly logged by mistake (e.g. a parameter tensor); flattening them would bloat the CSV.
MAX_ARRAY_SIZE = 1024

# ---------------------------------------------------------------------------------------------------------------------
# TensorBoard (tensorboardX)

# tensorboardX flushes an event file from its writer thread at most this often (and on close).
TB_FLUSH_SECS = 5


def summary_writer(logdir: str, purge_step: int | None = None):
    """A ``tensorboardX.SummaryWriter`` writing a new event file in ``logdir``; ``purge_step``: TensorBoard discards
    the events already in ``logdir`` with ``step >= purge_step`` (a resumed run's).

    The file name gets a nanosecond suffix: tensorboardX names files by the second and opens them with ``"wb"``, so a
    second writer within the same second would overwrite the first one's file; TensorBoard reads a directory's
    files in name order, so the suffix also keeps a resumed run's file after the old one."""
    from tensorboardX import SummaryWriter  # imported on first use: it imports torch where torch is installed (~1 s)

    return SummaryWriter(logdir, purge_step=purge_step, flush_secs=TB_FLUSH_SECS,
                         filename_suffix=f".{time.time_ns()}")


def scalar_summary(flat: Mapping[str, float | int]):
    """One ``Summary`` proto holding every ``{tag: number}`` as a float32 ``simple_value``, tags exactly the keys.

    (``SummaryWriter.add_scalar`` would rename tags with characters outside ``[-/\\w.]``, e.g. the ``:`` of
    ``game:GuessTheNumber-v0-easy``, so the TensorBoard tags would no longer match the JSONL / CSV keys.)"""
    from tensorboardX.proto.summary_pb2 import Summary

    return Summary(value=[Summary.Value(tag=tag, simple_value=float(v)) for tag, v in flat.items()])


def hparams_summary(hparams: Mapping[str, bool | int | float | str]):
    """The hparams plugin's ``session_start_info`` summary of ``hparams`` (tensorboardX's encoding). No experiment
    summary is written, so TensorBoard lists every scalar of the session's runs as a metric of the hparams table."""
    from tensorboardX.summary import hparams as hparams_summaries

    _experiment, session_start, _session_end = hparams_summaries(dict(hparams), {})
    return session_start


def scalar_fields(nested: Mapping, sep: str = ".") -> dict[str, bool | int | float | str]:
    """The bool / int / float / str leaves of a nested dict (e.g. a config's JSON) as ``{"a.b": value}``; lists,
    ``None`` and other leaves are left out."""
    out = {}
    for key, value in nested.items():
        if isinstance(value, Mapping):
            out.update({f"{key}{sep}{k}": v for k, v in scalar_fields(value, sep).items()})
        elif isinstance(value, (bool, int, float, str)):
            out[str(key)] = value
    return out


# ---------------------------------------------------------------------------------------------------------------------
# MetricsLog


def flatten_metrics(metrics: Mapping) -> dict[str, float | int]:
    """``{"a": {"b": x}, "c": [y, z]}`` -> ``{"a/b": x, "c/1": y, "c/2": z}`` with Python float/int leaves."""
    out: dict[str, float | int] = {}

    def visit(key: str, v) -> None:
        if isinstance(v, Mapping):
            for k, x in v.items():
                visit(f"{key}/{k}", x)
            return
        a = np.asarray(v)  # lists, tuples, numpy and jax values
        if a.dtype.kind not in "biuf":
            raise TypeError(f"metric {key!r}: expected numbers, got {type(v).__name__} of dtype {a.dtype}")
        if a.ndim == 0:
            if key in out:
                raise ValueError(f"metric key {key!r} occurs twice after flattening")
            out[key] = float(a) if a.dtype.kind == "f" else int(a)
            return
        if a.size > MAX_ARRAY_SIZE:
            raise ValueError(f"metric {key!r}: array of shape {a.shape} is too large to log")
        for i, x in enumerate(a, 1):
            visit(f"{key}/{i}", x)

    for k, v in metrics.items():
        visit(str(k), v)
    return out


def _complete_lines(path: str) -> tuple[list[str], bool]:
    """Lines of ``path`` without a final line left unterminated by a crash, and whether one was dropped."""
    with open(path, newline="") as f:
        text = f.read()
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        return lines[:-1], True
    return lines, False


def _replace(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


def _row(path: str, lineno: int, line: str) -> dict | None:
    """The JSON row of ``line``, or None (with a warning naming the file and line) when it is not one."""
    try:
        row = json.loads(line)
        if isinstance(row, dict) and "step" in row:
            return row
        problem = "a JSON value without a 'step'"
    except ValueError as e:
        problem = f"not JSON ({e})"
    warnings.warn(f"{path}:{lineno}: dropped a corrupt metrics row, {problem}: {line[:80]!r}", stacklevel=3)
    return None


def _csv_step(path: str, row: dict) -> float | None:
    """The step of a CSV row, or None (with a warning naming the file) when the row is corrupt."""
    try:
        return float(row["step"])
    except (TypeError, ValueError):
        warnings.warn(f"{path}: dropped a corrupt metrics row with step {row.get('step')!r}", stacklevel=3)
        return None


def read_jsonl(path: str) -> list[dict]:
    """The objects of a JSONL file, one per line; a final line cut short by a crash is ignored. A corrupt line
    raises ``ValueError`` naming the file and the line."""
    rows = []
    for lineno, line in enumerate(_complete_lines(path)[0], 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: not a JSON row ({e}): {line[:80]!r}") from None
    return rows


def _read_csv(path: str) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows (as strings) of a CSV file, ignoring a final line cut short by a crash."""
    reader = csv.DictReader(io.StringIO("".join(_complete_lines(path)[0])))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def _write_csv(path: str, fields: list[str], rows: list[Mapping]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fields, restval="")
    writer.writeheader()
    writer.writerows(rows)
    _replace(path, buf.getvalue())


class MetricsLog:
    """Appends flattened metrics to ``metrics.jsonl``, ``metrics_<kind>.csv`` and ``tensorboard/<kind>/`` in
    ``workdir`` (formats in the module docstring). ``resume_step``: drop existing rows with ``step > resume_step``
    and mark TensorBoard to purge them too; ``None`` keeps all existing rows (a fresh run, or appending as is).
    Every :meth:`log` call reaches the JSONL and CSV files before it returns; TensorBoard events reach their file
    within :data:`TB_FLUSH_SECS` seconds and on :meth:`close`."""

    def __init__(self, workdir: str, resume_step: int | None = None, wandb_project: str = "",
                 wandb_mode: str = "offline"):
        os.makedirs(workdir, exist_ok=True)
        self.workdir = workdir
        self.resume_step = resume_step
        self._wandb = None
        if wandb_project:
            from metarl_jax.wandb_log import WandbRun

            self._wandb = WandbRun(workdir, wandb_project, wandb_mode)
        self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
        self._csv_fields: dict[str, list[str]] = {}
        self._tb: dict = {}  # kind -> tensorboardX SummaryWriter of tensorboard/<kind>

        def keep(step) -> bool:
            return resume_step is None or int(float(step)) <= resume_step

        if os.path.exists(self.jsonl_path):
            lines, cut = _complete_lines(self.jsonl_path)
            kept = [line for i, line in enumerate(lines, 1)
                    if line.strip() and (row := _row(self.jsonl_path, i, line)) is not None and keep(row["step"])]
            if cut or len(kept) != len(lines):
                _replace(self.jsonl_path, "".join(kept))
        for name in sorted(os.listdir(workdir)):
            m = re.fullmatch(r"metrics_(.+)\.csv", name)
            if m:
                path = os.path.join(workdir, name)
                cut = _complete_lines(path)[1]
                fields, rows = _read_csv(path)
                kept = [row for row in rows if _csv_step(path, row) is not None and keep(row["step"])]
                if cut or len(kept) != len(rows):
                    _write_csv(path, fields, kept)
                self._csv_fields[m.group(1)] = fields

    def csv_path(self, kind: str) -> str:
        return os.path.join(self.workdir, f"metrics_{kind}.csv")

    def log(self, kind: str, step: int, metrics: Mapping) -> dict[str, float | int]:
        """Logs ``metrics`` (nested dicts / small arrays of numbers) of ``kind`` (e.g. ``"train"``, ``"eval"``) at
        ``step``; returns the flat ``{key: float | int}`` that was written."""
        if not re.fullmatch(r"[A-Za-z0-9_-]+", kind):
            raise ValueError(f"kind must be a simple name like 'train' or 'eval', got {kind!r}")
        step = int(step)
        flat = flatten_metrics(metrics)
        if "step" in flat or "kind" in flat:
            raise ValueError("'step' and 'kind' are reserved and cannot be metric keys")

        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps({"step": step, "kind": kind, **flat}) + "\n")

        path = self.csv_path(kind)
        fields = self._csv_fields.get(kind, [])
        row = {"step": step, **flat}
        new = [k for k in row if k not in fields]
        if new:  # the header grows: rewrite the file with the union of the keys
            rows = _read_csv(path)[1] if fields and os.path.exists(path) else []
            fields = fields + new
            self._csv_fields[kind] = fields
            _write_csv(path, fields, rows + [row])
        else:
            with open(path, "a", newline="") as f:
                csv.DictWriter(f, fields, restval="").writerow(row)

        if flat:
            self._writer(kind).file_writer.add_summary(scalar_summary(flat), step)
            if self._wandb:
                self._wandb.log({f"{kind}/{k}": v for k, v in flat.items()}, step)
        return flat

    def text(self, kind: str, step: int, texts: Mapping[str, str]) -> None:
        """Logs ``{tag: markdown}`` as TensorBoard text in ``tensorboard/<kind>/`` at ``step`` (tensorboardX's
        ``add_text``: the stored tag is ``<tag>/text_summary``). Text goes to TensorBoard only."""
        writer = self._writer(kind)
        for tag, value in texts.items():
            writer.add_text(tag, value, int(step))
        if self._wandb and texts:
            self._wandb.text({f"{kind}/{tag}": value for tag, value in texts.items()}, int(step))

    def hparams(self, values: Mapping[str, bool | int | float | str]) -> None:
        """Writes ``values`` (e.g. :func:`scalar_fields` of a config) as the hyperparameters of the run, in an event
        file of its own in ``tensorboard/``: TensorBoard's HPARAMS tab shows them with the ``train`` and ``eval``
        scalars as the run's metrics."""
        bad = sorted(k for k, v in values.items() if not isinstance(v, (bool, int, float, str)))
        if bad:
            raise TypeError(f"hyperparameters must be bool, int, float or str; not {', '.join(bad)}")
        with summary_writer(os.path.join(self.workdir, "tensorboard")) as writer:
            writer.file_writer.add_summary(hparams_summary(values))
        if self._wandb:
            self._wandb.config(values)

    def _writer(self, kind: str):
        """The SummaryWriter of ``tensorboard/<kind>/``, opened on first use (see :meth:`_purge_step`)."""
        if kind not in self._tb:
            logdir = os.path.join(self.workdir, "tensorboard", kind)
            self._tb[kind] = summary_writer(logdir, purge_step=self._purge_step(logdir))
        return self._tb[kind]

    def _purge_step(self, logdir: str) -> int | None:
        """tensorboardX's ``purge_step`` (a ``SessionLog START`` event at that step) for a new writer in ``logdir``:
        ``resume_step + 1`` on a resume; 0 for the first writer of a directory without event files, because
        TensorBoard's plugin accumulator takes a run's first START as its start and purges only on later ones;
        None when appending to existing event files as they are."""
        if self.resume_step is not None:
            return self.resume_step + 1
        fresh = not os.path.isdir(logdir) or not any(n.startswith("events.out.tfevents.") for n in os.listdir(logdir))
        return 0 if fresh else None

    def close(self) -> None:
        """Flushes and closes the TensorBoard writers (the JSONL and CSV files are closed after every call)."""
        for writer in self._tb.values():
            writer.close()
        self._tb.clear()
        if self._wandb:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class NoLog:
    """A :class:`MetricsLog` that writes nothing, for every process but process 0 of a multi-process job (one set of
    metrics files per run): the same calls; :meth:`log` returns the flat metrics as ``MetricsLog.log`` does."""

    def log(self, kind: str, step: int, metrics: Mapping) -> dict[str, float | int]:
        return flatten_metrics(metrics)

    def text(self, kind: str, step: int, texts: Mapping[str, str]) -> None:
        pass

    def hparams(self, values: Mapping[str, bool | int | float | str]) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


# ---------------------------------------------------------------------------------------------------------------------
# Progress bar


def progress(total: int, initial: int = 0, desc: str | None = None, **kwargs) -> tqdm:
    """A tqdm bar on stderr that redraws at most once a second; extra ``kwargs`` go to ``tqdm``."""
    return tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, mininterval=1.0, dynamic_ncols=True,
                **kwargs)


def format_postfix(metrics: Mapping, keys: Sequence[str] | None = None, limit: int = 4) -> dict[str, str]:
    """``{key: "0.123"}`` for ``bar.set_postfix``: the scalar entries named in ``keys`` (default: the first ``limit``
    scalar entries), floats with 3 significant digits; nested dicts, arrays and non-numbers are skipped."""
    out = {}
    for k in metrics if keys is None else [k for k in keys if k in metrics]:
        v = metrics[k]
        if isinstance(v, (Mapping, str, bytes)):
            continue
        a = np.asarray(v)
        if a.ndim != 0 or a.dtype.kind not in "biuf":
            continue
        out[str(k)] = f"{float(a):.3g}" if a.dtype.kind == "f" else str(int(a))
        if keys is None and len(out) >= limit:
            break
    return out
