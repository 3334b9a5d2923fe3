"""``python -m rlhf_utils.ppo``: the PPO fine-tune from the command line.

PPO on the SFT policy against the reward model (or the world's gold reward), with
resumable checkpoints; alone, or on several processes or GPUs (see :func:`main`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Sequence

from rlhf_utils.checkpoints import load_checkpoint
from rlhf_utils.config import checkpoints_dir, get_preset, seed_everything
from rlhf_utils.evaluation import gold_metrics, gold_reward_fn
from rlhf_utils.ppo import PPOTrainer
from rlhf_utils.ppo_checkpoint import STATE_FILE
from rlhf_utils.world import World


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m rlhf_utils.ppo``: PPO on the SFT policy against the reward model.

    The same command runs on several GPUs under Hugging Face accelerate, or on several CPU
    processes under torchrun (accelerate's own multi-CPU launcher needs MPI); the trainer's
    ``Accelerator`` picks the processes up either way::

        accelerate launch --multi_gpu --num_processes 2 -m rlhf_utils.ppo --scale full
        torchrun --nproc_per_node 2 -m rlhf_utils.ppo --device cpu
    """
    import argparse

    ap = argparse.ArgumentParser(prog="python -m rlhf_utils.ppo", description=main.__doc__.splitlines()[0])
    ap.add_argument("--scale", default=None, help="quick or full (default: $RLHF_SCALE, else from the hardware)")
    ap.add_argument("--policy", default=None, help="SFT checkpoint folder or hub id (default: checkpoints/sft)")
    ap.add_argument("--reward", default=None,
                    help="reward-model folder (default: checkpoints/reward), or 'gold' for the world's gold reward")
    ap.add_argument("--out", default=None, help="where the trained policy goes (default: checkpoints/ppo)")
    ap.add_argument("--steps", type=int, default=None, help="PPO iterations (default: the preset's)")
    ap.add_argument("--lora-r", type=int, default=None, help="LoRA rank (0: full fine-tuning)")
    ap.add_argument("--save-every", type=int, default=10, help="steps between resumable checkpoints (0: none)")
    ap.add_argument("--resume", action="store_true", help="continue from <out>-state if it exists")
    ap.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    args = ap.parse_args(argv)

    preset = get_preset(args.scale)
    changes = {k: v for k, v in (("steps", args.steps), ("lora_r", args.lora_r)) if v is not None}
    config = dataclasses.replace(preset.ppo, **changes)
    seed_everything(config.seed)
    world = World(preset.world.seed)
    policy, tokenizer = load_checkpoint(args.policy or checkpoints_dir() / "sft", device="cpu")
    if args.reward == "gold":
        reward = gold_reward_fn(world)
    else:
        from rlhf_utils.reward import RewardModel

        reward = RewardModel.load(args.reward or checkpoints_dir() / "reward", device="cpu")
    out = Path(args.out) if args.out else checkpoints_dir() / "ppo"
    state_dir = out.with_name(out.name + "-state")
    trainer = PPOTrainer(policy, tokenizer, reward, world.prompts(config.n_prompts, seed=config.seed), config,
                         extra_metrics=gold_metrics(world), device=args.device)
    if args.resume and (state_dir / STATE_FILE).is_file():
        trainer.load_state(state_dir)
    t0 = time.perf_counter()
    history = trainer.train(save_dir=state_dir, save_every=args.save_every)
    trainer.save_policy(out)
    if trainer.accelerator.is_main_process and history:
        first, last = history[0], history[-1]
        print(f"{trainer.step_count} PPO steps on {trainer.world_size} process(es) in "
              f"{time.perf_counter() - t0:.0f} s; saved to {out}")
        for key in ("objective/scores", "gold/mean", "gold/grammatical", "objective/kl", "objective/kl_coef"):
            print(f"  {key:<20} {first[key]:8.3f} -> {last[key]:8.3f}")


if __name__ == "__main__":
    main()
