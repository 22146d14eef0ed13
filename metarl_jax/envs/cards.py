"""Playing cards for Blackjack: names, values, hand totals, and the two deals (ORBIT's and ``table10``'s; the
rules are in :mod:`metarl_jax.envs.blackjack`)."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

RANKS = ["A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K"]
SUITS = ["clubs", "diamonds", "hearts", "spades"]
# Card c (0..51) has rank RANKS[c % 13] and suit SUITS[c // 13]; its hard value (an ace counts 1):
HARD_VALUE = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 10, 10] * 4, np.int32)
CARD_NAMES = [f"{RANKS[c % 13]} of {SUITS[c // 13]}" for c in range(52)]
# A hand stays at most 21 with at most 9 hits: the 11 smallest cards (four aces, four 2s, three 3s) total 21.
MAX_USEFUL_HITS = 9


def hand_total(hard: jax.Array, has_ace: jax.Array) -> jax.Array:
    """Best total of a hand from its hard total (aces as 1) and whether it holds an ace."""
    return jnp.where(has_ace & (hard + 10 <= 21), hard + 10, hard)


def host_total(cards) -> int:
    """The best total of a list of card ids (host side)."""
    values = [int(HARD_VALUE[int(c)]) for c in cards]
    return sum(values) + 10 if 1 in values and sum(values) + 10 <= 21 else sum(values)


# The ordered pairs of distinct cards worth 17..21 together: the dealer's possible hands, int32[P, 2].
DEALER_PAIRS = np.array([(a, b) for a in range(52) for b in range(52) if a != b and 17 <= host_total([a, b]) <= 21],
                        np.int32)


def value_multisets(max_size: int) -> np.ndarray:
    """int32[S, 10]: every multiset of card values 1..10 of size <= max_size, as value counts, by size then
    lexicographically."""
    sets = [s for n in range(max_size + 1) for s in itertools.combinations_with_replacement(range(10), n)]
    counts = np.zeros((len(sets), 10), np.int32)
    for i, s in enumerate(sets):
        np.add.at(counts[i], list(s), 1)
    return counts


@struct.dataclass
class BlackjackTask:
    """The deck and the deal it implies.

    Attributes:
      deck: int32[52], the shuffled deck (card ids).
      player: int32[2], the player's cards.
      dealer: int32[2], the dealer's cards (total 17..21; under ORBIT's rules the second is face down).
      table: int32[K], the face-down cards at positions 0..K-1.
    """

    deck: jax.Array
    player: jax.Array
    dealer: jax.Array
    table: jax.Array


def deal_table(deck: jax.Array, table_size: int) -> BlackjackTask:
    """The ``table10`` task of a shuffled deck ``int32[52]``: the player gets positions 0 and 1, the table the
    last ``table_size`` cards, the dealer the lexicographically first pair of the cards between whose total is
    17..21."""
    middle = deck[2: 52 - table_size]
    hard = jnp.asarray(HARD_VALUE)[middle]
    ace = hard == 1
    pair_total = hand_total(hard[:, None] + hard[None, :], ace[:, None] | ace[None, :])
    n = middle.shape[0]
    ok = (pair_total >= 17) & (pair_total <= 21) & (jnp.arange(n)[:, None] < jnp.arange(n)[None, :])
    first = jnp.argmax(ok.reshape(-1))  # lexicographically first (i, j)
    return BlackjackTask(deck=deck, player=deck[:2], dealer=jnp.stack([middle[first // n], middle[first % n]]),
                         table=deck[52 - table_size:])


def deal_orbit(key: jax.Array) -> BlackjackTask:
    """ORBIT's deal: ``deck`` is the dealer's pair (uniform over ``DEALER_PAIRS``), the player's two cards, then
    the 48 deck positions, the 50 in uniform random order."""
    k_pair, k_order = jax.random.split(key)
    pair = jnp.asarray(DEALER_PAIRS)[jax.random.randint(k_pair, (), 0, len(DEALER_PAIRS))]
    # Sorting uniform keys orders the cards uniformly; the dealer's two go first, in their drawn order.
    sort_key = jax.random.uniform(k_order, (52,)).at[pair].set(jnp.asarray([-2.0, -1.0]))
    deck = jnp.argsort(sort_key).astype(jnp.int32)
    return BlackjackTask(deck=deck, player=deck[2:4], dealer=deck[:2], table=deck[4:])
