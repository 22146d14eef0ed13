"""Blackjack (fixed deck, chosen hits) under ORBIT's rules (48 deck positions, the dealer's second card face down
until the episode ends, a taken position stands) and the ``table10`` variant's: the deals, the oracle vs an exact
host search, random play vs a host simulation, what the observation tells, feedback and text rendering."""

import functools
import itertools
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import binomial_tolerance, collect_states, random_valid_policy, run_trials
from metarl_jax import envs
from metarl_jax.envs.base import FORMAT_ERROR, LOST, OUT_OF_TURNS, RUNNING, WON

ENV_ID, TABLE10_ID = "game:Blackjack-v0", "game:Blackjack-v0-table10"
SIZES = {ENV_ID: 48, TABLE10_ID: 10}
TURNS = 4


@pytest.fixture(scope="module")
def bj():
    return envs.make(ENV_ID)


@pytest.fixture(scope="module")
def table10():
    return envs.make(TABLE10_ID)


# ---------------------------------------------------------------- independent host-side Blackjack
def value(card):
    return min(card % 13 + 1, 10)  # A=1 (hard), 2..10, J/Q/K=10


def total(cards):
    s = sum(value(c) for c in cards)
    return s + 10 if any(c % 13 == 0 for c in cards) and s + 10 <= 21 else s


def host_deal_table10(deck):
    """(player, dealer, table) by the table10 rule: the table is the last 10 cards, the dealer's pair the first
    lexicographic (i, j), 2 <= i < j < 42, worth 17..21."""
    deck = [int(c) for c in deck]
    i, j = next((i, j) for i in range(2, 42) for j in range(i + 1, 42) if 17 <= total([deck[i], deck[j]]) <= 21)
    return deck[:2], [deck[i], deck[j]], deck[42:]


def host_deal_orbit(rng):
    """ORBIT's deal, literally: reshuffle until the first two cards (the dealer's) are worth 17..21; the player
    gets the next two, the other 48 are the deck positions."""
    while True:
        deck = [int(c) for c in rng.permutation(52)]
        if 17 <= total(deck[:2]) <= 21:
            return deck[2:4], deck[:2], deck[4:]


def task_hands(tasks, i):
    return [int(c) for c in tasks.player[i]], [int(c) for c in tasks.dealer[i]], [int(c) for c in tasks.table[i]]


@functools.cache
def subsets(k, n):
    """int[C(k, n), n]: the n-element subsets of range(k)."""
    combos = list(itertools.combinations(range(k), n))
    return np.array(combos, int).reshape(len(combos), n)


def host_winnable(player, dealer, table, turns=TURNS):
    """Exact search over the position subsets of size <= turns - 1 (vectorized): one gives a total <= 21 that
    beats the dealer."""
    d, values = total(dealer), np.array([value(c) for c in table])
    hard0, ace0 = sum(value(c) for c in player), any(value(c) == 1 for c in player)
    for n in range(turns):
        idx = subsets(len(table), n)
        hard = hard0 + values[idx].sum(1)
        soft = (ace0 | (values[idx] == 1).any(1)) & (hard + 10 <= 21)
        if ((hard <= 21) & (np.where(soft, hard + 10, hard) > d)).any():
            return True
    return False


def host_random_episode(rng, player, dealer, table, orbit):
    """Uniform random play over the untaken positions and stand. Returns True when won."""
    hand, taken, k = list(player), set(), len(table)
    for _ in range(TURNS):
        choice = int(rng.choice([p for p in range(k) if p not in taken] + [k]))
        if choice == k:
            return total(hand) > total(dealer)
        taken.add(choice)
        hand.append(table[choice])
        if sum(value(c) for c in hand) > 21:
            return False
    return False  # out of turns without standing


def sample_tasks(env, params, n, seed=0):
    return jax.tree.map(np.asarray, jax.jit(jax.vmap(lambda k: env.sample_task(k, params)))(
        jax.random.split(jax.random.PRNGKey(seed), n)))


def one_task(tasks, i):
    return jax.tree.map(lambda x: jnp.asarray(x[i]), tasks)


# ---------------------------------------------------------------- deals
def test_orbit_deal_has_48_positions_and_orbit_distribution(bj):
    """Each deal: dealer = deck[0:2] worth 17..21, player = deck[2:4], positions 0..47 = deck[4:]. Distribution:
    the dealer's total, the player's chance of an ace and the values at the deck positions agree with ORBIT's
    literal reshuffle-until-17 deal simulated on the host (4.5 standard errors of the difference)."""
    env, params = bj
    n = 3000
    tasks = sample_tasks(env, params, n)
    assert tasks.table.shape == (n, 48) and env.num_actions == 49
    for t in range(n):
        deck = tasks.deck[t].tolist()
        assert sorted(deck) == list(range(52))
        assert tasks.dealer[t].tolist() == deck[:2] and tasks.player[t].tolist() == deck[2:4]
        assert tasks.table[t].tolist() == deck[4:] and 17 <= total(deck[:2]) <= 21
    rng = np.random.default_rng(0)
    host = [host_deal_orbit(rng) for _ in range(n)]
    ours = [task_hands(tasks, t) for t in range(n)]

    def stats(deals):  # dealer total, player holds an ace, mean value at positions 0-23 and 24-47
        return np.array([[total(d), any(value(c) == 1 for c in p), np.mean([value(c) for c in tb[:24]]),
                          np.mean([value(c) for c in tb[24:]])] for p, d, tb in deals], float)

    a, b = stats(ours), stats(host)
    for j, name in enumerate(["dealer total", "player ace", "values 0-23", "values 24-47"]):
        se = np.sqrt(a[:, j].var() / n + b[:, j].var() / n)
        assert abs(a[:, j].mean() - b[:, j].mean()) < 4.5 * se, (name, a[:, j].mean(), b[:, j].mean())
    # The dealer's total exactly: uniform over the ordered pairs of distinct cards worth 17..21.
    pairs = [total([x, y]) for x in range(52) for y in range(52) if x != y and 17 <= total([x, y]) <= 21]
    for t in range(17, 22):
        p = pairs.count(t) / len(pairs)
        assert abs(np.mean(a[:, 0] == t) - p) < binomial_tolerance(p, n), t


def test_table10_deal_matches_host_rule(table10):
    env, params = table10
    tasks = sample_tasks(env, params, 400)
    for t in range(400):
        deck = tasks.deck[t]
        assert sorted(deck.tolist()) == list(range(52))
        player, dealer, table = host_deal_table10(deck)
        assert tasks.player[t].tolist() == player and tasks.dealer[t].tolist() == dealer
        assert tasks.table[t].tolist() == table
        assert 17 <= total(dealer) <= 21
    # No positional bias: every rank is equally likely at every table position.
    freq = np.stack([np.bincount(tasks.table[:, k] % 13, minlength=13) for k in range(10)]) / 400
    assert np.abs(freq - 1 / 13).max() < binomial_tolerance(1 / 13, 400, sigmas=4.5)


# ---------------------------------------------------------------- oracle and random rates
@pytest.mark.parametrize("env_id", [ENV_ID, TABLE10_ID])
def test_oracle_matches_exact_host_search(env_id):
    env, params = envs.make(env_id)
    n = 1000
    final, infos, rewards = run_trials(env, params, env.oracle_action, jax.random.PRNGKey(1), n, TURNS)
    won = np.asarray(infos["success"]).any(axis=0)
    tasks = jax.tree.map(np.asarray, final.task)
    expected = np.array([host_winnable(*task_hands(tasks, t)) for t in range(n)])
    print(f"{env_id}: oracle success {won.mean():.4f}, exact host search {expected.mean():.4f}")
    np.testing.assert_array_equal(won, expected)  # task by task
    assert np.asarray(rewards).sum(axis=0).max() == 1.0
    assert 0.3 < expected.mean() < 1.0  # a non-trivial mix of winnable and unwinnable tasks


@pytest.mark.parametrize("env_id", [ENV_ID, TABLE10_ID])
def test_random_valid_policy_matches_host_simulation(env_id):
    """Random play (uniform over untaken positions and stand) against a host simulation with the same rules on
    host-dealt decks (ORBIT's literal deal, or the table10 rule)."""
    env, params = envs.make(env_id)
    n, m = 4000, 20000
    _, infos, _ = run_trials(env, params, random_valid_policy(env), jax.random.PRNGKey(2), n, TURNS)
    rate = float(np.asarray(infos["success"]).any(axis=0).mean())
    rng = np.random.default_rng(0)
    deal = (lambda: host_deal_orbit(rng)) if env_id == ENV_ID else (lambda: host_deal_table10(rng.permutation(52)))
    host = np.mean([host_random_episode(rng, *deal(), orbit=env_id == ENV_ID) for _ in range(m)])
    print(f"{env_id}: random valid policy success {rate:.4f} (n={n}), host simulation {host:.4f} (n={m})")
    assert abs(rate - host) < binomial_tolerance(host, n * m // (n + m))


# ---------------------------------------------------------------- what the agent sees
def test_dealer_second_card_is_hidden_until_the_episode_ends(bj):
    """While an episode runs, the observation is the same whatever the dealer's face-down card is; once it has
    ended (a stand, a bust, the turn limit or a format error) the observation names that card."""
    env, params = bj

    def sloppy(key, state):  # any action (repeats included), sometimes a format error
        return jax.random.randint(key, (), -1, 49)

    states = collect_states(env, params, sloppy, jax.random.PRNGKey(3), 64, TURNS)
    flat = jax.tree.map(lambda x: np.asarray(x).reshape((-1,) + x.shape[2:]), states)
    dealer = flat.task.dealer.copy()
    dealer[:, 1] = (dealer[:, 1] + 13) % 52  # another face-down card (the same rank in the next suit)
    other = flat.replace(task=flat.task.replace(dealer=dealer))
    pieces = jax.jit(jax.vmap(env.obs_pieces))
    a, b = np.asarray(pieces(flat)), np.asarray(pieces(other))
    running = flat.status == RUNNING
    np.testing.assert_array_equal(a[running], b[running])
    assert (a[~running] != b[~running]).any(axis=1).all()
    ended = set()
    for i in np.flatnonzero(~running):
        s = jax.tree.map(lambda x: x[i], flat)
        card = env.pieces[env.cards[int(s.task.dealer[1])]]
        assert env.render_text(s).endswith(f"The dealer's face-down card was {card}.\n")
        ended.add(int(s.status))
    assert ended == {WON, LOST, OUT_OF_TURNS, FORMAT_ERROR}
    opening = env.render_text(jax.tree.map(lambda x: x[0], flat))
    first = env.pieces[env.cards[int(flat.task.dealer[0, 0])]]
    dealer_line = opening.split("The dealer's cards: ")[-1]
    assert dealer_line == f"{first} and a face-down card.\n"


def test_positions_index_the_48_deck_cards(bj):
    env, params = bj
    assert env.action_text(47) == "\\boxed{hit 47}" and env.action_text(48) == "\\boxed{stand}"
    assert env.parse_action("\\boxed{hit 47}") == 47 and env.parse_action("\\boxed{hit 48}") == -1
    tasks = sample_tasks(env, params, 50, seed=4)
    for t in range(50):
        player, _, table = task_hands(tasks, t)
        pos = 47 - t % 48
        _, s = env.reset_to_task(jax.random.PRNGKey(0), one_task(tasks, t), params)
        _, s1, *_ = env.step_env(jax.random.PRNGKey(0), s, pos, params)
        assert int(s1.game.hard) == sum(value(c) for c in player) + value(table[pos])
        assert f"position {pos}: {env.pieces[env.cards[table[pos]]]}." in env.render_text(s1)


@pytest.mark.parametrize("env_id", [ENV_ID, TABLE10_ID])
def test_ties_lose_retaken_positions_and_running_out_of_turns(env_id):
    env, params = envs.make(env_id)
    k = SIZES[env_id]
    step = jax.jit(env.step_env)
    tasks = sample_tasks(env, params, 300, seed=4)
    # A tie loses: find a deal where the player's two cards equal the dealer's total and stand at once.
    t = next(i for i in range(300) if total(tasks.player[i]) == total(tasks.dealer[i]))
    _, s = env.reset_to_task(jax.random.PRNGKey(0), one_task(tasks, t), params)
    _, s1, r, term, _ = step(jax.random.PRNGKey(0), s, k, params)
    assert int(s1.status) == LOST and bool(term) and float(r) == 0.0 and "tie" in env.render_text(s1)
    # Taking a position twice: ORBIT stands (here with a total that beats or loses to the dealer's); the table10
    # variant costs a turn, says so, and leaves the total unchanged.
    t = next(i for i in range(300) if sum(value(c) for c in [*tasks.player[i], tasks.table[i][0]]) <= 21)
    _, s = env.reset_to_task(jax.random.PRNGKey(0), one_task(tasks, t), params)
    _, s1, *_ = step(jax.random.PRNGKey(0), s, 0, params)
    assert "position 0: " in env.render_text(s1) and int(s1.status) == RUNNING
    _, s2, r, term, _ = step(jax.random.PRNGKey(0), s1, 0, params)
    text = env.render_text(s2)
    assert "already taken" in text and int(s2.time) == 2 and int(s2.game.hard) == int(s1.game.hard)
    if env_id == ENV_ID:
        mine = total([*tasks.player[t], tasks.table[t][0]])
        assert bool(term) and int(s2.status) == (WON if mine > total(tasks.dealer[t]) else LOST)
        assert f"so you stand with {mine} against the dealer's {total(tasks.dealer[t])}. " in text
    else:
        assert int(s2.status) == RUNNING and "Your total is still" in text
    # Four hits without a bust and no stand: the episode is truncated (a loss).
    for i in range(300):
        hand = list(tasks.player[i]) + list(tasks.table[i][:TURNS])
        if sum(value(c) for c in hand) <= 21:
            _, s = env.reset_to_task(jax.random.PRNGKey(0), one_task(tasks, i), params)
            for a in range(TURNS):
                _, s, r, term, _ = step(jax.random.PRNGKey(0), s, a, params)
            assert int(s.status) == OUT_OF_TURNS and float(r) == 0.0
            assert env.render_text(s).startswith("You have reached the maximum number of turns.")
            break
    else:
        pytest.fail("no deal with four small table cards among 300")
