"""Tests of the RL core (rlhf_utils.rl) and what is built on it -- the bandit
(rlhf_utils.bandit), the CartPole agent (rlhf_utils.cartpole), the toy text environment
(rlhf_utils.text_env) -- against independent references: hand-worked values, naive loops
written forwards (the library runs backwards), exact arithmetic, autograd."""

from __future__ import annotations

import dataclasses
import math
from decimal import Decimal, getcontext

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlhf_utils.bandit import Bandit, reinforce_gradient_samples, train_bandit
from rlhf_utils.cartpole import AgentHistory, ActorCritic, PPOAgent, a2c_config, episode_returns, torch_threads
from rlhf_utils.config import CartPoleConfig
from rlhf_utils.rl import (
    approx_kl,
    clip_fraction,
    discounted_returns,
    gae_advantages,
    ppo_policy_loss,
    ppo_value_loss,
    reinforce_loss,
    token_gae_advantages,
    value_clip_fraction,
)
from rlhf_utils.text_env import TextGenerationEnv


def prefix_mask(lengths, width):
    """[B, width] mask with the first lengths[b] entries of row b set (a response mask)."""
    return (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).float()

# ---------------------------------------------------------------- returns and GAE


def test_discounted_returns_by_hand():
    # gamma = 0.5: G2 = 3, G1 = 2 + 0.5*3 = 3.5, G0 = 1 + 0.5*3.5 = 2.75
    g = discounted_returns(torch.tensor([1.0, 2.0, 3.0]), 0.5)
    assert torch.allclose(g, torch.tensor([2.75, 3.5, 3.0]))
    # an episode ends after step 1: G1 = 2, G0 = 1 + 0.5*2 = 2; then G2 = 3 + 0.5*bootstrap 4 = 5
    g = discounted_returns(torch.tensor([1.0, 2.0, 3.0]), 0.5, dones=torch.tensor([0, 1, 0]), bootstrap=4.0)
    assert torch.allclose(g, torch.tensor([2.0, 2.0, 5.0]))
    # gamma = 1: plain sums of what is left
    assert torch.allclose(discounted_returns(torch.ones(4), 1.0), torch.tensor([4.0, 3.0, 2.0, 1.0]))


def _naive_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
    """Forward, per step: A_t = sum_k (gamma*lam)^k delta_{t+k} until the episode or the
    rollout ends; delta bootstraps unless the step terminated."""
    T, N = rewards.shape
    adv = np.zeros((T, N))
    for n in range(N):
        for t in range(T):
            total, coef = 0.0, 1.0
            for k in range(t, T):
                boot = 0.0 if terminated[k, n] else gamma * next_values[k, n]
                delta = rewards[k, n] + boot - values[k, n]
                total += coef * delta
                if terminated[k, n] or truncated[k, n]:
                    break
                coef *= gamma * lam
            adv[t, n] = total
    return adv


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_matches_naive_loop_with_terminations_and_truncations(seed):
    rng = np.random.default_rng(seed)
    T, N = 17, 5
    rewards, values, next_values = rng.normal(size=(3, T, N))
    terminated = rng.random((T, N)) < 0.15
    truncated = (rng.random((T, N)) < 0.15) & ~terminated
    gamma, lam = 0.97, 0.9
    adv, ret = gae_advantages(
        *(torch.tensor(x, dtype=torch.float32) for x in (rewards, values, next_values)),
        torch.tensor(terminated), torch.tensor(truncated), gamma, lam,
    )
    expected = _naive_gae(rewards, values, next_values, terminated, truncated, gamma, lam)
    assert np.allclose(adv.numpy(), expected, atol=1e-5)
    assert np.allclose(ret.numpy(), expected + values, atol=1e-5)


def test_gae_truncation_bootstraps_termination_does_not():
    one = torch.ones(1, 1)
    zero = torch.zeros(1, 1, dtype=torch.bool)
    # a single step, reward 1, V(s)=0, V(s')=10, gamma 0.5
    adv_term, _ = gae_advantages(one, 0 * one, 10 * one, ~zero, zero, 0.5, 0.9)
    adv_trunc, _ = gae_advantages(one, 0 * one, 10 * one, zero, ~zero, 0.5, 0.9)
    assert float(adv_term) == pytest.approx(1.0)  # the future is worth 0
    assert float(adv_trunc) == pytest.approx(1.0 + 0.5 * 10)  # cut off, not worthless


def test_gae_lambda_one_is_monte_carlo_and_zero_is_td():
    rng = np.random.default_rng(3)
    r, v = (torch.tensor(rng.normal(size=(6, 1)), dtype=torch.float32) for _ in range(2))
    nv = torch.cat([v[1:], torch.zeros(1, 1)])
    no = torch.zeros(6, 1, dtype=torch.bool)
    term = no.clone()
    term[-1] = True
    adv1, _ = gae_advantages(r, v, nv, term, no, 0.9, 1.0)
    assert torch.allclose(adv1, discounted_returns(r, 0.9) - v, atol=1e-5)
    adv0, _ = gae_advantages(r, v, nv, term, no, 0.9, 0.0)
    assert torch.allclose(adv0, r + 0.9 * nv * (~term) - v, atol=1e-6)


def naive_token_gae(values, rewards, lengths, gamma, lam):
    """The docstring's loop: each response an episode ending at its last real token."""
    B, R = values.shape
    adv = np.zeros((B, R))
    for b in range(B):
        L, A = lengths[b], 0.0
        for t in reversed(range(L)):
            next_v = float(values[b, t + 1]) if t + 1 < L else 0.0
            delta = float(rewards[b, t]) + gamma * next_v - float(values[b, t])
            A = delta + gamma * lam * A
            adv[b, t] = A
    ret = adv + values.numpy() * (np.arange(R)[None] < np.array(lengths)[:, None])
    return adv, ret


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0), (1.0, 0.0)])
def test_token_gae_over_masked_responses_matches_naive_loop(gamma, lam):
    g = torch.Generator().manual_seed(2)
    lengths = [6, 1, 3, 6, 4]
    values = torch.randn(5, 6, generator=g)
    rewards = torch.randn(5, 6, generator=g)
    m = prefix_mask(lengths, 6)
    # padding holds garbage: it must not leak into the real tokens
    values_pad = torch.where(m.bool(), values, torch.full_like(values, 99.0))
    rewards_pad = torch.where(m.bool(), rewards, torch.full_like(rewards, -7.0))
    inputs = (rewards_pad.clone(), values_pad.clone(), m.clone())
    adv, ret = token_gae_advantages(rewards_pad, values_pad, m, gamma, lam)
    nadv, nret = naive_token_gae(values, rewards, lengths, gamma, lam)
    assert np.allclose(adv.numpy(), nadv, atol=1e-5)
    assert np.allclose(ret.numpy(), nret, atol=1e-5)
    assert (adv[~m.bool()] == 0).all() and (ret[~m.bool()] == 0).all()
    assert all(torch.equal(a, b) for a, b in zip(inputs, (rewards_pad, values_pad, m)))  # inputs untouched


def test_token_gae_is_episode_gae_over_time():
    """One full-length response = one episode terminating at its last step, time first."""
    g = torch.Generator().manual_seed(5)
    r, v = torch.randn(1, 5, generator=g), torch.randn(1, 5, generator=g)
    adv, ret = token_gae_advantages(r, v, torch.ones(1, 5), 0.9, 0.7)
    term = torch.zeros(5, 1, dtype=torch.bool)
    term[-1] = True
    nv = torch.cat([v.T[1:], torch.zeros(1, 1)])
    adv2, ret2 = gae_advantages(r.T, v.T, nv, term, torch.zeros_like(term), 0.9, 0.7)
    assert torch.allclose(adv, adv2.T, atol=1e-6) and torch.allclose(ret, ret2.T, atol=1e-6)


def test_shape_mismatch_names_the_arguments():
    x, b = torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"gae_advantages: .*values \(3, 1\)"):
        gae_advantages(x, torch.zeros(3, 1), x, b, b, 0.9, 0.9)
    with pytest.raises(ValueError, match=r"token_gae_advantages: .*mask \(2, 3\)"):
        token_gae_advantages(x, x, torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"ppo_policy_loss: .*advantages \(4,\)"):
        ppo_policy_loss(torch.zeros(3), torch.zeros(3), torch.zeros(4), 0.2)
    with pytest.raises(ValueError, match=r"ppo_value_loss: .*mask \(2,\)"):
        ppo_value_loss(torch.zeros(3), torch.zeros(3), torch.zeros(3), mask=torch.ones(2))
    with pytest.raises(ValueError, match=r"reinforce_loss: .*returns \(2,\)"):
        reinforce_loss(torch.zeros(3), torch.zeros(2))


# ---------------------------------------------------------------- PPO losses


def test_clipped_policy_loss_hand_worked():
    eps = 0.2
    ratio = torch.tensor([1.5, 0.5, 1.5, 0.5, 1.1])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, 2.0])
    # min(r A, clip(r) A): [min(1.5, 1.2), min(0.5, 0.8), min(-1.5, -1.2), min(-0.5, -0.8), min(2.2, 2.2)]
    per_sample = torch.tensor([1.2, 0.5, -1.5, -0.8, 2.2])
    logp = torch.log(ratio).requires_grad_(True)
    old = torch.zeros(5)
    loss = ppo_policy_loss(logp, old, adv, eps)
    assert loss.item() == pytest.approx(-float(per_sample.mean()), abs=1e-6)
    loss.backward()
    # clipped where the ratio went past the clip in the advantage's favour: no gradient there.
    # elsewhere d(-r A / 5)/d log r = -r A / 5
    expected_grad = torch.tensor([0.0, -0.5 * 1, 1.5, 0.0, -1.1 * 2]) / 5
    assert torch.allclose(logp.grad, expected_grad, atol=1e-6)


def test_unclipped_surrogate_gradient_at_ratio_one_is_policy_gradient():
    logp = torch.tensor([-0.3, -1.2, -0.7], requires_grad=True)
    adv = torch.tensor([1.0, -2.0, 0.5])
    ppo_policy_loss(logp, logp.detach(), adv, math.inf).backward()
    assert torch.allclose(logp.grad, -adv / 3)


def test_value_loss_clipped_and_plain():
    """1/2 E[(V - R)^2], always with the 1/2 (CleanRL, lm-human-preferences, TRL)."""
    v, old, ret = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([3.0, 0.5])
    # squared errors [1, 0.25]: mean 0.625, halved
    assert float(ppo_value_loss(v, old, ret)) == pytest.approx(0.5 * (1.0 + 0.25) / 2)
    # clip 0.5: V_clipped = [1.5, 0.5] -> errors [2.25, 0]; max with [1, 0.25] -> [2.25, 0.25]
    assert float(ppo_value_loss(v, old, ret, clip_coef=0.5)) == pytest.approx(0.5 * (2.25 + 0.25) / 2)
    # of the two entries, the clipped term is the larger one for the first only
    assert value_clip_fraction(v, old, ret, 0.5) == pytest.approx(0.5)
    # Stable-Baselines3's loss (F.mse_loss) has no 1/2: SB3's vf_coef 0.5 is our 1.0 (CartPoleConfig)
    import torch.nn.functional as F
    assert 2 * float(ppo_value_loss(v, old, ret)) == pytest.approx(float(F.mse_loss(ret, v)))
    assert CartPoleConfig().vf_coef * float(ppo_value_loss(v, old, ret)) == pytest.approx(0.5 * float(F.mse_loss(ret, v)))


def test_masked_policy_loss_matches_naive_and_micro_batches_sum_to_it():
    g = torch.Generator().manual_seed(4)
    old = -torch.rand(3, 5, generator=g) * 3
    new = old + torch.randn(3, 5, generator=g) * 0.4
    adv = torch.randn(3, 5, generator=g)
    m = prefix_mask([5, 2, 4], 5)
    inputs = [t.clone() for t in (new, old, adv, m)]
    loss = ppo_policy_loss(new, old, adv, 0.2, m)
    terms, clipped, k3 = [], [], []
    for b in range(3):
        for t in range(5):
            if m[b, t]:
                x = float(new[b, t] - old[b, t])
                r, a = math.exp(x), float(adv[b, t])
                terms.append(max(-a * r, -a * min(max(r, 0.8), 1.2)))
                clipped.append(abs(r - 1) > 0.2)
                k3.append(math.expm1(x) - x)
    assert math.isclose(float(loss), sum(terms) / len(terms), rel_tol=1e-5)
    assert math.isclose(clip_fraction(new, old, 0.2, m), sum(clipped) / len(clipped), rel_tol=1e-6)
    assert math.isclose(approx_kl(new, old, m), sum(k3) / len(k3), rel_tol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(inputs, (new, old, adv, m)))  # inputs untouched
    # the trainer's split: each micro-batch's token mean times its share of the tokens sums
    # to the minibatch's token mean
    n = m.sum()
    parts = [ppo_policy_loss(new[i:i + 1], old[i:i + 1], adv[i:i + 1], 0.2, m[i:i + 1]) * m[i].sum() / n
             for i in range(3)]
    assert torch.allclose(sum(parts), loss, atol=1e-6)


def test_masked_value_loss_matches_naive():
    g = torch.Generator().manual_seed(5)
    old = torch.randn(2, 4, generator=g)
    new = old + torch.randn(2, 4, generator=g)
    ret = torch.randn(2, 4, generator=g)
    m = prefix_mask([4, 3], 4)
    loss = ppo_value_loss(new, old, ret, 0.2, m)
    terms, cl = [], []
    for b in range(2):
        for t in range(4):
            if m[b, t]:
                v, vo, R = float(new[b, t]), float(old[b, t]), float(ret[b, t])
                vc = vo + min(max(v - vo, -0.2), 0.2)
                terms.append(max((v - R) ** 2, (vc - R) ** 2))
                cl.append((vc - R) ** 2 > (v - R) ** 2)
    assert math.isclose(float(loss), 0.5 * sum(terms) / len(terms), rel_tol=1e-5)
    assert math.isclose(value_clip_fraction(new, old, ret, 0.2, m), sum(cl) / len(cl), rel_tol=1e-6)
    unclipped = [(float(new[b, t]) - float(ret[b, t])) ** 2 for b in range(2) for t in range(4) if m[b, t]]
    assert math.isclose(float(ppo_value_loss(new, old, ret, None, m)), 0.5 * sum(unclipped) / len(unclipped),
                        rel_tol=1e-5)


def test_losses_refuse_an_empty_mask():
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="does not select anything"):
        ppo_policy_loss(z, z, z, 0.2, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="does not select anything"):
        ppo_value_loss(z, z, z, 0.2, torch.zeros(2, 3))


def _k3_exact(x: float) -> float:
    getcontext().prec = 60
    d = Decimal(x)
    return float(d.exp() - 1 - d)


@pytest.mark.parametrize("x", [1e-8, -1e-8, 3e-7, -1e-6, 1e-4, -5e-3, 9.9e-3, 1e-2, -0.3, 1.0, -2.0])
def test_approx_kl_stable_and_non_negative(x):
    for dtype in (torch.float32, torch.float64):
        got = approx_kl(torch.tensor([x], dtype=dtype), torch.zeros(1, dtype=dtype))  # log r = x
        assert isinstance(got, float)
        assert got >= 0.0
        assert got == pytest.approx(_k3_exact(float(torch.tensor(x, dtype=dtype))), rel=1e-4 if dtype == torch.float32 else 1e-9)


def test_approx_kl_naive_form_fails_where_ours_does_not():
    x = torch.full((1000,), 1e-6)  # float32
    naive = (torch.exp(x) - 1) - x  # the textbook (r - 1) - log r
    assert approx_kl(x, torch.zeros(1000)) == pytest.approx(5e-13, rel=1e-3)
    # the same from the other side: logprobs and old_logprobs both far from 0
    old = torch.full((1000,), -3.0)
    assert approx_kl(old + 1e-6, old) == pytest.approx(_k3_exact(float((old + 1e-6)[0]) + 3.0), rel=1e-4)
    assert abs(float(naive.mean()) - 5e-13) > 1e-9  # cancellation: off by orders of magnitude


def test_clipfrac_by_hand():
    old = torch.tensor([-1.0, -2.0, -0.5, -3.0])
    new = old + torch.log(torch.tensor([1.0, 1.25, 0.7, 1.1]))  # ratios; |r - 1| > 0.2 for 1.25, 0.7
    assert clip_fraction(new, old, 0.2) == pytest.approx(0.5)
    assert isinstance(clip_fraction(new, old, 0.2), float)
    assert clip_fraction(new, old, 0.2, mask=torch.tensor([1, 1, 0, 0])) == pytest.approx(0.5)
    assert clip_fraction(new, old, 0.2, mask=torch.tensor([1, 0, 0, 1])) == 0.0
    assert clip_fraction(new, old, math.inf) == 0.0


# ---------------------------------------------------------------- bandit and REINFORCE


def test_bandit_analytic_gradient_matches_autograd():
    bandit = Bandit(means=(1.0, 2.0, 0.5, 3.0))
    logits = torch.tensor([0.1, -0.4, 0.3, 0.0], requires_grad=True)
    bandit.expected_reward(logits).backward()
    assert torch.allclose(bandit.policy_gradient(logits.detach()), logits.grad, atol=1e-6)


@pytest.mark.parametrize("baseline", [None, 1.8])
def test_reinforce_gradient_matches_analytic(baseline):
    bandit = Bandit(means=(1.0, 2.0, 0.5, 3.0), std=1.0)
    logits = torch.tensor([0.1, -0.4, 0.3, 0.0], requires_grad=True)
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    probs = torch.softmax(logits, -1)
    actions = torch.multinomial(probs.detach(), n, replacement=True, generator=gen)
    rewards = bandit.pull(actions, gen)
    loss = reinforce_loss(torch.log(probs[actions]), rewards, baseline)
    loss.backward()
    estimate = -logits.grad
    # the per-sample estimates agree with autograd's mean, and give its standard error
    samples = reinforce_gradient_samples(logits, actions, rewards, baseline or 0.0)
    assert torch.allclose(samples.mean(0), estimate, atol=1e-5)
    stderr = samples.std(0) / math.sqrt(n)
    assert torch.all((estimate - bandit.policy_gradient(logits.detach())).abs() < 5 * stderr)


def test_baseline_lowers_variance():
    bandit = Bandit(means=(4.0, 5.0, 6.0), std=1.0)
    logits = torch.zeros(3)
    gen = torch.Generator().manual_seed(1)
    actions = torch.multinomial(torch.softmax(logits, -1), 50_000, replacement=True, generator=gen)
    rewards = bandit.pull(actions, gen)
    v_none = reinforce_gradient_samples(logits, actions, rewards).var(0).sum()
    v_base = reinforce_gradient_samples(logits, actions, rewards, baseline=5.0).var(0).sum()
    assert v_base < v_none / 5


def test_train_bandit_learns_the_best_arm_with_and_without_baseline():
    bandit = Bandit(means=(0.0, 1.0, 0.3))
    for baseline in (False, True):
        h = train_bandit(bandit, steps=150, batch_size=32, lr=0.5, baseline=baseline, seed=0)
        assert len(h["p_best"]) == 150 and h["p_best"][-1] > 0.9
        assert h["expected_reward"][-1] > h["expected_reward"][0]
    again = train_bandit(bandit, steps=20, batch_size=8, lr=0.5, baseline=True, seed=3)
    assert again == train_bandit(bandit, steps=20, batch_size=8, lr=0.5, baseline=True, seed=3)


# ---------------------------------------------------------------- the agent


def _small(**kw) -> CartPoleConfig:
    return dataclasses.replace(CartPoleConfig(), num_envs=4, num_steps=16, update_epochs=2, **kw)


def test_actor_critic_init_is_deterministic():
    a, b = ActorCritic(4, 2, seed=3), ActorCritic(4, 2, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_one_ppo_update_changes_every_parameter():
    cfg = _small(num_minibatches=2)
    agent = PPOAgent(cfg)
    before = {k: v.detach().clone() for k, v in agent.net.named_parameters()}
    history = agent.learn(total_timesteps=cfg.num_envs * cfg.num_steps)
    assert len(history.updates) == 1
    for name, p in agent.net.named_parameters():
        assert not torch.equal(before[name], p.detach()), f"{name} did not change"
    stats = history.updates[0]
    for key in ("policy/approx_kl", "policy/clipfrac", "val/explained_variance", "loss/value"):
        assert key in stats and np.isfinite(stats[key])


def test_training_is_repeatable():
    h1 = PPOAgent(_small()).learn(total_timesteps=256)
    h2 = PPOAgent(_small()).learn(total_timesteps=256)
    assert h1.episode_returns == h2.episode_returns
    assert h1.updates[-1]["loss/value"] == h2.updates[-1]["loss/value"]


def test_same_step_autoreset_env_is_supported():
    envs = gym.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})
    history = PPOAgent(_small(), envs=envs).learn(total_timesteps=4 * 16 * 3)
    assert len(history.episode_returns) > 0 and all(r >= 8 for r in history.episode_returns)


def test_a2c_is_one_step_per_rollout_without_clipping():
    cfg = a2c_config(_small())
    assert (cfg.update_epochs, cfg.num_minibatches, cfg.clip_coef) == (1, 1, math.inf)
    history = PPOAgent(cfg).learn(total_timesteps=128)
    assert history.updates[-1]["policy/clipfrac"] == 0.0


# ---------------------------------------------------------------- bad input


def test_continuous_action_space_is_refused():
    envs = gym.make_vec("Pendulum-v1", num_envs=4, vectorization_mode="sync")
    with pytest.raises(ValueError, match="Discrete action space.*Gaussian policy"):
        PPOAgent(_small(), envs=envs)


def test_minibatches_must_divide_the_batch():
    with pytest.raises(ValueError, match=r"num_minibatches=3 does not divide .* 64 transitions: pick one of \[1, 2, 4"):
        PPOAgent(_small(num_minibatches=3))


@pytest.mark.parametrize("field,value", [("gamma", 1.5), ("gamma", -0.1), ("gae_lambda", 1.01)])
def test_discount_factors_outside_unit_interval_are_refused(field, value):
    with pytest.raises(ValueError, match=rf"{field}=.* is outside \[0, 1\]"):
        PPOAgent(_small(**{field: value}))
    x = torch.zeros(3, 1)
    b = torch.zeros(3, 1, dtype=torch.bool)
    kwargs = {"gamma": 0.9, "gae_lambda": 0.9, field: value}
    with pytest.raises(ValueError, match="outside"):
        gae_advantages(x, x, x, b, b, kwargs["gamma"], kwargs["gae_lambda"])
    if field == "gamma":
        with pytest.raises(ValueError, match="outside"):
            discounted_returns(torch.ones(3), value)


def test_agent_does_not_depend_on_global_thread_count():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        a = PPOAgent(_small())
        torch.set_num_threads(1)
        b = PPOAgent(_small())
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(p, q) for p, q in zip(a.net.parameters(), b.net.parameters()))


def test_torch_threads_restores_the_count():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError
    assert torch.get_num_threads() == before


def test_agent_history_curve_is_a_trailing_mean():
    h = AgentHistory(episode_steps=[10, 25, 30, 50, 70], episode_returns=[1.0, 3.0, 2.0, 10.0, 4.0])
    steps, curve = h.curve(window=3)
    r = h.episode_returns
    naive = [np.mean(r[max(0, i + 1 - 3):i + 1]) for i in range(len(r))]
    assert steps.tolist() == h.episode_steps and np.allclose(curve, naive)
    empty_steps, empty_curve = AgentHistory().curve()
    assert empty_steps.size == 0 and empty_curve.size == 0


def test_episode_returns_is_seeded_and_counts_every_step():
    always_left = lambda obs: 0  # noqa: E731 -- falls over in ~10 steps
    a = episode_returns(always_left, n_episodes=3, seed=5)
    assert a == episode_returns(always_left, n_episodes=3, seed=5)
    assert len(a) == 3 and all(5 <= r < 30 and r == int(r) for r in a)


def test_text_env_rewards_the_share_of_matching_words_at_the_end():
    env = TextGenerationEnv()
    obs, _ = env.reset(seed=0)
    pad = len(env.vocab)
    assert obs.tolist() == [pad] * 5 and env.observation_space.contains(obs)
    vocab = list(env.vocab)
    total, done, steps = 0.0, False, 0
    for w in ["the", "film", "was", "awful", "."]:  # 4 of 5 positions match "the film was great ."
        obs, reward, done, truncated, _ = env.step(vocab.index(w))
        steps += 1
        assert not truncated and (reward == 0.0 or done)
        total += reward
    assert done and steps == 5 and total == pytest.approx(4 / 5)
    assert env.text() == "the film was awful ."
    assert obs.tolist() == [vocab.index(w) for w in env.text().split()]
    with pytest.raises(ValueError, match=r"\['book'\] are not in the vocabulary"):
        TextGenerationEnv(target="the book was great .")
