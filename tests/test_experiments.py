"""The experiment scripts' plumbing (no training here): report files and plot, the ablation and paper configs
pass the config check, and bad arguments are refused before anything runs."""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "experiments"))

import ablations  # noqa: E402
import common  # noqa: E402
import episode_transitions  # noqa: E402
import games  # noqa: E402
import table_in_context_learning as table  # noqa: E402

from metarl_jax import build  # noqa: E402
from metarl_jax.config_check import ConfigError  # noqa: E402
from metarl_jax.evaluate import SuccessRow  # noqa: E402


def test_write_table_writes_markdown_csv_json_and_plot(tmp_path):
    rows = [SuccessRow("envA", m, 10, [0.1, 0.2 + i / 10, 0.3], [(0.0, 0.4)] * 3, 0.5, 0.6) for i, m in enumerate(("a", "b"))]
    md = common.write_table(rows, str(tmp_path), "t", "a title")
    assert md.count("| envA |") == 2
    for ext in ("md", "csv", "json", "png"):
        assert (tmp_path / f"t.{ext}").stat().st_size > 0
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"


def test_guess_statistics_tell_a_replayed_secret_from_a_new_search():
    opening = "[Episode 1]\nA secret number lies between 1 and 50. You have 3 turns.\n"
    replayed = (opening + "\\boxed{25} higher\n\\boxed{40} lower\n\\boxed{31} correct:31\n\n"
                "[Episode 2]\n\\boxed{31} correct:31\n\n[Episode 3]\n\\boxed{31} correct:31\n\n"
                "[Episode 4]\n\\boxed{31}")
    searched = (opening + "\\boxed{25} lower\n\\boxed{10} higher\n\\boxed{15} out of turns\n\n"
                "[Episode 2]\n\\boxed{20} lower\n\\boxed{22} lower\n\\boxed{19} correct:19\n\n"
                "[Episode 3]\n\\boxed{21} lower\n\\boxed{19} correct")
    stats = episode_transitions.guess_statistics([replayed, searched])
    assert stats == {"2 | L": (1, 0.0, 1.0, 1.0),  # 22 after "20 lower" was already ruled out
                     "2 | W": (1, 1.0, 1.0, 0.0),
                     "3 | LW": (1, 0.0, 1.0, 0.0),  # opened with 21, not the winning 19
                     "3 | WW": (1, 1.0, 1.0, 0.0)}


def test_classical_learner_is_chosen_per_game():
    names = {e: common.classical_name(common.trial_env(dict(env_id=e, max_turns_per_episode=t, total_step_cap=c))[0])
             for e, t, c in [("game:GuessTheNumber-v0-hard", 7, 21), ("BernoulliBandit-misc", 1, 20), ("maze", 9, 27),
                             ("game:Wordle-v0-hard", 10, 30)]}
    assert names == {"game:GuessTheNumber-v0-hard": "elimination", "BernoulliBandit-misc": "ucb1", "maze": "q_learning",
                     "game:Wordle-v0-hard": None}


def test_pool_seeds_gives_the_mean_and_a_t_interval_over_seeds():
    def row(policy, rates, n=100):
        return SuccessRow("envA", policy, n, rates, [(0.0, 1.0)] * len(rates), rates[-1], sum(rates))

    per_seed = [[row("a", [0.2, 0.5]), row("b", [0.4, 0.4])], [row("a", [0.4, 0.7]), row("b", [0.4, 0.4])],
                [row("a", [0.3, 0.9]), row("b", [0.4, 0.4])]]
    pooled = {r.policy: r for r in common.pool_seeds(per_seed)}
    a, b = pooled["a"], pooled["b"]
    assert a.num_trials == 300 and a.episode_rates == pytest.approx([0.3, 0.7])
    # sd over seeds 0.1 and 0.2, t(0.975, 2 dof) = 4.303: half-widths 0.248 and 0.497 (clipped to [0, 1])
    assert a.episode_ci[0] == pytest.approx((0.3 - 0.24843, 0.3 + 0.24843), abs=1e-4)
    assert a.episode_ci[1] == pytest.approx((0.7 - 0.49686, 1.0), abs=1e-4)
    assert b.episode_ci == [pytest.approx((0.4, 0.4))] * 2  # equal seeds: no spread
    assert common.pool_seeds(per_seed[:1])[0] is per_seed[0][0]  # one seed: the run's own intervals


def test_every_ablation_config_passes_the_check():
    variants = {**ablations.ingredient_variants(), **ablations.mechanism_variants()}
    for name, (base, edit) in variants.items():
        c = ablations.get_config(base)
        edit(c)
        run = build.build_run(c)
        if name in ablations.ingredient_variants():  # recorded from scratch
            assert (c.pretrain.steps, c.optimizer.learning_rate, run.players) == (0, 3e-3, None)
        if name == "train_episodes_5":
            assert [t.env.total_step_cap for t in run.train_tasks] == [20, 35]
            assert [t.env.total_step_cap for t in run.eval_tasks] == [21, 12]
        if name == "single-episode RL: policy gradient (main run)":  # the baseline imitates the same corpus
            assert [t.env.max_episodes for t in run.train_tasks] == [1, 1]
            assert [t.env.max_episodes for t in run.pretrain_tasks] == [0, 0] and len(run.players) == 2
            assert all(t.env.new_task_each_episode for t in run.pretrain_tasks)


def test_a_mechanism_row_may_not_change_the_shared_prior(tmp_path, monkeypatch):
    """Every row of a seed starts from one imitation prior, so a row that edits ``config.pretrain`` is refused
    before anything trains."""
    monkeypatch.setitem(ablations.TABLES, "mechanism", lambda: {
        "ok": ("orbit", ablations.set_()), "noisier prior": ("orbit", lambda c: setattr(c.pretrain, "noise", 0.5))})
    with pytest.raises(ValueError, match=r"'noisier prior': a row may not change the imitation phase"):
        ablations.main(["--table", "mechanism", "--out", str(tmp_path)])
    assert not (tmp_path / "runs").exists()


def test_paper_scale_needs_a_local_model(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        table.main(["--scale", "paper", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--pretrained_dir" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="pretrained_dir"):
        build.build_run(table.paper_config("orbit", str(tmp_path / "missing")))


def test_the_steps_flag_sets_every_ablation_runs_budget(tmp_path, monkeypatch):
    """``--steps`` wins over a row's own setup (the ingredients rows' from-scratch edit sets 1,000 steps)."""
    seen = []

    def stop(config, workdir, label):
        seen.append(config.num_steps)
        raise KeyboardInterrupt  # the first run's config is enough

    monkeypatch.setattr(ablations.train, "train_and_evaluate", stop)
    with pytest.raises(KeyboardInterrupt):
        ablations.main(["--table", "ingredients", "--only", "baseline", "--steps", "7", "--out", str(tmp_path)])
    assert seen == [7]


def test_every_games_config_passes_the_check_and_an_unknown_game_is_refused(capsys):
    for game in games.GAMES:
        for variant in ("orbit", "single"):
            c = games.game_config(game, variant, seed=1)
            run = build.build_run(c)
            assert [t.name for t in run.eval_tasks] == [games.GAMES[game][0]] and c.text == "terse"
            assert c.answer_coef == 0.0 and c.pretrain.steps > 0 and c.single_episode == (variant == "single")
    with pytest.raises(SystemExit):
        games.main(["--games", "mastermind,chess"])
    assert "unknown game(s) ['chess']" in capsys.readouterr().err
