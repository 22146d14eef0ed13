"""Several processes run one job (``jax.distributed``): the slow tests start ``python -m metarl_jax.main`` as 2
processes of 4 fake CPU devices each with a local coordinator, and check that they train exactly as one process
with 8 devices does (data parallel and FSDP), that a 2-process run killed with SIGKILL resumes to the same end, and
that process 0 alone writes the metrics, the tables and the report. The fast tests check the pieces that decide
who writes, without starting processes.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from metarl_jax import sharding, train, workdir
from metarl_jax.metrics_log import NoLog, read_jsonl

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 8
OVERRIDES = ["--config.num_tasks=4", "--config.eval_trials=8", f"--config.num_steps={STEPS}",
             "--config.checkpoint_every=1", "--config.keep_checkpoints=2", "--config.eval_every=4"]
TIMING = set(train.TIMING_KEYS)


# ------------------------------------------------------------------------------------------------ fast pieces


def test_a_secondary_process_takes_no_lock_and_writes_no_report(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    with workdir.workdir_lock(tmp_path), workdir.workdir_lock(tmp_path):  # no lock: no WorkdirBusyError
        pass
    assert not (tmp_path / ".lock").exists()
    train.write_eval(str(tmp_path), [], config=None)
    assert os.listdir(tmp_path) == []


def test_the_primary_process_still_locks_its_workdir(tmp_path):
    with workdir.workdir_lock(tmp_path):
        with pytest.raises(workdir.WorkdirBusyError):
            with workdir.workdir_lock(tmp_path):
                pass


def test_no_log_returns_the_flat_metrics_and_writes_nothing(tmp_path):
    with NoLog() as log:
        flat = log.log("train", 3, {"loss": np.float32(0.5), "env": {"mean_return": 1}})
        log.text("eval", 3, {"a": "b"})
        log.hparams({"x": 1})
    assert flat == {"loss": 0.5, "env/mean_return": 1}
    assert os.listdir(tmp_path) == []


def test_several_processes_refuse_the_one_device_mesh(monkeypatch):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(ValueError, match="mesh.mode=data"):
        sharding.mesh_from_config("none")


def test_main_refuses_incomplete_launch_flags(tmp_path):
    def main(*flags):
        return subprocess.run([sys.executable, "-m", "metarl_jax.main", "--config=configs/tiny.py",
                               f"--workdir={tmp_path}", *flags], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300)

    out = main("--coordinator_address=localhost:1")
    assert out.returncode != 0 and "needs --num_processes and --process_id" in out.stderr
    out = main("--coordinator_address=localhost:1", "--num_processes=2", "--process_id=2")
    assert out.returncode != 0 and "--process_id=2 is not in 0 .. --num_processes - 1 = 1" in out.stderr
    out = main("--num_processes=2")
    assert out.returncode != 0 and "need --coordinator_address" in out.stderr
    assert not (tmp_path / "checkpoints").exists()  # refused before anything was built


def test_importing_the_package_leaves_the_backend_unstarted():
    code = ("import jax._src.xla_bridge as xb, metarl_jax, metarl_jax.main; "
            "from metarl_jax.configs import tiny; tiny.get_config(); print(bool(xb._backends))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.stdout.strip() == "False", out.stderr[-2000:]


# ---------------------------------------------------------------------------------------- processes (slow)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(workdir: pathlib.Path, mode: str, processes: int, launcher: str = "flags") -> list[subprocess.Popen]:
    """Starts the tiny run in ``workdir`` as ``processes`` processes of 8 / processes fake CPU devices each. The
    coordinator comes from the command-line flags (``launcher="flags"``) or from the JAX_* environment variables."""
    port = free_port()
    procs = []
    for i in range(processes):
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
               "XLA_FLAGS": f"--xla_force_host_platform_device_count={8 // processes}"}
        cmd = [sys.executable, "-m", "metarl_jax.main", f"--config={ROOT / 'configs' / 'tiny.py'}",
               f"--workdir={workdir}", f"--config.mesh.mode={mode}", *OVERRIDES]
        if processes > 1 and launcher == "flags":
            cmd += [f"--coordinator_address=localhost:{port}", f"--num_processes={processes}", f"--process_id={i}"]
        elif processes > 1:
            env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(processes),
                       JAX_PROCESS_ID=str(i))
        log = open(f"{workdir}.p{i}.log", "ab")
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def finish(procs, workdir, timeout: float = 900) -> None:
    deadline = time.time() + timeout
    for i, p in enumerate(procs):
        try:
            p.wait(max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, f"process {i} exited {p.returncode}:\n{log_text(workdir, i)[-3000:]}"


def log_text(workdir, i: int) -> str:
    return pathlib.Path(f"{workdir}.p{i}.log").read_text(errors="replace")


def train_rows(workdir) -> list[dict]:
    return [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r["kind"] == "train"]


def final_state(workdir) -> list[np.ndarray]:
    """The leaves of the run's step-``STEPS`` checkpoint (train state and key) as host arrays."""
    path = os.path.join(workdir, "checkpoints", str(STEPS), "state")
    reader = ocp.PyTreeCheckpointer()
    meta = reader.metadata(path)
    meta = getattr(meta, "item_metadata", meta)
    meta = getattr(meta, "tree", meta)
    restored = reader.restore(path, restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta))
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(restored)]


def assert_same_training(a, b, tol: float = 1e-5) -> None:
    """Equal train metrics (timing aside) at every step, and equal final states, within ``tol``."""
    ra, rb = train_rows(a), train_rows(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == list(range(1, STEPS + 1))
    for x, y in zip(ra, rb):
        keys = sorted(k for k in x if k not in TIMING and k not in ("kind", "step"))
        assert keys == sorted(k for k in y if k not in TIMING and k not in ("kind", "step"))
        for k in keys:
            assert abs(x[k] - y[k]) <= tol * max(1.0, abs(y[k])), (x["step"], k, x[k], y[k])
    la, lb = final_state(a), final_state(b)
    assert len(la) == len(lb) and len(la) > 10
    for x, y in zip(la, lb):
        np.testing.assert_allclose(x, y, rtol=0, atol=tol)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Finished runs, by name: ``one_<mode>`` (1 process, 8 devices), ``two_<mode>`` (2 processes, 4 devices
    each; data parallel launched with flags, FSDP with environment variables)."""
    root = tmp_path_factory.mktemp("multi_host")
    out = {}
    for mode, launcher in (("data", "flags"), ("fsdp", "env")):
        for n in (1, 2):
            workdir = root / f"{'one' if n == 1 else 'two'}_{mode}"
            finish(launch(workdir, mode, n, launcher), workdir)
            out[workdir.name] = workdir
    return out


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["data", "fsdp"])
def test_two_processes_train_as_one_process_with_all_devices(runs, mode):
    assert_same_training(runs[f"two_{mode}"], runs[f"one_{mode}"])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["data", "fsdp"])
def test_process_zero_alone_writes_the_logs_and_tables(runs, mode):
    workdir = runs[f"two_{mode}"]
    rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [0, 4, 8]  # eval_before_training, every 4, the end
    assert len(train_rows(workdir)) == STEPS
    for kind in ("train", "eval"):
        assert len([n for n in os.listdir(workdir / "tensorboard" / kind) if n.startswith("events")]) == 1
    assert len(json.loads((workdir / "eval.json").read_text())) == 1
    assert "Held-out success per episode" in log_text(workdir, 0)
    assert "Held-out success" not in log_text(workdir, 1) and "| env |" not in log_text(workdir, 1)


@pytest.mark.slow
def test_a_two_process_run_killed_with_sigkill_resumes_to_the_same_end(runs, tmp_path):
    workdir = tmp_path / "killed"
    procs = launch(workdir, "data", 2)
    ckpts = workdir / "checkpoints"
    deadline = time.time() + 600
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if ckpts.exists() and any(n.isdigit() and int(n) >= 2 for n in os.listdir(ckpts)):
            break
        time.sleep(0.02)
    assert all(p.poll() is None for p in procs), "the run ended before it could be killed"
    for p in procs:
        p.send_signal(signal.SIGKILL)
    for p in procs:
        p.wait()
    killed_at = max(int(n) for n in os.listdir(ckpts) if n.isdigit())
    assert killed_at < STEPS
    finish(launch(workdir, "data", 2), workdir)
    assert f"resumed from step {killed_at}" in log_text(workdir, 0)
    assert_same_training(workdir, runs["two_data"])
    assert len(train_rows(workdir)) == STEPS  # the rows logged after the last checkpoint were replaced, not doubled
