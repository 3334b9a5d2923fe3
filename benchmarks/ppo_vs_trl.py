"""Our PPO (rlhf_utils.ppo.PPOTrainer) against TRL's RLOOTrainer on the same task, one machine.

Both start from the same SFT policy (checkpoints/sft, made by notebook 03), are rewarded by
the same function (the world's gold reward, so "reward gain" and "gold gain" are one
thing), draw prompts from the same pool, and sample the same number of completions
(``steps x batch``, at the quick preset's temperature 0.7, at most ``max_new_tokens`` each).
Each run is its own subprocess, so that its peak RSS is its own; ``--rounds`` runs of each
trainer, the order alternating from round to round so that a change in machine load hits
all alike; medians reported. Ours runs once per ``--update-epochs`` value (default: the
preset's 2, 1, and lm-human-preferences' 4). Reported:

* samples/s and generated tokens/s over the training wall time (model loading and the
  before/after evaluations excluded);
* peak RSS of the process;
* gold reward of the policy before and after: the mean over the same 256 evaluation
  prompts, one completion each, sampled with the same function for both;
* the ratios ours / TRL, and whether our gold gain is equal or better.

A first subprocess times, on one batch of prompts, Hugging Face ``model.generate``
(sampling at the same temperature, KV cache, stop at EOS), our sampler
(``rlhf_utils.lm.sample``) and our whole rollout (sampling + value + reference pass +
reward), interleaved, to show how close the rollout comes to raw generation.

Settings that differ by design: TRL's RLOO samples ``num_generations`` completions per
prompt and needs no value function (REINFORCE leave-one-out baseline, Ahmadian et al.
2024); ours samples one per prompt and learns a value head. Both use the same learning
rate, KL coefficient (TRL: fixed ``beta``; ours: adaptive from the same start), gradient
clipping, no gradient checkpointing, one optimisation pass per batch for TRL (its default,
one optimizer step per 64 completions) and ``update_epochs`` passes of 2 minibatches for ours.

    python benchmarks/ppo_vs_trl.py [--steps 40] [--batch 64] [--threads 1] [--update-epochs 2 1 4] [--rounds 3] [--compile] [--baseline REV]

``--compile`` adds a run of ours at the preset's epochs with ``PPOConfig.torch_compile``; its
compiling is the "start-up s" column (trainer construction), not in samples/s. ``--baseline REV``
adds a run of ours as of git revision ``REV`` (its committed code, exported to a temporary folder
and run by its own copy of this script) at the preset's epochs: the before/after of a change,
alternating with the rest in the same run.

After the profiled step, a ceiling: the samples/s and non-generation share our step would have
at the preset's epochs if only its model passes (sampling, reference pass, update epochs,
optimizer) took any time -- the reward function, the advantages and the Python between them
free. It says how far removing overhead could go, and what only cheaper arithmetic could.

Measured 2026-12-04 on this project's 2-core CPU machine (load 0.4), the quick SFT policy of
``make course --seed 1`` (0.11 M parameters), 40 x 64 completions, 1 thread, medians of 5
alternating rounds, ``--rounds 5 --compile --baseline 802af29`` (802af29: the code before the
padding-free forward of ``rlhf_utils.gpt2_fast``):

| trainer | samples/s | / TRL | gold gain | start-up s | non-generation share of the step |
|---|---|---|---|---|---|
| ours, update_epochs=2 (the preset) | 618 | 1.36x | +0.638 | 0.0 | 73% |
| ours, update_epochs=1 | 883 | 1.95x | +0.506 | 0.0 | 61% |
| ours, update_epochs=4 | 392 | 0.86x | +0.644 | 0.0 | 83% |
| ours, update_epochs=2, torch_compile | 573 | 1.26x | +0.638 | 8.1 | 74% |
| ours as of 802af29, update_epochs=2 | 584 | 1.29x | +0.638 | - | 76% |
| TRL RLOOTrainer | 453 | 1.00x | +0.479 | 0.0 | - |

Peak RSS ours / TRL 0.84x (447 vs 532 MB). After / before 802af29: 1.06x the samples/s (1.10x
in a second run, ``--rounds 5 --update-epochs 2 --baseline 802af29``), the same policy (gold
after +0.667 both), peak RSS 1.07x. Compiling now loses (0.93x uncompiled): the compiled update
traces the model's own padded forward.

The profile of one step at 2 epochs (shares of the step's wall time under the profiler), same
run: sampling 27%, reference pass 10%, reward 3%, advantages 1%, each update epoch 26%,
optimizer 5%, everything else 3%; matrix products are 33% of operator time, attention 22%.
The ceiling: 662 samples/s, 1.46x TRL, non-generation share 71% -- neither 2x TRL nor a share
of 60% at 2 epochs is within reach by trimming overhead. Timed alone
(``benchmarks/update_variants.py``), one minibatch's forward + backward (32 sequences x 30
columns) is 12.1 ms: PPO's two epochs are four of these, TRL's one pass over the batch two.

RLOO does less work per sample (no value function, one pass over each batch); PPO with the
preset's two epochs spends more per sample and gets more gold reward for it; with one epoch it
is both faster than TRL and still ahead of it in gold gain.
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
from rlhf_utils.checkpoints import load_checkpoint
from rlhf_utils.config import checkpoints_dir, get_preset
from rlhf_utils.evaluation import evaluate_policy, gold_reward_fn
from rlhf_utils.ppo import PPOTrainer
from rlhf_utils.world import World

N_EVAL = 256


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def setup(args, update_epochs: int | None = None):
    torch.set_num_threads(args.threads)
    preset = get_preset("quick")
    world = World(preset.world.seed)
    policy_path = Path(args.policy or checkpoints_dir() / "sft")
    if not policy_path.is_dir():
        sys.exit(f"No SFT policy at {policy_path}: run notebook 03 (supervised fine-tuning) first.")
    model, tok = load_checkpoint(policy_path, device="cpu")
    config = dataclasses.replace(preset.ppo, steps=args.steps, batch_size=args.batch, num_minibatches=2,
                                 max_new_tokens=args.max_new_tokens,
                                 update_epochs=update_epochs or preset.ppo.update_epochs)
    prompts = world.prompts(config.n_prompts, seed=config.seed)
    eval_prompts = world.prompts(N_EVAL, seed=10_000)
    return world, model, tok, config, prompts, eval_prompts


def gold_of(model, tok, world, prompts, max_new_tokens, temperature) -> float:
    return evaluate_policy(model, tok, world, prompts, max_new_tokens, temperature, seed=123).summary()["gold_mean"]


def worker_ours(args, update_epochs: int, torch_compile: bool = False) -> dict:
    world, model, tok, config, prompts, eval_prompts = setup(args, update_epochs)
    config = dataclasses.replace(config, torch_compile=torch_compile)
    before = gold_of(model, tok, world, eval_prompts, config.max_new_tokens, config.temperature)
    start = time.perf_counter()
    trainer = PPOTrainer(model, tok, gold_reward_fn(world), prompts, config, device="cpu")  # compiles, if asked
    if torch_compile and not trainer.compiled:
        sys.exit("--compile: torch.compile failed here (see the warning above); nothing to measure")
    startup = time.perf_counter() - start
    start = time.perf_counter()
    history = trainer.train(progress=False)
    wall = time.perf_counter() - start
    after = gold_of(trainer.policy, tok, world, eval_prompts, config.max_new_tokens, config.temperature)
    tokens = sum(h["objective/response_length"] * config.batch_size for h in history)
    sample_s = sum(h["time/sample"] for h in history)
    return {"wall_s": wall, "startup_s": startup, "samples": config.steps * config.batch_size, "tokens": tokens,
            "gold_before": before, "gold_after": after, "peak_rss_mb": peak_rss_mb(),
            "non_generation_share": 1 - sample_s / sum(h["time/step"] for h in history)}


def worker_trl(args) -> dict:
    from datasets import Dataset
    from trl import RLOOConfig, RLOOTrainer

    world, model, tok, config, prompts, eval_prompts = setup(args)
    before = gold_of(model, tok, world, eval_prompts, config.max_new_tokens, config.temperature)

    def gold(prompts, completions, **kwargs):
        return [float(x) for x in world.gold_rewards(list(completions), [p.strip() for p in prompts])]

    with tempfile.TemporaryDirectory() as out:
        targs = RLOOConfig(
            output_dir=out, per_device_train_batch_size=config.batch_size, num_generations=args.num_generations,
            max_completion_length=config.max_new_tokens, learning_rate=config.learning_rate, beta=config.init_kl_coef,
            max_steps=config.steps, logging_steps=1, report_to="none", use_cpu=True, save_strategy="no",
            temperature=config.temperature, seed=config.seed, bf16=False, disable_dropout=True,
            dataloader_num_workers=0, max_grad_norm=config.max_grad_norm,
            gradient_checkpointing=False)  # ours does not recompute activations either
        start = time.perf_counter()
        trainer = RLOOTrainer(model=model, reward_funcs=gold, args=targs, processing_class=tok,
                              train_dataset=Dataset.from_dict({"prompt": prompts}))
        startup = time.perf_counter() - start
        start = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - start
        logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
        tokens = sum(h["completions/mean_length"] * config.batch_size for h in logs)
        after = gold_of(trainer.model.eval(), tok, world, eval_prompts, config.max_new_tokens, config.temperature)
    return {"wall_s": wall, "startup_s": startup, "samples": config.steps * config.batch_size, "tokens": tokens,
            "gold_before": before, "gold_after": after, "peak_rss_mb": peak_rss_mb()}


def time_generation(trainer: PPOTrainer, prompts: list[str], repeats: int) -> dict[str, float]:
    """Median seconds of Hugging Face ``generate``, our ``lm.sample`` and the trainer's whole
    rollout on one batch of ``prompts``: the same sampling distribution (temperature, no top-k /
    top-p), the same autocast, timed interleaved so that a change in load hits all three alike."""
    c, tok, policy, device = trainer.config, trainer.tokenizer, trainer.policy, trainer.device
    ids, mask = lm.encode_prompts(tok, prompts, device)
    g = torch.Generator(device=device).manual_seed(0)
    torch.manual_seed(0)

    def hf_generate():
        with torch.no_grad(), trainer.accelerator.autocast():
            return policy.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0,
                                   temperature=c.temperature, max_new_tokens=c.max_new_tokens,
                                   eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)

    def our_sample():
        with trainer.accelerator.autocast():
            return lm.sample(policy, tok, prompts, c.max_new_tokens, temperature=c.temperature, generator=g)

    methods = {"generate": hf_generate, "sample": our_sample, "rollout": lambda: trainer.rollout(prompts)}
    runs = {name: [] for name in methods}
    for repeat in range(repeats + 1):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if repeat:  # the first round warms up
                runs[name].append(time.perf_counter() - t0)
    return {name: statistics.median(r) for name, r in runs.items()}


PHASES = ("ppo/rollout/sample", "ppo/rollout/values", "ppo/rollout/reference", "ppo/rollout/reward",
          "ppo/advantages", "ppo/update/epoch", "ppo/update/optimizer")


MODEL_PASSES = tuple(p for p in PHASES if p not in ("ppo/rollout/reward", "ppo/advantages"))
"""the phases that are the models' own passes (and the optimizer's arithmetic); the rest of the step is
the reward function, the advantages and the Python around them"""


def model_passes_ceiling(phases: dict[str, float], wall: float, samples_per_s: float,
                         non_generation_share: float) -> tuple[float, float]:
    """``(samples/s, non-generation share)`` the step would have if only its model passes took
    any time: the fraction of the profiled step (``phases``: seconds per phase, ``wall``: its
    seconds) that is model passes scales the measured ``samples_per_s`` up, and the measured
    sampling time (``1 - non_generation_share`` of the step) becomes that much larger a share.
    Generous to us: the reward function, which any trainer calls, counts as free."""
    passes = sum(t for name, t in phases.items() if name.startswith(MODEL_PASSES)) / wall
    return samples_per_s / passes, 1 - (1 - non_generation_share) / passes


def profile_step(trainer: PPOTrainer, top: int = 12) -> dict:
    """One PPO step under ``torch.profiler``: ``{"table": ..., "phases": ..., "wall": ...}``, the
    table holding seconds per phase (the trainer's ``record_function`` labels: sampling, values,
    reference pass, reward, advantages, each update epoch, optimizer) and the operators that
    take the most time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if trainer.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        trainer.step()
        wall = time.perf_counter() - start  # the step, not the profiler's start and stop
    events = prof.key_averages()
    phases = {e.key: e.cpu_time_total / 1e6 for e in events if e.key.startswith("ppo/")}
    lines = [f"one PPO step, profiled: {wall:.3f} s wall (with the profiler's own cost per operator)",
             "| phase | s | share of the step |", "|---|---|---|"]
    for name in sorted(phases, key=lambda k: (next(i for i, p in enumerate(PHASES) if k.startswith(p)), k)):
        lines.append(f"| {name} | {phases[name]:.3f} | {phases[name] / wall:.0%} |")
    other = wall - sum(phases.values())
    lines.append(f"| outside these phases (zero_grad, shuffling, statistics, Python) | {other:.3f} | {other / wall:.0%} |")
    ops = sorted((e for e in events if e.key.startswith("aten::")), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events if e.key.startswith("aten::")) or 1
    lines += ["", "| operator (self CPU time) | s | share of all operators | calls |", "|---|---|---|---|"]
    lines += [f"| {e.key} | {e.self_cpu_time_total / 1e6:.3f} | {e.self_cpu_time_total / total:.0%} | {e.count} |"
              for e in ops[:top]]
    return {"table": "\n".join(lines), "phases": phases, "wall": wall}


def worker_profile(args) -> dict:
    world, model, tok, config, prompts, eval_prompts = setup(args)
    trainer = PPOTrainer(model, tok, gold_reward_fn(world), prompts, config, device="cpu")
    trainer.step()  # warm-up
    return profile_step(trainer)


def worker_generate(args) -> dict:
    world, model, tok, config, prompts, eval_prompts = setup(args)
    trainer = PPOTrainer(model, tok, gold_reward_fn(world), prompts, config, device="cpu")
    return time_generation(trainer, prompts[: config.batch_size], args.repeats)


def run_worker(name: str, args, root: Path | None = None) -> dict:
    """The worker ``name`` in a subprocess; with ``root`` (an exported revision) that revision's
    own benchmark worker on its own ``rlhf_utils``."""
    options = {k: v for k, v in vars(args).items()
               if k not in ("worker", "update_epochs", "compile", "baseline") and v is not None}
    script = root / "benchmarks" / Path(__file__).name if root else __file__
    cmd = [sys.executable, str(script), "--worker", name] + [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false",
           **({"PYTHONPATH": str(root)} if root else {})}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        sys.exit(f"worker {name} failed:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def export_revision(rev: str, into: Path) -> Path:
    """The committed tree of git revision ``rev`` of this repository, unpacked under ``into``;
    checked that a Python started on it imports that tree's ``rlhf_utils``, not the installed one."""
    repo = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", rev], capture_output=True)
    if archive.returncode != 0:
        sys.exit(f"--baseline {rev}: git cannot export it ({archive.stderr.decode().strip()}); give a commit of this "
                 "repository, e.g. --baseline 9ce750f")
    root = into / rev.replace("/", "_")
    root.mkdir()
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    where = subprocess.run([sys.executable, "-c", "import rlhf_utils; print(rlhf_utils.__file__)"], capture_output=True,
                           text=True, env={**os.environ, "PYTHONPATH": str(root)}, cwd=into)
    if where.returncode != 0 or not Path(where.stdout.strip()).is_relative_to(root):
        sys.exit(f"--baseline {rev}: its rlhf_utils does not import from {root} ({where.stdout}{where.stderr})")
    return root


def main() -> None:
    preset_epochs = get_preset("quick").ppo.update_epochs
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40, help="training iterations of each trainer")
    ap.add_argument("--batch", type=int, default=64, help="completions sampled per iteration")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--num-generations", type=int, default=4, help="RLOO's completions per prompt")
    ap.add_argument("--update-epochs", type=int, nargs="+", default=[preset_epochs, 1, 4],
                    help=f"our PPO epochs per batch, one run of ours for each (default: the preset's "
                         f"{preset_epochs}, 1, and 4 as lm-human-preferences)")
    ap.add_argument("--compile", action="store_true",
                    help="also run ours at the preset's epochs with torch_compile=True (compiling: start-up s)")
    ap.add_argument("--baseline", metavar="REV", default=None,
                    help="also run ours as of git revision REV (its own code, exported to a temporary folder) at "
                         "the preset's epochs: the before/after in one run, alternating with the rest")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of every worker")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each trainer, alternating; medians reported")
    ap.add_argument("--repeats", type=int, default=15, help="timed repeats of each generation method")
    ap.add_argument("--policy", default=None, help="SFT checkpoint (default: checkpoints/sft)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        name, *options = args.worker.split(":")
        workers = {"trl": worker_trl, "generate": worker_generate, "profile": worker_profile}
        result = (worker_ours(args, int(options[0]), "compile" in options) if name == "ours"
                  else workers[name](args))
        print(json.dumps(result))
        return

    t0 = time.perf_counter()
    args.policy = str(Path(args.policy or checkpoints_dir() / "sft").resolve())  # the same folder for a baseline
    gen = run_worker("generate", args)
    ours = [f"ours:{e}" for e in args.update_epochs] + ([f"ours:{preset_epochs}:compile"] if args.compile else [])
    before = [f"before:{preset_epochs}"] if args.baseline else []
    names = ours + before + ["trl"]
    runs = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        root = export_revision(args.baseline, Path(tmp)) if args.baseline else None
        for r in range(args.rounds):  # alternate the order, so that a change in machine load hits all alike
            for name in (names if r % 2 == 0 else names[::-1]):
                runs[name].append(run_worker(name.replace("before:", "ours:"), args, root if name in before else None))
    medians = {name: {k: statistics.median(run[k] for run in runs[name]) for k in runs[name][0]} for name in names}
    trl = medians["trl"]

    def setting(name):  # "ours:2:compile" -> "update_epochs=2, torch_compile"
        _, epochs, *compiled = name.split(":")
        return f"update_epochs={epochs}" + (", torch_compile" if compiled else "")

    def label(name):
        return f"ours as of {args.baseline}" if name in before else "ours"

    def row(title, r):
        return (f"| {title} | {r['samples'] / r['wall_s']:.0f} | {r['tokens'] / r['wall_s']:.0f} | {r['peak_rss_mb']:.0f} | "
                f"{r['gold_before']:+.3f} -> {r['gold_after']:+.3f} ({r['gold_after'] - r['gold_before']:+.3f}) | "
                f"{r['wall_s']:.1f} | " + (f"{r['startup_s']:.1f} | " if "startup_s" in r else "- | ")
                + (f"{r['non_generation_share']:.0%} |" if "non_generation_share" in r else "- |"))

    print(f"\nsame SFT policy, gold reward, prompts; {args.steps} x {args.batch} completions each; "
          f"{args.threads} torch thread(s); TRL num_iterations = 1; median of {args.rounds} alternating runs each\n")
    print("| trainer | samples/s | gen tokens/s | peak RSS MB | gold before -> after (gain) | train wall s | "
          "start-up s | non-generation share of the step |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ours + before:
        print(row(f"{label(name)} (PPO, {setting(name)})", medians[name]))
    print(row("TRL RLOOTrainer", trl))
    trl_sps, trl_gain = trl["samples"] / trl["wall_s"], trl["gold_after"] - trl["gold_before"]
    print("\n| ours / TRL | samples/s | peak RSS | gold gain ours vs TRL |")
    print("|---|---|---|---|")
    for name in ours + before:
        o = medians[name]
        gain = o["gold_after"] - o["gold_before"]
        print(f"| {label(name)}, {setting(name)} | "
              f"{o['samples'] / o['wall_s'] / trl_sps:.2f}x | {o['peak_rss_mb'] / trl['peak_rss_mb']:.2f}x | "
              f"{gain:+.3f} vs {trl_gain:+.3f} ({'equal or better' if gain >= trl_gain else 'worse'}) |")
    if before:
        now, then = medians[f"ours:{preset_epochs}"], medians[before[0]]
        print(f"\nafter / before ({args.baseline}) at update_epochs={preset_epochs}: samples/s "
              f"{now['samples'] / now['wall_s'] / (then['samples'] / then['wall_s']):.2f}x, peak RSS "
              f"{now['peak_rss_mb'] / then['peak_rss_mb']:.2f}x, gold gain {now['gold_after'] - now['gold_before']:+.3f} "
              f"vs {then['gold_after'] - then['gold_before']:+.3f}")
    print(f"\none batch of {args.batch} prompts, max {args.max_new_tokens} new tokens (median of {args.repeats}):")
    print("| HF model.generate | our lm.sample | our full rollout (+ value, ref, reward) |")
    print("|---|---|---|")
    print(f"| {gen['generate']*1e3:.0f} ms | {gen['sample']*1e3:.0f} ms ({gen['sample']/gen['generate']:.2f}x) | "
          f"{gen['rollout']*1e3:.0f} ms ({gen['rollout']/gen['generate']:.2f}x) |")
    print(f"\nour step at the preset's {get_preset('quick').ppo.update_epochs} epochs, one batch of {args.batch}, "
          f"{args.threads} thread(s):")
    profile = run_worker("profile", args)
    print(profile["table"])
    measured = medians.get(f"ours:{preset_epochs}")  # absent if --update-epochs leaves the preset's out
    if measured:
        sps, share = model_passes_ceiling(profile["phases"], profile["wall"], measured["samples"] / measured["wall_s"],
                                          measured["non_generation_share"])
        print(f"\nthe ceiling at update_epochs={preset_epochs}: if only the model passes (sampling, values, reference, "
              f"update epochs, optimizer) took any time, {sps:.0f} samples/s = {sps / trl_sps:.2f}x TRL, with a "
              f"non-generation share of {share:.0%}")
    print(f"\nbenchmark wall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
