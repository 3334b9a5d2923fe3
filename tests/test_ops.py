"""Tests of rlhf_utils.ops, each helper against an independent naive reference.

References: plain Python loops over the real entries, numpy, hand-worked examples, exact
arithmetic (``decimal``) for the KL estimators, and exact expectations over a small
categorical distribution. Edge cases: a single token, a row with one real token,
``mask=None``, left / right / no padding. And the bad-input contract: mismatched shapes
and empty masks raise ``ValueError`` naming the arguments and their shapes.
"""

from __future__ import annotations

import math
from decimal import Decimal, getcontext

import numpy as np
import pytest
import torch

from rlhf_utils import ops
from rlhf_utils.ops import (KL_ESTIMATORS, entropy_from_logits, explained_variance, kl_estimate,
                            last_token_index, masked_mean, masked_sum, masked_var, masked_whiten, pad_left,
                            pad_right, position_ids_from_mask, selective_log_softmax)

# masks of one batch [4, 6] with each layout: lengths 6, 3, 1, 4 (one row with a single real token)
LENGTHS = [6, 3, 1, 4]
WIDTH = 6


def layout_mask(padding: str, lengths=LENGTHS, width=WIDTH) -> torch.Tensor:
    """A [B, width] 0/1 mask, real tokens at the left ("right" padding), at the right ("left"
    padding), or everywhere ("none")."""
    rows = []
    for n in lengths:
        if padding == "none":
            rows.append([1] * width)
        elif padding == "right":
            rows.append([1] * n + [0] * (width - n))
        else:
            rows.append([0] * (width - n) + [1] * n)
    return torch.tensor(rows)


LAYOUTS = ["left", "right", "none"]


def real_entries(x: torch.Tensor, mask: torch.Tensor | None) -> list[float]:
    """The entries of ``x`` where ``mask`` is set, by a plain loop (all of them without a mask)."""
    flat_x = x.reshape(-1).tolist()
    flat_m = [1] * len(flat_x) if mask is None else mask.reshape(-1).tolist()
    return [v for v, m in zip(flat_x, flat_m) if m]


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --------------------------------------------------------------------------------------
# Masked statistics
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding", LAYOUTS)
@pytest.mark.parametrize("mask_dtype", [torch.long, torch.bool, torch.float32])
def test_masked_sum_and_mean_match_naive_loops(padding, mask_dtype):
    x = randn(4, WIDTH)
    m = layout_mask(padding).to(mask_dtype)
    real = real_entries(x, m)
    assert float(masked_sum(x, m)) == pytest.approx(sum(real), rel=1e-6)
    assert float(masked_mean(x, m)) == pytest.approx(sum(real) / len(real), rel=1e-6)
    rows_sum, rows_mean = masked_sum(x, m, dim=1), masked_mean(x, m, dim=1)
    assert rows_mean.shape == (4,)
    for b in range(4):
        row = real_entries(x[b], m[b])
        assert float(rows_sum[b]) == pytest.approx(sum(row), rel=1e-6, abs=1e-7)
        assert float(rows_mean[b]) == pytest.approx(sum(row) / len(row), rel=1e-6)
    if padding != "none":  # the padding's content does not matter
        garbage = torch.where(m.bool(), x, torch.full_like(x, 1e6))
        assert torch.allclose(masked_mean(garbage, m, dim=1), rows_mean)


def test_masked_mean_without_mask_and_on_a_single_token():
    x = randn(3, 5)
    assert torch.equal(masked_mean(x), x.mean()) and torch.equal(masked_mean(x, dim=0), x.mean(0))
    assert torch.equal(masked_sum(x), x.sum()) and torch.equal(masked_sum(x, dim=1), x.sum(1))
    one = torch.tensor([[2.5]])
    assert float(masked_mean(one, torch.ones(1, 1))) == 2.5 and float(masked_mean(one)) == 2.5
    # a column mean (dim=0): every column here has a real entry
    m = torch.tensor([[1, 0], [1, 1]])
    y = torch.tensor([[1.0, 7.0], [3.0, 4.0]])
    assert masked_mean(y, m, dim=0).tolist() == [2.0, 4.0]


def test_masked_sum_of_an_empty_mask_is_zero():
    """A sum over nothing is 0 (no error): only averages need something to average."""
    assert float(masked_sum(randn(2, 3), torch.zeros(2, 3))) == 0.0


@pytest.mark.parametrize("padding", LAYOUTS)
@pytest.mark.parametrize("unbiased", [True, False])
def test_masked_var_matches_numpy(padding, unbiased):
    x = randn(4, WIDTH, seed=1) * 3 + 2
    m = layout_mask(padding)
    real = np.array(real_entries(x, m))
    mean, var = masked_var(x, m, unbiased=unbiased)
    assert mean.ndim == 0 and var.ndim == 0
    assert float(mean) == pytest.approx(real.mean(), rel=1e-5)
    assert float(var) == pytest.approx(real.var(ddof=1 if unbiased else 0), rel=1e-5)


def test_masked_var_without_mask_and_on_one_entry():
    x = randn(5, seed=2)
    mean, var = masked_var(x)
    assert float(mean) == pytest.approx(float(np.mean(x.numpy())), rel=1e-6)
    assert float(var) == pytest.approx(float(np.var(x.numpy(), ddof=1)), rel=1e-5)
    # one real entry: its mean, and a variance of 0 rather than 0 / 0
    mean, var = masked_var(torch.tensor([[4.0, 9.0]]), torch.tensor([[1, 0]]))
    assert (float(mean), float(var)) == (4.0, 0.0)


def test_masked_var_all_reduce_gives_the_global_batch_statistics():
    """A fake two-process all-reduce whose other process holds the same shard: the statistics
    are those of the shard taken twice (numpy on the concatenation)."""
    x = randn(3, 4, seed=3)
    m = layout_mask("right", [4, 2, 1], 4)
    calls = []

    def all_reduce_sum(t):
        calls.append(t.shape)
        return 2 * t

    mean, var = masked_var(x, m, all_reduce_sum=all_reduce_sum)
    both = np.array(real_entries(x, m) * 2)
    assert calls  # it was used
    assert float(mean) == pytest.approx(both.mean(), rel=1e-5)
    assert float(var) == pytest.approx(both.var(ddof=1), rel=1e-5)
    whitened = masked_whiten(x, m, all_reduce_sum=all_reduce_sum)
    expected = [(v - both.mean()) / math.sqrt(both.var(ddof=1) + 1e-8) for v in real_entries(x, m)]
    assert real_entries(whitened, m) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("padding", LAYOUTS)
def test_masked_whiten_matches_naive_and_leaves_its_inputs_alone(padding):
    x = randn(4, WIDTH, seed=4) * 3 + 2
    m = layout_mask(padding).float()
    x_before, m_before = x.clone(), m.clone()
    real = np.array(real_entries(x, m))
    mu, sd = real.mean(), math.sqrt(real.var(ddof=1) + 1e-8)
    w = masked_whiten(x, m)
    for b in range(4):
        for t in range(WIDTH):
            expected = (float(x[b, t]) - mu) / sd if m[b, t] else 0.0
            assert float(w[b, t]) == pytest.approx(expected, abs=1e-5)
    assert np.mean(real_entries(w, m)) == pytest.approx(0.0, abs=1e-6)
    assert np.var(real_entries(w, m), ddof=1) == pytest.approx(1.0, rel=1e-5)
    # shift_mean=False only rescales (the mean is added back); padding is still 0
    w2 = masked_whiten(x, m, shift_mean=False)
    assert real_entries(w2, m) == pytest.approx([(v - mu) / sd + mu for v in real], abs=1e-5)
    assert (w2[m == 0] == 0).all()
    # the population variance with unbiased=False
    w3 = masked_whiten(x, m, unbiased=False)
    assert real_entries(w3, m) == pytest.approx([(v - mu) / math.sqrt(real.var() + 1e-8) for v in real], abs=1e-5)
    if padding != "none":  # garbage in the padding changes nothing
        noisy = torch.where(m.bool(), x, torch.full_like(x, 1e6))
        assert torch.allclose(masked_whiten(noisy, m), w, atol=1e-6)
    # none of the calls above changed its inputs
    assert torch.equal(x, x_before) and torch.equal(m, m_before)


def test_masked_whiten_without_mask_and_on_one_entry():
    x = torch.tensor([1.0, 2.0, 3.0, 6.0])
    sd = math.sqrt(np.var([1, 2, 3, 6], ddof=1) + 1e-8)
    assert masked_whiten(x).tolist() == pytest.approx([(v - 3.0) / sd for v in (1, 2, 3, 6)], abs=1e-6)
    # a single real token: it is its own mean, so it whitens to 0 (finite, not nan)
    assert masked_whiten(torch.tensor([[5.0, 1.0]]), torch.tensor([[1, 0]])).tolist() == [[0.0, 0.0]]


def test_explained_variance_by_hand():
    y = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(y, y) == pytest.approx(1.0)  # perfect
    assert explained_variance(torch.full((4,), 2.5), y) == pytest.approx(0.0)  # the mean
    pred = torch.tensor([1.5, 1.5, 3.5, 3.5])
    assert explained_variance(pred, y) == pytest.approx(1 - np.var([-0.5, 0.5, -0.5, 0.5]) / np.var([1, 2, 3, 4]))
    assert explained_variance(-y, y) < 0  # worse than the mean
    assert math.isnan(explained_variance(y, torch.ones(4)))  # targets that do not vary
    assert isinstance(explained_variance(pred, y), float)


@pytest.mark.parametrize("padding", ["left", "right"])
def test_explained_variance_masked_is_that_of_the_real_entries(padding):
    target, pred = randn(4, WIDTH, seed=5), randn(4, WIDTH, seed=6)
    m = layout_mask(padding)
    y, p = np.array(real_entries(target, m)), np.array(real_entries(pred, m))
    assert explained_variance(pred, target, m) == pytest.approx(1 - np.var(y - p) / np.var(y), rel=1e-5)
    garbage = torch.where(m.bool(), pred, torch.full_like(pred, -1e3))
    assert explained_variance(garbage, target, m) == pytest.approx(explained_variance(pred, target, m), rel=1e-6)


# --------------------------------------------------------------------------------------
# Distributions
# --------------------------------------------------------------------------------------


def naive_log_softmax_at(row: list[float], i: int) -> float:
    """log(exp(row[i]) / sum_j exp(row[j])) in float64, the max subtracted first."""
    top = max(row)
    return (row[i] - top) - math.log(sum(math.exp(v - top) for v in row))


def test_selective_log_softmax_matches_a_naive_loop():
    logits = 4 * randn(3, 5, 11, seed=7)
    index = torch.randint(11, (3, 5), generator=torch.Generator().manual_seed(8))
    got = selective_log_softmax(logits, index)
    assert got.shape == (3, 5) and got.dtype == torch.float32
    for b in range(3):
        for t in range(5):
            expected = naive_log_softmax_at(logits[b, t].tolist(), int(index[b, t]))
            assert float(got[b, t]) == pytest.approx(expected, abs=1e-5)
    # one token, one row; extreme logits stay finite; low-precision logits come back as float32
    assert float(selective_log_softmax(torch.tensor([0.0, math.log(3.0)]), torch.tensor(1))) == pytest.approx(
        math.log(0.75))
    big = torch.tensor([[1e4, 0.0, -1e4]])
    assert torch.isfinite(selective_log_softmax(big, torch.tensor([2]))).all()
    half = selective_log_softmax(logits.bfloat16(), index)
    assert half.dtype == torch.float32
    assert torch.allclose(half, selective_log_softmax(logits.bfloat16().float(), index))


def naive_entropy(row: list[float]) -> float:
    """-sum p log p over the tokens with p > 0, in float64."""
    top = max(row)
    weights = [math.exp(v - top) if v != -math.inf else 0.0 for v in row]
    total = sum(weights)
    return -sum(w / total * math.log(w / total) for w in weights if w > 0)


def test_entropy_matches_a_naive_loop_with_and_without_removed_tokens():
    logits = 4 * randn(3, 5, 11, seed=9)
    got = entropy_from_logits(logits)
    assert got.shape == (3, 5)
    for b in range(3):
        for t in range(5):
            assert float(got[b, t]) == pytest.approx(naive_entropy(logits[b, t].tolist()), abs=1e-5)
    # -inf logits (tokens a top-k / top-p filter removed) have p = 0 and add nothing
    filtered = torch.tensor([[0.0, 1.0, -math.inf], [2.0, -math.inf, -math.inf]])
    assert entropy_from_logits(filtered).tolist() == pytest.approx([naive_entropy([0.0, 1.0]), 0.0], abs=1e-6)
    # uniform over V: log V
    assert entropy_from_logits(torch.zeros(2, 7)).tolist() == pytest.approx([math.log(7)] * 2)


def exact_k3(x: float) -> float:
    """(e^x - 1) - x with 60 significant digits: the reference for k3."""
    getcontext().prec = 60
    d = Decimal(x)
    return float(d.exp() - 1 - d)


@pytest.mark.parametrize("x", [1e-6, -1e-6, 7e-7, 3e-7, -2.5e-6])
def test_k3_is_accurate_where_the_naive_float32_form_cancels(x):
    """At |x| ~ 1e-6 in float32, expm1(x) - x (each term ~x, their difference ~x^2/2) is off by
    percents; ours matches the exact value to ~1e-7 relative. (The float64 formula
    math.exp(x) - 1 - x is no reference here: exp(x) - 1 cancels too, ~1e-4 relative error.)"""
    ref_logprobs = torch.tensor([x], dtype=torch.float32)
    xf = float(ref_logprobs)  # the float32 value, exactly
    exact = exact_k3(xf)
    ours = float(kl_estimate(torch.zeros(1), ref_logprobs, "k3"))
    naive = float(torch.expm1(ref_logprobs) - ref_logprobs)
    assert abs(ours - exact) / exact < 1e-6
    assert abs(ours - (math.expm1(xf) - xf)) / exact < 1e-6  # float64 with expm1 agrees
    assert abs(naive - exact) / exact > 1e-2  # the naive float32 form is off by percents


@pytest.mark.parametrize("x", [1e-8, -5e-3, 9.9e-3, 1e-2, -1e-2, 0.3, -2.0, 5.0, -20.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_k3_matches_the_exact_value_on_both_sides_of_the_series_switch(x, dtype):
    ref_logprobs = torch.tensor([x], dtype=dtype)
    exact = exact_k3(float(ref_logprobs))
    got = float(kl_estimate(torch.zeros(1, dtype=dtype), ref_logprobs, "k3"))
    assert got >= 0 and got == pytest.approx(exact, rel=1e-5 if dtype == torch.float32 else 1e-12)


def test_kl_estimators_by_hand():
    logprobs = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-1.5, -1.0, -0.5])  # x = ref - logprobs = [-0.5, 1.0, 0.0]
    before = (logprobs.clone(), ref.clone())
    assert kl_estimate(logprobs, ref).tolist() == pytest.approx([0.5, -1.0, 0.0])  # k1 is the default
    assert kl_estimate(logprobs, ref, "k2").tolist() == pytest.approx([0.125, 0.5, 0.0])
    assert kl_estimate(logprobs, ref, "k3").tolist() == pytest.approx(
        [math.exp(-0.5) - 1 + 0.5, math.e - 2, 0.0], rel=1e-6)
    assert torch.equal(logprobs, before[0]) and torch.equal(ref, before[1])
    assert KL_ESTIMATORS == ("k1", "k2", "k3")


def _two_distributions(scale: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(scale * torch.randn(6, generator=g, dtype=torch.float64), 0)
    q = torch.softmax(scale * torch.randn(6, generator=g, dtype=torch.float64), 0)
    return p, q


@pytest.mark.parametrize("scale", [0.3, 3.0], ids=["near", "far"])
def test_k1_and_k3_are_unbiased_k2_is_not(scale):
    """Exact expectations over a 6-outcome categorical p (each outcome weighted by p):
    E_p[k1] = E_p[k3] = KL(p || q) exactly; k2 is biased (a little for nearby distributions,
    a lot for distant ones); k2, k3 >= 0 on every sample while k1 goes negative; and for
    nearby distributions k3 and k2 have far less variance than k1 (Schulman 2020)."""
    p, q = _two_distributions(scale, seed=3)
    kl = float((p * (p / q).log()).sum())  # exact KL(p || q)
    est = {k: kl_estimate(p.log(), q.log(), k) for k in KL_ESTIMATORS}  # one value per outcome
    mean = {k: float((p * v).sum()) for k, v in est.items()}
    var = {k: float((p * v * v).sum()) - mean[k] ** 2 for k, v in est.items()}
    assert mean["k1"] == pytest.approx(kl, rel=1e-12) and mean["k3"] == pytest.approx(kl, rel=1e-12)
    bias = abs(mean["k2"] - kl) / kl
    assert (0.01 < bias < 0.1) if scale < 1 else bias > 0.5
    assert (est["k2"] >= 0).all() and (est["k3"] >= 0).all() and (est["k1"] < 0).any()
    if scale < 1:
        assert var["k3"] < var["k1"] / 10 and var["k2"] < var["k1"] / 10
    # and by sampling: the sample means of k1 and k3 land within 5 standard errors of the KL
    n = 200_000
    a = torch.multinomial(p, n, replacement=True, generator=torch.Generator().manual_seed(4))
    for k in ("k1", "k3"):
        samples = kl_estimate(p.log()[a], q.log()[a], k)
        assert abs(float(samples.mean()) - kl) < 5 * float(samples.std()) / math.sqrt(n), k


# --------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------

ROWS = [[5, 6, 7], [8], [], [9, 10, 11, 12]]  # with an empty row (all padding) and a single token


def test_pad_left_and_right_match_naive_lists():
    width = max(len(r) for r in ROWS)
    ids, mask = pad_left(ROWS, pad_id=0)
    assert ids.tolist() == [[0] * (width - len(r)) + r for r in ROWS]
    assert mask.tolist() == [[0] * (width - len(r)) + [1] * len(r) for r in ROWS]
    ids, mask = pad_right(ROWS, pad_id=-1)
    assert ids.tolist() == [r + [-1] * (width - len(r)) for r in ROWS]
    assert mask.tolist() == [[1] * len(r) + [0] * (width - len(r)) for r in ROWS]
    assert ids.dtype == mask.dtype == torch.long
    # a single token, and tuples
    for pad in (pad_left, pad_right):
        assert [t.tolist() for t in pad([(3,)], 0)] == [[[3]], [[1]]]


@pytest.mark.parametrize("padding", LAYOUTS)
def test_last_token_index_matches_a_naive_loop(padding):
    m = layout_mask(padding)
    naive = [max(t for t in range(WIDTH) if m[b, t]) for b in range(4)]
    assert last_token_index(m).tolist() == naive
    assert last_token_index(m.bool()).tolist() == naive
    # holes inside a row: still the last real position
    holes = torch.tensor([[0, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    assert last_token_index(holes).tolist() == [1, 2, 3, 0]
    assert last_token_index(torch.tensor([[1]])).tolist() == [0]  # a single token


@pytest.mark.parametrize("padding", LAYOUTS)
def test_position_ids_match_the_naive_formula(padding):
    m = layout_mask(padding)
    got = position_ids_from_mask(m)
    for b in range(4):
        row = m[b].tolist()
        naive = [max(0, sum(row[:t + 1]) - 1) for t in range(WIDTH)]
        assert got[b].tolist() == naive
        # the real tokens are numbered 0, 1, 2, ... wherever the padding is
        assert [p for p, keep in zip(got[b].tolist(), row) if keep] == list(range(sum(row)))
    assert (got >= 0).all()
    assert position_ids_from_mask(torch.tensor([[0, 0, 1, 1]])).tolist() == [[0, 0, 0, 1]]


def test_helpers_do_not_mutate_their_inputs():
    x, m = randn(4, WIDTH, seed=10), layout_mask("left").float()
    logits = randn(4, WIDTH, 7, seed=11)
    index = torch.zeros(4, WIDTH, dtype=torch.long)
    before = [t.clone() for t in (x, m, logits, index)]
    masked_sum(x, m), masked_mean(x, m), masked_var(x, m), masked_whiten(x, m), explained_variance(x, x * 2, m)
    selective_log_softmax(logits, index), entropy_from_logits(logits), kl_estimate(x, x * 2, "k3")
    last_token_index(m), position_ids_from_mask(m)
    assert all(torch.equal(a, b) for a, b in zip(before, (x, m, logits, index)))


# --------------------------------------------------------------------------------------
# Bad input: ValueError naming the argument(s) and the shapes
# --------------------------------------------------------------------------------------

Z23, Z32 = torch.zeros(2, 3), torch.zeros(3, 2)
ONE_EMPTY_ROW = torch.tensor([[1, 1, 0], [0, 0, 0]])

BAD_INPUTS = [
    ("masked_sum shapes", lambda: masked_sum(Z23, Z32), r"masked_sum: .*values \(2, 3\), mask \(3, 2\)"),
    ("masked_mean shapes", lambda: masked_mean(Z23, torch.ones(2, 1)), r"masked_mean: .*values \(2, 3\), mask \(2, 1\)"),
    ("masked_mean empty", lambda: masked_mean(Z23, torch.zeros(2, 3)),
     r"masked_mean: mask of shape \(2, 3\) does not select anything"),
    ("masked_mean empty row", lambda: masked_mean(Z23, ONE_EMPTY_ROW, dim=1),
     r"masked_mean: mask of shape \(2, 3\) does not select anything in some slice along dim 1"),
    ("masked_mean no values", lambda: masked_mean(torch.zeros(0)), r"masked_mean: values is empty"),
    ("masked_var shapes", lambda: masked_var(Z23, Z32), r"masked_var: .*values \(2, 3\), mask \(3, 2\)"),
    ("masked_var empty", lambda: masked_var(Z23, torch.zeros(2, 3)), r"masked_var: mask of shape \(2, 3\)"),
    ("masked_whiten shapes", lambda: masked_whiten(Z23, Z32), r"values \(2, 3\), mask \(3, 2\)"),
    ("masked_whiten empty", lambda: masked_whiten(Z23, torch.zeros(2, 3)), r"mask of shape \(2, 3\) does not select"),
    ("explained_variance shapes", lambda: explained_variance(torch.zeros(3), torch.zeros(4)),
     r"explained_variance: .*predicted \(3,\), target \(4,\)"),
    ("explained_variance mask", lambda: explained_variance(Z23, Z23, torch.ones(3)),
     r"explained_variance: .*predicted \(2, 3\), target \(2, 3\), mask \(3,\)"),
    ("explained_variance empty", lambda: explained_variance(Z23, Z23 + 1, torch.zeros(2, 3)),
     r"mask of shape \(2, 3\) does not select"),
    ("selective_log_softmax shapes", lambda: selective_log_softmax(torch.zeros(2, 3, 5), torch.zeros(2, 4).long()),
     r"selective_log_softmax: .*logits \(2, 3, 5\), index \(2, 4\)"),
    ("kl_estimate shapes", lambda: kl_estimate(torch.zeros(3), torch.zeros(4)),
     r"kl_estimate: .*logprobs \(3,\), ref_logprobs \(4,\)"),
    ("kl_estimate name", lambda: kl_estimate(Z23, Z23, "k4"), r"estimator must be one of \('k1', 'k2', 'k3'\), got 'k4'"),
    ("pad_left empty", lambda: pad_left([], 0), r"pad_left: rows is empty"),
    ("pad_right empty", lambda: pad_right([], 0), r"pad_right: rows is empty"),
    ("last_token_index empty row", lambda: last_token_index(ONE_EMPTY_ROW),
     r"last_token_index: mask of shape \(2, 3\) does not select anything in some slice"),
    ("last_token_index 1-d", lambda: last_token_index(torch.ones(3)), r"last_token_index: mask must be a \[B, T\] tensor, got \(3,\)"),
    ("position_ids 1-d", lambda: position_ids_from_mask(torch.ones(3)),
     r"position_ids_from_mask: mask must be a \[B, T\] tensor, got \(3,\)"),
]


@pytest.mark.parametrize("call, message", [(c, m) for _, c, m in BAD_INPUTS], ids=[n for n, _, _ in BAD_INPUTS])
def test_bad_input_is_a_value_error_naming_arguments_and_shapes(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_wrong_types_are_type_errors():
    with pytest.raises(TypeError, match="masked_mean: mask must be a torch.Tensor, got list"):
        masked_mean(Z23, [[1, 1, 1], [1, 1, 1]])
    with pytest.raises(TypeError, match="pad_left: rows must be a list of lists"):
        pad_left(torch.ones(2, 3).long(), 0)
    with pytest.raises(TypeError, match="pad_right: rows must be a list of lists"):
        pad_right("abc", 0)


def test_logprobs_and_entropy_from_one_log_softmax_match_the_naive_per_row_loop():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(3, 4, 6, generator=g)
    logits[0, 0, 2] = float("-inf")  # a token top-k removed: probability 0, adds 0 to the entropy
    index = torch.randint(0, 6, (3, 4), generator=g)
    index[0, 0] = 1
    logp, entropy = ops.logprobs_and_entropy(logits, index)
    for b in range(3):
        for t in range(4):
            p = [math.exp(x) for x in logits[b, t].double().tolist()]
            z = sum(p)
            assert math.isclose(float(logp[b, t]), math.log(p[index[b, t]] / z), rel_tol=1e-5, abs_tol=1e-6)
            h = -sum(q / z * math.log(q / z) for q in p if q > 0)
            assert math.isclose(float(entropy[b, t]), h, rel_tol=1e-5, abs_tol=1e-6)
    assert logp.dtype == entropy.dtype == torch.float32
    with pytest.raises(ValueError, match=r"index must have the shape of logits without its last axis"):
        ops.logprobs_and_entropy(logits, index[:, :3])


def test_every_public_helper_is_tested_here():
    """A new helper in ops must come with its naive reference in this file."""
    public = {n for n, v in vars(ops).items() if callable(v) and not n.startswith("_")
              and getattr(v, "__module__", None) == ops.__name__}
    tested = {"masked_sum", "masked_mean", "masked_var", "masked_whiten", "explained_variance",
              "selective_log_softmax", "entropy_from_logits", "kl_estimate", "pad_left", "pad_right",
              "last_token_index", "position_ids_from_mask", "logprobs_and_entropy"}
    assert public == tested
