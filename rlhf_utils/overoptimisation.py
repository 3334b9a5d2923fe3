"""Reward hacking, measured: the proxy against the gold reward as the policy moves away.

A reward model is a proxy for the preference it was trained on. Optimise it hard enough and
the policy finds text the proxy over-rates: the proxy keeps rising while the true (gold)
reward rises, peaks and falls -- Goodhart's law, measured for RLHF by Gao et al. (2022,
"Scaling laws for reward model overoptimization") against ``d = sqrt(KL(pi || pi_ref))``.
Our world knows the gold reward, so notebook 07 can draw both curves.

* :class:`OveroptimisationTracker` -- a ``PPOTrainer.train(callback=...)`` callable that, every
  ``every`` steps, samples the policy on held-out prompts and records its KL to the reference,
  the proxy, the gold reward (on a measurement set and on a separate *check* set), the
  grammatical share, each defect's share and the length; it keeps the weights of the step
  whose check gold was highest;
* :func:`best_step` -- early stopping's choice: the step whose held-out gold check was
  highest (the first, on a tie);
* :func:`relabel_pairs` -- the same preference pairs judged again by another annotator (e.g.
  one with a systematic bias, :class:`rlhf_utils.annotators.SimulatedAnnotator`'s
  ``length_bias``), to train a reward model that carries that bias.

The mitigation -- an ensemble of reward models and its disagreement as a penalty -- is
:mod:`rlhf_utils.reward_ensemble`; the fitted curves are :func:`rlhf_utils.evaluation.fit_gao_rl`.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from rlhf_utils import evaluation
from rlhf_utils.checks import check_int, check_texts
from rlhf_utils.preferences import PreferencePair

ROW_KEYS = ("step", "kl", "d", "proxy", "gold", "gold_check", "grammatical", "length",
            *(f"defect/{d}" for d in evaluation.DEFECTS))
"""what :class:`OveroptimisationTracker` records at each measurement"""


def best_step(steps: Sequence[int], scores: Sequence[float]) -> int:
    """The step whose score (a held-out gold check) is highest; the earliest one on a tie.

    Naive equivalent: ``max(zip(scores, -steps))`` read back. Early stopping with this rule
    keeps the checkpoint of that step (Gao et al. 2022 and InstructGPT select their policies on
    held-out evaluations in the same way).
    """
    steps, scores = list(steps), np.asarray(scores, dtype=float)
    if len(steps) == 0 or len(steps) != len(scores):
        raise ValueError(f"best_step needs one score per step and at least one step, got {len(steps)} steps "
                         f"and {len(scores)} scores")
    if not np.isfinite(scores).all():
        raise ValueError("best_step: a score is NaN or inf -- measure every step's gold check before choosing")
    return int(steps[int(np.argmax(scores))])  # argmax: the first maximum


class OveroptimisationTracker:
    """Measures a PPO run on held-out prompts every ``every`` steps; pass it as the callback.

    ``trainer`` is the :class:`rlhf_utils.ppo.PPOTrainer` (the tracker reads its ``policy``,
    ``ref_policy`` and ``score``); ``prompts`` are the held-out prompts of the measurement,
    ``check_prompts`` (optional) a separate small set whose gold reward stands for the human
    spot check that chooses the early-stopping step -- so the gold reported at that step is
    measured on prompts that did not choose it. ``proxy(prompts, completions) -> [B]``
    defaults to the trainer's own reward (what the policy is optimising, before the
    missing-EOS penalty). Every measurement samples with the same ``seed`` (common random
    numbers: two steps differ by the policy, not by the draw).

    It measures the policy once when built (step ``trainer.step_count``, 0 before training),
    then after every ``every``-th step -- or, when ``every`` is a list of steps, after each of
    those (denser early, where the gold peaks) -- and after the last one. ``rows`` holds one dict per
    measurement (:data:`ROW_KEYS`); ``evaluations`` the :class:`rlhf_utils.evaluation.PolicyEvaluation`
    of each measured step (its samples); ``best_state`` the policy's weights (on the CPU) at
    the step with the highest check gold, when ``keep_best``.
    """

    def __init__(self, trainer, world, prompts: Sequence[str], every: int | Sequence[int],
                 check_prompts: Sequence[str] = (), proxy: Callable | None = None, seed: int = 0,
                 keep_best: bool = True):
        prompts = check_texts("prompts", prompts, "held-out prompts")
        check_prompts = check_texts("check_prompts", check_prompts, "check prompts", allow_empty=True)
        if isinstance(every, (list, tuple, range)):
            self.every, self.at = None, {check_int(f"every[{i}]", s, 1) for i, s in enumerate(every)}
        else:
            fix = "e.g. every=10, or the steps: every=(2, 4, 8, 16)"
            self.every, self.at = check_int("every", every, 1, fix), set()
        if trainer.ref_policy is None:
            raise ValueError("OveroptimisationTracker measures KL to a separate reference policy; with LoRA "
                             "(no ref_policy) measure the adapters-off model instead")
        self.trainer, self.world, self.prompts, self.check_prompts = trainer, world, prompts, check_prompts
        self.proxy = trainer.score if proxy is None else proxy
        self.seed, self.keep_best = seed, keep_best
        self.rows: list[dict] = []
        self.evaluations: dict[int, evaluation.PolicyEvaluation] = {}
        self.best_state: dict | None = None
        self._best_check = -math.inf
        self.measure()

    # ---- measuring --------------------------------------------------------------------

    def _evaluate(self, prompts: list[str], reference) -> evaluation.PolicyEvaluation:
        c = self.trainer.config
        return evaluation.evaluate_policy(self.trainer.policy, self.trainer.tokenizer, self.world, prompts,
                                          c.max_new_tokens, c.temperature, seed=self.seed, reference=reference)

    def measure(self, step: int | None = None) -> dict:
        """Measure the policy now and append the row (``step`` defaults to the trainer's count)."""
        step = self.trainer.step_count if step is None else step
        ev = self._evaluate(self.prompts, self.trainer.ref_policy)
        ev.proxy = np.asarray(self._as_numpy(self.proxy(self.prompts, ev.texts)), dtype=float)
        s = ev.summary()
        kl = s["kl_mean"]
        row = {"step": int(step), "kl": kl, "d": math.sqrt(max(kl, 0.0)), "proxy": s["proxy_mean"],
               "gold": s["gold_mean"], "grammatical": s["grammatical"],
               "length": float(np.mean([len(t.split()) for t in ev.texts])),
               **{f"defect/{d}": s[f"defect/{d}"] for d in evaluation.DEFECTS}}
        row["gold_check"] = (float(self._evaluate(self.check_prompts, None).gold.mean()) if self.check_prompts
                             else row["gold"])
        self.rows.append(row)
        self.evaluations[row["step"]] = ev
        if self.keep_best and row["gold_check"] > self._best_check:
            self._best_check = row["gold_check"]
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.trainer.policy.state_dict().items()}
        return row

    @staticmethod
    def _as_numpy(scores):
        return scores.detach().float().cpu().numpy() if hasattr(scores, "detach") else scores

    def __call__(self, stats: dict) -> None:
        """The ``PPOTrainer.train`` callback: measure after the chosen steps and the last."""
        step = int(stats["step"])
        due = step in self.at if self.every is None else step % self.every == 0
        if due or step == self.trainer.total_steps:
            if not self.rows or self.rows[-1]["step"] != step:
                self.measure(step)

    # ---- reading the curves ---------------------------------------------------------------

    def curve(self, key: str) -> np.ndarray:
        """One recorded quantity over the measurements (``"kl"``, ``"gold"``, ``"proxy"`` ...)."""
        if key not in ROW_KEYS:
            raise KeyError(f"{key!r} is not recorded; the tracker records {', '.join(ROW_KEYS)}")
        return np.array([r[key] for r in self.rows], dtype=float)

    def best_step(self) -> int:
        """Early stopping's step: the highest gold on the check prompts (:func:`best_step`)."""
        return best_step(self.curve("step").astype(int), self.curve("gold_check"))

    def row(self, step: int) -> dict:
        """The measurement at ``step``."""
        for r in self.rows:
            if r["step"] == step:
                return r
        raise KeyError(f"no measurement at step {step}; measured: {[r['step'] for r in self.rows]}")

    def peak(self) -> dict:
        """The measurement with the highest gold reward on the measurement prompts (the curve's top)."""
        return self.rows[int(np.argmax(self.curve("gold")))]


def relabel_pairs(pairs: Sequence[PreferencePair], annotator, seed: int = 0) -> list[PreferencePair]:
    """The same (prompt, completion, completion) pairs judged again by ``annotator``.

    ``annotator`` is a :class:`rlhf_utils.annotators.SimulatedAnnotator` (e.g. with a
    ``length_bias`` or a ``position_bias``); each pair is shown in a random order (seeded), as
    notebook 04 shows them, and becomes a strict judgement named after the annotator (a tie of
    the original is judged again like any pair). Naive equivalent, per pair: draw who is shown
    first, label, put the winner in ``chosen``.
    """
    if len(pairs) == 0:
        raise ValueError("relabel_pairs needs at least one pair (preferences.load_preference_pairs())")
    rng = np.random.default_rng(seed)
    a_first = rng.random(len(pairs)) < 0.5
    first = [p.chosen if f else p.rejected for p, f in zip(pairs, a_first)]
    second = [p.rejected if f else p.chosen for p, f in zip(pairs, a_first)]
    verdicts = annotator.label(first, second, a_first=True, rng=rng, prompts=[p.prompt for p in pairs])
    return [PreferencePair(p.prompt, a if v == "a" else b, b if v == "a" else a, tie=False, annotator=annotator.name)
            for p, a, b, v in zip(pairs, first, second, verdicts)]
