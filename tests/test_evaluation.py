"""Tests of rlhf_utils.evaluation: a policy against the world's gold preference, and a reward
model's calibration, each against a hand-worked example or a naive loop."""

from __future__ import annotations

import copy
import math
from statistics import NormalDist

import numpy as np
import pytest
import torch

from rlhf_utils import evaluation as E
from rlhf_utils import lm
from rlhf_utils.config import LMConfig
from rlhf_utils.world import DEFECT_PENALTY, World

WORLD = World(0)
SMALL = LMConfig(n_layer=1, n_head=2, n_embd=16, n_positions=64, seed=0)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return lm.train_tokenizer(WORLD.corpus(500, seed=11))


@pytest.fixture(scope="module")
def policy(tok):
    return lm.build_model(SMALL, tok).eval()


# --------------------------------------------------------------------------------------
# win_rate
# --------------------------------------------------------------------------------------


def test_win_rate_hand_worked():
    # A beats B, loses, ties, beats: scores 1, 0, 1/2, 1 -> rate 5/8
    w = E.win_rate([3.0, 1.0, 2.0, 2.0], [1.0, 2.0, 2.0, 0.0])
    assert (w.rate, w.n, w.confidence) == (0.625, 4, 0.95)
    s = [1.0, 0.0, 0.5, 1.0]
    sd = math.sqrt(sum((x - 0.625) ** 2 for x in s) / 3)  # sample standard deviation
    half = NormalDist().inv_cdf(0.975) * sd / 2  # z = 1.96, sqrt(n) = 2
    assert w.low == pytest.approx(0.625 - half) and w.high == 1.0  # 0.625 + half > 1: clipped
    # A always better: no spread, the interval is the point
    assert E.win_rate([2, 3, 4], [1, 1, 1]) == E.WinRate(1.0, 1.0, 1.0, 3, 0.95)


def test_win_rate_matches_a_naive_loop_and_its_interval_shrinks_with_n():
    rng = np.random.default_rng(0)
    widths = []
    for n in (40, 4000):
        a = rng.integers(0, 4, n).astype(float)  # small integers: plenty of ties
        b = rng.integers(0, 4, n).astype(float)
        w = E.win_rate(a, b, confidence=0.9)
        naive = sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)) / n
        assert w.rate == pytest.approx(naive) and w.n == n and w.confidence == 0.9
        assert w.low <= w.rate <= w.high and 0.0 <= w.low and w.high <= 1.0
        widths.append(w.high - w.low)
    assert widths[1] < widths[0] / 5  # ~ 1 / sqrt(100) = 1/10
    # a higher confidence, a wider interval; swapping A and B mirrors the rate
    a, b = rng.normal(size=200), rng.normal(size=200)
    assert E.win_rate(a, b, 0.99).high - E.win_rate(a, b, 0.99).low > E.win_rate(a, b, 0.8).high - E.win_rate(a, b, 0.8).low
    assert E.win_rate(b, a).rate == pytest.approx(1 - E.win_rate(a, b).rate)


@pytest.mark.parametrize("a, b, confidence, message", [
    ([1.0, 2.0], [1.0], 0.95, r"equal-length .* got shapes \(2,\), \(1,\)"),
    ([1.0], [2.0], 0.95, "at least 2 scores"),
    ([[1.0, 2.0]], [[1.0, 2.0]], 0.95, r"got shapes \(1, 2\)"),
    ([1.0, 2.0], [2.0, 1.0], 1.0, r"confidence must lie in \(0, 1\)"),
    ([1.0, 2.0], [2.0, 1.0], 0.0, r"confidence must lie in \(0, 1\)"),
])
def test_win_rate_bad_input(a, b, confidence, message):
    with pytest.raises(ValueError, match=message):
        E.win_rate(a, b, confidence)


# --------------------------------------------------------------------------------------
# split_nll
# --------------------------------------------------------------------------------------


def words_to_ids(tok, text):
    vocab = tok.get_vocab()
    return [vocab.get(w, tok.unk_token_id) for w in text.split()]


@torch.no_grad()
def test_split_nll_matches_a_naive_per_token_loop(tok, policy):
    pairs = WORLD.demonstrations(5, seed=3) + [("", "the food was great .")]
    totals = {"prompt": [0.0, 0], "completion": [0.0, 0]}
    for prompt, completion in pairs:
        p, c = words_to_ids(tok, prompt), words_to_ids(tok, completion)
        ids = [tok.bos_token_id] + p + c + [tok.eos_token_id]
        logp = torch.log_softmax(policy(torch.tensor([ids])).logits[0].double(), -1)
        for t in range(1, len(ids)):  # the prediction of token t from the tokens before it
            part = "prompt" if t <= len(p) else "completion"
            totals[part][0] -= float(logp[t - 1, ids[t]])
            totals[part][1] += 1
    got = E.split_nll(policy, tok, pairs, batch_size=4)  # two batches
    assert set(got) == {"prompt", "completion"}
    for part, (s, n) in totals.items():
        assert got[part] == pytest.approx(s / n, abs=1e-4), part
    # no prompt tokens at all: their mean is nan, not 0
    only_completions = E.split_nll(policy, tok, [("", "the food was great .")])
    assert math.isnan(only_completions["prompt"]) and only_completions["completion"] > 0


# --------------------------------------------------------------------------------------
# evaluate_policy and the world's gold preference
# --------------------------------------------------------------------------------------

PROMPTS = WORLD.prompts(6, seed=21)


def test_evaluate_policy_scores_with_the_gold_preference(tok, policy):
    ev = E.evaluate_policy(policy, tok, WORLD, PROMPTS, max_new_tokens=12, seed=0)
    n = len(PROMPTS)
    assert ev.prompts == PROMPTS and len(ev.texts) == n
    assert ev.gold.shape == ev.grammatical.shape == ev.ended.shape == (n,)
    assert ev.grammatical.dtype == bool and ev.ended.dtype == bool
    assert tuple(ev.defects) == E.DEFECTS == tuple(DEFECT_PENALTY)
    assert all(v.shape == (n,) for v in ev.defects.values())
    assert np.allclose(ev.gold, WORLD.gold_rewards(ev.texts, PROMPTS))
    for i in range(n):
        analysis = WORLD.analyse(ev.texts[i], PROMPTS[i])
        assert bool(ev.grammatical[i]) == analysis.grammatical
        assert {d: int(ev.defects[d][i]) for d in E.DEFECTS} == analysis.defects
    assert ev.proxy is None and ev.kl is None
    summary = ev.summary()
    assert summary["n"] == n and summary["gold_mean"] == pytest.approx(ev.gold.mean())
    assert summary["gold_std"] == pytest.approx(np.std(ev.gold))  # population std
    assert summary["eos"] == pytest.approx(ev.ended.mean()) and summary["grammatical"] == pytest.approx(ev.grammatical.mean())
    assert {k for k in summary if k.startswith("defect/")} == {f"defect/{d}" for d in E.DEFECTS}
    assert "proxy_mean" not in summary and "kl_mean" not in summary
    # the same seed, the same completions; another seed, others
    assert E.evaluate_policy(policy, tok, WORLD, PROMPTS, max_new_tokens=12, seed=0).texts == ev.texts
    assert E.evaluate_policy(policy, tok, WORLD, PROMPTS, max_new_tokens=12, seed=1).texts != ev.texts


def test_evaluate_policy_kl_and_proxy(tok, policy):
    from rlhf_utils.reward import RewardModel

    same = E.evaluate_policy(policy, tok, WORLD, PROMPTS, max_new_tokens=12, seed=0, temperature=0.8,
                             reference=copy.deepcopy(policy))
    assert same.kl.shape == (len(PROMPTS),) and np.abs(same.kl).max() < 1e-4  # KL(pi || pi) = 0
    other = lm.build_model(LMConfig(n_layer=1, n_head=2, n_embd=16, n_positions=64, seed=1), tok).eval()
    far = E.evaluate_policy(policy, tok, WORLD, PROMPTS, max_new_tokens=12, seed=0, temperature=0.8, reference=other)
    assert far.texts == same.texts and np.abs(far.kl).max() > 1e-2
    # the per-sequence log-ratio, by a separate scoring of each row's tokens under each model
    s = lm.sample(policy, tok, PROMPTS, 12, temperature=0.8, generator=torch.Generator().manual_seed(0))
    args = (s.prompt_ids, s.prompt_mask, s.response_ids, s.response_mask)
    with torch.no_grad():
        lp = lm.response_logprobs(policy, *args, temperature=0.8) * s.response_mask
        ref = lm.response_logprobs(other, *args, temperature=0.8) * s.response_mask
    assert np.allclose(far.kl, (lp - ref).sum(1).numpy(), atol=1e-4)
    assert far.summary()["kl_mean"] == pytest.approx(far.kl.mean())
    rm = RewardModel.from_policy(policy, tok, init_std=0.25)
    scored = E.evaluate_policy(policy, tok, WORLD, PROMPTS, max_new_tokens=12, seed=0, reward_model=rm)
    assert scored.kl is None and np.allclose(scored.proxy, rm.score(PROMPTS, scored.texts).numpy())
    assert scored.summary()["proxy_mean"] == pytest.approx(scored.proxy.mean())


def test_evaluate_policy_needs_a_list_of_prompts(tok, policy):
    for bad in ([], "i loved this film ."):
        with pytest.raises(ValueError, match="non-empty list of prompts"):
            E.evaluate_policy(policy, tok, WORLD, bad, max_new_tokens=4)


def test_gold_analysis_metrics_and_reward_fn():
    demos = WORLD.demonstrations(4, seed=1)
    prompts = [p for p, _ in demos] + ["i loved this film ."]
    completions = [c for _, c in demos] + ["zzz blah"]
    verdict = E.gold_analysis(WORLD, prompts, completions)
    assert set(verdict) == {"gold", "grammatical", *E.DEFECTS}
    assert verdict["grammatical"].tolist() == [True] * 4 + [False]  # clean demonstrations, then gibberish
    assert verdict["unparseable"].tolist() == [0, 0, 0, 0, 1]
    gold = WORLD.gold_rewards(completions, prompts)
    assert np.allclose(verdict["gold"], gold)
    metrics = E.gold_metrics(WORLD)(prompts, completions)
    assert metrics == {"gold/mean": pytest.approx(gold.mean()), "gold/grammatical": pytest.approx(0.8)}
    scores = E.gold_reward_fn(WORLD)(prompts, completions)
    assert scores.dtype == torch.float32 and scores.shape == (5,)
    assert torch.allclose(scores, torch.tensor(gold, dtype=torch.float32))


# --------------------------------------------------------------------------------------
# A reward model against the labels and the gold preference
# --------------------------------------------------------------------------------------


def test_calibration_bins_naive():
    rng = np.random.default_rng(0)
    p = rng.random(500)
    y = (rng.random(500) < p).astype(float)
    mean_p, freq, count = E.calibration_bins(p, y, n_bins=5)
    for b in range(5):
        sel = (p >= b / 5) & (p < (b + 1) / 5)
        assert count[b] == sel.sum()
        assert mean_p[b] == pytest.approx(p[sel].mean()) and freq[b] == pytest.approx(y[sel].mean())
    # p = 1 falls in the last bin; an empty bin is nan with count 0
    mean_p, freq, count = E.calibration_bins([1.0, 0.05], [1, 0], n_bins=4)
    assert count.tolist() == [1, 0, 0, 1] and np.isnan(mean_p[1]) and np.isnan(freq[2])
    # a calibrated predictor has a small ECE, a confidently wrong one a large ECE
    assert E.expected_calibration_error(p, y, 5) < 0.1
    assert E.expected_calibration_error(np.full(100, 0.99), np.zeros(100)) == pytest.approx(0.99)


def test_expected_calibration_error_hand_worked():
    # bin [0.5, 1): predictions 0.6, 0.8 (mean 0.7), outcomes 1, 1 (freq 1) -> gap 0.3, weight 2
    # bin [0, 0.5): prediction 0.2, outcome 0 -> gap 0.2, weight 1
    assert E.expected_calibration_error([0.6, 0.8, 0.2], [1, 1, 0], n_bins=2) == pytest.approx((2 * 0.3 + 0.2) / 3)


def test_pairwise_agreement_and_residuals():
    assert E.pairwise_agreement([1, -1, 2, 0], [3, 1, 1, 5]) == pytest.approx((1 + 0 + 1 + 0.5) / 4)
    assert E.pairwise_agreement([1, 1], [0, 2]) == 0.75  # a gold tie gets half credit, as in the ceiling
    assert np.isnan(E.pairwise_agreement([], []))
    rng = np.random.default_rng(0)
    g = rng.normal(size=50)
    r = 2 * g + 1 + rng.normal(scale=0.1, size=50)
    a, b = np.polyfit(g, r, 1)
    assert np.allclose(E.reward_residuals(r, g), r - (a * g + b))


def test_defect_group():
    assert E.defect_group({"repetition": 0, "broken": 0}) == "clean"
    assert E.defect_group({"repetition": 0, "broken": 2}) == "broken"
    assert E.defect_group({"repetition": 1, "broken": 1, "off_topic": 0}) == "several"


def test_residuals_by_defect_hand_made():
    """reward = gold + e with e = +1 on repetition, -1 on clean, 0 on the one broken completion:
    e is uncorrelated with gold and has mean 0, so the fitted line is reward = gold and the
    residuals are e exactly."""
    gold = [0.0, 1, 2, 3, 4] * 2 + [2.0]
    e = [1.0] * 5 + [-1.0] * 5 + [0.0]
    reward = np.array(gold) + np.array(e)
    defects = {"repetition": np.array([1] * 5 + [0] * 6), "broken": np.array([0] * 10 + [2]),
               "off_topic": np.zeros(11, int)}
    out = E.residuals_by_defect(reward, gold, defects, min_count=5)
    assert set(out) == {"repetition", "clean"}  # broken has 1 completion, under min_count
    for group, sign in (("repetition", 1.0), ("clean", -1.0)):
        mean, se, n = out[group]
        assert (mean, n) == (pytest.approx(sign), 5) and se == pytest.approx(0.0, abs=1e-9)
    assert E.residuals_by_defect(reward, gold, defects, min_count=1)["broken"] == (
        pytest.approx(0.0, abs=1e-9), pytest.approx(0.0, abs=1e-9), 1)


def test_residuals_by_defect_matches_a_naive_loop():
    rng = np.random.default_rng(1)
    n = 300
    gold = rng.normal(size=n)
    defects = {d: (rng.random(n) < 0.2).astype(int) * rng.integers(1, 3, n) for d in E.DEFECTS}
    reward = gold + 0.5 * defects["repetition"] + rng.normal(scale=0.3, size=n)
    slope, intercept = np.polyfit(gold, reward, 1)
    resid = reward - (slope * gold + intercept)
    groups = {}
    for i in range(n):
        found = [d for d in E.DEFECTS if defects[d][i] > 0]
        groups.setdefault("clean" if not found else found[0] if len(found) == 1 else "several", []).append(resid[i])
    out = E.residuals_by_defect(reward, gold, defects, min_count=5)
    assert set(out) == {g for g, v in groups.items() if len(v) >= 5}
    for g, (mean, se, count) in out.items():
        v = np.array(groups[g])
        assert count == len(v) and mean == pytest.approx(v.mean()) and se == pytest.approx(v.std() / math.sqrt(len(v)))
    assert out["repetition"][0] > 0 > out["clean"][0]  # the over-rated defect shows
