"""The two components the method names, as objects for notebooks and scripts.

* :class:`InContextLearner`: the policy plus its context handling. It plays multi-episode trials, deciding from
  the current observation and the whole cross-episode transcript in its KV cache; it never changes its weights
  while playing.
* :class:`CrossEpisodeMetaLearner`: the outer loop. It turns the returns summed over the episodes of many tasks
  into updates of the in-context learner's weights (GRPO with PPO-clip, :mod:`metarl_jax.algos.grpo`). Its
  defaults (``make_optimizer()``, ``GRPOHyper()``) are the README main run's; ``GRPOHyper.orbit()`` is ORBIT's
  loss alone.

Example::

    tok = WordTokenizer()
    tasks = [build_task("game:GuessTheNumber-v0-easy", tok, split="train", seed=0, num_tasks=64)]
    graphdef, params = nnx.split(Transformer(preset("tiny", tok.vocab_size), rngs=nnx.Rngs(0)))
    learner = InContextLearner(graphdef, params)
    meta = CrossEpisodeMetaLearner(learner, tasks)   # the README main run's optimizer and GRPO settings
    state = meta.init_state()
    for i in range(20):
        state, metrics = meta.step(state, jax.random.PRNGKey(i))
    learner = meta.learner_from(state)
    rows = learner.evaluate(tasks, jax.random.PRNGKey(0))   # per-episode success with 95% intervals

:func:`metarl_jax.train.train_and_evaluate` is the same loop with configs, checkpoints and logs.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import optax

from metarl_jax.algos.grpo import GRPOHyper, TrainState, init_train_state, make_train_step
from metarl_jax.algos.optim import make_optimizer
from metarl_jax.evaluate import SuccessRow


@dataclasses.dataclass
class InContextLearner:
    """A transformer policy (``graphdef`` + ``params``, from ``nnx.split``) with its sampling settings."""

    graphdef: object
    params: object
    temperature: float = 0.6
    top_p: float = 0.95

    def evaluate(self, tasks, key, num_episodes: int = 3) -> list[SuccessRow]:
        """Plays every task's whole task set once; per-env success per episode index with 95% intervals."""
        from metarl_jax.evaluate import make_evaluator, summarize_eval

        played = jax.device_get(make_evaluator(self.graphdef, tasks, self.temperature, self.top_p)(self.params, key))
        return summarize_eval(played, num_episodes, "in-context learner")


@dataclasses.dataclass
class CrossEpisodeMetaLearner:
    """GRPO meta-training of an :class:`InContextLearner` on a task mix (:class:`~metarl_jax.tasks.TaskSet` list)."""

    learner: InContextLearner
    tasks: list
    optimizer: optax.GradientTransformation = dataclasses.field(default_factory=make_optimizer)
    hyper: GRPOHyper = dataclasses.field(default_factory=GRPOHyper)

    def __post_init__(self):
        step = make_train_step(self.learner.graphdef, self.tasks, self.optimizer, self.hyper)
        self._step = jax.jit(chex.assert_max_traces(step, n=1), donate_argnums=0)

    def init_state(self) -> TrainState:
        """A fresh train state from the learner's current weights."""
        params = jax.tree.map(lambda x: x.copy(), self.learner.params)
        return init_train_state(params, self.optimizer, keep_reference=self.hyper.kl_coef > 0)

    def step(self, state: TrainState, key) -> tuple[TrainState, dict]:
        """One compiled meta-training step (rollouts, advantages, PPO-clip, update); ``state`` is donated."""
        return self._step(state, key)

    def learner_from(self, state: TrainState) -> InContextLearner:
        """The in-context learner with the trained weights."""
        return dataclasses.replace(self.learner, params=state.params)
