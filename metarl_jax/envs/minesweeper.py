"""Minesweeper, reveal-only (ORBIT's ``game:Minesweeper-v0-only-reveal``), JAX-native.

Rules. A ``rows x cols`` board (5 x 5) hides ``num_mines`` mines (5). Each turn the agent reveals one cell,
``\\boxed{reveal R C}`` with 0-based row ``R`` and column ``C`` (``rows * cols`` actions, action
``R * cols + C``). A revealed cell shows how many of its 8 neighbours are mines; revealing a cell with no
neighbouring mine also reveals its neighbours, recursively (GEM's 8-neighbour flood fill). Revealing a mine
ends the episode (LOST). Revealing an already revealed cell costs a turn and says so. The episode is WON
when every safe cell is revealed; ``max_turns`` is 8. The opening shows the rules and the board, and every
later observation shows that turn's feedback followed by the board (``.`` unrevealed, a digit for a revealed
cell's count), as GEM shows its board after every move.

Task: ``uint32[2]``, a raw threefry PRNG key. The mines are placed at the episode's first reveal, as in GEM:
none in the 3 x 3 square around the first revealed cell, ``num_mines`` uniformly among the other cells. The
board is a deterministic function of (task key, first revealed cell) (:meth:`Minesweeper.board`), so within
a trial the same first click always gives the same board, in every episode.

Differences from GEM / ORBIT:
  * In ORBIT's code the mines come from a global Python RNG shared by concurrent threads, so the board was
    not reliably the same across the episodes of a trial; here it is fixed by (task, first click).
  * GEM's ``_is_solved`` also requires every mine to be flagged; this reveal-only variant has no flag action
    and is won when every safe cell is revealed (ORBIT: "flags are optional").
  * GEM's out-of-bounds and unknown-verb messages cannot occur (the action set is exactly the 25 reveals).

``oracle_action`` reads the task: it picks the first click whose board has the smallest 3BV (the minimum
number of clicks that clears a board: the number of zero regions plus the safe numbered cells not next to
any zero), then clicks one cell of every zero region, then every remaining safe cell. It wins exactly the
tasks whose best 3BV is at most ``max_turns``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from metarl_jax.envs.base import LOST, RUNNING, WON, TextEnv, TextEnvState
from metarl_jax.envs.pieces import EMPTY, slot

# feedback codes of the last turn
_NONE, _REVEALED, _REPEAT, _MINE, _CLEARED = range(5)


@struct.dataclass
class MinesweeperGame:
    """Per-episode state; ``N = rows * cols`` cells in row-major order.

    Attributes:
      mines: bool[N], the mines (all False until the first reveal places them).
      counts: int32[N], mines among each cell's 8 neighbours.
      revealed: bool[N], the cells revealed so far.
      started: bool[], whether the first reveal (which places the mines) happened.
      feedback: int32[], feedback code of the last turn.
    """

    mines: jax.Array
    counts: jax.Array
    revealed: jax.Array
    started: jax.Array
    feedback: jax.Array


class Minesweeper(TextEnv):
    """Reveal-only Minesweeper on a fixed-size board (see the module docstring).

    Task: ``uint32[2]`` PRNG key data; the board is ``board(task, first_cell)``.
    Actions: ``i = r * cols + c`` reveals cell ``(r, c)`` (text ``\\boxed{reveal r c}``).
    """

    def __init__(self, rows: int = 5, cols: int = 5, num_mines: int = 5, max_turns: int = 8,
                 env_id: str = "game:Minesweeper-v0-only-reveal", text: str = "gem"):
        super().__init__(max_turns, text)
        if rows < 1 or cols < 1 or max(rows, cols) > self.num.size - 1:
            raise ValueError(f"Minesweeper needs 1 <= rows, cols <= {self.num.size - 1}, got {rows} x {cols}")
        rr, cc = np.divmod(np.arange(rows * cols), cols)
        free = [int(((np.abs(rr - r) > 1) | (np.abs(cc - c) > 1)).sum()) for r, c in zip(rr, cc)]
        if not 0 <= num_mines <= min(free):
            raise ValueError(
                f"num_mines={num_mines} does not fit a {rows} x {cols} board outside the 3 x 3 square around every "
                f"possible first click (at most {min(free)})"
            )
        self.env_id = env_id
        self.rows, self.cols, self.num_mines = rows, cols, num_mines
        self.num_cells = rows * cols
        self.action_contents = [f"reveal {r} {c}" for r in range(rows) for c in range(cols)]
        self._rules = self.book.add(
            f"You are playing Minesweeper on a {rows} x {cols} board that hides {num_mines} mines.\n"
            "Your goal is to reveal every cell that does not hold a mine, within ",
            " turns. Revealing a mine ends the game at once. A revealed cell shows how many of its 8 neighbouring "
            "cells hold mines; revealing a cell with no neighbouring mine also reveals the cells around it, and so "
            "on. Your first reveal is always safe: the mines are placed after it, outside the 3 x 3 square around "
            "it. Rows and columns are numbered from 0. Answer with \\boxed{reveal ROW COL}, for example "
            "\\boxed{reveal 2 3}. On the board, '.' marks a cell that is not revealed yet.\n",
        )
        self._turn = self.book.add("At turn ", ", you revealed cell (", ", you chose cell (", ", ")
        self._tail = self.book.add(
            ").\n",
            "), which is already revealed, so the turn is used up.\n",
            ") and hit a mine. Game over!\n",
            "). Every safe cell is now revealed: you cleared the board!\n",
        )
        self._board_head = self.book.add_one(
            "Board:\n   " + "".join(f"{c:>3}" for c in range(cols)) + "\n"
        )
        self._row_label = self.book.add(*[f"{r:>2} " for r in range(rows)])
        self._cell = self.book.add("  .", *[f"  {k}" for k in range(9)])
        self._newline = self.book.add_one("\n")
        board_layout = [slot(self._board_head)]
        for _ in range(rows):
            board_layout += [slot(self._row_label)] + [slot(self._cell)] * cols + [slot(self._newline)]
        self.game_layout = [
            slot(self._rules), slot(self.num), slot(self._rules),  # opening
            slot(self._turn), slot(self.num), slot(self._turn), slot(self.num), slot(self._turn), slot(self.num),
            slot(self._tail),  # feedback
            *board_layout,
        ]
        self.opening_slots = (0, 1, 2)
        r, c = np.divmod(np.arange(self.num_cells), cols)
        # Bitboard masks (boards of <= 32 cells): cells not in the first column, not in the last, all cells.
        self._bitmasks = (
            sum(1 << i for i in range(self.num_cells) if c[i] > 0),
            sum(1 << i for i in range(self.num_cells) if c[i] < cols - 1),
            (1 << self.num_cells) - 1,
        )
        # _square[i, j]: cell j is in the 3 x 3 square centred on cell i.
        self._square = jnp.asarray((np.abs(r[:, None] - r) <= 1) & (np.abs(c[:, None] - c) <= 1), jnp.float32)

    # ------------------------------------------------------------------ board helpers (flat [N] arrays)
    def _shifts(self, x, fill):
        """The 9 shifted copies (3 x 3 neighbourhood, centre included) of a flat ``[N]`` array: ``[9, N]``."""
        grid = jnp.pad(x.reshape(self.rows, self.cols), 1, constant_values=fill)
        return jnp.stack([
            grid[1 + dr: 1 + dr + self.rows, 1 + dc: 1 + dc + self.cols].reshape(-1)
            for dr in (-1, 0, 1) for dc in (-1, 0, 1)
        ])

    def _near(self, x):
        """``bool[N]``: cells in the 3 x 3 square around any True cell of ``x`` (a matmul with the
        constant neighbourhood matrix, which is faster on CPU than shifted copies)."""
        return (x.astype(jnp.float32) @ self._square) > 0

    def board(self, task, first):
        """The board of ``task`` when the first reveal is cell ``first``: ``(mines bool[N], counts int32[N])``."""
        n = self.num_cells
        key = jax.random.fold_in(jax.random.wrap_key_data(jnp.asarray(task, jnp.uint32), impl="threefry2x32"), first)
        idx = jnp.arange(n)
        allowed = (jnp.abs(idx // self.cols - first // self.cols) > 1) | (jnp.abs(idx % self.cols - first % self.cols) > 1)
        scores = jnp.where(allowed, jax.random.uniform(key, (n,)), 2.0)
        # The num_mines lowest scores are mines. Ranks by pairwise comparison (ties broken by index, as a
        # stable argsort) are much faster than a sort on CPU under vmap.
        lower = (scores[None, :] < scores[:, None]) | ((scores[None, :] == scores[:, None]) & (idx[None, :] < idx[:, None]))
        mines = lower.sum(axis=1) < self.num_mines
        counts = self._shifts(mines.astype(jnp.int32), 0).sum(axis=0) - mines.astype(jnp.int32)
        return mines, counts.astype(jnp.int32)

    def three_bv(self, mines, counts):
        """``int32[]``: the minimum number of clicks that clears the board (zero regions + isolated numbers)."""
        n = self.num_cells
        zero = ~mines & (counts == 0)
        idx = jnp.arange(n)

        def spread(_, label):  # every zero region converges to its smallest cell index
            return jnp.where(zero, self._shifts(label, n).min(axis=0), n)

        label = jax.lax.fori_loop(0, n, spread, jnp.where(zero, idx, n))
        regions = jnp.sum(zero & (label == idx))
        isolated = jnp.sum(~mines & ~self._near(zero))
        return (regions + isolated).astype(jnp.int32)

    def _flood(self, cell, zero):
        """``bool[N]``: the cells revealed by revealing ``cell`` (8-neighbour flood fill through zeros).

        Boards of at most 32 cells flood as bitboards (one uint32 per board: a handful of shifts per round,
        far cheaper on CPU than array ops); larger boards use the array form.
        """
        if self.num_cells > 32:
            return self._flood_arrays(cell, zero)
        bit = jnp.left_shift(jnp.uint32(1), jnp.arange(self.num_cells, dtype=jnp.uint32))
        zero_bits = jnp.sum(jnp.where(zero, bit, jnp.uint32(0)), dtype=jnp.uint32)
        not_first_col, not_last_col, board_bits = (jnp.uint32(m) for m in self._bitmasks)
        cols = jnp.uint32(self.cols)

        def near(x):  # the 3 x 3 squares around the set bits of x
            x = x | ((x & not_last_col) << 1) | ((x & not_first_col) >> 1)
            return (x | (x << cols) | (x >> cols)) & board_bits

        def grow(carry):
            opened, _ = carry
            grown = opened | near(opened & zero_bits)
            return grown, grown != opened

        opened = jnp.left_shift(jnp.uint32(1), jnp.asarray(cell, jnp.uint32))
        opened = jax.lax.while_loop(lambda c: c[1], grow, (opened, jnp.ones((), bool)))[0]
        return (opened & bit) != 0

    def _flood_arrays(self, cell, zero):
        opened = jnp.arange(self.num_cells) == cell

        def grow(carry):
            opened, _ = carry
            grown = opened | self._near(opened & zero)
            return grown, jnp.any(grown != opened)

        # Stops as soon as nothing changes (at most num_cells rounds); under vmap, when all envs converge.
        return jax.lax.while_loop(lambda c: c[1], grow, (opened, jnp.ones((), bool)))[0]

    # ------------------------------------------------------------------ game
    def sample_task(self, key, params):
        return jax.random.bits(key, (2,), jnp.uint32)

    def init_game(self, key, task, params):
        n = self.num_cells
        return MinesweeperGame(
            mines=jnp.zeros((n,), bool), counts=jnp.zeros((n,), jnp.int32), revealed=jnp.zeros((n,), bool),
            started=jnp.zeros((), bool), feedback=jnp.full((), _NONE, jnp.int32),
        )

    def game_step(self, key, state: TextEnvState, action, params):
        g = state.game
        new_mines, new_counts = self.board(state.task, action)
        mines = jnp.where(g.started, g.mines, new_mines)
        counts = jnp.where(g.started, g.counts, new_counts)
        hit = mines[action]
        repeat = g.revealed[action]
        opened = self._flood(action, ~mines & (counts == 0))
        revealed = jnp.where(hit | repeat, g.revealed, g.revealed | opened)
        cleared = ~hit & jnp.all(revealed | mines)
        feedback = jnp.select([hit, repeat, cleared], [_MINE, _REPEAT, _CLEARED], _REVEALED).astype(jnp.int32)
        game = MinesweeperGame(mines=mines, counts=counts, revealed=revealed, started=jnp.ones((), bool),
                               feedback=feedback)
        return game, jnp.select([hit, cleared], [LOST, WON], RUNNING).astype(jnp.int32)

    def valid_actions(self, state):
        return ~state.game.revealed

    def oracle_action(self, key, state: TextEnvState):
        """First click of smallest 3BV, then one cell per zero region, then the remaining safe cells."""
        g = state.game
        cells = jnp.arange(self.num_cells)
        bv = jax.vmap(lambda c: self.three_bv(*self.board(state.task, c)))(cells)
        first = jnp.argmin(bv)
        safe = ~g.revealed & ~g.mines
        zero = safe & (g.counts == 0)
        later = jnp.where(zero.any(), jnp.argmax(zero), jnp.argmax(safe))
        return jnp.where(g.started, later, first).astype(jnp.int32)

    # ------------------------------------------------------------------ text
    def game_pieces(self, state: TextEnvState):
        g = state.game
        opening = state.time == 0
        fb = g.feedback
        act = jnp.maximum(state.last_action, 0)
        feedback = jnp.stack([
            self._turn[0], self.number(state.time),
            jnp.where(fb == _REPEAT, self._turn[2], self._turn[1]),
            self.number(act // self.cols), self._turn[3], self.number(act % self.cols),
            jnp.select([fb == _REPEAT, fb == _MINE, fb == _CLEARED], [self._tail[1], self._tail[2], self._tail[3]],
                       self._tail[0]),
        ])
        rules = jnp.stack([self._rules[0], self.number(state.max_turns), self._rules[1]])
        top = jnp.where(
            opening,
            jnp.concatenate([rules, jnp.full((7,), EMPTY)]),
            jnp.concatenate([jnp.full((3,), EMPTY), feedback]),
        )
        cells = jnp.where(g.revealed, self._cell[1 + g.counts], self._cell[0]).reshape(self.rows, self.cols)
        rows = jnp.concatenate([
            jnp.asarray(self._row_label[jnp.arange(self.rows)])[:, None], cells,
            jnp.full((self.rows, 1), self._newline[0]),
        ], axis=1).reshape(-1)
        return jnp.concatenate([top, jnp.stack([self._board_head[0]]), rows]).astype(jnp.int32)

    def render_game_text(self, state):
        g = state.game
        t = int(state.time)
        if t == 0:
            text = (
                f"You are playing Minesweeper on a {self.rows} x {self.cols} board that hides {self.num_mines} mines.\n"
                f"Your goal is to reveal every cell that does not hold a mine, within {int(state.max_turns)} turns. "
                "Revealing a mine ends the game at once. A revealed cell shows how many of its 8 neighbouring cells "
                "hold mines; revealing a cell with no neighbouring mine also reveals the cells around it, and so on. "
                "Your first reveal is always safe: the mines are placed after it, outside the 3 x 3 square around it. "
                "Rows and columns are numbered from 0. Answer with \\boxed{reveal ROW COL}, for example "
                "\\boxed{reveal 2 3}. On the board, '.' marks a cell that is not revealed yet.\n"
            )
        else:
            r, c = divmod(int(state.last_action), self.cols)
            fb = int(g.feedback)
            if fb == _REPEAT:
                text = f"At turn {t}, you chose cell ({r}, {c}), which is already revealed, so the turn is used up.\n"
            elif fb == _MINE:
                text = f"At turn {t}, you revealed cell ({r}, {c}) and hit a mine. Game over!\n"
            elif fb == _CLEARED:
                text = f"At turn {t}, you revealed cell ({r}, {c}). Every safe cell is now revealed: you cleared the board!\n"
            else:
                text = f"At turn {t}, you revealed cell ({r}, {c}).\n"
        lines = ["Board:", "   " + "".join(f"{c:>3}" for c in range(self.cols))]
        revealed = np.asarray(g.revealed).reshape(self.rows, self.cols)
        counts = np.asarray(g.counts).reshape(self.rows, self.cols)
        for r in range(self.rows):
            marks = [str(int(counts[r, c])) if revealed[r, c] else "." for c in range(self.cols)]
            lines.append(f"{r:>2} " + "".join(f"{m:>3}" for m in marks))
        return text + "\n".join(lines) + "\n"
