"""Evaluation: a policy against the world's gold preference, and a reward model's calibration.

What the course's headline figures are computed with (notebooks 03, 05, 06, and 07's
reward-hacking measurements). The gold preference is the world's "human"
(:meth:`rlhf_utils.world.World.analyse`); the reward model never saw it, so a policy that
games the reward model shows up here as proxy up, gold down.

* :func:`evaluate_policy` -- completions sampled on held-out prompts, scored by the gold
  preference (mean, std, grammatical share, each defect's share), by the reward model
  (the proxy) if given, and their KL to a reference policy: ``log pi(y|x) - log pi_ref(y|x)``
  per sequence, whose mean over samples of ``pi`` estimates KL(pi || pi_ref) in nats;
* :func:`win_rate` -- how often one policy's completion beats another's on the same prompt
  by the gold score, ties half, with a normal-approximation confidence interval;
* :func:`split_nll` -- mean negative log-likelihood of prompt and completion tokens apart;
* :func:`gold_metrics` / :func:`gold_reward_fn` -- the world as PPO's extra log and as a reward;
* reward-model checks: :func:`calibration_bins`, :func:`expected_calibration_error`
  (Guo et al. 2017), :func:`pairwise_agreement` with the gold order, and
  :func:`residuals_by_defect` -- what the model over-rates, the seed of reward hacking;
* over-optimisation curves: :func:`fit_gao_rl` and :func:`fit_gao_bon`, the functional forms
  Gao et al. (2022) fit to the gold reward against ``d = sqrt(KL)`` (notebooks 07 and 08).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch

DEFECTS = ("repetition", "broken", "unparseable", "off_topic")
"""the world's defects (:data:`rlhf_utils.world.DEFECT_PENALTY`), in the course's order"""


# --------------------------------------------------------------------------------------
# A policy against the gold preference
# --------------------------------------------------------------------------------------


@dataclass
class PolicyEvaluation:
    """Completions of one policy on held-out prompts, and what each is worth. Arrays are ``[N]``."""

    prompts: list[str]
    texts: list[str]
    gold: np.ndarray
    """the world's gold reward of each completion"""
    grammatical: np.ndarray
    """True where every sentence is one the clean grammar produces"""
    defects: dict[str, np.ndarray]
    """per defect, the number of such sentences in each completion"""
    ended: np.ndarray
    """True where the completion ended with EOS"""
    proxy: np.ndarray | None = None
    """the reward model's normalised score (when a reward model was given)"""
    kl: np.ndarray | None = None
    """``log pi(y|x) - log pi_ref(y|x)`` of each completion, in nats (when a reference was given)"""

    def summary(self) -> dict[str, float]:
        """The figures: ``gold_mean``, ``gold_std`` (population), ``grammatical``, ``eos``,
        ``defect/<name>`` (share of completions with at least one), and ``proxy_mean``,
        ``kl_mean`` when measured."""
        out = {"n": len(self.texts), "gold_mean": float(self.gold.mean()), "gold_std": float(self.gold.std()),
               "grammatical": float(self.grammatical.mean()), "eos": float(self.ended.mean())}
        out.update({f"defect/{d}": float((n > 0).mean()) for d, n in self.defects.items()})
        if self.proxy is not None:
            out["proxy_mean"] = float(self.proxy.mean())
        if self.kl is not None:
            out["kl_mean"] = float(self.kl.mean())
        return out


def gold_analysis(world, prompts: Sequence[str], completions: Sequence[str]) -> dict[str, np.ndarray]:
    """The world's verdict on each completion: ``gold``, ``grammatical`` and one count per defect."""
    analyses = [world.analyse(c, p) for p, c in zip(prompts, completions)]
    return {"gold": np.array([a.gold_reward for a in analyses], dtype=float),
            "grammatical": np.array([a.grammatical for a in analyses], dtype=bool),
            **{d: np.array([a.defects[d] for a in analyses], dtype=int) for d in DEFECTS}}


@torch.no_grad()
def evaluate_policy(policy, tokenizer, world, prompts: Sequence[str], max_new_tokens: int,
                    temperature: float = 1.0, seed: int = 0, reference=None, reward_model=None
                    ) -> PolicyEvaluation:
    """Sample one completion per prompt from ``policy`` (in one batch, seeded) and score it.

    ``reference`` (a causal LM with the same tokenizer): also the per-sequence log-ratio to it,
    at the same temperature. ``reward_model`` (a :class:`rlhf_utils.reward.RewardModel`): also
    its normalised score. The same ``seed`` gives the same completions, so two policies
    evaluated with one seed are compared on equal terms.
    """
    from rlhf_utils import lm

    if isinstance(prompts, str) or not prompts:
        raise ValueError("evaluate_policy needs a non-empty list of prompts (e.g. world.prompts(512, seed=10_000))")
    device = next(policy.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    s = lm.sample(policy, tokenizer, list(prompts), max_new_tokens, temperature=temperature, generator=g)
    verdict = gold_analysis(world, prompts, s.texts)
    out = PolicyEvaluation(list(prompts), s.texts, verdict["gold"], verdict["grammatical"],
                           {d: verdict[d] for d in DEFECTS}, s.ended.cpu().numpy())
    if reward_model is not None:
        out.proxy = reward_model.score(list(prompts), s.texts).cpu().numpy()
    if reference is not None:
        ref = lm.response_logprobs(reference, s.prompt_ids, s.prompt_mask, s.response_ids, s.response_mask,
                                   temperature=temperature)
        out.kl = ((s.logprobs - ref) * s.response_mask).sum(1).cpu().numpy()
    return out


@dataclass(frozen=True)
class WinRate:
    """How often A beat B, with a confidence interval."""

    rate: float
    """mean over pairs of 1 (A better), 1/2 (tie), 0 (B better)"""
    low: float
    high: float
    n: int
    confidence: float = 0.95


def win_rate(gold_a: Sequence[float], gold_b: Sequence[float], confidence: float = 0.95) -> WinRate:
    """Win rate of A over B on paired completions (same prompts), judged by the gold score.

    ``rate = mean(s_i)`` with ``s_i`` = 1, 1/2 or 0; the interval is ``rate +- z * sd(s) /
    sqrt(n)`` (the central limit theorem on the paired scores; ``z`` the normal quantile),
    clipped to [0, 1]. Naive equivalent: ``sum(1 if a > b else 0.5 if a == b else 0) / n``.
    """
    a, b = np.asarray(gold_a, float), np.asarray(gold_b, float)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise ValueError(f"win_rate needs two equal-length lists of at least 2 scores, got shapes {a.shape}, {b.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    s = np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    half = z * s.std(ddof=1) / math.sqrt(s.size)
    return WinRate(float(s.mean()), max(0.0, float(s.mean() - half)), min(1.0, float(s.mean() + half)),
                   int(s.size), confidence)


@torch.no_grad()
def split_nll(model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 256) -> dict[str, float]:
    """Mean negative log-likelihood per token of the prompt tokens and of the completion tokens
    (its EOS included) of ``(prompt, completion)`` pairs: ``{"prompt": ..., "completion": ...}``."""
    from rlhf_utils import lm

    device = next(model.parameters()).device
    total = {"prompt": [0.0, 0], "completion": [0.0, 0]}
    for i in range(0, len(pairs), batch_size):
        chunk = list(pairs[i:i + batch_size])
        ids, attn, every = lm.lm_batch(tokenizer, chunk, mask_prompt=False, device=device)
        completion = lm.lm_batch(tokenizer, chunk, mask_prompt=True, device=device)[2]
        logp = lm.token_logprobs(model, ids, attn)  # [B, T-1]
        for part, m in (("prompt", every - completion), ("completion", completion)):
            total[part][0] -= float((logp * m).sum())
            total[part][1] += int(m.sum())
    return {part: s / n if n else float("nan") for part, (s, n) in total.items()}


def gold_metrics(world) -> Callable[[list[str], list[str]], dict]:
    """``extra_metrics`` for :class:`rlhf_utils.ppo.PPOTrainer`: the gold reward of each step's
    completions and the share the grammar accepts (``gold/mean``, ``gold/grammatical``)."""

    def metrics(prompts: list[str], completions: list[str]) -> dict:
        verdict = gold_analysis(world, prompts, completions)
        return {"gold/mean": float(verdict["gold"].mean()), "gold/grammatical": float(verdict["grammatical"].mean())}

    return metrics


def gold_reward_fn(world) -> Callable[[list[str], list[str]], torch.Tensor]:
    """The world's gold reward as a ``reward_fn`` (training on the truth: an upper bound)."""

    def reward_fn(prompts: list[str], completions: list[str]) -> torch.Tensor:
        return torch.tensor(world.gold_rewards(list(completions), list(prompts)), dtype=torch.float32)

    return reward_fn


# --------------------------------------------------------------------------------------
# A reward model against the labels and the gold preference
# --------------------------------------------------------------------------------------


def calibration_bins(p_pred: np.ndarray, outcome: np.ndarray, n_bins: int = 10
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reliability table: for ``n_bins`` equal-width bins of predicted probability,
    (mean predicted probability, observed frequency of the outcome, count). Empty bins give NaN.

    For pairs, pass both orientations -- (p, 1) and (1 - p, 0) -- so the bins cover [0, 1].
    """
    p_pred = np.asarray(p_pred, dtype=float)
    outcome = np.asarray(outcome, dtype=float)
    idx = np.clip((p_pred * n_bins).astype(int), 0, n_bins - 1)
    mean_p = np.full(n_bins, np.nan)
    freq = np.full(n_bins, np.nan)
    count = np.zeros(n_bins, dtype=int)
    for b in range(n_bins):
        sel = idx == b
        count[b] = sel.sum()
        if count[b]:
            mean_p[b] = p_pred[sel].mean()
            freq[b] = outcome[sel].mean()
    return mean_p, freq, count


def expected_calibration_error(p_pred: np.ndarray, outcome: np.ndarray, n_bins: int = 10) -> float:
    """ECE: count-weighted mean of |mean predicted - observed| over the bins."""
    mean_p, freq, count = calibration_bins(p_pred, outcome, n_bins)
    ok = count > 0
    return float((count[ok] * np.abs(mean_p[ok] - freq[ok])).sum() / count.sum())


def pairwise_agreement(d_model: np.ndarray, d_gold: np.ndarray) -> float:
    """Share of pairs on which the model's reward difference has the gold difference's sign.

    A pair where either difference is exactly 0 counts 1/2: when the gold preference scores
    the two equal, neither order is right -- the same half credit the noise ceiling
    (:func:`rlhf_utils.feedback.best_accuracy`, sigma(0) = 1/2) gives it, so the two are
    averaged over the same pairs and can be compared.
    """
    d_model, d_gold = np.asarray(d_model, float), np.asarray(d_gold, float)
    if d_model.size == 0:
        return float("nan")
    s = np.sign(d_model) * np.sign(d_gold)
    return float(np.mean(np.where(s == 0, 0.5, s > 0)))


def reward_residuals(reward: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """What the reward model gives beyond the gold score: ``reward - (a * gold + b)``,
    with a, b the least-squares line. Positive = the model overrates the text."""
    reward, gold = np.asarray(reward, float), np.asarray(gold, float)
    A = np.stack([gold, np.ones_like(gold)], axis=1)  # [N, 2]
    coef, *_ = np.linalg.lstsq(A, reward, rcond=None)
    return reward - A @ coef


def defect_group(counts: dict[str, int]) -> str:
    """``clean``, the one defect a completion has, or ``several``."""
    found = [d for d, n in counts.items() if n > 0]
    return found[0] if len(found) == 1 else ("several" if found else "clean")


def residuals_by_defect(reward: Sequence[float], gold: Sequence[float], defects: dict[str, np.ndarray],
                        min_count: int = 5) -> dict[str, tuple[float, float, int]]:
    """Mean residual of the reward model beyond the gold score, by defect group.

    ``defects`` maps each defect to a count per completion (as :func:`gold_analysis`). Returns
    ``{group: (mean residual, its standard error, count)}`` for groups with at least
    ``min_count`` completions. A positive mean: the reward model over-rates that defect.
    """
    resid = reward_residuals(reward, gold)
    names = list(defects)
    groups = np.array([defect_group({d: int(defects[d][i]) for d in names}) for i in range(len(resid))])
    out = {}
    for g in ("clean", *names, "several"):
        sel = groups == g
        if sel.sum() >= min_count:
            out[g] = (float(resid[sel].mean()), float(resid[sel].std() / math.sqrt(sel.sum())), int(sel.sum()))
    return out


# --------------------------------------------------------------------------------------
# Over-optimisation curves: the functional forms of Gao et al. (2022)
# --------------------------------------------------------------------------------------


class GaoFit(NamedTuple):
    """Coefficients of a Gao et al. (2022) curve; unpacks as ``alpha, beta = fit``."""

    alpha: float
    beta: float


def gao_rl(d, alpha: float, beta: float) -> np.ndarray:
    """``R(d) = d (alpha - beta log d)``, the gold reward of an RL policy at ``d = sqrt(KL)``
    (Gao et al. 2022, eq. 2), 0 at ``d = 0``. It peaks at ``d* = exp(alpha / beta - 1)``."""
    d = np.asarray(d, dtype=float)
    safe = np.where(d > 0, d, 1.0)
    return np.where(d > 0, d * (alpha - beta * np.log(safe)), 0.0)


def gao_bon(d, alpha: float, beta: float) -> np.ndarray:
    """``R(d) = d (alpha - beta d)``, the gold reward of best-of-n at ``d = sqrt(KL)``
    (Gao et al. 2022, eq. 1). It peaks at ``d* = alpha / (2 beta)``."""
    d = np.asarray(d, dtype=float)
    return d * (alpha - beta * d)


def _gao_fit(d, gold, second: Callable[[np.ndarray], np.ndarray], name: str) -> GaoFit:
    d, gold = np.asarray(d, dtype=float), np.asarray(gold, dtype=float)
    if d.ndim != 1 or d.shape != gold.shape:
        raise ValueError(f"{name}: d and gold must be 1-d and of equal length, got shapes {d.shape} and {gold.shape}")
    if not (np.isfinite(d).all() and np.isfinite(gold).all()):
        raise ValueError(f"{name}: d and gold must be finite (drop the NaN or inf points first)")
    if (d < 0).any():
        raise ValueError(f"{name}: d = sqrt(KL) cannot be negative (got {d.min():g}); clip a noisy KL estimate "
                         "at 0 before taking its square root")
    if len(np.unique(d[d > 0])) < 2:
        raise ValueError(f"{name}: needs points at 2 or more distinct d > 0 to fit two coefficients, "
                         f"got {len(np.unique(d[d > 0]))}")
    A = np.stack([d, -second(d)], axis=1)  # [N, 2]: R = alpha * d - beta * second(d)
    (alpha, beta), *_ = np.linalg.lstsq(A, gold, rcond=None)
    return GaoFit(float(alpha), float(beta))


def fit_gao_rl(d, gold) -> GaoFit:
    """Least-squares ``alpha, beta`` of ``gold = d (alpha - beta log d)`` (:func:`gao_rl`).

    ``d`` is ``sqrt(KL(pi || pi_ref))`` of each measured policy (nats), ``gold`` its gold reward
    *minus the starting policy's* (the form is 0 at d = 0). The model is linear in alpha and
    beta: ``gold = alpha * d - beta * d log d``. Gao et al. write it as ``R / d = alpha - beta
    log d``; we fit ``R`` itself, the same model, because a measured gold reward has a noise that
    does not shrink with ``d`` -- dividing by a small ``d`` would blow it up. Points at d = 0 are
    allowed (they add nothing); at least two distinct d > 0 are needed.
    """
    return _gao_fit(d, gold, lambda x: x * np.log(np.where(x > 0, x, 1.0)), "fit_gao_rl")


def fit_gao_bon(d, gold) -> GaoFit:
    """Least-squares ``alpha, beta`` of ``gold = d (alpha - beta d)`` (:func:`gao_bon`, best-of-n;
    linear in alpha, beta: ``gold = alpha * d - beta * d**2``). ``d``, ``gold`` as :func:`fit_gao_rl`."""
    return _gao_fit(d, gold, np.square, "fit_gao_bon")
