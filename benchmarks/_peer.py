"""Shared helpers of the issue-6 benchmarks: the PyTorch + GEM rollout peer, and run metadata.

The peer is the structure of the rLLM / verl pipeline behind ORBIT, minus vLLM: a Python loop that, each
turn, tokenizes the observations of a batch of GEM (``gem-llm``) envs, prefills them into a ``transformers``
KV cache (``past_key_values``), samples the action tokens one decode call at a time, detokenizes and parses
the actions, and steps the GEM envs in Python. :class:`GemTrials` plays GEM's games as multi-episode trials
the way our :class:`~metarl_jax.envs.multi_episode.MultiEpisode` wrapper does; :class:`TorchPeer` is the
policy loop. Nothing here is used by the library itself.
"""

from __future__ import annotations

import datetime
import inspect
import os
import platform
import random
import sys
import time

import numpy as np

# GEM keeps the secret of its games in one attribute; restoring it after ``reset`` keeps the task of a trial.
TASK_ATTRS = ("game_number", "game_code")


class GemTrials:
    """``batch`` GEM envs played as multi-episode trials, with our wrapper's rules and text.

    * ``reset()`` draws a new task per row (GEM's own ``reset``); later episodes of the trial reset the GEM env
      and restore its secret (``TASK_ATTRS``), so every episode of a trial plays the same task;
    * the trial lasts exactly ``total_step_cap`` env steps; an episode that ends early starts the next one;
    * observations carry our wrapper's text: the intro (optional), the ``[Episode k] New episode begins.``
      header, GEM's instructions (repeated at every episode, as ORBIT does, unless ``repeat_opening`` is
      False), and at a boundary the finished episode's terminal observation first.

    ``make_env()`` builds one GEM env (see ``env_throughput.gem_env``).
    """

    def __init__(self, make_env, batch: int, total_step_cap: int, intro_text: str = "", repeat_opening: bool = True):
        self.envs = [make_env() for _ in range(batch)]
        self.cap = int(total_step_cap)
        self.intro = intro_text
        self.repeat_opening = repeat_opening
        self.batch = batch

    @staticmethod
    def _header(k: int) -> str:
        return f"[Episode {k}] New episode begins.\n"

    def _pin(self, env) -> dict:
        return {a: getattr(env, a) for a in TASK_ATTRS if hasattr(env, a)}

    def reset(self) -> list[str]:
        self.tasks, self.steps, self.episode, self.successes = [], [0] * self.batch, [1] * self.batch, [0] * self.batch
        obs = []
        for env in self.envs:
            text, _ = env.reset()  # a new task, drawn by GEM
            self.tasks.append(self._pin(env))
            obs.append(self.intro + self._header(1) + text)
        return obs

    def step(self, actions: list[str]) -> tuple[list[str], list[bool]]:
        """Steps every row with its action text. Returns the next observations and which rows' episodes ended
        (the row then starts its next episode, unless the trial is over)."""
        obs, ended = [], []
        for b, (env, action) in enumerate(zip(self.envs, actions)):
            text, reward, terminated, truncated, _ = env.step(action)
            self.steps[b] += 1
            done = bool(terminated or truncated)
            if done and reward >= 1.0:
                self.successes[b] += 1
            if done and self.steps[b] < self.cap:
                env.reset()
                for attr, value in self.tasks[b].items():  # same task: restore the secret
                    setattr(env, attr, value)
                self.episode[b] += 1
                text = text + "\n" + self._header(self.episode[b]) + (env._get_instructions() if self.repeat_opening else "")
            obs.append(text)
            ended.append(done)
        return obs, ended


class TorchPeer:
    """Constrained sampling of action tokens with a ``transformers`` causal LM and a KV cache, batched.

    The B rows of a batch share one forward per call: each turn's chunk (the previous action's forced tail,
    the observation, the actions' shared forced prefix) is right-padded to the longest row, the padding
    masked out by ``attention_mask`` (the cache keeps the padded slots, masked), and ``position_ids`` count
    each row's real tokens. Logits are projected only at each row's last real token, as ours does. Action
    tokens are sampled from the logits masked to the tokens that continue a still-valid action (the same
    prefix trie as our constrained decoder, as a vectorised torch mask; repeated guesses are excluded as
    ``env.valid_actions`` does), ``table.decide_len`` decode calls per turn, the rest of the action forced.
    """

    def __init__(self, model, table_tokens: np.ndarray, table_lengths: np.ndarray, prefix_len: int, decide_len: int,
                 pad_id: int, action_texts: list[str], temperature: float = 1.0, device: str = "cpu", seed: int = 0):
        import torch

        self.torch = torch
        self.model = model.eval()
        self.device = torch.device(device)
        self.tokens = torch.as_tensor(np.array(table_tokens), dtype=torch.long, device=self.device)  # [A, L]
        self.seqs = [list(map(int, row[:n])) for row, n in zip(np.asarray(table_tokens), np.asarray(table_lengths))]
        self.pre, self.decide, self.pad = int(prefix_len), int(decide_len), int(pad_id)
        self.texts = action_texts
        self.temperature = float(temperature)
        self.vocab = int(model.config.vocab_size)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        # transformers >= 5.2x names the KV cache argument ``cache``; earlier versions ``past_key_values``.
        params = inspect.signature(model.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def _forward(self, ids, attn, pos, cache):
        kw = {self._cache_kw: cache}
        out = self.model.model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, **kw)
        return out.last_hidden_state, cache  # the cache object is updated in place

    def _sample(self, logits, alive, slot):
        torch = self.torch
        col = self.tokens[:, slot]  # [A]: each action's token at this position
        allowed = torch.zeros(logits.shape, dtype=torch.float32, device=self.device)
        allowed.scatter_add_(1, col[None, :].expand(alive.shape[0], -1), alive.float())
        logits = logits.masked_fill(allowed <= 0, float("-inf"))
        probs = torch.softmax(logits / self.temperature, dim=-1)
        token = torch.multinomial(probs, 1, generator=self.gen)[:, 0]
        return token, alive & (col[None, :] == token[:, None])

    def rollout(self, trials: GemTrials, encode, turns: int) -> dict:
        """Plays one batch of trials of ``turns`` env steps. Returns counts and the time spent in the model
        versus the Python side (GEM steps, tokenization, detokenization, parsing)."""
        torch = self.torch
        from transformers import DynamicCache

        B, A = trials.batch, self.tokens.shape[0]
        t_env = time.perf_counter()
        obs = trials.reset()
        env_s = time.perf_counter() - t_env
        model_s = 0.0
        cache = DynamicCache(config=self.model.config)
        attn = torch.zeros((B, 0), dtype=torch.long, device=self.device)
        length = torch.zeros((B,), dtype=torch.long, device=self.device)  # real tokens per row
        pending = [[] for _ in range(B)]  # the forced tail of each row's previous action
        guessed = torch.zeros((B, A), dtype=torch.bool, device=self.device)
        prefix = self.seqs[0][: self.pre]
        rows = torch.arange(B, device=self.device)
        counts = dict(obs_tokens=0, action_tokens=0, sampled_tokens=0, env_steps=0, padded_slots=0, model_calls=0)
        with torch.inference_mode():
            for _ in range(turns):
                t0 = time.perf_counter()
                obs_ids = [encode(o) for o in obs]
                chunks = [p + o + prefix for p, o in zip(pending, obs_ids)]
                counts["obs_tokens"] += sum(map(len, obs_ids))
                n = torch.as_tensor([len(c) for c in chunks], device=self.device)
                width = max(len(c) for c in chunks)
                ids = torch.as_tensor([c + [self.pad] * (width - len(c)) for c in chunks], device=self.device)
                t1 = time.perf_counter()
                env_s += t1 - t0
                offs = torch.arange(width, device=self.device)[None, :]
                real = offs < n[:, None]
                attn = torch.cat([attn, real.long()], dim=1)
                pos = torch.where(real, length[:, None] + offs, 0)
                hidden, cache = self._forward(ids, attn, pos, cache)
                logits = self.model.lm_head(hidden[rows, n - 1])
                length = length + n
                counts["model_calls"] += 1
                alive = ~guessed
                for i in range(self.decide):
                    token, alive = self._sample(logits, alive, self.pre + i)
                    counts["sampled_tokens"] += B
                    if i + 1 < self.decide:  # the last sampled token is written with the next chunk, as ours does
                        attn = torch.cat([attn, torch.ones((B, 1), dtype=torch.long, device=self.device)], dim=1)
                        hidden, cache = self._forward(token[:, None], attn, length[:, None], cache)
                        logits = self.model.lm_head(hidden[:, 0])
                        length = length + 1
                        counts["model_calls"] += 1
                action = alive.float().argmax(dim=1).tolist()  # one action is left alive: it is determined
                t2 = time.perf_counter()
                model_s += t2 - t1
                texts = [self.texts[a] for a in action]
                pending = [self.seqs[a][self.pre + self.decide - 1:] for a in action]
                counts["action_tokens"] += sum(len(self.seqs[a]) for a in action)
                obs, ended = trials.step(texts)
                guessed[rows, torch.as_tensor(action, device=self.device)] = True
                done = torch.as_tensor(ended, device=self.device)
                guessed = guessed & ~done[:, None]  # a new episode: every guess is valid again
                counts["env_steps"] += B
                env_s += time.perf_counter() - t2
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        counts["padded_slots"] = int(attn.shape[1]) * B
        counts["context_tokens"] = int(length.sum())
        counts["mean_return"] = float(np.mean(trials.successes))
        counts["model_s"], counts["python_s"] = model_s, env_s
        return counts


def torch_qwen3_from_ours(graphdef, state, out_dir: str, device: str = "cpu"):
    """Our model as a ``transformers.Qwen3ForCausalLM`` with the same weights (through ``hf_io.save_pretrained``)."""
    import torch
    from flax import nnx
    from transformers import AutoModelForCausalLM

    from metarl_jax.models.hf_io import save_pretrained

    save_pretrained(nnx.merge(graphdef, state), out_dir)
    model = AutoModelForCausalLM.from_pretrained(out_dir, local_files_only=True, dtype=torch.float32)
    return model.to(device).eval()


def bench_meta(**extra) -> dict:
    """Device, date and versions, for the JSON of a benchmark."""
    import jax

    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "processor": platform.processor() or _cpu_model(),
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0]),
        "device_kind": jax.devices()[0].device_kind,
        "python": sys.version.split()[0],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "versions": _versions(),
    }
    meta.update(extra)
    return meta


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for pkg in ("jax", "jaxlib", "flax", "optax", "torch", "transformers", "gem-llm", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def seed_everything(seed: int) -> None:
    """Seeds Python's ``random`` (GEM draws its secrets with it), numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:
        pass
