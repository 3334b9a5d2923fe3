"""``torch.compile`` that is checked before it is trusted, with a fall-back.

:func:`checked_compile` compiles a module (shapes dynamic), then runs it once compiled and
once as written on a small example: the outputs and the gradients of a loss must agree to
rounding. Only then is the compiled module returned. A compiler that is missing or fails
(inductor needs a C++ compiler on the CPU), a model it cannot trace, or a compiled module
that computes something else gives a warning that says why, and the module uncompiled: the
run goes on, at the uncompiled speed, and fails neither at the start nor half-way through
(compilation is lazy, so without this check an error would surface at the first batch, and a
wrong result never).

The PPO trainer compiles its update's forward this way (``PPOConfig.torch_compile``);
``benchmarks/ppo_vs_trl.py --compile`` and ``benchmarks/ppo_full_scale.py --compile`` measure it.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Sequence

import torch
import torch.nn as nn


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """``||ours - theirs|| / ||theirs||`` (0 when both are 0)."""
    return float((ours.float() - theirs.float()).norm() / theirs.float().norm().clamp_min(1e-12))


def checked_compile(module: nn.Module, example_inputs: Sequence, loss: Callable[..., torch.Tensor], *,
                    tolerance: float = 1e-3, autocast: Callable = contextlib.nullcontext,
                    no_sync: Callable = contextlib.nullcontext, what: str = "the model") -> Callable:
    """``torch.compile(module, dynamic=True)`` if, on ``example_inputs``, its outputs and the
    gradients of ``loss(outputs)`` with respect to the trainable parameters agree with the
    uncompiled module's to ``tolerance`` (relative error of each tensor); else ``module``,
    with a ``RuntimeWarning`` naming the failure.

    ``autocast`` and ``no_sync`` are context factories the example runs under (mixed
    precision, and -- under DDP -- no gradient exchange: these gradients are not a training
    step's). Under bf16 pass a tolerance of a few percent: the compiled kernels round
    differently. The parameters' ``.grad`` are left untouched.
    """
    compiled = torch.compile(module, dynamic=True)
    params = [p for p in module.parameters() if p.requires_grad]

    def outputs_and_grads(forward) -> list[torch.Tensor]:
        with autocast():
            outputs = forward(*example_inputs)
        grads = torch.autograd.grad(loss(*outputs), params, allow_unused=True)
        return [o.detach() for o in outputs] + [g for g in grads if g is not None]

    try:
        with no_sync():
            pairs = list(zip(outputs_and_grads(compiled), outputs_and_grads(module), strict=True))
        for ours, theirs in pairs:
            error = relative_error(ours, theirs)
            if not error <= tolerance:
                raise AssertionError(f"the compiled module differs from the uncompiled one (relative error "
                                     f"{error:.1e} > {tolerance:.0e})")
    except Exception as error:  # a compiler missing or failing, a model it cannot trace, a wrong result
        first_line = (str(error).strip().splitlines() or [""])[0][:300]
        warnings.warn(f"torch_compile=True: compiling {what} failed or changed its outputs "
                      f"({type(error).__name__}: {first_line}); training uncompiled.", RuntimeWarning, stacklevel=3)
        return module
    return compiled
