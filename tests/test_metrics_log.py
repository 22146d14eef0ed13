import csv
import glob
import os

import jax.numpy as jnp
import numpy as np
import pytest

from metarl_jax.metrics_log import (
    MetricsLog,
    TensorBoardWriter,
    crc32c,
    flatten_metrics,
    format_postfix,
    progress,
    read_events,
    read_jsonl,
)


def _csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def _event_files(logdir):
    return sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*")))


def test_crc32c_known_vectors():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros


def test_tensorboard_roundtrip_and_corruption(tmp_path):
    logged = [(1, "loss", 0.1), (1, "acc", 2.0 / 3.0), (2, "loss", -3.5e-7), (2, "a/b/1", 1e6 + 0.3)]
    with TensorBoardWriter(str(tmp_path)) as w:
        w.scalar("loss", 0.1, 1)
        w.scalars({"acc": 2.0 / 3.0}, 1)
        w.scalars({"loss": -3.5e-7, "a/b/1": 1e6 + 0.3}, np.int64(2))
        w.scalars({}, 3)  # nothing written
    (path,) = _event_files(str(tmp_path))
    assert os.path.basename(path).startswith("events.out.tfevents.")
    with open(path, "rb") as f:
        raw = f.read()
    assert b"brain.Event:2" in raw[:64]
    got = read_events(path)
    assert [(s, t) for s, t, _ in got] == [(s, t) for s, t, _ in logged]
    assert [v for _, _, v in got] == [float(np.float32(v)) for _, _, v in logged]

    # A record cut short at the end (crash mid-write) ends the list; any flipped byte is a CRC error.
    assert read_events_bytes(tmp_path, raw[:-3]) == got[:-2]
    for i in range(len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x5A
        with pytest.raises(ValueError):
            read_events_bytes(tmp_path, bytes(bad))


def read_events_bytes(tmp_path, data):
    path = os.path.join(tmp_path, "copy.tfevents")
    with open(path, "wb") as f:
        f.write(data)
    return read_events(path)


def test_tensorboard_writers_in_same_second_get_distinct_files(tmp_path):
    a, b = TensorBoardWriter(str(tmp_path)), TensorBoardWriter(str(tmp_path), purge_step=5)
    a.scalar("x", 1.0, 1)
    b.scalar("x", 2.0, 5)
    a.close(), b.close()
    assert a.path != b.path
    assert read_events(a.path) == [(1, "x", 1.0)] and read_events(b.path) == [(5, "x", 2.0)]


def test_flatten_metrics():
    flat = flatten_metrics({
        "loss": jnp.float32(0.5),
        "episode_success": [0.1, 0.2],
        "opt": {"lr": np.float64(1e-3), "count": jnp.array(3, jnp.int32)},
        "grid": np.array([[1, 2], [3, 4]]),
        "done": np.bool_(True),
    })
    assert flat == {"loss": 0.5, "episode_success/1": 0.1, "episode_success/2": 0.2, "opt/lr": 1e-3, "opt/count": 3,
                    "grid/1/1": 1, "grid/1/2": 2, "grid/2/1": 3, "grid/2/2": 4, "done": 1}
    assert all(type(v) in (int, float) for v in flat.values())
    with pytest.raises(TypeError):
        flatten_metrics({"name": "abc"})
    with pytest.raises(ValueError):
        flatten_metrics({"big": np.zeros(5000)})


def test_metrics_log_files(tmp_path):
    wd = str(tmp_path)
    with MetricsLog(wd) as log:
        log.log("train", 1, {"loss": jnp.float32(0.5), "episode_success": jnp.array([0.25, 0.75])})
        log.log("train", 2, {"loss": 0.25, "episode_success": [0.5, 1.0], "opt": {"lr": 1e-3}})  # header grows
        log.log("train", 3, {"loss": 0.125})  # missing keys stay empty
        log.log("eval", 2, {"return": np.float64(1.5)})
        with pytest.raises(ValueError):
            log.log("train", 4, {"step": 1})

    rows = read_jsonl(os.path.join(wd, "metrics.jsonl"))
    assert rows == [
        {"step": 1, "kind": "train", "loss": 0.5, "episode_success/1": 0.25, "episode_success/2": 0.75},
        {"step": 2, "kind": "train", "loss": 0.25, "episode_success/1": 0.5, "episode_success/2": 1.0, "opt/lr": 1e-3},
        {"step": 3, "kind": "train", "loss": 0.125},
        {"step": 2, "kind": "eval", "return": 1.5},
    ]
    header, csv_rows = _csv(os.path.join(wd, "metrics_train.csv"))
    assert header == ["step", "loss", "episode_success/1", "episode_success/2", "opt/lr"]
    assert [r["step"] for r in csv_rows] == ["1", "2", "3"]
    assert csv_rows[0]["opt/lr"] == "" and float(csv_rows[1]["opt/lr"]) == 1e-3 and csv_rows[2]["episode_success/1"] == ""
    assert _csv(os.path.join(wd, "metrics_eval.csv")) == (["step", "return"], [{"step": "2", "return": "1.5"}])
    assert not os.path.exists(os.path.join(wd, "metrics_train.csv.tmp"))

    (tb,) = _event_files(os.path.join(wd, "tensorboard", "train"))
    events = read_events(tb)
    assert (2, "opt/lr", float(np.float32(1e-3))) in events and (3, "loss", 0.125) in events
    assert sorted({t for _, t, _ in events}) == ["episode_success/1", "episode_success/2", "loss", "opt/lr"]


def test_metrics_log_resume_drops_rows_past_resume_step(tmp_path):
    wd = str(tmp_path)
    with MetricsLog(wd) as log:
        for step in range(1, 6):
            log.log("train", step, {"loss": float(step)})
            if step % 2 == 0:
                log.log("eval", step, {"ret": float(step)})
    with open(os.path.join(wd, "metrics.jsonl"), "a") as f:
        f.write('{"step": 6, "ki')  # killed mid-write

    with MetricsLog(wd, resume_step=3) as log:
        assert [(r["step"], r["kind"]) for r in read_jsonl(log.jsonl_path)] == [
            (1, "train"), (2, "train"), (2, "eval"), (3, "train")]
        assert [r["step"] for r in _csv(os.path.join(wd, "metrics_train.csv"))[1]] == ["1", "2", "3"]
        assert [r["step"] for r in _csv(os.path.join(wd, "metrics_eval.csv"))[1]] == ["2"]
        log.log("train", 4, {"loss": 40.0, "new": 1})

    rows = read_jsonl(os.path.join(wd, "metrics.jsonl"))
    assert [(r["step"], r["kind"]) for r in rows] == [(1, "train"), (2, "train"), (2, "eval"), (3, "train"), (4, "train")]
    assert rows[-1]["loss"] == 40.0
    header, csv_rows = _csv(os.path.join(wd, "metrics_train.csv"))
    assert header == ["step", "loss", "new"] and [(r["step"], r["loss"]) for r in csv_rows][-2:] == [
        ("3", "3.0"), ("4", "40.0")]
    # The resumed TensorBoard file starts with a purge marker at resume_step + 1 (a SessionLog START event).
    _old, new = _event_files(os.path.join(wd, "tensorboard", "train"))
    assert read_events(new) == [(4, "loss", 40.0), (4, "new", 1.0)]
    with open(new, "rb") as f:
        assert b"\x32\x02\x08\x01" in f.read()


def test_progress_and_postfix(capsys):
    post = format_postfix({"loss": 0.123456, "steps": 12345, "vec": [1, 2], "nested": {"a": 1},
                           "lr": jnp.float32(3e-4), "name": "x", "x": 1.0})
    assert post == {"loss": "0.123", "steps": "12345", "lr": "0.0003", "x": "1"}
    assert format_postfix({"a": 1.0, "b": 2.0, "c": 3.0}, keys=["c", "zz"]) == {"c": "3"}
    bar = progress(10, initial=2, desc="train")
    bar.set_postfix(post, refresh=False)
    bar.update(3)
    assert bar.n == 5
    bar.close()
    assert "train" in capsys.readouterr().err
