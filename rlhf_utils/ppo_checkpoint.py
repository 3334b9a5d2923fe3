"""Checkpoints of a PPO run: exact resume, and the trained policy as a Hugging Face folder.

* :func:`save_state` / :func:`load_state` -- everything a resumed run needs to continue
  exactly as if it had never stopped: the trainable weights (value head and LoRA adapters
  included), the optimizer's moments, beta's controller, every random generator (one per
  process), the step count and the history. ``tests/test_ppo.py`` kills a run and checks the
  resumed one ends bit-identical to an uninterrupted one.
* :func:`save_policy` -- the policy alone (LoRA merged in) as a checkpoint any Hugging Face
  class can load, with its value head beside it.

All three write atomically (:func:`rlhf_utils.checkpoints.atomic_folder`). They are called as
``trainer.save_state(path)`` and so on.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import torch

from rlhf_utils.checkpoints import atomic_folder, write_checkpoint

STATE_FILE = "trainer_state.json"
PARAMS_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
VALUE_HEAD_FILE = "value_head.safetensors"
FORMAT = "rlhf_utils.ppo/2"
CONFIG_KEYS_FREE_ON_RESUME = ("steps", "torch_compile")
"""config fields a resumed run may change (it may be made longer or shorter, compiled or not)"""


def _fingerprint(trainer) -> dict:
    return {"config": dataclasses.asdict(trainer.config), "num_processes": trainer.world_size,
            "params": {n: list(p.shape) for n, p in trainer.accelerator.unwrap_model(trainer.model).named_parameters()
                       if p.requires_grad}}


def save_state(trainer, path: str | Path) -> Path:
    """Everything a resumed run needs to continue exactly: trainable weights (value head
    included), optimizer, KL controller, every random generator, step and history.
    Written atomically (a temporary folder renamed into place)."""
    from accelerate.utils import gather_object
    from safetensors.torch import save_file

    path = Path(path)
    gens = gather_object([[trainer.sample_gen.get_state().tolist(), trainer.shuffle_gen.get_state().tolist()]])
    if trainer.accelerator.is_main_process:
        with atomic_folder(path) as tmp:
            model = trainer.accelerator.unwrap_model(trainer.model)
            save_file({n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad},
                      str(tmp / PARAMS_FILE))
            torch.save(trainer.optimizer.state_dict(), tmp / OPTIMIZER_FILE)
            state = {"format": FORMAT, "step": trainer.step_count, **_fingerprint(trainer),
                     "kl_ctl": trainer.kl_ctl.state_dict(), "history": trainer.history,
                     "prompt_gen": trainer.prompt_gen.get_state().tolist(), "rank_gens": gens}
            (tmp / STATE_FILE).write_text(json.dumps(state))
    trainer.accelerator.wait_for_everyone()
    return path


def load_state(trainer, path: str | Path):
    """Continue from :meth:`save_state`'s folder. The trainer must have been built like
    the one that saved it (same config except ``steps``, same model, same processes)."""
    from safetensors.torch import load_file

    path = Path(path)
    missing = [f for f in (STATE_FILE, PARAMS_FILE, OPTIMIZER_FILE) if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} is not a complete PPO checkpoint (missing {', '.join(missing)}); "
                                "it is written by PPOTrainer.save_state / train(save_dir=..., save_every=...).")
    state = json.loads((path / STATE_FILE).read_text())
    now = _fingerprint(trainer)
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
    model = trainer.accelerator.unwrap_model(trainer.model)
    saved = load_file(str(path / PARAMS_FILE))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(saved[n].to(p.device))
    trainer.optimizer.load_state_dict(torch.load(path / OPTIMIZER_FILE, map_location=trainer.device, weights_only=True))
    trainer.kl_ctl.load_state_dict(state["kl_ctl"])
    trainer.prompt_gen.set_state(torch.tensor(state["prompt_gen"], dtype=torch.uint8))
    sample_state, shuffle_state = state["rank_gens"][trainer.rank]
    trainer.sample_gen.set_state(torch.tensor(sample_state, dtype=torch.uint8))
    trainer.shuffle_gen.set_state(torch.tensor(shuffle_state, dtype=torch.uint8))
    trainer.step_count, trainer.history = state["step"], state["history"]
    return trainer


def save_policy(trainer, path: str | Path) -> Path:
    """The trained policy as a Hugging Face folder (LoRA merged in), plus its value head."""
    from safetensors.torch import save_file

    path = Path(path)
    if trainer.accelerator.is_main_process:
        policy = trainer.policy
        if hasattr(policy, "merge_and_unload"):
            policy = copy.deepcopy(policy).merge_and_unload()
        head = trainer.value_head
        with atomic_folder(path) as tmp:
            write_checkpoint(policy, trainer.tokenizer, tmp)
            save_file({"weight": head.weight.detach().cpu().contiguous(),
                       "bias": head.bias.detach().cpu().contiguous()}, str(tmp / VALUE_HEAD_FILE))
    trainer.accelerator.wait_for_everyone()
    return path
