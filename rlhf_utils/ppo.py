"""PPO for language models: the RLHF fine-tune (rollout, KL penalty, GAE, clipped update).

The loop, one iteration per :meth:`PPOTrainer.step` (steps 1-5 of the usual RLHF recipe:
a pretrained/SFT policy acts, a learned reward scores it, PPO improves it, repeat):

1. **rollout** -- a batch of prompts, left-padded, is continued by the policy with the KV
   cache (:func:`rlhf_utils.lm.sample`), stopping at EOS or ``max_new_tokens``; the
   response mask is 1 up to and including the first EOS;
2. **score** -- the reward model reads prompt + completion and scores the last real token
   (the EOS); a completion that never produced EOS loses ``missing_eos_penalty``;
3. **KL-shaped reward** -- per response token ``-beta * (log pi - log pi_ref)``, plus the
   score on the last real token (Ziegler et al. 2019, eq. 2; Stiennon et al. 2020);
4. **advantages** -- GAE(gamma = 1, lambda = 0.95) over response tokens only, then whitened
   over the batch with the mask (Schulman et al. 2016; lm-human-preferences);
5. **update** -- several epochs of minibatches of the clipped surrogate (Schulman et al.
   2017, eq. 7: ``min(r A, clip(r, 1-eps, 1+eps) A)`` -- a *ratio* times an advantage, not a
   ratio times a log-probability), clipped value loss, optional entropy bonus, gradient
   clipping; then the adaptive KL controller moves beta towards a target KL.

References: Ziegler et al. (2019), "Fine-Tuning Language Models from Human Preferences",
and its code ``openai/lm-human-preferences`` (``train_policy.py``); Stiennon et al.
(2020); Ouyang et al. (2022, InstructGPT); Huang et al. (2024), "The N+ implementation
details of RLHF with PPO: a case study on TL;DR summarization"; Schulman's note "Approximating
KL divergence" (http://joschu.net/blog/kl-approx.html) for the k1/k2/k3 estimators.

**Value function: a zero-initialised value head on the policy's own transformer.** This
is what lm-human-preferences does (``Policy`` builds one model with ``scalar_heads=['value']``).
Huang et al. (2024) instead train a separate critic initialised from the reward model, which
keeps the value loss from pulling on the policy's features but doubles the forward and
backward work and the memory. We take the shared trunk: one forward pass per minibatch
gives log-probabilities, entropies and values (2 CPU cores, and LoRA on big models, make
that count); the reward is normalised to mean 0 under the SFT policy, so a value head that
starts at exactly 0 starts at the right answer for the score; and ``vf_coef`` keeps the
value gradient small.

Pure functions first (each with the naive loop it equals in its docstring, each tested
against that loop in ``tests/test_ppo.py``), then :class:`PPOTrainer`. ``python -m
rlhf_utils.ppo`` runs the trainer from the command line, alone or under ``accelerate
launch`` / ``torchrun`` on several processes or GPUs (gradients averaged by DDP, rollouts
sharded; see :func:`main`).

Shapes: B = sequences, P = prompt length, R = response length, H = hidden size.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn

from rlhf_utils import lm
from rlhf_utils import rl
from rlhf_utils.config import PPOConfig, get_device
from rlhf_utils.reward import last_token_index  # the reward model reads the same token

# --------------------------------------------------------------------------------------
# Masked statistics
# --------------------------------------------------------------------------------------


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1 (0 where the mask is empty).

    Naive equivalent: ``sum(v for v, m in zip(values, mask) if m) / sum(mask)``.
    """
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  eps: float = 1e-8) -> torch.Tensor:
    """Standardise the masked entries to mean 0 and variance 1; padding comes back as 0.

    Naive equivalent: ``x = [v for v, m in zip(values, mask) if m]``; ``mu = mean(x)``;
    ``var = sum((v - mu)**2 for v in x) / (len(x) - 1)`` (Bessel, as lm-human-preferences
    and TRL); each real entry becomes ``(v - mu) / sqrt(var + eps)`` (``+ mu`` back when
    ``shift_mean=False``, which only rescales -- used for rewards).

    ``all_reduce_sum`` sums a tensor over processes, so the statistics are those of the
    global batch when the batch is sharded (identity on one process).
    """
    reduce = all_reduce_sum or _identity
    mask = mask.to(values.dtype)
    stats = reduce(torch.stack([(values * mask).sum(), mask.sum()]))
    n = stats[1]
    mean = stats[0] / n.clamp(min=1)
    sq = reduce(((values - mean) ** 2 * mask).sum())
    var = sq / (n - 1).clamp(min=1)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def masked_explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 - Var[returns - values] / Var[returns]`` over the masked entries
    (:func:`rlhf_utils.rl.explained_variance` on the real tokens only)."""
    keep = mask.bool()
    return rl.explained_variance(values[keep], returns[keep])


# --------------------------------------------------------------------------------------
# Rewards: missing EOS, KL estimators, the KL-shaped per-token reward
# --------------------------------------------------------------------------------------


def apply_missing_eos_penalty(scores: torch.Tensor, ended: torch.Tensor, penalty: float) -> torch.Tensor:
    """``scores - penalty`` for completions that never produced EOS, ``scores`` for the rest.

    Naive equivalent: ``[s if e else s - penalty for s, e in zip(scores, ended)]``.
    (TRL's ``missing_eos_penalty``; Huang et al. 2024 detail "EOS trick".)
    """
    return scores - penalty * (~ended.bool()).to(scores.dtype)


def kl_estimators(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-token estimators of KL(pi || pi_ref) from tokens sampled from pi (Schulman's note).

    With ``x = log pi_ref(a) - log pi(a)`` (the log of the ratio ``r = pi_ref / pi``):

    * ``k1 = -x``                      unbiased, high variance, can be negative per token;
    * ``k2 = x**2 / 2``                biased, low variance, >= 0;
    * ``k3 = (r - 1) - log r = expm1(x) - x``   unbiased, low variance, >= 0.

    Naive equivalent for one token: ``math.exp(x) - 1 - x`` for k3. Over a whole
    sequence, the sum of k1 over its tokens is the sequence's log-ratio, whose expectation
    is KL(pi || pi_ref) of the sequence distribution.
    """
    x = ref_logprobs - logprobs
    return {"k1": -x, "k2": 0.5 * x * x, "k3": torch.expm1(x) - x}


def kl_penalty_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                       mask: torch.Tensor, kl_coef: float, estimator: str = "k1"
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards ``[B, R]``: ``-kl_coef * kl_t`` on every response token, plus the
    sequence's score on its last real token (the EOS, or the last token if none).

    Returns ``(rewards, non_score_rewards)``, both 0 at padding; every row needs at least
    one real token (a sampled response always has one). ``estimator`` picks the
    per-token KL (``"k1"``: ``log pi - log pi_ref``, as Ziegler et al. 2019; ``"k3"``).

    Naive equivalent::

        for b: for t in real tokens of b:
            rewards[b][t] = -kl_coef * (logprobs[b][t] - ref_logprobs[b][t])
        rewards[b][last real t] += scores[b]
    """
    mask = mask.to(logprobs.dtype)
    kl = kl_estimators(logprobs, ref_logprobs)[estimator]  # [B, R]
    non_score = -kl_coef * kl * mask  # [B, R]
    last = last_token_index(mask)  # [B]
    onehot = torch.nn.functional.one_hot(last, mask.shape[1]).to(logprobs.dtype)  # [B, R]
    rewards = non_score + scores[:, None].to(logprobs.dtype) * onehot
    return rewards, non_score


# --------------------------------------------------------------------------------------
# Advantages
# --------------------------------------------------------------------------------------


def gae_advantages(values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor,
                   gamma: float = 1.0, lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over response tokens only: ``(advantages, returns)``, both ``[B, R]``, 0 at padding.

    A response is an episode that ends at its last real token: nothing is bootstrapped
    from the padding after it. Naive equivalent, for each sequence ``b`` with real tokens
    ``0..L-1``::

        A = 0
        for t in reversed(range(L)):
            next_v = values[b][t + 1] if t + 1 < L else 0.0
            delta = rewards[b][t] + gamma * next_v - values[b][t]
            A = delta + gamma * lam * A
            advantages[b][t] = A
        returns[b][t] = advantages[b][t] + values[b][t]

    Built on :func:`rlhf_utils.rl.gae_advantages` (the same recursion as CartPole's, time
    first), with "the next token is padding" as the episode's termination.
    """
    mask = mask.to(values.dtype)
    values, rewards = values * mask, rewards * mask  # [B, R]
    next_mask = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)  # [B, R]
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)  # [B, R]
    advantages, returns = rl.gae_advantages(
        rewards.T, values.T, next_values.T, terminated=(1 - next_mask).T,
        truncated=torch.zeros_like(mask).T, gamma=gamma, gae_lambda=lam)  # [R, B]
    return advantages.T * mask, returns.T * mask


# --------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, cliprange: float, num_tokens: float | torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate loss over response tokens, and its diagnostics.

    ``ratio = exp(logprobs - old_logprobs)``; loss = mean over real tokens of
    ``max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))`` (Schulman et al. 2017, eq. 7).
    Naive equivalent: ``sum(max(-a*r, -a*clip(r)) for real tokens) / n_real``.

    ``num_tokens`` replaces the denominator ``n_real``: pass the number of real tokens in the
    whole minibatch (over gradient-accumulation steps and processes), and the gradient is
    the same however the minibatch is split. Stats: ``clipfrac`` (share of tokens whose
    ratio left [1 - eps, 1 + eps]) and ``approx_kl`` (k3 estimate of KL(old || new)), as CleanRL defines them.
    The masked mean is :func:`rlhf_utils.rl.ppo_policy_loss` with the mask as weights.
    """
    loss = rl.ppo_policy_loss(logprobs, old_logprobs, advantages, cliprange, weights=mask.to(logprobs.dtype))
    loss = loss * _renormalise(mask, num_tokens)
    with torch.no_grad():
        log_ratio = logprobs - old_logprobs
        stats = {"clipfrac": rl.clip_fraction(log_ratio, cliprange, mask.to(logprobs.dtype)),
                 "approx_kl": rl.approx_kl(log_ratio, mask.to(logprobs.dtype))}
    return loss, stats


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                   mask: torch.Tensor, cliprange_value: float,
                   num_tokens: float | torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss over response tokens:
    ``0.5 * mean(max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2))`` (lm-human-preferences).

    Naive equivalent: the same expression summed over real tokens, divided by ``n_real``
    (or ``num_tokens``, see :func:`ppo_policy_loss`). Stat: ``clipfrac``, the share of tokens
    whose clipped term was the larger.
    """
    m = mask.to(values.dtype)
    # rl.ppo_value_loss is E[max(...)] (the PPO paper's L^VF); lm-human-preferences and TRL,
    # whose vf_coef = 0.1 we use, put 1/2 in front.
    loss = 0.5 * rl.ppo_value_loss(values, old_values, returns, cliprange_value, weights=m)
    loss = loss * _renormalise(mask, num_tokens)
    with torch.no_grad():
        clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
        stats = {"clipfrac": masked_mean(((clipped - returns) ** 2 > (values - returns) ** 2).to(values.dtype), m)}
    return loss, stats


def _renormalise(mask: torch.Tensor, num_tokens) -> torch.Tensor | float:
    """Factor turning a mean over this mask's tokens into a sum divided by ``num_tokens``."""
    if num_tokens is None:
        return 1.0
    return mask.sum().clamp(min=1).to(torch.float32) / num_tokens


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
    Naive equivalent: exactly those two lines, once per PPO iteration.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        super().__init__(init_kl_coef)
        if target <= 0 or horizon <= 0:
            raise ValueError(f"AdaptiveKLController needs target > 0 and horizon > 0, got {target}, {horizon}")
        self.target, self.horizon = float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


# --------------------------------------------------------------------------------------
# The policy with its value head
# --------------------------------------------------------------------------------------


def _hf_model(model: nn.Module) -> nn.Module:
    """The Hugging Face causal LM inside ``model`` (a ``peft`` wrapper's base model, with the
    LoRA layers injected, or ``model`` itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class PolicyWithValueHead(nn.Module):
    """A causal LM and a scalar value head ``V(s_t) = w . h_t + b`` on its last hidden state.

    The head starts at exactly zero (weight and bias), so ``V = 0`` everywhere before
    training -- the mean of the normalised score under the reference policy.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.lm = model
        hidden = _hf_model(model).config.hidden_size
        self.v_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.v_head.weight)
        nn.init.zeros_(self.v_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, start: int,
                with_logits: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(logits [B, R, V] or None, values [B, R])`` for positions ``start .. T-2``: the
        states from which tokens ``start+1 .. T-1`` were chosen (``start = P - 1`` for the
        response of a ``[prompt | response]`` batch).

        One pass of the transformer body; the LM head is applied to those positions only.
        """
        hf = _hf_model(self.lm)
        hidden = hf.base_model(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=lm.position_ids_from_mask(attention_mask),
                               use_cache=False).last_hidden_state  # [B, T, H]
        h = hidden[:, start:-1]  # [B, R, H]
        logits = hf.get_output_embeddings()(h) if with_logits else None  # [B, R, V]
        values = self.v_head(h.to(self.v_head.weight.dtype)).squeeze(-1)  # [B, R]
        return logits, values


def _check_forward_matches(model: PolicyWithValueHead) -> None:
    """Our forward is ``lm_head(body(x))``; refuse a model whose own forward does more
    (logit soft-capping, logit scaling), which would make our log-probabilities wrong."""
    hf = _hf_model(model.lm)
    device = model.v_head.weight.device
    ids = torch.arange(5, device=device)[None] % hf.config.vocab_size  # [1, 5]
    mask = torch.ones_like(ids)
    with torch.no_grad():
        ours, _ = model(ids, mask, start=0)
        theirs = hf(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
    if not torch.allclose(ours.float(), theirs.float(), atol=1e-4, rtol=1e-3):
        raise ValueError(
            f"{type(hf).__name__}'s forward does more than lm_head(last_hidden_state) (soft-capping "
            "or scaling of the logits?): PPOTrainer would compute wrong log-probabilities for it. "
            "Use a GPT-2/Llama/Qwen-style causal LM.")


# --------------------------------------------------------------------------------------
# Rollouts
# --------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """One batch of experience: what the policy wrote and what it was worth.

    Rows are sequences; ``response_mask`` is 1 up to and including the first EOS.
    """

    prompts: list[str]
    texts: list[str]  # completions, decoded without EOS/padding
    prompt_ids: torch.Tensor  # [B, P] left-padded
    prompt_mask: torch.Tensor  # [B, P]
    response_ids: torch.Tensor  # [B, R] right-padded
    response_mask: torch.Tensor  # [B, R]
    logprobs: torch.Tensor  # [B, R] log pi_old(token), 0 at padding
    ref_logprobs: torch.Tensor  # [B, R] log pi_ref(token), 0 at padding
    values: torch.Tensor  # [B, R] V_old(s_t)
    scores: torch.Tensor  # [B] reward-model scores after the missing-EOS penalty
    ended: torch.Tensor  # [B] bool: EOS was produced

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, index: Sequence[int] | torch.Tensor) -> "Rollout":
        """The rows ``index`` (a new Rollout; this one is untouched)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        picked = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in picked.items():
            if isinstance(value, torch.Tensor):
                picked[name] = value[idx.to(value.device)]
            else:
                picked[name] = [value[i] for i in idx.tolist()]
        return Rollout(**picked)


# --------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------


class NonFiniteError(FloatingPointError):
    """A NaN or inf appeared in training; the message names the step and the quantity."""


RewardFn = Callable[[list[str], list[str]], "torch.Tensor | Sequence[float]"]

STATE_FILE = "trainer_state.json"
PARAMS_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
VALUE_HEAD_FILE = "value_head.safetensors"
CONFIG_KEYS_FREE_ON_RESUME = ("steps",)  # a resumed run may be made longer or shorter


class PPOTrainer:
    """PPO fine-tuning of ``policy`` (trained in place) against ``reward``.

    ``reward`` is a reward model with ``.score(prompts, completions) -> [B]`` and a
    ``.tokenizer`` (:class:`rlhf_utils.reward.RewardModel`, its normalisation stored with
    it), or any callable ``reward_fn(prompts, completions) -> [B]`` (e.g. the world's gold
    reward). ``prompts`` is the pool each iteration draws ``config.batch_size`` prompts from.
    ``ref_policy`` defaults to a frozen copy of ``policy`` as it is now (with LoRA, the same
    model with its adapters switched off). ``extra_metrics(prompts, completions) -> dict``
    adds figures to each step's log (the course logs the gold reward this way).

    Runs on one process, or under ``accelerate launch`` on several: each process samples
    its share of the batch and DDP averages the gradients (Hugging Face ``accelerate``).
    """

    def __init__(self, policy: nn.Module, tokenizer, reward, prompts: Sequence[str],
                 config: PPOConfig = PPOConfig(), ref_policy: nn.Module | None = None,
                 extra_metrics: Callable[[list[str], list[str]], dict] | None = None,
                 device: str | torch.device | None = None, accelerator=None):
        from accelerate import Accelerator

        self.config = c = config
        device = get_device(device)  # clear error for cuda without CUDA
        if accelerator is None:
            use_bf16 = c.bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported()
            accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision="bf16" if use_bf16 else "no")
        self.accelerator = acc = accelerator
        self.device = acc.device
        self.world_size, self.rank = acc.num_processes, acc.process_index
        self.tokenizer = tokenizer
        self.prompts = list(prompts)
        self.reward = reward
        self.extra_metrics = extra_metrics
        self._check_sizes()
        if hasattr(reward, "tokenizer"):
            from rlhf_utils.reward import check_same_tokenizer

            check_same_tokenizer(reward.tokenizer, tokenizer)
        if isinstance(reward, nn.Module):
            reward.to(self.device).eval().requires_grad_(False)  # scored on this process's device, never trained
        elif not callable(reward):
            raise TypeError("reward must be a reward model (with .score and .tokenizer) or a callable "
                            "reward_fn(prompts, completions) -> scores [B]")
        self._check_prompts(policy)

        policy = policy.to(self.device)
        if c.lora_r > 0:
            from peft import LoraConfig, get_peft_model

            if ref_policy is not None:
                raise ValueError("With LoRA the reference is the policy with its adapters off: pass no ref_policy.")
            policy = get_peft_model(policy, LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=0.0,
                                                       target_modules="all-linear", task_type="CAUSAL_LM"))
            self.ref_policy = None
        else:
            self.ref_policy = copy.deepcopy(policy) if ref_policy is None else ref_policy.to(self.device)
            self.ref_policy.eval().requires_grad_(False)
        model = PolicyWithValueHead(policy).to(self.device).eval()  # eval: dropout off (Huang et al. 2024)
        _check_forward_matches(model)
        params = [p for p in model.parameters() if p.requires_grad]
        # fused: one kernel for all parameters (same update as the loop; ~1 ms less per step on CPU)
        optimizer = torch.optim.Adam(params, lr=c.lr, eps=c.adam_eps, fused=self.device.type in ("cpu", "cuda"))
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.kl_ctl = (AdaptiveKLController(c.init_kl_coef, c.kl_target, c.kl_horizon) if c.adaptive_kl
                       else FixedKLController(c.init_kl_coef))
        self.prompt_gen = torch.Generator().manual_seed(c.seed)  # the same on every process
        self.sample_gen = torch.Generator(device=self.device).manual_seed(c.seed + 1_000_003 * (self.rank + 1))
        self.shuffle_gen = torch.Generator().manual_seed(c.seed + 2_000_003 * (self.rank + 1))
        self.step_count = 0
        self.total_steps = c.steps  # length of the learning-rate schedule
        self.history: list[dict] = []

    # ---- checks -----------------------------------------------------------------------

    def _check_sizes(self) -> None:
        c, w = self.config, self.world_size
        if c.batch_size % c.mini_batch_size:
            divisors = [d for d in range(1, c.batch_size + 1) if c.batch_size % d == 0]
            raise ValueError(
                f"mini_batch_size={c.mini_batch_size} does not divide batch_size={c.batch_size}: "
                f"every rollout must split into whole minibatches. Pick one of {divisors}.")
        if c.batch_size % w or c.mini_batch_size % (w * c.gradient_accumulation_steps):
            raise ValueError(
                f"With {w} process(es) and gradient_accumulation_steps={c.gradient_accumulation_steps}, "
                f"mini_batch_size={c.mini_batch_size} (and batch_size={c.batch_size}) must be a multiple of "
                f"{w * c.gradient_accumulation_steps}: change mini_batch_size, gradient_accumulation_steps "
                "or the number of processes.")
        if c.kl_estimator not in ("k1", "k3"):
            raise ValueError(f"kl_estimator must be 'k1' or 'k3', got {c.kl_estimator!r}")
        if not self.prompts:
            raise ValueError("No prompts to train on: pass a non-empty list (e.g. World().prompts(n)).")

    def _check_prompts(self, policy) -> None:
        context = lm.context_length(policy)
        lengths = [1 + len(ids) for ids in self.tokenizer(self.prompts, add_special_tokens=False)["input_ids"]]
        longest = max(range(len(lengths)), key=lengths.__getitem__)
        if lengths[longest] + self.config.max_new_tokens > context:
            raise ValueError(
                f"Prompt {longest} ({self.prompts[longest][:60]!r}...) is {lengths[longest]} tokens long; with "
                f"max_new_tokens={self.config.max_new_tokens} that exceeds the policy's context of {context} "
                f"tokens. Shorten or drop prompts longer than {context - self.config.max_new_tokens} tokens, "
                "or lower max_new_tokens.")

    def _check_finite(self, **tensors: torch.Tensor) -> None:
        for name, t in tensors.items():
            if not bool(torch.isfinite(t).all()):
                raise NonFiniteError(
                    f"PPO step {self.step_count + 1}: {name} is not finite (NaN or inf). Lower the learning "
                    "rate or init_kl_coef, check the reward model's scores, and prefer bf16 to fp16.")

    # ---- helpers ----------------------------------------------------------------------

    @property
    def policy(self) -> nn.Module:
        """The language model being trained (a ``peft`` model with LoRA)."""
        return self.accelerator.unwrap_model(self.model).lm

    @property
    def value_head(self) -> nn.Linear:
        return self.accelerator.unwrap_model(self.model).v_head

    def _sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over processes (identity on one)."""
        return self.accelerator.reduce(t.clone(), "sum") if self.world_size > 1 else t

    def _mean_over_processes(self, stats: dict[str, float]) -> dict[str, float]:
        if self.world_size == 1:
            return stats
        keys = sorted(stats)
        v = torch.tensor([float(stats[k]) for k in keys], device=self.device, dtype=torch.float64)
        v = self.accelerator.reduce(v, "mean")
        return dict(zip(keys, v.tolist()))

    def _ref_context(self):
        if self.ref_policy is None:  # LoRA: the reference is the base model
            return self.policy.disable_adapter()
        return contextlib.nullcontext()

    def score(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        """The reward's scores ``[B]`` (float32, on this trainer's device)."""
        if hasattr(self.reward, "score"):
            s = self.reward.score(prompts, completions)
        else:
            s = self.reward(prompts, completions)
        return torch.as_tensor(s, dtype=torch.float32).to(self.device).reshape(len(prompts))

    def next_prompts(self) -> list[str]:
        """This process's share of the next batch of prompts (drawn with replacement)."""
        c = self.config
        idx = torch.randint(len(self.prompts), (c.batch_size,), generator=self.prompt_gen)
        local = c.batch_size // self.world_size
        return [self.prompts[i] for i in idx[self.rank * local:(self.rank + 1) * local].tolist()]

    # ---- 1-2. rollout and score -------------------------------------------------------

    @torch.no_grad()
    def rollout(self, prompts: list[str]) -> Rollout:
        """Sample completions, score them, and record what the update needs."""
        c, model = self.config, self.accelerator.unwrap_model(self.model)
        fp32 = self.accelerator.mixed_precision == "no"
        with self.accelerator.autocast():
            s = lm.sample(model.lm, self.tokenizer, prompts, c.max_new_tokens, temperature=c.temperature,
                          generator=self.sample_gen, with_hidden=fp32)
            if fp32:
                # the sampler's KV-cache steps computed what a full pass would (to float
                # rounding): reuse its log-probs, and its hidden states for the values, as
                # lm-human-preferences does -- no second pass through the policy.
                logprobs = s.logprobs
                values = model.v_head(s.hidden.to(model.v_head.weight.dtype)).squeeze(-1)
            else:  # bf16: recompute both in one full pass, so the first update's ratio is exactly 1
                input_ids = torch.cat([s.prompt_ids, s.response_ids], 1)  # [B, P+R]
                attention_mask = torch.cat([s.prompt_mask, s.response_mask], 1)  # [B, P+R]
                logits, values = model(input_ids, attention_mask, s.prompt_ids.shape[1] - 1)
                logprobs = lm.selective_log_softmax(logits / c.temperature, s.response_ids) * s.response_mask
            with self._ref_context():
                ref = self.ref_policy if self.ref_policy is not None else model.lm
                ref_logprobs = lm.response_logprobs(ref, s.prompt_ids, s.prompt_mask, s.response_ids,
                                                    s.response_mask, temperature=c.temperature)
        mask = s.response_mask.float()
        scores = apply_missing_eos_penalty(self.score(prompts, s.texts), s.ended, c.missing_eos_penalty)
        return Rollout(list(prompts), s.texts, s.prompt_ids, s.prompt_mask, s.response_ids, s.response_mask,
                       logprobs.float() * mask, ref_logprobs.float() * mask, values.float() * mask, scores, s.ended)

    # ---- 3-5. rewards, advantages, update -----------------------------------------------

    def update(self, ro: Rollout) -> dict[str, float]:
        """Rewards with the KL penalty, GAE, whitening, then ``ppo_epochs`` of minibatch updates.

        ``ro`` is this process's share of the batch. Returns the step's statistics
        (averaged over processes) without moving the KL controller.
        """
        c = self.config
        self._check_finite(scores=ro.scores, logprobs=ro.logprobs, ref_logprobs=ro.ref_logprobs, values=ro.values)
        mask = ro.response_mask.float()  # [B, R]
        rewards, non_score = kl_penalty_rewards(ro.scores, ro.logprobs, ro.ref_logprobs, mask,
                                                self.kl_ctl.value, c.kl_estimator)
        if c.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False, all_reduce_sum=self._sum)
        advantages, returns = gae_advantages(ro.values, rewards, mask, c.gamma, c.lam)  # [B, R]
        advantages = masked_whiten(advantages, mask, all_reduce_sum=self._sum)
        self._check_finite(advantages=advantages, returns=returns)

        if c.anneal_lr:  # linearly to 0 over the run (train(steps=...) sets its length)
            for group in self.optimizer.param_groups:
                group["lr"] = c.lr * max(0.0, 1.0 - self.step_count / self.total_steps)
        input_ids = torch.cat([ro.prompt_ids, ro.response_ids], 1)  # [B, P+R]
        attention_mask = torch.cat([ro.prompt_mask, ro.response_mask], 1)  # [B, P+R]
        start = ro.prompt_ids.shape[1] - 1
        local_batch = len(ro)
        local_mini = c.mini_batch_size // self.world_size
        micro = local_mini // c.gradient_accumulation_steps
        sums = dict.fromkeys(["policy/approx_kl", "policy/clipfrac", "policy/entropy", "loss/policy",
                              "val/vf_loss", "val/clipfrac"], 0.0)
        n_minibatches = 0
        for _ in range(c.ppo_epochs):
            order = torch.randperm(local_batch, generator=self.shuffle_gen)
            for lo in range(0, local_batch, local_mini):
                mb = order[lo:lo + local_mini]
                # tokens in the whole minibatch, over processes: every micro-batch's loss is
                # its token sum divided by this, so the gradient is the token mean of the
                # minibatch however it is split (DDP then averages over processes).
                num_tokens = self._sum(mask[mb].sum()) / self.world_size
                self.optimizer.zero_grad(set_to_none=True)
                for k in range(c.gradient_accumulation_steps):
                    j = mb[k * micro:(k + 1) * micro]
                    last = k == c.gradient_accumulation_steps - 1
                    sync = contextlib.nullcontext() if last else self.accelerator.no_sync(self.model)
                    with sync, self.accelerator.autocast():
                        logits, vpred = self.model(input_ids[j], attention_mask[j], start)
                        logits = logits.float() / c.temperature
                        new_logprobs = lm.selective_log_softmax(logits, ro.response_ids[j])  # [b, R]
                        m = mask[j]
                        pg_loss, pg_stats = ppo_policy_loss(new_logprobs, ro.logprobs[j], advantages[j], m,
                                                            c.cliprange, num_tokens)
                        vf_loss, vf_stats = ppo_value_loss(vpred.float(), ro.values[j], returns[j], m,
                                                           c.cliprange_value, num_tokens)
                        if c.ent_coef:
                            entropy = lm.entropy_from_logits(logits)
                        else:
                            with torch.no_grad():
                                entropy = lm.entropy_from_logits(logits)
                        ent = (entropy * m).sum() / num_tokens
                        loss = pg_loss + c.vf_coef * vf_loss - c.ent_coef * ent
                        self._check_finite(loss=loss)
                        self.accelerator.backward(loss)
                    share = float(m.sum() / num_tokens)  # this micro-batch's share of the minibatch
                    sums["policy/approx_kl"] += float(pg_stats["approx_kl"]) * share
                    sums["policy/clipfrac"] += float(pg_stats["clipfrac"]) * share
                    sums["policy/entropy"] += float(ent.detach())
                    sums["loss/policy"] += float(pg_loss.detach())
                    sums["val/vf_loss"] += float(vf_loss.detach())
                    sums["val/clipfrac"] += float(vf_stats["clipfrac"]) * share
                grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), c.max_grad_norm)
                self._check_finite(grad_norm=torch.as_tensor(grad_norm))
                self.optimizer.step()
                n_minibatches += 1

        kl = kl_estimators(ro.logprobs, ro.ref_logprobs)
        stats = {k: v / n_minibatches for k, v in sums.items()}
        stats.update({
            "objective/kl": float((kl["k1"] * mask).sum(1).mean()),
            "objective/kl_k2": float((kl["k2"] * mask).sum(1).mean()),
            "objective/kl_k3": float((kl["k3"] * mask).sum(1).mean()),
            "objective/scores": float(ro.scores.mean()),
            "objective/non_score_reward": float(non_score.sum(1).mean()),
            "objective/rlhf_reward": float((ro.scores + non_score.sum(1)).mean()),
            "objective/kl_coef": self.kl_ctl.value,
            "val/explained_variance": masked_explained_variance(ro.values, returns, mask),
            "val/eos_fraction": float(ro.ended.float().mean()),
            "objective/response_length": float(mask.sum(1).mean()),
            "lr": self.optimizer.param_groups[0]["lr"],
        })
        return self._mean_over_processes(stats)

    def step(self) -> dict[str, float]:
        """One PPO iteration: rollout, score, update, move beta. Returns the step's statistics."""
        t0 = time.perf_counter()
        ro = self.rollout(self.next_prompts())
        t1 = time.perf_counter()
        stats = self.update(ro)
        t2 = time.perf_counter()
        if self.extra_metrics is not None:
            stats.update(self._mean_over_processes(dict(self.extra_metrics(ro.prompts, ro.texts))))
        self.kl_ctl.update(stats["objective/kl"], self.config.batch_size)
        self.step_count += 1
        stats.update({"step": self.step_count, "time/rollout": t1 - t0, "time/update": t2 - t1,
                      "time/step": time.perf_counter() - t0})
        self.history.append(stats)
        return stats

    def train(self, steps: int | None = None, callback: Callable[[dict], None] | None = None,
              progress: bool = True, save_dir: str | Path | None = None, save_every: int = 0) -> list[dict]:
        """Run until ``steps`` iterations are done (``config.steps`` by default), counting the
        ones already done (a resumed trainer carries on). ``callback(stats)`` after each step
        (live plots); with ``save_dir`` and ``save_every``, a checkpoint every so many steps."""
        from tqdm.auto import tqdm

        total = self.config.steps if steps is None else steps
        self.total_steps = max(total, 1)
        bar = tqdm(total=total, initial=self.step_count, desc="PPO",
                   disable=not progress or not self.accelerator.is_main_process)
        try:
            while self.step_count < total:
                stats = self.step()
                bar.update(1)
                bar.set_postfix({"score": f"{stats['objective/scores']:.2f}", "kl": f"{stats['objective/kl']:.2f}",
                                 **({"gold": f"{stats['gold/mean']:.2f}"} if "gold/mean" in stats else {})})
                if save_dir is not None and save_every and self.step_count % save_every == 0:
                    self.save_state(save_dir)
                if callback is not None:
                    callback(stats)
        finally:
            bar.close()
        return self.history

    # ---- checkpoints ------------------------------------------------------------------

    def _fingerprint(self) -> dict:
        return {"config": dataclasses.asdict(self.config), "num_processes": self.world_size,
                "params": {n: list(p.shape) for n, p in self.accelerator.unwrap_model(self.model).named_parameters()
                           if p.requires_grad}}

    def save_state(self, path: str | Path) -> Path:
        """Everything a resumed run needs to continue exactly: trainable weights (value head
        included), optimizer, KL controller, every random generator, step and history.
        Written atomically (a temporary folder renamed into place)."""
        from accelerate.utils import gather_object
        from safetensors.torch import save_file

        path = Path(path)
        gens = gather_object([[self.sample_gen.get_state().tolist(), self.shuffle_gen.get_state().tolist()]])
        if self.accelerator.is_main_process:
            with lm.atomic_folder(path) as tmp:
                model = self.accelerator.unwrap_model(self.model)
                save_file({n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad},
                          str(tmp / PARAMS_FILE))
                torch.save(self.optimizer.state_dict(), tmp / OPTIMIZER_FILE)
                state = {"format": "rlhf_utils.ppo/1", "step": self.step_count, **self._fingerprint(),
                         "kl_ctl": self.kl_ctl.state_dict(), "history": self.history,
                         "prompt_gen": self.prompt_gen.get_state().tolist(), "rank_gens": gens}
                (tmp / STATE_FILE).write_text(json.dumps(state))
        self.accelerator.wait_for_everyone()
        return path

    def load_state(self, path: str | Path) -> "PPOTrainer":
        """Continue from :meth:`save_state`'s folder. The trainer must have been built like
        the one that saved it (same config except ``steps``, same model, same processes)."""
        from safetensors.torch import load_file

        path = Path(path)
        missing = [f for f in (STATE_FILE, PARAMS_FILE, OPTIMIZER_FILE) if not (path / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{path} is not a complete PPO checkpoint (missing {', '.join(missing)}); "
                                    "it is written by PPOTrainer.save_state / train(save_dir=..., save_every=...).")
        state = json.loads((path / STATE_FILE).read_text())
        now = self._fingerprint()
        diffs = [f"{k}: saved {state['config'].get(k)!r}, now {v!r}" for k, v in now["config"].items()
                 if k not in CONFIG_KEYS_FREE_ON_RESUME and state["config"].get(k) != v]
        if state["num_processes"] != now["num_processes"]:
            diffs.append(f"processes: saved {state['num_processes']}, now {now['num_processes']}")
        if state["params"] != now["params"]:
            diffs.append("the trainable parameters (names or shapes) differ: another model or LoRA setting")
        if diffs:
            raise ValueError(f"Cannot resume from {path}: it was saved by a run with another configuration ("
                             + "; ".join(diffs) + "). Resume with the same PPOConfig, model and number of "
                             "processes, or start a fresh run in another folder.")
        model = self.accelerator.unwrap_model(self.model)
        saved = load_file(str(path / PARAMS_FILE))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if p.requires_grad:
                    p.copy_(saved[n].to(p.device))
        self.optimizer.load_state_dict(torch.load(path / OPTIMIZER_FILE, map_location=self.device, weights_only=True))
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.prompt_gen.set_state(torch.tensor(state["prompt_gen"], dtype=torch.uint8))
        sample_state, shuffle_state = state["rank_gens"][self.rank]
        self.sample_gen.set_state(torch.tensor(sample_state, dtype=torch.uint8))
        self.shuffle_gen.set_state(torch.tensor(shuffle_state, dtype=torch.uint8))
        self.step_count, self.history = state["step"], state["history"]
        return self

    def save_policy(self, path: str | Path) -> Path:
        """The trained policy as a Hugging Face folder (LoRA merged in), plus its value head."""
        from safetensors.torch import save_file

        path = Path(path)
        if self.accelerator.is_main_process:
            policy = self.policy
            if hasattr(policy, "merge_and_unload"):
                policy = copy.deepcopy(policy).merge_and_unload()
            lm.save_checkpoint(policy, self.tokenizer, path)
            head = self.value_head
            save_file({"weight": head.weight.detach().cpu().contiguous(), "bias": head.bias.detach().cpu().contiguous()},
                      str(path / VALUE_HEAD_FILE))
        self.accelerator.wait_for_everyone()
        return path


# --------------------------------------------------------------------------------------
# The course's task, and the command line
# --------------------------------------------------------------------------------------


def world_metrics(world) -> Callable[[list[str], list[str]], dict]:
    """``extra_metrics`` for the synthetic world: the gold ("human") reward of each step's
    completions and the share the grammar accepts (``gold/mean``, ``gold/grammatical``)."""

    def metrics(prompts: list[str], completions: list[str]) -> dict:
        analyses = [world.analyse(c, p) for p, c in zip(prompts, completions)]
        return {"gold/mean": sum(a.gold_reward for a in analyses) / len(analyses),
                "gold/grammatical": sum(a.grammatical for a in analyses) / len(analyses)}

    return metrics


def gold_reward_fn(world) -> RewardFn:
    """The world's gold reward as a ``reward_fn`` (training on the truth: an upper bound)."""

    def reward_fn(prompts: list[str], completions: list[str]) -> torch.Tensor:
        return torch.tensor(world.gold_rewards(list(completions), list(prompts)), dtype=torch.float32)

    return reward_fn


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m rlhf_utils.ppo``: PPO on the SFT policy against the reward model.

    The same command runs on several GPUs under Hugging Face accelerate, or on several CPU
    processes under torchrun (accelerate's own multi-CPU launcher needs MPI); the trainer's
    ``Accelerator`` picks the processes up either way::

        accelerate launch --multi_gpu --num_processes 2 -m rlhf_utils.ppo --scale full
        torchrun --nproc_per_node 2 -m rlhf_utils.ppo --device cpu
    """
    import argparse

    from rlhf_utils.config import checkpoints_dir, get_preset, seed_everything
    from rlhf_utils.world import World

    ap = argparse.ArgumentParser(prog="python -m rlhf_utils.ppo", description=main.__doc__.splitlines()[0])
    ap.add_argument("--scale", default=None, help="quick or full (default: $RLHF_SCALE, else from the hardware)")
    ap.add_argument("--policy", default=None, help="SFT checkpoint folder or hub id (default: checkpoints/sft)")
    ap.add_argument("--reward", default=None,
                    help="reward-model folder (default: checkpoints/reward), or 'gold' for the world's gold reward")
    ap.add_argument("--out", default=None, help="where the trained policy goes (default: checkpoints/ppo)")
    ap.add_argument("--steps", type=int, default=None, help="PPO iterations (default: the preset's)")
    ap.add_argument("--lora-r", type=int, default=None, help="LoRA rank (0: full fine-tuning)")
    ap.add_argument("--save-every", type=int, default=10, help="steps between resumable checkpoints (0: none)")
    ap.add_argument("--resume", action="store_true", help="continue from <out>-state if it exists")
    ap.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    args = ap.parse_args(argv)

    preset = get_preset(args.scale)
    changes = {k: v for k, v in (("steps", args.steps), ("lora_r", args.lora_r)) if v is not None}
    config = dataclasses.replace(preset.ppo, **changes)
    seed_everything(config.seed)
    world = World(preset.world.seed)
    policy, tokenizer = lm.load_checkpoint(args.policy or checkpoints_dir() / "sft", device="cpu")
    if args.reward == "gold":
        reward = gold_reward_fn(world)
    else:
        from rlhf_utils.reward import RewardModel

        reward = RewardModel.load(args.reward or checkpoints_dir() / "reward", device="cpu")
    out = Path(args.out) if args.out else checkpoints_dir() / "ppo"
    state_dir = out.with_name(out.name + "-state")
    trainer = PPOTrainer(policy, tokenizer, reward, world.prompts(config.n_prompts, seed=config.seed), config,
                         extra_metrics=world_metrics(world), device=args.device)
    if args.resume and (state_dir / STATE_FILE).is_file():
        trainer.load_state(state_dir)
    t0 = time.perf_counter()
    history = trainer.train(save_dir=state_dir, save_every=args.save_every)
    trainer.save_policy(out)
    if trainer.accelerator.is_main_process and history:
        first, last = history[0], history[-1]
        print(f"{trainer.step_count} PPO steps on {trainer.world_size} process(es) in "
              f"{time.perf_counter() - t0:.0f} s; saved to {out}")
        for key in ("objective/scores", "gold/mean", "gold/grammatical", "objective/kl", "objective/kl_coef"):
            print(f"  {key:<20} {first[key]:8.3f} -> {last[key]:8.3f}")


if __name__ == "__main__":
    main()
