"""Bad input is refused early with a message that names the field or cause and the fix (issue 7).

``CASES`` is the table: one row per bad config or input, with the exception type it must raise and a regex of
the message. Config rows go through :func:`metarl_jax.config_check.check_config` (no model is built) unless the
problem only shows once the codecs exist, where they go through :func:`metarl_jax.build.build_run` (host side:
nothing is compiled). Loader rows build a tiny Hugging Face directory locally (no downloads) and break it.
The end of the file feeds random unicode to every registered env's ``parse_action``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import adhoc_word_tokenizer
from metarl_jax import build, envs, train
from metarl_jax.checkpoints import Checkpointer, CheckpointMismatchError
from metarl_jax.config_check import ConfigError, check_config
from metarl_jax.models.hf_io import load_pretrained, save_pretrained
from metarl_jax.text import Codec, HFTokenizer, WordTokenizer, split_words

ROOT = pathlib.Path(__file__).resolve().parents[1]
from metarl_jax.configs import tiny  # noqa: E402


# ---------------------------------------------------------------- building bad input


def config(**changes) -> ml_collections.ConfigDict:
    """``configs/tiny.py`` with ``changes`` (``a__b`` for ``a.b``), rebuilt without type safety, as a user's own
    config file may be: a value of the wrong type reaches the checker instead of failing at assignment."""
    d = tiny.get_config().to_dict()
    for dotted, value in changes.items():
        node = d
        *parents, last = dotted.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    return ml_collections.ConfigDict(d, type_safe=False)


def checked(**changes):
    """A case action: ``check_config`` of a changed tiny config."""
    return lambda ctx: check_config(config(**changes))


def built(**changes):
    """A case action: ``build.build_run`` of a changed tiny config (host side only, nothing compiled)."""
    return lambda ctx: build.build_run(config(**changes))


@dataclasses.dataclass
class Ctx:
    """What a case may need: a temporary directory and a fresh copy of a tiny pretrained model directory."""

    tmp: pathlib.Path
    source_model: str

    def model_dir(self, name: str = "model") -> pathlib.Path:
        out = self.tmp / name
        shutil.copytree(self.source_model, out)
        return out


def edit_config_json(ctx: Ctx, **fields) -> str:
    d = ctx.model_dir()
    raw = json.loads((d / "config.json").read_text())
    raw.update(fields)
    (d / "config.json").write_text(json.dumps(raw))
    return str(d)


def weights_replaced_by_pickle(ctx: Ctx) -> None:
    d = ctx.model_dir()
    os.remove(d / "model.safetensors")
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04not loaded")
    load_pretrained(str(d))


def corrupt_weights(ctx: Ctx) -> None:
    d = ctx.model_dir()
    (d / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}")
    load_pretrained(str(d))


def float8_tensors(ctx: Ctx) -> None:
    import ml_dtypes
    from safetensors.numpy import load_file, save_file

    d = ctx.model_dir()
    tensors = load_file(str(d / "model.safetensors"))
    save_file({k: v.astype(ml_dtypes.float8_e4m3fn) for k, v in tensors.items()}, str(d / "model.safetensors"))
    load_pretrained(str(d))


def checkpoint_of_another_shape(ctx: Ctx) -> None:
    key = jax.random.PRNGKey(0)
    with Checkpointer(ctx.tmp / "ckpt", async_save=False) as ckpt:
        ckpt.save(1, {"w": jnp.zeros((2, 3))}, key, {"note": "tiny"})
        ckpt.restore(1, {"w": jnp.zeros((3, 3))}, key)


def hf_tokenizer_with_unknown_tokens(ctx: Ctx) -> None:
    """A word-level Hugging Face tokenizer that knows one word: the maze's text maps to ``[UNK]``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "[PAD]": 1, "You": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(ctx.tmp / "tok")
    trial, _ = envs.make_trial("maze")
    Codec(trial, HFTokenizer(str(ctx.tmp / "tok")))


def word_vocabulary_of_another_env(ctx: Ctx) -> None:
    maze, _ = envs.make_trial("maze")
    wordle, _ = envs.make_trial("game:Wordle-v0-hard")
    Codec(wordle, adhoc_word_tokenizer(maze))


def word_vocabulary_without_an_action(ctx: Ctx) -> None:
    """Every observation word of Wordle is known but the action word ``above`` is not."""
    env, _ = envs.make_trial("game:Wordle-v0-hard")
    assert "above" not in {w for p in env.pieces for w in split_words(p)}
    Codec(env, WordTokenizer([t for t in adhoc_word_tokenizer(env).tokens if t != "above"]))


def edited_weights(ctx: Ctx, edit) -> str:
    """The tiny model directory with ``edit(tensors)`` applied to its weights (a dict name -> array)."""
    from safetensors.numpy import load_file, save_file

    d = ctx.model_dir()
    tensors = load_file(str(d / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(d / "model.safetensors"))
    return str(d)


def nan_weight(ctx: Ctx) -> None:
    def edit(tensors):
        tensors["model.norm.weight"] = tensors["model.norm.weight"].copy()
        tensors["model.norm.weight"][3] = np.nan
    load_pretrained(edited_weights(ctx, edit))


def float64_beyond_float32(ctx: Ctx) -> None:
    def edit(tensors):
        tensors["model.norm.weight"] = tensors["model.norm.weight"].astype(np.float64)
        tensors["model.norm.weight"][0] = 1e300
    load_pretrained(edited_weights(ctx, edit))


def stale_extra_weights_file(ctx: Ctx) -> None:
    d = ctx.model_dir()
    shutil.copy(d / "model.safetensors", d / "model-old.safetensors")
    load_pretrained(str(d))


def linked(ctx: Ctx, name: str, target: str) -> None:
    """The model directory with ``name`` replaced by a symbolic link to ``target`` (itself: a loop)."""
    d = ctx.model_dir()
    os.remove(d / name)
    os.symlink(target, d / name)
    load_pretrained(str(d))


def shard_index_leaving_the_directory(ctx: Ctx) -> None:
    d = ctx.model_dir()
    (ctx.tmp / "outside").mkdir()
    shutil.move(str(d / "model.safetensors"), str(ctx.tmp / "outside" / "w.safetensors"))
    from safetensors import safe_open

    with safe_open(str(ctx.tmp / "outside" / "w.safetensors"), framework="numpy") as f:
        names = list(f.keys())
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {n: "../outside/w.safetensors"
                                                                                for n in names}}))
    load_pretrained(str(d))


@dataclasses.dataclass(frozen=True)
class Case:
    """One row of the table: ``action(ctx)`` must raise ``error`` with a message matching ``pattern``."""

    name: str
    action: Callable[[Ctx], object]
    error: type
    pattern: str


GTN_HARD = "game:GuessTheNumber-v0-hard"
CASES = [
    # ---- task lists
    Case("unknown env id suggests the closest", checked(train_tasks=[dict(env_id="game:GuessTheNumbr-v0-hard")]),
         ConfigError, r"config\.train_tasks\[0\]\.env_id: unknown env id 'game:GuessTheNumbr-v0-hard'; did you mean "
                      r"'game:GuessTheNumber-v0-hard'\? Registered: rockpaperscissors, "),
    Case("env id of the wrong type", checked(eval_tasks=[dict(env_id=None)]),
         ConfigError, r"config\.eval_tasks\[0\]\.env_id: unknown env id None \(a NoneType; env ids are strings\)"),
    Case("step cap below turns per episode",
         checked(train_tasks=[dict(env_id=GTN_HARD, max_turns_per_episode=7, total_step_cap=5)]),
         ConfigError, r"config\.train_tasks\[0\]\.total_step_cap: is 5, below max_turns_per_episode=7.*Use at least 7"),
    Case("zero turns per episode", checked(train_tasks=[dict(env_id="maze", max_turns_per_episode=0)]),
         ConfigError, r"config\.train_tasks\[0\]\.max_turns_per_episode: must be an int >= 1 \(ORBIT's value for maze: 9\)"),
    Case("unknown task key", checked(train_tasks=[dict(env_id="maze", max_turns=9)]),
         ConfigError, r"config\.train_tasks\[0\]\.max_turns: is not a task key; did you mean 'max_turns_per_episode'\?"),
    Case("terse text on an env without it", checked(text="terse", eval_tasks=[dict(env_id="rockpaperscissors")]),
         ConfigError, r"config\.text: is 'terse', which eval_tasks\[0\] \(rockpaperscissors\) cannot render"),
    Case("unknown text style", checked(text="short"), ConfigError, r"config\.text: must be 'gem' \(GEM's sentences"),
    Case("no task", checked(eval_tasks=[]), ConfigError, r"config\.eval_tasks: lists no task; add at least one"),
    Case("context too short for the trial", built(context_len=200, allow_truncation=False),
         ConfigError, r"config\.context_len: is 200 tokens, shorter than the worst-case transcript of "
                      r"game:GuessTheNumber-v0-easy .*Raise it to \d+ .*allow_truncation=True"),
    Case("context too short for one action", built(train_tasks=[dict(env_id="game:GuessTheNumber-v0-easy",
                                                                     total_step_cap=8, context_len=20)]),
         ConfigError, r"config\.train_tasks\[0\]\.context_len: is 20 tokens, too short for even the first "
                      r"observation and action .*raise it"),
    # ---- numbers
    Case("zero num_tasks", checked(num_tasks=0), ConfigError, r"config\.num_tasks: must be an int >= 1 \(tasks per env"),
    Case("negative num_tasks", checked(num_tasks=-3), ConfigError, r"config\.num_tasks: must be an int >= 1 .*got -3"),
    Case("group_size 1", checked(group_size=1), ConfigError, r"config\.group_size: must be an int >= 2 \(GRPO compares"),
    Case("top_p 0", checked(top_p=0.0), ConfigError, r"config\.top_p: must be in \(0, 1\] .*got 0\.0"),
    Case("temperature 0", checked(temperature=0.0),
         ConfigError, r"config\.temperature: must be > 0 .*eval_temperature=0.*got 0\.0"),
    Case("number given as a string", checked(optimizer__learning_rate="3e-3"),
         ConfigError, r"config\.optimizer\.learning_rate: must be a number like the default 0\.0003, got '3e-3' \(str\)"),
    Case("free_tokens smaller than an action", built(decoding="free", free_tokens=2, answer_coef=0.0),
         ConfigError, r"config\.free_tokens: 2 tokens cannot hold an action of game:GuessTheNumber-v0-easy \(\d+ "
                      r"tokens\); raise it"),
    Case("negative answer_coef", checked(answer_coef=-1.0), ConfigError, r"config\.answer_coef: must be >= 0 \(0: off\)"),
    Case("negative train_max_episodes", checked(train_max_episodes=-1), ConfigError,
         r"config\.train_max_episodes: must be an int >= 0 \(0: as many as the step cap holds\)"),
    Case("unknown advantage groups", checked(advantage_groups="episode"), ConfigError,
         r"config\.advantage_groups: must be one of \('turn', 'episode_turn', 'record'\)"),
    Case("unknown answer target", checked(answer_from="oracle"), ConfigError,
         r"config\.answer_from: must be 'task' \(the task's answer, privileged\) or 'hindsight'"),
    Case("answer loss on a game without one answer", checked(answer_coef=1.0, text="gem", train_tasks=[dict(env_id="maze")]),
         ConfigError, r"config\.answer_coef: is 1\.0, but train_tasks\[0\] \(maze\) has no single answer action "
                      r"\(envs with one: .*GuessTheNumber"),
    Case("answer loss with free decoding", checked(answer_coef=1.0, decoding="free"),
         ConfigError, r"config\.answer_coef: needs decoding='constrained'"),
    Case("imitation phase longer than the run", checked(pretrain__steps=20, num_steps=10),
         ConfigError, r"config\.pretrain\.steps: is 20, more than num_steps=10 .*raise num_steps"),
    Case("imitation of a game without a scripted player",
         checked(pretrain__steps=5, answer_coef=0.0, text="gem", train_tasks=[dict(env_id="rockpaperscissors")]),
         ConfigError, r"config\.pretrain\.steps: is 5, but train_tasks\[0\] \(rockpaperscissors\) has no scripted "
         r"player "
         r"\(envs with one: .*GuessTheNumber.*set pretrain\.steps=0"),
    Case("scripted player's noise above 1", checked(pretrain__noise=1.5),
         ConfigError, r"config\.pretrain\.noise: must be in \[0, 1\]"),
    # ---- choices, field types and names (ml_collections' locked, type-safe default config is the schema)
    Case("the removed variant field", checked(variant="single"),
         ConfigError, r"config\.variant: is no longer a config field: the variant is the config file's argument "
                      r"\(--config=configs/default\.py:single"),
    Case("unknown config variant", lambda ctx: tiny.get_config("singel"),
         ValueError, r"unknown config variant 'singel'; choose one of \['orbit', 'single', 'compare'\]"),
    Case("bad decoding", checked(decoding="beam"),
         ConfigError, r"config\.decoding: must be 'constrained' or 'free' \(.*\), got 'beam'"),
    Case("bad thinking", checked(thinking="drop"),
         ConfigError, r"config\.thinking: must be 'keep' \(ORBIT's paper run.*or 'strip'.*got 'drop'"),
    Case("stripped thinking with constrained decoding", checked(thinking="strip"),
         ConfigError, r"config\.thinking: 'strip' needs decoding='free'"),
    Case("stripped thinking without a </think> token", built(thinking="strip", decoding="free", answer_coef=0.0),
         ValueError, r"thinking='strip' needs a tokenizer with '</think>' as one token.*Use thinking='keep'"),
    Case("an infinite temperature", checked(temperature=float("inf")),
         ConfigError, r"config\.temperature: must be a finite number \(> 0 .*got inf"),
    Case("an infinite learning rate", checked(optimizer__learning_rate=float("inf")),
         ConfigError, r"config\.optimizer\.learning_rate: must be a finite number \(> 0\), got inf"),
    Case("a NaN clip", checked(clip_high=float("nan")),
         ConfigError, r"config\.clip_high: must be a finite number \(>= 0\), got nan"),
    Case("2**70 steps", checked(num_steps=2**70),
         ConfigError, r"config\.num_steps: must be at most 2,147,483,647 \(2\*\*31 - 1: counts and sizes are int32 "
                      r"on the device\), got 1,180,591,620,717,411,303,424"),
    Case("2**70 evaluation trials", checked(eval_trials=2**70),
         ConfigError, r"config\.eval_trials: must be at most 2,147,483,647"),
    Case("a task context of 2**70 tokens", checked(eval_tasks=[dict(env_id="game:GuessTheNumber-v0-easy",
                                                                      context_len=2**70)]),
         ConfigError, r"config\.eval_tasks\[0\]\.context_len: must be at most 2,147,483,647"),
    Case("bad wandb.mode", checked(wandb__project="p", wandb__mode="cloud"),
         ConfigError, r"config\.wandb\.mode: must be one of \('offline', 'online'\).*got 'cloud'"),
    Case("bad mesh.mode", checked(mesh__mode="pipeline"),
         ConfigError, r"config\.mesh\.mode: must be one of \('none', 'data', 'fsdp', 'tensor'\).*got 'pipeline'"),
    Case("mesh.data not dividing the batch", checked(mesh__mode="data", mesh__data=3),
         ConfigError, r"config\.mesh\.data: must be -1 \(all devices\) or an int >= 1 dividing num_tasks \* "
                      r"group_size = 4, got 3"),
    Case("mesh.distributed not a bool", checked(mesh__distributed="auto"),
         ConfigError, r"config\.mesh\.distributed: must be True or False \(or None\) like the default None, got 'auto' "
                      r"\(str\)"),
    Case("wrong-type boolean (int)", checked(intro=1), ConfigError, r"config\.intro: must be True or False like the default False, got 1 \(int\)"),
    Case("wrong-type boolean (string)", checked(allow_truncation="yes"),
         ConfigError, r"config\.allow_truncation: must be True or False like the default True, got 'yes' \(str\)"),
    Case("tokenizer not a string", checked(tokenizer=None), ConfigError, r"config\.tokenizer: None is neither 'word' \(the built-in vocabulary\) nor a local tokenizer directory"),
    Case("unknown config field", checked(num_task=3),
         ConfigError, r"config\.num_task: is not a field of the config; did you mean 'num_tasks'\?"),
    Case("chat_format with the word tokenizer", checked(chat_format=True),
         ConfigError, r"config\.chat_format: needs a Hugging Face tokenizer directory with a chat template.*"
                      r"Set chat_format=False"),
    # ---- model
    Case("missing pretrained dir", checked(model__pretrained_dir="/no/such/model"),
         ConfigError, r"config\.model\.pretrained_dir: '/no/such/model' is not a directory; give a local Hugging "
                      r"Face model directory"),
    Case("unknown preset", checked(model__preset="huge"),
         ConfigError, r"config\.model\.preset: unknown preset 'huge'; presets: \['small', 'tiny'\]"),
    Case("unknown model.overrides field", checked(model__overrides={"hidden_sise": 32}),
         ConfigError, r"config\.model\.overrides\.hidden_sise: is not a ModelConfig field; did you mean 'hidden_size'\?"),
    Case("model.overrides that make no valid model", checked(model__overrides={"num_heads": 6, "num_kv_heads": 4}),
         ConfigError, r"config\.model\.overrides: .* do not make a valid model: num_heads=6 must be a multiple of "
                      r"num_kv_heads=4"),
    Case("model.overrides of the vocabulary", checked(model__overrides={"vocab_size": 10}),
         ConfigError, r"config\.model\.overrides\.vocab_size: is taken from the tokenizer"),
    # ---- pretrained directories
    Case("pretrained dir with a wrong model_type", lambda ctx: load_pretrained(edit_config_json(ctx, model_type="gpt2")),
         ValueError, r"unsupported architecture model_type='gpt2' in .*config\.json; supported: qwen3, llama"),
    Case("pretrained dir with a wrong architecture",
         lambda ctx: build.build_run(config(model__pretrained_dir=edit_config_json(
             ctx, architectures=["Qwen3ForSequenceClassification"]))),
         ValueError, r"unsupported architectures=\['Qwen3ForSequenceClassification'\] .*loads Qwen3ForCausalLM"),
    Case("float8 weight dtype in config.json", lambda ctx: load_pretrained(edit_config_json(ctx, torch_dtype="float8_e4m3fn")),
         ValueError, r"torch_dtype='float8_e4m3fn' in .* is a quantized dtype, which cannot run here.*dequantize"),
    Case("unknown dtype string in config.json", lambda ctx: load_pretrained(edit_config_json(ctx, dtype="float33")),
         ValueError, r"dtype='float33' in .* is not a dtype name; supported weight dtypes: float32, bfloat16"),
    Case("compute dtype the device cannot run",
         lambda ctx: load_pretrained(str(ctx.model_dir()), dtype=jnp.float8_e4m3fn),
         ValueError, r"dtype=float8_e4m3fn cannot run on this \w+ backend; the model runs in float32, bfloat16, float16"),
    Case("NaN in the weights", nan_weight,
         ValueError, r"tensor 'model.norm.weight' in .*model.safetensors holds 1 NaN or infinite value\(s\); the "
                     r"checkpoint is corrupt"),
    Case("float64 weights beyond float32", float64_beyond_float32,
         ValueError, r"tensor 'model.norm.weight' in .* holds a value of magnitude 1e\+300, beyond the largest float32"),
    Case("config.json a symlink loop", lambda ctx: linked(ctx, "config.json", "config.json"),
         OSError, r"config\.json is a symbolic link loop \(it leads back to itself\); replace it with the file"),
    Case("weights a symlink loop", lambda ctx: linked(ctx, "model.safetensors", "model.safetensors"),
         OSError, r"model\.safetensors is a symbolic link loop"),
    Case("weights a broken symlink", lambda ctx: linked(ctx, "model.safetensors", "/no/such/weights.safetensors"),
         FileNotFoundError, r"model\.safetensors is a broken symbolic link \(to '/no/such/weights\.safetensors'"),
    Case("a stale extra weights file", stale_extra_weights_file,
         ValueError, r"tensor '.*' is stored twice: in .*model-old.safetensors and in .*model.safetensors; a stale "
                     r"weights file"),
    Case("zero layers in config.json", lambda ctx: load_pretrained(edit_config_json(ctx, num_hidden_layers=0)),
         ValueError, r"num_hidden_layers=0 in .*config.json must be a positive int below 2\*\*31"),
    Case("an empty workdir", lambda ctx: train.train_and_evaluate(config(), ""),
         ValueError, r"the workdir is an empty path; give a directory \(for example --workdir=/tmp/metarl_run\)"),
    Case("a shard index leaving the model directory", shard_index_leaving_the_directory,
         ValueError, r"points to shard\(s\) \['\.\./outside/w.safetensors'\] outside"),
    Case("float8 tensors in the weights", float8_tensors,
         ValueError, r"tensor '.*' in .* is stored as F8_E4M3, which cannot be loaded.*Dequantize"),
    Case("weights that do not match config.json",
         lambda ctx: load_pretrained(edit_config_json(ctx, vocab_size=65)),
         ValueError, r"tensor 'model\.embed_tokens\.weight' has shape \(64, 16\).*expected \(65, 16\) from "
                     r"config\.json; the weights and config\.json do not match"),
    Case("pickle weights only", weights_replaced_by_pickle,
         FileNotFoundError, r"no \.safetensors weights in .*found \['pytorch_model\.bin'\].*convert them to safetensors"),
    Case("corrupt weights file", corrupt_weights,
         ValueError, r"cannot read weights file .*model\.safetensors.*not a valid safetensors file"),
    Case("checkpoint of another shape", checkpoint_of_another_shape,
         CheckpointMismatchError, r"leaf 'train_state/w' has saved shape \(2, 3\), expected shape \(3, 3\).*fresh workdir"),
    # ---- tokenizers
    Case("word vocabulary lacking an env's words", word_vocabulary_of_another_env,
         ValueError, r"the word vocabulary lacks \[.*\] used by piece \d+ of 'game:Wordle-v0-hard': .*"
                     r"python -m metarl_jax\.text\.build_vocab"),
    Case("word vocabulary lacking an action", word_vocabulary_without_an_action,
         ValueError, r"the word vocabulary lacks \['above'\] used by action 1 of 'game:Wordle-v0-hard': "
                     r"'\\\\boxed\{above\}'"),
    Case("HF tokenizer producing unknown tokens", hf_tokenizer_with_unknown_tokens,
         ValueError, r"maps \[.*\] of piece \d+ of 'maze' \(.*\) to its unknown token; use a tokenizer whose "
                     r"vocabulary covers the env's text"),
    Case("unknown env id in make", lambda ctx: envs.make("game:GuessTheNumbr-v0-hard"),
         KeyError, r"unknown env id 'game:GuessTheNumbr-v0-hard'; did you mean 'game:GuessTheNumber-v0-hard'\? "
                   r"Registered: "),
    Case("override of the wrong type in make", lambda ctx: envs.make("game:GuessTheNumber-v0-hard", max_turns="7"),
         TypeError, r"make\('game:GuessTheNumber-v0-hard'\): max_turns='7' must be an int \(like the default, 7\), "
                    r"not str"),
    Case("override beyond int32 in make", lambda ctx: envs.make("game:GuessTheNumber-v0-hard", high=2**40),
         ValueError, r"high=1,099,511,627,776 is beyond int32"),
]


@pytest.fixture(scope="module")
def source_model(tmp_path_factory) -> str:
    """A tiny Qwen3 directory (config.json + model.safetensors, vocabulary 64, hidden 16) written locally."""
    from flax import nnx

    from metarl_jax.models import Transformer, preset

    cfg = preset("tiny", 64).replace(num_layers=1, hidden_size=16, intermediate_size=32, head_dim=8)
    out = str(tmp_path_factory.mktemp("tiny_qwen3"))
    save_pretrained(Transformer(cfg, rngs=nnx.Rngs(0)), out)
    return out


def test_the_table_is_large_and_distinct():
    assert len(CASES) >= 20
    assert len({c.name for c in CASES}) == len(CASES)
    assert len({c.pattern for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_naming_the_cause(case, tmp_path, source_model):
    with pytest.raises(case.error, match=case.pattern):
        case.action(Ctx(tmp_path, source_model))


def test_good_configs_and_the_tiny_model_pass(source_model):
    """The table's baselines are valid: the shipped configs check and the tiny directory loads."""
    from metarl_jax.configs import default

    for variant in ("orbit", "single", "compare"):
        check_config(default.get_config(variant))
        check_config(tiny.get_config(variant))
    check_config(config())
    assert load_pretrained(source_model).config.vocab_size == 64


# ---------------------------------------------------------------- parse_action never crashes

ENV_IDS = envs.registered()
# Any code point, lone surrogates and control characters included, mixed with the pieces of a box.
ANY_CHAR = st.characters(exclude_categories=())
NOISE = st.lists(st.one_of(st.text(ANY_CHAR, max_size=12),
                           st.sampled_from(["\\boxed{", "\\boxed", "{", "}", "\\", " ", "\n", "\\boxed{}"])),
                 max_size=8).map("".join)


@pytest.fixture(scope="module")
def envs_and_trials():
    return {i: (envs.make(i)[0], envs.make_trial(i)[0]) for i in ENV_IDS}


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_parse_action_is_total_on_random_unicode(env_id, envs_and_trials):
    env, trial = envs_and_trials[env_id]

    @given(noise=NOISE, action=st.integers(0, env.num_actions - 1), upper=st.booleans())
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    def check(noise, action, upper):
        got = env.parse_action(noise)
        assert isinstance(got, int) and -1 <= got < env.num_actions
        assert trial.parse_action(noise) == got
        # The last box wins whatever comes before it; case and spacing inside the box do not matter.
        text = env.action_text(action)
        assert env.parse_action(noise + (text.upper().replace("\\BOXED", "\\boxed") if upper else text)) == action

    check()


@pytest.mark.parametrize("junk", [None, b"\\boxed{1}", 7, ["\\boxed{1}"], "\\boxed{1", "\ud800\\boxed{\udfff}"])
def test_parse_action_of_non_text_is_invalid(junk):
    env, _ = envs.make(GTN_HARD)
    assert env.parse_action(junk) == -1


# ---------------------------------------------------------------- the command line's config errors


@pytest.mark.parametrize("args, message", [
    (["--config=/no/such/config.py"],
     r"^error: --config: cannot load the config file: \[Errno 2\] No such file or directory: '/no/such/config\.py'"),
    (["--config.num_stepz=3"], r"^error: --config: the config has no field 'num_stepz' to override\. Did you mean "
                               r"'num_steps'\?$"),
    (["--config.variant=single"], r"^error: --config: the config has no field 'variant' to override\. variant is no "
                                  r"longer a config field: the variant is the config file's argument"),
    ("SYNTAX", r"^error: --config: .*broken\.py line 1 is not valid Python \(.*\); fix the file and rerun$"),
    (["--workdir="], r"^error: --workdir: the workdir is an empty path; give a directory"),
    (["--config.temperature=inf"], r"^error: config\.temperature: must be a finite number"),
], ids=["missing file", "misspelt override", "removed field", "syntax error", "empty workdir", "infinite value"])
def test_cli_config_errors_are_one_line_without_a_traceback(tmp_path, args, message):
    import re
    import subprocess
    import sys

    if args == "SYNTAX":
        (tmp_path / "broken.py").write_text("def get_config(:\n")
        args = [f"--config={tmp_path / 'broken.py'}"]
    workdir = [] if any(a.startswith("--workdir") for a in args) else [f"--workdir={tmp_path / 'run'}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "metarl_jax.main", *args, *workdir],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr[-2000:]
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "checkpoints").exists(), "nothing is written"


def test_cli_refuses_a_run_far_beyond_memory_in_one_line(tmp_path):
    """eval_trials=1e9 used to end in a raw RESOURCE_EXHAUSTED naming no field; now it is refused before compiling,
    in one line naming the field and the override."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "metarl_jax.main", f"--config={ROOT / 'configs' / 'tiny.py'}",
                           f"--workdir={tmp_path / 'run'}", "--config.eval_trials=1000000000"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith("error: refusing to compile: the held-out evaluation's records need roughly")
    assert "lower config.eval_trials (now 1,000,000,000 per env)" in lines[0]
    assert "config.ignore_memory_estimate=True" in lines[0]
