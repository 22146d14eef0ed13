"""The codec: renders an environment's observation as tokens inside ``jit``.

Built once per (env, tokenizer): every piece of the env's :class:`~metarl_jax.envs.pieces.PieceBook` is
tokenized on the host into a padded table ``int32[num_pieces, max_piece_len]``. An observation
(``int32[S]`` piece ids, one per layout slot) is turned into tokens by concatenating its pieces' token rows,
contiguous writes that run under ``jit``, ``vmap`` and ``lax.scan``. The output has a fixed length ``max_len``, the
sum over slots of the longest piece each slot may show, so no observation is ever cut.

``decode(render_tokens(state)) == env.render_text(state)`` holds for every state; the tests check it for
random states under both tokenizer backends. A tokenizer that cannot render a piece or an action text of the env
exactly is refused when the codec is built (:func:`check_renderable`), naming the env, the text and the fix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from metarl_jax.envs.mixture import select_game
from metarl_jax.envs.pieces import slot_ids
from metarl_jax.text.tokenizers import Tokenizer, split_words


def _env_name(env) -> str:
    """The registered id of ``env`` or of the game a wrapper (the multi-episode trial) wraps."""
    node = env
    while node is not None:
        env_id = getattr(node, "env_id", None)
        if isinstance(env_id, str):
            return env_id
        node = getattr(node, "env", None)
    return str(getattr(env, "name", type(env).__name__))


def check_renderable(tokenizer: Tokenizer, env, text: str, what: str) -> list[int]:
    """The tokens of ``text`` (a piece or an action text of ``env``), refusing a tokenizer that cannot render it.

    Raises ``ValueError`` naming the env, ``what`` (e.g. ``piece 12``), the text and the fix when the word
    vocabulary lacks some of its words, when a Hugging Face tokenizer maps some of it to its unknown token, or
    when ``decode(encode(text)) != text``.
    """
    name = _env_name(env)
    unknown_words = getattr(tokenizer, "unknown_words", None)
    if unknown_words is not None:
        missing = unknown_words(text)
        if missing:
            raise ValueError(
                f"the word vocabulary lacks {sorted(set(missing))[:5]} used by {what} of {name!r}: {text!r}. Regenerate "
                "it with `python -m metarl_jax.text.build_vocab` (or use a tokenizer that covers it)"
            )
    ids = tokenizer.encode(text)
    unk = getattr(tokenizer, "unk_id", None)
    if unk is not None and unk in ids and unknown_words is None:
        words = [w for w in split_words(text) if unk in tokenizer.encode(w)] or [text]
        raise ValueError(
            f"{tokenizer!r} maps {words[:5]} of {what} of {name!r} ({text!r}) to its unknown token; use a tokenizer "
            "whose vocabulary covers the env's text (a byte-level BPE such as Qwen's never produces unknown tokens) "
            "or the built-in word vocabulary (config.tokenizer='word')"
        )
    decoded = tokenizer.decode(ids)
    if decoded != text:
        raise ValueError(
            f"{tokenizer!r} cannot render {what} of {name!r} exactly: {text!r} decodes to {decoded!r}. Use a "
            "tokenizer whose decode(encode(text)) == text (byte-level BPE such as Qwen's, or the built-in word "
            "vocabulary)"
        )
    return ids


def concat_pieces(table, lengths, slot_widths, max_len: int, pad_id: int, piece_ids):
    """The tokens of an observation given as piece ids: ``(tokens int32[max_len], length int32[])``.

    table int32[P, W]: each piece's tokens, padded with ``pad_id``; lengths int32[P]; slot_widths: the static
    token width of each slot (at most W, at least the longest piece the slot may show); max_len: at least the
    total length of any observation; piece_ids int32[S], one per slot. Each slot's padded token row is written at
    the running offset, in slot order: a later slot starts where the earlier valid tokens end, so it overwrites
    the earlier slot's padding. Contiguous writes are several times faster on CPU than a per-token gather.
    """
    piece_ids = jnp.asarray(piece_ids, jnp.int32)
    lens = lengths[piece_ids]
    starts = jnp.cumsum(lens) - lens
    out = jnp.full((max_len + max(1, max(slot_widths, default=1)),), pad_id, jnp.int32)
    for s, width in enumerate(slot_widths):
        if width:
            out = jax.lax.dynamic_update_slice(out, table[piece_ids[s], :width], (starts[s],))
    return out[:max_len], lens.sum()


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
        encoded = [check_renderable(tokenizer, env, piece, f"piece {i}") for i, piece in enumerate(env.pieces)]
        for a in range(env.num_actions):  # the action table tokenizes these next: refuse them here, named
            check_renderable(tokenizer, env, env.action_text(a), f"action {a}")
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

    @property
    def token_ids(self) -> np.ndarray:
        """int32[K]: the sorted token ids the rendered text can contain (padding excluded)."""
        ids = np.unique(np.asarray(self.table))
        return ids[ids != self.pad_id].astype(np.int32)

    def tokens(self, piece_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Piece ids ``int32[S]`` -> ``(tokens int32[max_len], length int32[])``; pads with ``pad_id``."""
        return concat_pieces(self.table, self.lengths, self.slot_widths, self.max_len, self.pad_id, piece_ids)

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


class MixtureCodec:
    """The codec of a :class:`~metarl_jax.envs.mixture.GameMixture`: one table of every game's pieces, and a
    row's observation rendered from its own game's pieces. Each game's piece ids are computed under ``vmap``
    (cheap integer work), shifted into the shared table and the row's are kept; the tokens are then written
    once, with slots as wide as the widest game's, so the program holds one rendering whatever the number of
    games (rendering every game and keeping the row's would compile one rendering per game). Rendered
    observations are padded to the longest game's ``max_len``.

    Attributes:
      codecs: each game's :class:`Codec` (its checks, its table); offsets: int32[G], where each game's pieces
        start in the shared ``table``.
    """

    def __init__(self, mixture, tokenizer: Tokenizer, codecs: list[Codec] | None = None):
        self.env = mixture
        self.tokenizer = tokenizer
        self.pad_id = int(tokenizer.pad_id)
        self.codecs = list(codecs) if codecs is not None else [Codec(e, tokenizer) for e in mixture.envs]
        self.max_len = max(c.max_len for c in self.codecs)
        width = max(c.table.shape[1] for c in self.codecs)
        self.table = jnp.asarray(np.concatenate([
            np.pad(np.asarray(c.table), ((0, 0), (0, width - c.table.shape[1])), constant_values=self.pad_id)
            for c in self.codecs]))
        self.lengths = jnp.asarray(np.concatenate([np.asarray(c.lengths) for c in self.codecs]))
        self.offsets = np.cumsum([0] + [c.table.shape[0] for c in self.codecs[:-1]]).astype(np.int32)
        num_slots = max(len(c.slot_widths) for c in self.codecs)
        self.slot_widths = [max(c.slot_widths[s] for c in self.codecs if s < len(c.slot_widths))
                            for s in range(num_slots)]

    @property
    def token_ids(self) -> np.ndarray:
        """int32[K]: the sorted token ids any game's text can contain (padding excluded)."""
        return np.unique(np.concatenate([c.token_ids for c in self.codecs])).astype(np.int32)

    def render_tokens(self, state) -> tuple[jax.Array, jax.Array]:
        """``(tokens int32[max_len], length int32[])`` of the row's game's observation (jit/vmap-safe)."""
        ids = []
        for codec, offset, s in zip(self.codecs, self.offsets, state.states):
            own = codec.env.obs_pieces(s) + offset  # extra slots show piece 0: game 0's empty piece
            ids.append(jnp.pad(own, (0, len(self.slot_widths) - own.shape[0])))
        piece_ids = select_game(state.game, ids)
        return concat_pieces(self.table, self.lengths, self.slot_widths, self.max_len, self.pad_id, piece_ids)

    def decode(self, tokens, length=None) -> str:
        return self.codecs[0].decode(tokens, length)
