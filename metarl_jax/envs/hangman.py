"""Hangman (GEM's ``game:Hangman-v0-easy``, ORBIT's training settings), JAX-native.

Rules: a secret word of ``word_length`` letters is drawn per task, uniformly from the shipped word list
(``words_3.txt``: the 158 three-letter words of SCOWL size 10; see :mod:`metarl_jax.envs.words`). Each turn
the agent guesses one letter or a whole word. A letter of the word is revealed at every place where it
occurs; a letter guessed before costs a turn and says so; a wrong word is declared incorrect. As in GEM and
ORBIT, the episode is won *only* by guessing the whole word (revealing every letter is not a win); it is
truncated after ``max_turns`` turns (ORBIT: 10 per episode, 30 steps per trial). The board (``_ A _``,
upper case as in GEM) is shown in the opening and after every guess but the winning one.

``text="terse"`` shows a one-line rule and the board at the start, then after each guess one feedback word and
the board (``\\boxed{e} in _ E _``, ``\\boxed{x} not in _ E _``, ``\\boxed{cat} wrong _ E _``; ``correct`` on a
win, ``already guessed`` and the board on a repeated letter): the same information as GEM's sentences in about a
third of the tokens.

Actions: the 26 letters ``a..z`` (action ``i`` is letter ``i``, text ``\\boxed{e}``), then every word of the
list (action ``26 + j`` is word ``j``, text ``\\boxed{cat}``). Parsing is case-insensitive.

Differences from GEM: GEM draws from nltk's ``en-basic`` words, we from SCOWL size 10 (licence-clear, no
download); GEM's reward is shaped (revealed letters, half credit on the word), ours is 1 on a win, else 0; GEM
sets both ``terminated`` and ``truncated`` at the turn limit, we only ``truncated``; GEM accepts words of the
wrong length or outside its list (wasted turns), our action set holds only listed words (anything else is a
format error). As in GEM, a repeated wrong *word* is simply incorrect again (only letters are tracked).
The wording is ours; the content of the feedback (hit / miss / repeated letter, wrong word, win, board, turn
limit) is GEM's.
"""

from __future__ import annotations

import string

import jax
import jax.numpy as jnp
from flax import struct

from metarl_jax.envs.base import RUNNING, WON, TextEnvState
from metarl_jax.envs.pieces import EMPTY, slot
from metarl_jax.envs.words import WordGame

NUM_LETTERS = 26
# feedback codes of the last turn
_NONE, _HIT, _MISS, _REPEAT, _WRONG_WORD, _CORRECT = range(6)
TERSE_WORDS = (" in", " not in", " already guessed", " wrong", " correct\n")  # text="terse", by code - 1


@struct.dataclass
class HangmanGame:
    guessed_letters: jax.Array  # bool[26], letters guessed this episode (they reveal the board)
    guessed_words: jax.Array  # bool[num_words], words guessed this episode (for valid_actions only)
    feedback: jax.Array  # int32[], feedback code of the last turn


class Hangman(WordGame):
    """Guess a secret word by letters; win by naming the whole word (the task: :class:`WordGame`)."""

    text_styles = ("gem", "terse")

    def __init__(self, word_length: int = 3, max_turns: int = 10, env_id: str = "game:Hangman-v0-easy",
                 text: str = "gem"):
        super().__init__(word_length, max_turns, env_id, text)
        self.action_contents = list(string.ascii_lowercase) + self.words
        if self.terse:
            self._cell = self.book.add(*[" " + c for c in string.ascii_uppercase], " _")
            self._newline = self.book.add_one("\n")
            self._rules = self.book.add(f"A secret word of {self.word_length} letters. You have ", " turns.\n")
            self._said = self.book.add(*TERSE_WORDS)  # by feedback code - 1
            self.game_layout = [slot(self._rules), slot(self.num), slot(self._rules), slot(self._said),
                                *[slot(self._cell)] * self.word_length, slot(self._newline)]
            self.opening_slots = (0, 1, 2)
            return
        self._rules = self.book.add(
            f"You are playing Hangman.\nA secret word of {self.word_length} letters is hidden; you have ",
            " turns to find it. Each turn, guess one letter, for example \\boxed{e}, or the whole word, for example "
            "\\boxed{" + self.example_word + "}. A correct letter is revealed at every place where it occurs in the "
            "word. You win only by guessing the whole word.",
        )
        self._head = self.book.add("At turn ", "Correct! The secret word is ")
        self._you = self.book.add(", you guessed the letter ", ", you guessed the word ")
        self._letter = self.book.add(*string.ascii_uppercase)
        self._word = self.book.add(*[w.upper() for w in self.words])
        self._tail = self.book.add(
            ", which is in the word.", ", which is not in the word.", ", which you already guessed before.",
            ", which is not the secret word.", ". You guessed it in ",
        )
        self._turns = self.book.add_one(" turns.")
        self._board = self.book.add_one("\nBoard:")
        self._cell = self.book.add(*[" " + c for c in string.ascii_uppercase], " _")
        self._newline = self.book.add_one("\n")
        self.game_layout = [
            slot(self._rules), slot(self.num), slot(self._rules),  # opening
            slot(self._head), slot(self.num), slot(self._you), slot(self._letter, self._word), slot(self._tail),
            slot(self.num), slot(self._turns),
            slot(self._board), *[slot(self._cell)] * self.word_length, slot(self._newline),
        ]
        self.opening_slots = (0, 1, 2)

    def init_game(self, key, task, params):
        return HangmanGame(
            guessed_letters=jnp.zeros((NUM_LETTERS,), bool),
            guessed_words=jnp.zeros((self.num_words,), bool),
            feedback=jnp.full((), _NONE, jnp.int32),
        )

    def game_step(self, key, state: TextEnvState, action, params):
        g = state.game
        secret = jnp.asarray(self.word_letters)[state.task]
        is_letter = action < NUM_LETTERS
        letter = jnp.minimum(action, NUM_LETTERS - 1)
        word = jnp.maximum(action - NUM_LETTERS, 0)
        letter_fb = jnp.select([g.guessed_letters[letter], jnp.any(secret == letter)], [_REPEAT, _HIT], _MISS)
        word_fb = jnp.where(word == state.task, _CORRECT, _WRONG_WORD)
        game = HangmanGame(
            guessed_letters=g.guessed_letters.at[letter].set(g.guessed_letters[letter] | is_letter),
            guessed_words=g.guessed_words.at[word].set(g.guessed_words[word] | ~is_letter),
            feedback=jnp.where(is_letter, letter_fb, word_fb).astype(jnp.int32),
        )
        return game, jnp.where(game.feedback == _CORRECT, WON, RUNNING)

    def valid_actions(self, state):
        return jnp.concatenate([~state.game.guessed_letters, ~state.game.guessed_words])

    def answer_action(self, task):
        return (NUM_LETTERS + task).astype(jnp.int32)  # naming the whole word

    def oracle_action(self, key, state: TextEnvState) -> jax.Array:
        """Names the secret word (int32[]; reads the task)."""
        return self.answer_action(state.task)

    def consistent_words(self, state: TextEnvState) -> jax.Array:
        """``bool[num_words]``: the words the board and this episode's letters allow (reads the task): at a
        revealed place the secret's letter, elsewhere no letter guessed this episode."""
        words, secret = jnp.asarray(self.word_letters), jnp.asarray(self.word_letters)[state.task]
        guessed = state.game.guessed_letters
        revealed = guessed[secret]  # [L]
        fits = jnp.where(revealed, words == secret, ~guessed[words])  # [W, L]
        return jnp.all(fits, axis=-1)

    def consistent_actions(self, state: TextEnvState) -> jax.Array:
        """While the board and this episode's letters allow several words: the letters not guessed that some
        allowed word holds at a hidden place (a letter that can still reveal something); once they allow one word,
        that word (unless it was guessed this episode)."""
        allowed = self.consistent_words(state)
        hidden = ~state.game.guessed_letters[jnp.asarray(self.word_letters)]  # [W, L]: places a guess can still reveal
        held = jax.nn.one_hot(jnp.asarray(self.word_letters), NUM_LETTERS, dtype=bool) & hidden[..., None]  # [W, L, 26]
        letters = jnp.any(held & allowed[:, None, None], axis=(0, 1)) & ~state.game.guessed_letters
        several = jnp.sum(allowed) > 1
        return jnp.concatenate([letters & several, allowed & ~several & ~state.game.guessed_words])

    def board(self, state: TextEnvState) -> jax.Array:
        """``bool[word_length]``: the revealed places of the secret."""
        return state.game.guessed_letters[jnp.asarray(self.word_letters)[state.task]]

    def game_pieces(self, state: TextEnvState):
        fb = state.game.feedback
        secret = jnp.asarray(self.word_letters)[state.task]
        won = fb == _CORRECT
        opening = state.time == 0
        action = jnp.maximum(state.last_action, 0)
        is_letter = action < NUM_LETTERS
        cells = jnp.where(self.board(state), self._cell[secret], self._cell[NUM_LETTERS])
        if self.terse:
            rules = jnp.stack([self._rules[0], self.number(state.max_turns), self._rules[1], EMPTY])
            said = jnp.stack([EMPTY, EMPTY, EMPTY, self._said[jnp.maximum(fb - 1, 0)]])
            board = jnp.concatenate([cells, jnp.stack([self._newline[0]])])
            return jnp.concatenate([jnp.where(opening, rules, said), jnp.where(won, EMPTY, board)])
        tail = jnp.select([won, fb == _HIT, fb == _MISS, fb == _REPEAT], [4, 0, 1, 2], 3)
        rules = jnp.stack([self._rules[0], self.number(state.max_turns), self._rules[1]])
        turn = jnp.stack([
            jnp.where(won, self._head[1], self._head[0]),
            jnp.where(won, EMPTY, self.number(state.time)),
            jnp.where(won, EMPTY, jnp.where(is_letter, self._you[0], self._you[1])),
            jnp.where(is_letter, self._letter[jnp.minimum(action, NUM_LETTERS - 1)], self._word[action - NUM_LETTERS]),
            self._tail[tail],
            jnp.where(won, self.number(state.time), EMPTY),
            jnp.where(won, self._turns[0], EMPTY),
        ])
        board = jnp.concatenate([jnp.stack([self._board[0]]), cells, jnp.stack([jnp.where(opening, self._newline[0], EMPTY)])])
        return jnp.concatenate([
            jnp.where(opening, rules, EMPTY),
            jnp.where(opening, EMPTY, turn),
            jnp.where(won, EMPTY, board),
        ])

    def render_game_text(self, state):
        t = int(state.time)
        secret = self.words[int(state.task)]
        board = " ".join(c.upper() if state.game.guessed_letters[ord(c) - ord("a")] else "_" for c in secret)
        fb = int(state.game.feedback)
        if self.terse:
            if t == 0:
                turns = int(state.max_turns)
                return f"A secret word of {self.word_length} letters. You have {turns} turns.\n {board}\n"
            return TERSE_WORDS[fb - 1] + ("" if fb == _CORRECT else f" {board}\n")
        if t == 0:
            return (
                f"You are playing Hangman.\nA secret word of {self.word_length} letters is hidden; you have "
                f"{int(state.max_turns)} turns to find it. Each turn, guess one letter, for example \\boxed{{e}}, or "
                f"the whole word, for example \\boxed{{{self.example_word}}}. A correct letter is revealed at every "
                f"place where it occurs in the word. You win only by guessing the whole word.\nBoard: {board}\n"
            )
        if fb == _CORRECT:
            return f"Correct! The secret word is {secret.upper()}. You guessed it in {t} turns."
        guess = self.action_contents[int(state.last_action)].upper()
        kind = "letter" if len(guess) == 1 else "word"
        what = {
            _HIT: "which is in the word", _MISS: "which is not in the word",
            _REPEAT: "which you already guessed before", _WRONG_WORD: "which is not the secret word",
        }[fb]
        return f"At turn {t}, you guessed the {kind} {guess}, {what}.\nBoard: {board}"
