"""Blackjack with a fixed deck and chosen cards (ORBIT's ``game:Blackjack-v0``), JAX-native.

Rules (``rules="orbit"``, the id ``game:Blackjack-v0``; ORBIT: XiaofengLin7/ORBIT envs/blackjack_env_adapter.py).
A standard 52-card deck is shuffled once per task. The dealer gets two cards worth 17 to 21 and never draws;
the first is face up, the second face down until the episode ends. The player is dealt two cards, face up. The
other 48 cards of the deck lie face down at positions ``0 .. 47``. Each turn the agent either takes the card at a
position, ``\\boxed{hit 3}``, or ends the game, ``\\boxed{stand}``; choosing a position whose card was already
taken stands (ORBIT: an index no longer available falls back to stand). Card values: 2..10 their number, J/Q/K
10, an ace 11 unless that would push the total over 21, then 1 (soft totals). Going over 21 ends the episode
LOST. Standing ends it: WON iff the player's total is at most 21 and beats the dealer's (a tie loses). Running
out of turns (``max_turns`` = 4) without standing is a loss (the base class's truncation). However the episode
ends (a stand, a bust, the turn limit, a format error), its last observation then shows the dealer's face-down
card, as ORBIT's final observation shows the dealer's cards. Every episode of a trial uses the same deck, so an
agent can learn which positions hold good cards, and the dealer's hidden card.

Task distribution (ORBIT's deal): the dealer's pair is uniform over the ordered pairs of distinct cards worth 17
to 21 together (ORBIT reshuffles until the first two cards are; it gives up after 50 reshuffles, which happens
with probability below 1e-9 and is ignored here); the other 50 cards are in uniform random order, the player's
two first, then the 48 deck positions.

Variant ``rules="table10"`` (the id ``game:Blackjack-v0-table10``: this env's rules before ORBIT's became the
default). Only 10 cards lie face down, on a table, at positions ``0 .. 9``; both dealer cards are face up from
the start, with their total; choosing a taken position costs the turn and says so. The deal: the player gets
deck positions 0 and 1 of a uniform permutation, the table is the deck's last 10 cards (positions 42 .. 51),
and the dealer's pair is the first pair of positions ``(i, j)``, ``2 <= i < j < 42``, in lexicographic order,
whose two cards total 17..21 (such a pair always exists: at most 12 of the 16 ten-valued cards lie outside that
range). Taking the table from the cards right after the dealer's pair instead would skew the first table
positions towards small cards, which can never be part of a 17..21 pair and are skipped by that search.

Cards are named like ``7 of hearts``, ``K of spades``, ``A of clubs``, ``10 of diamonds`` (ORBIT shows values
only: ``A``, ``2`` .. ``10``; a suit tells nothing more about a card's value). Actions: ``hit 0`` ..
``hit {K - 1}`` (indices ``0 .. K - 1``, K = 48 or 10), then ``stand`` (index ``K``).

``text="terse"``: the rules in one line, cards by rank (``K``), then one line per turn after the action: `` 7 total
18``, `` 9 total 27 bust``, `` 18 against 17 win`` (a stand: the totals and the verdict), `` taken, ...``. Only
the rules count as the opening: with ``repeat_opening=False`` every episode still opens with the hands.

Differences from ORBIT (both rule sets): the texts are ours, and each turn tells what changed (the card taken,
the new total, the verdict) instead of re-listing the hands, the whole deck with the taken cards shown, and the
available positions (all of which follow from the earlier observations). An answer that is not an action is a
format error that ends the episode, as in every env here (ORBIT stands). GEM has no Blackjack.

``oracle_action`` reads the deck: it searches the multisets of card values, of size at most the turns left
minus one, that the untaken positions can supply, for one whose cards make a winning stand; it hits a position
holding one of that multiset's values (the lowest such position) and stands once the hand wins as it is, or
when no multiset wins. Taking the smallest winning multiset first keeps the plan within the turns left.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from metarl_jax.envs.base import FORMAT_ERROR, LOST, OUT_OF_TURNS, RUNNING, WON, TextEnv, TextEnvState, to_host
from metarl_jax.envs.cards import (
    CARD_NAMES,
    HARD_VALUE,
    MAX_USEFUL_HITS,
    RANKS,
    deal_orbit,
    deal_table,
    hand_total,
    host_total,
    value_multisets,
)
from metarl_jax.envs.pieces import EMPTY, slot

RULES = ("orbit", "table10")
TABLE_SIZES = {"orbit": 48, "table10": 10}
# The scripted player (consistent_actions) stands from this total on: the lowest that can beat a dealer's 17.
STAND_FROM = 18

# feedback codes of the last turn
_NONE, _HIT, _TAKEN, _BUST, _STAND_WIN, _STAND_LOSE, _STAND_TIE = range(7)
_VERDICTS = {_STAND_WIN: "You win!\n", _STAND_LOSE: "You lose.\n", _STAND_TIE: "It is a tie, and a tie loses.\n"}
# text="terse": the words of a turn's line, and their indices
TERSE_WORDS = (" taken,", " total", " against", " bust\n", "\n", " win\n", " lose\n", " tie\n")
_TAKEN_WORD, _TOTAL_WORD, _AGAINST_WORD, _BUST_WORD, _END_WORD, _WIN_WORD, _LOSE_WORD, _TIE_WORD = range(8)
TERSE_VERDICTS = {_STAND_WIN: _WIN_WORD, _STAND_LOSE: _LOSE_WORD, _STAND_TIE: _TIE_WORD}  # feedback code -> word
TERSE_HAND_INTRO = "Your cards: "
MAX_TOTAL = 31  # the largest total a hand can show: at most 21 before its last hit, plus at most 10


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

    Task: :class:`~metarl_jax.envs.cards.BlackjackTask`. Actions: ``hit i`` for ``i < table_size``, then
    ``stand``. ``rules``: ``"orbit"`` (48 deck positions, the dealer's second card face down until the episode
    ends, a taken position stands) or ``"table10"`` (10 table positions, both dealer cards face up, a taken position
    wastes the turn).
    """

    text_styles = ("gem", "terse")

    def __init__(self, max_turns: int = 4, rules: str = "orbit", env_id: str = "game:Blackjack-v0",
                 text: str = "gem"):
        super().__init__(max_turns, text)
        if rules not in RULES:
            raise ValueError(f"Blackjack rules must be one of {RULES}, got {rules!r}")
        self.env_id = env_id
        self.orbit = rules == "orbit"
        self.table_size = K = TABLE_SIZES[rules]
        self.stand = K
        self.action_contents = [f"hit {i}" for i in range(K)] + ["stand"]
        self._add_pieces()
        # The value multisets the oracle searches (see the module docstring) and their sizes.
        self._multisets = value_multisets(min(self.default_max_turns - 1, MAX_USEFUL_HITS))
        self._multiset_size = self._multisets.sum(1).astype(np.int32)

    # ------------------------------------------------------------------ text pieces
    def _rules_text(self) -> tuple[str, str]:
        """The rules paragraph, around the number of turns."""
        K = self.table_size
        cards = "A is worth 11 unless that would take the hand over 21, in which case it is worth 1.\n"
        if self.orbit:
            where = f"The other {K} cards lie face down at positions 0 to {K - 1}. You have "
            taken = "If you take a position that was already taken, you stand. "
            dealer = "The dealer holds two cards, one face up and one face down, and never takes more cards. "
        else:
            where = f"{K} cards lie face down on the table at positions 0 to {K - 1}. You have "
            taken, dealer = "", "The dealer never takes more cards. "
        return (
            "You are playing Blackjack against a dealer. Cards 2 to 10 are worth their number, J, Q and K are worth "
            "10, and an " + cards + where,
            " turns. Each turn, either take the card at one position with \\boxed{hit POSITION}, for example "
            "\\boxed{hit 3}, or end the game with \\boxed{stand}. " + taken + "Going over 21 loses at once. When you "
            "stand, you win if your total beats the dealer's; a tie loses. " + dealer + "If you run out of turns "
            "without standing, you lose.\nYour cards: ",
        )

    def _terse_rules_text(self) -> tuple[str, str]:
        """text="terse": the rules in one line, around the number of turns."""
        first = (f"You are playing Blackjack: hit a position 0 to {self.table_size - 1} or stand, and beat the "
                 "dealer's total. Going over 21 loses. You have ")
        return first, " turns.\n"

    def _add_pieces(self) -> None:
        """Registers the pieces and builds the layout: opening, turn feedback, and (ORBIT) the dealer's reveal."""
        self._rules = self.book.add(*self._rules_text())
        self._hand = self.book.add(" and ", " (total ", ").\nThe dealer's cards: ", ").\n", " and a face-down card.\n")
        self.cards = self.book.add(*CARD_NAMES)
        self._turn = self.book.add("At turn ", ", you took the card at position ", ", you chose position ",
                                   ", you stand with ")
        self._mid = self.book.add(": ", ", but that card was already taken. Your total is still ",
                                  ", but that card was already taken, so you stand with ", " against the dealer's ")
        self._sep = self.book.add(". Your total is ", ". ", " against the dealer's ")
        self._tail = self.book.add(".\n", ". That is over 21: you bust and lose.\n", ". ")
        self._verdict = self.book.add(*_VERDICTS.values())
        self._reveal = self.book.add("The dealer's face-down card was ", "\nThe dealer's face-down card was ", ".\n")
        if self.terse:  # cards by rank only; one short line per turn (see render_game_text)
            self._rules = self.book.add(*self._terse_rules_text())
            self._hand_intro = self.book.add(TERSE_HAND_INTRO)
            self.cards = self.book.add(*[RANKS[c % 13] for c in range(52)])
            self._said_card = self.book.add(*[" " + RANKS[c % 13] for c in range(52)])
            self._said_total = self.book.add(*[f" {n}" for n in range(MAX_TOTAL + 1)])
            self._said = self.book.add(*TERSE_WORDS)
        cards, num, hand = slot(self.cards), slot(self.num), slot(self._hand)
        player = [slot(self._rules), num, slot(self._rules), cards, hand, cards, hand, num, hand, cards]
        dealer = [hand] if self.orbit else [hand, cards, hand, num, hand]
        opening = player + dealer
        if self.terse:  # the hand after the rules, in its own slot (see opening_slots below)
            opening.insert(3, slot(self._hand_intro))
            said, total = slot(self._said), slot(self._said_total)
            feedback = [slot(self._said_card, self._said), said, total, said, total, said]
        else:
            feedback = [slot(self._turn), num, slot(self._turn), num, slot(self._mid), slot(self.cards, self.num),
                        slot(self._sep), num, slot(self._tail), slot(self._verdict)]
        self.game_layout = opening + feedback
        # text="terse": only the rules are opening slots, so a trial without repeated openings still shows each
        # episode's first hand; an imitation corpus of independent games (new_task_each_episode) then shows
        # every new deal.
        self.opening_slots = (0, 1, 2) if self.terse else tuple(range(len(opening)))
        self.opening_shows_task = not self.terse  # the GEM opening holds the hands
        self._reveal_layout = [slot(self._reveal), cards, slot(self._reveal)] if self.orbit else []

    @property
    def layout(self):
        """The base layout, then (ORBIT's rules) the dealer's face-down card, shown once the episode has ended."""
        return [*super().layout, *self._reveal_layout]

    # ------------------------------------------------------------------ game
    def sample_task(self, key, params):
        if self.orbit:
            return deal_orbit(key)
        return deal_table(jax.random.permutation(key, 52).astype(jnp.int32), self.table_size)

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
        pos = jnp.minimum(action, self.table_size - 1)
        retaken = (action != self.stand) & g.taken[pos]
        stand = (action == self.stand) | (retaken & self.orbit)  # ORBIT: a taken position stands
        draw = ~stand & ~retaken
        value = jnp.asarray(HARD_VALUE)[state.task.table[pos]]
        hard = jnp.where(draw, g.hard + value, g.hard).astype(jnp.int32)
        has_ace = g.has_ace | (draw & (value == 1))
        total = hand_total(hard, has_ace)
        dealer = self._total(state.task.dealer)
        feedback = jnp.select(
            [stand & (total > dealer), stand & (total == dealer), stand, retaken, hard > 21],
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

    def consistent_actions(self, state: TextEnvState) -> jax.Array:
        """Below a total of 18 a stand is a sure loss (the dealer holds 17 or more and a tie loses), so every
        untaken position is allowed and ``stand`` is not; from 18 on, only ``stand`` (the scripted player keeps a
        hand that can win rather than risk it). Reads the player's total only, never the deck: a within-episode
        player who wins about 0.31 of ORBIT's deals with 4 turns (``tests/test_players.py``)."""
        g = state.game
        hit = hand_total(g.hard, g.has_ace) < STAND_FROM
        return jnp.concatenate([~g.taken & hit, (~hit)[None]])

    def oracle_action(self, key, state: TextEnvState):
        """Hits toward the smallest winning multiset of untaken card values (size <= turns left - 1), or stands."""
        g = state.game
        values = jnp.asarray(HARD_VALUE)[state.task.table]  # int32[K], 1..10
        left = ~g.taken
        supply = (jax.nn.one_hot(values - 1, 10, dtype=jnp.int32) * left[:, None]).sum(0)  # untaken cards per value
        multisets = jnp.asarray(self._multisets)
        hard = g.hard + multisets @ jnp.arange(1, 11, dtype=jnp.int32)
        total = hand_total(hard, g.has_ace | (multisets[:, 0] > 0))
        wins = ((total > self._total(state.task.dealer)) & (hard <= 21) & (multisets <= supply).all(1)
                & (jnp.asarray(self._multiset_size) <= state.max_turns - state.time - 1))
        plan = jnp.argmax(wins)
        value = jnp.argmax(multisets[plan] > 0) + 1  # a value the plan still needs
        position = jnp.argmax(left & (values == value))
        return jnp.where(wins.any() & (multisets[plan].sum() > 0), position, self.stand).astype(jnp.int32)

    # ------------------------------------------------------------------ text
    def game_pieces(self, state: TextEnvState):
        opening = self._opening_pieces(state)
        feedback = self._terse_feedback_pieces(state) if self.terse else self._feedback_pieces(state)
        blank = lambda n: jnp.full((n,), EMPTY)
        return jnp.where(
            state.time == 0,
            jnp.concatenate([opening, blank(feedback.shape[0])]),
            jnp.concatenate([blank(opening.shape[0]), feedback]),
        ).astype(jnp.int32)

    def _opening_pieces(self, state: TextEnvState) -> jax.Array:
        """The opening's piece ids: the rules, the player's hand and the dealer's (one card under ORBIT's rules)."""
        task, h = state.task, self._hand
        player = [self._rules[0], self.number(state.max_turns), self._rules[1], self.cards[task.player[0]], h[0],
                  self.cards[task.player[1]], h[1], self.number(self._total(task.player)), h[2],
                  self.cards[task.dealer[0]]]
        if self.terse:
            player.insert(3, self._hand_intro[0])
        if self.orbit:
            return jnp.stack(player + [h[4]])
        return jnp.stack(player + [h[0], self.cards[task.dealer[1]], h[1], self.number(self._total(task.dealer)), h[3]])

    def _feedback_pieces(self, state: TextEnvState) -> jax.Array:
        """int32[10]: the last turn's feedback (see ``render_game_text`` for the sentences)."""
        g, task = state.game, state.task
        fb = g.feedback
        stand = (fb == _STAND_WIN) | (fb == _STAND_LOSE) | (fb == _STAND_TIE)
        chose_stand = stand & (state.last_action == self.stand)
        retaken_stand = stand & ~chose_stand  # ORBIT: a taken position stood
        hit = (fb == _HIT) | (fb == _BUST)
        pos = jnp.clip(state.last_action, 0, self.table_size - 1)
        total = self.number(hand_total(g.hard, g.has_ace))
        dealer = self.number(self._total(task.dealer))
        verdict = jnp.select([fb == _STAND_WIN, fb == _STAND_LOSE, fb == _STAND_TIE],
                             [self._verdict[0], self._verdict[1], self._verdict[2]], EMPTY)
        return jnp.stack([
            self._turn[0], self.number(state.time),
            jnp.select([chose_stand, hit], [self._turn[3], self._turn[1]], self._turn[2]),
            jnp.where(chose_stand, total, self.number(pos)),
            jnp.select([chose_stand, hit, retaken_stand], [self._mid[3], self._mid[0], self._mid[2]], self._mid[1]),
            jnp.select([chose_stand, hit], [dealer, self.cards[task.table[pos]]], total),
            jnp.select([chose_stand, hit, retaken_stand], [self._sep[1], self._sep[0], self._sep[2]], EMPTY),
            jnp.select([hit, retaken_stand], [total, dealer], EMPTY),
            jnp.select([fb == _BUST, retaken_stand, chose_stand], [self._tail[1], self._tail[2], EMPTY], self._tail[0]),
            verdict,
        ])

    def _terse_feedback_pieces(self, state: TextEnvState) -> jax.Array:
        """int32[6]: text="terse"'s last turn (see ``render_game_text``)."""
        g, task = state.game, state.task
        fb = g.feedback
        stand = (fb == _STAND_WIN) | (fb == _STAND_LOSE) | (fb == _STAND_TIE)
        retaken = (fb == _TAKEN) | (stand & (state.last_action != self.stand))
        hit = (fb == _HIT) | (fb == _BUST)
        pos = jnp.clip(state.last_action, 0, self.table_size - 1)
        said = self._said
        return jnp.stack([
            jnp.select([hit, retaken], [self._said_card[task.table[pos]], said[_TAKEN_WORD]], EMPTY),
            jnp.where(hit | (fb == _TAKEN), said[_TOTAL_WORD], EMPTY),
            self._said_total[jnp.clip(hand_total(g.hard, g.has_ace), 0, MAX_TOTAL)],
            jnp.select([stand, fb == _BUST], [said[_AGAINST_WORD], said[_BUST_WORD]], said[_END_WORD]),
            jnp.where(stand, self._said_total[self._total(task.dealer)], EMPTY),
            jnp.select([fb == code for code in TERSE_VERDICTS], [said[w] for w in TERSE_VERDICTS.values()], EMPTY),
        ])

    def obs_pieces(self, state: TextEnvState) -> jax.Array:
        """The base observation, then (ORBIT's rules) the dealer's face-down card once the episode has ended."""
        pieces = super().obs_pieces(state)
        if not self.orbit:
            return pieces
        status_message = ((state.status == FORMAT_ERROR)  # a status text without "\n" (terse: " out of turns\n")
                          | ((state.status == OUT_OF_TURNS) & (not self.terse)))
        reveal = jnp.stack([jnp.where(status_message, self._reveal[1], self._reveal[0]),
                            self.cards[state.task.dealer[1]], self._reveal[2]])
        return jnp.concatenate([pieces, jnp.where(state.status == RUNNING, EMPTY, reveal)]).astype(jnp.int32)

    def render_text(self, state: TextEnvState) -> str:
        state = to_host(state)
        text = super().render_text(state)
        if not self.orbit or int(state.status) == RUNNING:
            return text
        status = int(state.status)
        lead = "\n" if status == FORMAT_ERROR or (status == OUT_OF_TURNS and not self.terse) else ""
        return f"{text}{lead}The dealer's face-down card was {self._card_name(state.task.dealer[1])}.\n"

    def _card_name(self, card) -> str:
        """A card's name in the observations: ``7 of hearts``, or its rank alone under text="terse"."""
        return RANKS[int(card) % 13] if self.terse else CARD_NAMES[int(card)]

    def render_game_text(self, state):
        task, g = state.task, state.game
        t = int(state.time)
        if t == 0:
            first, rest = self._terse_rules_text() if self.terse else self._rules_text()
            rest += TERSE_HAND_INTRO if self.terse else ""
            p, d = [self._card_name(c) for c in task.player], [self._card_name(c) for c in task.dealer]
            dealer = (f"{d[0]} and a face-down card.\n" if self.orbit
                      else f"{d[0]} and {d[1]} (total {host_total(task.dealer)}).\n")
            return (f"{first}{int(state.max_turns)}{rest}{p[0]} and {p[1]} (total {host_total(task.player)}).\n"
                    f"The dealer's cards: {dealer}")
        hard = int(g.hard)
        mine = hard + 10 if bool(g.has_ace) and hard + 10 <= 21 else hard
        fb = int(g.feedback)
        pos = int(state.last_action)
        if self.terse:  # " 7 total 18", " 9 total 27 bust", " 18 against 17 win", " taken, 18 against 19 lose"
            if fb in _VERDICTS:
                taken = "" if pos == self.stand else " taken,"
                return f"{taken} {mine} against {host_total(task.dealer)}{TERSE_WORDS[TERSE_VERDICTS[fb]]}"
            if fb == _TAKEN:
                return f" taken, total {mine}\n"
            end = TERSE_WORDS[_BUST_WORD if fb == _BUST else _END_WORD]
            return f" {RANKS[int(task.table[pos]) % 13]} total {mine}{end}"
        versus = f"{mine} against the dealer's {host_total(task.dealer)}. "
        if fb in _VERDICTS and pos == self.stand:
            return f"At turn {t}, you stand with {versus}{_VERDICTS[fb]}"
        retaken = f"At turn {t}, you chose position {pos}, but that card was already taken"
        if fb in _VERDICTS:
            return f"{retaken}, so you stand with {versus}{_VERDICTS[fb]}"
        if fb == _TAKEN:
            return f"{retaken}. Your total is still {mine}.\n"
        card = CARD_NAMES[int(task.table[pos])]
        end = ". That is over 21: you bust and lose.\n" if fb == _BUST else ".\n"
        return f"At turn {t}, you took the card at position {pos}: {card}. Your total is {mine}{end}"
