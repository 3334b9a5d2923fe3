"""Reward shaping for RLHF: the missing-EOS penalty, the per-token KL penalty, and beta.

What turns a reward model's one score per completion into the per-token rewards PPO
learns from (Ziegler et al. 2019, eq. 2; Stiennon et al. 2020, eq. 1)::

    R(x, y) = r(x, y) - beta * log(pi(y | x) / pi_ref(y | x))

spread over the response: ``-beta * kl_t`` on every token, the score on the last one. The
KL term keeps the policy near the SFT policy it started from -- the guard against reward
hacking that notebook 07 measures. ``beta`` is fixed, or moved by the adaptive controller
of Ziegler et al. (2019, section 2.2) towards a target KL.
"""

from __future__ import annotations

import torch

from rlhf_utils.ops import kl_estimate, last_token_index

# --------------------------------------------------------------------------------------
# Rewards: the missing-EOS penalty and the KL-shaped per-token reward
# --------------------------------------------------------------------------------------


def apply_missing_eos_penalty(scores: torch.Tensor, ended: torch.Tensor, penalty: float) -> torch.Tensor:
    """``scores - penalty`` for completions that never produced EOS, ``scores`` for the rest.

    Naive equivalent: ``[s if e else s - penalty for s, e in zip(scores, ended)]``.
    (TRL's ``missing_eos_penalty``; Huang et al. 2024 detail "EOS trick".)
    """
    return scores - penalty * (~ended.bool()).to(scores.dtype)


def kl_penalty_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                       mask: torch.Tensor, kl_coef: float, estimator: str = "k1"
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards ``[B, R]``: ``-kl_coef * kl_t`` on every response token, plus the
    sequence's score on its last real token (the EOS, or the last token if none).

    Returns ``(rewards, non_score_rewards)``, both 0 at padding. ``estimator`` picks the
    per-token KL (:func:`rlhf_utils.ops.kl_estimate`; ``"k1"``, ``log pi - log pi_ref``, as
    Ziegler et al. 2019). Naive equivalent::

        for b: for t in real tokens of b:
            rewards[b][t] = -kl_coef * (logprobs[b][t] - ref_logprobs[b][t])
        rewards[b][last real t] += scores[b]
    """
    mask = mask.to(logprobs.dtype)
    non_score = -kl_coef * kl_estimate(logprobs, ref_logprobs, estimator) * mask  # [B, R]
    onehot = torch.nn.functional.one_hot(last_token_index(mask), mask.shape[1]).to(logprobs.dtype)  # [B, R]
    return non_score + scores[:, None].to(logprobs.dtype) * onehot, non_score


# --------------------------------------------------------------------------------------
# KL controllers
# --------------------------------------------------------------------------------------


class FixedKLController:
    """A constant KL coefficient beta."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Does nothing: beta stays fixed."""

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """Ziegler et al. (2019) section 2.2: move beta so the KL tracks a target.

    ``e = clip(KL / target - 1, -0.2, 0.2)``; ``beta <- beta * (1 + e * n_steps / horizon)``
    with ``n_steps`` the number of sequences in the batch just used (lm-human-preferences'
    ``AdaptiveKLController``; ``horizon`` in sequences, 10 000 there).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        super().__init__(init_kl_coef)
        if target <= 0 or horizon <= 0:
            raise ValueError(f"AdaptiveKLController needs target > 0 and horizon > 0, got {target}, {horizon}")
        self.target, self.horizon = float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
