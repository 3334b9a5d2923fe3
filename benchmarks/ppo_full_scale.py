"""Speed and memory of the PPO trainer at the `full` preset: samples/s, generated tokens/s,
peak memory, wall time, and the rollout against raw ``model.generate``.

Learning is notebook 06's business; this measures the machine. The policy is ``--policy``
(e.g. ``checkpoints/sft`` after ``make course SCALE=full``), or, without one, the full
preset's architecture (16 layers x 768 wide, 114 M parameters) with fresh random weights
and the world's tokenizer: a random policy seldom samples EOS, so nearly every completion
runs to ``max_new_tokens`` -- the most work a sample can cost. The reward is the world's
gold reward (no reward model needed). PPO settings are the full preset's (batch 256,
minibatches of 64, 4 epochs, 64 new tokens, bf16 autocast on a GPU that supports it) unless
overridden. One step is run first as a warm-up and not timed.

    python benchmarks/ppo_full_scale.py [--steps 5] [--policy DIR] [--device cuda] [--lora-r 16]
    python benchmarks/ppo_full_scale.py --device cpu --steps 1 --batch 8 --num-minibatches 2 --max-new-tokens 8   # smoke test

Peak memory: ``torch.cuda.max_memory_allocated`` on a GPU, peak RSS of the process otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from ppo_vs_trl import peak_rss_mb, time_generation
from rlhf_utils import lm
from rlhf_utils.checkpoints import load_checkpoint
from rlhf_utils.config import get_device, get_preset, seed_everything
from rlhf_utils.evaluation import gold_reward_fn
from rlhf_utils.ppo import PPOTrainer
from rlhf_utils.world import World


def policy_and_tokenizer(args, preset, world):
    if args.policy:
        return load_checkpoint(Path(args.policy), device="cpu")
    tokenizer = lm.train_tokenizer(world.corpus(5_000, seed=0))
    return lm.build_model(preset.lm, tokenizer).eval(), tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5, help="timed PPO iterations (after one warm-up step)")
    ap.add_argument("--policy", default=None, help="a causal-LM folder; default: the full preset's model, random weights")
    ap.add_argument("--scale", default="full", help="the preset whose PPO settings (and model) are used")
    ap.add_argument("--device", default=None, help="cuda, cpu or mps (default: the best available)")
    ap.add_argument("--batch", type=int, default=None, help="completions per iteration (default: the preset's)")
    ap.add_argument("--num-minibatches", type=int, default=None, help="optimizer steps per epoch (default: the preset's)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: the preset's")
    ap.add_argument("--lora-r", type=int, default=None, help="LoRA rank (default: the preset's, 0 = full fine-tuning)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats of generate / sample / rollout")
    args = ap.parse_args()

    preset = get_preset(args.scale)
    changes = {"batch_size": args.batch, "num_minibatches": args.num_minibatches,
               "max_new_tokens": args.max_new_tokens, "lora_r": args.lora_r}
    config = dataclasses.replace(preset.ppo, steps=args.steps + 1, **{k: v for k, v in changes.items() if v is not None})
    device = get_device(args.device)
    seed_everything(config.seed)
    world = World(preset.world.seed)
    policy, tokenizer = policy_and_tokenizer(args, preset, world)
    n_params = sum(p.numel() for p in policy.parameters())
    prompts = world.prompts(config.n_prompts, seed=config.seed)
    trainer = PPOTrainer(policy, tokenizer, gold_reward_fn(world), prompts, config, device=device)
    print(f"{type(policy).__name__}, {n_params / 1e6:.1f} M parameters, on {trainer.device}, "
          f"mixed precision {trainer.accelerator.mixed_precision}; batch {config.batch_size}, "
          f"{config.num_minibatches} minibatches, {config.update_epochs} epochs, {config.max_new_tokens} new tokens, LoRA r {config.lora_r}")

    trainer.step()  # warm-up: allocator, kernels
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.train(progress=True)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    timed = trainer.history[1:]
    samples = len(timed) * config.batch_size
    tokens = sum(h["objective/response_length"] * config.batch_size for h in timed)
    memory = (f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
              if trainer.device.type == "cuda" else f"peak RSS {peak_rss_mb():.0f} MB")
    rollout = sum(h["time/rollout"] for h in timed) / len(timed)
    update = sum(h["time/update"] for h in timed) / len(timed)
    print(f"\n{len(timed)} timed steps in {wall:.1f} s: {samples / wall:.1f} samples/s, {tokens / wall:.0f} generated "
          f"tokens/s (mean completion {tokens / samples:.1f} tokens); per step rollout {rollout:.2f} s + update "
          f"{update:.2f} s; {memory}")
    gen = time_generation(trainer, prompts[: config.batch_size], args.repeats)
    print(f"one batch of {config.batch_size} (median of {args.repeats}): HF generate {gen['generate']:.3f} s, "
          f"lm.sample {gen['sample']:.3f} s ({gen['sample'] / gen['generate']:.2f}x), whole rollout "
          f"{gen['rollout']:.3f} s ({gen['rollout'] / gen['generate']:.2f}x)")


if __name__ == "__main__":
    main()
