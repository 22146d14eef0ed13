"""ORBIT's policy gradient teaches a from-scratch model to search: the main run's setup (GuessTheNumber-easy, a
secret in 1..10 with 4 guesses an episode, and -hard, 1..50 with 7, both 3 episodes a trial) trained with the
answer loss off, so the reward is the only task signal (the observation loss only predicts the game's own
feedback text). Episode-1 success on held-out -easy trials must rise above random play's on held-out trials of
the same env: the first episode has no earlier feedback to copy, so a rise there is learned search, not
cross-episode copying.

Measured (results/README.md): trained on -easy alone, single-episode RL stayed at random play's 0.4 for 1,000
steps (its policy's entropy collapsed within 100 steps, with or without an entropy bonus of 0.02); trained on the
mix, as here, episode 1 of -easy rose in training from 0.35 to 0.8 by step 400.
"""


import jax
import pytest

from metarl_jax import baselines
from metarl_jax.configs.default import get_config
from metarl_jax.evaluate import play_trials, summarize
from metarl_jax.build import build_run
from metarl_jax.train import train_and_evaluate

STEPS = 500


def easy_config():
    c = get_config("orbit")  # LaMer's discount on: an earlier win is worth more, which rewards search
    c.eval_tasks = [t for t in c.eval_tasks if t.env_id.endswith("easy")]
    c.answer_coef = 0.0  # no answer loss: the reward is the only task signal
    c.pretrain.steps, c.optimizer.learning_rate = 0, 3e-3  # from scratch, at the from-scratch rate
    c.num_steps, c.checkpoint_every, c.keep_checkpoints = STEPS, 0, 1
    return c


@pytest.mark.slow  # about 3 minutes on 2 cores
def test_episode_one_success_rises_above_random_without_the_answer_loss(tmp_path):
    config = easy_config()
    [trained] = train_and_evaluate(config, str(tmp_path), quiet=True).rows
    task = build_run(config).eval_tasks[0]
    played = play_trials(task.env, task.env_params, baselines.make_policy("random", task.env), jax.random.PRNGKey(0),
                         config.eval_trials)
    random = summarize(task.name, "random", played, config.num_episodes_reported)
    print(f"episode 1 / 2 / 3: trained {trained.episode_rates}, random {random.episode_rates}")  # shown with -s
    low, _ = trained.episode_ci[0]
    _, random_high = random.episode_ci[0]
    assert low > random_high, (trained.episode_rates, trained.episode_ci[0], random.episode_rates, random.episode_ci[0])
