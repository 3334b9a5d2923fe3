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

import os
import random
from dataclasses import dataclass, field

import numpy as np
import torch

SCALES = ("quick", "full")


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


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a torch.Generator seeded the same.

    On the CPU this makes a run repeatable bit for bit (the course's tests rely on it).
    """
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
    n_embd: int = 128
    """width of the residual stream"""
    n_positions: int = 64
    """context length in tokens (a world review is at most ~45 tokens)"""
    dropout: float = 0.0
    """dropout in attention, residual and embeddings"""
    steps: int = 1_200
    """optimizer steps of pre-training"""
    batch_size: int = 64
    """sequences per step"""
    lr: float = 3e-3
    """peak learning rate (AdamW, linear warm-up then cosine decay)"""
    warmup_steps: int = 100
    """linear warm-up steps"""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to biases and norms)"""
    seed: int = 0
    """seed of initialisation and batch order"""


@dataclass(frozen=True)
class SFTConfig:
    """Supervised fine-tuning on demonstrations (notebook 03)."""

    n_demonstrations: int = 2_000
    """prompt -> continuation pairs"""
    steps: int = 300
    """optimizer steps"""
    batch_size: int = 32
    """pairs per step"""
    lr: float = 5e-4
    """learning rate"""
    seed: int = 0
    """seed of batch order"""


@dataclass(frozen=True)
class CartPoleConfig:
    """Our PPO agent on a gymnasium vector environment (notebook 02, ``rlhf_utils.rl``)."""

    env_id: str = "CartPole-v1"
    """gymnasium environment id (discrete actions)"""
    total_timesteps: int = 50_000
    """environment steps in all"""
    seed: int = 0
    """seed of environments and network"""


@dataclass(frozen=True)
class FeedbackConfig:
    """Preference collection (notebook 04, ``rlhf_utils.feedback``)."""

    n_pairs: int = 2_000
    """pairs labelled in all (by the reader first, the simulated annotator for the rest)"""
    reader_goal: int = 20
    """pairs the reader is asked to rate in the widget"""
    temperature: float = 0.15
    """Bradley-Terry temperature of the simulated annotator (lower = less noise)"""
    seed: int = 0
    """seed of sampling and of the simulated annotator"""


@dataclass(frozen=True)
class RewardConfig:
    """Reward-model training (notebook 05, ``rlhf_utils.reward``)."""

    epochs: int = 3
    """passes over the training pairs"""
    batch_size: int = 32
    """pairs per step"""
    lr: float = 3e-4
    """learning rate"""
    eval_fraction: float = 0.2
    """share of pairs held out for evaluation"""
    seed: int = 0
    """seed of split, head initialisation and batch order"""


@dataclass(frozen=True)
class PPOConfig:
    """PPO fine-tuning of a language model (notebook 06, ``rlhf_utils.ppo``)."""

    steps: int = 40
    """PPO iterations (rollout + update)"""
    batch_size: int = 64
    """prompts (= sampled completions) per iteration"""
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
    "quick": Preset(name="quick"),
    "full": Preset(
        name="full",
        world=WorldConfig(n_train_reviews=200_000, n_eval_reviews=5_000),
        lm=LMConfig(n_layer=12, n_head=12, n_embd=768, n_positions=128, steps=6_000,
                    batch_size=128, lr=6e-4, warmup_steps=300),
        sft=SFTConfig(n_demonstrations=20_000, steps=1_500, batch_size=64, lr=1e-4),
        cartpole=CartPoleConfig(total_timesteps=200_000),
        feedback=FeedbackConfig(n_pairs=10_000),
        reward=RewardConfig(epochs=2, batch_size=64, lr=5e-5),
        ppo=PPOConfig(steps=200, batch_size=256),
    ),
}


def get_preset(scale: str | None = None) -> Preset:
    """The preset for ``scale`` (see :func:`get_scale` for how it is chosen)."""
    return PRESETS[get_scale(scale)]
