"""PPO for language models: the RLHF fine-tune (rollout, KL penalty, GAE, clipped update).

One iteration of :meth:`PPOTrainer.step` is steps 3-5 of the usual RLHF recipe (an SFT
policy acts, a learned reward scores it, PPO improves it, repeat):

1. **rollout** -- a batch of prompts, left-padded, is continued by the policy with the KV
   cache (:func:`rlhf_utils.lm.sample`), stopping at EOS or ``max_new_tokens``; the response
   mask is 1 up to and including the first EOS;
2. **score** -- the reward model reads prompt + completion and scores the last real token
   (the EOS); a completion that never produced EOS loses ``missing_eos_penalty``;
3. **KL-shaped reward** -- per response token ``-beta * (log pi - log pi_ref)``, plus the
   score on the last real token (Ziegler et al. 2019, eq. 2; Stiennon et al. 2020);
4. **advantages** -- GAE(gamma = 1, lambda = 0.95) over response tokens only, then whitened
   over the batch (Schulman et al. 2016; lm-human-preferences);
5. **update** -- ``update_epochs`` passes of minibatches of the clipped surrogate (Schulman
   et al. 2017, eq. 7: ``min(r A, clip(r, 1-eps, 1+eps) A)`` -- a *ratio* times an advantage,
   not a ratio times a log-probability), the clipped value loss, an optional entropy bonus,
   gradient clipping; then the adaptive KL controller moves beta towards its target.

The losses, GAE and diagnostics are :mod:`rlhf_utils.rl`'s, the same ones notebook 02's
CartPole agent uses; the per-token KL penalty and beta's controllers are
:mod:`rlhf_utils.reward_shaping`, the value head :mod:`rlhf_utils.value_head`. This module
is the loop itself.

**Value function: a zero-initialised value head on the policy's own transformer**, as
lm-human-preferences (``Policy`` with ``scalar_heads=['value']``). Huang et al. (2024) train
a separate critic initialised from the reward model instead, which keeps the value loss
off the policy's features but doubles the forward/backward work and the memory. With the
shared trunk one forward per minibatch gives log-probabilities, entropies and values; the
reward is normalised to mean 0 under the SFT policy, so a head that starts at exactly 0
starts at the right answer; ``vf_coef`` keeps the value gradient small.

References: Ziegler et al. (2019), "Fine-Tuning Language Models from Human Preferences", and
``openai/lm-human-preferences``; Stiennon et al. (2020); Ouyang et al. (2022, InstructGPT);
Huang et al. (2024), "The N+ implementation details of RLHF with PPO".

Checkpoints and exact resume are :mod:`rlhf_utils.ppo_checkpoint`; the command line
(``python -m rlhf_utils.ppo``, also under ``accelerate launch`` / ``torchrun``) is
:mod:`rlhf_utils.ppo_cli`. Shapes: B = sequences, P = prompt length, R = response length.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn
from torch.profiler import record_function

from rlhf_utils import lm, rl
from rlhf_utils.checked_compile import checked_compile
from rlhf_utils.checks import check_int, check_texts
from rlhf_utils.config import PPOConfig, get_device, get_dtype
from rlhf_utils.ops import explained_variance, kl_estimate, logprobs_and_entropy, masked_mean, masked_sum, masked_whiten
from rlhf_utils.reward_shaping import (AdaptiveKLController, FixedKLController, apply_missing_eos_penalty,
                                       kl_penalty_rewards)
from rlhf_utils.value_head import PolicyWithValueHead, check_forward_matches

RewardFn = Callable[[list[str], list[str]], "torch.Tensor | Sequence[float]"]

STAT_NAMES = ("policy/approx_kl", "policy/clipfrac", "policy/entropy", "loss/policy", "loss/value", "val/clipfrac")
"""the update's statistics, each the mean over minibatches of a token mean"""

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
        picked = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            picked[f.name] = value[idx.to(value.device)] if isinstance(value, torch.Tensor) else [
                value[i] for i in idx.tolist()]
        return Rollout(**picked)

    def trimmed(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """``(input_ids, attention_mask, start, width)`` of the ``[prompt | response]`` batch of
        ``rows``, cut to the columns they use: from the first prompt column any of them fills to
        the end of the longest of their ``width`` response tokens; ``start`` is the last prompt
        column in it. The columns dropped are padding in every row, masked anyway."""
        prompt_mask, response_mask = self.prompt_mask[rows], self.response_mask[rows]
        first = int(prompt_mask.any(0).float().argmax())
        width = int(response_mask.sum(1).max())
        input_ids = torch.cat([self.prompt_ids[rows, first:], self.response_ids[rows, :width]], 1)
        attention_mask = torch.cat([prompt_mask[:, first:], response_mask[:, :width]], 1)
        return input_ids, attention_mask, self.prompt_ids.shape[1] - 1 - first, width


# --------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------


class NonFiniteError(FloatingPointError):
    """A NaN or inf appeared in training; the message names the step and the quantity."""


class PPOTrainer:
    """PPO fine-tuning of ``policy`` (trained in place) against ``reward``.

    ``reward`` is a reward model with ``.score(prompts, completions) -> [B]`` and a
    ``.tokenizer`` (:class:`rlhf_utils.reward.RewardModel`, its normalisation stored with it),
    or any callable ``reward_fn(prompts, completions) -> [B]`` (e.g. the world's gold reward).
    ``prompts`` is the pool each iteration draws ``config.batch_size`` prompts from.
    ``ref_policy`` defaults to a frozen copy of ``policy`` as it is now (with LoRA, the same
    model with its adapters switched off). ``extra_metrics(prompts, completions) -> dict``
    adds figures to each step's log (the course logs the gold reward this way).

    Runs on one process, or under ``accelerate launch`` on several: each process samples its
    share of the batch and DDP averages the gradients (Hugging Face ``accelerate``). With
    ``config.torch_compile`` the update's forward is compiled (:attr:`compiled` says whether it
    took); everything else runs as written here.
    """

    def __init__(self, policy: nn.Module, tokenizer, reward, prompts: Sequence[str],
                 config: PPOConfig = PPOConfig(), ref_policy: nn.Module | None = None,
                 extra_metrics: Callable[[list[str], list[str]], dict] | None = None,
                 device: str | torch.device | None = None, accelerator=None):
        from accelerate import Accelerator

        self.config = c = config
        device = get_device(device)  # a clear error for cuda without CUDA
        if accelerator is None:
            bf16 = c.bf16 and get_dtype(device) == torch.bfloat16
            accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision="bf16" if bf16 else "no")
        self.accelerator = acc = accelerator
        self.device, self.world_size, self.rank = acc.device, acc.num_processes, acc.process_index
        if not isinstance(config, PPOConfig):
            raise TypeError(f"config must be a rlhf_utils.config.PPOConfig, got {type(config).__name__}")
        prompts = check_texts("prompts", prompts, "prompts")  # one str would be read as its characters
        self.tokenizer, self.prompts, self.reward, self.extra_metrics = tokenizer, prompts, reward, extra_metrics
        self._check_sizes()
        self._check_reward(reward)
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
        check_forward_matches(model)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=c.learning_rate, eps=c.adam_eps,
                                     fused=self.device.type in ("cpu", "cuda"))  # one kernel for all parameters
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.forward = self._compiled_forward() if c.torch_compile else self.model  # the update's forward
        self.kl_ctl = (AdaptiveKLController(c.init_kl_coef, c.kl_target, c.kl_horizon) if c.adaptive_kl
                       else FixedKLController(c.init_kl_coef))
        self.prompt_gen = torch.Generator().manual_seed(c.seed)  # the same on every process
        self.sample_gen = torch.Generator(device=self.device).manual_seed(c.seed + 1_000_003 * (self.rank + 1))
        self.shuffle_gen = torch.Generator().manual_seed(c.seed + 2_000_003 * (self.rank + 1))
        self.step_count = 0
        self.total_steps = c.steps  # length of the learning-rate schedule
        self.timing: dict[str, float] = {}  # seconds of the last rollout's sampling
        self.history: list[dict] = []

    # ---- checks -----------------------------------------------------------------------

    def _check_sizes(self) -> None:
        c, w = self.config, self.world_size  # the config checked itself; here: what the processes add
        mini = c.batch_size // c.num_minibatches
        if c.batch_size % w or mini % (w * c.gradient_accumulation_steps):
            raise ValueError(
                f"With {w} process(es) and gradient_accumulation_steps={c.gradient_accumulation_steps}, the "
                f"minibatch of batch_size / num_minibatches = {mini} (and batch_size={c.batch_size}) must be a "
                f"multiple of {w * c.gradient_accumulation_steps}: change num_minibatches, "
                "gradient_accumulation_steps or the number of processes.")
        if c.advantage_estimator != "gae" and (c.group_size < 2 or (c.batch_size // w) % c.group_size):
            raise ValueError(
                f"advantage_estimator={c.advantage_estimator!r} takes its baseline from the other completions of a "
                f"prompt: group_size={c.group_size} must be at least 2 and divide the per-process batch "
                f"{c.batch_size // w} (e.g. group_size=4 with batch_size=64), or use advantage_estimator='gae'.")

    def _check_reward(self, reward) -> None:
        if hasattr(reward, "tokenizer"):
            from rlhf_utils.reward import check_same_tokenizer

            check_same_tokenizer(reward.tokenizer, self.tokenizer)
        if isinstance(reward, nn.Module):
            reward.to(self.device).eval().requires_grad_(False)  # scored on this process's device, never trained
        elif not callable(reward):
            raise TypeError("reward must be a reward model (with .score and .tokenizer) or a callable "
                            "reward_fn(prompts, completions) -> scores [B]")

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
        return dict(zip(keys, self.accelerator.reduce(v, "mean").tolist()))

    def reference_logprobs(self, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
        """log pi_ref of each response token ``[B, R]`` (with LoRA: the policy, adapters off)."""
        lora = self.ref_policy is None
        with self.policy.disable_adapter() if lora else contextlib.nullcontext():
            return lm.response_logprobs(self.policy if lora else self.ref_policy, prompt_ids, prompt_mask,
                                        response_ids, response_mask, temperature=self.config.temperature)

    def score(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        """The reward's scores ``[B]`` (float32, on this trainer's device)."""
        s = self.reward.score(prompts, completions) if hasattr(self.reward, "score") else self.reward(prompts,
                                                                                                      completions)
        s = torch.as_tensor(s, dtype=torch.float32).to(self.device)
        if s.numel() != len(prompts):
            raise ValueError(f"the reward gave {s.numel()} scores (shape {tuple(s.shape)}) for {len(prompts)} "
                             "completions: it must return one score per (prompt, completion)")
        return s.reshape(len(prompts))

    def next_prompts(self) -> list[str]:
        """This process's share of the next batch of prompts (drawn with replacement), each one
        ``group_size`` times in a row (a group: the critic-free methods' baseline)."""
        c = self.config
        idx = torch.randint(len(self.prompts), (c.batch_size // c.group_size,), generator=self.prompt_gen)
        idx = idx.repeat_interleave(c.group_size)
        local = c.batch_size // self.world_size
        return [self.prompts[i] for i in idx[self.rank * local:(self.rank + 1) * local].tolist()]

    # ---- the policy's forward ------------------------------------------------------------

    def policy_outputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, start: int,
                       response_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logprobs, entropy, values)``, each ``[B, R]``, of the responses in a ``[prompt |
        response]`` batch whose last prompt token is at column ``start``: one pass of the
        transformer, the log-softmax taken once at the sampling temperature."""
        logits, values = self.forward(input_ids, attention_mask, start)  # [B, R, V], [B, R]
        logprobs, entropy = logprobs_and_entropy(logits.float() / self.config.temperature, response_ids)
        return logprobs, entropy, values.float()

    @property
    def compiled(self) -> bool:
        """True if the update's forward runs compiled (``torch_compile`` asked and it worked)."""
        return self.forward is not self.model

    def _compiled_forward(self) -> Callable:
        """The update's forward compiled (shapes dynamic: each minibatch has its own width),
        checked once here against the uncompiled one on a small batch, so that a failure shows
        at the start; on any failure a warning and the uncompiled forward
        (:func:`rlhf_utils.checked_compile.checked_compile`)."""
        vocab = self.accelerator.unwrap_model(self.model).lm.get_input_embeddings().weight.shape[0]
        ids = torch.arange(2 * 8, device=self.device).view(2, 8) % vocab  # [2, 8]
        return checked_compile(
            self.model, (ids, torch.ones_like(ids), 2), lambda logits, values: logits.float().logsumexp(-1).sum()
            + values.float().sum(), tolerance=1e-3 if self.accelerator.mixed_precision == "no" else 5e-2,
            autocast=self.accelerator.autocast, no_sync=lambda: self.accelerator.no_sync(self.model), what="the policy")

    # ---- 1-2. rollout and score -------------------------------------------------------

    @torch.no_grad()
    def rollout(self, prompts: list[str]) -> Rollout:
        """Sample completions, score them, and record what the update needs."""
        c, model = self.config, self.accelerator.unwrap_model(self.model)
        fp32 = self.accelerator.mixed_precision == "no"
        t0 = time.perf_counter()
        with self.accelerator.autocast():
            with record_function("ppo/rollout/sample"):
                s = lm.sample(model.lm, self.tokenizer, prompts, c.max_new_tokens, temperature=c.temperature,
                              generator=self.sample_gen, with_hidden=fp32)
            self.timing["time/sample"] = time.perf_counter() - t0
            with record_function("ppo/rollout/values"):
                if fp32:
                    # the sampler's KV-cache steps computed what a full pass would (to float rounding):
                    # reuse its log-probs, and its hidden states for the values, as lm-human-preferences
                    # does -- no second pass through the policy.
                    logprobs = s.logprobs
                    values = model.v_head(s.hidden.to(model.v_head.weight.dtype)).squeeze(-1)
                else:  # bf16: recompute both in one full pass, so the first update's ratio is exactly 1
                    input_ids = torch.cat([s.prompt_ids, s.response_ids], 1)  # [B, P+R]
                    attention_mask = torch.cat([s.prompt_mask, s.response_mask], 1)  # [B, P+R]
                    logprobs, _, values = self.policy_outputs(input_ids, attention_mask, s.prompt_ids.shape[1] - 1,
                                                              s.response_ids)
            with record_function("ppo/rollout/reference"):
                ref_logprobs = self.reference_logprobs(s.prompt_ids, s.prompt_mask, s.response_ids, s.response_mask)
        mask = s.response_mask.float()
        with record_function("ppo/rollout/reward"):
            scores = apply_missing_eos_penalty(self.score(prompts, s.texts), s.ended, c.missing_eos_penalty)
        return Rollout(list(prompts), s.texts, s.prompt_ids, s.prompt_mask, s.response_ids, s.response_mask,
                       logprobs.float() * mask, ref_logprobs.float() * mask, values.float() * mask, scores, s.ended)

    # ---- 3-4. rewards and advantages --------------------------------------------------

    def advantages(self, ro: Rollout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(advantages, returns, non_score_rewards)``, each ``[B, R]``: the KL-shaped rewards,
        then GAE over the response tokens (``advantage_estimator="gae"``) or one advantage per
        completion from its group (``"rloo"``, ``"grpo"``; returns are then 0: no critic), and
        whitening over the global batch (``norm_adv``)."""
        c = self.config
        mask = ro.response_mask.float()  # [B, R]
        rewards, non_score = kl_penalty_rewards(ro.scores, ro.logprobs, ro.ref_logprobs, mask,
                                                self.kl_ctl.value, c.kl_estimator)
        if c.kl_in == "loss":  # the KL is in the loss instead (still reported as non_score)
            rewards = rewards - non_score
        if c.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False, all_reduce_sum=self._sum)
        if c.advantage_estimator == "gae":
            advantages, returns = rl.token_gae_advantages(rewards, ro.values, mask, c.gamma, c.gae_lambda)
        else:  # the sequence's reward (score and KL penalty), one advantage for each of its tokens
            sequence = rewards.sum(1)  # [B]
            per_completion = (rl.rloo_advantages(sequence, c.group_size) if c.advantage_estimator == "rloo"
                              else rl.grpo_advantages(sequence, c.group_size, c.scale_rewards))
            advantages, returns = per_completion[:, None] * mask, torch.zeros_like(mask)
        if c.norm_adv:
            advantages = masked_whiten(advantages, mask, all_reduce_sum=self._sum)
        self._check_finite(advantages=advantages, returns=returns)
        return advantages, returns, non_score

    # ---- 5. the update ----------------------------------------------------------------

    def update(self, ro: Rollout) -> dict[str, float]:
        """``update_epochs`` passes of minibatch steps over the rollout ``ro`` (this process's
        share of the batch). Returns the step's statistics, averaged over processes, without
        moving the KL controller."""
        c = self.config
        self._check_finite(scores=ro.scores, logprobs=ro.logprobs, ref_logprobs=ro.ref_logprobs, values=ro.values)
        with record_function("ppo/advantages"):
            advantages, returns, non_score = self.advantages(ro)
        if c.anneal_lr:  # linearly to 0 over the run (train(steps=...) sets its length)
            for group in self.optimizer.param_groups:
                group["lr"] = c.learning_rate * max(0.0, 1.0 - self.step_count / self.total_steps)
        mask = ro.response_mask.float()  # [B, R]
        local_mini = c.batch_size // c.num_minibatches // self.world_size
        micro = local_mini // c.gradient_accumulation_steps
        sums = torch.zeros(len(STAT_NAMES), dtype=torch.float64)
        for epoch in range(c.update_epochs):
            order = torch.randperm(len(ro), generator=self.shuffle_gen)
            for lo in range(0, len(ro), local_mini):
                mb = order[lo:lo + local_mini]
                # real tokens in the whole minibatch, over processes: each micro-batch's loss is
                # its token mean times its share of them, so the gradient is the token mean of
                # the minibatch however it is split (and DDP then averages over processes)
                num_tokens = self._sum(mask[mb].sum()) / self.world_size
                self.optimizer.zero_grad(set_to_none=True)
                for k in range(c.gradient_accumulation_steps):
                    rows = mb[k * micro:(k + 1) * micro]
                    last = k == c.gradient_accumulation_steps - 1
                    with (contextlib.nullcontext() if last else self.accelerator.no_sync(self.model)), \
                            self.accelerator.autocast(), record_function(f"ppo/update/epoch{epoch}"):
                        sums += self._micro_batch_step(ro, rows, advantages, returns, num_tokens, local_mini)
                with record_function("ppo/update/optimizer"):
                    grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), c.max_grad_norm)
                    self._check_finite(grad_norm=torch.as_tensor(grad_norm))
                    self.optimizer.step()

        n_minibatches = c.update_epochs * c.num_minibatches
        stats = dict(zip(STAT_NAMES, (sums / n_minibatches).tolist()))
        kl = {name: float(masked_sum(kl_estimate(ro.logprobs, ro.ref_logprobs, name), mask, dim=1).mean())
              for name in ("k1", "k2", "k3")}  # per sequence
        stats.update({
            "objective/kl": kl["k1"], "objective/kl_k2": kl["k2"], "objective/kl_k3": kl["k3"],
            "objective/scores": float(ro.scores.mean()),
            "objective/non_score_reward": float(non_score.sum(1).mean()),
            "objective/rlhf_reward": float((ro.scores + non_score.sum(1)).mean()),
            "objective/kl_coef": self.kl_ctl.value,
            "val/explained_variance": (explained_variance(ro.values, returns, mask)
                                       if c.advantage_estimator == "gae" else float("nan")),
            "val/eos_fraction": float(ro.ended.float().mean()),
            "objective/response_length": float(mask.sum(1).mean()),
            "charts/learning_rate": self.optimizer.param_groups[0]["lr"],
        })
        return self._mean_over_processes(stats)

    def _micro_batch_step(self, ro: Rollout, rows: torch.Tensor, advantages: torch.Tensor, returns: torch.Tensor,
                          num_tokens: torch.Tensor, n_sequences: int) -> torch.Tensor:
        """Forward and backward of the loss on the sequences ``rows``, part of a minibatch of
        ``n_sequences`` sequences holding ``num_tokens`` tokens; returns their share of the
        step's statistics (:data:`STAT_NAMES`).

        The token losses are averaged as ``loss_aggregation`` says, through per-token weights
        and a scale, so that the micro-batches of a minibatch add up to its loss: "token" --
        weights 1, scale = this micro-batch's share of the tokens; "sequence" -- weights
        1 / length, scale = its share of the sequences; "constant" -- weights 1, scale = its
        tokens over ``n_sequences * max_new_tokens``.

        Only the columns that hold a real token of these rows are computed (and for a plain
        GPT-2 only their real tokens, :func:`rlhf_utils.gpt2_fast.padding_free_hidden_state`): padding
        is masked out of attention and loss, so it changes nothing but the cost
        (``tests/test_ppo.py`` checks the update against an untrimmed reference).
        """
        c = self.config
        input_ids, attention_mask, start, width = ro.trimmed(rows)
        m = ro.response_mask[rows, :width].float()  # [b, R']
        old_logprobs, old_values = ro.logprobs[rows, :width], ro.values[rows, :width]
        adv, ret = advantages[rows, :width], returns[rows, :width]

        logprobs, entropy, values = self.policy_outputs(input_ids, attention_mask, start,
                                                        ro.response_ids[rows, :width])
        share = m.sum() / num_tokens  # these rows' share of the minibatch's tokens
        if c.loss_aggregation == "token":
            weights, scale = m, share
        elif c.loss_aggregation == "sequence":
            weights, scale = m / m.sum(1, keepdim=True), len(rows) / n_sequences
        else:  # "constant"
            weights, scale = m, m.sum() / (n_sequences * c.max_new_tokens)
        pg_loss = scale * rl.ppo_policy_loss(logprobs, old_logprobs, adv, c.clip_coef, weights)
        loss = pg_loss
        vf_loss = torch.zeros(())
        if c.advantage_estimator == "gae":  # the critic-free methods train no value head
            vf_loss = scale * rl.ppo_value_loss(values, old_values, ret, c.vf_clip_coef, weights)
            loss = loss + c.vf_coef * vf_loss
        if c.kl_in == "loss":  # GRPO: beta * KL(pi || pi_ref), estimated on these samples, differentiated
            kl = kl_estimate(logprobs, ro.ref_logprobs[rows, :width], c.kl_estimator)
            loss = loss + self.kl_ctl.value * scale * masked_mean(kl, weights)
        entropy = masked_sum(entropy, m) / num_tokens
        if c.ent_coef:  # without the bonus, no backward pass through the entropy
            loss = loss - c.ent_coef * entropy
        self._check_finite(loss=loss)
        self.accelerator.backward(loss)
        share = float(share)
        return torch.tensor([
            rl.approx_kl(logprobs, old_logprobs, m) * share,
            rl.clip_fraction(logprobs, old_logprobs, c.clip_coef, m) * share,
            float(entropy.detach()), float(pg_loss.detach()), float(vf_loss.detach()),
            0.0 if c.vf_clip_coef is None or c.advantage_estimator != "gae"
            else rl.value_clip_fraction(values, old_values, ret, c.vf_clip_coef, m) * share,
        ], dtype=torch.float64)

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
                      "time/step": time.perf_counter() - t0, **self.timing})
        self.history.append(stats)
        return stats

    def train(self, steps: int | None = None, callback: Callable[[dict], None] | None = None,
              progress: bool = True, save_dir: str | Path | None = None, save_every: int = 0) -> list[dict]:
        """Run until ``steps`` iterations are done (``config.steps`` by default), counting the
        ones already done (a resumed trainer carries on). ``callback(stats)`` after each step
        (live plots); with ``save_dir`` and ``save_every``, a checkpoint every so many steps."""
        from tqdm.auto import tqdm

        total = self.config.steps if steps is None else check_int("steps", steps, 1)
        check_int("save_every", save_every, 0)
        self.total_steps = max(total, 1)
        method = {"gae": "PPO", "rloo": "RLOO", "grpo": "GRPO"}[self.config.advantage_estimator]
        bar = tqdm(total=total, initial=self.step_count, desc=method,
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

    # ---- checkpoints (rlhf_utils.ppo_checkpoint) ----------------------------------------

    def save_state(self, path: str | Path) -> Path:
        """Everything a resumed run needs to continue exactly (:func:`ppo_checkpoint.save_state`)."""
        from rlhf_utils import ppo_checkpoint

        return ppo_checkpoint.save_state(self, path)

    def load_state(self, path: str | Path) -> "PPOTrainer":
        """Continue from :meth:`save_state`'s folder (:func:`ppo_checkpoint.load_state`)."""
        from rlhf_utils import ppo_checkpoint

        return ppo_checkpoint.load_state(self, path)

    def save_policy(self, path: str | Path) -> Path:
        """The trained policy as a Hugging Face folder (:func:`ppo_checkpoint.save_policy`)."""
        from rlhf_utils import ppo_checkpoint

        return ppo_checkpoint.save_policy(self, path)


if __name__ == "__main__":  # python -m rlhf_utils.ppo: the command line lives in ppo_cli
    import sys

    from rlhf_utils.ppo_cli import main

    sys.exit(main())
