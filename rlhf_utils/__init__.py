"""rlhf_utils: the tested implementations behind the "RLHF from scratch" course.

One module per idea (the README's module map says what each holds):

* foundations -- ``config`` (presets), ``runtime`` (device, dtype, seeding, artefact paths),
  ``checks`` (argument checks at the boundary), ``reproducibility`` (what a CPU run pins),
  ``ops`` (tensor helpers), ``world`` (the synthetic reviews and their gold preference),
  ``report`` (a notebook's figures);
* language models -- ``lm``, ``gpt2_fast`` (a faster decoding step and a padding-free forward), ``checkpoints``,
  ``checked_compile`` (``torch.compile``, trusted only once checked);
* reinforcement learning -- ``rl`` (returns, GAE, the policy-gradient losses), ``bandit``,
  ``cartpole``, ``text_env``;
* feedback -- ``feedback`` (the store), ``annotators``, ``rating`` (session logic),
  ``widgets`` (their display), ``preferences`` (pairs to train on);
* reward and RLHF -- ``reward``, ``reward_shaping``, ``value_head``, ``ppo``, ``critic_free``
  (RLOO, GRPO, Dr. GRPO, REINFORCE as PPO configs), ``ppo_checkpoint``, ``ppo_cli``, ``dpo``
  (DPO, IPO, best-of-n);
* measuring -- ``evaluation``, ``overoptimisation`` (reward hacking: proxy against gold as KL
  grows, early stopping, biased labels), ``reward_ensemble`` (an ensemble and its disagreement
  as a penalty), ``plotting``;
* the loop, live (notebook 09) -- ``active`` (which pair to ask next), ``live_threads`` (the
  reader's session and the training thread), ``live_loop`` (the rounds, durable state);
* the course runner -- ``course``.

Importing the package is cheap: nothing heavy (torch, transformers) is imported until a
submodule is used, either explicitly (``from rlhf_utils import lm``) or as an attribute
(``import rlhf_utils; rlhf_utils.lm.sample(...)``).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = (
    "config", "checks", "runtime", "reproducibility", "ops", "world", "report", "lm", "gpt2_fast", "checkpoints", "checked_compile", "rl", "bandit",
    "cartpole", "text_env", "feedback", "annotators", "rating", "widgets", "preferences", "reward",
    "reward_shaping", "value_head", "ppo", "critic_free", "ppo_checkpoint", "ppo_cli", "dpo", "evaluation",
    "overoptimisation", "reward_ensemble", "plotting", "active", "live_threads", "live_loop", "course",
)


def __getattr__(name: str) -> Any:
    """Import a submodule on first attribute access (PEP 562)."""
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBMODULES])
