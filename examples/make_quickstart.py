"""Writes ``examples/quickstart.ipynb`` (no stored outputs) from the cells below.

Edit the cells here, then regenerate::

    python examples/make_quickstart.py

``tests/test_notebook.py`` executes the notebook and checks that it matches this script.
"""

from __future__ import annotations

import os

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    ("code", """\
# Install: on Colab or any fresh machine, run this cell first (it does nothing where metarl_jax is importable).
# It installs the package from the checkout around this notebook (examples/ in a clone), else from REPO_URL,
# together with JAX's plugin for the accelerator that is present (a GPU or a TPU runtime; none: CPU).
import importlib.util
import os
import shutil
import subprocess
import sys

REPO_URL = ""  # the repository's git URL (or a local clone's path), for a machine without a checkout

if importlib.util.find_spec("metarl_jax") is None:
    checkout = os.path.abspath("..")
    if os.path.exists(os.path.join(checkout, "setup.py")):
        source = checkout
    elif REPO_URL:
        source = os.path.abspath("metarl_jax_src")
        if not os.path.exists(source):
            subprocess.run(["git", "clone", "--depth=1", REPO_URL, source], check=True)
    else:
        raise RuntimeError("metarl_jax is not installed and this notebook is not in a checkout: set REPO_URL in "
                           "this cell to the repository's git URL, then run it again")
    accelerator = ("cuda12" if shutil.which("nvidia-smi")
                   else "tpu" if os.environ.get("COLAB_TPU_ADDR") or os.path.exists("/dev/accel0") else "cpu")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", source, f"jax[{accelerator}]==0.10.2"],
                   check=True)
    importlib.invalidate_caches()"""),
    ("md", """\
# metarl_jax quickstart

Cross-episode meta-RL (ORBIT, arXiv 2602.04089) in JAX: a transformer plays the *same task* for several
episodes in a row and has to improve from episode to episode using only its context. This notebook:

1. builds a game and its multi-episode wrapper, and renders an observation as text and as tokens;
2. plays baseline policies and prints a per-episode success table;
3. meta-trains a tiny from-scratch transformer for a few GRPO steps and evaluates it on held-out trials;
4. plots success against the episode index.

It runs in about two minutes on 2 CPU cores; the first cell installs the package where it is missing (Colab).
The training budget is far too small to learn anything: the point is the API, not the numbers (see
`results/README.md` for real runs)."""),
    ("md", """\
## Imports

`metarl_jax.envs` holds the games and the wrapper, `metarl_jax.text` the tokenizers and the codec that renders
observations inside `jit`, `metarl_jax.evaluate` the success tables and `metarl_jax.train` the training loop.
JAX uses the accelerator it finds (set `JAX_PLATFORMS=cpu` before starting the kernel to force the CPU)."""),
    ("code", """\
import os
import tempfile

import jax
import matplotlib.pyplot as plt
import numpy as np

import metarl_jax
from metarl_jax import baselines, envs
from metarl_jax.evaluate import add_regret, play_trials, success_table, summarize
from metarl_jax.text import Codec, WordTokenizer
from metarl_jax.train import train_and_evaluate

print("metarl_jax", metarl_jax.__version__, "| jax", jax.__version__, "| devices", jax.devices())"""),
    ("md", """\
## A game, gymnax style

`envs.make(env_id)` returns `(env, params)`: the env holds the structure (here the range 1..10), the params the
runtime settings (the turn limit). `reset` and `step` follow gymnax 1.0. Observations are arrays of *piece ids*
(fragments of text registered by the game); `render_text` is the host-side reference text. Actions are indices
with a text form inside `\\boxed{}`."""),
    ("code", """\
ENV_ID = "game:GuessTheNumber-v0-easy"   # a secret in 1..10, 4 turns per episode
env, params = envs.make(ENV_ID)
obs, state = env.reset(jax.random.PRNGKey(0), params)
print(env, "| params:", params)
print("observation (piece ids):", obs)
print(env.render_text(state))

action = env.parse_action("My guess is \\\\boxed{5}")      # text -> action index (-1 if invalid)
obs, state, reward, terminated, truncated, info = env.step(jax.random.PRNGKey(1), state, action, params)
print(env.action_text(action), "->", env.render_text(state))
print("reward", reward, "terminated", terminated, "truncated", truncated)"""),
    ("md", """\
## The multi-episode wrapper

A *trial* draws one task (one secret) and replays it episode after episode until `total_step_cap` env steps
are spent; the reward is 1 on each step that wins an episode. `envs.make_trial` uses ORBIT's caps from the
registry (3 episodes' worth of turns). Here the oracle (binary search, which reads the secret) plays
the first episode; after the winning step the observation shows the finished episode's last message, then
the header of episode 2 and the game's opening again."""),
    ("code", """\
trial, tparams = envs.make_trial(ENV_ID)    # MultiEpisode(env, total_step_cap=12)
print(trial, "| step cap:", trial.total_step_cap)
_, tstate = trial.reset(jax.random.PRNGKey(0), tparams)
print(trial.render_text(tstate))
print("-" * 60)
key = jax.random.PRNGKey(2)
while int(tstate.episode_index) == 0:
    key, k_act, k_step = jax.random.split(key, 3)
    a = trial.oracle_action(k_act, tstate)
    _, tstate, r, done, info = trial.step_env(k_step, tstate, a, tparams)
    print(f"{trial.action_text(int(a))}: reward {float(r)}, episode_done {bool(info['episode_done'])}")
print("-" * 60)
print(trial.render_text(tstate))"""),
    ("md", """\
## Text inside `jit`: the codec

A `Codec` pre-tokenizes every piece of the env once for a tokenizer (here the built-in word vocabulary; a
local Hugging Face directory works too), so observations turn into fixed-length token arrays inside `jit`.
Decoding them gives back exactly the reference text."""),
    ("code", """\
tokenizer = WordTokenizer()
codec = Codec(trial, tokenizer)
tokens, length = jax.jit(codec.render_tokens)(tstate)
print("token budget per observation:", codec.max_len, "| this one:", int(length), "tokens")
print(tokens[:12], "...")
assert codec.decode(tokens, length) == trial.render_text(tstate)"""),
    ("md", """\
## Baselines: a per-episode success table

`play_trials` runs whole trials of a policy under `jit(vmap(lax.scan))`. `random` guesses uniformly among
numbers not yet tried this episode; `oracle` reads the secret; `elimination_random` is a classical online
learner: it guesses a random secret among those consistent with *all* the feedback of the trial, so it
carries knowledge from one episode to the next. `summarize` gives success at each episode index with 95%
Wilson intervals (and the mean trial return, which exceeds 3 when quick wins earn extra episodes under
the step cap); `add_regret` counts the episodes the oracle wins that a policy does not."""),
    ("code", """\
NUM_EPISODES = 3
NUM_TRIALS = 64
rows = []
for name in ("oracle", "random", "elimination_random"):
    policy = baselines.make_policy(name, trial)
    played = play_trials(trial, tparams, policy, jax.random.PRNGKey(0), NUM_TRIALS)
    rows.append(summarize(ENV_ID, name, played, NUM_EPISODES))
add_regret(rows, {ENV_ID: rows[0].episode_rates})
print(success_table(rows))"""),
    ("md", """\
## Meta-training a tiny transformer

`train_and_evaluate(config, workdir)` is the whole loop: it checks the config, builds the tokenizer, model and
task sets, runs the compiled GRPO step (`lax.scan` rollouts of the multi-episode trials, group-relative
advantages, PPO-clip, the optax update, all one `jax.jit`), checkpoints to `<workdir>/checkpoints`, logs
metrics, and evaluates on held-out trials. We start from the built-in `tiny` config (`metarl_jax/configs/tiny.py`) (a 2-layer, 64-wide model, 2 tasks x
2 rollouts per step), train for 5 steps on 2-episode trials and evaluate on 32 held-out 3-episode trials.
Rerunning the cell with the same `workdir` would resume from the last checkpoint."""),
    ("code", """\
from metarl_jax.configs import tiny          # the built-in configs ship with the package
from metarl_jax.configs.default import task

config = tiny.get_config("orbit")
config.eval_tasks = [task(ENV_ID, 4, 12)]          # 3 episodes of 4 turns, as the baselines above
config.num_episodes_reported = NUM_EPISODES
config.eval_trials = 32
config.num_steps, config.eval_every, config.checkpoint_every = 5, 0, 5
workdir = tempfile.mkdtemp(prefix="metarl_quickstart_")
lm_rows = train_and_evaluate(config, workdir, label="tiny LM (5 steps)", quiet=True).rows
print(success_table(lm_rows))
print(sorted(os.listdir(workdir)))"""),
    ("md", """\
## The metrics log

Every run writes `metrics.jsonl` (one JSON record per logged step, `kind` = `train` or `eval`), CSV copies and
TensorBoard event files. Training records hold the loss, the gradient norm and the per-env, per-episode
success of the training rollouts."""),
    ("code", """\
from metarl_jax.metrics_log import read_jsonl

records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
last_train = [r for r in records if r["kind"] == "train"][-1]
print({k: round(v, 4) for k, v in last_train.items() if k in ("step", "loss", "grad_norm")})"""),
    ("md", """\
## Success against the episode index

The headline plot of the paper: success at episode 1, 2, 3 of held-out trials. An in-context learner should
rise with the episode index, as `elimination_random` does; random play stays flat up to noise, and so does the
tiny LM after 5 steps. Error bars are 95% Wilson intervals. `success` is the `[method, episode]` matrix of rates."""),
    ("code", """\
all_rows = rows + lm_rows
methods = [r.policy for r in all_rows]
success = np.array([r.episode_rates for r in all_rows])      # [method, episode]
episodes = np.arange(1, NUM_EPISODES + 1)

fig, ax = plt.subplots(figsize=(5, 3.5))
for r, rates in zip(all_rows, success):
    lo, hi = np.array(r.episode_ci).T
    ax.errorbar(episodes, rates, yerr=[rates - lo, hi - rates], marker="o", capsize=3, label=r.policy)
ax.set(xlabel="episode index", ylabel="success rate", xticks=episodes, ylim=(-0.05, 1.05), title=ENV_ID)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig("success_vs_episode.png", dpi=100)
plt.show()
print(success.shape, methods)"""),
    ("md", """\
## Next steps

- `python -m metarl_jax.main --workdir=/tmp/metarl_run`: the README's main run (ORBIT vs single-episode RL).
- `docs/api.md`: the API; `docs/adding_a_game.md`: a new game; `docs/pretrained_models.md`: a local Qwen3;
  `docs/reproducing.md`: the tables; `docs/differences_from_orbit.md` and `docs/determinism.md`."""),
]


def build() -> nbformat.NotebookNode:
    cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in CELLS]
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    })
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"  # stable ids: regenerating gives the same file
    return nb


PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.ipynb")

if __name__ == "__main__":
    nb = build()
    nbformat.validate(nb)
    with open(PATH, "w", encoding="utf-8") as f:
        nbformat.write(nb, f)
    print(f"wrote {PATH} ({len(nb.cells)} cells)")
