"""The codec: renders an environment's observation as tokens inside ``jit``.

Built once per (env, tokenizer): every piece of the env's :class:`~metarl_jax.envs.pieces.PieceBook` is
tokenized on the host into a padded table ``int32[num_pieces, max_piece_len]``. An observation
(``int32[S]`` piece ids, one per layout slot) is turned into tokens by concatenating its pieces' token rows,
contiguous writes that run under ``jit``, ``vmap`` and ``lax.scan``. The output has a fixed length ``max_len``, the
sum over slots of the longest piece each slot may show, so no observation is ever cut.

``decode(render_tokens(state)) == env.render_text(state)`` holds for every state; the tests check it for
random states under both tokenizer backends.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from metarl_jax.envs.pieces import slot_ids
from metarl_jax.text.tokenizers import Tokenizer


class Codec:
    """Pre-tokenized pieces of one env for one tokenizer.

    Attributes:
      table: int32[num_pieces, max_piece_len], the tokens of each piece, padded with ``pad_id``.
      lengths: int32[num_pieces], the token count of each piece.
      max_len: int, the length of every rendered observation (valid tokens first, then padding).
    """

    def __init__(self, env, tokenizer: Tokenizer):
        self.env = env
        self.tokenizer = tokenizer
        self.pad_id = int(tokenizer.pad_id)
        encoded = []
        for i, piece in enumerate(env.pieces):
            unknown = getattr(tokenizer, "unknown_words", None)
            if unknown is not None and unknown(piece):
                raise ValueError(
                    f"the word vocabulary lacks {unknown(piece)[:5]} used by {env.name!r}; regenerate it with "
                    "`python -m metarl_jax.text.build_vocab`"
                )
            ids = tokenizer.encode(piece)
            if tokenizer.decode(ids) != piece:
                raise ValueError(
                    f"{tokenizer!r} cannot render piece {i} of {env.name!r} exactly: {piece!r} decodes to "
                    f"{tokenizer.decode(ids)!r}. Use a tokenizer whose decode(encode(text)) == text "
                    "(byte-level BPE such as Qwen's, or the built-in word vocabulary)"
                )
            encoded.append(ids)
        lengths = np.array([len(e) for e in encoded], np.int32)
        width = max(1, int(lengths.max()))
        table = np.full((len(encoded), width), self.pad_id, np.int32)
        for i, e in enumerate(encoded):
            table[i, : len(e)] = e
        self.table = jnp.asarray(table)
        self.lengths = jnp.asarray(lengths)
        # The longest piece each slot may show: that slot's share of the fixed output length.
        self.slot_widths = [int(max(lengths[j] for j in slot_ids(s))) for s in env.layout]
        self.max_len = max(1, sum(self.slot_widths))
        self._widest_slot = max(1, max(self.slot_widths, default=1))

    def tokens(self, piece_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Piece ids ``int32[S]`` -> ``(tokens int32[max_len], length int32[])``; pads with ``pad_id``.

        Each slot's padded token row is written at the running offset, in slot order: a later slot starts
        where the earlier valid tokens end, so it overwrites the earlier slot's padding. Contiguous
        writes are several times faster on CPU than a per-token gather.
        """
        piece_ids = jnp.asarray(piece_ids, jnp.int32)
        lens = self.lengths[piece_ids]
        starts = jnp.cumsum(lens) - lens
        out = jnp.full((self.max_len + self._widest_slot,), self.pad_id, jnp.int32)
        for s, width in enumerate(self.slot_widths):
            if width:
                out = jax.lax.dynamic_update_slice(out, self.table[piece_ids[s], :width], (starts[s],))
        return out[: self.max_len], lens.sum()

    def render_tokens(self, state) -> tuple[jax.Array, jax.Array]:
        """``(tokens int32[max_len], length int32[])`` of the observation of ``state`` (jit/vmap-safe)."""
        return self.tokens(self.env.obs_pieces(state))

    def decode(self, tokens, length=None) -> str:
        """Host-side text of rendered tokens (the first ``length`` of them when given)."""
        tokens = np.asarray(tokens).reshape(-1)
        if length is not None:
            tokens = tokens[: int(length)]
        return self.tokenizer.decode(tokens.tolist())

    def encode_action(self, i: int) -> list[int]:
        """Tokens of the canonical text of action ``i``."""
        return self.tokenizer.encode(self.env.action_text(i))
