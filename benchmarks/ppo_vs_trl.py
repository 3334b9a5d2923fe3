"""Our PPO (rlhf_utils.ppo.PPOTrainer) against TRL's RLOOTrainer on the same task, one machine.

Both start from the same SFT policy (checkpoints/sft, made by notebook 03), are rewarded by
the same function (the world's gold reward, so "reward gain" and "gold gain" are one
thing), draw prompts from the same pool, and sample the same number of completions
(``steps x batch``, at temperature 1, at most ``max_new_tokens`` each). Each trainer runs in
its own subprocess, one after the other (``--rounds`` runs each, alternating ours / TRL so
that a change in machine load hits both alike; medians reported), so that its peak RSS is its
own. Reported:

* samples/s and generated tokens/s over the training wall time (model loading and the
  before/after evaluations excluded);
* peak RSS of the process;
* gold reward of the policy before and after: the mean over the same 256 evaluation
  prompts, one sampled completion each, sampled with the same function for both;
* the ratios ours / TRL.

A third subprocess times, on one batch of prompts, Hugging Face ``model.generate``
(sampling, KV cache, stop at EOS), our sampler (``rlhf_utils.lm.sample``) and our whole
rollout (sampling + value pass + reference pass + reward), to show how close the rollout
comes to raw generation.

Settings that differ by design: TRL's RLOO samples ``num_generations`` completions per
prompt and needs no value function (REINFORCE leave-one-out baseline, Ahmadian et al.
2024); ours samples one per prompt and learns a value head. Both use the same learning
rate, KL coefficient (TRL: fixed ``beta``; ours: adaptive from the same start), one
optimisation pass per batch for TRL (its default) and ``ppo_epochs`` for ours.

    python benchmarks/ppo_vs_trl.py [--steps 20] [--batch 64] [--threads 2] [--ppo-epochs N]

Measured here (2 CPU cores shared with other jobs: absolute numbers move between runs, read
the ratios), quick-scale SFT policy (0.42 M parameters), 20 x 64 completions, one torch thread,
median of 2 alternating runs each:

| our ppo_epochs | samples/s ours / TRL | gold gain ours / TRL | peak RSS ours / TRL |
|---|---|---|---|
| 2 (the preset) | 176 / 217 = 0.81x | +0.63 / +0.19 | 467 / 605 MB |
| 1 | 242 / 138 = 1.75x | +0.31 / +0.19 | 470 / 613 MB |

Other runs of the same command, under other loads, gave 0.79x and 1.15x for 2 epochs and
1.12x-1.13x for 1 epoch: the ratio itself moves with the load on a shared machine.

RLOO does less work per sample (no value function, one pass over each batch); PPO spends it
on more gold reward per sample. On one batch of 64 prompts: HF ``model.generate`` 100 ms,
our ``lm.sample`` 104 ms (1.03x), our whole rollout 151 ms (1.51x; 1.71x in another run): it reuses the sampler's
log-probabilities and hidden states (values), and adds one pass of the reference policy
and the reward.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from rlhf_utils import lm
from rlhf_utils.config import checkpoints_dir, get_preset
from rlhf_utils.ppo import PPOTrainer, gold_reward_fn
from rlhf_utils.world import World

N_EVAL = 256


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def setup(args):
    torch.set_num_threads(args.threads)
    preset = get_preset("quick")
    world = World(preset.world.seed)
    policy_path = Path(args.policy or checkpoints_dir() / "sft")
    if not policy_path.is_dir():
        sys.exit(f"No SFT policy at {policy_path}: run notebook 03 (supervised fine-tuning) first.")
    model, tok = lm.load_checkpoint(policy_path, device="cpu")
    config = dataclasses.replace(preset.ppo, steps=args.steps, batch_size=args.batch,
                                 mini_batch_size=args.batch // 2, max_new_tokens=args.max_new_tokens,
                                 ppo_epochs=args.ppo_epochs or preset.ppo.ppo_epochs)
    prompts = world.prompts(config.n_prompts, seed=config.seed)
    eval_prompts = world.prompts(N_EVAL, seed=10_000)
    return world, model, tok, config, prompts, eval_prompts


def gold_of(model, tok, world, prompts, max_new_tokens) -> float:
    g = torch.Generator().manual_seed(123)
    texts = lm.sample(model, tok, prompts, max_new_tokens, generator=g).texts
    return float(world.gold_rewards(texts, prompts).mean())


def worker_ours(args) -> dict:
    world, model, tok, config, prompts, eval_prompts = setup(args)
    before = gold_of(model, tok, world, eval_prompts, config.max_new_tokens)
    trainer = PPOTrainer(model, tok, gold_reward_fn(world), prompts, config, device="cpu")
    start = time.perf_counter()
    history = trainer.train(progress=False)
    wall = time.perf_counter() - start
    after = gold_of(trainer.policy, tok, world, eval_prompts, config.max_new_tokens)
    tokens = sum(h["objective/response_length"] * config.batch_size for h in history)
    return {"wall_s": wall, "samples": config.steps * config.batch_size, "tokens": tokens,
            "gold_before": before, "gold_after": after, "peak_rss_mb": peak_rss_mb()}


def worker_trl(args) -> dict:
    from datasets import Dataset
    from trl import RLOOConfig, RLOOTrainer

    world, model, tok, config, prompts, eval_prompts = setup(args)
    before = gold_of(model, tok, world, eval_prompts, config.max_new_tokens)

    def gold(prompts, completions, **kwargs):
        return [float(x) for x in world.gold_rewards(list(completions), [p.strip() for p in prompts])]

    with tempfile.TemporaryDirectory() as out:
        targs = RLOOConfig(
            output_dir=out, per_device_train_batch_size=config.batch_size, num_generations=args.num_generations,
            max_completion_length=config.max_new_tokens, learning_rate=config.lr, beta=config.init_kl_coef,
            max_steps=config.steps, logging_steps=1, report_to="none", use_cpu=True, save_strategy="no",
            temperature=config.temperature, seed=config.seed, bf16=False, disable_dropout=True,
            dataloader_num_workers=0, max_grad_norm=config.max_grad_norm,
            gradient_checkpointing=False)  # ours does not recompute activations either
        trainer = RLOOTrainer(model=model, reward_funcs=gold, args=targs, processing_class=tok,
                              train_dataset=Dataset.from_dict({"prompt": prompts}))
        start = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - start
        logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
        tokens = sum(h["completions/mean_length"] * config.batch_size for h in logs)
        after = gold_of(trainer.model.eval(), tok, world, eval_prompts, config.max_new_tokens)
    return {"wall_s": wall, "samples": config.steps * config.batch_size, "tokens": tokens,
            "gold_before": before, "gold_after": after, "peak_rss_mb": peak_rss_mb()}


def worker_generate(args) -> dict:
    world, model, tok, config, prompts, eval_prompts = setup(args)
    batch = prompts[: config.batch_size]
    ids, mask = lm.encode_prompts(tok, batch)
    trainer = PPOTrainer(model, tok, gold_reward_fn(world), prompts, config, device="cpu")
    policy = trainer.policy
    g = torch.Generator().manual_seed(0)

    def hf_generate():
        torch.manual_seed(0)
        with torch.no_grad():
            out = policy.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0,
                                  max_new_tokens=config.max_new_tokens, eos_token_id=tok.eos_token_id,
                                  pad_token_id=tok.pad_token_id)
        return out

    timings = {}
    for name, fn in (("generate", hf_generate),
                     ("sample", lambda: lm.sample(policy, tok, batch, config.max_new_tokens, generator=g)),
                     ("rollout", lambda: trainer.rollout(batch))):
        fn()  # warm-up
        runs = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t0)
        timings[name] = statistics.median(runs)
    return timings


def run_worker(name: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", name] + [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                                                          if k != "worker" and v is not None]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        sys.exit(f"worker {name} failed:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="training iterations of each trainer")
    ap.add_argument("--batch", type=int, default=64, help="completions sampled per iteration")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--num-generations", type=int, default=4, help="RLOO's completions per prompt")
    ap.add_argument("--ppo-epochs", type=int, default=None, help="our PPO epochs per batch (default: the quick preset's)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of every worker")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each trainer, alternating; medians reported")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats of each generation method")
    ap.add_argument("--policy", default=None, help="SFT checkpoint (default: checkpoints/sft)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        fn = {"ours": worker_ours, "trl": worker_trl, "generate": worker_generate}[args.worker]
        print(json.dumps(fn(args)))
        return

    t0 = time.perf_counter()
    gen = run_worker("generate", args)
    runs = {"ours": [], "trl": []}
    for r in range(args.rounds):  # alternate, so that a change in machine load hits both alike
        for name in (("ours", "trl") if r % 2 == 0 else ("trl", "ours")):
            runs[name].append(run_worker(name, args))
    ours, trl = ({k: statistics.median(run[k] for run in runs[name]) for k in runs[name][0]} for name in ("ours", "trl"))
    rows = []
    for name, r in (("ours (PPO)", ours), ("TRL RLOOTrainer", trl)):
        rows.append((name, r["samples"] / r["wall_s"], r["tokens"] / r["wall_s"], r["peak_rss_mb"],
                     r["gold_before"], r["gold_after"], r["wall_s"]))
    print(f"\nsame SFT policy, gold reward, prompts; {args.steps} x {args.batch} completions each; "
          f"{args.threads} torch threads; our ppo_epochs = {args.ppo_epochs or get_preset('quick').ppo.ppo_epochs}, "
          f"TRL num_iterations = 1; median of {args.rounds} alternating runs each\n")
    print(f"| trainer | samples/s | gen tokens/s | peak RSS MB | gold before -> after | wall s |")
    print(f"|---|---|---|---|---|---|")
    for name, sps, tps, rss, gb, ga, wall in rows:
        print(f"| {name} | {sps:.1f} | {tps:.0f} | {rss:.0f} | {gb:+.3f} -> {ga:+.3f} ({ga - gb:+.3f}) | {wall:.1f} |")
    o, t = rows
    print(f"| ratio ours/TRL | {o[1] / t[1]:.2f} | {o[2] / t[2]:.2f} | {o[3] / t[3]:.2f} | "
          f"gain {(o[5] - o[4]):+.3f} vs {(t[5] - t[4]):+.3f} | |")
    print(f"\none batch of {args.batch} prompts, max {args.max_new_tokens} new tokens (median of {args.repeats}):")
    print(f"| HF model.generate | our lm.sample | our full rollout (+ value, ref, reward) |")
    print(f"|---|---|---|")
    print(f"| {gen['generate']*1e3:.0f} ms | {gen['sample']*1e3:.0f} ms ({gen['sample']/gen['generate']:.2f}x) | "
          f"{gen['rollout']*1e3:.0f} ms ({gen['rollout']/gen['generate']:.2f}x) |")
    print(f"\nbenchmark wall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
