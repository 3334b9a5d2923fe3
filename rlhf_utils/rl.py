"""The reinforcement-learning core shared by every policy-gradient method in the course.

Returns, advantages, and the policy-gradient loss family, as small pure functions. The
CartPole agent (:mod:`rlhf_utils.cartpole`), the language-model PPO (:mod:`rlhf_utils.ppo`)
and the critic-free methods built on it all call these, with one vocabulary:
``gamma``, ``gae_lambda``, ``clip_coef``, ``vf_clip_coef``, ``vf_coef``, ``ent_coef``, and the
metrics ``policy/approx_kl``, ``policy/clipfrac``, ``policy/entropy``, ``val/clipfrac``,
``val/explained_variance``, ``loss/policy``, ``loss/value``.

* discounted returns -- Sutton & Barto (2018), eq. 3.9;
* REINFORCE -- Williams (1992), "Simple statistical gradient-following algorithms for
  connectionist reinforcement learning";
* GAE(gamma, lambda) -- Schulman et al. (2016), "High-dimensional continuous control using
  generalized advantage estimation", arXiv:1506.02438, eq. 16: over episodes in time
  (:func:`gae_advantages`) and over the response tokens of a batch (:func:`token_gae_advantages`);
* PPO's clipped surrogate and clipped value loss -- Schulman et al. (2017), "Proximal
  policy optimization algorithms", arXiv:1707.06347, eqs. 7 and 9; the diagnostics
  ``approx_kl`` / ``clipfrac`` as CleanRL defines them (Huang et al. 2022).

Shapes: ``[T, N]`` is (time steps, parallel environments); ``[B, R]`` (sequences, response
tokens) with a mask; ``[B]`` a flat batch. No function mutates its inputs.
"""

from __future__ import annotations

import math

import torch

from rlhf_utils.ops import _check_same_shape, kl_estimate, masked_mean


def check_unit_interval(name: str, value: float) -> None:
    """A discount or trace factor must lie in [0, 1]; say which one does not."""
    if math.isnan(float(value)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(
            f"{name}={value!r} is outside [0, 1]: a discount/trace factor must lie in [0, 1] "
            f"(typical: gamma=0.99 or 0.98, gae_lambda=0.95 or 0.8)."
        )


# --------------------------------------------------------------------------------------
# Returns and advantages
# --------------------------------------------------------------------------------------


def discounted_returns(rewards: torch.Tensor, gamma: float, dones: torch.Tensor | None = None,
                       bootstrap: torch.Tensor | float = 0.0) -> torch.Tensor:
    """``G_t = r_t + gamma * G_{t+1} * (1 - done_t)``, computed backwards.

    rewards: ``[T]`` or ``[T, N]``; dones (same shape, optional): the episode ended at step
    t, so nothing after t is added; bootstrap: the value added after the last step (0 for a
    finished episode). Naive equivalent for one episode: ``G_t = sum_k gamma**k * r_{t+k}``.
    """
    check_unit_interval("gamma", gamma)
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    not_done = torch.ones_like(rewards) if dones is None else 1.0 - torch.as_tensor(dones).to(rewards.dtype)
    _check_same_shape("discounted_returns", rewards=rewards, dones=not_done)
    returns = torch.empty_like(rewards)
    running = torch.as_tensor(bootstrap, dtype=rewards.dtype) * torch.ones_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        running = rewards[t] + gamma * not_done[t] * running
        returns[t] = running
    return returns


def gae_advantages(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor,
                   terminated: torch.Tensor, truncated: torch.Tensor, gamma: float, gae_lambda: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over episodes in time: ``(advantages, returns)``, both ``[T, N]`` (or ``[T]``).

    ``values[t] = V(s_t)``; ``next_values[t] = V(s_{t+1})``, the value of the state reached
    after step t -- for an episode that ended at t, of its *final* observation, not of the
    next episode's first one::

        delta_t = r_t + gamma * V(s_{t+1}) * (1 - terminated_t) - V(s_t)
        A_t     = delta_t + gamma * lambda * (1 - terminated_t) * (1 - truncated_t) * A_{t+1}

    Termination (the pole fell) means the future is worth 0: no bootstrap. Truncation (a
    time limit) means the future was cut off, not worthless: bootstrap from V(s_{t+1}), but
    do not chain into the next episode (Pardo et al. 2018, "Time limits in reinforcement
    learning"). ``returns = advantages + values`` are the value targets.
    """
    check_unit_interval("gamma", gamma)
    check_unit_interval("gae_lambda", gae_lambda)
    _check_same_shape("gae_advantages", rewards=rewards, values=values, next_values=next_values,
                      terminated=terminated, truncated=truncated)
    rewards, values, next_values = (torch.as_tensor(x, dtype=torch.float32) for x in (rewards, values, next_values))
    not_term = 1.0 - terminated.to(rewards.dtype)
    not_end = not_term * (1.0 - truncated.to(rewards.dtype))
    deltas = rewards + gamma * next_values * not_term - values  # [T, N]
    advantages = torch.empty_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        running = deltas[t] + gamma * gae_lambda * not_end[t] * running
        advantages[t] = running
    return advantages, advantages + values


def token_gae_advantages(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                         gamma: float = 1.0, gae_lambda: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over the response tokens of a batch: ``(advantages, returns)``, ``[B, R]``, 0 at padding.

    Each response is an episode that ends (terminates) at its last real token: nothing is
    bootstrapped from the padding after it. Naive equivalent, for a sequence ``b`` with real
    tokens ``0..L-1``::

        A = 0
        for t in reversed(range(L)):
            next_v = values[b][t + 1] if t + 1 < L else 0.0
            delta = rewards[b][t] + gamma * next_v - values[b][t]
            A = delta + gamma * lam * A
            advantages[b][t] = A
        returns[b][t] = advantages[b][t] + values[b][t]

    It is :func:`gae_advantages` run over tokens (time first), with "the next token is
    padding" as the episode's termination.
    """
    _check_same_shape("token_gae_advantages", rewards=rewards, values=values, mask=mask)
    mask = mask.to(values.dtype)
    values, rewards = values * mask, rewards * mask  # [B, R]
    next_mask = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)  # [B, R]
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)  # [B, R]
    advantages, returns = gae_advantages(rewards.T, values.T, next_values.T, (1 - next_mask).T,
                                         torch.zeros_like(mask).T, gamma, gae_lambda)  # [R, B]
    return advantages.T * mask, returns.T * mask


# --------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------


def reinforce_loss(logprobs: torch.Tensor, returns: torch.Tensor,
                   baseline: torch.Tensor | float | None = None) -> torch.Tensor:
    """REINFORCE as a loss (Williams 1992): ``-E[log pi(a|s) * (G - b)]``.

    Its gradient is the score-function estimate of ``-grad J``. Any baseline ``b`` that does
    not depend on the sampled action leaves the gradient unbiased (``E[grad log pi] = 0``)
    and, chosen near ``E[G]``, lowers its variance. ``returns`` and ``baseline`` are treated
    as constants (detached). Naive equivalent: ``-mean(lp * (g - b) for lp, g in ...)``.
    """
    _check_same_shape("reinforce_loss", logprobs=logprobs, returns=returns)
    scale = returns.detach() if baseline is None else returns.detach() - torch.as_tensor(baseline).detach()
    return -(logprobs * scale).mean()


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    clip_coef: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """PPO's clipped surrogate, as a loss to minimise (Schulman et al. 2017, eq. 7)::

        r_t = pi_theta(a_t|s_t) / pi_theta_old(a_t|s_t) = exp(logprobs - old_logprobs)
        L   = -E[ min(r_t * A_t, clip(r_t, 1 - eps, 1 + eps) * A_t) ]

    ``E`` is the mean over the entries ``mask`` selects (all of them without a mask): over
    transitions for CartPole, over response tokens for a language model. The objective
    multiplies the *ratio* by the advantage; there is no log-probability in it.
    ``clip_coef=inf`` gives the unclipped surrogate ``E[r_t * A_t]``.
    Naive equivalent: ``sum(max(-a * r, -a * clip(r)) over real entries) / n_real``.
    """
    _check_same_shape("ppo_policy_loss", logprobs=logprobs, old_logprobs=old_logprobs,
                      advantages=advantages, mask=mask)
    ratio = torch.exp(logprobs - old_logprobs)
    clipped = torch.clamp(ratio, 1.0 - clip_coef, 1.0 + clip_coef)
    return -masked_mean(torch.minimum(ratio * advantages, clipped * advantages), mask)


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                   clip_coef: float | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``1/2 E[(V - R)^2]``, or with ``clip_coef`` its clipped form
    ``1/2 E[max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)]``.

    The factor 1/2 is CleanRL's, lm-human-preferences' and TRL's. Stable-Baselines3 leaves
    it out (``F.mse_loss``), so SB3's ``vf_coef=0.5`` is our ``vf_coef=1.0``.
    Naive equivalent: the expression summed over the real entries, divided by their number.
    """
    _check_same_shape("ppo_value_loss", values=values, old_values=old_values, returns=returns, mask=mask)
    loss = (values - returns) ** 2
    if clip_coef is not None:
        v_clipped = old_values + torch.clamp(values - old_values, -clip_coef, clip_coef)
        loss = torch.maximum(loss, (v_clipped - returns) ** 2)
    return 0.5 * masked_mean(loss, mask)


# --------------------------------------------------------------------------------------
# Diagnostics (no gradient)
# --------------------------------------------------------------------------------------


@torch.no_grad()
def approx_kl(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """``policy/approx_kl``: KL(pi_old || pi_new) estimated from the rollout's samples with
    Schulman's k3, ``(r - 1) - log r`` with ``r = pi_new / pi_old`` (as CleanRL), averaged
    over the entries ``mask`` selects."""
    return float(masked_mean(kl_estimate(old_logprobs, logprobs, "k3"), mask))


@torch.no_grad()
def clip_fraction(logprobs: torch.Tensor, old_logprobs: torch.Tensor, clip_coef: float,
                  mask: torch.Tensor | None = None) -> float:
    """``policy/clipfrac``: share of entries whose ratio left ``[1 - eps, 1 + eps]``."""
    ratio = torch.exp(logprobs - old_logprobs)
    return float(masked_mean(((ratio - 1.0).abs() > clip_coef).to(ratio.dtype), mask))


@torch.no_grad()
def value_clip_fraction(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                        clip_coef: float, mask: torch.Tensor | None = None) -> float:
    """``val/clipfrac``: share of entries whose clipped value term was the larger one."""
    v_clipped = old_values + torch.clamp(values - old_values, -clip_coef, clip_coef)
    worse = ((v_clipped - returns) ** 2 > (values - returns) ** 2).to(values.dtype)
    return float(masked_mean(worse, mask))


# --------------------------------------------------------------------------------------
# Critic-free advantages: a group of completions per prompt is its own baseline
# --------------------------------------------------------------------------------------


def _groups(rewards: torch.Tensor, group_size: int, fn: str) -> torch.Tensor:
    """``rewards [B]`` as ``[B / group_size, group_size]``: consecutive rows share a prompt."""
    if rewards.ndim != 1:
        raise ValueError(f"{fn}: rewards must be one score per completion, [B], got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(f"{fn}: group_size={group_size}: a baseline from the other completions of the same prompt "
                         "needs at least 2 per prompt (set group_size to 2 or more, e.g. 4)")
    if rewards.shape[0] % group_size:
        raise ValueError(f"{fn}: {rewards.shape[0]} completions do not split into groups of {group_size}: "
                         "make batch_size a multiple of group_size")
    return rewards.reshape(-1, group_size)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024, eq. 5): each completion's
    baseline is the mean reward of the *other* completions of its prompt. ``rewards [B]``, groups
    of ``group_size`` consecutive rows; returns ``[B]``.

    Naive equivalent: ``A_i = r_i - sum(r_j for j in group(i) if j != i) / (k - 1)``, which equals
    ``k / (k - 1) * (r_i - mean(group))``.
    """
    r = _groups(rewards, group_size, "rloo_advantages")
    baseline = (r.sum(1, keepdim=True) - r) / (group_size - 1)
    return (r - baseline).reshape(-1)


def grpo_advantages(rewards: torch.Tensor, group_size: int, scale_rewards: bool = True,
                    eps: float = 1e-4) -> torch.Tensor:
    """Group-relative advantages (GRPO, Shao et al. 2024, section 4.1.2): the reward minus its
    group's mean, divided by the group's standard deviation (``scale_rewards``). Dr. GRPO (Liu et
    al. 2025) drops the division, which favours groups whose rewards barely differ.

    Naive equivalent: ``(r_i - mean(group)) / (std(group) + eps)``, ``std`` with Bessel's
    correction as TRL's ``GRPOTrainer``; without ``scale_rewards``, ``r_i - mean(group)``.
    """
    r = _groups(rewards, group_size, "grpo_advantages")
    centred = r - r.mean(1, keepdim=True)
    if scale_rewards:
        centred = centred / (r.std(1, keepdim=True) + eps)
    return centred.reshape(-1)
