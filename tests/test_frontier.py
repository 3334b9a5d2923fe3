"""Tests of what notebook 08 (beyond PPO: every method on one reward-vs-KL frontier) added to the
package: ``config.FrontierConfig``, ``dpo.best_of_n_pool_mean`` (against a naive loop and an exact
expectation) and ``plotting.plot_frontier`` (on matplotlib's Agg backend)."""

from __future__ import annotations

import dataclasses
import itertools

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from rlhf_utils import dpo  # noqa: E402
from rlhf_utils import plotting as PL  # noqa: E402
from rlhf_utils.config import PRESETS, FrontierConfig, Preset, get_preset  # noqa: E402

# ---- FrontierConfig ----------------------------------------------------------------------


def test_frontier_config_in_both_presets_and_seeded_with_the_rest():
    assert {f.name for f in dataclasses.fields(Preset)} >= {"frontier"}
    quick, full = PRESETS["quick"].frontier, PRESETS["full"].frontier
    assert quick == FrontierConfig()
    for cfg in (quick, full):
        assert cfg.batch_size % cfg.group_size == 0 and cfg.batch_size % cfg.num_minibatches == 0
        assert cfg.eval_steps[-1] == cfg.steps and cfg.n_pool >= 2 * max(cfg.best_of_n)
    assert full.steps * full.batch_size > quick.steps * quick.batch_size and full.n_eval > quick.n_eval
    assert get_preset("quick", seed=2).frontier.seed == quick.seed + 2


@pytest.mark.parametrize("bad,match", [
    (dict(steps=0), "steps"), (dict(group_size=1), "group_size"), (dict(group_size=3), "divide batch_size"),
    (dict(num_minibatches=3), "num_minibatches"), (dict(learning_rate=0.0), "learning_rate"),
    (dict(kl_coef=-0.1), "kl_coef"), (dict(reinforce_learning_rate=0), "reinforce_learning_rate"),
    (dict(eval_steps=(10, 5)), "increasing"), (dict(eval_steps=(5, 31)), "increasing"),
    (dict(eval_steps=()), "increasing"), (dict(dpo_betas=()), "at least one beta"), (dict(dpo_betas=(1.0, 0.0)), "> 0"),
    (dict(best_of_n=()), "at least one n"), (dict(best_of_n=(1, 0)), "best_of_n"), (dict(n_pool=31), "2 \\* max"),
    (dict(n_eval=0), "n_eval"), (dict(seed=1.5), "seed"),
])
def test_frontier_config_refuses_bad_values_and_names_them(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        FrontierConfig(**bad)


def test_frontier_config_normalises_its_tuples():
    cfg = FrontierConfig(eval_steps=[5, 30], dpo_betas=[1, 2], best_of_n=[1, 4], n_pool=8)
    assert (cfg.eval_steps, cfg.dpo_betas, cfg.best_of_n) == ((5, 30), (1.0, 2.0), (1, 4))


# ---- best_of_n_pool_mean -----------------------------------------------------------------


def test_best_of_n_pool_mean_against_a_naive_loop():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(5, 12)).astype(float)  # ties: the first of equal best is taken
    values = rng.normal(size=(5, 12))
    for n in (1, 2, 3, 4, 5, 12):
        picks = []
        for p in range(5):
            for g in range(12 // n):
                group = list(range(g * n, (g + 1) * n))
                best = max(group, key=lambda j: (scores[p, j], -j))  # highest score, then the first
                picks.append(values[p, best])
        assert dpo.best_of_n_pool_mean(scores, values, n) == pytest.approx(np.mean(picks)), n
    assert dpo.best_of_n_pool_mean(scores, values, 1) == pytest.approx(values.mean())


def test_best_of_n_pool_mean_is_unbiased_for_the_exact_expectation():
    # a categorical policy: outcomes 0..2 with probabilities p, distinct scores; value = the score.
    # E[best-of-2] by enumerating every ordered pair of draws
    p, score = np.array([0.5, 0.3, 0.2]), np.array([0.0, 1.0, 2.0])
    exact = sum(p[a] * p[b] * max(score[a], score[b]) for a, b in itertools.product(range(3), repeat=2))
    draws = np.random.default_rng(1).choice(3, size=(4_000, 50), p=p)
    estimate = dpo.best_of_n_pool_mean(score[draws], score[draws], 2)
    assert estimate == pytest.approx(exact, abs=0.01)  # standard error ~0.002


def test_best_of_n_pool_mean_bad_inputs():
    s = np.zeros((2, 4))
    with pytest.raises(ValueError, match="N >= n"):
        dpo.best_of_n_pool_mean(s, s, 5)
    with pytest.raises(ValueError, match="one \\[P, N\\] pool"):
        dpo.best_of_n_pool_mean(s, np.zeros((2, 3)), 2)
    with pytest.raises(ValueError, match="whole number"):
        dpo.best_of_n_pool_mean(s, s, 0)


# ---- plot_frontier -----------------------------------------------------------------------


def test_plot_frontier_draws_a_curve_per_method_with_its_settings():
    fig, ax = plt.subplots()
    try:
        curves = {"PPO": ([0.1, 0.5, 1.2], [0.1, 0.3, 0.4]), "best-of-n": ([0.0, 0.3], [0.0, 0.2])}
        out = PL.plot_frontier(ax, curves, labels={"PPO": ["5", "10", "30"]}, styles={"best-of-n": "s--"}, start=0.0)
        assert out is ax
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert set(lines) == {"PPO", "best-of-n", "reference policy (SFT)"}
        assert lines["PPO"].get_xdata().tolist() == [0.1, 0.5, 1.2] and lines["best-of-n"].get_linestyle() == "--"
        assert [t.get_text() for t in ax.texts] == ["5", "10", "30"]
        assert ax.get_ylabel() == "gold reward" and "KL" in ax.get_xlabel()
        with pytest.raises(ValueError, match="'DPO' needs as many KL values"):
            PL.plot_frontier(ax, {"DPO": ([0.1, 0.2], [0.3])})
        with pytest.raises(ValueError, match="at least one"):
            PL.plot_frontier(ax, {"DPO": ([], [])})
    finally:
        plt.close(fig)



def test_best_of_n_progress_bar_changes_nothing_but_the_display():
    from rlhf_utils import lm
    from rlhf_utils.config import LMConfig
    from rlhf_utils.world import World

    world = World(0)
    tokenizer = lm.train_tokenizer(world.corpus(2000, seed=0))
    policy = lm.build_model(LMConfig(n_layer=1, n_head=2, n_embd=32, n_positions=64, seed=0), tokenizer).eval()
    prompts = world.prompts(5, seed=3)

    def score(prompts, completions):
        return np.array([float(len(c)) for c in completions])

    quiet = dpo.best_of_n(policy, tokenizer, prompts, 4, score, max_new_tokens=8, seed=1, batch_size=6)
    shown = dpo.best_of_n(policy, tokenizer, prompts, 4, score, max_new_tokens=8, seed=1, batch_size=6, progress=True)
    assert quiet.samples == shown.samples and np.array_equal(quiet.all_scores.numpy(), shown.all_scores.numpy())
    # the pool's best-of-4 is the call's own pick
    assert dpo.best_of_n_pool_mean(quiet.all_scores, quiet.all_scores, 4) == pytest.approx(float(quiet.scores.mean()))
