"""The reference pass's log-probabilities with the LM head on the response positions only, against
the head on every position.

PPO's reference pass, its KL figures and DPO's sequence log-probabilities all go through
``lm.response_logprobs``, which needs the log-probability of each response token only. It asks
the model for the logits of the R + 1 positions that predict them (``logits_to_keep``); before,
it took every position's logits (``lm.token_logprobs`` over the whole sequence) and kept the
response's columns. The two give the same numbers; with long prompts and a large vocabulary the
prompt's logits were most of the LM head's work and memory.

The model has GPT-2 small's shape (12 layers x 768, vocabulary 50257, random weights, made
here: nothing is downloaded); the batch is ``--batch`` rows of a ``--prompt``-token prompt and a
``--response``-token response. Timed calls of the two alternate; medians printed, with the size
of the logits each computes and the largest difference of their log-probabilities.

    python benchmarks/reference_logprobs.py [--batch 4] [--prompt 128] [--response 32] [--layers 12] [--repeats 5]

Measured 2026-12-04 on this project's 2-core CPU machine (load 0.7-0.8), 1 thread, the defaults
with ``--repeats 9``: 1.86 s per call on the response positions against 3.34 s on every position
(0.56x; 0.52x and 0.65x in two other runs), logits of 25 MB against 123 MB, the log-probabilities
equal bit for bit.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from rlhf_utils import lm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens per row")
    ap.add_argument("--response", type=int, default=32, help="response tokens per row")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=args.vocab, n_layer=args.layers, n_embd=768, n_head=12,
                        n_positions=args.prompt + args.response, bos_token_id=args.vocab - 1,
                        eos_token_id=args.vocab - 1)
    model = GPT2LMHeadModel(config).eval()
    B, P, R = args.batch, args.prompt, args.response
    prompt_ids, response_ids = torch.randint(args.vocab, (B, P)), torch.randint(args.vocab, (B, R))
    prompt_mask, response_mask = torch.ones_like(prompt_ids), torch.ones_like(response_ids)

    def response_positions():
        return lm.response_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask)

    def every_position():
        ids, mask = torch.cat([prompt_ids, response_ids], 1), torch.cat([prompt_mask, response_mask], 1)
        return lm.token_logprobs(model, ids, mask)[:, P - 1:]

    ways = {"LM head on the response positions": (response_positions, R + 1),  # (the call, positions it heads)
            "LM head on every position": (every_position, P + R)}
    times, results = {name: [] for name in ways}, {}
    with torch.no_grad():
        for repeat in range(args.repeats + 1):  # the first round warms up
            for name, (way, _) in (ways.items() if repeat % 2 else reversed(ways.items())):
                start = time.perf_counter()
                results[name] = way()
                if repeat:
                    times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(times[name]) for name in ways}
    print(f"GPT-2-shaped, {args.layers} layers, vocabulary {args.vocab}; {B} rows of {P} prompt + {R} response "
          f"tokens; {args.threads} thread(s), median of {args.repeats}\n")
    print("| way | s per call | logits computed (MB, fp32) |")
    print("|---|---|---|")
    for name, (_, positions) in ways.items():
        print(f"| {name} | {medians[name]:.3f} | {B * positions * args.vocab * 4 / 2**20:.0f} |")
    (ours, theirs), (mine, all_of_them) = medians.values(), results.values()
    print(f"\nresponse positions / every position: {ours / theirs:.2f}x the time; largest log-prob difference "
          f"{float((mine - all_of_them).abs().max()):.1e}")

if __name__ == "__main__":
    main()
