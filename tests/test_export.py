"""``python -m metarl_jax.export``: a trained run becomes a Hugging Face directory that transformers loads and runs
with our logits, and the word vocabulary becomes a ``tokenizers`` tokenizer with the same ids."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from metarl_jax import build, train
from metarl_jax.configs import tiny
from metarl_jax.export import export
from metarl_jax.models.hf_io import load_pretrained
from metarl_jax.envs.registry import make
from metarl_jax.text.tokenizers import WordTokenizer, load_word_vocab, split_words

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny run trained for 2 steps and exported by the command line: ``(workdir, out_dir, observation text)``."""
    workdir, out = tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("export") / "hf"
    config = tiny.get_config()
    config.num_steps = 2
    result = train.train_and_evaluate(config, str(workdir), quiet=True)
    assert int(result.state.step) == 2 and [r.env_id for r in result.rows] == [config.eval_tasks[0].env_id]
    done = subprocess.run([sys.executable, "-m", "metarl_jax.export", str(workdir), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "exported step 2" in done.stdout
    env, params = make(config.eval_tasks[0].env_id)
    _, state = env.reset(jax.random.PRNGKey(3), params)
    return workdir, out, env.render_text(state), nnx.merge(result.graphdef, result.state.params)


@pytest.mark.slow
def test_transformers_loads_the_export_and_matches_our_logits(exported):
    workdir, out, text, trained = exported
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    ids = hf_tokenizer.encode(text, add_special_tokens=False)
    assert ids == WordTokenizer().encode(text) and len(ids) > 10
    assert hf_tokenizer.decode(ids) == text
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    with torch.no_grad():
        theirs = hf_model(torch.tensor([ids])).logits.numpy()

    ours_model = load_pretrained(str(out))  # the exported weights in our model: equal to the trained ones below
    tokens = jnp.asarray([ids], jnp.int32)
    positions = jnp.arange(len(ids))[None]
    ours = np.asarray(ours_model(tokens, positions)[0])
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)

    # The exported weights are the trained step-2 weights that train_and_evaluate returned, not the initial ones.
    np.testing.assert_allclose(ours, np.asarray(trained(tokens, positions)[0]), atol=1e-6, rtol=0)
    initial = np.asarray(jax.tree.leaves(build.build_run(tiny.get_config()).model_state)[0])
    exported_leaf = np.asarray(jax.tree.leaves(nnx.state(ours_model))[0])
    assert exported_leaf.shape == initial.shape and not np.allclose(exported_leaf, initial)


def test_word_vocabulary_as_tokenizers_gives_the_same_ids():
    word = WordTokenizer()
    fast = word.to_tokenizers()
    texts = ["\\boxed{25} lower\n\nYou have 3 guesses left.", "  two  spaces\tand a tab\r\n", "unknownwordzz 123456 !?",
             "".join(load_word_vocab()[5:400])]
    for env_id in ("game:GuessTheNumber-v0-hard", "game:Wordle-v0-hard", "maze", "game:Blackjack-v0", "game:Mastermind-v0-random"):
        env, params = make(env_id)
        _, state = env.reset(jax.random.PRNGKey(0), params)
        texts.append(env.render_text(state))
    for text in texts:
        assert fast.encode(text, add_special_tokens=False).ids == word.encode(text), text
        assert fast.decode(word.encode(text), skip_special_tokens=False) == word.decode(word.encode(text))
    assert [p for p in split_words(texts[2]) if p not in word.index]  # the unknown-word path was exercised


@pytest.mark.slow
def test_export_errors_name_the_fix(tmp_path, exported):
    with pytest.raises(FileNotFoundError, match="train the run first"):
        export(str(tmp_path), str(tmp_path / "out"))
    (tmp_path / "cmp" / "orbit" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds a comparison"):
        export(str(tmp_path / "cmp"), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="choose one of them"):
        export(str(exported[0]), str(tmp_path / "out"), step=7)
