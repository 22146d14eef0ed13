"""Rule conformance with GEM's MinesweeperEnv (the peer implementation), reveal-only, 5 x 5 with 5 mines.

GEM draws its mines with Python's ``random``; the test replaces its ``_setup_mines`` so that GEM places OUR
mines (our board for the same task and first click), then plays identical reveal sequences in both and
compares, step by step: the revealed cells and the rendered board, GEM's own neighbour counts, mine-hit
termination, the already-revealed message and the max-turn truncation. GEM has no reveal-only win (its
``_is_solved`` also wants every mine flagged), so our WON is compared with "GEM's board has every safe cell
revealed" and GEM's episode is simply stopped there.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import play_actions
from metarl_jax import envs
from metarl_jax.envs.base import LOST, OUT_OF_TURNS, RUNNING, WON

pytestmark = pytest.mark.peer
pytest.importorskip("gem")
from gem.envs.game_env.minesweeper import MinesweeperEnv  # noqa: E402

R = C = 5
MINES = 5
TURNS = 8
EPISODES = 300


def board_cells(text):
    """The cell marks of a rendered board (rows of '.', digits, 'F', '*'), from the line after the column header."""
    lines = text.rstrip("\n").splitlines()
    head = next(i for i, line in enumerate(lines) if line.split() == [str(c) for c in range(C)])
    return [line.split()[1:] for line in lines[head + 1: head + 1 + R]]


def flood(counts, cell, opened):
    """Cells open after revealing ``cell`` (a host-side flood fill through zero cells; flat arrays)."""
    opened, stack = opened.copy(), [cell]
    opened[cell] = True
    while stack:
        r, c = divmod(stack.pop(), C)
        if counts[r * C + c] == 0:
            for x in range(max(r - 1, 0), min(r + 2, R)):
                for y in range(max(c - 1, 0), min(c + 2, C)):
                    if not opened[x * C + y]:
                        opened[x * C + y] = True
                        stack.append(x * C + y)
    return opened


@pytest.fixture(scope="module")
def episodes():
    """Reveal sequences and our per-step states. Half the episodes click uniformly among all cells, half among
    the safe cells only, so that mines, repeats, wins and truncations all occur."""
    env, params = envs.make("game:Minesweeper-v0-only-reveal")
    rng = np.random.default_rng(2024)
    tasks = jax.vmap(lambda k: env.sample_task(k, params))(jax.random.split(jax.random.PRNGKey(11), EPISODES))
    first = rng.integers(0, R * C, EPISODES)
    mines, counts = map(np.asarray, jax.jit(jax.vmap(env.board))(tasks, jnp.asarray(first)))
    actions = rng.integers(0, R * C, (EPISODES, TURNS))
    actions[:, 0] = first
    for e in range(EPISODES // 2, EPISODES):
        safe = np.flatnonzero(~mines[e])
        if e < 3 * EPISODES // 4:  # safe cells, with replacement
            actions[e, 1:] = rng.choice(safe, TURNS - 1)
        else:  # a good player: an unrevealed safe cell with the fewest neighbouring mines
            opened = flood(counts[e], int(first[e]), np.zeros(R * C, bool))
            for t in range(1, TURNS):
                todo = np.flatnonzero(~opened & ~mines[e])
                if not len(todo):
                    break
                actions[e, t] = todo[np.lexsort((rng.random(len(todo)), counts[e][todo]))[0]]
                opened = flood(counts[e], int(actions[e, t]), opened)

    states = play_actions(env, params, tasks, actions)
    return env, actions, mines, states


def test_steps_match_gem(episodes, monkeypatch):
    env, actions, mines, states = episodes
    gem_env = MinesweeperEnv(rows=R, cols=C, num_mines=MINES, max_turns=TURNS)
    seen = {"mine": 0, "repeat": 0, "won": 0, "truncated": 0}
    for e in range(EPISODES):
        gem_env.reset()
        board = mines[e].reshape(R, C)

        def our_mines(safe_row, safe_col, board=board, e=e):
            assert safe_row * C + safe_col == actions[e, 0]
            for r in range(R):
                for c in range(C):
                    gem_env.grid[r][c] = -1 if board[r, c] else 0
            gem_env._calculate_adjacent_numbers()

        monkeypatch.setattr(gem_env, "_setup_mines", our_mines)
        for t in range(TURNS):
            r, c = divmod(int(actions[e, t]), C)
            obs, _, terminated, truncated, _ = gem_env.step(f"\\boxed{{reveal {r} {c}}}")
            ours = jax.tree.map(lambda x: np.asarray(x[e, t]), states)
            status = int(ours.status)
            text = env.render_text(ours)
            grid = np.array(gem_env.grid)
            gem_revealed = np.array(gem_env.revealed)
            # GEM's own neighbour counts agree with ours on the safe cells; the revealed sets agree.
            assert (grid.reshape(-1)[~mines[e]] == np.asarray(ours.game.counts)[~mines[e]]).all()
            assert (gem_revealed.reshape(-1) == np.asarray(ours.game.revealed)).all()
            # Mine hit: GEM ends the episode; we end it LOST.
            hit = obs.startswith("Game over! You hit a mine")
            assert hit == (status == LOST)
            assert hit == (terminated and not truncated and not obs.startswith("Congratulations"))
            # Success: every safe cell revealed on GEM's board (GEM would also want flags on the mines, so it
            # plays on, and on the last turn it truncates; our episode ends WON and shows the board).
            all_safe = all(grid[i][j] == -1 or gem_revealed[i][j] for i in range(R) for j in range(C))
            assert (status == WON) == (all_safe and not hit)
            if status == WON:
                assert "cleared the board" in text and board_cells(text) == board_cells(gem_env._render_board())
            else:
                # The max-turn truncation, with the same message.
                assert bool(truncated) == (status == OUT_OF_TURNS)
                if truncated:
                    assert text == obs == "You have reached the maximum number of turns."
                else:
                    assert ("has already been revealed" in obs) == ("already revealed" in text)
                    assert board_cells(text) == board_cells(gem_env._render_board())
            seen["mine"] += hit
            seen["repeat"] += "has already been revealed" in obs
            seen["won"] += status == WON
            seen["truncated"] += bool(truncated)
            if status != RUNNING or terminated or truncated:
                break
    print(seen)
    assert min(seen.values()) >= 5  # every kind of event was exercised
