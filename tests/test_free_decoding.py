"""Free decoding in ORBIT's mode, through the compiled rollout with a scripted policy: a turn ends at the
end-of-turn token, the last ``\\boxed{}`` of the response is the action (a box opened after it and never closed
is a format error), a response without the token is cut at the per-turn budget, and with the remaining-context
budget a response that the full context cuts off earns nothing and stops the trial.

The scripted policy writes a fixed token stream: its next token at slot p of row b is ``stream[b][p + 1]``
(the context is compact, so slots are positions). The streams are built on the host by playing the same env
with the actions the test expects the rollout to parse; a wrong parse also changes the observations that follow,
so the token comparison checks the parse twice.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from metarl_jax import envs
from metarl_jax.agents import ActionTable
from metarl_jax.agents.context import context_budget
from metarl_jax.agents.rollout import RolloutSpec, rollout
from metarl_jax.agents.sampler import tag_pair_written
from metarl_jax.models import preset
from metarl_jax.tasks import remark_fields
from metarl_jax.text import Codec, WordTokenizer
from metarl_jax.text.chat import ChatWrap

SLOTS = 1024
TURNS = 3  # GuessTheNumber-easy trials of 3 one-turn episodes


class ScriptedPolicy(nnx.Module):
    """The rollout's model interface (``config``, ``dtype``, ``hidden_states``, ``logits``) over fixed streams:
    the hidden state at slot p of row b is a sharp one-hot of ``next_token[b, p]`` and the logits are the hidden
    state, so sampling returns the scripted token."""

    def __init__(self, next_token: np.ndarray, vocab_size: int):
        self.next_token = nnx.Variable(jnp.asarray(next_token, jnp.int32))
        self.config = preset("tiny", vocab_size).replace(hidden_size=vocab_size)
        self.dtype = jnp.float32

    def hidden_states(self, tokens, positions, cache=None, token_mask=None, last_at=None, rows=None):
        rows = jnp.arange(tokens.shape[0]) if rows is None else rows
        nxt = self.next_token[...][rows[:, None], jnp.clip(positions, 0, SLOTS - 1)]
        if last_at is not None:
            nxt = jnp.take_along_axis(nxt, last_at[:, None], axis=1)
        return 1e4 * jax.nn.one_hot(nxt, self.config.vocab_size), cache

    def logits(self, hidden, vocab=None):
        return hidden if vocab is None else hidden[..., vocab]


class Game:
    """Two GuessTheNumber-easy trials, their secrets, and the token helpers for writing scripts."""

    def __init__(self, tok, chat: ChatWrap, **trial):
        self.tok, self.chat = tok, chat
        self.env, self.params = envs.make_trial("game:GuessTheNumber-v0-easy", total_step_cap=TURNS, max_turns=1,
                                                intro=False, **trial)
        self.codec, self.table = Codec(self.env, tok), ActionTable(self.env, tok)
        self.trials = jax.vmap(self.env.reset, in_axes=(0, None))(jax.random.split(jax.random.PRNGKey(0), 2),
                                                                  self.params)[1]
        self.secrets = [int(s) for s in self.trials.inner.task]  # the winning action's index
        self.eot = chat.end[0] if chat.end else tok.eos_id

    def box(self, action: int) -> list:
        return np.asarray(self.table.tokens[action, : int(self.table.lengths[action])]).tolist()

    def wrong(self, row: int, guess: int) -> int:
        """``guess``, or the next number if that is the row's secret."""
        return guess if guess != self.secrets[row] else (guess + 1) % self.env.num_actions

    def expected(self, row, responses, actions, free_tokens, context_len=None):
        """The stream the rollout must write for one row: per turn the (chat-wrapped) observation, then the
        scripted response cut after the end-of-turn token, at the budget, or at the full context; the env is
        stepped with ``actions``. Returns (stream, per-turn written lengths, per-turn rewards)."""
        state = jax.tree.map(lambda x: x[row], self.trials)
        stream, lengths, rewards, ended = [], [], [], False
        for t, (response, action) in enumerate(zip(responses, actions)):
            if t:
                stream += list(self.chat.end[1:] if ended else self.chat.end)
            obs, n = self.codec.render_tokens(state)
            stream += list(self.chat.open) + np.asarray(obs)[: int(n)].tolist() + list(self.chat.close)
            room = free_tokens if context_len is None else min(free_tokens, context_len - len(stream))
            written = response[:room]
            if self.eot in written:
                written = written[: written.index(self.eot) + 1]
            ended = written[-1:] == [self.eot]
            stream += written
            lengths.append(len(written))
            _, state, reward, _, _ = self.env.step_env(jax.random.PRNGKey(0), state, jnp.int32(action), self.params)
            rewards.append(float(reward))
        return stream, lengths, rewards

    def play(self, scripts, actions, free_tokens, context_len=None, remaining=False, **decoding):
        """The compiled rollout of the scripted policy (``scripts[row][turn]``: the tokens it writes) and the
        expected plays."""
        plays = [self.expected(b, s, a, free_tokens, context_len) for b, (s, a) in enumerate(zip(scripts, actions))]
        next_token = np.full((2, SLOTS), self.tok.pad_id, np.int32)
        for b, (stream, _, _) in enumerate(plays):
            next_token[b, : len(stream) - 1] = stream[1:]
        graphdef, state = nnx.split(ScriptedPolicy(next_token, self.tok.vocab_size))
        budget = context_budget(self.env, self.codec, free_tokens, self.chat.per_turn)
        spec = RolloutSpec(env=self.env, env_params=self.params, codec=self.codec, table=self.table, budget=budget,
                           context_len=context_len or budget.worst_case, free_tokens=free_tokens, chat=self.chat,
                           end_of_turn=self.eot, remaining_budget=remaining, **decoding)
        tr = jax.jit(lambda st: rollout(graphdef, st, spec, jax.random.PRNGKey(1), self.trials))(state)
        return tr, plays


def check(tr, plays, actions):
    for b, ((stream, lengths, rewards), acts) in enumerate(zip(plays, actions)):
        turns = len(lengths)
        np.testing.assert_array_equal(np.asarray(tr.actions[b, :turns]), acts)
        np.testing.assert_array_equal(np.asarray(tr.action_mask[b, :turns]).sum(-1), lengths)
        np.testing.assert_array_equal(np.asarray(tr.rewards[b, :turns]), rewards)
        n = int(tr.length[b])
        assert n == len(stream) and np.asarray(tr.tokens[b, :n]).tolist() == stream


def scripts_and_actions(g: Game):
    """Row 0: two boxes then the end-of-turn token (the second box is the action); a complete box, then an
    opened one never closed (a format error); the secret's box, the token, and a box after the token that is
    never written. Row 1: a response without the token, cut at the budget (its last complete box counts); the
    token alone (no box: a format error); the secret's box and the token."""
    eot, filler = [g.eot], g.tok.encode(" number") * 12
    opened = g.box(0)[: g.table.prefix_len]
    a, b, c = g.wrong(0, 1), g.wrong(0, 6), g.wrong(0, 2)
    d = g.wrong(1, 3)
    scripts = [
        [g.box(a) + g.box(b) + eot, g.box(c) + opened + eot, g.box(g.secrets[0]) + eot + g.box(a)],
        [g.box(d) + filler, eot, g.box(g.secrets[1]) + eot],
    ]
    return scripts, [[b, -1, g.secrets[0]], [d, -1, g.secrets[1]]]


def test_end_of_turn_ends_the_turn_and_the_last_box_is_parsed():
    g = Game(WordTokenizer(), ChatWrap())
    scripts, actions = scripts_and_actions(g)
    tr, plays = g.play(scripts, actions, free_tokens=12)
    check(tr, plays, actions)
    assert np.asarray(tr.rewards).sum(axis=1).tolist() == [1.0, 1.0]
    assert not np.asarray(tr.truncated).any()


def test_chat_end_follows_the_models_own_end_of_turn_token(tmp_path):
    """In the chat format the end-of-turn token is ``<|im_end|>``: a turn that wrote it is followed by the rest of
    the chat end only, a turn cut at the budget by the whole chat end."""
    from metarl_jax.text import HFTokenizer
    from metarl_jax.text.chat import chat_wrap
    from metarl_jax.text.tiny import make_bpe_tokenizer

    env, _ = envs.make_trial("game:GuessTheNumber-v0-easy", intro=False)
    texts = [env.pieces_text([i]) for i in range(len(env.pieces))] + [env.action_text(i) for i in range(env.num_actions)]
    tok = HFTokenizer(make_bpe_tokenizer(texts * 4 + [" number"] * 4, str(tmp_path), vocab_size=400))
    g = Game(tok, chat_wrap(tok))
    assert tok.decode([g.eot]) == "<|im_end|>"
    scripts, actions = scripts_and_actions(g)
    tr, plays = g.play(scripts, actions, free_tokens=12)
    check(tr, plays, actions)


@pytest.mark.parametrize("context_room", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_remaining_budget_overflow_earns_nothing_and_stops_the_trial(context_room):
    """With ``remaining_budget`` the last turn may write only what the context has left. A winning last response
    (box and end-of-turn token) that misses 2 slots is played, cut by the full context, earns nothing, and its
    trial is truncated; with those 2 slots it wins."""
    g = Game(WordTokenizer(), ChatWrap())
    eot = [g.eot]
    actions = [[g.wrong(b, 1), g.wrong(b, 2), g.secrets[b]] for b in range(2)]
    scripts = [[g.box(a) + eot for a in acts] for acts in actions]
    full = [len(g.expected(b, scripts[b], actions[b], 12)[0]) for b in range(2)]
    context_len = min(full) - 2 + context_room
    plays = [g.expected(b, scripts[b], actions[b], 12, context_len) for b in range(2)]
    tr, _ = g.play(scripts, actions, free_tokens=12, context_len=context_len, remaining=True)
    for b in range(2):
        n = int(tr.length[b])
        assert np.asarray(tr.tokens[b, :n]).tolist() == plays[b][0]
        cut = full[b] > context_len
        assert bool(tr.truncated[b]) == cut and bool(tr.taken[b, 2])
        assert float(tr.rewards[b, 2]) == (0.0 if cut else 1.0) and bool(tr.success[b, 2]) == (not cut)
        assert int(np.asarray(tr.action_mask[b, 2]).sum()) == plays[b][1][2]
    assert bool(tr.truncated[int(np.argmin(full))]) == (context_room == 0)


def test_tag_pair_written():
    tokens = jnp.asarray([[5, 1, 2, 9, 3, 4, 0], [3, 4, 1, 2, 9, 9, 9], [1, 2, 3, 4, 0, 0, 0], [1, 2, 3, 4, 0, 0, 0]])
    emitted = jnp.asarray([[True] * 7, [True] * 7, [True] * 7, [True, True, True, False, False, False, False]])
    np.testing.assert_array_equal(np.asarray(tag_pair_written(tokens, emitted, ((1, 2),), ((3, 4),))),
                                  [True, False, True, False])  # open then close; close first; adjacent; cut
    # a second spelling of the closing tag ((9, 9) in row 1, after its opening tag) counts too
    np.testing.assert_array_equal(np.asarray(tag_pair_written(tokens, emitted, ((1, 2),), ((3, 4), (9, 9)))),
                                  [True, True, True, False])


def test_lamer_reflection_with_a_remark_earns_the_remark_reward():
    """LaMer's variant under free decoding: episode 1 fails, the reflection turn writes ``<remark> plan
    </remark>`` and earns 1.0, episode 2's win earns 0.6 and ends the trial. Row 1's reflection opens no remark:
    it earns nothing."""
    tok = WordTokenizer()
    g = Game(tok, ChatWrap(), reflection=True, lamer_gamma=0.6)
    eot = [g.eot]
    remark = tok.encode("<remark> plan </remark>")
    actions = [[g.wrong(b, 1), 0, g.secrets[b]] for b in range(2)]
    scripts = [[g.box(actions[0][0]) + eot, remark + eot, g.box(g.secrets[0]) + eot],
               [g.box(actions[1][0]) + eot, tok.encode(" plan </remark>") + eot, g.box(g.secrets[1]) + eot]]
    tr, plays = g.play(scripts, actions, free_tokens=12, **remark_fields(tok, 1.0))
    for b, bonus in enumerate((1.0, 0.0)):
        n = int(tr.length[b])
        assert np.asarray(tr.tokens[b, :n]).tolist() == plays[b][0]
        assert bool(tr.reflection[b, 1]) and float(tr.rewards[b, 1]) == bonus
        assert abs(float(tr.rewards[b, 2]) - 0.6) < 1e-6 and bool(tr.success[b, 2])
