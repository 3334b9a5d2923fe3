"""Critic-free policy gradients for RLHF: RLOO, GRPO, Dr. GRPO, and REINFORCE without a KL term.

PPO learns a value function to tell a good token from a lucky one. The methods that came
after it drop the critic: they sample ``group_size`` completions of each prompt and let the
group be its own baseline, one advantage per completion, shared by all of its tokens.

* **RLOO** (REINFORCE leave-one-out; Kool et al. 2019, Ahmadian et al. 2024): the baseline of
  completion i is the mean reward of the *other* completions of its prompt; the KL penalty
  stays in the reward (k1, as PPO here) -- :func:`rlhf_utils.rl.rloo_advantages`;
* **GRPO** (Shao et al. 2024, DeepSeekMath): the reward standardised within its group
  (mean and std), the KL moved from the reward into the loss as the k3 estimate, token
  losses averaged per sequence -- :func:`rlhf_utils.rl.grpo_advantages`;
* **Dr. GRPO** (Liu et al. 2025, "Understanding R1-Zero-like training"): GRPO without the two
  normalisations that bias it -- no division by the group's std (which over-weights prompts
  whose completions barely differ) and a constant denominator instead of each sequence's
  length (which favours long wrong answers and short right ones);
* **REINFORCE, no KL** (what nanochat's RL stage does): the reward minus the group mean,
  one on-policy step per batch (so the PPO ratio is 1 and clipping never acts), no reference.

None of them is a new trainer: each is :class:`rlhf_utils.ppo.PPOTrainer` with its
``advantage_estimator``, ``kl_in`` and ``loss_aggregation`` set -- the same rollout, the same
clipped-surrogate loss family, the same reference pass. The functions below return those
configs from any base config; the sizes (batch, epochs, minibatches, steps) stay the base's,
so that all methods spend the same budget (notebook 08 compares them on one frontier).
"""

from __future__ import annotations

import dataclasses

from rlhf_utils.config import PPOConfig


def rloo_config(base: PPOConfig, group_size: int = 4) -> PPOConfig:
    """RLOO: leave-one-out baseline, KL (k1) in the reward with the base's beta held fixed (as
    Ahmadian et al. 2024 and TRL's RLOOTrainer), plain token mean, no critic."""
    return dataclasses.replace(base, advantage_estimator="rloo", group_size=group_size, kl_in="reward",
                               kl_estimator="k1", adaptive_kl=False, loss_aggregation="token", norm_adv=False)


def grpo_config(base: PPOConfig, group_size: int = 4, kl_coef: float = 0.04) -> PPOConfig:
    """GRPO: group-standardised rewards, beta * k3 in the loss (beta fixed, 0.04 as DeepSeekMath),
    each sequence's token mean averaged over sequences, no critic."""
    return dataclasses.replace(base, advantage_estimator="grpo", group_size=group_size, scale_rewards=True,
                               kl_in="loss", kl_estimator="k3", init_kl_coef=kl_coef, adaptive_kl=False,
                               loss_aggregation="sequence", norm_adv=False)


def dr_grpo_config(base: PPOConfig, group_size: int = 4, kl_coef: float = 0.04) -> PPOConfig:
    """Dr. GRPO: GRPO with the group mean subtracted but no std division, and token losses
    summed over a constant (``max_new_tokens``) instead of each sequence's length."""
    return dataclasses.replace(grpo_config(base, group_size, kl_coef), scale_rewards=False,
                               loss_aggregation="constant")


def reinforce_config(base: PPOConfig, group_size: int = 4) -> PPOConfig:
    """REINFORCE with the group mean as baseline and no KL term at all: one on-policy gradient
    step per batch (one epoch, one minibatch), token-mean loss (nanochat's RL stage)."""
    return dataclasses.replace(base, advantage_estimator="grpo", group_size=group_size, scale_rewards=False,
                               kl_in="reward", init_kl_coef=0.0, adaptive_kl=False, update_epochs=1,
                               num_minibatches=1, loss_aggregation="token", norm_adv=False)
