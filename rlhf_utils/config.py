"""Scale presets, device and dtype choice, seeding: the one place where sizes live.

The course runs at two scales, picked by one switch:

* ``quick`` -- every notebook in about a minute or two on 2 CPU cores (the default
  without a GPU);
* ``full``  -- the real run, sized for one modern GPU (the default with CUDA).

``RLHF_SCALE=quick|full`` (or the ``scale=`` argument) overrides the default. Each
algorithm has one config dataclass with a docstring per field (the CleanRL ``Args``
style); a :class:`Preset` bundles one of each. Notebooks call :func:`get_preset` and
never hard-code a size.
"""

from __future__ import annotations

import dataclasses
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

SCALES = ("quick", "full")

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def checkpoints_dir() -> Path:
    """Where the course's checkpoints go: ``$RLHF_CHECKPOINTS``, else ``<repo>/checkpoints``."""
    return Path(os.environ.get("RLHF_CHECKPOINTS") or PROJECT_ROOT / "checkpoints")


def feedback_dir() -> Path:
    """Where preference files go: ``$RLHF_FEEDBACK``, else ``<repo>/data/feedback``."""
    return Path(os.environ.get("RLHF_FEEDBACK") or PROJECT_ROOT / "data" / "feedback")


# --------------------------------------------------------------------------------------
# Scale, device, dtype, seed
# --------------------------------------------------------------------------------------


def get_scale(scale: str | None = None) -> str:
    """The scale to run at: the argument, else ``$RLHF_SCALE``, else from the hardware."""
    chosen = scale or os.environ.get("RLHF_SCALE") or ("full" if torch.cuda.is_available() else "quick")
    chosen = chosen.strip().lower()
    if chosen not in SCALES:
        raise ValueError(
            f"Unknown scale {chosen!r}: use one of {', '.join(SCALES)} "
            "(set RLHF_SCALE=quick for 2 CPU cores, RLHF_SCALE=full for one GPU)."
        )
    return chosen


def get_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: the one asked for (checked), else cuda, then mps, then cpu.

    Asking for a device this machine lacks is an error, never a silent fallback.
    """
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "device='cuda' was asked for, but this machine has no CUDA GPU (or this torch is a "
            "CPU build): pass device='cpu', or leave device unset to pick the best one available."
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(
            "device='mps' was asked for, but Apple's MPS backend is not available here: "
            "pass device='cpu', or leave device unset."
        )
    return device


def get_dtype(device: torch.device) -> torch.dtype:
    """The compute dtype for autocast: bf16 on a GPU that supports it, else float32."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def default_threads() -> int:
    """torch's CPU thread count for the course: ``$RLHF_THREADS``, else 1."""
    value = os.environ.get("RLHF_THREADS", "1").strip()
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"RLHF_THREADS={value!r}: set it to a whole number of threads, at least 1 (default 1)")
    return int(value)


def seed_everything(seed: int, threads: int | None = None) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA), and fix torch's CPU thread count to
    ``threads`` (default :func:`default_threads`); return a torch.Generator seeded the same.

    The thread count is part of the seed: a float sum split over two threads rounds
    differently than over one, so only a fixed count makes a CPU run give the same figures
    on any machine, whatever its number of cores (see :mod:`rlhf_utils.reproducibility`).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    torch.set_num_threads(threads or default_threads())
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    return torch.Generator().manual_seed(seed)


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
    seed: int = 0
    """seed of prompts, sampling and batch order"""


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
