"""Constrained decoding never yields an invalid action, and its log-probabilities are exact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarl_jax import envs
from metarl_jax.agents import ActionTable, constrained_step
from metarl_jax.text import HFTokenizer, WordTokenizer
from metarl_jax.text.tiny import make_bpe_tokenizer


@pytest.fixture(scope="module", params=["word", "bpe"])
def tokenizer(request, tmp_path_factory):
    if request.param == "word":
        return WordTokenizer()
    texts = []
    for env_id in ("game:Mastermind-v0-random", "game:GuessTheNumber-v0-hard", "maze"):
        env, _ = envs.make(env_id)
        texts += list(env.pieces) + [env.action_text(i) for i in range(env.num_actions)]
    return HFTokenizer(make_bpe_tokenizer(texts, str(tmp_path_factory.mktemp("bpe")), vocab_size=300))


def decode_all(table, logits_fn, keys, valid=None, temperature=1.0, top_p=1.0):
    """Decodes one action per key; logits_fn(t) gives float[V] logits for step t (history-independent)."""

    def one(key):
        state = table.init(valid)
        toks, logps = [], []
        for t in range(table.max_len):
            token, logp, state = constrained_step(table, state, logits_fn(t), jax.random.fold_in(key, t), temperature, top_p)
            toks.append(token)
            logps.append(logp)
        return jnp.stack(toks), jnp.stack(logps).sum(), state.action

    return jax.jit(jax.vmap(one))(keys)


def exact_log_prob(table, logits, action):
    """log P(action) by walking the trie on the host: per step, softmax over the allowed tokens only."""
    tokens, lengths = np.asarray(table.tokens), np.asarray(table.lengths)
    total = 0.0
    for t in range(lengths[action]):
        consistent = (tokens[:, :t] == tokens[action, :t]).all(axis=1) & (lengths > t)
        allowed = np.unique(tokens[consistent, t])
        z = np.log(np.exp(logits[t][allowed]).sum())
        total += logits[t][tokens[action, t]] - z
    return total


@pytest.mark.parametrize("env_id", [pytest.param("game:Mastermind-v0-random", marks=pytest.mark.slow),
                                    "game:GuessTheNumber-v0-hard", "maze"])
def test_every_decode_is_a_valid_action_with_exact_log_prob(env_id, tokenizer):
    env, _ = envs.make(env_id)
    table = ActionTable(env, tokenizer)
    logits = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (table.max_len, table.vocab_size)) * 3.0)
    toks, logps, actions = decode_all(table, lambda t: jnp.asarray(logits[t]), jax.random.split(jax.random.PRNGKey(1), 3000))
    toks, logps, actions = np.asarray(toks), np.asarray(logps), np.asarray(actions)
    assert (actions >= 0).all() and (actions < env.num_actions).all()
    lengths = np.asarray(table.lengths)
    for i in range(0, 3000, 60):
        a = int(actions[i])
        text = tokenizer.decode(toks[i, : lengths[a]].tolist())
        assert text == env.action_text(a) and env.parse_action(text) == a
        assert (toks[i, lengths[a]:] == tokenizer.pad_id).all()
        np.testing.assert_allclose(logps[i], exact_log_prob(table, logits, a), atol=1e-4)
    # The sampled frequencies follow the exact action probabilities.
    probs = np.exp([exact_log_prob(table, logits, a) for a in range(env.num_actions)])
    np.testing.assert_allclose(probs.sum(), 1.0, atol=1e-5)
    freq = np.bincount(actions, minlength=env.num_actions) / len(actions)
    assert np.abs(freq - probs).max() < 4 * np.sqrt(probs.max() / len(actions)) + 1e-3


def test_valid_mask_restricts_the_choice(tokenizer):
    env, _ = envs.make("game:GuessTheNumber-v0-hard")
    table = ActionTable(env, tokenizer)
    valid = np.zeros(env.num_actions, bool)
    valid[[3, 17, 41]] = True
    _, _, actions = decode_all(table, lambda t: jnp.zeros(table.vocab_size), jax.random.split(jax.random.PRNGKey(2), 500),
                               valid=jnp.asarray(valid))
    assert set(np.unique(np.asarray(actions))) == {3, 17, 41}


def test_ambiguous_action_texts_are_refused():
    class Prefixy:
        name = "prefixy"
        num_actions = 2

        def action_text(self, i):
            return ["\\boxed{up}", "\\boxed{up} up"][i]

    tok = WordTokenizer()
    with pytest.raises(ValueError, match="not prefix-free"):
        ActionTable(Prefixy(), tok)


def test_allowed_columns_are_the_allowed_tokens_of_the_action_vocabulary(tokenizer):
    """The teacher-forced update masks over ``table.vocab`` only: the same mask as the full one at every step."""
    env, _ = envs.make("game:Wordle-v0-hard")  # many actions of several tokens each
    table = ActionTable(env, tokenizer)
    rng = np.random.default_rng(0)
    valid = jnp.asarray(rng.random(env.num_actions) < 0.5)
    for action in rng.choice(np.flatnonzero(np.asarray(valid)), 5, replace=False):
        state = table.init(valid)
        for token in np.asarray(table.tokens[action])[: int(table.lengths[action])]:
            full = np.asarray(table.allowed(state))
            np.testing.assert_array_equal(np.asarray(table.allowed_columns(state)), full[table.vocab])
            assert full.sum() == full[table.vocab].sum() > 0  # nothing allowed outside the action vocabulary
            state = table.advance(state, token)



def test_decoding_on_the_action_columns_equals_the_whole_vocabulary(tokenizer):
    """``on_columns``: logits over the actions' K tokens only (``table.vocab``) sample allowed tokens, with the
    log-probability the whole vocabulary's processed distribution (temperature, top-p, trie mask) gives them."""
    from metarl_jax.models.sampling import process_logits

    env, _ = envs.make("game:Mastermind-v0-random")
    table = ActionTable(env, tokenizer)
    logits = jax.random.normal(jax.random.PRNGKey(5), (table.max_len, table.vocab_size)) * 3.0
    columns = jnp.asarray(table.vocab)

    def one(key):
        state = table.init()
        ours, reference, allowed_ok = [], [], []
        for t in range(table.max_len):
            token, lp, new = constrained_step(table, state, logits[t][columns], jax.random.fold_in(key, t), 0.8, 0.9,
                                              on_columns=True)
            allowed = table.allowed(state)
            full = process_logits(logits[t], 0.8, 0.9, mask=allowed)
            ours.append(lp)
            reference.append(jnp.where(state.done, 0.0, full[token]))
            allowed_ok.append(state.done | allowed[token])
            state = new
        return jnp.stack(ours), jnp.stack(reference), jnp.stack(allowed_ok), state.action

    ours, reference, allowed_ok, actions = jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(6), 300))
    assert np.asarray(allowed_ok).all() and (np.asarray(actions) >= 0).all()
    np.testing.assert_allclose(np.asarray(ours), np.asarray(reference), atol=1e-5)
    assert len(np.unique(np.asarray(actions))) > 1  # it samples, not one fixed action
