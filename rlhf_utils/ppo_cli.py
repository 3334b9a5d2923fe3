"""``python -m rlhf_utils.ppo``: the PPO fine-tune from the command line.

PPO on the SFT policy against the reward model (or the world's gold reward), with
resumable checkpoints; alone, or on several processes or GPUs (see :func:`main`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from rlhf_utils.checkpoints import load_checkpoint
from rlhf_utils.checks import check_int, cli_parser, exit_on_error
from rlhf_utils.config import checkpoints_dir, get_device, get_preset, seed_everything
from rlhf_utils.evaluation import gold_metrics, gold_reward_fn
from rlhf_utils.ppo import PPOTrainer
from rlhf_utils.ppo_checkpoint import STATE_FILE, VALUE_HEAD_FILE
from rlhf_utils.world import World


PROG = "rlhf_utils.ppo"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rlhf_utils.ppo``: PPO on the SFT policy against the reward model.

    The same command runs on several GPUs under Hugging Face accelerate, or on several CPU
    processes under torchrun (accelerate's own multi-CPU launcher needs MPI); the trainer's
    ``Accelerator`` picks the processes up either way::

        accelerate launch --multi_gpu --num_processes 2 -m rlhf_utils.ppo --scale full
        torchrun --nproc_per_node 2 -m rlhf_utils.ppo --device cpu

    Every argument is checked before anything is loaded; any error is one line on stderr and
    a non-zero exit (``SystemExit``; the traceback with ``--debug``). A run that trains no
    step (``--resume`` of a finished run) leaves ``--out`` as it was, and ``--out`` is never
    the input checkpoints nor a folder that is not an earlier PPO output.
    """
    ap = cli_parser(PROG, main.__doc__.splitlines()[0])
    ap.add_argument("--scale", default=None, help="quick or full (default: $RLHF_SCALE, else from the hardware)")
    ap.add_argument("--policy", default=None, help="SFT checkpoint folder or hub id (default: checkpoints/sft)")
    ap.add_argument("--reward", default=None,
                    help="reward-model folder (default: checkpoints/reward), or 'gold' for the world's gold reward")
    ap.add_argument("--out", default=None, help="where the trained policy goes (default: checkpoints/ppo)")
    ap.add_argument("--steps", type=int, default=None, help="PPO iterations, at least 1 (default: the preset's)")
    ap.add_argument("--lora-r", type=int, default=None, help="LoRA rank (0: full fine-tuning)")
    ap.add_argument("--save-every", type=int, default=10, help="steps between resumable checkpoints (0: none)")
    ap.add_argument("--resume", action="store_true", help="continue from <out>-state if it exists")
    ap.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the update's forward (PPOConfig.torch_compile)")
    args = ap.parse_args(argv)
    return exit_on_error(PROG, args.debug, _run, args)


def _same(a: Path, b: Path) -> bool:
    return a.exists() and b.exists() and os.path.samefile(a, b)


def _run(args) -> int:
    # 1. everything that can be checked without loading a model
    preset = get_preset(args.scale)
    changes = {k: v for k, v in (("steps", args.steps), ("lora_r", args.lora_r),
                                 ("torch_compile", args.compile or None)) if v is not None}
    config = dataclasses.replace(preset.ppo, **changes)  # checks --steps >= 1, --lora-r >= 0
    check_int("--save-every", args.save_every, 0, "steps between checkpoints; 0 saves none")
    device = get_device(args.device)
    policy_path = Path(args.policy).expanduser() if args.policy else checkpoints_dir() / "sft"
    reward_path = None if args.reward == "gold" else Path(args.reward).expanduser() if args.reward \
        else checkpoints_dir() / "reward"
    out = Path(args.out).expanduser() if args.out else checkpoints_dir() / "ppo"
    state_dir = out.with_name(out.name + "-state")
    for flag, given in (("--policy", policy_path), ("--reward", reward_path)):
        if given is not None and (_same(given, out) or _same(given, state_dir)):
            raise ValueError(f"--out {out} is the {flag} folder: the run would write over its own input. "
                             "Pass another --out (default: checkpoints/ppo).")
    if out.exists() and not (out.is_dir() and ((out / VALUE_HEAD_FILE).is_file() or not any(out.iterdir()))):
        raise FileExistsError(f"--out {out} exists and is not a PPO policy folder (no {VALUE_HEAD_FILE}): "
                              "it would be replaced. Pass a new folder, or the --out of an earlier PPO run.")

    # 2. load and train
    seed_everything(config.seed)
    world = World(preset.world.seed)
    if reward_path is None:
        reward = gold_reward_fn(world)
    else:
        from rlhf_utils.reward import RewardModel

        reward = RewardModel.load(reward_path, device="cpu")
    policy, tokenizer = load_checkpoint(args.policy if args.policy and not policy_path.exists() else policy_path,
                                        device="cpu")  # a hub id stays a string
    trainer = PPOTrainer(policy, tokenizer, reward, world.prompts(config.n_prompts, seed=config.seed), config,
                         extra_metrics=gold_metrics(world), device=device)
    if args.resume and (state_dir / STATE_FILE).is_file():
        trainer.load_state(state_dir)
    start = trainer.step_count
    if start >= config.steps and (out / VALUE_HEAD_FILE).is_file():
        print(f"{state_dir} is already at step {start} of --steps {config.steps}: nothing to train, and {out} "
              "is left as it was. Pass a larger --steps to train on.")
        return 0
    t0 = time.perf_counter()
    history = trainer.train(save_dir=state_dir, save_every=args.save_every)
    trainer.save_policy(out)
    if trainer.accelerator.is_main_process and history:
        first, last = history[0], history[-1]
        print(f"{trainer.step_count} PPO steps on {trainer.world_size} process(es) ({trainer.step_count - start} in "
              f"this run, {time.perf_counter() - t0:.0f} s); saved to {out}")
        for key in ("objective/scores", "gold/mean", "gold/grammatical", "objective/kl", "objective/kl_coef"):
            print(f"  {key:<20} {first.get(key, math.nan):8.3f} -> {last.get(key, math.nan):8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
