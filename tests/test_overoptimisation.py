"""Reward hacking, measured (rlhf_utils.overoptimisation), the reward-model ensemble
(rlhf_utils.reward_ensemble), Gao et al.'s fits (rlhf_utils.evaluation.fit_gao_*) and notebook 07's
config (rlhf_utils.config.HackingConfig): each against a hand-worked value or a naive reference,
on tiny models, and on bad inputs."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from rlhf_utils import evaluation as E
from rlhf_utils import lm
from rlhf_utils import overoptimisation as O
from rlhf_utils import reward_ensemble as RE
from rlhf_utils.annotators import SimulatedAnnotator
from rlhf_utils.config import PRESETS, HackingConfig, LMConfig, PPOConfig, RewardConfig
from rlhf_utils.ppo import PPOTrainer
from rlhf_utils.preferences import PreferencePair
from rlhf_utils.reward import RewardModel
from rlhf_utils.world import World

WORLD = World(0)
SMALL = LMConfig(n_layer=1, n_head=2, n_embd=16, n_positions=32, seed=0)
PROMPTS = WORLD.prompts(40, seed=12)
TINY = PPOConfig(steps=3, batch_size=8, num_minibatches=2, update_epochs=1, max_new_tokens=10, learning_rate=1e-3)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return lm.train_tokenizer(WORLD.corpus(500, seed=11))


def tiny_policy(tok, seed=0):
    return lm.build_model(dataclasses.replace(SMALL, seed=seed), tok).eval()


def gold_fn(prompts, completions):
    return torch.tensor(WORLD.gold_rewards(completions, prompts), dtype=torch.float32)


# --------------------------------------------------------------------------------------
# Gao et al. (2022)'s functional forms
# --------------------------------------------------------------------------------------


def naive_two_column_fit(x1, x2, y):
    """Least squares of y = a * x1 + b * x2 by the 2x2 normal equations, in plain Python."""
    s11, s12, s22 = sum(a * a for a in x1), sum(a * b for a, b in zip(x1, x2)), sum(b * b for b in x2)
    t1, t2 = sum(a * v for a, v in zip(x1, y)), sum(b * v for b, v in zip(x2, y))
    det = s11 * s22 - s12 ** 2
    return (s22 * t1 - s12 * t2) / det, (s11 * t2 - s12 * t1) / det


def test_gao_forms_by_hand_and_their_peaks():
    # R_RL(d) = d (alpha - beta log d): at d = e, e (1 - 0.5); 0 at d = 0
    assert E.gao_rl([0.0, math.e], 1.0, 0.5).tolist() == pytest.approx([0.0, math.e * 0.5])
    assert E.gao_bon([0.0, 2.0], 1.0, 0.25).tolist() == pytest.approx([0.0, 2.0 * (1.0 - 0.5)])
    grid = np.linspace(1e-3, 30, 300_001)
    a, b = 0.9, 0.4
    assert grid[np.argmax(E.gao_rl(grid, a, b))] == pytest.approx(math.exp(a / b - 1), abs=1e-3)
    assert grid[np.argmax(E.gao_bon(grid, a, b))] == pytest.approx(a / (2 * b), abs=1e-3)


@pytest.mark.parametrize("form", ["rl", "bon"])
def test_fits_recover_known_coefficients(form):
    fit, curve = (E.fit_gao_rl, E.gao_rl) if form == "rl" else (E.fit_gao_bon, E.gao_bon)
    d = np.sqrt(np.array([0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]))  # d = sqrt(KL); d = 0 allowed
    alpha, beta = 0.8, 0.35
    exact = fit(d, curve(d, alpha, beta))
    assert exact == pytest.approx((alpha, beta), abs=1e-10)
    assert isinstance(exact, E.GaoFit) and exact.alpha == pytest.approx(alpha)
    # with noise: close, and equal to the naive normal equations
    rng = np.random.default_rng(0)
    d = np.sqrt(rng.uniform(0, 30, 400))
    gold = curve(d, alpha, beta) + rng.normal(0, 0.05, d.size)
    a, b = fit(d, gold)
    assert (a, b) == pytest.approx((alpha, beta), abs=0.03)
    x2 = [-(v * math.log(v)) if v > 0 else 0.0 for v in d] if form == "rl" else [-(v * v) for v in d]
    assert (a, b) == pytest.approx(naive_two_column_fit(list(d), x2, list(gold)), rel=1e-8)


@pytest.mark.parametrize("d, gold, match", [
    ([0.5, 1.0], [0.1], "equal length"),
    ([-0.5, 1.0, 2.0], [0.1, 0.2, 0.3], "cannot be negative"),
    ([0.5, float("nan"), 2.0], [0.1, 0.2, 0.3], "finite"),
    ([0.0, 1.0, 1.0], [0.0, 0.2, 0.3], "2 or more distinct d > 0"),
    ([[0.5, 1.0]], [[0.1, 0.2]], "1-d"),
])
def test_fits_refuse_bad_curves(d, gold, match):
    for fit in (E.fit_gao_rl, E.fit_gao_bon):
        with pytest.raises(ValueError, match=match):
            fit(d, gold)


# --------------------------------------------------------------------------------------
# Early stopping's choice
# --------------------------------------------------------------------------------------


def test_best_step_is_the_argmax_and_the_first_on_a_tie():
    steps, scores = [0, 10, 20, 30, 40], [0.1, 0.7, 0.5, 0.7, -0.2]
    naive = max(zip(scores, [-s for s in steps]))  # highest score, then the smallest step
    assert O.best_step(steps, scores) == -naive[1] == 10
    assert O.best_step([5], [-1.0]) == 5
    assert O.best_step(np.array([0, 2, 4]), np.array([0.3, 0.9, 0.1])) == 2


@pytest.mark.parametrize("steps, scores, match", [
    ([], [], "at least one step"), ([0, 1], [0.5], "one score per step"), ([0, 1], [0.5, float("nan")], "NaN"),
])
def test_best_step_refuses_bad_input(steps, scores, match):
    with pytest.raises(ValueError, match=match):
        O.best_step(steps, scores)


# --------------------------------------------------------------------------------------
# The tracker, on a tiny PPO run
# --------------------------------------------------------------------------------------


def test_tracker_records_the_run_picks_the_best_check_and_keeps_its_weights(tok):
    trainer = PPOTrainer(tiny_policy(tok), tok, gold_fn, PROMPTS, TINY)
    held_out, check = WORLD.prompts(12, seed=99), WORLD.prompts(6, seed=98)
    tracker = O.OveroptimisationTracker(trainer, WORLD, held_out, every=2, check_prompts=check, seed=5)
    states = {0: {k: v.clone() for k, v in trainer.policy.state_dict().items()}}

    def callback(stats):
        tracker(stats)
        states[stats["step"]] = {k: v.clone() for k, v in trainer.policy.state_dict().items()}

    trainer.train(callback=callback, progress=False)
    assert [r["step"] for r in tracker.rows] == [0, 2, 3]  # built, every 2nd step, the last
    assert set(tracker.rows[0]) == set(O.ROW_KEYS)
    assert abs(tracker.rows[0]["kl"]) < 1e-4  # the policy is its own reference at step 0
    # the last row against a naive recomputation with evaluate_policy
    c = trainer.config
    ev = E.evaluate_policy(trainer.policy, tok, WORLD, held_out, c.max_new_tokens, c.temperature, seed=5,
                           reference=trainer.ref_policy)
    last = tracker.rows[-1]
    assert last["gold"] == pytest.approx(ev.gold.mean()) and last["kl"] == pytest.approx(ev.kl.mean())
    assert last["d"] == pytest.approx(math.sqrt(max(ev.kl.mean(), 0.0)))
    assert last["proxy"] == pytest.approx(float(gold_fn(held_out, ev.texts).mean()))  # the trainer's reward
    assert last["length"] == pytest.approx(np.mean([len(t.split()) for t in ev.texts]))
    ev_check = E.evaluate_policy(trainer.policy, tok, WORLD, check, c.max_new_tokens, c.temperature, seed=5)
    assert last["gold_check"] == pytest.approx(ev_check.gold.mean())
    # early stopping: the argmax of the check gold, and the weights of that step
    checks = [r["gold_check"] for r in tracker.rows]
    best = tracker.rows[int(np.argmax(checks))]["step"]
    assert tracker.best_step() == best
    assert all(torch.equal(tracker.best_state[k], v) for k, v in states[best].items())
    assert tracker.peak()["gold"] == max(tracker.curve("gold"))
    assert tracker.curve("step").tolist() == [0, 2, 3] and tracker.row(2)["step"] == 2
    assert set(tracker.evaluations) == {0, 2, 3}


def test_tracker_with_a_list_of_steps_and_bad_arguments(tok):
    trainer = PPOTrainer(tiny_policy(tok), tok, gold_fn, PROMPTS, TINY)
    tracker = O.OveroptimisationTracker(trainer, WORLD, WORLD.prompts(4, seed=1), every=(1,), keep_best=False)
    trainer.train(callback=tracker, progress=False)
    assert [r["step"] for r in tracker.rows] == [0, 1, 3]
    assert tracker.best_state is None
    assert tracker.best_step() == tracker.rows[int(np.argmax(tracker.curve("gold")))]["step"]  # no check set: gold
    with pytest.raises(KeyError, match="records"):
        tracker.curve("nope")
    with pytest.raises(KeyError, match="no measurement at step 2"):
        tracker.row(2)
    with pytest.raises(ValueError, match="every=0"):
        O.OveroptimisationTracker(trainer, WORLD, PROMPTS, every=0)
    with pytest.raises(TypeError, match="list of held-out prompts"):
        O.OveroptimisationTracker(trainer, WORLD, "i loved this film .", every=1)


# --------------------------------------------------------------------------------------
# relabel_pairs
# --------------------------------------------------------------------------------------

PAIRS = [PreferencePair("i loved this film .", "the acting was great .", "the acting was awful ."),
         PreferencePair("i hated this book .", "the story was bad . the ending was dull .", "the story was dull .",
                        tie=True),
         PreferencePair("i liked this album .", "the songs were lovely .",
                        "the songs were lovely . the sound was good .")]


def test_relabel_pairs_follows_the_annotator():
    sharp = SimulatedAnnotator.from_world(WORLD, temperature=1e-4, name="simulated-sharp")
    out = O.relabel_pairs(PAIRS, sharp, seed=0)
    for p, q in zip(PAIRS, out):  # a near-perfect rater: the gold-better completion is chosen
        g = WORLD.gold_rewards([p.chosen, p.rejected], [p.prompt] * 2)
        assert q.chosen == (p.chosen if g[0] > g[1] else p.rejected)
        assert {q.chosen, q.rejected} == {p.chosen, p.rejected} and q.prompt == p.prompt
        assert q.annotator == "simulated-sharp" and not q.tie
    long_lover = SimulatedAnnotator.from_world(WORLD, temperature=100.0, length_bias=50.0, name="simulated-long")
    for q in O.relabel_pairs(PAIRS[1:], long_lover, seed=3):  # pairs of unequal length: the bias swamps the gold
        assert len(q.chosen.split()) > len(q.rejected.split())
    assert O.relabel_pairs(PAIRS, long_lover, seed=3) == O.relabel_pairs(PAIRS, long_lover, seed=3)
    with pytest.raises(ValueError, match="at least one pair"):
        O.relabel_pairs([], sharp)


# --------------------------------------------------------------------------------------
# The ensemble
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def members(tok):
    policy = tiny_policy(tok)
    return [RewardModel.from_policy(policy, tok, init_std=0.5, seed=k) for k in range(3)]


def test_ensemble_score_is_mean_minus_lambda_std_by_hand(members):
    prompts, texts = WORLD.prompts(5, seed=3), [r.completion for r in WORLD.sample_reviews(5, seed=4)]
    each = np.array([[float(v) for v in m.score(prompts, texts)] for m in members])  # [K, B]
    for lam in (0.0, 0.5, 2.0):
        ens = RE.EnsembleReward(members, penalty=lam)
        by_hand = [sum(col) / 3 - lam * math.sqrt(sum((v - sum(col) / 3) ** 2 for v in col) / 3) for col in each.T]
        assert ens.score(prompts, texts).tolist() == pytest.approx(by_hand, abs=1e-5)
    assert ens.member_scores(prompts, texts).shape == (3, 5)
    assert ens.tokenizer is members[0].tokenizer


def test_ppo_takes_the_ensemble_as_its_reward(tok, members):
    policy = tiny_policy(tok)
    ens = RE.EnsembleReward([RewardModel.from_policy(policy, tok, init_std=0.5, seed=k) for k in range(2)], 1.0)
    trainer = PPOTrainer(policy, tok, ens, PROMPTS, TINY)
    ro = trainer.rollout(PROMPTS[:4])
    assert torch.allclose(ro.scores + TINY.missing_eos_penalty * (~ro.ended).float(), ens.score(ro.prompts, ro.texts),
                          atol=1e-5)
    assert all(not p.requires_grad for p in ens.parameters())  # scored, never trained
    assert math.isfinite(trainer.step()["objective/scores"])


def test_ensemble_refuses_bad_members(tok, members):
    with pytest.raises(ValueError, match="at least one reward model"):
        RE.EnsembleReward([])
    with pytest.raises(ValueError, match="2 or more models"):
        RE.EnsembleReward(members[:1], penalty=1.0)
    alone = RE.EnsembleReward(members[:1], penalty=0.0)  # one model and no penalty: allowed, it is the model
    assert torch.equal(alone.score(["i loved this film ."], ["the acting was great ."]),
                       members[0].score(["i loved this film ."], ["the acting was great ."]))
    with pytest.raises(ValueError, match="penalty"):
        RE.EnsembleReward(members, penalty=-1.0)
    other_tok = lm.train_tokenizer(["completely different words here ."])
    other = RewardModel.from_policy(lm.build_model(SMALL, other_tok), other_tok)
    with pytest.raises(ValueError, match="different tokenizers"):
        RE.EnsembleReward([members[0], other])
    with pytest.raises(TypeError, match="list of prompts"):
        RE.EnsembleReward(members).score("i loved this film .", ["x"])


def test_bootstrap_pairs_resamples_with_replacement():
    pairs = [PreferencePair(f"p{i}", "a", "b") for i in range(50)]
    boot = RE.bootstrap_pairs(pairs, seed=1)
    assert len(boot) == 50 and set(boot) <= set(pairs)
    assert len(set(boot)) < 50  # with replacement: some drawn twice (P(all distinct) ~ 1e-21)
    assert boot == RE.bootstrap_pairs(pairs, seed=1) and boot != RE.bootstrap_pairs(pairs, seed=2)
    with pytest.raises(ValueError, match="at least one pair"):
        RE.bootstrap_pairs([], seed=0)


def test_train_ensemble_gives_normalised_different_members(tok):
    policy = tiny_policy(tok)
    reviews = WORLD.sample_reviews(120, seed=5)
    annotator = SimulatedAnnotator.from_world(WORLD)
    raw = [PreferencePair(a.prompt, a.completion, b.completion) for a, b in zip(reviews[0::2], reviews[1::2])]
    pairs = O.relabel_pairs(raw, annotator, seed=0)
    norm_p = WORLD.prompts(16, seed=6)
    norm_c = [r.completion for r in WORLD.sample_reviews(16, seed=7)]
    cfg = RewardConfig(epochs=1, min_steps=0, batch_size=8, eval_every=4, seed=0)
    models = RE.train_ensemble(policy, tok, pairs[:45], pairs[45:], cfg, 2, norm_p, norm_c, init_std=0.1,
                               progress=False)
    assert len(models) == 2
    for m in models:
        s = m.score(norm_p, norm_c).double()
        assert abs(float(s.mean())) < 1e-4 and abs(float(s.std(unbiased=False)) - 1) < 1e-4
    assert not torch.equal(models[0].head.weight, models[1].head.weight)
    with pytest.raises(ValueError, match="normalisation prompts"):
        RE.train_ensemble(policy, tok, pairs[:45], pairs[45:], cfg, 2, norm_p, norm_c[:3], progress=False)


# --------------------------------------------------------------------------------------
# Notebook 07's config
# --------------------------------------------------------------------------------------


def test_hacking_config_in_every_preset_and_its_checks():
    for preset in PRESETS.values():
        h = preset.hacking
        assert isinstance(h, HackingConfig) and h.bias_beta in h.betas and h.eval_steps[-1] <= h.steps
    assert HackingConfig(betas=[0.1, 0], bias_beta=0).betas == (0.1, 0.0)  # a list becomes a tuple of floats
    for bad, match in [(dict(betas=()), "at least one KL coefficient"), (dict(betas=(0.1, -1.0)), r"betas\[1\]"),
                       (dict(bias_beta=0.5), "not one of betas"), (dict(ensemble_size=1), "at least 2"),
                       (dict(eval_steps=(4, 2)), "increasing"), (dict(eval_steps=(2, 500)), "increasing"),
                       (dict(steps=0), "steps=0"), (dict(learning_rate=0.0), "learning_rate")]:
        with pytest.raises((ValueError, TypeError), match=match):
            HackingConfig(**bad)
