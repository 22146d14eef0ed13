"""ORBIT's published setting: a pretrained Qwen3 meta-trained on five games, held-out Maze and Mastermind.

Command (an accelerator; the model and its tokenizer come from a local directory, nothing is downloaded)::

    python -m metarl_jax.main --config=configs/paper.py --workdir=/tmp/orbit_qwen3 \\
        --config.model.pretrained_dir=/path/to/Qwen3-4B --config.tokenizer=/path/to/Qwen3-4B

What it runs (ORBIT's values, from the paper and its released code): GRPO with 8 rollouts per task and 32
tasks a step drawn from a shuffled mix of rock-paper-scissors, Minesweeper, Hangman, Wordle and Blackjack
(``mix_games``: one program for all five), 800 steps (10 epochs of 2,560 tasks), lr 1e-6, temperature 0.6,
no KL, no entropy bonus, chat format, free decoding (a turn ends at the end-of-turn token, after at most the
context's remaining room or 1,024 tokens, and its last ``\\boxed{}`` is parsed), a 32,768-token context with
ORBIT's truncation (a trial that fills it returns 0), bfloat16 compute with float32 weights. Rollout and update
run in row micro-batches sized from the device's memory (``memory_budget_gb``; ``benchmarks/paper_scale.py``
gives XLA's own memory figure per model size and mesh: Qwen3-1.7B fits one 141 GB device; Qwen3-14B fits 8
devices of 80 GB with ``--config.mesh.mode=fsdp --config.model.remat=nested``). Evaluation: before training,
every 10 steps and at the end, 256 held-out trials each of Maze and Mastermind at temperature 0.6, top-p 0.95.

Expected result: not measured yet at this scale (no paper-scale run has been made with this library; the
paper reports that episode-3 success rises above episode 1 on the held-out games after training). A CPU smoke
run of the same config with a random 2-layer model at Qwen3-0.6B widths is ``tests/test_paper_scale.py``.
"""

from metarl_jax.configs.default import get_config as default_config
from metarl_jax.configs.default import task


def get_config(variant: str = "orbit"):
    c = default_config(variant)
    c.model.pretrained_dir = ""  # set: a local Qwen3 directory
    c.tokenizer = "word"  # set: the same directory (its tokenizer and chat template)
    c.model.dtype, c.model.param_dtype = "bfloat16", "float32"  # bf16 compute, float32 master weights (verl's FSDP)
    # Each layer's activations recomputed in the update: a 32,768-token row then fits. "nested" also recomputes
    # groups of layers for one more forward pass; Qwen3-14B on 8 devices (FSDP) needs it to fit 80 GB each.
    c.model.remat = "full"
    c.chat_format = True
    # Thinking, then \boxed{...}: a turn ends at the end-of-turn token and its last box is parsed (ORBIT). ORBIT lets
    # a turn write up to the context's remaining room; here that room is capped by free_tokens, the per-turn buffer
    # (the memory figures of benchmarks/paper_scale.py were measured with 1,024; raise it to come closer to ORBIT).
    c.decoding, c.free_tokens, c.free_stop, c.free_budget = "free", 1024, "end_of_turn", "remaining"
    c.thinking = "keep"  # ORBIT's paper run keeps earlier turns' thinking in the context ("strip": rLLM's default)
    c.intro, c.repeat_opening = True, True
    c.text = "gem"  # GEM's sentences, as ORBIT
    c.observation_coef = 0.0  # a pretrained LM: plain ORBIT
    c.answer_coef = 0.0
    c.pretrain.steps = 0  # a pretrained LM needs no imitation phase
    c.discount = False  # ORBIT trains on the plain trial return (LaMer's discount is the CPU run's addition)
    c.train_tasks = [task("rockpaperscissors", 5, 15), task("game:Minesweeper-v0-only-reveal", 8, 24),
                     task("game:Hangman-v0-easy", 10, 30), task("game:Wordle-v0-hard", 10, 30),
                     # ORBIT's Blackjack adapter ignores the configured 4 turns and keeps its own 30, more than the
                     # step cap: an episode ends only by standing or going bust
                     task("game:Blackjack-v0", 12, 12)]
    c.eval_tasks = [task("maze", 9, 27), task("game:Mastermind-v0-random", 3, 9)]
    c.context_len = 32768
    c.allow_truncation = True
    c.truncated_return = "zero"  # ORBIT's rLLM fork: a trial cut by the full context returns 0
    c.task_sampling = "epochs"  # verl's shuffled sampler: every training task once per epoch
    c.mix_games = True  # ORBIT's shuffled mix of the five games, one program
    c.num_tasks, c.group_size = 32, 8  # ORBIT: 32 tasks x 8 rollouts a step
    c.temperature, c.top_p = 0.6, 1.0
    c.optimizer.learning_rate, c.optimizer.warmup_steps = 1e-6, 0
    # verl's actor optimizer as ORBIT runs it: AdamW, betas (0.9, 0.999), weight decay 0.01, gradient clip 1.0
    c.optimizer.b1, c.optimizer.b2, c.optimizer.weight_decay, c.optimizer.grad_clip = 0.9, 0.999, 0.01, 1.0
    c.advantage_std_ddof = 1  # verl's GRPO advantage divides by torch.std (the sample std) + 1e-6
    c.dual_clip = 3.0  # verl's clip_ratio_c
    c.num_steps, c.eval_every, c.checkpoint_every = 800, 10, 50  # ORBIT validates every 10 steps ...
    c.eval_before_training = True  # ... and before the first
    return c
