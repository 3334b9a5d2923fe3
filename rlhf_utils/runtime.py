"""Where and how a run executes: device and dtype choice, seeding, artefact paths.

* :func:`get_device` -- the device asked for (checked: a missing GPU is an error, never a
  silent fallback), else cuda, then mps, then cpu; :func:`get_dtype` -- bf16 where it is
  supported, else float32;
* :func:`seed_everything` -- Python, NumPy and torch seeded, and torch's CPU thread count
  fixed (:func:`default_threads`), which is part of the seed on a CPU;
* :func:`checkpoints_dir`, :func:`feedback_dir` -- where the course's checkpoints and
  preference files go (``$RLHF_CHECKPOINTS``, ``$RLHF_FEEDBACK``).

All of these are also importable from :mod:`rlhf_utils.config`, where the presets are.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from rlhf_utils.checks import _say, check_int

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def checkpoints_dir() -> Path:
    """Where the course's checkpoints go: ``$RLHF_CHECKPOINTS``, else ``<repo>/checkpoints``."""
    return Path(os.environ.get("RLHF_CHECKPOINTS") or PROJECT_ROOT / "checkpoints")


def feedback_dir() -> Path:
    """Where preference files go: ``$RLHF_FEEDBACK``, else ``<repo>/data/feedback``."""
    return Path(os.environ.get("RLHF_FEEDBACK") or PROJECT_ROOT / "data" / "feedback")


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
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(_say("device", device, "is not a device", "pass 'cpu', 'cuda', 'cuda:1' or 'mps'")) from None
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
    check_int("seed", seed, None, "e.g. seed_everything(0)")
    torch.set_num_threads(default_threads() if threads is None else check_int("threads", threads, 1))
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    return torch.Generator().manual_seed(seed)
