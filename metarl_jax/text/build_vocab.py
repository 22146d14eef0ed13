"""Regenerates the built-in word vocabulary from the text of every registered env.

    python -m metarl_jax.text.build_vocab          # append new words to metarl_jax/text/data/word_vocab.txt
    python -m metarl_jax.text.build_vocab --check  # exit 1 if some env word is missing

Existing tokens keep their ids (new ones are appended), so checkpoints of models trained with an older file
stay valid.
"""

from __future__ import annotations

import argparse
import os
import sys

from metarl_jax.text.tokenizers import SPECIAL_TOKENS, load_word_vocab, split_words, write_word_vocab

# Numbers up to this bound are in the vocabulary with and without a leading space, so that step caps,
# coordinates and scores beyond what the built-in envs show still tokenize.
MAX_VOCAB_NUMBER = 1000


def env_words() -> set[str]:
    """Every word-level token the registered envs, their trials and their action texts can produce, in every text
    style each env renders."""
    from metarl_jax import envs

    words: set[str] = set()
    for env_id in envs.registered():
        for style in envs.env_class(env_id).text_styles:  # every text the env can render
            trial, _ = envs.make_trial(env_id, reflection=True, text=style)
            for piece in trial.pieces:
                words.update(split_words(piece))
            for i in range(trial.num_actions):
                words.update(split_words(trial.action_text(i)))
    for n in range(MAX_VOCAB_NUMBER + 1):
        words.update((str(n), f" {n}"))
    return words


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that the shipped vocabulary is complete")
    args = parser.parse_args(argv)
    path = os.path.join(os.path.dirname(__file__), "data", "word_vocab.txt")
    try:
        current = load_word_vocab()
    except FileNotFoundError:
        current = list(SPECIAL_TOKENS)
    missing = sorted(env_words() - set(current))
    if args.check:
        if missing:
            print(f"{len(missing)} words missing from the vocabulary, e.g. {missing[:10]}", file=sys.stderr)
            return 1
        print(f"vocabulary complete: {len(current)} tokens")
        return 0
    write_word_vocab(current + missing, path)
    print(f"wrote {path}: {len(current) + len(missing)} tokens ({len(missing)} new)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
