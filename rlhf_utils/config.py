"""Scale presets and one config dataclass per algorithm: the one place where sizes live.

The course runs at two scales, picked by one switch:

* ``quick`` -- every notebook in about a minute or two on 2 CPU cores (the default
  without a GPU);
* ``full``  -- the real run, sized for one modern GPU (the default with CUDA).

``RLHF_SCALE=quick|full`` (or the ``scale=`` argument) overrides the default. Each
algorithm has one config dataclass with a docstring per field (the CleanRL ``Args``
style); a :class:`Preset` bundles one of each. Notebooks call :func:`get_preset` and
never hard-code a size. Device, dtype, seeding and where artefacts go are
:mod:`rlhf_utils.runtime`, imported here too (``from rlhf_utils.config import get_device``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import torch

from rlhf_utils.checks import _check_fields, _check_sizes, _divisors, _say, check_int, check_number
from rlhf_utils.runtime import (PROJECT_ROOT, checkpoints_dir, default_threads, feedback_dir,  # noqa: F401
                                get_device, get_dtype, seed_everything)

SCALES = ("quick", "full")

# --------------------------------------------------------------------------------------
# Scale
# --------------------------------------------------------------------------------------


def get_scale(scale: str | None = None) -> str:
    """The scale to run at: the argument, else ``$RLHF_SCALE``, else from the hardware."""
    chosen = scale or os.environ.get("RLHF_SCALE") or ("full" if torch.cuda.is_available() else "quick")
    chosen = str(chosen).strip().lower()
    if chosen not in SCALES:
        raise ValueError(
            f"Unknown scale {chosen!r}: use one of {', '.join(SCALES)} "
            "(set RLHF_SCALE=quick for 2 CPU cores, RLHF_SCALE=full for one GPU)."
        )
    return chosen


# --------------------------------------------------------------------------------------
# One config dataclass per algorithm. Defaults are the quick scale.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorldConfig:
    """The synthetic review world (``rlhf_utils.world``)."""

    seed: int = 0
    """seed of the world's own generator (corpus, prompts)"""
    n_train_reviews: int = 20_000
    """reviews in the language-model corpus"""
    n_eval_reviews: int = 1_000
    """held-out reviews, for perplexity"""

    def __post_init__(self):
        _check_fields(self, ints="n_train_reviews n_eval_reviews")


@dataclass(frozen=True)
class LMConfig:
    """The base language model and its pre-training (``rlhf_utils.lm``)."""

    n_layer: int = 2
    """transformer blocks"""
    n_head: int = 4
    """attention heads per block"""
    n_embd: int = 64
    """width of the residual stream"""
    n_positions: int = 64
    """context length in tokens (a world review is at most ~45 tokens)"""
    dropout: float = 0.0
    """dropout in attention, residual and embeddings"""
    steps: int = 600
    """optimizer steps of pre-training (600 reach ~2% above the world's perplexity)"""
    batch_size: int = 64
    """sequences per step"""
    learning_rate: float = 5e-3
    """peak learning rate (AdamW, linear warm-up then cosine decay)"""
    warmup_steps: int = 50
    """linear warm-up steps"""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to biases and norms)"""
    seed: int = 0
    """seed of initialisation and batch order"""

    def __post_init__(self):
        _check_fields(self, ints="n_layer n_head n_embd n_positions steps batch_size", ints0="warmup_steps",
                      positive="learning_rate", nonneg="weight_decay", unit="dropout")
        if self.n_embd % self.n_head:
            raise ValueError(f"LMConfig.n_embd={self.n_embd} is not a multiple of n_head={self.n_head}: each "
                             f"head gets n_embd / n_head dimensions; pick n_head in {_divisors(self.n_embd, 64)}")


@dataclass(frozen=True)
class SFTConfig:
    """Supervised fine-tuning on demonstrations (notebook 03, ``lm.train_lm(mask_prompt=True)``)."""

    n_demonstrations: int = 2_000
    """(prompt, completion) pairs written by the clean demonstrator"""
    n_heldout: int = 500
    """held-out demonstrations, for the completion and prompt NLL"""
    steps: int = 150
    """optimizer steps (150 take the completion NLL most of the way to the demonstrator's entropy)"""
    batch_size: int = 32
    """pairs per step"""
    learning_rate: float = 5e-4
    """peak learning rate (AdamW, linear warm-up then cosine decay to 10%)"""
    warmup_steps: int = 20
    """linear warm-up steps"""
    n_eval: int = 512
    """prompts whose sampled completions are scored (defect rate, gold reward)"""
    max_new_tokens: int = 48
    """longest completion sampled in the evaluation, in tokens"""
    temperature: float = 1.0
    """sampling temperature of the evaluation (1 = the policy's own distribution)"""
    long_prompt_words: int = 12
    """random words put before each prompt in the "when the mask matters" experiment"""
    seed: int = 0
    """seed of batch order and of evaluation sampling"""

    def __post_init__(self):
        _check_fields(self, ints="n_demonstrations n_heldout steps batch_size n_eval max_new_tokens",
                      ints0="warmup_steps long_prompt_words", positive="learning_rate temperature")


@dataclass(frozen=True)
class CartPoleConfig:
    """Our PPO agent on a gymnasium vector environment (notebook 02, ``rlhf_utils.rl``).

    Defaults are rl-zoo's tuned PPO hyperparameters for CartPole-v1
    (rl-baselines3-zoo ``hyperparams/ppo.yml``), so our agent and Stable-Baselines3's can
    be run with the same settings. Derived sizes: batch = num_envs * num_steps,
    minibatch = batch // num_minibatches, updates = total_timesteps // batch.
    """

    env_id: str = "CartPole-v1"
    """gymnasium environment id (discrete actions)"""
    total_timesteps: int = 20_000
    """environment steps in all (summed over the parallel environments)"""
    seed: int = 0
    """seed of environments, network initialisation, action sampling and minibatch order"""
    num_envs: int = 8
    """parallel environments in the vector environment"""
    num_steps: int = 32
    """steps per environment in each rollout (rollout = num_envs * num_steps transitions)"""
    learning_rate: float = 1e-3
    """Adam learning rate at the start"""
    anneal_lr: bool = True
    """decay the learning rate linearly to 0 over training"""
    anneal_clip: bool = True
    """decay clip_coef linearly to 0 over training (rl-zoo's ``lin_0.2``)"""
    gamma: float = 0.98
    """discount factor, in [0, 1]"""
    gae_lambda: float = 0.8
    """GAE lambda, in [0, 1]: 0 = one-step TD advantage, 1 = Monte-Carlo return minus value"""
    num_minibatches: int = 1
    """minibatches per epoch (must divide num_envs * num_steps)"""
    update_epochs: int = 20
    """passes over each rollout (PPO reuses data; A2C is update_epochs=1, num_minibatches=1)"""
    norm_adv: bool = True
    """normalise advantages to mean 0, std 1 in each minibatch"""
    clip_coef: float = 0.2
    """PPO's epsilon: the ratio is clipped to [1 - clip_coef, 1 + clip_coef]; inf = no clipping"""
    vf_clip_coef: float | None = None
    """how far a value prediction may move from its rollout value before its loss is clipped
    (annealed with ``clip_coef``); None = no value clipping (SB3's default; CleanRL clips)"""
    ent_coef: float = 0.0
    """weight of the entropy bonus"""
    vf_coef: float = 1.0
    """weight of the value loss 1/2 E[(V - R)^2] (1.0 here = SB3's vf_coef 0.5, whose loss has no 1/2)"""
    max_grad_norm: float = 0.5
    """global gradient-norm clipping threshold"""
    adam_eps: float = 1e-5
    """Adam epsilon (1e-5 as CleanRL and SB3, not torch's 1e-8)"""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """hidden layers of the actor and of the (separate) critic MLP, tanh activations"""
    torch_threads: int = 1
    """torch CPU threads while training (1 is fastest for a 64x64 MLP; restored afterwards)"""
    eval_episodes: int = 10
    """episodes of the deterministic (greedy) policy in the final evaluation"""
    text_env_timesteps: int = 5_000
    """SB3 PPO budget on notebook 02's toy text-generation environment (the article used 10,000)"""

    def __post_init__(self):
        _check_fields(self, ints="total_timesteps num_envs num_steps num_minibatches update_epochs torch_threads "
                      "eval_episodes text_env_timesteps", positive="learning_rate clip_coef max_grad_norm adam_eps",
                      nonneg="ent_coef vf_coef", unit="gamma gae_lambda", flags="anneal_lr anneal_clip norm_adv",
                      inf_ok="clip_coef max_grad_norm", optional="vf_clip_coef")
        if not isinstance(self.env_id, str) or not self.env_id:
            raise TypeError(_say("CartPoleConfig.env_id", self.env_id, "must be a gymnasium id, e.g. 'CartPole-v1'"))
        object.__setattr__(self, "hidden_sizes", _check_sizes("CartPoleConfig", "hidden_sizes", self.hidden_sizes))
        if (batch := self.num_envs * self.num_steps) % self.num_minibatches:
            raise ValueError(f"num_minibatches={self.num_minibatches} does not divide the batch of num_envs * num_steps"
                             f" = {self.num_envs} * {self.num_steps} = {batch} transitions: pick one of "
                             f"{_divisors(batch, 64)} (or change num_steps).")


@dataclass(frozen=True)
class FeedbackConfig:
    """Preference collection (notebook 04, ``rlhf_utils.feedback``)."""

    n_pairs: int = 2_000
    """pairs labelled in all (by the reader first, the simulated annotator for the rest)"""
    reader_goal: int = 20
    """pairs the reader is asked to rate in the widget"""
    temperature: float = 0.15
    """Bradley-Terry temperature of the simulated annotator (lower = less noise)"""
    n_calibration: int = 3
    """calibration pairs with a known gold answer, shown to the reader first"""
    repeat_every: int = 10
    """one pair in this many comes back later, blind, to measure self-agreement (0 = never)"""
    n_score_items: int = 5
    """single completions the reader may give a 1-5 satisfaction score"""
    sample_temperature: float = 1.0
    """sampling temperature of the SFT policy when making the pairs"""
    max_new_tokens: int = 48
    """longest completion sampled, in tokens"""
    seed: int = 0
    """seed of sampling and of the simulated annotator"""

    def __post_init__(self):
        _check_fields(self, ints="n_pairs max_new_tokens", ints0="reader_goal n_calibration repeat_every n_score_items",
                      positive="temperature sample_temperature")


@dataclass(frozen=True)
class RewardConfig:
    """Reward-model training (notebook 05, ``rlhf_utils.reward``)."""

    epochs: int = 5
    """passes over the training pairs"""
    min_steps: int = 120
    """at least this many optimizer steps, before any early stop (a small label set gets more epochs)"""
    batch_size: int = 32
    """pairs per step"""
    learning_rate: float = 1e-3
    """peak learning rate (AdamW; cosine decay to a tenth of it)"""
    weight_decay: float = 0.0
    """AdamW weight decay (matrices only)"""
    max_grad_norm: float = 1.0
    """gradient clipping (global L2 norm)"""
    margin: float = 0.0
    """Bradley-Terry margin m in -log sigma(r_c - r_r - m) (Llama 2); 0 = plain BT"""
    eval_fraction: float = 0.2
    """share of pairs held out for evaluation"""
    eval_every: int = 25
    """optimizer steps between held-out evaluations (at most one epoch)"""
    patience: int = 5
    """evaluations without a lower held-out loss before stopping early"""
    n_normalise: int = 512
    """SFT-policy samples whose rewards are set to mean 0, std 1"""
    calibration_bins: int = 10
    """bins of the calibration (reliability) plot"""
    label_sizes: tuple[int, ...] = (100, 300, 1_000, 2_000)
    """training-set sizes of the label-efficiency curve (capped at the labels available)"""
    seed: int = 0
    """seed of split, head initialisation and batch order"""

    def __post_init__(self):
        _check_fields(self, ints="epochs batch_size eval_every patience calibration_bins", ints0="min_steps",
                      positive="learning_rate max_grad_norm", nonneg="weight_decay margin", inf_ok="max_grad_norm")
        check_number("RewardConfig.eval_fraction", self.eval_fraction, 0, 1, low_open=True, high_open=True, fix="e.g. 0.2")
        check_int("RewardConfig.n_normalise", self.n_normalise, 2, "the std needs at least 2 samples, e.g. 512")
        object.__setattr__(self, "label_sizes", _check_sizes("RewardConfig", "label_sizes", self.label_sizes))


@dataclass(frozen=True)
class PPOConfig:
    """PPO fine-tuning of a language model (notebook 06, ``rlhf_utils.ppo``).

    Defaults follow lm-human-preferences (Ziegler et al. 2019) and Huang et al. (2024)
    where those fit a small model; sizes are the quick scale.
    """

    steps: int = 60
    """PPO iterations (rollout + update)"""
    batch_size: int = 64
    """prompts (= sampled completions) per iteration, over all processes"""
    num_minibatches: int = 2
    """optimizer steps per epoch; must divide ``batch_size`` (minibatch = batch_size / num_minibatches)"""
    gradient_accumulation_steps: int = 1
    """forward/backward passes per optimizer step; must divide the per-process minibatch"""
    update_epochs: int = 2
    """passes over each rollout batch (lm-human-preferences: 4)"""
    learning_rate: float = 1.25e-4
    """peak learning rate (Adam), decayed linearly to 0 over ``steps`` when ``anneal_lr``"""
    anneal_lr: bool = True
    """decay the learning rate linearly to 0 (lm-human-preferences, Huang et al. 2024)"""
    adam_eps: float = 1e-5
    """Adam epsilon (1e-5 as in lm-human-preferences, not torch's 1e-8)"""
    clip_coef: float = 0.2
    """epsilon of the clipped surrogate: the ratio is clipped to [1 - eps, 1 + eps]"""
    vf_clip_coef: float | None = 0.2
    """how far a value prediction may move from its rollout value before its loss is clipped (None: never)"""
    vf_coef: float = 0.1
    """weight of the value loss 1/2 E[max((V - R)^2, (V_clipped - R)^2)] in the total loss"""
    ent_coef: float = 0.0
    """weight of the entropy bonus (0: the KL penalty already keeps the policy spread)"""
    norm_adv: bool = True
    """whiten the advantages over the batch's response tokens (lm-human-preferences)"""
    gamma: float = 1.0
    """discount over response tokens (1: the score at the end counts in full at every token)"""
    gae_lambda: float = 0.95
    """GAE lambda (bias-variance trade-off of the advantage estimate)"""
    init_kl_coef: float = 0.1
    """beta, the weight of the per-token KL penalty, at the start"""
    adaptive_kl: bool = True
    """move beta towards ``kl_target`` (Ziegler et al. 2019); False keeps beta fixed"""
    kl_target: float = 3.0
    """target KL(pi || pi_ref) per sequence, in nats, of the adaptive controller"""
    kl_horizon: int = 10_000
    """horizon of the adaptive controller, in sequences"""
    kl_estimator: str = "k1"
    """per-token KL in the penalty: k1 (log pi - log pi_ref, Ziegler et al.) or k3 (expm1)"""
    kl_in: str = "reward"
    """where the KL goes: "reward" (-beta * KL on each token's reward, Ziegler et al.) or "loss"
    (+beta * KL in the loss, differentiated, as GRPO)"""
    advantage_estimator: str = "gae"
    """"gae" (PPO with its value head), or critic-free: "rloo" (leave-one-out baseline) or "grpo"
    (group mean, and std when ``scale_rewards``): see :mod:`rlhf_utils.critic_free`"""
    group_size: int = 1
    """completions sampled per prompt (rloo / grpo need 2 or more; batch_size must be a multiple)"""
    scale_rewards: bool = True
    """grpo: divide by the group's reward std (GRPO); False is Dr. GRPO"""
    loss_aggregation: str = "token"
    """how token losses are averaged: "token" (over all tokens of the minibatch), "sequence"
    (each sequence's mean, then over sequences: GRPO), "constant" (sum / (sequences *
    max_new_tokens): Dr. GRPO)"""
    whiten_rewards: bool = False
    """whiten the per-token rewards over the batch before GAE (scale only)"""
    missing_eos_penalty: float = 1.0
    """subtracted from the score of a completion that never produced EOS"""
    max_new_tokens: int = 48
    """longest completion sampled (a world completion is at most ~40 tokens)"""
    temperature: float = 1.0
    """sampling temperature; log-probabilities use the same temperature"""
    max_grad_norm: float = 1.0
    """gradient clipping (global L2 norm)"""
    n_prompts: int = 2_000
    """training prompts drawn from the world"""
    n_eval: int = 512
    """held-out prompts of the before/after evaluation (notebook 06)"""
    lora_r: int = 0
    """LoRA rank (``peft``) for models too big to fine-tune fully; 0 = full fine-tuning"""
    lora_alpha: int = 16
    """LoRA scaling alpha (the update is scaled by alpha / r)"""
    bf16: bool = True
    """bf16 autocast on a GPU that supports it (ignored on the CPU)"""
    torch_compile: bool = False
    """``torch.compile`` the update's forward (policy and value head, dynamic shapes): the same
    losses to float rounding, checked at the start (:mod:`rlhf_utils.checked_compile`); where
    compiling fails (no C++ compiler, an unsupported model) the trainer warns and trains
    uncompiled. It traces the model's own forward, padding included (:mod:`rlhf_utils.gpt2_fast`'s
    padding-free forward stands aside). Off by default: on the course's CPU, compiling takes
    10-30 s and the compiled update is slower than GPT-2's padding-free one
    (``benchmarks/ppo_vs_trl.py --compile`` prints both); on a GPU, measure it with
    ``benchmarks/ppo_full_scale.py --compile``."""
    seed: int = 0
    """seed of prompts, sampling and batch order"""

    def __post_init__(self):
        _check_fields(self, ints="steps batch_size num_minibatches gradient_accumulation_steps update_epochs "
                      "kl_horizon max_new_tokens n_prompts n_eval lora_alpha group_size", ints0="lora_r",
                      positive="learning_rate adam_eps clip_coef temperature max_grad_norm kl_target",
                      nonneg="vf_coef ent_coef init_kl_coef", unit="gamma gae_lambda", inf_ok="clip_coef max_grad_norm",
                      flags="anneal_lr norm_adv adaptive_kl whiten_rewards bf16 scale_rewards torch_compile", optional="vf_clip_coef",
                      choices={"kl_estimator": ("k1", "k2", "k3"), "kl_in": ("reward", "loss"),
                               "advantage_estimator": ("gae", "rloo", "grpo"),
                               "loss_aggregation": ("token", "sequence", "constant")})
        check_number("PPOConfig.missing_eos_penalty", self.missing_eos_penalty, fix="e.g. 1.0 (0: no penalty)")
        if self.batch_size % self.num_minibatches:
            raise ValueError(f"num_minibatches={self.num_minibatches} does not divide batch_size={self.batch_size}: "
                             f"every rollout must split into whole minibatches. Pick one of {_divisors(self.batch_size)}.")
        mini = self.batch_size // self.num_minibatches
        if mini % self.gradient_accumulation_steps:
            raise ValueError(f"gradient_accumulation_steps={self.gradient_accumulation_steps} does not divide the "
                             f"minibatch of batch_size / num_minibatches = {mini}: pick one of {_divisors(mini)}.")


@dataclass(frozen=True)
class DPOConfig:
    """Direct preference optimisation, IPO and best-of-n (notebook 08, ``rlhf_utils.dpo``).

    The loss and its names follow Rafailov et al. (2023) and TRL's ``DPOConfig`` (the full preset keeps
    their beta 0.1); the defaults are the quick scale: notebook 04's 1,600 training pairs in ~6 s on a CPU.
    """

    beta: float = 1.0
    """weight of the KL to the reference in the objective DPO solves (larger: stay closer); IPO's tau.
    Quick: 1.0 (on the course's SFT policy, 0.1 -- the paper's value -- reached KL 8.8 nats and half its
    samples ungrammatical; 1.0: KL 2.4, 88% grammatical, held-out accuracy 0.78)"""
    loss_type: str = "sigmoid"
    """``"sigmoid"`` (DPO, Rafailov et al. 2023) or ``"ipo"`` (Azar et al. 2023)"""
    label_smoothing: float = 0.0
    """cDPO: the probability that a label is wrong, in [0, 0.5); sigmoid loss only (0 = plain DPO)"""
    epochs: int = 2
    """passes over the training pairs"""
    batch_size: int = 32
    """pairs per optimizer step"""
    learning_rate: float = 5e-4
    """peak learning rate (AdamW, linear warm-up then cosine decay to a tenth)"""
    warmup_steps: int = 10
    """linear warm-up steps (Rafailov et al. 2023 warm up for 150)"""
    max_grad_norm: float = 1.0
    """gradient clipping (global L2 norm)"""
    eval_fraction: float = 0.2
    """share of the pairs held out for the held-out loss and accuracy"""
    eval_every: int = 25
    """optimizer steps between held-out evaluations"""
    best_of_n: tuple[int, ...] = (1, 2, 4, 8, 16)
    """the n of best-of-n sampling compared in notebook 08"""
    seed: int = 0
    """seed of the split and of batch order (and of best-of-n sampling)"""

    def __post_init__(self):
        _check_fields(self, ints="epochs batch_size eval_every", ints0="warmup_steps",
                      positive="beta learning_rate max_grad_norm", choices={"loss_type": ("sigmoid", "ipo")})
        check_number("DPOConfig.label_smoothing", self.label_smoothing, 0, 0.5, high_open=True, fix="0 = plain DPO")
        if self.loss_type == "ipo" and self.label_smoothing:
            raise ValueError(f"DPOConfig.label_smoothing={self.label_smoothing!r} needs loss_type='sigmoid': use 0 with IPO")
        check_number("DPOConfig.eval_fraction", self.eval_fraction, 0, 1, low_open=True, high_open=True, fix="e.g. 0.2")
        if not _check_sizes("DPOConfig", "best_of_n", self.best_of_n):
            raise ValueError("DPOConfig.best_of_n=(): name at least one n, e.g. (1, 2, 4, 8, 16)")


@dataclass(frozen=True)
class HackingConfig:
    """Evaluation and reward hacking (notebook 07, ``rlhf_utils.overoptimisation``, ``reward_ensemble``).

    Every PPO run of the notebook is notebook 06's ``PPOConfig`` with these sizes, a fixed beta
    (``adaptive_kl=False``) and this seed; the sizes keep the quick notebook under 3 minutes.
    """

    betas: tuple[float, ...] = (0.1, 0.03, 0.01, 0.0)
    """fixed KL coefficients of the sweep; the smallest (0: no penalty) is the over-optimisation run"""
    steps: int = 120
    """PPO iterations of each run"""
    batch_size: int = 32
    """completions per PPO iteration (one minibatch)"""
    learning_rate: float = 3e-4
    """peak PPO learning rate (higher than notebook 06's: over-optimisation shows sooner)"""
    eval_steps: tuple[int, ...] = (2, 4, 6, 8, 10, 15, 20, 30, 40, 50, 60, 80, 100, 120)
    """PPO steps after which proxy, gold and KL are measured on held-out prompts (dense early,
    where the gold peaks; the last step always)"""
    n_eval: int = 192
    """held-out prompts of each measurement"""
    n_check: int = 64
    """other held-out prompts whose gold reward chooses the early-stopping step (a human spot check)"""
    n_win_rate: int = 512
    """held-out prompts of the RLHF-vs-SFT win rate"""
    ensemble_size: int = 3
    """reward models in the ensemble (each on its own bootstrap resample of the labels)"""
    ensemble_epochs: int = 2
    """training epochs of each ensemble member (notebook 05's recipe otherwise)"""
    ensemble_penalty: float = 2.0
    """lambda of the ensemble's score mean - lambda * std over its members"""
    length_bias: float = 0.3
    """logit per word the biased annotator adds in favour of the longer completion"""
    bias_beta: float = 0.03
    """the KL coefficient (one of ``betas``) of the run against the biased reward model"""
    seed: int = 0
    """seed of the PPO runs, the ensemble and the relabelling"""

    def __post_init__(self):
        _check_fields(self, ints="steps batch_size n_eval n_check n_win_rate ensemble_size ensemble_epochs",
                      positive="learning_rate", nonneg="ensemble_penalty length_bias bias_beta")
        if isinstance(self.betas, (str, bytes)) or not hasattr(self.betas, "__iter__") or not self.betas:
            raise ValueError(_say("HackingConfig.betas", self.betas, "must name at least one KL coefficient",
                                  "e.g. (0.1, 0.03, 0.01, 0.0)"))
        betas = tuple(check_number(f"HackingConfig.betas[{i}]", b, 0, fix="beta >= 0") for i, b in enumerate(self.betas))
        object.__setattr__(self, "betas", betas)
        steps = _check_sizes("HackingConfig", "eval_steps", self.eval_steps)
        if list(steps) != sorted(set(steps)) or (steps and steps[-1] > self.steps):
            raise ValueError(_say("HackingConfig.eval_steps", steps, f"must be increasing steps between 1 and "
                                  f"steps={self.steps}", "e.g. (2, 4, 8, 16, 32)"))
        object.__setattr__(self, "eval_steps", steps)
        if self.bias_beta not in betas:
            raise ValueError(f"HackingConfig.bias_beta={self.bias_beta!r} is not one of betas={betas}: the biased run "
                             "is compared with the sweep's run at the same beta")
        if self.ensemble_penalty > 0 and self.ensemble_size < 2:
            raise ValueError(f"HackingConfig.ensemble_penalty={self.ensemble_penalty!r} weighs the members' "
                             f"disagreement: ensemble_size={self.ensemble_size} must be at least 2 (or the penalty 0)")


@dataclass(frozen=True)
class FrontierConfig:
    """Every method on one reward-vs-KL frontier (notebook 08, ``rlhf_utils.critic_free``, ``rlhf_utils.dpo``).

    Each RL method is notebook 06's ``PPOConfig`` with these sizes and one fixed beta
    (``adaptive_kl=False``), then turned into RLOO, GRPO, ... by :mod:`rlhf_utils.critic_free`:
    every RL method draws ``steps * batch_size`` completions. DPO trains on notebook 04's TRL file
    with :class:`DPOConfig`'s recipe at each of ``dpo_betas``. The quick sizes keep the notebook
    under 3 minutes on 2 CPU cores (98-104 s measured at seeds 0, 1, 2).
    """

    steps: int = 30
    """iterations of each RL method (each draws ``batch_size`` completions)"""
    batch_size: int = 64
    """completions per RL iteration: ``batch_size / group_size`` prompts, ``group_size`` samples each"""
    num_minibatches: int = 2
    """optimizer steps per epoch of PPO, RLOO and GRPO (REINFORCE takes one step per batch)"""
    learning_rate: float = 2.5e-4
    """peak learning rate of PPO, RLOO and the GRPOs (Adam, annealed linearly to 0)"""
    reinforce_learning_rate: float = 1e-3
    """REINFORCE's: it takes one Adam step per batch where the others take update_epochs *
    num_minibatches (2 * 2 = 4 here), so 4 * learning_rate moves it about as far per batch (Adam's
    step is ~ the learning rate whatever the gradient's size); the notebook also runs it at learning_rate"""
    kl_coef: float = 0.05
    """beta, the fixed KL weight of every KL-regularised RL method (in the reward or in the loss)"""
    group_size: int = 4
    """completions per prompt of the critic-free methods (the group is their baseline); PPO samples
    the same prompts, grouped or not"""
    eval_steps: tuple[int, ...] = (5, 10, 20, 30)
    """RL steps after which gold and KL are measured on the held-out prompts (the points of each curve)"""
    dpo_betas: tuple[float, ...] = (0.3, 1.0, 3.0)
    """DPO's beta at each point of its curve (one DPO run per beta)"""
    best_of_n: tuple[int, ...] = (1, 2, 4, 8, 16)
    """the n of each best-of-n point"""
    n_pool: int = 32
    """samples per held-out prompt that best-of-n picks from (every n; at least 2 * max(best_of_n),
    for the KL estimate)"""
    n_eval: int = 256
    """held-out prompts on which every method is measured (the same prompts, the same seed)"""
    seed: int = 0
    """seed of the RL runs, DPO's split and order, best-of-n's pool and the evaluations"""

    def __post_init__(self):
        _check_fields(self, ints="steps batch_size num_minibatches group_size n_pool n_eval",
                      positive="learning_rate reinforce_learning_rate", nonneg="kl_coef")
        if self.group_size < 2 or self.batch_size % self.group_size:
            raise ValueError(_say("FrontierConfig.group_size", self.group_size, f"must be at least 2 and divide "
                                  f"batch_size={self.batch_size}", f"pick one of {_divisors(self.batch_size, 16)[1:]}"))
        if self.batch_size % self.num_minibatches:
            raise ValueError(_say("FrontierConfig.num_minibatches", self.num_minibatches, f"must divide batch_size="
                                  f"{self.batch_size}", f"pick one of {_divisors(self.batch_size, 16)}"))
        steps = _check_sizes("FrontierConfig", "eval_steps", self.eval_steps)
        if not steps or list(steps) != sorted(set(steps)) or steps[-1] > self.steps:
            raise ValueError(_say("FrontierConfig.eval_steps", steps, f"must be increasing steps between 1 and "
                                  f"steps={self.steps}", "e.g. (5, 10, 20, 30)"))
        object.__setattr__(self, "eval_steps", steps)
        if isinstance(self.dpo_betas, (str, bytes)) or not hasattr(self.dpo_betas, "__iter__") or not self.dpo_betas:
            raise ValueError(_say("FrontierConfig.dpo_betas", self.dpo_betas, "must name at least one beta",
                                  "e.g. (0.3, 1.0, 3.0)"))
        betas = tuple(check_number(f"FrontierConfig.dpo_betas[{i}]", b, 0, low_open=True, fix="beta > 0")
                      for i, b in enumerate(self.dpo_betas))
        object.__setattr__(self, "dpo_betas", betas)
        ns = _check_sizes("FrontierConfig", "best_of_n", self.best_of_n)
        if not ns:
            raise ValueError("FrontierConfig.best_of_n=(): name at least one n, e.g. (1, 2, 4, 8, 16)")
        object.__setattr__(self, "best_of_n", ns)
        if self.n_pool < 2 * max(ns):
            raise ValueError(_say("FrontierConfig.n_pool", self.n_pool, f"must be at least 2 * max(best_of_n) = "
                                  f"{2 * max(ns)}: the KL estimate ranks each best-of-n among other samples",
                                  f"e.g. n_pool={2 * max(ns)}"))


@dataclass(frozen=True)
class LiveLoopConfig:
    """The loop, live: the reader rates while the reward model and the policy learn (notebook 09,
    ``rlhf_utils.live_loop``, ``rlhf_utils.active``).

    A round starts once ``k`` new labels are in the store: the reward model takes ``rm_steps``
    steps on *all* labels so far, the policy ``ppo_steps`` PPO steps against it (notebook 06's
    ``PPOConfig`` with the sizes below, learning rate not annealed: the loop has no end), and
    ``pairs_per_round`` new pairs are chosen from ``candidate_pool`` pairs that the updated
    policy writes. The quick sizes keep a round to a few seconds on 2 CPU cores.
    """

    k: int = 8
    """new labels that start a round (the reader's batch)"""
    rm_steps: int = 8
    """reward-model optimizer steps per round, on minibatches drawn from all labels so far"""
    rm_batch_size: int = 32
    """pairs per reward-model step"""
    rm_learning_rate: float = 1e-3
    """AdamW learning rate of the reward model (constant: notebook 05's peak)"""
    ppo_steps: int = 3
    """PPO iterations per round, against the reward model as it is after this round's steps"""
    ppo_batch_size: int = 32
    """completions per PPO iteration (two minibatches)"""
    ppo_learning_rate: float = 2.5e-4
    """PPO's Adam learning rate (constant)"""
    first_pairs: int = 16
    """pairs offered before the first round (from the SFT policy, chosen at random)"""
    pairs_per_round: int = 8
    """pairs offered to the reader after each round; at least ``k`` keeps a buffer to rate while it trains"""
    candidate_pool: int = 48
    """pairs the updated policy writes each round, from which the next ones are chosen"""
    strategy: str = "uncertain"
    """how the next pairs are chosen: ``"uncertain"`` (the reward model's doubt, ``rlhf_utils.active``) or ``"random"``"""
    ensemble_size: int = 3
    """reward models whose disagreement is the doubt of ``strategy="uncertain"`` (1: the one model's
    closeness to a coin flip, ``1/2 - |p - 1/2|``); the extra members only choose pairs -- PPO trains
    against the first, the same model in either strategy -- and each costs ``rm_steps`` more steps a round"""
    explore: float = 0.25
    """share of each round's pairs drawn at random even when ``strategy="uncertain"``: keeps the labels
    spread over what the policy writes (diversity) instead of piled at the decision boundary"""
    simulated_per_round: int = 0
    """simulated annotator's labels added per round on other candidate pairs (the reader's choice to mix; 0 = none)"""
    n_normalise: int = 128
    """SFT samples the reward model is re-normalised on (mean 0, std 1) after each round"""
    n_eval_pairs: int = 256
    """fixed pairs of SFT samples on which the reward model's agreement with the gold order is measured"""
    n_labels: int = 200
    """labels the scripted reader gives in notebook 09 and the benchmark"""
    target_gold_agreement: float = 0.58
    """reward-model agreement with the gold order at which "labels to reach" is read off (active vs random)"""
    seed: int = 0
    """seed of the reward model's batches, PPO, the candidate pairs and the random choices"""

    def __post_init__(self):
        _check_fields(self, ints="k rm_steps rm_batch_size ppo_steps ppo_batch_size first_pairs pairs_per_round "
                      "candidate_pool n_normalise n_eval_pairs n_labels ensemble_size", ints0="simulated_per_round",
                      positive="rm_learning_rate ppo_learning_rate", unit="explore target_gold_agreement",
                      choices={"strategy": ("uncertain", "random")})
        if self.ppo_batch_size % 2:
            raise ValueError(_say("LiveLoopConfig.ppo_batch_size", self.ppo_batch_size, "must be even (two PPO "
                                  "minibatches)", "e.g. 32"))
        if self.candidate_pool < self.pairs_per_round + self.simulated_per_round:
            raise ValueError(_say("LiveLoopConfig.candidate_pool", self.candidate_pool, "must hold the pairs offered "
                                  f"and the simulated ones of a round ({self.pairs_per_round} + "
                                  f"{self.simulated_per_round})", "raise candidate_pool or lower pairs_per_round"))
        if self.n_normalise < 2:
            raise ValueError(_say("LiveLoopConfig.n_normalise", self.n_normalise, "must be at least 2 (a std)", "e.g. 128"))


@dataclass(frozen=True)
class Preset:
    """One of each config, for one scale."""

    name: str
    world: WorldConfig = field(default_factory=WorldConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    cartpole: CartPoleConfig = field(default_factory=CartPoleConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    hacking: HackingConfig = field(default_factory=HackingConfig)
    frontier: FrontierConfig = field(default_factory=FrontierConfig)
    live_loop: LiveLoopConfig = field(default_factory=LiveLoopConfig)


PRESETS: dict[str, Preset] = {
    # quick PPO samples at temperature 0.7: fewer sampling slips ("it was was"), which the course's
    # reward model over-rates, so PPO has less to hack (notebook 06, measured on the real 01->05 chain)
    "quick": Preset(name="quick", ppo=PPOConfig(temperature=0.7)),
    "full": Preset(
        name="full",
        world=WorldConfig(n_train_reviews=200_000, n_eval_reviews=5_000),
        lm=LMConfig(n_layer=16, n_head=12, n_embd=768, n_positions=128, steps=6_000,
                    batch_size=128, learning_rate=6e-4, warmup_steps=300),
        sft=SFTConfig(n_demonstrations=20_000, n_heldout=2_000, steps=1_500, batch_size=64, learning_rate=1e-4,
                      warmup_steps=100, n_eval=1_024, max_new_tokens=64),
        cartpole=CartPoleConfig(total_timesteps=50_000, text_env_timesteps=10_000),
        feedback=FeedbackConfig(n_pairs=10_000),
        reward=RewardConfig(epochs=2, batch_size=64, learning_rate=5e-5, eval_every=50, n_normalise=2_048,
                            label_sizes=(100, 300, 1_000, 3_000, 8_000)),
        ppo=PPOConfig(steps=200, batch_size=256, num_minibatches=4, update_epochs=4, learning_rate=1e-5,
                      max_new_tokens=64, n_prompts=20_000, n_eval=1_024),
        dpo=DPOConfig(beta=0.1, epochs=2, batch_size=64, learning_rate=5e-6, warmup_steps=25, eval_every=50,
                      best_of_n=(1, 2, 4, 8, 16, 32, 64)),
        hacking=HackingConfig(steps=300, batch_size=128, learning_rate=3e-5, n_eval=768, n_check=256, n_win_rate=1_024,
                              eval_steps=(5, 10, 15, 20, 30, 40, 60, 80, 100, 150, 200, 250, 300), ensemble_size=4,
                              ensemble_epochs=1),
        frontier=FrontierConfig(steps=200, batch_size=256, num_minibatches=4, learning_rate=1e-5,
                                reinforce_learning_rate=1.6e-4, group_size=8,
                                eval_steps=(10, 25, 50, 100, 150, 200), dpo_betas=(0.03, 0.1, 0.3, 1.0),
                                best_of_n=(1, 2, 4, 8, 16, 32, 64), n_pool=128, n_eval=1_024),
        live_loop=LiveLoopConfig(k=16, rm_steps=16, rm_batch_size=64, rm_learning_rate=5e-5, ppo_steps=2,
                                 ppo_batch_size=128, ppo_learning_rate=1e-5, first_pairs=32, pairs_per_round=16,
                                 candidate_pool=128, n_normalise=512, n_eval_pairs=512, n_labels=800),
    ),
}


def get_seed(seed: int | None = None) -> int:
    """The run's seed offset: the argument, else ``$RLHF_SEED``, else 0."""
    value = seed if seed is not None else os.environ.get("RLHF_SEED", "0")
    if isinstance(value, bool) or not str(value).strip().lstrip("-").isdigit():
        raise ValueError(f"RLHF_SEED={value!r}: the seed must be a whole number (e.g. RLHF_SEED=1)")
    return int(value)


def get_preset(scale: str | None = None, seed: int | None = None) -> Preset:
    """The preset for ``scale`` (see :func:`get_scale` for how it is chosen), with every
    config's ``seed`` moved by ``seed`` (default ``$RLHF_SEED``, else 0).

    Seed 0 is the course as written; ``RLHF_SEED=1`` (``make course SEED=1``) reruns every
    notebook with other random draws -- that is how the spreads in the notebooks' "you
    should see about" lines were measured.
    """
    preset, offset = PRESETS[get_scale(scale)], get_seed(seed)
    if offset == 0:
        return preset
    moved = {f.name: dataclasses.replace(getattr(preset, f.name), seed=getattr(preset, f.name).seed + offset)
             for f in dataclasses.fields(preset) if hasattr(getattr(preset, f.name), "seed")}
    return dataclasses.replace(preset, **moved)
