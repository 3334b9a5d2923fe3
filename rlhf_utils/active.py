"""Active selection: which pair to ask the reader about next, chosen by the reward model's doubt.

A label teaches the reward model most where it cannot yet tell the two completions apart
(uncertainty sampling, Lewis & Gale 1994; for preference pairs, Christiano et al. 2017 chose
the pairs an ensemble of reward predictors disagreed on most). Under Bradley--Terry the model
predicts ``p = P(a > b) = sigma(r(a) - r(b))`` on its raw (trained) scale, and this module
measures its doubt two ways:

* one model -- **closeness to a coin flip**, ``u = 1/2 - |p - 1/2|`` (1/2 at p = 1/2, 0 when sure);
* an ensemble -- **disagreement**, the std of ``p`` over the members: high where the members,
  trained on resamples of the same labels, part ways (what the labels did not pin down).

The first conflates two kinds of doubt: a pair the model has not learned yet, and a pair that is
a coin flip for anyone (two completions of about the same gold quality -- the annotator's label
on it is mostly noise). The second measures only the first kind, at the cost of K reward models.

**The trade-off with diversity.** Taking the ``n`` most doubtful pairs of a round piles the labels
at the model's current decision boundary: near-identical completions, near-ties, several pairs of
one kind -- not what the policy writes as a whole, which is where the reward model must be right.
:func:`select_pairs` therefore draws a share ``explore`` of each round's pairs at random (the rest
by doubt), and the size of the candidate pool sets how extreme the doubtful picks are (a larger
pool: more doubtful, less typical). ``strategy="random"`` is the baseline: every pair of the pool
equally likely.

:func:`labels_to_reach` reads a label-efficiency curve: the labels at which it first reaches a
target (linearly interpolated), so "active selection saves N labels" is a number.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rlhf_utils.checks import check_choice, check_int, check_number, check_tuples

STRATEGIES = ("uncertain", "random")


def _members(scorer) -> list:
    """The reward models of ``scorer``: one :class:`rlhf_utils.reward.RewardModel`, an
    :class:`rlhf_utils.reward_ensemble.EnsembleReward`, or a list of reward models."""
    if hasattr(scorer, "members"):
        return list(scorer.members)
    if isinstance(scorer, (list, tuple)):
        if not scorer:
            raise ValueError("an empty list of reward models has no opinion: pass at least one")
        return list(scorer)
    if not hasattr(scorer, "raw_score"):
        raise TypeError(f"scorer must be a RewardModel, an EnsembleReward or a list of RewardModels, "
                        f"got {type(scorer).__name__}")
    return [scorer]


def pair_probabilities(scorer, pairs: Sequence[Sequence[str]]) -> np.ndarray:
    """``P(a > b) = sigma(r(a) - r(b))`` of each ``(prompt, a, b)`` pair under each member, on
    the raw scale the Bradley--Terry loss trained (normalisation is a shift and a scale
    fitted afterwards; it does not change what was learned). Shape ``[K, N]``, no grad."""
    import torch

    pairs = check_tuples("pairs", pairs, 3, "(prompt, completion_a, completion_b)")
    prompts = [p for p, _, _ in pairs]
    out = []
    for model in _members(scorer):
        r_a = model.raw_score(prompts, [a for _, a, _ in pairs]).double().cpu()  # [N]
        r_b = model.raw_score(prompts, [b for _, _, b in pairs]).double().cpu()  # [N]
        out.append(torch.sigmoid(r_a - r_b).numpy())
    return np.stack(out) if out else np.zeros((0, 0))


def pair_uncertainty(p: np.ndarray) -> np.ndarray:
    """The doubt of each pair from its probabilities ``p`` ``[K, N]``: one member ->
    ``1/2 - |p - 1/2|``; several -> the population std of ``p`` over the members. ``[N]``."""
    p = np.asarray(p, dtype=float)
    if p.ndim != 2:
        raise ValueError(f"p must be [members, pairs], got shape {p.shape}")
    if p.shape[0] == 1:
        return 0.5 - np.abs(p[0] - 0.5)
    return p.std(axis=0)


def select_pairs(pairs: Sequence[Sequence[str]], scorer, n: int, strategy: str = "uncertain",
                 explore: float = 0.0, seed: int = 0) -> list[int]:
    """Indices of the ``n`` pairs of ``pairs`` to ask about next, in the order to show them.

    ``strategy="random"``: ``n`` distinct pairs, uniformly (``scorer`` is not asked; may be None).
    ``strategy="uncertain"``: ``round(explore * n)`` of them at random, the rest the most doubtful
    by :func:`pair_uncertainty` of :func:`pair_probabilities` -- equal doubts (a fresh model says
    1/2 to everything) are broken at random, not by position. Seeded: the same call gives the
    same pairs. Fewer than ``n`` pairs available: all of them.
    """
    pairs = check_tuples("pairs", pairs, 3, "(prompt, completion_a, completion_b)")
    check_int("n", n, 0, "the number of pairs to choose")
    check_choice("strategy", strategy, STRATEGIES)
    check_number("explore", explore, 0, 1, fix="the share of random picks, e.g. 0.25")
    rng = np.random.default_rng(seed)
    n = min(n, len(pairs))
    order = rng.permutation(len(pairs))  # the random order: the baseline, and the tie-break
    if strategy == "random" or n == 0:
        return [int(i) for i in order[:n]]
    doubt = pair_uncertainty(pair_probabilities(scorer, pairs))  # [N]
    n_random = int(round(explore * n))
    by_doubt = order[np.argsort(-doubt[order], kind="stable")]  # most doubtful first, ties in random order
    chosen = [int(i) for i in by_doubt[:n - n_random]]
    taken = set(chosen)
    return chosen + [int(i) for i in order if int(i) not in taken][:n_random]


def labels_to_reach(n_labels: Sequence[float], values: Sequence[float], target: float) -> float:
    """The labels at which the curve ``values(n_labels)`` first reaches ``target``, linearly
    interpolated between the two points around the crossing (NaN if it never does).
    ``n_labels`` must increase."""
    n = np.asarray(n_labels, dtype=float)
    v = np.asarray(values, dtype=float)
    if n.shape != v.shape or n.ndim != 1:
        raise ValueError(f"n_labels and values must be two lists of one length, got shapes {n.shape}, {v.shape}")
    if np.any(np.diff(n) <= 0):
        raise ValueError("n_labels must increase (one point per round)")
    hits = np.flatnonzero(v >= target)
    if hits.size == 0:
        return float("nan")
    i = int(hits[0])
    if i == 0:
        return float(n[0])
    frac = (target - v[i - 1]) / (v[i] - v[i - 1])
    return float(n[i - 1] + frac * (n[i] - n[i - 1]))
