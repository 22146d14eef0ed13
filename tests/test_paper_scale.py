"""The paper-scale path: real Qwen3 configs load, and their parameter counts are the released models'; the paper
config holds the values of ORBIT's released training setup."""

import importlib.util
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from metarl_jax.models.config import QWEN3_SIZES, qwen3_config_json
from metarl_jax.models.hf_io import read_config

# Parameter counts of the released checkpoints (their model cards), in billions.
RELEASED = {"0.6B": 0.6, "1.7B": 1.7, "4B": 4.0, "8B": 8.2, "14B": 14.8}


@pytest.mark.parametrize("size", list(QWEN3_SIZES))
def test_qwen3_configs_load_with_the_released_parameter_counts(size, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(qwen3_config_json(size)))
    c = read_config(str(tmp_path))
    assert (c.model_type, c.vocab_size, c.num_kv_heads, c.head_dim, c.rope_theta) == ("qwen3", 151936, 8, 128, 1e6)
    per_layer = (c.hidden_size * c.num_heads * c.head_dim * 2 + 2 * c.hidden_size * c.num_kv_heads * c.head_dim
                 + 3 * c.hidden_size * c.intermediate_size + 2 * c.hidden_size + 2 * c.head_dim)
    total = c.num_layers * per_layer + c.vocab_size * c.hidden_size * (1 if c.tie_embeddings else 2) + c.hidden_size
    assert abs(total / 1e9 - RELEASED[size]) < 0.05, total


def paper_config():
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "paper.py")
    spec = importlib.util.spec_from_file_location("paper_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_paper_config_holds_the_released_training_values(tmp_path):
    """The values ORBIT's released code fixes (its training script on verl 0.6.1), and the config check passes
    (with a local chat tokenizer, which the paper config needs)."""
    from metarl_jax import config_check
    from metarl_jax.text.tiny import make_bpe_tokenizer

    c = paper_config()
    c.tokenizer = make_bpe_tokenizer(["You guessed \\boxed{25}."], str(tmp_path), vocab_size=300)
    config_check.check_config(c)
    o = c.optimizer
    assert (o.learning_rate, o.b1, o.b2, o.weight_decay, o.grad_clip, o.warmup_steps) == (1e-6, 0.9, 0.999, 0.01, 1.0, 0)
    assert (c.advantage_std_ddof, c.clip_low, c.clip_high, c.dual_clip, c.kl_coef, c.entropy_coef) == (1, 0.2, 0.28, 3.0, 0, 0)
    assert (c.num_tasks, c.group_size, c.update_epochs, c.num_steps, c.mix_games) == (32, 8, 1, 800, True)
    assert (c.temperature, c.eval_temperature, c.eval_top_p) == (0.6, 0.6, 0.95)
    assert (c.train_set_size, c.eval_trials, c.discount, c.observation_coef, c.answer_coef) == (512, 256, False, 0, 0)
    assert (c.free_stop, c.free_budget, c.truncated_return, c.task_sampling, c.eval_every, c.eval_before_training) == (
        "end_of_turn", "remaining", "zero", "epochs", 10, True)
    assert (c.chat_format, c.intro, c.repeat_opening, c.reflection, c.context_len) == (True, True, True, False, 32768)


def test_paper_optimizer_is_torch_adamw_with_clipping():
    """Two steps of the paper config's optimizer against torch.optim.AdamW's update rule after global-norm
    clipping at 1.0, written out in NumPy (bias-corrected moments, eps 1e-8, decoupled decay lr * wd * p)."""
    from metarl_jax.build import build_optimizer

    c = paper_config()
    c.optimizer.learning_rate = 1e-2  # large enough that the decay and the moments both show
    opt = build_optimizer(c)
    p = {"w": jnp.array([1.0, -2.0, 0.5])}
    grads = [np.array([3.0, -4.0, 0.0]), np.array([0.1, 0.2, -0.3])]  # the first is clipped (norm 5)
    state = opt.init(p)
    ref, m, v = np.array([1.0, -2.0, 0.5]), np.zeros(3), np.zeros(3)
    lr, b1, b2, wd = 1e-2, 0.9, 0.999, 0.01
    for t, g in enumerate(grads, start=1):
        updates, state = opt.update({"w": jnp.asarray(g)}, state, p)
        p = {"w": p["w"] + updates["w"]}
        g = g / max(1.0, np.linalg.norm(g))
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        ref = ref * (1 - lr * wd) - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + 1e-8)
    np.testing.assert_allclose(np.asarray(p["w"]), ref, rtol=1e-5, atol=1e-7)


GAMES = ["rockpaperscissors", "game:Minesweeper-v0-only-reveal", "game:Hangman-v0-easy", "game:Wordle-v0-hard",
         "game:Blackjack-v0", "maze", "game:Mastermind-v0-random"]


def make_qwen3_dir(out_dir: str, layers: int = 2, seed: int = 0) -> str:
    """A local Hugging Face directory of a random Qwen3 at Qwen3-0.6B's widths and vocabulary with ``layers``
    layers, and a byte-level BPE with a chat template trained on the games' text (nothing is downloaded)."""
    from flax import nnx

    from metarl_jax import envs
    from metarl_jax.models import Transformer
    from metarl_jax.models.config import ModelConfig
    from metarl_jax.models.hf_io import save_pretrained
    from metarl_jax.text.tiny import make_bpe_tokenizer

    import transformers

    hf = transformers.Qwen3Config(**{k: v for k, v in qwen3_config_json("0.6B", num_hidden_layers=layers).items()
                                     if k not in ("architectures", "model_type", "torch_dtype")})
    save_pretrained(Transformer(ModelConfig.from_hf(hf), rngs=nnx.Rngs(seed)), out_dir)
    texts = []
    for env_id in GAMES:
        env, _ = envs.make_trial(env_id)
        texts += list(env.pieces) + [env.action_text(a) for a in range(env.num_actions)]
    make_bpe_tokenizer(texts, out_dir, vocab_size=1024)
    return out_dir


@pytest.mark.slow  # several minutes on 2 cores
def test_paper_config_trains_and_evaluates_a_qwen3_directory_on_cpu(tmp_path):
    """configs/paper.py through ``python -m metarl_jax.main``, pointed at a local random Qwen3 (0.6B widths and
    vocabulary, 2 layers) and its BPE tokenizer: 2 ORBIT steps of free decoding on the mixture of the five
    training games, then the held-out Maze and Mastermind evaluation; sizes cut for 2 CPU cores and 24 GB."""
    import os
    import resource
    import subprocess
    import sys

    model_dir = make_qwen3_dir(str(tmp_path / "qwen3"))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    workdir = tmp_path / "run"
    overrides = dict(num_steps=2, num_tasks=5, group_size=2, free_tokens=12, context_len=2048, train_set_size=8,
                     eval_trials=4, eval_every=0, checkpoint_every=0, log_every=1)
    cmd = [sys.executable, "-m", "metarl_jax.main", "--config=configs/paper.py", f"--workdir={workdir}",
           f"--config.model.pretrained_dir={model_dir}", f"--config.tokenizer={model_dir}", "--nocompile_cache",
           *(f"--config.{k}={v}" for k, v in overrides.items())]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=1800)
    assert out.returncode == 0, out.stderr[-4000:]
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    assert peak_gb < 24, f"peak resident memory {peak_gb:.1f} GB"
    rows = json.loads((workdir / "eval.json").read_text())
    assert sorted(r["env_id"] for r in rows) == ["game:Mastermind-v0-random", "maze"]
    metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if m["kind"] == "train"]
    assert [m["step"] for m in train] == [1, 2]
    for game in GAMES[:5]:  # every game's rollout metrics are logged; a game may draw no rows in a step
        assert any(f"{game}/mean_return" in m for m in train)
    assert sum(m[f"{g}/rows"] for g in GAMES[:5] for m in train[:1]) == 10
    assert all(abs(m["loss"]) < 1e3 for m in train)
