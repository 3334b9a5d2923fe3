"""Preference pairs: the judgements of the feedback store, as (prompt, chosen, rejected).

What the reward model (and DPO) train on. :func:`load_preference_pairs` reads a
preference file written by notebook 04 (corrections applied; skips, "both bad" and blind
repeats dropped), :func:`split_pairs` holds some out. A name starting with ``simulated``
is the simulated annotator; any other is a person (:func:`is_reader`).

:func:`write_trl_preferences` writes the same judgements in TRL's standard preference
format (JSON lines with ``prompt``, ``chosen``, ``rejected``), a file TRL's ``DPOTrainer``
and ``RewardTrainer`` take as it is (``datasets.load_dataset("json", data_files=...)``);
:func:`load_trl_preferences` reads such a file back as :class:`PreferencePair` s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

MIN_TRAIN_PAIRS = 20
"""fewest training pairs :func:`split_pairs` accepts"""
MIN_EVAL_PAIRS = 10
"""fewest held-out pairs :func:`split_pairs` accepts (fewer gives an accuracy too noisy to read)"""


@dataclass(frozen=True)
class PreferencePair:
    """One judgement: given ``prompt``, ``chosen`` was preferred to ``rejected``.

    With ``tie=True`` the two were judged equally good (the order means nothing).
    ``annotator`` says who judged: the reader's name (``"you"`` unless they chose
    another, in notebook 04's widget) or the simulated annotator's (``"simulated"``).
    """

    prompt: str
    chosen: str
    rejected: str
    tie: bool = False
    annotator: str = "simulated"


SIMULATED_PREFIX = "simulated"
"""Annotator names starting with this are the simulated annotator; any other name is a person."""


def is_reader(annotator: str) -> bool:
    """True if a judgement came from a person (the reader), not the simulated annotator."""
    return not annotator.startswith(SIMULATED_PREFIX)


def reader_agreement(pairs: Sequence[PreferencePair], reward_model) -> tuple[int, float]:
    """The reader's own agreement with a reward model: of the strict pairs in ``pairs`` that a
    person judged (:func:`is_reader`), the share the reward model orders as they did
    (``r(chosen) > r(rejected)``, equal rewards 1/2). Returns ``(n, agreement)``; ``(0, nan)`` when
    the reader judged none (notebooks 05 and 06 print it)."""
    from rlhf_utils.reward import evaluate_pairs

    mine = [p for p in pairs if is_reader(p.annotator) and not p.tie]
    if not mine:
        return 0, float("nan")
    return len(mine), float(evaluate_pairs(reward_model, mine).accuracy)


def pairs_from_judgements(judgements: Sequence[dict], include_calibration: bool = False
                          ) -> list[PreferencePair]:
    """Live pairwise judgements of the feedback store -> :class:`PreferencePair` list.

    Verdict ``a`` / ``b``: that completion is chosen. ``tie``: a tie pair (target 1/2).
    ``both_bad`` and ``skip`` are dropped (no winner, and no claim the two are equal),
    and so are blind repeats (they would count a pair twice) and -- unless asked for --
    the widget's calibration pairs (made to check the rater, not drawn from the policy),
    as in :func:`rlhf_utils.feedback.to_preference_dataset`.
    """
    out = []
    for r in judgements:
        if r.get("kind") != "pair" or r.get("choice") not in ("a", "b", "tie") or r.get("repeat"):
            continue
        if r.get("calibration") and not include_calibration:
            continue
        a, b = r["completion_a"], r["completion_b"]
        chosen, rejected = (b, a) if r["choice"] == "b" else (a, b)
        out.append(PreferencePair(r["prompt"], chosen, rejected, tie=r["choice"] == "tie",
                                  annotator=r["annotator"]))
    return out


def load_preference_pairs(path: str | Path | None = None, include_calibration: bool = False
                          ) -> list[PreferencePair]:
    """The judgements of a preference file (default ``$RLHF_FEEDBACK/preferences.jsonl``,
    written by notebook 04), corrections applied, as :class:`PreferencePair` s."""
    from rlhf_utils import feedback
    from rlhf_utils.config import feedback_dir

    path = Path(path) if path is not None else feedback_dir() / "preferences.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"No preference file at {path}: run notebook 04 (human feedback) first -- it writes "
            "preferences.jsonl -- or set $RLHF_FEEDBACK to the folder that holds it.")
    pairs = pairs_from_judgements(feedback.live_judgements(feedback.load_records(path)),
                                  include_calibration=include_calibration)
    if not pairs:
        raise ValueError(
            f"{path} holds no pairwise judgement with a verdict (a, b or tie): run notebook 04 "
            "and rate some pairs (or let its simulated annotator label them).")
    return pairs


TRL_SEPARATOR = " "
"""put before each completion in a TRL file: TRL tokenizes ``prompt + chosen``, so the space keeps the word boundary"""


def write_trl_preferences(path: str | Path, judgements: Sequence[dict], separator: str = TRL_SEPARATOR) -> Path:
    """Write live pairwise ``judgements`` as a TRL preference file: one JSON object per line,
    ``{"prompt", "chosen", "rejected", "annotator", "item"}`` (atomically: temp file, rename).

    The rows are :func:`rlhf_utils.feedback.to_preference_dataset`'s: verdicts ``a`` / ``b``
    only (TRL has no tie; ties, "both bad" and skips are left out), no calibration pairs, no
    blind repeats, each completion starting with ``separator``. Returns the path.
    """
    import json
    import os

    from rlhf_utils import feedback

    rows = feedback.to_preference_dataset(judgements, separator=separator)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_trl_preferences(path: str | Path, separator: str = TRL_SEPARATOR) -> list[PreferencePair]:
    """A TRL preference file (JSON lines with ``prompt``, ``chosen``, ``rejected``, as
    :func:`write_trl_preferences` writes) -> :class:`PreferencePair` s, read with
    ``datasets.load_dataset("json", ...)``.

    One leading ``separator`` is taken off each completion (the one the writer added), so
    writing and loading gives back the pairs. Every pair is strict (``tie=False``); the
    ``annotator`` column is kept where the file has one (else ``"trl"``). TRL's
    conversational format (lists of messages) is refused: apply the chat template first.
    """
    from datasets import load_dataset

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No TRL preference file at {path}: notebook 04 writes one beside "
                                "preferences.jsonl (preferences.write_trl_preferences).")
    if not path.read_bytes().strip():
        raise ValueError(f"{path} is empty: it holds no preference pair (prompt, chosen, rejected).")
    rows = load_dataset("json", data_files=str(path), split="train")
    missing = [c for c in ("prompt", "chosen", "rejected") if c not in rows.column_names]
    if missing:
        raise ValueError(f"{path} is not in TRL's standard preference format: no column(s) {missing} "
                         f"(it has {rows.column_names}); each line needs prompt, chosen and rejected.")
    if not isinstance(rows[0]["chosen"], str):
        raise ValueError(f"{path} is in TRL's conversational format (lists of messages): apply the chat "
                         "template to get plain-text prompt, chosen and rejected first.")

    def strip(text: str) -> str:
        return text[len(separator):] if separator and text.startswith(separator) else text

    annotators = rows["annotator"] if "annotator" in rows.column_names else ["trl"] * len(rows)
    return [PreferencePair(p, strip(c), strip(r), tie=False, annotator=a)
            for p, c, r, a in zip(rows["prompt"], rows["chosen"], rows["rejected"], annotators)]


def min_pairs_needed(eval_fraction: float) -> int:
    """The fewest non-skipped judgements :func:`split_pairs` can split with ``eval_fraction``."""
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be between 0 and 1 (exclusive), got {eval_fraction}.")
    n = MIN_TRAIN_PAIRS + MIN_EVAL_PAIRS
    while round(n * eval_fraction) < MIN_EVAL_PAIRS or n - round(n * eval_fraction) < MIN_TRAIN_PAIRS:
        n += 1
    return n


def split_pairs(pairs: Sequence[PreferencePair], eval_fraction: float, seed: int = 0
                ) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Shuffle ``pairs`` (seeded) and hold out ``eval_fraction`` of them: (train, eval).

    Needs at least :func:`min_pairs_needed` pairs (48 at the default 0.2), so that
    at least 10 are held out and 20 are left to train on.
    """
    need = min_pairs_needed(eval_fraction)
    if len(pairs) < need:
        raise ValueError(
            f"Only {len(pairs)} judgements: a train/held-out split with eval_fraction={eval_fraction} "
            f"needs at least {need} ({MIN_TRAIN_PAIRS} to train on, {MIN_EVAL_PAIRS} held out). "
            "Rate more pairs in notebook 04, or let its simulated annotator label more "
            "(FeedbackConfig.n_pairs)."
        )
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_eval = round(len(pairs) * eval_fraction)
    return [pairs[i] for i in order[n_eval:]], [pairs[i] for i in order[:n_eval]]


def sample_pairs(policy, tokenizer, prompts: Sequence[str], n: int, max_new_tokens: int,
                 temperature: float = 1.0, seed: int = 0, batch_size: int = 512,
                 progress: bool = True) -> list[tuple[str, str, str]]:
    """``n`` pairs ``(prompt, a, b)``: two completions of one prompt, sampled from ``policy``.

    The prompts are used in order, ``batch_size`` at a time (each twice in one batch, with one
    seeded generator); a pair whose two completions are the same is dropped (there is nothing
    to compare), so pass more prompts than ``n`` (notebook 04 passes ``1.2 n + 16``).
    """
    import torch
    from tqdm.auto import tqdm

    from rlhf_utils.lm import sample

    device = next(policy.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    pairs: list[tuple[str, str, str]] = []
    for i in tqdm(range(0, len(prompts), batch_size), desc="sampling pairs", leave=False, disable=not progress):
        chunk = list(prompts[i:i + batch_size])
        texts = sample(policy, tokenizer, [p for p in chunk for _ in range(2)], max_new_tokens,
                       temperature=temperature, generator=gen).texts
        pairs += [(p, a, b) for p, a, b in zip(chunk, texts[0::2], texts[1::2]) if a != b]
        if len(pairs) >= n:
            return pairs[:n]
    raise ValueError(f"only {len(pairs)} distinct pairs from {len(prompts)} prompts, {n} wanted: pass more prompts")
