"""The update's forward + backward, done the trainer's way and in ways that compute the same thing.

One minibatch of a real rollout (the quick preset, ``--policy`` SFT checkpoint, 32 of 64
completions) goes through the policy with its value head, forward and backward of a loss on
the response tokens, in each of these ways, alternating, ``--rounds`` times; the median
milliseconds of each, and the largest difference of its response log-probabilities from the
trainer's way, are printed:

* ``trainer`` -- what :class:`rlhf_utils.ppo.PPOTrainer` does: padding trimmed to the columns the
  rows use, then, for a plain GPT-2, :func:`rlhf_utils.gpt2_fast.padding_free_hidden_state`: the
  per-token work on the real tokens only, attention on left-aligned rows under the causal mask;
* ``padded`` -- the model's own forward on the trimmed padded batch with its padding mask
  (scaled-dot-product attention): the trainer's way until the padding-free forward;
* ``eager attention`` -- the same with transformers' ``eager`` attention (matmul, softmax, matmul);
* ``causal mask only`` -- each row's tokens moved to its left (no left padding), then the
  model's own forward with no mask at all: the causal mask alone keeps the right padding out
  of every real token's view;
* ``packed`` -- the real tokens of several rows side by side in one row (first-fit, rows of
  twice the longest sequence), positions restarting at 0 for each, so no padding is computed;
  transformers builds the block-diagonal causal mask from the ``position_ids``;
* ``torch.compile`` -- the model compiled (``dynamic=True``; it traces the model's own
  forward, ``gpt2_fast`` stands aside while compiling); its compiling is timed apart.

The trainer takes the way that measures fastest on a CPU (the README's benchmarks section
quotes the figures).

    python benchmarks/update_variants.py [--policy checkpoints/sft] [--rounds 30]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

from rlhf_utils.checkpoints import load_checkpoint
from rlhf_utils.config import checkpoints_dir, get_preset
from rlhf_utils.evaluation import gold_reward_fn
from rlhf_utils.ops import logprobs_and_entropy, position_ids_from_mask
from rlhf_utils.ppo import PPOTrainer
from rlhf_utils.value_head import PolicyWithValueHead
from rlhf_utils.world import World


def minibatch(trainer: PPOTrainer, size: int):
    """``(input_ids, attention_mask, start)`` of ``size`` rows of one rollout, trimmed as the trainer trims."""
    ro = trainer.rollout(trainer.next_prompts())
    ids, mask, start, _ = ro.trimmed(torch.randperm(len(ro), generator=torch.Generator().manual_seed(0))[:size])
    return ids, mask, start


def left_aligned(ids, mask):
    """Each row's tokens moved left by its left padding: ``(ids, index)``, ``index[b, t]`` the new
    column of old column ``t``."""
    n_left = mask.cumsum(1).eq(0).sum(1, keepdim=True)  # [B, 1]
    cols = torch.arange(ids.shape[1])[None]
    source = (cols + n_left).clamp(max=ids.shape[1] - 1)
    return ids.gather(1, source), (cols - n_left).clamp(min=0)


def packed_layout(mask, capacity: int):
    """First-fit-decreasing packing of the rows' real tokens into rows of ``capacity`` columns:
    ``(rows, width, flat)``, ``flat[b, t]`` the packed position of token ``(b, t)`` (0 at padding)."""
    lengths = mask.sum(1).tolist()
    used, place = [], {}
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, u in enumerate(used) if u + lengths[i] <= capacity), None)
        if row is None:
            row = len(used)
            used.append(0)
        place[i] = (row, used[row])
        used[row] += lengths[i]
    width = max(used)
    flat = torch.zeros(mask.shape, dtype=torch.long)
    for i, (row, offset) in place.items():
        cols = mask[i].nonzero().squeeze(1)
        flat[i, cols] = row * width + offset + torch.arange(len(cols))
    return len(used), width, flat


def ways(model: PolicyWithValueHead, ids, mask, start):
    """name -> a function returning ``(logits [B, R, V], values [B, R])`` for the batch."""
    body, head = model.lm.transformer, model.lm.get_output_embeddings()
    eager = PolicyWithValueHead(copy.deepcopy(model.lm))
    eager.lm.set_attn_implementation("eager")
    eager.v_head.load_state_dict(model.v_head.state_dict())
    real = mask.bool()

    def heads(hidden):  # [B, T, H] -> the trainer's two heads at the response positions
        h = hidden[:, start:-1]
        return head(h), model.v_head(h).squeeze(-1)

    def causal():  # the layout is part of the cost: built on every call
        aligned, index = left_aligned(ids, mask)
        hidden = body(input_ids=aligned, use_cache=False).last_hidden_state
        return heads(hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1])))

    def packed():
        rows, width, flat = packed_layout(mask, 2 * int(mask.sum(1).max()))
        packed_ids = torch.zeros(rows * width, dtype=ids.dtype)
        positions = torch.zeros(rows * width, dtype=torch.long)  # padding: position 0, each its own sequence
        packed_ids[flat[real]] = ids[real]
        positions[flat[real]] = position_ids_from_mask(mask)[real]
        hidden = body(input_ids=packed_ids.view(rows, width), position_ids=positions.view(rows, width),
                      use_cache=False).last_hidden_state
        return heads(hidden.reshape(rows * width, -1)[flat])

    def padded():
        return heads(body(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                          use_cache=False).last_hidden_state)

    compiled = torch.compile(model, dynamic=True)
    return {"trainer": lambda: model(ids, mask, start), "padded": padded,
            "eager attention": lambda: eager(ids, mask, start),
            "causal mask only": causal, "packed": packed,
            "torch.compile": lambda: compiled(ids, mask, start)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default=None, help="SFT checkpoint (default: checkpoints/sft)")
    ap.add_argument("--rounds", type=int, default=30, help="timed forward+backward passes of each way")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = Path(args.policy or checkpoints_dir() / "sft")
    if not path.is_dir():
        sys.exit(f"No SFT policy at {path}: run notebook 03 (supervised fine-tuning) first.")
    preset, policy_tok = get_preset("quick"), load_checkpoint(path, device="cpu")
    world = World(preset.world.seed)
    config = dataclasses.replace(preset.ppo, batch_size=64, num_minibatches=2)
    trainer = PPOTrainer(*policy_tok, gold_reward_fn(world), world.prompts(config.n_prompts, seed=config.seed),
                         config, device="cpu")
    model = trainer.accelerator.unwrap_model(trainer.model)
    ids, mask, start = minibatch(trainer, config.batch_size // config.num_minibatches)
    targets, response = ids[:, start + 1:], mask[:, start + 1:].bool()

    def forward_backward(fn):
        logits, values = fn()
        logprobs, _ = logprobs_and_entropy(logits.float() / config.temperature, targets)
        (logprobs[response].sum() + values[response].sum()).backward()
        return logprobs.detach()

    candidates = ways(model, ids, mask, start)
    t0 = time.perf_counter()
    forward_backward(candidates["torch.compile"])
    compile_s = time.perf_counter() - t0
    reference = forward_backward(candidates["trainer"])
    times = {name: [] for name in candidates}
    differences = {}
    for r in range(args.rounds + 2):  # two warm-up rounds
        for name, fn in (candidates.items() if r % 2 == 0 else reversed(candidates.items())):
            t0 = time.perf_counter()
            logprobs = forward_backward(fn)
            if r >= 2:
                times[name].append(time.perf_counter() - t0)
            differences[name] = float((logprobs - reference)[response].abs().max())
    base = statistics.median(times["trainer"])
    rows, width, _ = packed_layout(mask, 2 * int(mask.sum(1).max()))
    print(f"one minibatch: {ids.shape[0]} sequences x {ids.shape[1]} columns, {int(mask.sum())} real tokens "
          f"({mask.float().mean():.0%}; packed: {rows} rows of {width}); {args.threads} thread(s), median of "
          f"{args.rounds}; the layouts are built inside the timed calls\n")
    print("| way | forward + backward ms | / trainer | max abs difference of log-probs |")
    print("|---|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t) * 1e3:.1f} | {statistics.median(t) / base:.2f}x | "
              f"{differences[name]:.1e} |")
    print(f"\ntorch.compile: {compile_s:.1f} s to compile (forward and backward)")


if __name__ == "__main__":
    main()
