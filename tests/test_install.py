"""The package as users install it (``pip install .``, not editable), used from outside the checkout: the main
command finds its built-in default config, and the paper config builds with a local Hugging Face tokenizer
directory."""

import json
import os
import re
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def checkout_copy(dest: Path) -> Path:
    """The files git would commit (tracked, and new ones not ignored), copied to ``dest``: the install then
    writes its build files there, not into the checkout."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


@pytest.mark.slow  # a wheel build and two short training runs: a few minutes on 2 cores
def test_installed_package_runs_from_another_directory(tmp_path):
    env_dir = tmp_path / "venv"
    # The venv sees this machine's packages (no download); its own site-packages, where the copy is installed,
    # come first.
    venv.create(env_dir, system_site_packages=True, with_pip=False)  # pip and setuptools: the machine's
    python = str(env_dir / "bin" / "python")
    source = checkout_copy(tmp_path / "source")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--no-build-isolation", str(source)], check=True, cwd=tmp_path, timeout=900)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(*args, timeout=900):
        out = subprocess.run([python, *args], cwd=elsewhere, env=environ, capture_output=True, text=True, timeout=timeout)
        assert out.returncode == 0, out.stderr[-4000:]
        # No error-level lines from XLA's or absl's C++ logging ("E1205 12:00:00.000 ... slow_operation_alarm"):
        # a newcomer reads them as a crash.
        errors = [line for line in out.stderr.replace("\r", "\n").splitlines() if re.match(r"[EF]\d{4} ", line)]
        assert not errors, errors[:5]
        return out.stdout

    where = run("-c", "import metarl_jax, metarl_jax.configs as c; print(metarl_jax.__file__); print(c.path('paper'))")
    package, paper = where.split()
    assert package.startswith(str(env_dir)) and paper.startswith(str(env_dir)), where
    assert run("-m", "metarl_jax.configs", "paper").strip() == paper

    workdir = tmp_path / "run"
    run("-m", "metarl_jax.main", "--config.pretrain.steps=1", "--config.num_steps=3", "--config.eval_trials=8",
        f"--workdir={workdir}", "--nocompile_cache")
    comparison = json.loads((workdir / "comparison.json").read_text())
    assert comparison, "the default run compares ORBIT with single-episode RL, both from the imitation prior"
    assert (workdir / "imitation" / "model" / "model.safetensors").exists()
    for name in ("orbit", "single_episode"):
        rows = json.loads((workdir / name / "eval.json").read_text())
        assert {r["env_id"] for r in rows} == {"game:GuessTheNumber-v0-easy", "game:GuessTheNumber-v0-hard"}
    assert "exported step 2" in run("-m", "metarl_jax.export", str(workdir / "orbit"), str(tmp_path / "hf"))
    assert (tmp_path / "hf" / "tokenizer.json").exists() and (tmp_path / "hf" / "model.safetensors").exists()

    from metarl_jax import envs
    from metarl_jax.text.tiny import make_bpe_tokenizer

    texts = []
    for env_id in ("rockpaperscissors", "maze", "game:Mastermind-v0-random", "game:Wordle-v0-hard"):
        game, _ = envs.make_trial(env_id)
        texts += list(game.pieces) + [game.action_text(a) for a in range(game.num_actions)]
    tokenizer_dir = make_bpe_tokenizer(texts, str(tmp_path / "tokenizer"), vocab_size=600)
    built = run("-c", (
        "from metarl_jax import build\n"
        "from metarl_jax.configs.paper import get_config\n"
        f"c = get_config(); c.tokenizer = {tokenizer_dir!r}\n"
        "run = build.build_run(c)\n"
        "print(run.train_tasks[0].name, run.train_tasks[0].chat is not None)\n"))
    assert built.split() == ["mixture", "True"]
