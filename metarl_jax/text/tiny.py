"""Builds small Hugging Face tokenizers locally (for tests and CPU demos; nothing is downloaded)."""

from __future__ import annotations

import os
from typing import Iterable


def make_bpe_tokenizer(texts: Iterable[str], out_dir: str, vocab_size: int = 512, extra_specials=()) -> str:
    """Trains a byte-level BPE (the Qwen/GPT-2 family's scheme) on ``texts`` and saves it to ``out_dir``.

    The directory loads with ``transformers.AutoTokenizer.from_pretrained(out_dir)`` and with
    :class:`metarl_jax.text.HFTokenizer`. It has Qwen-style special tokens (``<|endoftext|>``,
    ``<|im_start|>``, ``<|im_end|>``, then ``extra_specials``, e.g. Qwen3's ``</think>``) and a ChatML chat
    template. Returns ``out_dir``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *extra_specials]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(list(texts), trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>", clean_up_tokenization_spaces=False
    )
    hf.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    os.makedirs(out_dir, exist_ok=True)
    hf.save_pretrained(out_dir)
    return out_dir
