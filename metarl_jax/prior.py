"""An imitation prior shared by several runs (``config.pretrain``).

A comparison (ORBIT against single-episode RL, or the rows of an ablation table) must start every RL run from
the same weights, as ORBIT starts every run from one pretrained LM. :func:`train_prior` trains the imitation
phase once, as a run of its own (evaluated like any run: the prior before RL), and exports its weights;
:func:`rl_phase` turns a run's config into its RL phase from that export.
"""

from __future__ import annotations

import os

import ml_collections

PRIOR_LABEL = "imitation prior (no RL)"


def train_prior(config, run_dir: str, run=None):
    """Trains ``config``'s ``pretrain.steps`` imitation steps in ``run_dir`` (resumed or reused as any run) and
    exports the weights to ``<run_dir>/model``. ``run(config, workdir, label=...)`` trains and returns the rows
    (default: :func:`metarl_jax.train.train_and_evaluate`'s). Returns ``(model_dir, rows)``."""
    from metarl_jax.export import export

    if run is None:
        from metarl_jax.train import train_and_evaluate

        def run(cfg, workdir, label):
            return train_and_evaluate(cfg, workdir, label=label).rows

    cfg = config.copy_and_resolve_references()
    cfg.single_episode, cfg.num_steps = False, cfg.pretrain.steps
    rows = run(cfg, run_dir, label=PRIOR_LABEL)
    model_dir = os.path.join(run_dir, "model")
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        export(run_dir, model_dir)
    return model_dir, rows


def rl_phase(config, model_dir: str):
    """A copy of ``config`` that trains only its RL phase, its ``num_steps - pretrain.steps`` steps, from the prior
    exported to ``model_dir`` (``model.pretrained_dir``), with a fresh optimizer. The preset's ``model.overrides``
    are dropped: the export's ``config.json`` already holds the shape they gave the prior."""
    cfg = config.copy_and_resolve_references()
    cfg.model.pretrained_dir, cfg.num_steps = model_dir, cfg.num_steps - cfg.pretrain.steps
    cfg.model.overrides = ml_collections.ConfigDict()
    cfg.pretrain.steps = 0
    return cfg
