"""Raters: a simulated annotator with a known noise model, and agreement between raters.

1. **The simulated annotator** (:class:`SimulatedAnnotator`) labels a pair from the world's
   gold preference through a Bradley-Terry noise model (Bradley & Terry 1952; the same
   model the reward model is trained under, Christiano et al. 2017, Ouyang et al. 2022):

   .. math:: P(a \\succ b) = \\sigma\\big((g_a - g_b)/T + \\beta_{pos}\\,s + \\lambda\\,(\\ell_a - \\ell_b)\\big)

   with gold scores :math:`g`, temperature :math:`T`, an optional position bias
   :math:`\\beta_{pos}` (``s = +1`` when ``a`` is shown first, ``-1`` otherwise) and an
   optional preference for length :math:`\\lambda` per word.
   :func:`scripted_reader` makes it rate through a rating session's own handlers (notebook 09's
   scripted reader: simulated, and named so).
2. **Agreement** between any two raters (raw agreement and Cohen's kappa, Cohen 1960),
   and the best accuracy the annotator's noise allows (:func:`best_accuracy`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from rlhf_utils.feedback import pair_record


# --------------------------------------------------------------------------------------
# The simulated annotator
# --------------------------------------------------------------------------------------


def sigmoid(x):
    """Logistic function, numerically stable for large |x|."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


def n_words(text: str) -> int:
    """Length of a completion in words (the world's tokens are space-separated)."""
    return len(text.split())


@dataclass(frozen=True)
class SimulatedAnnotator:
    """A rater who prefers what the gold preference prefers, noisily (Bradley-Terry).

    ``P(a ≻ b) = σ((g_a − g_b)/T + position_bias·s + length_bias·(len_a − len_b))``
    with ``s = +1`` when ``a`` is shown first and ``-1`` otherwise; lengths in words.
    ``T → 0`` is a perfect rater of the gold preference; large ``T`` is a coin flip.
    The biases model the systematic errors of real raters (notebook 07): a taste for
    whichever is shown first, a taste for longer answers.
    """

    gold: Callable[..., np.ndarray]
    """vectorised gold score ``gold(completions, prompts=None) -> array`` (``World.gold_rewards``)"""
    temperature: float = 0.15
    """Bradley-Terry temperature T (in units of the gold score)"""
    position_bias: float = 0.0
    """logit added in favour of the completion shown first"""
    length_bias: float = 0.0
    """logit added per word that ``a`` is longer than ``b``"""
    name: str = "simulated"
    """annotator name written on its records"""

    @classmethod
    def from_world(cls, world: Any, **kwargs: Any) -> "SimulatedAnnotator":
        """An annotator whose gold preference is ``world.gold_rewards``."""
        return cls(gold=lambda texts, prompts=None: np.asarray(world.gold_rewards(list(texts), prompts), float),
                   **kwargs)

    def logits(self, completions_a: Sequence[str], completions_b: Sequence[str],
               a_first: Sequence[bool] | bool = True, prompts: Sequence[str] | None = None) -> np.ndarray:
        """Log-odds that ``a`` is preferred, per pair.  # [n_pairs]"""
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0 (use a small value for a near-perfect rater)")
        prompts = None if prompts is None else list(prompts)
        g_a = np.asarray(self.gold(list(completions_a), prompts), dtype=np.float64)  # [n]
        g_b = np.asarray(self.gold(list(completions_b), prompts), dtype=np.float64)  # [n]
        s = np.where(np.broadcast_to(np.asarray(a_first, dtype=bool), g_a.shape), 1.0, -1.0)
        d_len = np.array([n_words(a) - n_words(b) for a, b in zip(completions_a, completions_b)], float)
        return (g_a - g_b) / self.temperature + self.position_bias * s + self.length_bias * d_len

    def prob_a(self, completions_a, completions_b, a_first=True, prompts=None) -> np.ndarray:
        """P(a ≻ b) per pair.  # [n_pairs]"""
        return sigmoid(self.logits(completions_a, completions_b, a_first, prompts))

    def label(self, completions_a, completions_b, a_first=True,
              rng: np.random.Generator | int | None = 0, prompts=None) -> list[str]:
        """Sample a verdict ``"a"`` or ``"b"`` per pair."""
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        p = self.prob_a(completions_a, completions_b, a_first, prompts)
        return ["a" if u < q else "b" for u, q in zip(rng.random(len(p)), p)]

    def records(self, pairs: Sequence[tuple[str, str, str]], rng: np.random.Generator | int | None = 0,
                source: dict | None = None, randomise_order: bool = True) -> list[dict]:
        """Label ``(prompt, a, b)`` pairs and return store records (shown order random)."""
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        swapped = rng.random(len(pairs)) < 0.5 if randomise_order else np.zeros(len(pairs), bool)
        choices = self.label([p[1] for p in pairs], [p[2] for p in pairs], ~swapped, rng,
                             prompts=[p[0] for p in pairs])
        note = {"temperature": self.temperature, "position_bias": self.position_bias,
                "length_bias": self.length_bias}
        return [pair_record(p, a, b, c, annotator=self.name, swapped=bool(s),
                            source=source, annotator_model=note)
                for (p, a, b), c, s in zip(pairs, choices, swapped)]


SCRIPTED_READER = "simulated-scripted-reader"
"""Annotator name of :func:`scripted_reader`'s verdicts. It starts with ``simulated``, so
:func:`rlhf_utils.preferences.is_reader` counts them as the simulated annotator's, never as a person's."""


def scripted_reader(session: Any, annotator: SimulatedAnnotator, n: int,
                    rng: np.random.Generator | int | None = 0) -> int:
    """The simulated annotator rating through a session's own handlers, as a reader clicking the
    buttons would: for the pair on screen it samples a verdict (the side shown first, ``A``, is
    ``a`` unless the entry is ``swapped``) and calls ``session.choose("A")`` or ``("B")`` -- the
    call the widget's buttons make. Stops after ``n`` verdicts, or when nothing is left to rate.
    Returns how many it gave. Start the session with ``session.start(SCRIPTED_READER)`` first, so
    the records say who gave them."""
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    given = 0
    while given < n and (entry := session.current) is not None:
        a, b = entry.completions
        a_first = not entry.swapped
        choice = annotator.label([a], [b], a_first, rng, prompts=[entry.prompt])[0]
        if session.choose("A" if (choice == "a") == a_first else "B") is None:
            break
        given += 1
    return given


def best_accuracy(gold_gaps: Sequence[float] | np.ndarray, temperature: float) -> float:
    """The best agreement with the gold preference that labels of this noise allow.

    The expected fraction of pairs on which a Bradley-Terry annotator of temperature
    ``T`` agrees with the gold preference: ``mean σ(|Δg| / T)`` over the pairs' gold
    gaps ``Δg = g_a − g_b``. A reward model trained on such labels cannot be expected
    to agree with the *labels* more often than this on held-out pairs (notebook 05).
    """
    gaps = np.abs(np.asarray(gold_gaps, dtype=np.float64))
    if gaps.size == 0:
        return float("nan")
    return float(np.mean(sigmoid(gaps / temperature)))


# --------------------------------------------------------------------------------------
# Agreement between raters
# --------------------------------------------------------------------------------------


def cohen_kappa(labels_1: Sequence[str], labels_2: Sequence[str]) -> float:
    """Cohen's kappa of two raters' labels on the same items (Cohen 1960).

    ``κ = (p_o − p_e) / (1 − p_e)``: ``p_o`` the observed agreement, ``p_e`` the
    agreement expected by chance from each rater's own label frequencies,
    ``p_e = Σ_k p_1(k) p_2(k)``. 1 = perfect, 0 = chance level. When chance agreement
    is already 1 (both raters always give the same single label) kappa is undefined:
    NaN, as in scikit-learn.
    """
    if len(labels_1) != len(labels_2):
        raise ValueError(f"{len(labels_1)} vs {len(labels_2)} labels: rate the same items")
    n = len(labels_1)
    if n == 0:
        return float("nan")
    p_o = sum(x == y for x, y in zip(labels_1, labels_2)) / n
    c1, c2 = Counter(labels_1), Counter(labels_2)
    p_e = sum(c1[k] * c2[k] for k in c1) / n**2
    if p_e == 1.0:
        return float("nan")
    return (p_o - p_e) / (1.0 - p_e)


@dataclass(frozen=True)
class Agreement:
    """How often two raters agree on the items both judged."""

    n: int
    """items judged by both (skips left out)"""
    raw: float
    """fraction with the same verdict"""
    kappa: float
    """Cohen's kappa (agreement corrected for chance)"""


def agreement(labels_1: Sequence[str], labels_2: Sequence[str]) -> Agreement:
    """Raw agreement and Cohen's kappa of two equal-length label lists."""
    n = len(labels_1)
    raw = float("nan") if n == 0 else sum(x == y for x, y in zip(labels_1, labels_2)) / n
    return Agreement(n=n, raw=raw, kappa=cohen_kappa(labels_1, labels_2))


def gold_choice(gold_a: float, gold_b: float) -> str:
    """The gold preference's verdict on a pair: ``a``, ``b`` or ``tie``."""
    return "a" if gold_a > gold_b else "b" if gold_b > gold_a else "tie"


def annotator_agreement(judgements_1: Sequence[dict], judgements_2: Sequence[dict]) -> Agreement:
    """Agreement of two raters' live pairwise judgements, matched by item.

    Items either rater skipped are left out; ``tie`` and ``both_bad`` count as verdicts.
    Pass e.g. ``store.judgements(annotator="you")`` and the simulated annotator's.
    """
    first = {r["item"]: r["choice"] for r in judgements_1 if r["kind"] == "pair" and r["choice"] != "skip"}
    second = {r["item"]: r["choice"] for r in judgements_2 if r["kind"] == "pair" and r["choice"] != "skip"}
    common = [k for k in first if k in second]
    return agreement([first[k] for k in common], [second[k] for k in common])


def self_agreement(judgements: Sequence[dict]) -> Agreement:
    """Agreement of a rater with themself: first ratings vs their blind repeats."""
    return annotator_agreement([r for r in judgements if not r.get("repeat")],
                               [r for r in judgements if r.get("repeat")])


def position_bias_rate(judgements: Sequence[dict]) -> float:
    """Share of decisive verdicts (a/b) that went to the completion shown first."""
    decisive = [r for r in judgements if r.get("kind") == "pair" and r["choice"] in ("a", "b")]
    if not decisive:
        return float("nan")
    return sum((r["choice"] == "a") != r["swapped"] for r in decisive) / len(decisive)


def judgements_per_minute(judgements: Sequence[dict]) -> float:
    """Pace of a rater: 60 / mean seconds spent per judgement (``seconds`` field)."""
    secs = [r["seconds"] for r in judgements if isinstance(r.get("seconds"), (int, float)) and r["seconds"] > 0]
    return float("nan") if not secs else 60.0 / float(np.mean(secs))
