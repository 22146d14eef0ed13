"""A smoke-test run: seconds on CPU. Used by the tests (resume after SIGKILL, bad configs).

Command::

    python -m metarl_jax.main --config=configs/tiny.py --workdir=/tmp/metarl_tiny

Expected result: a per-episode success table of 8 held-out trials before training, 6 GRPO steps on
GuessTheNumber-easy trials (2 tasks x 2 rollouts, 2 episodes of 4 turns), then the table again; the numbers are
noise at this budget.
"""

from metarl_jax.configs.default import get_config as default_config
from metarl_jax.configs.default import task


def get_config(variant: str = "orbit"):
    c = default_config(variant)
    c.train_tasks = [task("game:GuessTheNumber-v0-easy", 4, 8)]
    c.eval_tasks = [task("game:GuessTheNumber-v0-easy", 4, 8)]
    c.num_tasks, c.group_size = 2, 2
    c.train_set_size, c.eval_trials = 16, 8
    c.num_steps, c.eval_every, c.log_every, c.checkpoint_every = 6, 3, 1, 2
    c.eval_before_training = True
    c.num_episodes_reported = 2
    c.text = "gem"  # GEM's sentences: the tests and the notebook read them
    # From scratch with the auxiliary answer loss on, so the smoke runs cover its code path; no imitation phase.
    c.pretrain.steps, c.answer_coef, c.optimizer.learning_rate = 0, 10.0, 3e-3
    return c
