"""Beyond PPO without a reward model: DPO, IPO, and best-of-n sampling.

**DPO** (Rafailov et al. 2023, "Direct preference optimization: your language model is secretly
a reward model"). The KL-regularised objective max E[r] - beta KL(pi || pi_ref) is maximised by
pi*(y|x) ~ pi_ref(y|x) exp(r(x, y) / beta), so a policy implies a reward,
``r(x, y) = beta log(pi(y|x) / pi_ref(y|x))`` up to a function of x, which cancels in the
Bradley-Terry likelihood of a pair. DPO fits the policy to the pairs directly (eq. 7), with no
reward model and no sampling:

    h    = (log pi(y_c|x) - log pi_ref(y_c|x)) - (log pi(y_r|x) - log pi_ref(y_r|x)),
    loss = -log sigma(beta * h).

Implementation details, in the order they happen:

1. **Sequence log-probs** (:func:`sequence_logprobs`): the completion's token log-probs and its
   EOS's, summed, in the policy's layout ``[BOS] + ids(prompt)``, ``ids(completion) + [EOS]``
   (:func:`rlhf_utils.lm.continuation_logprobs`); chosen and rejected in one forward pass.
2. **The reference** is the SFT policy, frozen, its log-probs computed once before the first step
   (TRL's ``precompute_ref_log_probs``); it must read the policy's token ids (:func:`check_reference`).
3. **Ties** name no winner and DPO has no tie term: they are dropped, and counted (``n_ties_dropped``).
4. **Dropout off** (eval mode, TRL's ``disable_dropout``): noise in pi would be noise in the reward.
5. **Training**: AdamW, warm-up then cosine decay (:func:`rlhf_utils.lm.cosine_lr`), clipping; TRL's
   metrics (``rewards/accuracies``, ``rewards/margins``, ...) per step, and held-out ones.

**IPO** (Azar et al. 2023, "A general theoretical paradigm to understand learning from human
preferences", eq. 17) regresses h to a margin instead, ``(h - 1/(2 beta))^2`` (their tau is our
beta), so h cannot run off to infinity on preferences the data never contradicts.

**Best-of-n** (rejection sampling; Stiennon et al. 2020, Nakano et al. 2021): n samples, keep the
one the scorer likes best (:func:`best_of_n`). Its KL to the base policy is *at most* ``log n -
(n - 1)/n`` (Beirami et al. 2024, "Theoretical guarantees on the best-of-n alignment policy"): the
formula often quoted as its value is a bound, reached only when no two samples can tie. The value
itself: :func:`best_of_n_kl_exact` (a categorical policy), :func:`best_of_n_kl_estimate` (samples).
:func:`best_of_n_pool_mean` is best-of-n's gold (or any value) at every n from that pool.
Shapes: B = pairs or completions, P = prompts, n = samples per prompt, N = a pool of samples.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rlhf_utils import lm
from rlhf_utils.ops import _check_same_shape
from rlhf_utils.preferences import PreferencePair
from rlhf_utils.reward import check_same_tokenizer

LOSS_TYPES = ("sigmoid", "ipo")


# --------------------------------------------------------------------------------------
# The losses, the sequence log-probs they take, the implicit reward
# --------------------------------------------------------------------------------------


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float,
             loss_type: str = "sigmoid", label_smoothing: float = 0.0
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO / IPO loss of a batch of pairs, from sequence log-probs (all ``[B]``).

    Returns ``(loss, chosen_rewards, rejected_rewards)``: the mean loss (with grad) and each
    completion's implicit reward ``beta * (log pi - log pi_ref)`` (``[B]``, no grad). With
    ``h = (pi_c - ref_c) - (pi_r - ref_r)``:

    * ``"sigmoid"`` (DPO, Rafailov et al. 2023, eq. 7): ``-log sigma(beta h)``. With
      ``label_smoothing = eps`` > 0, conservative DPO (cDPO, Mitchell 2023, "A note on DPO with
      noisy preferences"): each label is taken as wrong with probability eps,
      ``-(1 - eps) log sigma(beta h) - eps log sigma(-beta h)``;
    * ``"ipo"`` (Azar et al. 2023, eq. 17, tau = beta): ``(h - 1 / (2 beta))^2``.

    Naive equivalent, one pair: ``h = (pc - rc) - (pr - rr)``;
    ``-math.log(1 / (1 + math.exp(-beta * h)))`` (``"sigmoid"``), ``(h - 1 / (2 * beta)) ** 2`` (``"ipo"``).

    Against TRL 1.16 (``DPOTrainer``): its ``"sigmoid"`` is ours at eps = 0 (its ``"robust"`` is
    Chowdhury et al. 2024's loss, not cDPO); its ``"ipo"`` divides each log-ratio by the completion's
    token count first (agreed with IPO's authors): ours fed per-token mean log-probs.
    """
    _check_same_shape("dpo_loss", policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                      ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}: it weighs the KL to the reference (DPO's usual 0.1)")
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if not 0.0 <= label_smoothing < 0.5 or (loss_type == "ipo" and label_smoothing):
        raise ValueError(f"label_smoothing must lie in [0, 0.5), for loss_type='sigmoid' only (cDPO), "
                         f"got {label_smoothing} with {loss_type!r}")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # [B]
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # [B]
    h = chosen_logratios - rejected_logratios  # [B]
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    else:
        losses = (h - 1 / (2 * beta)) ** 2
    return losses.mean(), beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def reward_accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> float:
    """Share of pairs whose chosen completion has the higher implicit reward (equal counts 1/2,
    as :func:`rlhf_utils.reward.evaluate_pairs`). Naive: ``mean(1 if c > r else .5 if c == r else 0)``."""
    d = chosen_rewards - rejected_rewards
    return float(((d > 0).double() + 0.5 * (d == 0).double()).mean())


def sequence_logprobs(model, tokenizer, prompts: Sequence[str], completions: Sequence[str],
                      batch_size: int | None = None) -> torch.Tensor:
    """``log pi(completion + EOS | prompt)`` of each pair, summed over tokens: ``[B]``, on the
    model's device. With grad when ``batch_size`` is None (one forward pass); else computed
    ``batch_size`` at a time without grad.

    Naive equivalent: ``sum(log p(t_k | BOS, prompt, t_1..t_{k-1}))`` over the completion's
    tokens ``t_k`` and its EOS (:func:`rlhf_utils.lm.continuation_logprobs`).
    """
    if len(prompts) != len(completions) or not prompts:
        raise ValueError(f"sequence_logprobs: {len(prompts)} prompts, {len(completions)} completions: one per prompt")
    if batch_size is None:
        logprobs, _ = lm.continuation_logprobs(model, tokenizer, list(prompts), list(completions))
        return logprobs.sum(1)  # [B] (continuation_logprobs is 0 at padding)
    was_training, b = model.training, batch_size
    model.eval()  # a measurement: no dropout (the mode is restored)
    try:
        with torch.no_grad():
            return torch.cat([sequence_logprobs(model, tokenizer, prompts[i:i + b], completions[i:i + b])
                              for i in range(0, len(prompts), b)])
    finally:
        model.train(was_training)


def check_reference(policy, reference, tokenizer, reference_tokenizer=None) -> None:
    """Raise ``ValueError`` unless ``reference`` can be DPO's frozen reference for ``policy``: another object,
    the same embedding size and special ids, and the same tokenizer (:func:`rlhf_utils.reward.check_same_tokenizer`)."""
    fix = ("DPO's reference is the policy it starts from: load it from the same checkpoint "
           "(checkpoints.load_checkpoint(sft_path)) or take copy.deepcopy(policy) before training.")
    if reference is policy:
        raise ValueError("The reference is the policy itself: it would move with every step. " + fix)
    if reference_tokenizer is not None:
        try:
            check_same_tokenizer(reference_tokenizer, tokenizer, names=("reference", "policy"))
        except ValueError as err:  # its diagnosis, with DPO's fix instead of the reward model's
            raise ValueError(str(err).split(". Build the")[0] + ". " + fix) from None
    rows = [m.get_input_embeddings().num_embeddings for m in (reference, policy)]
    problems = [f"embeddings of {rows[0]} (reference) and {rows[1]} (policy) rows"] * (rows[0] != rows[1])
    problems += [f"a tokenizer of {len(tokenizer)} tokens for {min(rows)} rows"] * (len(tokenizer) > min(rows))
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        ids = [getattr(m.config, attr, None) for m in (reference, policy)]
        problems += [f"{attr} {ids[0]} (reference) vs {ids[1]} (policy)"] * (None not in ids and ids[0] != ids[1])
    if problems:
        raise ValueError("The reference and the policy use different tokenizers: " + "; ".join(problems) + ". " + fix)


@torch.no_grad()
def implicit_reward(policy, reference, tokenizer, prompts: Sequence[str], completions: Sequence[str],
                    beta: float, batch_size: int = 256) -> torch.Tensor:
    """DPO's implicit reward ``beta * (log pi(y|x) - log pi_ref(y|x))`` of each completion
    (sequence sums, Rafailov et al. 2023, section 5): ``[B]`` float32 on the policy's device."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}: it weighs the KL to the reference (DPO's usual 0.1)")
    check_reference(policy, reference, tokenizer)
    pi = sequence_logprobs(policy, tokenizer, prompts, completions, batch_size)
    ref = sequence_logprobs(reference, tokenizer, prompts, completions, batch_size).to(pi.device)
    return beta * (pi - ref)


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


@dataclass
class DPOHistory:
    """What :func:`train_dpo` did. Per-step lists are aligned with ``step``; TRL's metric names in brackets."""

    step: list = field(default_factory=list)
    """optimizer step of each entry"""
    loss: list = field(default_factory=list)
    """DPO (or IPO) loss of each training batch [loss]"""
    reward_accuracy: list = field(default_factory=list)
    """share of the batch whose chosen implicit reward beats the rejected one [rewards/accuracies]"""
    reward_margin: list = field(default_factory=list)
    """mean chosen minus rejected implicit reward [rewards/margins]"""
    chosen_reward: list = field(default_factory=list)
    """mean implicit reward of the chosen completions [rewards/chosen]"""
    rejected_reward: list = field(default_factory=list)
    """mean implicit reward of the rejected completions [rewards/rejected]"""
    eval_step: list = field(default_factory=list)
    """steps at which the held-out pairs were evaluated (0 = before training)"""
    eval_loss: list = field(default_factory=list)
    """held-out loss [eval_loss]"""
    eval_accuracy: list = field(default_factory=list)
    """held-out reward accuracy [eval_rewards/accuracies]"""
    eval_margin: list = field(default_factory=list)
    """held-out mean reward margin [eval_rewards/margins]"""
    n_pairs: int = 0
    """training pairs used (ties dropped)"""
    n_ties_dropped: int = 0
    """tie pairs left out of training (DPO has no tie term); held-out ties are left out too"""
    seconds: float = 0.0
    """wall time of training, held-out evaluations included"""


def _strict_pairs(pairs: Sequence[PreferencePair] | None, what: str) -> tuple[list[PreferencePair], int]:
    """The pairs that name a winner, and how many ties were dropped."""
    if not pairs:
        raise ValueError(f"No {what}: run notebook 04, then preferences.load_trl_preferences")
    strict = [p for p in pairs if not p.tie]
    if not strict:
        raise ValueError(f"All {len(pairs)} {what} are ties: DPO learns only from pairs with a winner.")
    return strict, len(pairs) - len(strict)


def _pair_logprobs(model, tokenizer, pairs: Sequence[PreferencePair], batch_size: int | None = None):
    """Sequence log-probs of chosen and rejected, ``([B], [B])``, in one forward (or batched, no grad)."""
    logps = sequence_logprobs(model, tokenizer, [p.prompt for p in pairs] * 2,
                              [p.chosen for p in pairs] + [p.rejected for p in pairs], batch_size)  # [2B]
    return logps[:len(pairs)], logps[len(pairs):]


def train_dpo(policy, reference, tokenizer, pairs: Sequence[PreferencePair], config,
              eval_pairs: Sequence[PreferencePair] | None = None, progress: bool = True,
              reference_tokenizer=None) -> DPOHistory:
    """Train ``policy`` in place with DPO (or IPO) against the frozen ``reference`` (never changed).

    ``config``: a :class:`rlhf_utils.config.DPOConfig`; ``pairs``, ``eval_pairs``: :class:`PreferencePair`
    lists (ties dropped, counted). Held-out figures before the first step, every ``config.eval_every``
    steps and after the last.
    """
    check_reference(policy, reference, tokenizer, reference_tokenizer)
    train, ties = _strict_pairs(pairs, "training pairs")
    held = _strict_pairs(eval_pairs, "held-out pairs")[0] if eval_pairs is not None else []
    hist = DPOHistory(n_pairs=len(train), n_ties_dropped=ties)
    start, device, bs = time.perf_counter(), next(policy.parameters()).device, config.batch_size
    ref_c, ref_r = (t.to(device) for t in _pair_logprobs(reference, tokenizer, train, 256))  # [N], [N]
    held_ref = [t.to(device) for t in _pair_logprobs(reference, tokenizer, held, 256)] if held else None

    def evaluate(step: int) -> None:
        pc, pr = _pair_logprobs(policy, tokenizer, held, 256)
        loss, cr, rr = dpo_loss(pc, pr, *held_ref, config.beta, config.loss_type, config.label_smoothing)
        hist.eval_step.append(step)
        hist.eval_loss.append(loss.item())
        hist.eval_accuracy.append(reward_accuracy(cr, rr))
        hist.eval_margin.append((cr - rr).mean().item())

    policy.eval()  # dropout off (module docstring, item 4)
    opt = lm.adamw(policy, config.learning_rate, weight_decay=0.0)
    g = torch.Generator().manual_seed(config.seed)
    total, step = config.epochs * math.ceil(len(train) / bs), 0
    if held:
        evaluate(0)
    bar = tqdm(total=total, desc="DPO" if config.loss_type == "sigmoid" else "IPO", disable=not progress)
    for _ in range(config.epochs):
        order = torch.randperm(len(train), generator=g).tolist()
        for i in range(0, len(train), bs):
            idx = order[i:i + bs]
            pc, pr = _pair_logprobs(policy, tokenizer, [train[j] for j in idx])  # [b], [b] with grad
            loss, cr, rr = dpo_loss(pc, pr, ref_c[idx], ref_r[idx], config.beta, config.loss_type,
                                    config.label_smoothing)
            for group in opt.param_groups:
                group["lr"] = lm.cosine_lr(step, total, config.learning_rate, config.warmup_steps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
            opt.step()
            step += 1
            hist.step.append(step)
            hist.loss.append(loss.item())
            hist.reward_accuracy.append(reward_accuracy(cr, rr))
            hist.reward_margin.append((cr - rr).mean().item())
            hist.chosen_reward.append(cr.mean().item())
            hist.rejected_reward.append(rr.mean().item())
            bar.update(1)
            if held and (step % config.eval_every == 0 or step == total):
                evaluate(step)
                bar.set_postfix(eval_loss=f"{hist.eval_loss[-1]:.3f}", eval_acc=f"{hist.eval_accuracy[-1]:.3f}")
    bar.close()
    hist.seconds = time.perf_counter() - start
    return hist


# --------------------------------------------------------------------------------------
# Best-of-n
# --------------------------------------------------------------------------------------


@dataclass
class BestOfN:
    """The best of n samples per prompt, and every sample it was chosen from."""

    completions: list[str]
    """the chosen completion of each prompt  # [P]"""
    scores: torch.Tensor
    """its score  # [P]"""
    index: torch.Tensor
    """which of the n samples it was (the first of equal best scores)  # [P]"""
    samples: list[list[str]]
    """all n completions of each prompt  # [P][n]"""
    all_scores: torch.Tensor
    """the score of every sample  # [P, n]"""
    logprobs: torch.Tensor
    """log pi(y|x) of every sample at the sampling temperature (EOS included)  # [P, n]"""


@torch.no_grad()
def best_of_n(policy, tokenizer, prompts: Sequence[str], n: int,
              score_fn: Callable[[list[str], list[str]], torch.Tensor | np.ndarray], max_new_tokens: int,
              temperature: float = 1.0, seed: int = 0, batch_size: int = 512, progress: bool = False) -> BestOfN:
    """Rejection sampling: ``n`` completions per prompt from ``policy``, and the one ``score_fn``
    rates highest (``argmax``, the first on equal scores).

    ``score_fn(prompts, completions) -> [B]``: any scorer (a reward model's ``score``, ``evaluation.gold_reward_fn``).
    Drawn ``batch_size`` at a time with one generator seeded by ``seed``: one seed, the same samples for every n
    (``progress``: a bar over the batches).
    """
    best_of_n_kl_bound(n)  # checks n
    if isinstance(prompts, str) or not prompts:
        raise ValueError("best_of_n needs a non-empty list of prompts")
    gen = torch.Generator(device=next(policy.parameters()).device).manual_seed(seed)
    flat = [p for p in prompts for _ in range(n)]  # [P * n], each prompt's n samples together
    texts, logps = [], []
    for i in tqdm(range(0, len(flat), batch_size), desc=f"sampling {n} per prompt", disable=not progress):
        s = lm.sample(policy, tokenizer, flat[i:i + batch_size], max_new_tokens, temperature=temperature,
                      generator=gen)
        texts += s.texts
        logps.append(s.logprobs.sum(1).cpu())
    scores = torch.as_tensor(_numpy(score_fn(flat, texts)), dtype=torch.float32).reshape(len(prompts), n)  # [P, n]
    index = scores.argmax(1)  # [P]
    samples = [texts[i * n:(i + 1) * n] for i in range(len(prompts))]
    return BestOfN([row[j] for row, j in zip(samples, index.tolist())], scores.gather(1, index[:, None])[:, 0],
                   index, samples, scores, torch.cat(logps).reshape(len(prompts), n))


def best_of_n_pool_mean(scores, values, n: int) -> float:
    """The mean of ``values`` (e.g. the gold reward) over best-of-n picks, from one pool of N >= n
    samples per prompt (``scores``, ``values``: ``[P, N]``, a :func:`best_of_n` call's ``all_scores``):
    each prompt's pool cut into N // n groups of n, the highest-``scores`` sample of each (the first
    on equal scores, as :func:`best_of_n`), averaged. Unbiased for E[value of best-of-n], with less
    noise than one pick per prompt. Naive: ``mean(v[g][argmax(s[g])] for every group g of n)``."""
    best_of_n_kl_bound(n)
    s, v = _numpy(scores), _numpy(values)
    k = s.shape[-1] // n if s.ndim == 2 else 0
    if s.shape != v.shape or k < 1:
        raise ValueError(f"scores and values must be one [P, N] pool with N >= n = {n}, got {s.shape} and {v.shape}")
    s, v = s[:, :k * n].reshape(-1, k, n), v[:, :k * n].reshape(-1, k, n)  # [P, k, n]
    return float(np.take_along_axis(v, s.argmax(2)[..., None], 2).mean())


def _numpy(x) -> np.ndarray:
    return x.detach().double().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=float)


def best_of_n_kl_bound(n: int) -> float:
    """``log n - (n - 1) / n``: an upper bound on KL(best-of-n || base) in nats (Beirami et al.
    2024, section 3), reached only in the limit where no outcome has positive probability
    (continuous scores, no ties) -- not its value. 0 at n = 1; ``log n - 1`` for large n."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a whole number >= 1 (1 = plain sampling), got {n!r}")
    return math.log(n) - (n - 1) / n


def _bon_ratio(F_le: np.ndarray, p: np.ndarray, n: int) -> np.ndarray:
    """``pi_bon / pi = (F^n - (F - p)^n) / p`` of an outcome of probability ``p`` whose score's
    CDF (at or below it) is ``F``, computed without cancellation: ``F^n (1 - (1 - p/F)^n) / p``."""
    with np.errstate(divide="ignore"):  # p = F: log1p(-1) = -inf, expm1(-inf) = -1, as it should
        return F_le ** n * -np.expm1(n * np.log1p(-np.minimum(p / F_le, 1.0))) / p


def best_of_n_kl_exact(probs: Sequence[float], scores: Sequence[float], n: int) -> float:
    """KL(best-of-n || base), exactly, of a categorical base policy: outcome probabilities ``probs``
    and scores ``scores`` (both ``[K]``; Beirami et al. 2024, section 2). Outcomes of equal score are
    one group G (picked among in proportion to ``probs``); with F(G) the probability of a score <= G's,
    ``pi_bon(G) = F(G)^n - (F(G) - pi(G))^n`` and ``KL = sum_G pi_bon(G) log(pi_bon(G) / pi(G))``."""
    best_of_n_kl_bound(n)
    probs, scores = _numpy(probs), _numpy(scores)
    if probs.shape != scores.shape or probs.ndim != 1 or (probs < 0).any() or abs(probs.sum() - 1) > 1e-6:
        raise ValueError("probs must be a probability vector [K] and scores the same shape")
    values, group = np.unique(scores[probs > 0], return_inverse=True)  # ascending scores
    p_group = np.bincount(group, weights=probs[probs > 0], minlength=len(values))  # [G]
    ratio = _bon_ratio(np.cumsum(p_group), p_group, n)  # pi_bon(G) / pi(G)
    return float(np.sum(p_group * ratio * np.log(ratio)))


def best_of_n_kl_estimate(scores, logprobs, n: int) -> float:
    """A Monte-Carlo estimate of KL(best-of-n || base), for a policy too large to enumerate, from
    one pool of N >= 2n base samples per prompt (``scores``, ``logprobs`` ``[P, N]``: a
    :func:`best_of_n` call's ``all_scores`` and ``logprobs``); one pool serves every n.

    ``KL = E_{y ~ best-of-n}[log pi_bon(y) / pi(y)]`` with the ratio of :func:`best_of_n_kl_exact`,
    ``(F^n - (F - p)^n) / p`` (``-> n F^(n-1)`` as p -> 0), ``F = P(score <= s(y))``: the pool is cut
    into k = N // n groups of n, and each group's best y is ranked among the m = (k - 1) n samples of
    the others, ``F = (c + 1/2) / (m + 1/2)`` with c of them scoring <= s(y) (for continuous scores
    its log is unbiased to 1e-4 at m >= 50; ``(c + 1) / (m + 1)`` is biased by ~(n - 1) / 2m).
    ``p`` is the probability of y's score group: ``pi(y|x)`` from its log-prob, plus the share among
    the m of other texts (another log-prob) with the same score -- ignoring them overstates the KL.
    """
    best_of_n_kl_bound(n)
    scores, logprobs = (torch.as_tensor(_numpy(t)) for t in (scores, logprobs))  # float64, CPU
    k = scores.shape[-1] // n
    if scores.ndim != 2 or scores.shape != logprobs.shape or k < 2:
        raise ValueError(f"scores and logprobs must be one [P, N] pool with N >= 2 n = {2 * n}, "
                         f"got {tuple(scores.shape)} and {tuple(logprobs.shape)}")
    s, lp = scores[:, :k * n].reshape(-1, k, n), logprobs[:, :k * n].reshape(-1, k, n)  # [P, k, n]
    best = s.argmax(2, keepdim=True)  # [P, k, 1], each group's best
    s_best, lp_best = s.gather(2, best), lp.gather(2, best)  # [P, k, 1]
    pool_s, pool_lp, m = s.flatten(1)[:, None, :], lp.flatten(1)[:, None, :], (k - 1) * n + 0.5  # [P, 1, k n]
    c = (pool_s <= s_best).sum(-1) - n  # [P, k]: in the other groups (its own n are all <= it)
    ties = (((pool_s == s_best) & (pool_lp != lp_best)).sum(-1)  # [P, k]: same score, another text,
            - ((s == s_best) & (lp != lp_best)).sum(-1))  # in the other groups
    p_group = lp_best[..., 0].exp() + ties / m  # [P, k] pi(y) + the other groups' share of other equal-score texts
    F_le = torch.maximum((c + 0.5) / m, p_group)  # [P, k]
    return float(np.mean(np.log(_bon_ratio(F_le.numpy(), np.maximum(p_group.numpy(), 1e-300), n))))
