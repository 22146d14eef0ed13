"""Text inside jit: tokenizer backends and the codec that renders observations as tokens."""

from metarl_jax.text.codec import Codec
from metarl_jax.text.tokenizers import HFTokenizer, Tokenizer, WordTokenizer, load_tokenizer, split_words

__all__ = ["Codec", "HFTokenizer", "Tokenizer", "WordTokenizer", "load_tokenizer", "split_words"]
