"""Export a trained run as a Hugging Face directory.

    python -m metarl_jax.export WORKDIR OUT_DIR [--step=N]

``WORKDIR`` is one run's directory (for a ``compare`` run, ``<workdir>/orbit`` or ``<workdir>/single_episode``).
The run is rebuilt from the config saved with its checkpoint, so no config flag is needed. ``OUT_DIR`` receives
``config.json`` and ``model.safetensors`` (float32, LoRA adapters merged) and the tokenizer's files: the built-in
word vocabulary as ``tokenizer.json`` (a ``tokenizers`` WordLevel model with the same ids), a Hugging Face
tokenizer as it was loaded (its chat template included). ``transformers.AutoModelForCausalLM`` and
``AutoTokenizer`` load the directory; so does ``config.model.pretrained_dir`` with ``config.tokenizer``.
"""

from __future__ import annotations

import os

import jax
import ml_collections
from absl import app, flags, logging
from flax import nnx

from metarl_jax.algos import grpo
from metarl_jax.algos.grpo import init_train_state
from metarl_jax.build import build_model, build_optimizer, trainable_filter
from metarl_jax.checkpoints import Checkpointer
from metarl_jax.models.hf_io import save_pretrained
from metarl_jax.text.tokenizers import load_tokenizer
from metarl_jax.workdir import check_writable


def export(workdir: str, out_dir: str, step: int = 0) -> int:
    """Writes ``workdir``'s checkpoint ``step`` (0: the latest) to ``out_dir`` as a Hugging Face directory (see the
    module docstring). Returns the exported step."""
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        runs = [d for d in ("orbit", "single_episode") if os.path.isdir(os.path.join(workdir, d, "checkpoints"))]
        hint = (f"; {workdir} holds a comparison: export one of its runs, "
                + " or ".join(os.path.join(workdir, d) for d in runs)) if runs else ": train the run first"
        raise FileNotFoundError(f"{ckpt_dir} does not exist{hint}")
    check_writable(out_dir, "export directory")
    with Checkpointer(ckpt_dir) as ckpt:
        step = ckpt.pick_step(step, "export", "train the run first")
        config = ml_collections.ConfigDict(ckpt.saved_config(step))
        tokenizer = load_tokenizer(config.tokenizer)
        graphdef, model_state = build_model(config, tokenizer)
        template = jax.eval_shape(lambda: init_train_state(model_state, build_optimizer(config),
                                                           keep_reference=config.kl_coef > 0,
                                                           trainable=trainable_filter(config)))
        if template.frozen is not None:  # a frozen part is not in the checkpoint: it comes from the fresh model
            template = template.replace(frozen=nnx.split_state(model_state, trainable_filter(config), ...)[1])
        state = ckpt.restore(step, template, jax.random.PRNGKey(0))[0]
    save_pretrained(nnx.merge(graphdef, grpo.model_state(state)), out_dir)  # LoRA adapters merged into the kernels
    tokenizer.save_pretrained(out_dir)
    return step


def main(argv):
    if len(argv) != 3:
        raise app.UsageError("usage: python -m metarl_jax.export WORKDIR OUT_DIR [--step=N]")
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    step = export(argv[1], argv[2], flags.FLAGS.step)
    print(f"exported step {step} of {argv[1]} to {argv[2]}")


if __name__ == "__main__":  # the flag only when run as a command: main.py imports export() and has its own --step
    flags.DEFINE_integer("step", 0, "The checkpoint step to export (0: the latest).")
    app.run(main)
