"""The training loop: outputs, bit-exact resume after SIGKILL, and bad configs refused before compiling."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from helpers import tensorboard_events, tensorboard_hparams, tensorboard_text
from metarl_jax import build, config_check, memory, train
from metarl_jax.metrics_log import read_jsonl, scalar_fields
from metarl_jax.text.tokenizers import load_tokenizer

ROOT = pathlib.Path(__file__).resolve().parents[1]
from metarl_jax.configs import tiny  # noqa: E402


def main_cmd(workdir):
    return [sys.executable, "-m", "metarl_jax.main", f"--config={ROOT / 'configs' / 'tiny.py'}", f"--workdir={workdir}"]


def train_rows(workdir):
    return {r["step"]: r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r["kind"] == "train"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """The tiny config run to the end without interruption, in a subprocess (as users run it)."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run(main_cmd(workdir), check=True, capture_output=True, cwd=ROOT, timeout=600)
    return workdir


@pytest.mark.slow
def test_run_writes_metrics_checkpoints_and_eval(finished_run):
    rows = train_rows(finished_run)
    assert sorted(rows) == list(range(1, 7))
    assert all(set(r) >= {"loss", "grad_norm", "game:GuessTheNumber-v0-easy/episode_success/1"} for r in rows.values())
    evals = [r for r in read_jsonl(os.path.join(finished_run, "metrics.jsonl")) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 3, 6]  # eval_before_training, eval_every=3, the end
    assert os.listdir(os.path.join(finished_run, "tensorboard"))
    result = json.loads((finished_run / "eval.json").read_text())
    assert result[0]["num_trials"] == 8 and len(result[0]["episode_rates"]) == 2
    steps = sorted(int(d) for d in os.listdir(finished_run / "checkpoints") if d.isdigit())
    assert steps == [4, 6]  # keep_checkpoints=2


@pytest.mark.slow
def test_run_logs_learning_rate_throughput_compile_time_hparams_and_transcripts(finished_run):
    rows = train_rows(finished_run)
    o = tiny.get_config().optimizer
    # Linear warm-up from 0: the update of step k (its optimizer count k - 1, no skips) uses lr * (k - 1) / warmup.
    expected_lr = {k: o.learning_rate * min(k - 1, o.warmup_steps) / o.warmup_steps for k in rows}
    assert {k: r["learning_rate"] for k, r in rows.items()} == pytest.approx(expected_lr, rel=1e-6, abs=1e-12)
    # The process's first step compiled: it is timed apart and has no per-step throughput.
    first, rest = rows[1], [rows[k] for k in range(2, 7)]
    assert first["compile_seconds"] > 0 and not {"seconds", "steps_per_second", "tokens_per_second"} & set(first)
    assert all("compile_seconds" not in r for r in rest)
    assert first["compile_seconds"] > max(r["seconds"] for r in rest) > 0
    for r in rest:
        assert r["steps_per_second"] == pytest.approx(1 / r["seconds"])
        assert r["tokens_per_second"] == pytest.approx(r["transcript_tokens"] / r["seconds"])
    # 2 tasks x 2 rollouts, each trial at most its context long
    context = build.build_tasks(tiny.get_config(), load_tokenizer("word"), "train")[0].context_len
    assert all(0 < r["transcript_tokens"] <= 4 * context for r in rows.values())
    elapsed = [rows[k]["elapsed_seconds"] for k in range(1, 7)]
    assert elapsed == sorted(elapsed) and elapsed[0] >= first["compile_seconds"]

    tb = finished_run / "tensorboard"
    scalars = tensorboard_events(tb / "train")
    for tag in ("learning_rate", "steps_per_second", "tokens_per_second", "seconds", "elapsed_seconds"):
        assert [e.step for e in scalars.Scalars(tag)] == sorted(r for r in rows if tag in rows[r]), tag
    assert [e.value for e in scalars.Scalars("learning_rate")] == pytest.approx(
        [expected_lr[k] for k in sorted(rows)], rel=1e-6)
    (compiled,) = scalars.Scalars("compile_seconds")
    assert compiled.step == 1 and compiled.value == pytest.approx(first["compile_seconds"], rel=1e-6)

    # The config's scalar fields, once, as hyperparameters (numbers as floats); lists such as train_tasks are left out.
    config = json.loads((finished_run / "eval_config.json").read_text())
    hparams = tensorboard_hparams(tb)
    assert hparams == {k: float(v) if type(v) is int else v for k, v in scalar_fields(config).items()}
    assert hparams["optimizer.learning_rate"] == o.learning_rate and hparams["text"] == "gem"
    assert "train_tasks" not in hparams and "num_steps" in hparams

    # The first two held-out trials of every evaluation, decoded, as code blocks.
    evals = tensorboard_events(tb / "eval")
    for trial in (1, 2):
        samples = tensorboard_text(evals, f"game:GuessTheNumber-v0-easy/trial_{trial}")
        assert [step for step, _ in samples] == [0, 3, 6]
        for _, text in samples:
            assert all(line.startswith("    ") for line in text.split("\n"))
            assert "You are playing Guess The Number" in text and "\\boxed{" in text and "[Episode 2]" in text


@pytest.mark.slow  # four short runs of the CLI
def test_evaluate_mode_and_a_changed_finished_run_report_fresh_numbers(finished_run, tmp_path):
    """``--mode=evaluate`` evaluates the latest checkpoint with the changed settings (or ``--step``'s into its
    own report) and trains nothing; the finished run's own command, rerun with a changed setting, evaluates its
    final weights again instead of reprinting the old table, and reprints once the table is current."""
    import shutil

    workdir = pathlib.Path(shutil.copytree(finished_run, tmp_path / "run"))
    metrics = (workdir / "metrics.jsonl").read_text()

    def run(*flags):
        out = subprocess.run(main_cmd(workdir) + list(flags), capture_output=True, text=True, cwd=ROOT, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout + out.stderr

    def trials(name="eval"):
        return [r["num_trials"] for r in json.loads((workdir / f"{name}.json").read_text())]

    run("--mode=evaluate", "--config.eval_trials=12")
    assert trials() == [12]
    run("--mode=evaluate", "--step=4")
    assert trials("eval_step4") == [8] and trials() == [12]
    assert "again" in run("--config.eval_trials=16") and trials() == [16]
    assert "again" not in run("--config.eval_trials=16") and trials() == [16]
    assert (workdir / "metrics.jsonl").read_text() == metrics, "evaluating trains and logs nothing"
    out = subprocess.run(main_cmd(tmp_path / "untrained") + ["--mode=evaluate"], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    assert out.returncode != 0 and "train the run first" in out.stderr


def test_a_workdir_is_refused_while_in_use_or_past_num_steps(finished_run, tmp_path):
    """A second run in a workdir that another process holds fails at once; a finished run rerun with fewer steps
    is refused instead of evaluating the later weights under the earlier step; neither writes anything."""
    import shutil

    from metarl_jax.workdir import WorkdirBusyError, workdir_lock

    workdir = pathlib.Path(shutil.copytree(finished_run, tmp_path / "run"))
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()}
    with workdir_lock(str(workdir)), pytest.raises(WorkdirBusyError, match="use another --workdir"):
        train.train_and_evaluate(tiny.get_config(), str(workdir), quiet=True)
    fewer = tiny.get_config()
    fewer.num_steps = 3
    with pytest.raises(ValueError, match=r"config\.num_steps=3 but .* holds a checkpoint of step 6: the run went "
                                         r"further already\. Evaluate an earlier checkpoint with --mode=evaluate "
                                         r"--step=N \(steps: \[4, 6\]\)"):
        train.train_and_evaluate(fewer, str(workdir), quiet=True)
    after = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == {p: t for p, t in before.items() if p.name != ".lock"}


@pytest.mark.slow  # over a minute on 2 cores
def test_sigkill_then_rerun_resumes_bit_exact(finished_run, tmp_path):
    proc = subprocess.Popen(main_cmd(tmp_path), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if ckpts.exists() and any(d.isdigit() for d in os.listdir(ckpts)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(int(d) for d in os.listdir(ckpts) if d.isdigit())
    assert killed_at < 6
    out = subprocess.run(main_cmd(tmp_path), check=True, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert f"resumed from step {killed_at}" in out.stdout + out.stderr
    resumed, reference = train_rows(tmp_path), train_rows(finished_run)
    assert sorted(resumed) == sorted(reference)
    for step in reference:
        for key, value in reference[step].items():
            if key not in train.TIMING_KEYS:  # wall-clock times, and the compile time is in each process's first row
                assert resumed[step][key] == value, (step, key)
    assert json.loads((tmp_path / "eval.json").read_text()) == json.loads((finished_run / "eval.json").read_text())


def bad(**changes):
    c = tiny.get_config()
    for dotted, value in changes.items():
        node = c
        *parents, last = dotted.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    return c


BAD_CONFIGS = [
    (dict(train_tasks=[dict(env_id="game:GuessTheNumbr-v0-easy")]), r"train_tasks\[0\]\.env_id.*did you mean 'game:GuessTheNumber-v0-easy'"),
    (dict(eval_tasks=[dict(env_id="mazes")]), r"eval_tasks\[0\]\.env_id.*'maze'"),
    (dict(train_tasks=[dict(env_id="maze", max_turns_per_episode=9, total_step_cap=5)]), r"train_tasks\[0\]\.total_step_cap.*below max_turns_per_episode=9"),
    (dict(train_tasks=[dict(env_id="maze", max_turns_per_episode=0)]), r"train_tasks\[0\]\.max_turns_per_episode"),
    (dict(context_len=200, allow_truncation=False), r"config\.context_len: is 200 tokens, shorter than the worst-case transcript .* Raise it to \d+"),
    (dict(train_tasks=[dict(env_id="game:GuessTheNumber-v0-easy", total_step_cap=8, context_len=50)]), r"train_tasks\[0\]\.context_len: is 50 tokens, too short for even the first observation"),
    (dict(group_size=1), r"config\.group_size: must be an int >= 2"),
    (dict(top_p=1.5), r"config\.top_p: must be in \(0, 1\]"),
    (dict(optimizer__learning_rate=-1.0), r"config\.optimizer\.learning_rate: must be > 0"),
    (dict(model__preset="huge"), r"config\.model\.preset: unknown preset 'huge'"),
    (dict(tokenizer="/no/such/dir"), r"config\.tokenizer"),
    (dict(train_tasks=[]), r"config\.train_tasks: lists no task"),
    (dict(chat_format=True), r"config\.chat_format: needs a Hugging Face tokenizer"),
    (dict(decoding="beam"), r"config\.decoding: must be 'constrained' or 'free'"),
    (dict(decoding="free", free_tokens=2, answer_coef=0.0), r"config\.free_tokens: 2 tokens cannot hold an action"),
]


@pytest.mark.parametrize("changes,message", BAD_CONFIGS)
def test_bad_config_fails_before_compiling(changes, message, monkeypatch, tmp_path):
    def no_jit(*args, **kwargs):
        raise AssertionError("compiled before the config was checked")

    monkeypatch.setattr(train.jax, "jit", no_jit)
    with pytest.raises(config_check.ConfigError, match=message):
        train.train_and_evaluate(bad(**changes), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists(), "a refused config must leave nothing behind"


@pytest.mark.slow  # about a minute on 2 cores
def test_compare_variant_reports_orbit_and_single_episode(tmp_path):
    cmd = main_cmd(tmp_path)
    cmd[3] = f"--config={ROOT / 'configs' / 'tiny.py'}:compare"
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, timeout=600)
    result = json.loads((tmp_path / "comparison.json").read_text())
    policies = {r["policy"] for r in result["rows"]}
    assert policies == {"ORBIT (multi-episode)", "single-episode RL"}
    assert "episode 1" in out.stdout and "single-episode RL" in out.stdout
    # The baseline trained on one-episode trials: its checkpointed config says so; both evaluate 2-episode trials.
    assert all(len(r["episode_rates"]) == 2 for r in result["rows"])
    for run, single in (("orbit", False), ("single_episode", True)):
        saved = [json.loads(p.read_text()) for p in (tmp_path / run / "checkpoints").glob("*/config/metadata")]
        assert saved and all(c["single_episode"] is single for c in saved)


@pytest.mark.slow  # about two minutes on 2 cores
def test_an_imitation_phase_then_rl_in_one_run(tmp_path):
    """``pretrain.steps=2`` of ``num_steps=4`` in one run: steps 1-2 imitate (the player's loss, no policy loss),
    steps 3-4 are RL; each step function's first step logs its compile time."""
    c = tiny.get_config()
    c.pretrain.steps, c.num_steps, c.eval_every, c.eval_before_training = 2, 4, 0, False
    train.train_and_evaluate(c, str(tmp_path), quiet=True)
    rows = train_rows(tmp_path)
    assert sorted(rows) == [1, 2, 3, 4]
    imitating = {step: any(k.endswith("imitation_nll") for k in r) for step, r in rows.items()}
    assert imitating == {1: True, 2: True, 3: False, 4: False}
    assert {step for step, r in rows.items() if "compile_seconds" in r} == {1, 3}


@pytest.mark.slow  # about three minutes on 2 cores
def test_compare_with_an_imitation_phase_runs_it_once_and_starts_both_runs_from_it(tmp_path):
    """``pretrain.steps=2`` of ``num_steps=4``: the phase trains and is evaluated once in ``imitation`` (its row is
    the prior's), its weights are exported, and both RL runs load them and train the remaining 2 steps; the
    imitation run logged the player's loss and no policy loss."""
    cmd = main_cmd(tmp_path)
    cmd[3] = f"--config={ROOT / 'configs' / 'tiny.py'}:compare"
    cmd += ["--config.pretrain.steps=2", "--config.num_steps=4", "--config.eval_every=0"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, timeout=900)
    result = json.loads((tmp_path / "comparison.json").read_text())
    assert [r["policy"] for r in result["rows"]] == ["imitation prior (no RL)", "ORBIT (multi-episode)",
                                                     "single-episode RL"]
    model_dir = tmp_path / "imitation" / "model"
    assert (model_dir / "model.safetensors").exists()
    imitation = train_rows(tmp_path / "imitation")
    assert sorted(imitation) == [1, 2] and all(any(k.endswith("imitation_nll") for k in r) for r in imitation.values())
    for run in ("orbit", "single_episode"):
        rows = train_rows(tmp_path / run)
        assert sorted(rows) == [1, 2] and not any(k.endswith("imitation_nll") for k in rows[1])
        saved = [json.loads(p.read_text()) for p in (tmp_path / run / "checkpoints").glob("*/config/metadata")]
        assert saved and all(c["model"]["pretrained_dir"] == str(model_dir) and c["pretrain"]["steps"] == 0
                             for c in saved)


def test_memory_estimates_warn_and_far_beyond_refuse_before_compiling():
    """A batch whose update cannot fit is flagged before compiling (it used to die with RESOURCE_EXHAUSTED after
    the compile), naming the fields to lower; far beyond the device's memory it is refused unless
    ignore_memory_estimate; so is an evaluation of too many trials. The default mix and a batch split over 8
    devices pass."""
    import warnings
    from types import SimpleNamespace as Task

    from metarl_jax.models.config import preset

    model = preset("tiny", 4000)
    budget = Task(turns=21, action_len=6)
    bandit = [Task(name="BernoulliBandit-misc", context_len=1541, transcript_len=1541, budget=budget)]
    # Measured: 16 tasks x 8 rollouts at 1,541 tokens took 7.1 GB of XLA temporaries on CPU.
    assert 6e9 < memory.update_activation_bytes(model, bandit, 128) < 8e9
    big = Task(num_tasks=16, group_size=8, eval_trials=256, ignore_memory_estimate=False)
    with pytest.warns(UserWarning, match=r"now 128 of num_tasks x group_size = 16 x 8 = 128 rows.*BernoulliBandit-misc: 1541"):
        memory.check_memory_estimate(big, model, bandit, bandit, memory_bytes=8 * 2**30)
    with pytest.raises(memory.MemoryEstimateError, match=r"refusing to compile: the update's .*ignore_memory_estimate=True"):
        memory.check_memory_estimate(big, model, bandit, bandit, memory_bytes=1 * 2**30)
    many = Task(num_tasks=1, group_size=2, eval_trials=10**9, ignore_memory_estimate=False)
    with pytest.raises(memory.MemoryEstimateError, match=r"evaluation's records .* lower config.eval_trials \(now 1,000,000,000"):
        memory.check_memory_estimate(many, model, bandit, bandit, memory_bytes=24 * 2**30)
    default_mix = [Task(name="hard", context_len=224, transcript_len=224, budget=budget),
                   Task(name="easy", context_len=160, transcript_len=160, budget=Task(turns=12, action_len=6))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ok = Task(num_tasks=4, group_size=8, eval_trials=256, ignore_memory_estimate=False)
        memory.check_memory_estimate(ok, model, default_mix, default_mix, memory_bytes=24 * 2**30)
        memory.check_memory_estimate(big, model, bandit, bandit, memory_bytes=8 * 2**30, devices=8)
        memory.check_memory_estimate(big, model, bandit, bandit, memory_bytes=8 * 2**30, update_rows=16)  # accumulated
    with pytest.warns(UserWarning, match="may not fit"):  # overridden: compiled anyway, with the warning
        memory.check_memory_estimate(Task(**{**vars(big), "ignore_memory_estimate": True}), model, bandit, bandit,
                                     memory_bytes=1 * 2**30)
