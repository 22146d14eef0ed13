"""Blackjack (fixed deck, chosen hits): the deal, the oracle vs an exact host search, random play vs a host
simulation, task persistence across episodes, feedback and text rendering."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import (adhoc_word_tokenizer, binomial_tolerance, random_valid_policy, render_roundtrip,
                     run_trials)
from metarl_jax import envs
from metarl_jax.envs.base import FORMAT_ERROR, LOST, OUT_OF_TURNS, WON
from metarl_jax.text.codec import Codec

ENV_ID = "game:Blackjack-v0"
K = 10
TURNS = 4


@pytest.fixture(scope="module")
def bj():
    return envs.make(ENV_ID)


# ---------------------------------------------------------------- independent host-side Blackjack
def value(card):
    return min(card % 13 + 1, 10)  # A=1 (hard), 2..10, J/Q/K=10


def total(cards):
    s = sum(value(c) for c in cards)
    return s + 10 if any(c % 13 == 0 for c in cards) and s + 10 <= 21 else s


def host_deal(deck):
    """(player, dealer, table) by the documented rule: the table is the last K cards, the dealer's pair the first
    lexicographic (i, j), 2 <= i < j < 52 - K, worth 17..21."""
    deck = [int(c) for c in deck]
    i, j = next((i, j) for i in range(2, 52 - K) for j in range(i + 1, 52 - K) if 17 <= total([deck[i], deck[j]]) <= 21)
    return deck[:2], [deck[i], deck[j]], deck[52 - K:]


def host_winnable(deck, turns=TURNS):
    """Exact search: some set of at most turns - 1 table cards gives a total <= 21 that beats the dealer."""
    player, dealer, table = host_deal(deck)
    d = total(dealer)
    for n in range(turns):
        for subset in itertools.combinations(table, n):
            hand = player + list(subset)
            if sum(value(c) for c in hand) <= 21 and total(hand) > d:
                return True
    return False


def host_random_episode(rng, deck):
    """Uniform random play over the untaken positions and stand. Returns True when won."""
    player, dealer, table = host_deal(deck)
    hand, taken = list(player), set()
    for _ in range(TURNS):
        choice = int(rng.choice([p for p in range(K) if p not in taken] + [K]))
        if choice == K:
            return total(hand) > total(dealer)
        taken.add(choice)
        hand.append(table[choice])
        if sum(value(c) for c in hand) > 21:
            return False
    return False  # out of turns without standing


# ---------------------------------------------------------------- tests
def oracle_policy(env):
    return lambda key, state: env.oracle_action(key, state)


def test_deal_matches_host_rule(bj):
    env, params = bj
    tasks = jax.jit(jax.vmap(lambda k: env.sample_task(k, params)))(jax.random.split(jax.random.PRNGKey(0), 400))
    tasks = jax.tree.map(np.asarray, tasks)
    for t in range(400):
        deck = tasks.deck[t]
        assert sorted(deck.tolist()) == list(range(52))
        player, dealer, table = host_deal(deck)
        assert tasks.player[t].tolist() == player and tasks.dealer[t].tolist() == dealer
        assert tasks.table[t].tolist() == table
        assert 17 <= total(dealer) <= 21
    # No positional bias: every rank is equally likely at every table position.
    freq = np.stack([np.bincount(tasks.table[:, k] % 13, minlength=13) for k in range(K)]) / 400
    assert np.abs(freq - 1 / 13).max() < binomial_tolerance(1 / 13, 400, sigmas=4.5)


def test_oracle_matches_exact_host_search(bj):
    env, params = bj
    final, infos, rewards = run_trials(env, params, oracle_policy(env), jax.random.PRNGKey(1), 1500, TURNS)
    won = np.asarray(infos["success"]).any(axis=0)
    decks = np.asarray(final.task.deck)
    expected = np.array([host_winnable(d) for d in decks])
    rate, p = won.mean(), expected.mean()
    print(f"oracle success {rate:.4f}, exact host search {p:.4f}")
    assert abs(rate - p) < binomial_tolerance(p, len(won))
    assert (won == expected).all()  # task by task
    assert np.asarray(rewards).sum(axis=0).max() == 1.0
    assert 0.3 < p < 1.0  # the oracle is tested on a non-trivial mix of winnable and unwinnable tasks


def test_random_valid_policy_matches_host_simulation(bj):
    env, params = bj
    n = 4000
    _, infos, _ = run_trials(env, params, random_valid_policy(env), jax.random.PRNGKey(2), n, TURNS)
    rate = float(np.asarray(infos["success"]).any(axis=0).mean())
    rng = np.random.default_rng(0)
    m = 20000
    host = np.mean([host_random_episode(rng, rng.permutation(52)) for _ in range(m)])
    print(f"random valid policy success {rate:.4f} (n={n}), host simulation {host:.4f} (n={m})")
    assert abs(rate - host) < binomial_tolerance(host, n * m // (n + m))


def test_feedback(bj):
    env, params = bj
    step = jax.jit(env.step_env)
    tasks = jax.tree.map(np.asarray, jax.vmap(lambda k: env.sample_task(k, params))(
        jax.random.split(jax.random.PRNGKey(4), 300)))
    # A tie loses: find a deal where the player's two cards equal the dealer's total and stand at once.
    t = next(i for i in range(300) if total(tasks.player[i]) == total(tasks.dealer[i]))
    task = jax.tree.map(lambda x: jnp.asarray(x[t]), tasks)
    _, s = env.reset_to_task(jax.random.PRNGKey(0), task, params)
    _, s1, r, term, _ = step(jax.random.PRNGKey(0), s, K, params)
    assert int(s1.status) == LOST and bool(term) and float(r) == 0.0 and "tie" in env.render_text(s1)
    # Taking a position twice costs a turn and says so; the total does not change.
    t = next(i for i in range(300) if sum(value(c) for c in [*tasks.player[i], tasks.table[i][0]]) <= 21)
    _, s = env.reset_to_task(jax.random.PRNGKey(0), jax.tree.map(lambda x: jnp.asarray(x[t]), tasks), params)
    _, s1, *_ = step(jax.random.PRNGKey(0), s, 0, params)
    assert "position 0: " in env.render_text(s1) and int(s1.status) == 0
    _, s2, *_ = step(jax.random.PRNGKey(0), s1, 0, params)
    text = env.render_text(s2)
    assert "already taken" in text and int(s2.time) == 2 and int(s2.game.hard) == int(s1.game.hard)
    # Four hits without a bust and no stand: the episode is truncated (a loss).
    for i in range(300):
        task = jax.tree.map(lambda x: jnp.asarray(x[i]), tasks)
        hand = list(tasks.player[i]) + list(tasks.table[i][:TURNS])
        if sum(value(c) for c in hand) <= 21:
            _, s = env.reset_to_task(jax.random.PRNGKey(0), task, params)
            for a in range(TURNS):
                _, s, r, term, _ = step(jax.random.PRNGKey(0), s, a, params)
            assert int(s.status) == OUT_OF_TURNS and float(r) == 0.0
            assert env.render_text(s) == "You have reached the maximum number of turns."
            break
    else:
        pytest.fail("no deal with four small table cards among 300")


def test_render_roundtrip_random_states(bj):
    env, params = bj
    codec = Codec(env, adhoc_word_tokenizer(env))

    def sloppy(key, state):  # any action (repeats included), sometimes a format error
        return jax.random.randint(key, (), -1, K + 1)

    statuses = set()
    for steps, policy in ((1, sloppy), (2, sloppy), (TURNS, sloppy), (TURNS, oracle_policy(env))):
        final, _, _ = run_trials(env, params, policy, jax.random.PRNGKey(10 + steps), 32, steps)
        reset = jax.vmap(lambda k: env.reset(k, params)[1])(jax.random.split(jax.random.PRNGKey(steps), 4))
        for batch in (final, reset):
            statuses |= {int(state.status) for state, _ in render_roundtrip(env, codec, batch)}
    assert {WON, LOST, OUT_OF_TURNS, FORMAT_ERROR}.issubset(statuses)
