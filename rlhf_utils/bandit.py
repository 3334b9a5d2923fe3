"""A multi-armed bandit and REINFORCE on it: the policy gradient at its smallest.

A K-armed bandit has one state, so a softmax policy over the arms is all there is to
learn, and its exact policy gradient can be written down (:meth:`Bandit.policy_gradient`).
That makes it the place to see REINFORCE (Williams 1992; Sutton & Barto 2018, ch. 13) at
work: the score-function estimate, unbiased with or without a baseline, and how much
variance a baseline removes (:func:`reinforce_gradient_samples`). Notebook 02 starts here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from rlhf_utils.rl import reinforce_loss


@dataclass(frozen=True)
class Bandit:
    """A K-armed bandit: pulling arm a pays a Gaussian reward with mean ``means[a]``."""

    means: tuple[float, ...]
    std: float = 1.0

    def pull(self, actions: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Rewards for a batch of arm indices [B] -> [B]."""
        means = torch.tensor(self.means, dtype=torch.float32)[actions]
        return means + self.std * torch.randn(means.shape, generator=generator)

    def expected_reward(self, logits: torch.Tensor) -> torch.Tensor:
        """J(theta) = sum_a softmax(theta)_a * mu_a."""
        return (torch.softmax(logits, -1) * torch.tensor(self.means)).sum()

    def policy_gradient(self, logits: torch.Tensor) -> torch.Tensor:
        """The exact gradient of J for a softmax policy: dJ/dtheta_k = pi_k (mu_k - J)."""
        probs = torch.softmax(logits, -1)
        mu = torch.tensor(self.means, dtype=probs.dtype)
        return probs * (mu - (probs * mu).sum())


def reinforce_gradient_samples(
    logits: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, baseline: float = 0.0
) -> torch.Tensor:
    """Per-sample REINFORCE gradient estimates of J for a softmax bandit policy, [B, K]:
    (r - b) * grad_theta log pi(a) = (r - b) * (onehot(a) - pi). Their mean estimates
    :meth:`Bandit.policy_gradient`; their spread is the estimator's variance."""
    probs = torch.softmax(logits.detach(), -1)  # [K]
    score = F.one_hot(actions, probs.shape[-1]).float() - probs  # [B, K]
    return (rewards - baseline)[:, None] * score


def train_bandit(
    bandit: Bandit, steps: int, batch_size: int, lr: float, baseline: bool, seed: int = 0
) -> dict[str, list[float]]:
    """Softmax policy on a bandit trained with REINFORCE (SGD on the logits).

    With ``baseline=True`` the baseline is the mean reward of the previous batches (an
    exponential moving average: it does not depend on the current actions, so the
    gradient stays unbiased). Returns the history of the expected reward J and of p(best arm)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.zeros(len(bandit.means), requires_grad=True)
    opt = torch.optim.SGD([logits], lr=lr)
    best = int(np.argmax(bandit.means))
    b = 0.0
    history: dict[str, list[float]] = {"expected_reward": [], "p_best": []}
    for step in range(steps):
        probs = torch.softmax(logits, -1)
        actions = torch.multinomial(probs.detach(), batch_size, replacement=True, generator=gen)  # [B]
        rewards = bandit.pull(actions, gen)  # [B]
        loss = reinforce_loss(torch.log(probs[actions]), rewards, b if baseline else None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if baseline:
            b = float(rewards.mean()) if step == 0 else 0.9 * b + 0.1 * float(rewards.mean())
        with torch.no_grad():
            history["expected_reward"].append(float(bandit.expected_reward(logits)))
            history["p_best"].append(float(torch.softmax(logits, -1)[best]))
    return history
