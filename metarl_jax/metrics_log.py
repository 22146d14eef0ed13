"""Metrics logging for training runs: JSONL + per-kind CSV + TensorBoard event files, with no extra dependencies.

Files written by :class:`MetricsLog` under ``workdir``:

* ``metrics.jsonl``: one JSON object per :meth:`MetricsLog.log` call, ``{"step": int, "kind": str, <flat key>: number,
  ...}``. Non-finite floats are written as ``NaN`` / ``Infinity`` (Python's ``json`` reads them back).
* ``metrics_<kind>.csv`` (e.g. ``metrics_train.csv``, ``metrics_eval.csv``): columns ``step`` then the union of the
  kind's flat keys in first-seen order; a row leaves keys it did not log empty. When a new key appears the file is
  rewritten with the wider header (tmp file + ``os.replace``), otherwise rows are appended.
* ``tensorboard/<kind>/events.out.tfevents.<int time>.<hostname>``: one scalar per flat key (tag = the key), written
  by :class:`TensorBoardWriter` (hand-encoded protobuf in TFRecord framing, readable by TensorBoard and by
  :func:`read_events`).

Flat keys: nested dicts join their keys with ``"/"``; lists, tuples and arrays are indexed from 1, so
``{"episode_success": [0.1, 0.2], "opt": {"lr": 1e-3}}`` logs ``episode_success/1``, ``episode_success/2`` and
``opt/lr``. Leaves may be Python, numpy or jax numbers/arrays; they are stored as Python ``float`` (floating dtypes)
or ``int`` (integer and bool dtypes).

Resuming: ``MetricsLog(workdir, resume_step=s)`` drops rows with ``step > s`` from the existing JSONL and CSV files
(a killed run may have logged past its last checkpoint) and starts each TensorBoard writer with a purge marker at
``s + 1``, which makes TensorBoard discard the old events from step ``s + 1`` on. With or without ``resume_step`` a
final line cut short by a crash is removed.

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
import socket
import struct
import sys
import time
from collections.abc import Mapping, Sequence

import numpy as np
from tqdm import tqdm

# Larger arrays are almost certainly logged by mistake (e.g. a parameter tensor); flattening them would bloat the CSV.
MAX_ARRAY_SIZE = 1024

# ---------------------------------------------------------------------------------------------------------------------
# crc32c (Castagnoli), TFRecord framing and the few protobuf fields of tensorflow's Event / Summary messages.

_CRC32C_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC32C_TABLE.append(_c)
del _i, _c


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) of ``data`` as an unsigned 32-bit int."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 two's complement, as protobuf encodes negative int64
    out = bytearray()
    while True:
        bits, n = n & 0x7F, n >> 7
        if n:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _len_field(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _encode_event(wall_time: float, step: int, *, file_version: str | None = None,
                  scalars: Sequence[tuple[str, float]] = (), session_start: bool = False) -> bytes:
    """Event{wall_time=1 double, step=2 int64, file_version=3 string, summary=5 Summary, session_log=6 SessionLog}."""
    msg = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
    if file_version is not None:
        msg += _len_field(3, file_version.encode())
    if scalars:
        # Summary{repeated value=1 Value}; Value{tag=1 string, simple_value=2 float}.
        values = b"".join(
            _len_field(1, _len_field(1, tag.encode()) + b"\x15" + struct.pack("<f", value)) for tag, value in scalars)
        msg += _len_field(5, values)
    if session_start:
        msg += _len_field(6, b"\x08\x01")  # SessionLog{status=1 START}
    return msg


def _parse_fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """Decodes one protobuf message into ``(field number, wire type, value)``; varints as (unsigned) ints, 64/32-bit
    fields and length-delimited fields as bytes."""
    out, pos = [], 0

    def varint():
        nonlocal pos
        result = shift = 0
        while True:
            if pos >= len(buf):
                raise ValueError("truncated varint")
            b = buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return result

    while pos < len(buf):
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            value = varint()
        elif wire in (1, 2, 5):
            size = {1: 8, 5: 4}.get(wire) or varint()
            if pos + size > len(buf):
                raise ValueError("truncated field")
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.append((field, wire, value))
    return out


class TensorBoardWriter:
    """Appends scalar summaries to a new ``events.out.tfevents.<int time>.<hostname>`` file in ``logdir``.

    Every record is TFRecord-framed (uint64 LE length, masked crc32c of the length, data, masked crc32c of the data)
    around an ``Event`` protobuf; the first one carries ``file_version="brain.Event:2"``. ``purge_step`` (used by
    :class:`MetricsLog` on resume) adds a ``SessionLog START`` event at that step, on which TensorBoard discards the
    events already logged with ``step >= purge_step``. Data reaches the disk on :meth:`flush` / :meth:`close`.
    """

    def __init__(self, logdir: str, purge_step: int | None = None):
        os.makedirs(logdir, exist_ok=True)
        base = os.path.join(logdir, f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}")
        self.path, n = base, 0
        while True:  # two writers opened within the same second get distinct files
            try:
                self._file = open(self.path, "xb")  # noqa: SIM115 (closed by close())
                break
            except FileExistsError:
                n += 1
                self.path = f"{base}.{n}"
        self._write(_encode_event(time.time(), 0, file_version="brain.Event:2"))
        if purge_step is not None:
            self._write(_encode_event(time.time(), purge_step, session_start=True))

    def _write(self, data: bytes) -> None:
        header = struct.pack("<Q", len(data))
        self._file.write(header + struct.pack("<I", _masked_crc(header)) + data + struct.pack("<I", _masked_crc(data)))

    def scalar(self, tag: str, value: float, step: int) -> None:
        """Logs one scalar (stored as float32)."""
        self.scalars({tag: value}, step)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """Logs ``{tag: scalar}`` at ``step`` as one event."""
        if values:
            items = [(tag, float(v)) for tag, v in values.items()]
            self._write(_encode_event(time.time(), int(step), scalars=items))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_events(path: str) -> list[tuple[int, str, float]]:
    """Scalars of one event file as ``[(step, tag, value), ...]`` in file order; values are float32 rounded to Python
    floats. Events without scalar summaries (file version, session logs) are skipped. Raises ``ValueError`` on a CRC
    mismatch; a record cut short at the end of the file (a crash mid-write) ends the list silently."""
    with open(path, "rb") as f:
        buf = f.read()
    out, pos = [], 0
    while pos + 12 <= len(buf):
        header = buf[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        if struct.unpack("<I", buf[pos + 8:pos + 12])[0] != _masked_crc(header):
            raise ValueError(f"{path}: bad length crc at offset {pos}")
        end = pos + 12 + length
        if end + 4 > len(buf):
            break
        data = buf[pos + 12:end]
        if struct.unpack("<I", buf[end:end + 4])[0] != _masked_crc(data):
            raise ValueError(f"{path}: bad data crc at offset {pos}")
        pos = end + 4
        step = 0
        for field, wire, value in _parse_fields(data):
            if field == 2 and wire == 0:
                step = value - (1 << 64) if value >= 1 << 63 else value
            elif field == 5 and wire == 2:
                for vfield, _, vbuf in _parse_fields(value):
                    if vfield != 1:
                        continue
                    tag, simple = None, None
                    for f2, w2, v2 in _parse_fields(vbuf):
                        if f2 == 1 and w2 == 2:
                            tag = v2.decode()
                        elif f2 == 2 and w2 == 5:
                            (simple,) = struct.unpack("<f", v2)
                    if tag is not None and simple is not None:
                        out.append((step, tag, simple))
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


def read_jsonl(path: str) -> list[dict]:
    """The objects of a JSONL file, one per line; a final line cut short by a crash is ignored."""
    return [json.loads(line) for line in _complete_lines(path)[0] if line.strip()]


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
    Every :meth:`log` call reaches the files before it returns."""

    def __init__(self, workdir: str, resume_step: int | None = None):
        os.makedirs(workdir, exist_ok=True)
        self.workdir = workdir
        self.resume_step = resume_step
        self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
        self._csv_fields: dict[str, list[str]] = {}
        self._tb: dict[str, TensorBoardWriter] = {}

        def keep(step) -> bool:
            return resume_step is None or int(float(step)) <= resume_step

        if os.path.exists(self.jsonl_path):
            lines, cut = _complete_lines(self.jsonl_path)
            kept = [line for line in lines if line.strip() and keep(json.loads(line)["step"])]
            if cut or len(kept) != len(lines):
                _replace(self.jsonl_path, "".join(kept))
        for name in sorted(os.listdir(workdir)):
            m = re.fullmatch(r"metrics_(.+)\.csv", name)
            if m:
                path = os.path.join(workdir, name)
                cut = _complete_lines(path)[1]
                fields, rows = _read_csv(path)
                kept = [row for row in rows if keep(row["step"])]
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

        if kind not in self._tb:
            purge = None if self.resume_step is None else self.resume_step + 1
            self._tb[kind] = TensorBoardWriter(os.path.join(self.workdir, "tensorboard", kind), purge_step=purge)
        self._tb[kind].scalars(flat, step)
        self._tb[kind].flush()
        return flat

    def close(self) -> None:
        for writer in self._tb.values():
            writer.close()
        self._tb.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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
