"""Regenerates ``words_3.txt`` and ``words_5.txt`` from SCOWL size 10 (a dev script, not used at run time).

SCOWL ("Spell Checker Oriented Word Lists", Kevin Atkinson) ships in Debian's ``scowl`` package; its
size-10 list holds about 4,400 of the most common English words. We keep the words made only of lower-case
ASCII letters, of length 3 and 5, sorted, one per line. The licence is in ``LICENSE-SCOWL.txt``.

Usage (from anywhere)::

    python metarl_jax/envs/data/make_word_lists.py [/usr/share/dict/scowl/english-words.10]
"""

import os
import re
import sys

DEFAULT_SOURCE = "/usr/share/dict/scowl/english-words.10"
LENGTHS = (3, 5)


def word_list(source: str, length: int) -> list[str]:
    pattern = re.compile(rf"^[a-z]{{{length}}}$")
    with open(source, encoding="utf-8", errors="replace") as f:
        return sorted({w.strip() for w in f if pattern.match(w.strip())})


def main(source: str = DEFAULT_SOURCE) -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    for length in LENGTHS:
        words = word_list(source, length)
        path = os.path.join(here, f"words_{length}.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("".join(w + "\n" for w in words))
        print(f"wrote {len(words)} words to {path}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
