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

    python benchmarks/ppo_full_scale.py [--steps 5] [--policy DIR] [--device cuda] [--lora-r 16] [--compile]
    python benchmarks/ppo_full_scale.py --device cpu --steps 1 --batch 8 --num-minibatches 2 --max-new-tokens 8   # smoke test

Peak memory: ``torch.cuda.max_memory_allocated`` on a GPU, peak RSS of the process otherwise.
MFU (model FLOPs utilisation): the FLOPs a step needs -- generation and the reference pass are
forward passes (2 N FLOPs per token plus attention), each update epoch is a forward and a
backward (3 forward passes), N the parameters outside the embeddings (Kaplan et al. 2020;
the attention term as in PaLM, Chowdhery et al. 2022, appendix B) -- over the step's wall time
and the device's peak (``--peak-tflops``; known GPUs by name). Without CUDA it stops at once
unless ``--device cpu`` is given. After the timed steps, one step is profiled by phase and
operator (``torch.profiler``; the same table as ``ppo_vs_trl.py``'s).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from ppo_vs_trl import peak_rss_mb, profile_step, time_generation
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


PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "T4": 65.0}
"""dense bf16 (fp16 for the T4) peak of some GPUs, by a word of their name, in TFLOP/s (vendor data sheets)"""


def step_flops(model, prompt_len: int, response_lens: list[float], update_epochs: int) -> float:
    """FLOPs of one PPO step: sampling the responses (forward, one token at a time), the reference
    pass and ``update_epochs`` forward+backward passes over the whole [prompt | response] rows."""
    c = model.config
    n_layer = getattr(c, "n_layer", None) or c.num_hidden_layers
    width = getattr(c, "n_embd", None) or c.hidden_size
    embedding = model.get_input_embeddings().weight.numel()
    n = sum(p.numel() for p in model.parameters()) - embedding  # the LM head is tied to the embedding in GPT-2
    flops = 0.0
    for r in response_lens:
        t = prompt_len + r
        forward = 2 * n * t + 2 * n_layer * t * t * width  # matmuls + attention (causal: half of 4 L T^2 d)
        flops += forward + forward + 3 * update_epochs * forward  # sampling, reference, update
    return flops


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5, help="timed PPO iterations (after one warm-up step)")
    ap.add_argument("--policy", default=None, help="a causal-LM folder; default: the full preset's model, random weights")
    ap.add_argument("--scale", default="full", help="the preset whose PPO settings (and model) are used")
    ap.add_argument("--device", default=None, help="cuda (the default) or cpu / mps")
    ap.add_argument("--batch", type=int, default=None, help="completions per iteration (default: the preset's)")
    ap.add_argument("--num-minibatches", type=int, default=None, help="optimizer steps per epoch (default: the preset's)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: the preset's")
    ap.add_argument("--lora-r", type=int, default=None, help="LoRA rank (default: the preset's, 0 = full fine-tuning)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats of generate / sample / rollout")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for MFU (default: known GPUs)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the update's forward (PPOConfig.torch_compile)")
    ap.add_argument("--no-profile", action="store_true", help="skip the profiled step")
    args = ap.parse_args()
    if args.device is None and not torch.cuda.is_available():
        raise SystemExit("ppo_full_scale.py: no CUDA GPU here (torch.cuda.is_available() is False). This benchmark "
                         "measures the full preset on a GPU; pass --device cpu to run it (slowly) on the CPU.")

    preset = get_preset(args.scale)
    changes = {"batch_size": args.batch, "num_minibatches": args.num_minibatches,
               "max_new_tokens": args.max_new_tokens, "lora_r": args.lora_r, "torch_compile": args.compile or None}
    config = dataclasses.replace(preset.ppo, steps=args.steps + 1, **{k: v for k, v in changes.items() if v is not None})
    device = get_device(args.device or "cuda")
    seed_everything(config.seed)
    world = World(preset.world.seed)
    policy, tokenizer = policy_and_tokenizer(args, preset, world)
    n_params = sum(p.numel() for p in policy.parameters())
    prompts = world.prompts(config.n_prompts, seed=config.seed)
    start = time.perf_counter()
    trainer = PPOTrainer(policy, tokenizer, gold_reward_fn(world), prompts, config, device=device)
    print(f"{type(policy).__name__}, {n_params / 1e6:.1f} M parameters, on {trainer.device}, "
          f"mixed precision {trainer.accelerator.mixed_precision}; batch {config.batch_size}, "
          f"{config.num_minibatches} minibatches, {config.update_epochs} epochs, {config.max_new_tokens} new tokens, "
          f"LoRA r {config.lora_r}; update forward {'compiled' if trainer.compiled else 'not compiled'} "
          f"(trainer ready in {time.perf_counter() - start:.1f} s)")

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
    per_step = {k: sum(h[k] for h in timed) / len(timed) for k in ("time/sample", "time/rollout", "time/update")}
    print(f"\n{len(timed)} timed steps in {wall:.1f} s: {samples / wall:.1f} samples/s, {tokens / wall:.0f} generated "
          f"tokens/s (mean completion {tokens / samples:.1f} tokens); per step sampling {per_step['time/sample']:.2f} s, "
          f"rollout {per_step['time/rollout']:.2f} s, update {per_step['time/update']:.2f} s; {memory}")
    prompt_len = max(len(tokenizer(p)["input_ids"]) for p in prompts[:256])
    flops = sum(step_flops(trainer.policy, prompt_len, [h["objective/response_length"]] * config.batch_size,
                           config.update_epochs) for h in timed)
    peak = peak_tflops(trainer.device, args.peak_tflops)
    print(f"model FLOPs {flops / wall / 1e12:.2f} TFLOP/s"
          + (f" = MFU {flops / wall / (peak * 1e12):.1%} of a {peak:.0f} TFLOP/s peak" if peak else
             " (MFU: pass --peak-tflops for this device)"))
    gen = time_generation(trainer, prompts[: config.batch_size], args.repeats)
    print(f"one batch of {config.batch_size} (median of {args.repeats}): HF generate {gen['generate']:.3f} s, "
          f"lm.sample {gen['sample']:.3f} s ({gen['sample'] / gen['generate']:.2f}x), whole rollout "
          f"{gen['rollout']:.3f} s ({gen['rollout'] / gen['generate']:.2f}x)")
    if not args.no_profile:
        print("\n" + profile_step(trainer)["table"])


if __name__ == "__main__":
    main()
