"""The small pure tensor helpers the whole package is built from, each defined once.

Every helper's docstring gives its naive equivalent (a plain loop or formula), and
``tests/test_ops.py`` checks each one against that naive version and on its edge cases
(empty mask, a single token, a row of padding). None mutates its inputs. Every helper
checks its arguments: tensors that must share a shape, and masks that must select
something, raise ``ValueError`` naming the argument and the shapes it got.

* masked statistics -- :func:`masked_sum`, :func:`masked_mean`, :func:`masked_var`,
  :func:`masked_whiten`, :func:`explained_variance`;
* distributions -- :func:`selective_log_softmax` (token log-probabilities),
  :func:`entropy_from_logits`, :func:`logprobs_and_entropy` (both from one log-softmax), :func:`kl_estimate` (Schulman's k1 / k2 / k3);
* batching -- :func:`pad_left`, :func:`pad_right`, :func:`last_token_index`,
  :func:`position_ids_from_mask`.

Conventions: a mask is 1 (or True) at real entries and 0 at padding; ``[B, T]`` is
(sequences, positions). The same helpers serve a flat batch ``[B]`` (CartPole) with
``mask=None``, meaning every entry is real.

References: TRL's ``trl/trainer/utils.py`` (``masked_mean``, ``masked_whiten``,
``selective_log_softmax``, ``entropy_from_logits``) for the contracts;
lm-human-preferences (Ziegler et al. 2019) for whitening with Bessel's correction;
J. Schulman, "Approximating KL divergence" (2020, http://joschu.net/blog/kl-approx.html)
for the estimators.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

# --------------------------------------------------------------------------------------
# Argument checks (one place, one wording)
# --------------------------------------------------------------------------------------


def _check_same_shape(fn: str, **tensors: torch.Tensor | None) -> None:
    """All given tensors (``None`` ones skipped) must have one shape; else name them all."""
    given = {name: t for name, t in tensors.items() if t is not None}
    for name, t in given.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if len({tuple(t.shape) for t in given.values()}) > 1:
        shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in given.items())
        raise ValueError(f"{fn}: the inputs must have the same shape, got {shapes}")


def _check_not_empty(fn: str, mask: torch.Tensor, dim: int | None = None) -> None:
    """The mask must select at least one entry (in every row along ``dim`` when given)."""
    counts = mask.sum() if dim is None else mask.sum(dim)
    if counts.numel() == 0 or not bool((counts > 0).all()):
        where = "anything" if dim is None else f"anything in some slice along dim {dim}"
        raise ValueError(f"{fn}: mask of shape {tuple(mask.shape)} does not select {where}: "
                         "there is nothing to average over (every sequence needs a real token)")


def _full_mask(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return torch.ones_like(values) if mask is None else mask.to(values.dtype)


# --------------------------------------------------------------------------------------
# Masked statistics
# --------------------------------------------------------------------------------------


def masked_sum(values: torch.Tensor, mask: torch.Tensor | None = None, dim: int | None = None) -> torch.Tensor:
    """Sum of ``values`` where ``mask`` is 1.

    Naive equivalent: ``sum(v for v, m in zip(values, mask) if m)``.
    """
    _check_same_shape("masked_sum", values=values, mask=mask)
    masked = values if mask is None else values * mask.to(values.dtype)
    return masked.sum() if dim is None else masked.sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None = None, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1 (over everything, or along ``dim``).

    Naive equivalent: ``sum(v for v, m in zip(values, mask) if m) / sum(mask)``.
    An empty mask (or, with ``dim``, an empty row) is an error, not a silent 0.
    """
    _check_same_shape("masked_mean", values=values, mask=mask)
    if mask is None:
        if values.numel() == 0:
            raise ValueError("masked_mean: values is empty: there is nothing to average over")
        return values.mean() if dim is None else values.mean(dim)
    m = mask.to(values.dtype)
    _check_not_empty("masked_mean", m, dim)
    if dim is None:
        return (values * m).sum() / m.sum()
    return (values * m).sum(dim) / m.sum(dim)


def masked_var(values: torch.Tensor, mask: torch.Tensor | None = None, unbiased: bool = True,
               all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, variance)`` of the masked entries, as 0-d tensors.

    Naive equivalent: ``x = [v for v, m in zip(values, mask) if m]``; ``mu = sum(x) / n``;
    ``var = sum((v - mu) ** 2 for v in x) / (n - 1)`` (``/ n`` with ``unbiased=False``).

    ``all_reduce_sum`` sums a tensor over processes, so the statistics are those of the
    global batch when the batch is sharded (``None``: one process).
    """
    _check_same_shape("masked_var", values=values, mask=mask)
    m = _full_mask(values, mask)
    _check_not_empty("masked_var", m)
    reduce = all_reduce_sum or (lambda t: t)
    totals = reduce(torch.stack([(values * m).sum(), m.sum()]))
    n = totals[1]
    mean = totals[0] / n
    squares = reduce(((values - mean) ** 2 * m).sum())
    return mean, squares / ((n - 1).clamp(min=1) if unbiased else n)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor | None = None, shift_mean: bool = True,
                  unbiased: bool = True, eps: float = 1e-8,
                  all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """The masked entries standardised to mean 0 and variance 1; padding comes back as 0.

    Naive equivalent, with ``mu, var`` from :func:`masked_var`: each real entry becomes
    ``(v - mu) / sqrt(var + eps)`` (``+ mu`` added back when ``shift_mean=False``, which
    only rescales -- lm-human-preferences does that to rewards).
    """
    mean, var = masked_var(values, mask, unbiased, all_reduce_sum)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * _full_mask(values, mask)


def explained_variance(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """``1 - Var[target - predicted] / Var[target]`` over the masked entries (population
    variances): 1 = a perfect value function, 0 = no better than the mean, < 0 = worse.
    NaN when the targets do not vary.

    Naive equivalent: ``1 - np.var(y - p) / np.var(y)`` over the real entries.
    """
    _check_same_shape("explained_variance", predicted=predicted, target=target, mask=mask)
    target, predicted = target.float(), predicted.float()
    _, var_target = masked_var(target, mask, unbiased=False)
    if float(var_target) == 0.0:
        return float("nan")
    _, var_error = masked_var(target - predicted, mask, unbiased=False)
    return float(1.0 - var_error / var_target)


# --------------------------------------------------------------------------------------
# Distributions
# --------------------------------------------------------------------------------------


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)[..., index]``: the log-probability of each chosen token, in
    float32, without materialising the whole log-softmax. ``logits [..., V]``, ``index [...]``.

    Naive equivalent: ``torch.log_softmax(logits, -1).gather(-1, index[..., None])[..., 0]``.
    """
    if logits.shape[:-1] != index.shape:
        raise ValueError(f"selective_log_softmax: index must have the shape of logits without its last "
                         f"axis, got logits {tuple(logits.shape)}, index {tuple(index.shape)}")
    logits = logits.float()
    return logits.gather(-1, index.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` over the last axis, in nats: ``[..., V] -> [...]``.

    Naive equivalent: ``-sum(p * log p)`` over tokens with ``p > 0``. A token with
    ``p = 0`` (a ``-inf`` logit, e.g. removed by top-k) adds 0, not ``0 * -inf = nan``.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp.masked_fill(torch.isneginf(logp), 0.0)).sum(-1)


def logprobs_and_entropy(logits: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log_softmax(logits)[..., index], entropy)`` from one log-softmax, in float32: what a
    policy-gradient update needs of each chosen token. ``logits [..., V]``, ``index [...]``.

    Naive equivalent: ``(selective_log_softmax(logits, index), entropy_from_logits(logits))``.
    """
    if logits.shape[:-1] != index.shape:
        raise ValueError(f"logprobs_and_entropy: index must have the shape of logits without its last "
                         f"axis, got logits {tuple(logits.shape)}, index {tuple(index.shape)}")
    logp = torch.log_softmax(logits.float(), dim=-1)
    entropy = -(logp.exp() * logp.masked_fill(torch.isneginf(logp), 0.0)).sum(-1)
    return logp.gather(-1, index.unsqueeze(-1)).squeeze(-1), entropy


KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-sample estimate of ``KL(pi || pi_ref)`` from samples drawn from ``pi``.

    With ``x = ref_logprobs - logprobs = log r``, ``r = pi_ref(a) / pi(a)`` (Schulman 2020):

    * ``k1 = -x``                 unbiased, high variance, negative for some samples;
    * ``k2 = x**2 / 2``           biased, low variance, >= 0;
    * ``k3 = (r - 1) - log r``    unbiased, low variance, >= 0.

    Naive equivalent for one sample: ``math.expm1(x) - x`` for k3, in float64 (not
    ``math.exp(x) - 1 - x``: even in float64, ``exp(x) - 1`` cancels, ~1e-4 relative error at
    ``|x| = 1e-6``). In float32, ``expm1(x) - x`` cancels: for ``|x| = 1e-6`` it is off by ~10%
    (~40% at 1e-7), since each term is ~x while their difference is ~x**2 / 2; ``(exp(x) - 1)
    - x`` is off by orders of magnitude. So for ``|x| < 1e-2`` we use its Taylor series
    ``x**2 (1/2 + x/6 + x**2/24 + x**3/120)``, whose next term is below float32's rounding
    there. Summed over a sequence's tokens, k1 is the sequence's log-ratio, whose expectation
    is the KL of the sequence distributions. PPO's ``approx_kl`` is
    ``kl_estimate(old_logprobs, new_logprobs, "k3")``: KL(old || new) from the old samples.
    """
    _check_same_shape("kl_estimate", logprobs=logprobs, ref_logprobs=ref_logprobs)
    x = ref_logprobs - logprobs
    if estimator == "k1":
        return -x
    if estimator == "k2":
        return 0.5 * x * x
    if estimator == "k3":
        series = x * x * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0 + x / 120.0)))
        return torch.where(x.abs() < 1e-2, series, torch.expm1(x) - x).clamp_min(0.0)
    raise ValueError(f"kl_estimate: estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


# --------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------


def _check_rows(fn: str, rows: Sequence[Sequence[int]]) -> None:
    if isinstance(rows, (str, bytes, torch.Tensor)) or not isinstance(rows, Sequence):
        raise TypeError(f"{fn}: rows must be a list of lists of token ids, got {type(rows).__name__}")
    if len(rows) == 0:
        raise ValueError(f"{fn}: rows is empty: pass at least one list of token ids")


def _pad(fn: str, rows: Sequence[Sequence[int]], pad_id: int, device, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    _check_rows(fn, rows)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            cols = slice(width - len(r), width) if left else slice(0, len(r))
            ids[i, cols] = torch.as_tensor(list(r), dtype=torch.long)
            mask[i, cols] = 1
    return ids.to(device), mask.to(device)


def pad_left(rows: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad lists of ids: ``(ids [B, L], mask [B, L])``, real tokens at the right.

    Naive equivalent: ``[[pad_id] * (L - len(r)) + r for r in rows]`` with ``L`` the
    longest row; the mask is 1 at the real tokens. Prompts are left-padded, so that every
    row's last token sits in the last column and generation appends to the same column.
    """
    return _pad("pad_left", rows, pad_id, device, left=True)


def pad_right(rows: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad lists of ids: ``(ids [B, L], mask [B, L])``, real tokens at the left.

    Naive equivalent: ``[r + [pad_id] * (L - len(r)) for r in rows]``.
    """
    return _pad("pad_right", rows, pad_id, device, left=False)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position whose mask is 1, per row: ``[B, T] -> [B]``.

    Naive equivalent: ``max(t for t in range(T) if mask[b][t])`` for each row ``b``.
    Works for left, right and no padding; a row with no real token is an error.
    """
    if not isinstance(mask, torch.Tensor) or mask.ndim != 2:
        raise ValueError(f"last_token_index: mask must be a [B, T] tensor, got "
                         f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}")
    _check_not_empty("last_token_index", mask, dim=-1)
    return mask.shape[-1] - 1 - (mask.flip(-1) != 0).long().argmax(-1)  # argmax: the first max (bool masks too)


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Positions 0, 1, 2, ... counted over real tokens only: ``[B, T]``. Padding before the
    first real token gets 0, padding after the last one repeats its position (padding is
    masked out, so its position does not matter).

    Naive equivalent: ``out[b][t] = max(0, sum(mask[b][:t + 1]) - 1)``, the number of real
    tokens before a real token. With left padding the first real token must still sit at
    position 0, or the model reads a different text than it was trained on.
    """
    if not isinstance(mask, torch.Tensor) or mask.ndim != 2:
        raise ValueError(f"position_ids_from_mask: mask must be a [B, T] tensor, got "
                         f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}")
    return (mask.long().cumsum(-1) - 1).clamp(min=0)
