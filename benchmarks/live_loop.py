"""The live loop (notebook 09) driven by the scripted reader: how fast it answers, how much the policy
gains per label, and how many labels active selection saves against random choice.

For each seed and each strategy (``uncertain``: the reward model's doubt, an ensemble's disagreement;
``random``: the baseline) a fresh :class:`rlhf_utils.live_loop.LiveLoop` starts from the SFT policy of
notebook 03 and a reward model that has seen nothing; the scripted reader (the simulated annotator,
rating through the session's own handlers, :func:`rlhf_utils.live_loop.run_scripted_reader`) gives
``--labels`` labels, ``k`` at a time, while the loop's worker thread trains. Printed:

* **seconds from a click batch to new samples**: from the batch's last click until the next pairs,
  written by the updated policy, are in the session (median and max over rounds, per run);
* **gold gain per 100 labels**: the policy's gold reward on 256 held-out prompts at the end minus
  the SFT policy's, per 100 labels; and the gain over time (labels -> gold of each round's fresh
  samples, minus the SFT gold);
* **labels to reach** the reward model's target agreement with the gold order (``--target``,
  default the preset's ``target_gold_agreement``), active against random, per seed and summarised
  over seeds (mean and spread); "saved" is random minus active.

    python benchmarks/live_loop.py [--seeds 0 1 2] [--labels 200] [--target 0.60] [--checkpoints DIR]

``--checkpoints`` is where notebook 03 saved ``sft`` (default ``$RLHF_CHECKPOINTS`` or
``checkpoints/``). Each run writes its store and state under a temporary folder, removed afterwards.
Results are also written to ``benchmarks/results/live_loop.json`` (ignored by git).

Measured 2026-12-03 on this project's 2-core CPU machine (load about 1), quick preset, the SFT
policy of ``make course --seed 1``, 200 labels, seeds 0, 1, 2: click batch -> new pairs median
1.7-1.9 s (max 2.1 s) active, 0.9-1.2 s random; gold gain per 100 labels +0.265 active (seeds
+0.200, +0.303, +0.294), +0.271 random (+0.285, +0.175, +0.352); labels for the reward model to
reach gold agreement 0.58: active 79 / not within 200 / 119, random 109 / 138 / 73 -- active
selection saved +30 and -46 labels where both reached it: no saving that the spread would not
swallow. Notebook 09 quotes these and its own three seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def one_run(policy, tokenizer, world, preset, strategy: str, seed: int, n_labels: int, root: Path) -> dict:
    import numpy as np

    from rlhf_utils import evaluation, live_loop
    from rlhf_utils.annotators import SCRIPTED_READER, SimulatedAnnotator

    cfg = dataclasses.replace(preset.live_loop, strategy=strategy, n_labels=n_labels)
    annotator = SimulatedAnnotator.from_world(world, temperature=preset.feedback.temperature, name=SCRIPTED_READER)
    t0 = time.perf_counter()
    loop = live_loop.LiveLoop(policy, tokenizer, world.prompts(preset.ppo.n_prompts, seed=cfg.seed), cfg, preset.ppo,
                              root / f"{strategy}-{seed}", root / f"{strategy}-{seed}.jsonl", gold=world.gold_rewards)
    try:
        waits = live_loop.run_scripted_reader(loop, annotator, n_labels, seed=cfg.seed)
        wall = time.perf_counter() - t0
        prompts = world.prompts(256, seed=10_000)
        kw = dict(max_new_tokens=loop.ppo_config.max_new_tokens, temperature=loop.ppo_config.temperature, seed=123)
        before = evaluation.evaluate_policy(loop.trainer.ref_policy, tokenizer, world, prompts, **kw).summary()
        after = evaluation.evaluate_policy(loop.trainer.policy, tokenizer, world, prompts,
                                           reference=loop.trainer.ref_policy, **kw).summary()
        h = loop.history
        return {"strategy": strategy, "seed": seed, "wall_s": wall, "rounds": len(h), "waits": waits,
                "n_labels": [r["n_labels"] for r in h], "rm_gold_agreement": [r["rm_gold_agreement"] for r in h],
                "policy_gold_gain": [r["policy_gold"] - loop.sft_gold for r in h],
                "gold_before": before["gold_mean"], "gold_after": after["gold_mean"], "kl_after": after["kl_mean"],
                "labels_to_target": None if np.isnan(v := _to_target(h, cfg.target_gold_agreement)) else v}
    finally:
        loop.close()


def _to_target(history, target: float) -> float:
    from rlhf_utils.active import labels_to_reach
    from rlhf_utils.plotting import smooth

    n = [r["n_labels"] for r in history]
    agreement = smooth([r["rm_gold_agreement"] for r in history], 3)  # 3-round mean: one round's 256 pairs are noisy
    return labels_to_reach(n[len(n) - len(agreement):], agreement, target)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--labels", type=int, default=None, help="labels per run (default: the preset's n_labels)")
    parser.add_argument("--target", type=float, default=None, help="reward-model gold agreement to reach")
    parser.add_argument("--checkpoints", default=None, help="folder holding notebook 03's sft checkpoint")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    from rlhf_utils import checkpoints
    from rlhf_utils.config import checkpoints_dir, get_preset
    from rlhf_utils.world import World

    torch.set_num_threads(args.threads)
    sft = Path(args.checkpoints) / "sft" if args.checkpoints else checkpoints_dir() / "sft"
    policy, tokenizer = checkpoints.load_checkpoint(sft)
    runs = []
    with tempfile.TemporaryDirectory(prefix="live-loop-bench-") as tmp:
        for seed in args.seeds:
            preset = get_preset("quick", seed=seed)
            if args.target is not None:
                preset = dataclasses.replace(preset, live_loop=dataclasses.replace(preset.live_loop,
                                                                                   target_gold_agreement=args.target))
            world = World(preset.world.seed)
            n_labels = args.labels or preset.live_loop.n_labels
            for strategy in ("uncertain", "random"):
                run = one_run(policy, tokenizer, world, preset, strategy, seed, n_labels, Path(tmp))
                runs.append(run)
                w = run["waits"]
                print(f"seed {seed} {strategy:9s}: {run['rounds']} rounds in {run['wall_s']:.0f} s; click batch -> new "
                      f"pairs median {statistics.median(w):.1f} s, max {max(w):.1f} s; gold {run['gold_before']:+.3f} -> "
                      f"{run['gold_after']:+.3f} (KL {run['kl_after']:.2f}) = "
                      f"{100 * (run['gold_after'] - run['gold_before']) / n_labels:+.3f} per 100 labels; reward model's "
                      f"gold agreement {run['rm_gold_agreement'][-1]:.3f}; labels to {preset.live_loop.target_gold_agreement}: "
                      f"{run['labels_to_target']}", flush=True)
                over_time = [(n, g) for n, g in zip(run["n_labels"], run["policy_gold_gain"]) if n % 40 == 0]
                print("   labels -> policy gold gain (fresh samples):",
                      ", ".join(f"{n}: {g:+.2f}" for n, g in over_time), flush=True)
    target = args.target if args.target is not None else get_preset("quick").live_loop.target_gold_agreement
    print(f"\nlabels for the reward model to reach gold agreement {target} (3-round mean; None: not within the run)")
    saved = []
    for seed in args.seeds:
        a, r = (next(x for x in runs if x["seed"] == seed and x["strategy"] == s)["labels_to_target"]
                for s in ("uncertain", "random"))
        print(f"  seed {seed}: active {a}, random {r}" + (f", saved {r - a:+.0f}" if a is not None and r is not None else ""))
        if a is not None and r is not None:
            saved.append(r - a)
    for s, name in (("uncertain", "active"), ("random", "random")):
        reached = sum(x["labels_to_target"] is not None for x in runs if x["strategy"] == s)
        print(f"  {name}: reached {target} within the run at {reached} of {len(args.seeds)} seed(s)")
    if saved:
        spread = statistics.stdev(saved) if len(saved) > 1 else 0.0
        print(f"  labels saved by active selection: mean {statistics.mean(saved):+.0f}, std {spread:.0f} over {len(saved)} seed(s)")
    for s in ("uncertain", "random"):
        gains = [100 * (x["gold_after"] - x["gold_before"]) / x["n_labels"][-1] for x in runs if x["strategy"] == s]
        finals = [x["rm_gold_agreement"][-1] for x in runs if x["strategy"] == s]
        print(f"  {s:9s}: gold gain per 100 labels {statistics.mean(gains):+.3f} (seeds: {', '.join(f'{g:+.3f}' for g in gains)}); "
              f"final gold agreement {statistics.mean(finals):.3f} (seeds: {', '.join(f'{g:.3f}' for g in finals)})")
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "live_loop.json").write_text(json.dumps(runs, indent=1) + "\n")
    print(f"\nwrote {out / 'live_loop.json'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RLHF_HEADLESS", "1")
    sys.exit(main())
