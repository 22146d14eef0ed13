import csv
import glob
import os

import jax.numpy as jnp
import numpy as np
import pytest

from helpers import tensorboard_events, tensorboard_hparams, tensorboard_text
from metarl_jax.metrics_log import (
    MetricsLog,
    flatten_metrics,
    format_postfix,
    progress,
    read_jsonl,
    scalar_fields,
    scalar_summary,
    summary_writer,
)


def _csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def _event_files(logdir):
    return sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*")))


def test_writers_opened_in_the_same_second_keep_distinct_files_in_opening_order(tmp_path):
    """tensorboardX names event files by the second and opens them with "wb": without the nanosecond suffix the
    second writer would overwrite the first one's file, and TensorBoard reads files in name order."""
    for value in (1.0, 2.0, 3.0):
        with summary_writer(str(tmp_path)) as w:
            w.file_writer.add_summary(scalar_summary({"x": value}), 1)
    paths = _event_files(str(tmp_path))
    assert len(paths) == 3
    assert [[e.value for e in tensorboard_events(p).Scalars("x")] for p in paths] == [[1.0], [2.0], [3.0]]


def test_scalar_fields_keeps_scalars_of_nested_dicts():
    config = {"seed": 3, "lr": 1e-3, "name": "x", "chat": False, "optimizer": {"b1": 0.9, "sched": {"warmup": 10}},
              "train_tasks": [{"env_id": "maze"}], "pretrained": None}
    assert scalar_fields(config) == {"seed": 3, "lr": 1e-3, "name": "x", "chat": False, "optimizer.b1": 0.9,
                                     "optimizer.sched.warmup": 10}


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

    (_tb,) = _event_files(os.path.join(wd, "tensorboard", "train"))
    train = tensorboard_events(os.path.join(wd, "tensorboard", "train"))
    assert sorted(train.Tags()["scalars"]) == ["episode_success/1", "episode_success/2", "loss", "opt/lr"]
    assert [(e.step, e.value) for e in train.Scalars("loss")] == [(1, 0.5), (2, 0.25), (3, 0.125)]
    assert [(e.step, e.value) for e in train.Scalars("opt/lr")] == [(2, float(np.float32(1e-3)))]
    evals = tensorboard_events(os.path.join(wd, "tensorboard", "eval"))
    assert [(e.step, e.value) for e in evals.Scalars("return")] == [(2, 1.5)]


def test_metrics_log_tags_text_and_hparams(tmp_path):
    wd = str(tmp_path)
    with MetricsLog(wd) as log:
        log.hparams({"seed": 3, "optimizer.learning_rate": 1e-3, "decoding": "free", "chat_format": False})
        with pytest.raises(TypeError, match="train_tasks"):
            log.hparams({"train_tasks": [1, 2]})
        flat = log.log("train", 1, {"game:GuessTheNumber-v0-easy": {"mean_return": 0.5}})
        log.text("eval", 2, {"game:GuessTheNumber-v0-easy/trial_1": "    line one\n    line two"})
    # The tags are exactly the JSONL keys (tensorboardX's add_scalar would have renamed the ':').
    train = tensorboard_events(os.path.join(wd, "tensorboard", "train"))
    assert list(flat) == train.Tags()["scalars"] == ["game:GuessTheNumber-v0-easy/mean_return"]
    evals = tensorboard_events(os.path.join(wd, "tensorboard", "eval"))
    assert tensorboard_text(evals, "game:GuessTheNumber-v0-easy/trial_1") == [(2, "    line one\n    line two")]
    assert tensorboard_hparams(os.path.join(wd, "tensorboard")) == {
        "seed": 3.0, "optimizer.learning_rate": 1e-3, "decoding": "free", "chat_format": False}


def test_metrics_log_resume_drops_rows_past_resume_step(tmp_path):
    wd = str(tmp_path)
    with MetricsLog(wd) as log:
        for step in range(1, 6):
            log.log("train", step, {"loss": float(step)})
            if step % 2 == 0:
                log.log("eval", step, {"ret": float(step)})
                log.text("eval", step, {"sample": f"old {step}"})
    with open(os.path.join(wd, "metrics.jsonl"), "a") as f:
        f.write('{"step": 6, "ki')  # killed mid-write

    with MetricsLog(wd, resume_step=3) as log:
        assert [(r["step"], r["kind"]) for r in read_jsonl(log.jsonl_path)] == [
            (1, "train"), (2, "train"), (2, "eval"), (3, "train")]
        assert [r["step"] for r in _csv(os.path.join(wd, "metrics_train.csv"))[1]] == ["1", "2", "3"]
        assert [r["step"] for r in _csv(os.path.join(wd, "metrics_eval.csv"))[1]] == ["2"]
        log.log("train", 4, {"loss": 40.0, "new": 1})
        log.text("eval", 4, {"sample": "new 4"})

    rows = read_jsonl(os.path.join(wd, "metrics.jsonl"))
    assert [(r["step"], r["kind"]) for r in rows] == [(1, "train"), (2, "train"), (2, "eval"), (3, "train"), (4, "train")]
    assert rows[-1]["loss"] == 40.0
    header, csv_rows = _csv(os.path.join(wd, "metrics_train.csv"))
    assert header == ["step", "loss", "new"] and [(r["step"], r["loss"]) for r in csv_rows][-2:] == [
        ("3", "3.0"), ("4", "40.0")]
    # The resumed writer's file (after the old one) purges the old events from resume_step + 1 on: TensorBoard shows
    # steps 1-3 of the first run and step 4 of the resumed one, scalars and text.
    assert len(_event_files(os.path.join(wd, "tensorboard", "train"))) == 2
    train = tensorboard_events(os.path.join(wd, "tensorboard", "train"))
    assert [(e.step, e.value) for e in train.Scalars("loss")] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
    assert [(e.step, e.value) for e in train.Scalars("new")] == [(4, 1.0)]
    evals = tensorboard_events(os.path.join(wd, "tensorboard", "eval"), plugin=True)
    assert tensorboard_text(evals, "sample") == [(2, "old 2"), (4, "new 4")]


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


class FakeWandb:
    """Records what MetricsLog asks of the ``wandb`` module."""

    class Html:
        def __init__(self, data):
            self.data = data

    class Settings:
        def __init__(self, **kw):
            self.kw = kw

    def __init__(self):
        self.inits, self.logs, self.configs, self.finished = [], [], [], 0
        fake = self

        class Run:
            class config:  # noqa: N801  wandb's run.config
                @staticmethod
                def update(values, allow_val_change=False):
                    fake.configs.append(dict(values))

            @staticmethod
            def log(values, step):
                fake.logs.append((step, dict(values)))

            @staticmethod
            def finish():
                fake.finished += 1

        self.run = Run

    def init(self, **kw):
        self.inits.append(kw)
        return self.run


def test_wandb_mirror_prefixes_rows_and_keeps_one_run_across_resumes(tmp_path, monkeypatch):
    import sys

    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with MetricsLog(str(tmp_path), wandb_project="proj") as log:
        log.hparams({"seed": 3, "variant": "orbit"})
        log.log("train", 1, {"loss": 0.5, "env": {"episode_success": [0.25, 0.5]}})
        log.text("eval", 1, {"env/trial_1": "a < b\n  c"})
    assert fake.finished == 1
    (init,) = fake.inits
    assert init["project"] == "proj" and init["mode"] == "offline" and init["dir"] == str(tmp_path)
    assert init["resume"] == "allow" and init["id"] == (tmp_path / "wandb_run_id").read_text().strip()
    assert fake.configs == [{"seed": 3, "variant": "orbit"}]
    (step, row), (text_step, text) = fake.logs
    assert step == 1 and row == {"train/loss": 0.5, "train/env/episode_success/1": 0.25,
                                 "train/env/episode_success/2": 0.5}
    assert text_step == 1 and text["eval/env/trial_1"].data == "<pre>a &lt; b\n  c</pre>"
    # The JSONL keeps its own keys: wandb's prefix is its own.
    assert read_jsonl(str(tmp_path / "metrics.jsonl"))[0]["loss"] == 0.5

    with MetricsLog(str(tmp_path), resume_step=1, wandb_project="proj", wandb_mode="online") as log:
        log.log("train", 2, {"loss": 0.25})
    assert fake.inits[1]["id"] == init["id"] and fake.inits[1]["mode"] == "online", "a resume continues the run"
    assert fake.logs[-1] == (2, {"train/loss": 0.25})
    # Without a project nothing is imported from wandb.
    monkeypatch.setitem(sys.modules, "wandb", None)
    with MetricsLog(str(tmp_path / "plain")) as log:
        log.log("train", 1, {"loss": 1.0})


def test_wandb_offline_run_is_written_without_network(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with MetricsLog(str(tmp_path), wandb_project="metarl-test") as log:
        log.hparams({"seed": 0})
        log.log("train", 1, {"loss": 0.5})
        log.text("eval", 1, {"env/trial_1": "secret 17"})
    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    (run_dir,) = glob.glob(str(tmp_path / "wandb" / f"offline-run-*-{run_id}"))
    assert os.path.getsize(os.path.join(run_dir, f"run-{run_id}.wandb")) > 0
    (page,) = glob.glob(os.path.join(run_dir, "files", "media", "html", "eval", "env", "trial_1_1_*.html"))
    assert "secret 17" in open(page).read()


def test_a_fresh_start_replaces_the_rows_of_a_run_killed_before_its_first_checkpoint(tmp_path):
    with MetricsLog(str(tmp_path)) as log:  # the killed run: rows, no checkpoint
        log.log("eval", 0, {"acc": 0.1})
        log.log("train", 1, {"loss": 2.0})
    with MetricsLog(str(tmp_path), resume_step=-1) as log:  # the rerun starts from scratch
        log.log("eval", 0, {"acc": 0.2})
        log.log("train", 1, {"loss": 3.0})
    rows = read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert [(r["kind"], r["step"]) for r in rows] == [("eval", 0), ("train", 1)]
    assert rows[0]["acc"] == 0.2 and rows[1]["loss"] == 3.0
    assert [r["step"] for r in _csv(str(tmp_path / "metrics_train.csv"))[1]] == ["1"]


def test_a_corrupt_row_in_the_middle_is_dropped_with_its_file_and_line_and_resume_goes_on(tmp_path):
    with MetricsLog(str(tmp_path)) as log:
        for step in (1, 2, 3):
            log.log("train", step, {"loss": float(step)})
    path = tmp_path / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + '{"step": 2, "kind": "tr\x00ain", "loss": \n' + lines[2])
    with pytest.raises(ValueError, match=rf"{path}:2: not a JSON row"):
        read_jsonl(str(path))
    with pytest.warns(UserWarning, match=rf"{path}:2: dropped a corrupt metrics row, not JSON"):
        with MetricsLog(str(tmp_path), resume_step=3) as log:
            log.log("train", 4, {"loss": 4.0})
    assert [r["step"] for r in read_jsonl(str(path))] == [1, 3, 4]
