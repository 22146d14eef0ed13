"""Tokenizer backends: a built-in word-level vocabulary and a Hugging Face tokenizer from a local directory.

Both implement :class:`Tokenizer`: ``encode(text) -> list[int]`` (no special tokens added) and
``decode(ids) -> str``, with the property the codec relies on: ``decode(encode(a) + encode(b)) == a + b``
for the pieces of every environment. The codec checks that property piece by piece when it is built.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from typing import Protocol, Sequence


class Tokenizer(Protocol):
    """What the codec and the policies need from a tokenizer."""

    vocab_size: int
    pad_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


# A word token is a run of letters or digits with an optional leading space, a single other symbol with an
# optional leading space, or a run of whitespace. Every character is matched, so joining the matches gives
# back the text exactly.
WORD_PATTERN = re.compile(r" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]|\s+")
SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>", "<sep>")
_VOCAB_RESOURCE = "word_vocab.txt"


def split_words(text: str) -> list[str]:
    """The word-level pre-tokenization: ``"".join(split_words(t)) == t``."""
    return WORD_PATTERN.findall(text)


def _escape(token: str) -> str:
    return token.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def _unescape(line: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}[m.group(1)], line)


class WordTokenizer:
    """The built-in word-level vocabulary (no downloads), for from-scratch models.

    The vocabulary ships as ``metarl_jax/text/data/word_vocab.txt``, one escaped token per line (``\\n``
    for a newline, ``\\\\`` for a backslash); it covers the text of every registered environment and is
    regenerated with ``python -m metarl_jax.text.build_vocab``. Ids are stable across releases as long as
    the file only grows. Unknown words map to ``<unk>``.
    """

    def __init__(self, tokens: Sequence[str] | None = None):
        if tokens is None:
            tokens = load_word_vocab()
        tokens = list(tokens)
        if tuple(tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"a word vocabulary must start with the special tokens {SPECIAL_TOKENS}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("the word vocabulary has duplicate tokens")
        self.tokens = tokens
        self.index = {t: i for i, t in enumerate(tokens)}
        self.vocab_size = len(tokens)
        self.pad_id, self.unk_id, self.bos_id, self.eos_id, self.sep_id = range(len(SPECIAL_TOKENS))

    def encode(self, text: str) -> list[int]:
        return [self.index.get(w, self.unk_id) for w in split_words(text)]

    def unknown_words(self, text: str) -> list[str]:
        """The words of ``text`` that are not in the vocabulary."""
        return [w for w in split_words(text) if w not in self.index]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.tokens[int(i)] for i in ids if int(i) != self.pad_id)

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size})"

    def to_tokenizers(self):
        """The same vocabulary as a ``tokenizers.Tokenizer``: a WordLevel model over :data:`WORD_PATTERN`'s pieces
        with the same ids, ``<unk>`` for unknown words and a decoder that joins the pieces back. It encodes every
        text to the ids :meth:`encode` gives, except that the special tokens' literal text (``"<pad>"``) becomes
        their id, as in every Hugging Face tokenizer."""
        from tokenizers import Regex, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as FastTokenizer

        fast = FastTokenizer(models.WordLevel(vocab=dict(self.index), unk_token=SPECIAL_TOKENS[self.unk_id]))
        fast.pre_tokenizer = pre_tokenizers.Split(Regex(WORD_PATTERN.pattern), behavior="isolated")
        fast.decoder = decoders.Fuse()
        fast.add_special_tokens(list(SPECIAL_TOKENS))
        return fast

    def save_pretrained(self, out_dir: str) -> None:
        """Writes ``tokenizer.json`` and ``tokenizer_config.json``: ``transformers.AutoTokenizer`` loads them as a fast
        tokenizer with this vocabulary's ids (encode with ``add_special_tokens=False``: nothing is added anyway)."""
        from transformers import PreTrainedTokenizerFast

        pad, unk, bos, eos, sep = SPECIAL_TOKENS
        PreTrainedTokenizerFast(tokenizer_object=self.to_tokenizers(), pad_token=pad, unk_token=unk, bos_token=bos,
                                eos_token=eos, sep_token=sep,
                                clean_up_tokenization_spaces=False).save_pretrained(out_dir)


def load_word_vocab() -> list[str]:
    """The shipped word vocabulary, in id order."""
    text = resources.files("metarl_jax.text.data").joinpath(_VOCAB_RESOURCE).read_text(encoding="utf-8")
    return [_unescape(line) for line in text.split("\n") if line != ""]


def write_word_vocab(tokens: Sequence[str], path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for t in tokens:
            f.write(_escape(t) + "\n")


class HFTokenizer:
    """A Hugging Face tokenizer read from a local directory through ``transformers`` (never downloaded)."""

    def __init__(self, local_dir: str):
        if not os.path.isdir(local_dir):
            raise FileNotFoundError(
                f"tokenizer directory {local_dir!r} does not exist; pass a local directory that holds "
                "tokenizer.json or tokenizer_config.json (nothing is downloaded)"
            )
        from transformers import AutoTokenizer

        self.hf = AutoTokenizer.from_pretrained(local_dir, local_files_only=True)
        self.local_dir = local_dir
        self.vocab_size = len(self.hf)
        pad = self.hf.pad_token_id
        if pad is None:
            pad = self.hf.eos_token_id if self.hf.eos_token_id is not None else 0
        self.pad_id = int(pad)
        self.eos_id = None if self.hf.eos_token_id is None else int(self.hf.eos_token_id)
        # The id of the unknown token (None for byte-level BPEs, which have none); the codec refuses text
        # that encodes to it.
        self.unk_id = None if self.hf.unk_token_id is None else int(self.hf.unk_token_id)

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def __repr__(self) -> str:
        return f"HFTokenizer({self.local_dir!r}, vocab_size={self.vocab_size})"

    def save_pretrained(self, out_dir: str) -> None:
        """Writes the tokenizer's files, its chat template included, as ``transformers`` saves them."""
        self.hf.save_pretrained(out_dir)


def load_tokenizer(spec: str = "word") -> Tokenizer:
    """``"word"`` gives the built-in vocabulary; any other value is a local Hugging Face tokenizer directory."""
    if spec == "word":
        return WordTokenizer()
    return HFTokenizer(spec)
