"""A learned initial context (soft prompt): N trainable embedding vectors that every trial starts with.

``add_prompt(model, length, rngs)`` gives a :class:`~metarl_jax.models.transformer.Transformer` a
:class:`PromptParam` ``prompt [N, D]``. The vectors are addressed as *virtual tokens*: id ``vocab_size + i`` embeds
as ``prompt[i]`` (:func:`embed_tokens`), so a token stream that holds the ids ``prompt_ids(model)`` passes through
the KV cache, the RoPE positions and the teacher-forced pass like any other text, and the sampler and the learner
see the same context. The output logits cover the real vocabulary only: a virtual token is never sampled or
scored. The rollout places the N ids before the first observation of every trial
(:class:`~metarl_jax.agents.rollout.RolloutSpec`'s ``prompt_len``).

Train only the prompt with ``nnx.split(model, PromptParam, ...)`` (``config.trainable = "prompt"``). On disk the
vectors are ``prompt.safetensors`` (one float32 tensor ``"prompt"`` [N, D]) beside the model's weights:
:func:`save_prompt` writes it, :func:`load_prompt` reads it, and
:func:`metarl_jax.models.hf_io.load_pretrained` attaches it when the directory has one. With ``transformers``,
prepend the vectors to the token embeddings and call the model with ``inputs_embeds`` (docs/trainable.md).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

PROMPT_FILE = "prompt.safetensors"


class PromptParam(nnx.Variable):
    """The trainable prompt vectors (a variable type of its own, so filters can select it)."""


def embed_tokens(embed, prompt, tokens, dtype):
    """The input embeddings [B, T, D] in ``dtype`` of ``tokens`` int32[B, T]: row ``tokens`` of ``embed`` [V, D],
    and for a virtual token ``V + i`` (with ``prompt`` [N, D]; None: no virtual tokens) the vector ``prompt[i]``."""
    vocab = embed.shape[0]
    x = embed[jnp.minimum(tokens, vocab - 1)].astype(dtype)
    if prompt is None:
        return x
    index = tokens - vocab
    return jnp.where((index >= 0)[..., None], prompt[jnp.clip(index, 0, prompt.shape[0] - 1)].astype(dtype), x)


def prompt_length(model) -> int:
    """N, the model's prompt vectors (0 without a prompt)."""
    return 0 if getattr(model, "prompt", None) is None else int(model.prompt.shape[0])


def prompt_ids(model) -> np.ndarray:
    """int32[N]: the virtual token ids of the model's prompt vectors (``vocab_size .. vocab_size + N - 1``)."""
    return model.config.vocab_size + np.arange(prompt_length(model), dtype=np.int32)


def add_prompt(model, length: int, rngs: nnx.Rngs, values=None):
    """Gives ``model`` ``length`` prompt vectors in place and returns it: ``values`` [length, D] when given, else
    the embeddings of ``length`` tokens drawn at random from the vocabulary (a soft prompt starts where text
    embeddings lie; Lester et al. 2021 found this better than a random draw)."""
    if length < 1:
        raise ValueError(f"a prompt needs at least one vector, got length={length}")
    embed = model.embed[...]
    if values is None:
        values = embed[jax.random.randint(rngs.params(), (length,), 0, embed.shape[0])]
    values = jnp.asarray(values, jnp.float32)  # what trains stays in float32 (a frozen base may be bfloat16)
    if values.shape != (length, embed.shape[1]):
        raise ValueError(f"prompt vectors of shape {tuple(values.shape)} do not fit this model: expected "
                         f"({length}, {embed.shape[1]}) (length, hidden size)")
    model.prompt = nnx.data(PromptParam(values))
    return model


def save_prompt(model, out_dir: str) -> None:
    """Writes the model's prompt vectors to ``out_dir/prompt.safetensors`` (float32), atomically."""
    from safetensors.numpy import save_file

    tmp = os.path.join(out_dir, PROMPT_FILE + ".tmp")
    save_file({"prompt": np.asarray(model.prompt[...], np.float32)}, tmp, metadata={"format": "np"})
    os.replace(tmp, os.path.join(out_dir, PROMPT_FILE))


def load_prompt(local_dir: str) -> np.ndarray | None:
    """float32[N, D]: the prompt vectors saved in ``local_dir`` (None if it has none)."""
    from safetensors.numpy import load_file

    path = os.path.join(local_dir, PROMPT_FILE)
    if not os.path.exists(path):
        return None
    tensors = load_file(path)
    if set(tensors) != {"prompt"} or tensors["prompt"].ndim != 2:
        raise ValueError(f"{path} must hold one 2-D tensor named 'prompt' (the prompt vectors [N, D]), "
                         f"found {sorted(tensors)}")
    values = tensors["prompt"]
    if not np.isfinite(values).all():
        raise ValueError(f"{path} holds NaN or infinite values: the run that saved it diverged")
    return values
