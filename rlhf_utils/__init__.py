"""rlhf_utils: the tested implementations behind the "RLHF from scratch" course.

One module per idea (see the README's course map):

* ``config``   -- scale presets (quick / full), device, dtype, seeding
* ``world``    -- the synthetic review world and its gold preference ("the human")
* ``lm``       -- tokenizer, small GPT, LM/SFT training, sampling, log-probs, perplexity
* ``course``   -- the course runner (``python -m rlhf_utils.course``) and ``report()``

and the modules the later notebooks add (``rl``, ``feedback``, ``widgets``, ``reward``,
``ppo``, ``dpo``, ``plotting``).

Importing the package is cheap: nothing heavy (torch, transformers) is imported until a
submodule is used, either explicitly (``from rlhf_utils import lm``) or as an attribute
(``import rlhf_utils; rlhf_utils.lm.sample(...)``).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = (
    "config", "world", "lm", "rl", "feedback", "widgets", "reward", "ppo", "dpo", "plotting", "course",
)


def __getattr__(name: str) -> Any:
    """Import a submodule on first attribute access (PEP 562)."""
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBMODULES])
