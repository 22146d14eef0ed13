"""Blackjack with a fixed deck and chosen cards (ORBIT's ``game:Blackjack-v0``), JAX-native.

Rules. A standard 52-card deck is shuffled once per task. The player is dealt two cards, face up. The dealer
gets two face-up cards worth 17 to 21 and never draws. ``table_size`` (10) other cards lie face down on the
table at positions ``0 .. table_size - 1``. Each turn the agent either takes the card
at a position, ``\\boxed{hit 3}`` (a position already taken costs the turn and says so), or ends the game,
``\\boxed{stand}``. Card values: 2..10 their number, J/Q/K 10, an ace 11 unless that would push the total
over 21, then 1 (soft totals). Going over 21 ends the episode LOST. Standing ends it: WON iff the player's
total is at most 21 and beats the dealer's (a tie loses). Running out of turns (``max_turns`` = 4) without
standing is a loss (the base class's truncation). Every episode of a trial uses the same deck, so an agent
can learn which positions hold good cards.

Task distribution: a uniform permutation of the deck. The player gets deck positions 0 and 1 and the table
is the deck's last ``table_size`` cards (positions ``52 - table_size .. 51``), so every table position holds a
uniformly random card. The dealer's pair is the first pair of positions ``(i, j)``, ``2 <= i < j <
52 - table_size``, in lexicographic order, whose two cards total 17..21; such a pair always exists because at
most ``2 + table_size <= 14`` of the 16 ten-valued cards lie outside that range (hence ``table_size <= 12``).
(Taking the table from the cards right after the dealer's pair instead would skew the first table positions
towards small cards, which can never be part of a 17..21 pair and are skipped by the dealer's search.)
Cards are named like ``7 of hearts``, ``K of spades``, ``A of clubs``, ``10 of diamonds``.

Actions: ``hit 0`` .. ``hit {table_size - 1}`` (indices ``0 .. table_size - 1``), then ``stand`` (index
``table_size``).

GEM has no Blackjack; the rules follow ORBIT's description (the paper and its released code;
``docs/differences_from_orbit.md``). The per-episode texts are ours. ``oracle_action`` reads the deck: it searches the subsets of the untaken positions (of size
at most the turns left minus one, enumerated statically up to ``default_max_turns - 1``) for one whose cards
make a winning stand, hits its positions and then stands (and stands when no subset wins).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from metarl_jax.envs.base import LOST, RUNNING, WON, TextEnv, TextEnvState
from metarl_jax.envs.pieces import EMPTY, slot

RANKS = ["A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K"]
SUITS = ["clubs", "diamonds", "hearts", "spades"]
# Card c (0..51) has rank RANKS[c % 13] and suit SUITS[c // 13]; its hard value (an ace counts 1):
HARD_VALUE = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 10, 10] * 4, np.int32)
CARD_NAMES = [f"{RANKS[c % 13]} of {SUITS[c // 13]}" for c in range(52)]

# feedback codes of the last turn
_NONE, _HIT, _TAKEN, _BUST, _STAND_WIN, _STAND_LOSE, _STAND_TIE = range(7)


def hand_total(hard: jax.Array, has_ace: jax.Array) -> jax.Array:
    """Best total of a hand from its hard total (aces as 1) and whether it holds an ace."""
    return jnp.where(has_ace & (hard + 10 <= 21), hard + 10, hard)


@struct.dataclass
class BlackjackTask:
    """The deck and the deal it implies.

    Attributes:
      deck: int32[52], the shuffled deck (card ids).
      player: int32[2], the player's cards.
      dealer: int32[2], the dealer's cards (total 17..21).
      table: int32[K], the face-down cards at positions 0..K-1.
    """

    deck: jax.Array
    player: jax.Array
    dealer: jax.Array
    table: jax.Array


@struct.dataclass
class BlackjackGame:
    """Per-episode state.

    Attributes:
      taken: bool[K], positions already taken.
      hard: int32[], the player's hard total (aces as 1).
      has_ace: bool[], whether the player holds an ace.
      feedback: int32[], feedback code of the last turn.
    """

    taken: jax.Array
    hard: jax.Array
    has_ace: jax.Array
    feedback: jax.Array


class Blackjack(TextEnv):
    """Blackjack against a fixed dealer hand, hitting chosen face-down cards (see the module docstring).

    Task: :class:`BlackjackTask`. Actions: ``hit i`` for ``i < table_size``, then ``stand``.
    """

    def __init__(self, table_size: int = 10, max_turns: int = 4, env_id: str = "game:Blackjack-v0",
                 text: str = "gem"):
        super().__init__(max_turns, text)
        if not 1 <= table_size <= 12:
            raise ValueError(f"Blackjack needs 1 <= table_size <= 12 (so the dealer can always be dealt 17..21), "
                             f"got {table_size}")
        self.env_id = env_id
        self.table_size = K = table_size
        self.stand = K
        self.action_contents = [f"hit {i}" for i in range(K)] + ["stand"]
        self._rules = self.book.add(
            "You are playing Blackjack against a dealer. Cards 2 to 10 are worth their number, J, Q and K are worth "
            "10, and an A is worth 11 unless that would take the hand over 21, in which case it is worth 1.\n"
            f"{K} cards lie face down on the table at positions 0 to {K - 1}. You have ",
            " turns. Each turn, either take the card at one position with \\boxed{hit POSITION}, for example "
            "\\boxed{hit 3}, or end the game with \\boxed{stand}. Going over 21 loses at once. When you stand, you "
            "win if your total beats the dealer's; a tie loses. The dealer never takes more cards. If you run out "
            "of turns without standing, you lose.\nYour cards: ",
            " and ",
            " (total ",
            ").\nThe dealer's cards: ",
            ").\n",
        )
        self.cards = self.book.add(*CARD_NAMES)
        self._turn = self.book.add(
            "At turn ",
            ", you took the card at position ",
            ", you chose position ",
            ", you stand with ",
        )
        self._mid = self.book.add(
            ": ",
            ", but that card was already taken. Your total is still ",
            " against the dealer's ",
        )
        self._sep = self.book.add(". Your total is ", ". ")
        self._tail = self.book.add(
            ".\n",
            ". That is over 21: you bust and lose.\n",
            "You win!\n",
            "You lose.\n",
            "It is a tie, and a tie loses.\n",
        )
        self.game_layout = [
            # opening: rules, max_turns, rules, card, " and ", card, " (total ", T, dealer..., D, ").\n"
            slot(self._rules), slot(self.num), slot(self._rules), slot(self.cards), slot(self._rules),
            slot(self.cards), slot(self._rules), slot(self.num), slot(self._rules), slot(self.cards),
            slot(self._rules), slot(self.cards), slot(self._rules), slot(self.num), slot(self._rules),
            # feedback
            slot(self._turn), slot(self.num), slot(self._turn), slot(self.num), slot(self._mid),
            slot(self.cards, self.num), slot(self._sep), slot(self.num), slot(self._tail),
        ]
        self.opening_slots = tuple(range(15))
        # Hit subsets the oracle searches, by size then lexicographically: bool[S, K] and their sizes int32[S].
        size_cap = min(K, self.default_max_turns - 1)
        subsets = [s for n in range(size_cap + 1) for s in itertools.combinations(range(K), n)]
        self._subsets = np.zeros((len(subsets), K), bool)
        for i, s in enumerate(subsets):
            self._subsets[i, list(s)] = True
        self._subset_size = self._subsets.sum(1).astype(np.int32)

    # ------------------------------------------------------------------ game
    def deal(self, deck):
        """The task of a shuffled deck ``int32[52]`` (see the module docstring for the dealing rule)."""
        middle = deck[2: 52 - self.table_size]
        hard = jnp.asarray(HARD_VALUE)[middle]
        ace = hard == 1
        pair_total = hand_total(hard[:, None] + hard[None, :], ace[:, None] | ace[None, :])
        n = middle.shape[0]
        ok = (pair_total >= 17) & (pair_total <= 21) & (jnp.arange(n)[:, None] < jnp.arange(n)[None, :])
        first = jnp.argmax(ok.reshape(-1))  # lexicographically first (i, j)
        return BlackjackTask(deck=deck, player=deck[:2], dealer=jnp.stack([middle[first // n], middle[first % n]]),
                             table=deck[52 - self.table_size:])

    def sample_task(self, key, params):
        return self.deal(jax.random.permutation(key, 52).astype(jnp.int32))

    def _total(self, cards):
        hard = jnp.asarray(HARD_VALUE)[cards]
        return hand_total(hard.sum(), (hard == 1).any())

    def init_game(self, key, task, params):
        hard = jnp.asarray(HARD_VALUE)[task.player]
        return BlackjackGame(
            taken=jnp.zeros((self.table_size,), bool), hard=hard.sum().astype(jnp.int32),
            has_ace=(hard == 1).any(), feedback=jnp.full((), _NONE, jnp.int32),
        )

    def game_step(self, key, state: TextEnvState, action, params):
        g = state.game
        stand = action == self.stand
        pos = jnp.minimum(action, self.table_size - 1)
        taken = g.taken[pos] & ~stand
        draw = ~stand & ~taken
        value = jnp.asarray(HARD_VALUE)[state.task.table[pos]]
        hard = jnp.where(draw, g.hard + value, g.hard).astype(jnp.int32)
        has_ace = g.has_ace | (draw & (value == 1))
        total = hand_total(hard, has_ace)
        dealer = self._total(state.task.dealer)
        bust = hard > 21
        feedback = jnp.select(
            [stand & (total > dealer), stand & (total == dealer), stand, taken, bust],
            [_STAND_WIN, _STAND_TIE, _STAND_LOSE, _TAKEN, _BUST],
            _HIT,
        ).astype(jnp.int32)
        game = BlackjackGame(taken=g.taken | (draw & (jnp.arange(self.table_size) == pos)), hard=hard,
                             has_ace=has_ace, feedback=feedback)
        outcome = jnp.select([feedback == _STAND_WIN, (feedback == _BUST) | (feedback == _STAND_LOSE)
                              | (feedback == _STAND_TIE)], [WON, LOST], RUNNING)
        return game, outcome.astype(jnp.int32)

    def valid_actions(self, state):
        return jnp.concatenate([~state.game.taken, jnp.ones((1,), bool)])

    def oracle_action(self, key, state: TextEnvState):
        """Hits the lowest position of the first winning subset of untaken cards (size <= turns left - 1)."""
        g = state.game
        subsets = jnp.asarray(self._subsets)
        values = jnp.asarray(HARD_VALUE)[state.task.table]
        hard = g.hard + subsets.astype(jnp.int32) @ values
        ace = g.has_ace | (subsets & (values == 1)).any(1)
        total = hand_total(hard, ace)
        left = state.max_turns - state.time
        wins = ((total > self._total(state.task.dealer)) & (hard <= 21) & ~(subsets & g.taken).any(1)
                & (jnp.asarray(self._subset_size) <= left - 1))
        plan = subsets[jnp.argmax(wins)]
        return jnp.where(wins.any() & plan.any(), jnp.argmax(plan), self.stand).astype(jnp.int32)

    # ------------------------------------------------------------------ text
    def game_pieces(self, state: TextEnvState):
        g, task = state.game, state.task
        opening = state.time == 0
        rules = jnp.stack([
            self._rules[0], self.number(state.max_turns), self._rules[1],
            self.cards[task.player[0]], self._rules[2], self.cards[task.player[1]], self._rules[3],
            self.number(self._total(task.player)), self._rules[4],
            self.cards[task.dealer[0]], self._rules[2], self.cards[task.dealer[1]], self._rules[3],
            self.number(self._total(task.dealer)), self._rules[5],
        ])
        fb = g.feedback
        stand = (fb == _STAND_WIN) | (fb == _STAND_LOSE) | (fb == _STAND_TIE)
        hit = (fb == _HIT) | (fb == _BUST)
        pos = jnp.clip(state.last_action, 0, self.table_size - 1)
        total = self.number(hand_total(g.hard, g.has_ace))
        feedback = jnp.stack([
            self._turn[0], self.number(state.time),
            jnp.select([stand, hit], [self._turn[3], self._turn[1]], self._turn[2]),
            jnp.where(stand, total, self.number(pos)),
            jnp.select([stand, hit], [self._mid[2], self._mid[0]], self._mid[1]),
            jnp.select([stand, hit], [self.number(self._total(task.dealer)), self.cards[task.table[pos]]], EMPTY),
            jnp.select([stand, hit], [self._sep[1], self._sep[0]], EMPTY),
            jnp.where(stand, EMPTY, total),
            jnp.select(
                [fb == _BUST, fb == _STAND_WIN, fb == _STAND_LOSE, fb == _STAND_TIE],
                [self._tail[1], self._tail[2], self._tail[3], self._tail[4]],
                self._tail[0],
            ),
        ])
        return jnp.where(
            opening,
            jnp.concatenate([rules, jnp.full((9,), EMPTY)]),
            jnp.concatenate([jnp.full((15,), EMPTY), feedback]),
        ).astype(jnp.int32)

    def render_game_text(self, state):
        task, g = state.task, state.game
        t = int(state.time)

        def total(cards):
            vals = [int(HARD_VALUE[int(c)]) for c in cards]
            s = sum(vals)
            return s + 10 if 1 in vals and s + 10 <= 21 else s

        if t == 0:
            p, d = [CARD_NAMES[int(c)] for c in task.player], [CARD_NAMES[int(c)] for c in task.dealer]
            k = self.table_size
            return (
                "You are playing Blackjack against a dealer. Cards 2 to 10 are worth their number, J, Q and K are "
                "worth 10, and an A is worth 11 unless that would take the hand over 21, in which case it is worth "
                f"1.\n{k} cards lie face down on the table at positions 0 to {k - 1}. You have "
                f"{int(state.max_turns)} turns. Each turn, either take the card at one position with "
                "\\boxed{hit POSITION}, for example \\boxed{hit 3}, or end the game with \\boxed{stand}. Going over "
                "21 loses at once. When you stand, you win if your total beats the dealer's; a tie loses. The dealer "
                "never takes more cards. If you run out of turns without standing, you lose.\n"
                f"Your cards: {p[0]} and {p[1]} (total {total(task.player)}).\n"
                f"The dealer's cards: {d[0]} and {d[1]} (total {total(task.dealer)}).\n"
            )
        hard = int(g.hard)
        mine = hard + 10 if bool(g.has_ace) and hard + 10 <= 21 else hard
        fb = int(g.feedback)
        if fb in (_STAND_WIN, _STAND_LOSE, _STAND_TIE):
            verdict = {_STAND_WIN: "You win!", _STAND_LOSE: "You lose.", _STAND_TIE: "It is a tie, and a tie loses."}[fb]
            return f"At turn {t}, you stand with {mine} against the dealer's {total(task.dealer)}. {verdict}\n"
        pos = int(state.last_action)
        if fb == _TAKEN:
            return f"At turn {t}, you chose position {pos}, but that card was already taken. Your total is still {mine}.\n"
        card = CARD_NAMES[int(task.table[pos])]
        end = ". That is over 21: you bust and lose.\n" if fb == _BUST else ".\n"
        return f"At turn {t}, you took the card at position {pos}: {card}. Your total is {mine}{end}"
