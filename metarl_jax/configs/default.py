"""The README's main run: ORBIT meta-training of a tiny transformer on CPU, with no privileged information and
no answer loss: an imitation prior, then ORBIT's policy gradient.

Command (2 CPU cores: 11 min 25 s for the prior and both runs, measured alone on an AVX-512 EPYC, 2026-12-08)::

    python -m metarl_jax.main --workdir=/tmp/metarl_run

Variants: ``--config=configs/default.py:single`` trains only the single-episode baseline and
``--config=configs/default.py:orbit`` only the multi-episode run (each with its own imitation phase); the default
(``:compare``) trains the imitation prior once, then both runs from it with the same budget (600 GRPO steps
each), and prints the three's held-out per-episode success side by side.

The task mix: GuessTheNumber-easy (1..10, 4 turns, 3 episodes) and GuessTheNumber-hard (1..50, 7 turns, 3
episodes), built-in word vocabulary, no downloads. Held out: 256 validation trials of each, drawn from a
separate key. The text is ``terse`` (the rules in one line, then one feedback word per guess:
``\\boxed{25} lower``, and ``\\boxed{31} correct:31``, restating a found secret as GEM's sentence does), shown in
the first episode only (``repeat_opening=False``), and the context is capped at 160 / 224 tokens with ORBIT's
truncation (a trial stops when its context is full).

The prior (``pretrain``; the CPU stand-in for starting from a pretrained LM): 500 steps of next-token loss on
transcripts of a scripted player who searches inside each episode (uniform among the numbers the episode's
feedback allows, uniform among all a quarter of the time), played as independent games back to back (a new
secret every episode), so the prior can search but has no reason to use earlier episodes. Then 600 RL steps at
lr 3e-4: ORBIT's PPO-clip policy gradient on the trial return with LaMer's cross-episode discount
(``discount``), plus next-token prediction of the observation text (``observation_coef``: only what the policy
itself saw; not in ORBIT). The answer loss (``answer_coef``) is off. Both runs get the same losses.

Expected result (measured 2026-12-08, seed 0, on that machine; bit for bit on the same kind of CPU, statistically
elsewhere: docs/determinism.md), held-out episode 1 / 2 / 3 success: GuessTheNumber-hard: prior 0.508 / 0.582 /
0.480, ORBIT 0.531 / 0.883 / 0.969 (+0.438), single-episode 0.633 / 0.520 / 0.516 (-0.117); GuessTheNumber-easy:
prior 0.711 / 0.719 / 0.781, ORBIT 0.699 / 1.000 / 1.000, single-episode 0.922 / 0.941 / 0.949. Over seeds 0, 1, 2
on -hard: ORBIT 0.643 / 0.915 / 0.960, single-episode 0.663 / 0.620 / 0.620, a lead of 0.340 at episode 3
(results/main_run_restated_secret_per_seed.json). Random play: 0.4 per easy episode, 0.15 per hard one. What makes
the gain, with 3 seeds (measured before the terse text restated a found secret): results/mechanism.md, from
``python experiments/ablations.py --table mechanism --seeds 0,1,2``.
Numbers go to ``<workdir>/comparison.md`` and ``comparison.json``.
"""

import ml_collections

from metarl_jax.configs import check_variant


def task(env_id: str, max_turns: int, cap: int, context_len: int = 0) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(env_id=env_id, max_turns_per_episode=max_turns, total_step_cap=cap,
                                          context_len=context_len))


def get_config(variant: str = "compare") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    # The variant ("orbit", "single" or "compare") is the file's argument, not a field: single-episode training
    # trials (the standard-RL baseline) or ORBIT's multi-episode ones; "compare" is the ORBIT run's config, and the
    # command line then trains both runs (main.py's --compare).
    c.single_episode = check_variant(variant)

    # dtype: the compute dtype ("float32" or "bfloat16": half the memory and the accelerators' fast matmuls);
    # param_dtype: the weights' storage dtype (the optimizer state follows it); remat: the update's per-layer
    # rematerialisation ("none", "dots", "full": one more forward pass, or "nested": least memory, two more).
    c.model = ml_collections.ConfigDict(dict(preset="tiny", pretrained_dir="", overrides={}, dtype="float32",
                                             param_dtype="float32", remat="none"))
    c.tokenizer = "word"  # or a local Hugging Face tokenizer directory
    # What the meta-learner trains: "full" (every weight), "lora" (low-rank adapters on the layers' projections,
    # rank lora.rank, scale lora.alpha / lora.rank, on lora.targets) or "prompt" (a learned initial context:
    # prompt.length embedding vectors that open every trial). Under "lora" and "prompt" the model's weights stay
    # frozen, have no optimizer state and are not stored in the checkpoints, which record their fingerprint instead.
    c.trainable = "full"
    c.lora = ml_collections.ConfigDict(dict(rank=8, alpha=16.0, targets=("q_proj", "k_proj", "v_proj", "o_proj",
                                                                         "gate_proj", "up_proj", "down_proj")))
    c.prompt = ml_collections.ConfigDict(dict(length=8))

    c.train_tasks = [
        task("game:GuessTheNumber-v0-easy", 4, 12, context_len=160),
        task("game:GuessTheNumber-v0-hard", 7, 21, context_len=224),
    ]
    c.eval_tasks = [
        task("game:GuessTheNumber-v0-hard", 7, 21, context_len=224),
        task("game:GuessTheNumber-v0-easy", 4, 12, context_len=160),
    ]
    # One program for all envs: a batch of num_tasks tasks drawn from the union of the envs' task sets (ORBIT's
    # shuffled mix; compile time does not grow with the number of envs). False: num_tasks tasks of every env,
    # each env rolled out and differentiated on its own.
    c.mix_games = False
    c.train_set_size = 512  # ORBIT: 512 training tasks per env
    c.eval_trials = 256  # ORBIT: 256 validation tasks per env
    c.num_episodes_reported = 3
    # Training trials end after this many episodes; 0: when the step cap is reached (ORBIT's trial, whose episodes
    # may outnumber the reported ones). The held-out trials and an imitation corpus of independent games
    # (pretrain.new_task_each_episode) keep the step cap.
    c.train_max_episodes = 0

    # Decoding: "constrained" (only valid action texts) or "free" (up to free_tokens tokens, then the
    # \boxed{...} is parsed; no valid box is a format error, as in ORBIT).
    c.decoding = "constrained"
    c.free_tokens = 16
    # Free decoding's turn end: "action" (the first complete action text) or "end_of_turn" (ORBIT: the end-of-turn
    # token, then the last \boxed{...} is parsed); its budget: "fixed" (free_tokens a turn) or "remaining" (ORBIT:
    # the context's remaining room, at most free_tokens).
    c.free_stop = "action"
    c.free_budget = "fixed"
    # Earlier turns' thinking: "keep" (ORBIT's paper run: the context only grows) or "strip" (rLLM's
    # accumulate_reasoning=False: once a turn ends, only what follows its last "</think>" stays in the context;
    # needs free decoding and a tokenizer with a "</think>" token).
    c.thinking = "keep"

    # Chat format: observations as user turns, actions as assistant turns (needs an HF tokenizer's template).
    c.chat_format = False

    # Trial text. "gem": GEM's sentences (ORBIT's text); "terse": the rules in one line, then one feedback word
    # per turn after the guess ("\\boxed{25} lower"; a found secret is restated: "correct:31"): a third of the
    # tokens, which makes a from-scratch model's steps ~2.5x cheaper and lets it learn the game within the CPU budget.
    c.text = "terse"
    c.intro = False
    c.repeat_opening = False
    c.reflection = False
    c.context_len = 0  # default for tasks without their own; 0 = the worst case (never truncates)
    c.allow_truncation = True  # ORBIT: when the context is full the trial stops
    # What such a trial returns: "keep" (the rewards earned before the cut; this CPU run) or "zero" (ORBIT's code).
    c.truncated_return = "keep"

    # GRPO (ORBIT: 32 tasks x 8, lr 1e-6, temperature 0.6 for 4B-14B models; a tiny model needs far more lr:
    # 3e-3 rose across episodes with seeds 0 to 3; 6e-3 gave about no rise with seeds 0 and 1).
    c.num_tasks = 4  # per env per step (with mix_games: per step over the mixture)
    # "replacement": each step draws its tasks independently; "epochs" (ORBIT): each epoch visits every task once.
    c.task_sampling = "replacement"
    c.group_size = 8
    c.update_epochs = 1  # gradient updates per batch (ORBIT: 1); more reuse each rollout, bounded by the clip
    c.temperature, c.top_p = 1.0, 1.0  # sampling of the training rollouts ...
    c.eval_temperature, c.eval_top_p = 0.6, 0.95  # ... and of the held-out evaluation
    c.clip_low, c.clip_high = 0.2, 0.28  # PPO's ratio clip, asymmetric (DAPO's clip-higher, as ORBIT)
    c.dual_clip = 3.0  # dual-clip PPO bound on negative advantages (verl's clip_ratio_c); inert with update_epochs=1
    # The advantage's group std: 0 the population std, 1 the sample std (ORBIT's, configs/paper.py). The CPU run's
    # numbers were measured with 0.
    c.advantage_std_ddof = 0
    c.kl_coef = 0.0
    c.entropy_coef = 0.0
    # Weight of ORBIT's PPO-clip policy-gradient term; 0 leaves only the auxiliary losses below (an ablation).
    c.policy_coef = 1.0
    # Auxiliary next-token loss on the observation text (not in ORBIT, which starts from a pretrained LM):
    # teaches a from-scratch model the game's text, e.g. what "higher than 25" implies.
    c.observation_coef = 1.0
    # Auxiliary answer loss (not in ORBIT): -log-prob of an answer action at every turn (task inference as in
    # Humplik et al. 2019, the optimal-action target of Lee et al. 2023's DPT); the policy never sees the target.
    # 0: off. Its target, answer_from: "hindsight" (the action that won the row's first won episode, read from its
    # own transcript: only what the policy saw; rows that never won: no loss) or "task" (the secret number:
    # privileged task information, an ablation).
    c.answer_coef = 0.0
    c.answer_from = "hindsight"
    # LaMer's variant of the trial in ORBIT's repository (off: ORBIT's trial): the trial stops at its first success,
    # which earns lamer_gamma ** (its 0-based episode index), and with reflection=True and free decoding a
    # reflection turn that writes <remark> ... </remark> earns lamer_remark_reward.
    c.lamer_trial = False
    c.lamer_gamma = 0.6
    c.lamer_remark_reward = 1.0
    c.discount = True  # LaMer's cross-episode discount
    c.gamma_step = 0.95
    c.gamma_traj = 0.6
    # With the discount, each turn's return-to-go is normalised over the group's turns that share its "turn"
    # (position in the trial), its "episode_turn" (episode and position in it), or its "record" (those, and how many
    # earlier episodes were won and whether the last one was: a search after a loss is then compared with other
    # searches after a loss, not with repeats of a found answer).
    c.advantage_groups = "turn"

    # Scale (metarl_jax.sharding): "none" (one device), "data" (trial batch on the mesh's data axis), "fsdp"
    # (parameters sharded on data too) or "tensor" (parameters sharded on the model axis). distributed: None
    # initializes jax.distributed only when the environment shows several processes.
    c.mesh = ml_collections.ConfigDict(dict(mode="none", data=-1, model=1,
                                            distributed=ml_collections.config_dict.placeholder(bool)))

    # Memory: the rollout and the update run in row micro-batches (rollout_rows, update_rows: divisors of
    # num_tasks * group_size; gradients are accumulated), each 0 = the largest that the memory budget holds
    # (memory_budget_gb per device; 0 = the device's memory). The default run fits whole.
    c.memory_budget_gb = 0.0
    c.rollout_rows = 0
    c.update_rows = 0
    # A run whose update or evaluation the up-front estimate puts far beyond the device's memory (4x) is refused
    # before compiling; True compiles it anyway (for a device the estimate misjudges).
    c.ignore_memory_estimate = False

    # Imitation phase (not in ORBIT, which starts from a pretrained LM that already plays sensibly): the first
    # pretrain.steps of the num_steps steps imitate a scripted player (metarl_jax.baselines.players.episode_player)
    # instead of the RL step: next-token loss on its moves and on the observations, no reward. It guesses uniformly
    # among the numbers this episode's feedback allows, among all with probability pretrain.noise, and plays every
    # episode afresh. With pretrain.new_task_each_episode every episode of the corpus's trials has its own secret
    # (independent games back to back), so neither the player's moves nor the observations carry anything across
    # episodes: the prior can search inside an episode and has no reason to use the earlier ones. False: the
    # corpus plays ORBIT's trials (one secret throughout), whose feedback in later episodes the earlier episodes
    # predict, which the prior then learns to use. Both runs of the comparison start the RL phase from the same
    # prior. Its learning rate is pretrain.learning_rate; the RL phase then warms up again to
    # optimizer.learning_rate. steps=0: no phase (the model starts from its initialization or pretrained_dir).
    # pretrain.observation_coef: the phase's weight on the observation loss (the RL phase's is observation_coef).
    c.pretrain = ml_collections.ConfigDict(dict(steps=500, noise=0.25, learning_rate=3e-3, new_task_each_episode=True,
                                                observation_coef=1.0))

    # The RL phase's rate: 3e-4 keeps the prior's search (3e-3, the from-scratch rate, first broke it).
    c.optimizer = ml_collections.ConfigDict(dict(learning_rate=3e-4, warmup_steps=10, grad_clip=1.0,
                                                 b1=0.9, b2=0.99, weight_decay=0.0))
    c.num_steps = 1100  # the imitation phase's 500, then 600 RL steps
    c.eval_before_training = False  # ORBIT also validates the untrained policy (configs/paper.py)
    c.eval_every = 0  # held-out evaluation at the end only (each one costs ~10 s of the 10-minute budget)
    c.log_every = 5
    # Weights & Biases (optional: pip install "metarl_jax[wandb]"): a project name mirrors the train and eval rows,
    # the config and the eval transcripts to a wandb run in <workdir>/wandb ("offline": no network, upload later
    # with `wandb sync`; "online"). A resumed run continues the same wandb run. "": off.
    c.wandb = ml_collections.ConfigDict(dict(project="", mode="offline"))
    c.checkpoint_every = 50
    c.keep_checkpoints = 2

    # Faults: a step whose gradients are not finite is skipped (weights and optimizer unchanged); this
    # many skipped steps in a row stop the run with a FloatingPointError.
    c.max_consecutive_skips = 5
    # Testing only: NaN gradients in steps inject_nan_step .. inject_nan_step + inject_nan_count - 1 (numbered
    # from 1 as in the logs; -1: off).
    c.inject_nan_step = -1
    c.inject_nan_count = 1

    # Locked and type-safe (ml_collections): setting a field the config lacks (c.num_task = 3, --config.num_task=3)
    # is refused with the closest name, and so is a value its field's type cannot take; model.overrides stays open
    # to ModelConfig's fields. This config is the schema of every run config (metarl_jax.config_check).
    c.lock()
    c.model.overrides.unlock()
    return c
