"""Tokenizer backends and the codec: exact rendering under jit/vmap for both backends."""

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import adhoc_word_tokenizer, index_tree, random_valid_policy, run_trials
from metarl_jax import envs
from metarl_jax.text import Codec, HFTokenizer, WordTokenizer, load_tokenizer, split_words
from metarl_jax.text.tiny import make_bpe_tokenizer

ENV_ID = "game:GuessTheNumber-v0-hard"


@given(st.text(max_size=200))
@settings(max_examples=200, deadline=None)
def test_word_split_is_exact(text):
    assert "".join(split_words(text)) == text


@pytest.fixture(scope="module")
def trial():
    return envs.make_trial(ENV_ID, reflection=True)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, trial):
    env, _ = trial
    texts = list(env.pieces) + [env.action_text(i) for i in range(env.num_actions)]
    return make_bpe_tokenizer(texts * 4, str(tmp_path_factory.mktemp("bpe")), vocab_size=400)


@pytest.fixture(scope="module")
def random_trial_states(trial):
    env, params = trial
    # States at many different points of trials: 48 trials, each cut after a different number of steps.
    out = []
    for steps in (1, 4, 7, 8, 15, 23):
        final, _, _ = run_trials(env, params, random_valid_policy(env), jax.random.PRNGKey(steps), 8, steps)
        out += [index_tree(final, i) for i in range(8)]
    return out


@pytest.mark.parametrize("backend", ["word", "hf"])
def test_render_tokens_decode_to_render_text(backend, trial, hf_dir, random_trial_states):
    env, _ = trial
    tokenizer = adhoc_word_tokenizer(env) if backend == "word" else HFTokenizer(hf_dir)
    codec = Codec(env, tokenizer)
    batch = jax.tree.map(lambda *xs: np.stack(xs), *random_trial_states)
    tokens, lengths = jax.jit(jax.vmap(codec.render_tokens))(batch)
    assert tokens.shape == (len(random_trial_states), codec.max_len)
    views = set()
    for i, state in enumerate(random_trial_states):
        text = env.render_text(state)
        assert codec.decode(tokens[i], lengths[i]) == text
        assert (np.asarray(tokens[i, int(lengths[i]):]) == tokenizer.pad_id).all()
        assert (np.asarray(tokens[i]) < tokenizer.vocab_size).all() and (np.asarray(tokens[i]) >= 0).all()
        views.add(int(state.view))
    assert len(views) >= 3, "the sample should cover episode boundaries and reflection turns"


def test_hf_tokenizer_is_byte_exact_on_unicode(hf_dir):
    tok = HFTokenizer(hf_dir)
    text = "Zürich — 漢字 \\boxed{up}\n\n  x"
    assert tok.decode(tok.encode(text)) == text


def test_codec_rejects_lossy_tokenizer(trial):
    env, _ = trial

    class Lowercasing(WordTokenizer):
        def encode(self, text):
            return super().encode(text.lower())

    words = adhoc_word_tokenizer(env).tokens
    with pytest.raises(ValueError, match="cannot render piece"):
        Codec(env, Lowercasing(words + [w.lower() for w in words if w.lower() not in words]))


def test_codec_rejects_vocabulary_without_env_words(trial):
    env, _ = trial
    tokens = [t for t in adhoc_word_tokenizer(env).tokens if t != " Guess"]
    with pytest.raises(ValueError, match="lacks"):
        Codec(env, WordTokenizer(tokens))


def test_load_tokenizer_missing_dir_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(str(tmp_path / "nope"))


def test_the_built_in_vocabulary_holds_every_word_of_every_text_style(capsys):
    """`build_vocab --check` passes: every registered env's text in every style it renders (the terse ones
    included) tokenizes with the shipped vocabulary, without growing it (which would change the models)."""
    from metarl_jax.text import build_vocab

    assert build_vocab.main(["--check"]) == 0, capsys.readouterr().err
