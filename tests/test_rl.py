"""Tests of rlhf_utils.rl against independent references: hand-worked values, naive
loops written forwards (the library runs backwards), exact arithmetic, autograd."""

from __future__ import annotations

import dataclasses
import math
from decimal import Decimal, getcontext

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlhf_utils.config import CartPoleConfig
from rlhf_utils.rl import (
    ActorCritic,
    Adam,
    Bandit,
    PPOAgent,
    a2c_config,
    approx_kl,
    clip_fraction,
    clip_grad_norm_,
    discounted_returns,
    explained_variance,
    gae_advantages,
    ppo_policy_loss,
    ppo_value_loss,
    reinforce_gradient_samples,
    reinforce_loss,
)

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
    v, old, ret = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([3.0, 0.5])
    assert float(ppo_value_loss(v, old, ret)) == pytest.approx((1.0 + 0.25) / 2)
    # clip 0.5: V_clipped = [1.5, 0.5] -> errors [2.25, 0]; max with [1, 0.25] -> [2.25, 0.25]
    assert float(ppo_value_loss(v, old, ret, clip_coef=0.5)) == pytest.approx((2.25 + 0.25) / 2)
    # the same as the loss Stable-Baselines3 computes (F.mse_loss), clipped or not
    import torch.nn.functional as F
    assert float(ppo_value_loss(v, old, ret)) == pytest.approx(float(F.mse_loss(ret, v)))


def _k3_exact(x: float) -> float:
    getcontext().prec = 60
    d = Decimal(x)
    return float(d.exp() - 1 - d)


@pytest.mark.parametrize("x", [1e-8, -1e-8, 3e-7, -1e-6, 1e-4, -5e-3, 9.9e-3, 1e-2, -0.3, 1.0, -2.0])
def test_approx_kl_stable_and_non_negative(x):
    for dtype in (torch.float32, torch.float64):
        got = float(approx_kl(torch.tensor([x], dtype=dtype)))
        assert got >= 0.0
        assert got == pytest.approx(_k3_exact(float(torch.tensor(x, dtype=dtype))), rel=1e-4 if dtype == torch.float32 else 1e-9)


def test_approx_kl_naive_form_fails_where_ours_does_not():
    x = torch.full((1000,), 1e-6)  # float32
    naive = (torch.exp(x) - 1) - x  # the textbook (r - 1) - log r
    assert float(approx_kl(x)) == pytest.approx(5e-13, rel=1e-3)
    assert abs(float(naive.mean()) - 5e-13) > 1e-9  # cancellation: off by orders of magnitude


@pytest.mark.parametrize("max_norm", [0.05, 1e3])
def test_clip_grad_norm_matches_torch(max_norm):
    nets = [ActorCritic(4, 2, seed=0), ActorCritic(4, 2, seed=0)]
    x = torch.randn(16, 4)
    for net in nets:
        logits, values = net(x)
        (logits.sum() + values.pow(2).sum()).backward()
    ours = clip_grad_norm_(list(nets[0].parameters()), max_norm)
    ref = torch.nn.utils.clip_grad_norm_(nets[1].parameters(), max_norm)
    assert torch.allclose(ours, ref)
    for p, q in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-8)


def test_adam_matches_torch_bit_for_bit_with_annealed_lr():
    """Our Adam = torch.optim.Adam(fused=True) exactly (same kernel), and = the default
    (foreach) torch.optim.Adam to float precision, over steps with a changing lr."""
    nets = [ActorCritic(4, 2, seed=0) for _ in range(3)]
    params = [list(net.parameters()) for net in nets]
    ours = Adam(params[0], lr=1e-3, eps=1e-5)
    fused = torch.optim.Adam(params[1], lr=1e-3, eps=1e-5, fused=True)
    plain = torch.optim.Adam(params[2], lr=1e-3, eps=1e-5)
    gen = torch.Generator().manual_seed(0)
    for step in range(5):
        x = torch.randn(16, 4, generator=gen)
        lr = 1e-3 * (1 - step / 5)
        ours.lr = lr
        for opt in (fused, plain):
            opt.param_groups[0]["lr"] = lr
        for net in nets:
            logits, values = net(x)
            (logits.pow(2).sum() + values.pow(2).sum()).backward()
        for opt in (ours, fused, plain):
            opt.step()
        for net in nets:
            net.zero_grad(set_to_none=True)
    for p, q, r, p0 in zip(*params, ActorCritic(4, 2, seed=0).parameters()):
        assert not torch.equal(p, p0)  # it did move
        assert torch.equal(p, q)
        assert torch.allclose(p, r, rtol=1e-5, atol=1e-7)


def test_clipfrac_and_explained_variance():
    log_ratio = torch.log(torch.tensor([1.0, 1.25, 0.7, 1.1]))
    assert float(clip_fraction(log_ratio, 0.2)) == pytest.approx(0.5)
    y = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(y, y) == pytest.approx(1.0)
    assert explained_variance(torch.full((4,), 2.5), y) == pytest.approx(0.0)
    pred = torch.tensor([1.5, 1.5, 3.5, 3.5])
    assert explained_variance(pred, y) == pytest.approx(1 - np.var([-0.5, 0.5, -0.5, 0.5]) / np.var([1, 2, 3, 4]))
    assert math.isnan(explained_variance(y, torch.ones(4)))


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
