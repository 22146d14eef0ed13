"""The docs' code runs: every ```python and ```bash / ```sh block of README.md and docs/*.md.

A block either runs as written or is marked not runnable by an HTML comment on the line right before its
opening fence, ``<!-- not run: <reason> -->`` (a long training run, a local Qwen3 directory, a fragment of a
file). The fast test checks that every code block is one or the other; the slow test runs each runnable block
in a fresh process (python blocks with ``python -c``, shell blocks with ``bash -e``) from a temporary directory
outside the repository, with the checkout first on PYTHONPATH, and shows the block's stderr when it fails.
"""

import dataclasses
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNERS = {"python": [sys.executable, "-c"], "bash": ["bash", "-e", "-c"], "sh": ["bash", "-e", "-c"]}
# Fence languages that hold code we could not run: a block in one of them must be marked.
OTHER_CODE = {"py", "python3", "pycon", "ipython", "shell", "console", "zsh", "ipynb"}
FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)\s*$")
MARK = re.compile(r"^\s*<!--\s*not run:\s*(.*?)\s*-->\s*$")
TIMEOUT_S = 600


@dataclasses.dataclass(frozen=True)
class Block:
    id: str  # <file relative to the repository>:L<line of the opening fence>, e.g. README.md:L49
    lang: str
    code: str
    not_run: str | None  # the marker's reason, None when unmarked


def parse(path: pathlib.Path) -> tuple[list[Block], list[str]]:
    """The fenced blocks of a markdown file, and what is wrong with its fences and markers."""
    lines = path.read_text().splitlines()
    blocks, problems, i = [], [], 0
    rel = path.relative_to(ROOT).as_posix()
    while i < len(lines):
        mark = MARK.match(lines[i])
        if mark and not (i + 1 < len(lines) and FENCE.match(lines[i + 1]) and FENCE.match(lines[i + 1]).group(2)):
            problems.append(f"{rel}:L{i + 1}: a not-run marker must be on the line right before an opening fence")
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, lang = opening.groups()
        if not lang:
            problems.append(f"{rel}:L{i + 1}: a fence without a language (name it: python, bash, text, ...)")
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            problems.append(f"{rel}:L{i + 1}: the fence is never closed")
            break
        before = MARK.match(lines[i - 1]) if i > 0 else None
        reason = before.group(1) if before else None
        if before and not reason:
            problems.append(f"{rel}:L{i}: a not-run marker needs a reason")
        code = "\n".join(line[len(indent):] if line.startswith(indent) else line for line in lines[i + 1:end])
        blocks.append(Block(f"{rel}:L{i + 1}", lang.lower(), code + "\n", reason))
        i = end + 1
    return blocks, problems


def code_blocks() -> list[Block]:
    return [b for path in DOCS for b in parse(path)[0] if b.lang in RUNNERS or b.lang in OTHER_CODE]


def runnable(block: Block) -> bool:
    return block.not_run is None and block.lang in RUNNERS


def test_every_code_block_runs_or_is_marked_not_run():
    """Parsing only: each python / shell block is run by the slow test below or carries a not-run marker with
    a reason; fences and markers are well formed."""
    problems = [p for path in DOCS for p in parse(path)[1]]
    blocks = code_blocks()
    problems += [f"{b.id}: a ```{b.lang} block is neither runnable here (python, bash, sh) nor marked "
                 "<!-- not run: reason -->" for b in blocks if b.not_run is None and b.lang not in RUNNERS]
    assert not problems, "\n".join(problems)
    assert any(b.id.startswith("README.md:") and runnable(b) for b in blocks)  # the parser finds the README's blocks


@pytest.mark.slow  # one fresh process per block, most of them importing jax
@pytest.mark.parametrize("block", [pytest.param(b, id=b.id, marks=() if runnable(b) else pytest.mark.skip(
    reason=f"not run: {b.not_run}" if b.not_run else f"```{b.lang} is not run")) for b in code_blocks()])
def test_doc_block_runs(block, tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("JAX_PLATFORMS", "cpu")
    proc = subprocess.run([*RUNNERS[block.lang], block.code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert proc.returncode == 0, (f"{block.id} exited with {proc.returncode}\n--- block ---\n{block.code}"
                                  f"--- stderr (last 4000 chars) ---\n{proc.stderr[-4000:]}")
